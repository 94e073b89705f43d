#!/usr/bin/env bash
# Mutation testing of the security checks, for a person reading the
# report: gremlins (github.com/go-gremlins/gremlins, pinned below) changes
# one comparison, condition or arithmetic operator at a time in the given
# packages and runs their tests; a mutant that no test notices ("LIVED")
# is a check nothing tests. Informational only: not part of CI's verdict
# (docs/TESTING.md says how to read and act on it).
#
#   scripts/mutation.sh                # the security packages
#   scripts/mutation.sh ./covert       # one package
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
GREMLINS=github.com/go-gremlins/gremlins/cmd/gremlins@v0.6.0
pkgs=("$@")
((${#pkgs[@]})) || pkgs=(./spa ./fko ./knock ./covert ./policy ./capture ./firewall)
for p in "${pkgs[@]}"; do
  echo "== $p"
  go run "$GREMLINS" unleash --timeout-coefficient 5 "$p" || true
done
