#!/usr/bin/env bash
# The demo: two network namespaces, a protected port, a knock that opens it
# (see demo/main.go). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
exec go run ./demo "$@"
