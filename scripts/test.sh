#!/usr/bin/env bash
# The whole test suite: vet, every test (unit tests and the real-kernel
# tests in network namespaces they create), a static build, then each fuzz
# target for a short while. Run as root; with CI=true a missing prerequisite
# fails a test instead of skipping it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
FUZZTIME=${FUZZTIME:-8s}

go vet ./...
CGO_ENABLED=0 go build -o /dev/null ./cmd/postern
# The client everywhere: every target builds, the portable packages vet.
. scripts/targets.sh
for t in $TARGETS; do
  echo "cross-compile $t"
  GOOS=${t%/*} GOARCH=${t#*/} CGO_ENABLED=0 go build -o /dev/null ./cmd/postern
  # shellcheck disable=SC2086
  GOOS=${t%/*} GOARCH=${t#*/} CGO_ENABLED=0 go vet $PORTABLE
done
go test -count=1 ./...

for target in spa:FuzzVerify spa:FuzzKRL spa:FuzzPlaintext capture:FuzzParse config:FuzzParse knock:FuzzKnockdConf \
  fko:FuzzOpen fko:FuzzDecode fko:FuzzAccessConf fko:FuzzRC covert:FuzzCarrierAndOpen client:FuzzClientInput client:FuzzSTUNResponse capture:FuzzReassembly spa:FuzzSSHPart; do
  pkg=${target%%:*} fn=${target#*:}
  echo "fuzz $pkg $fn for $FUZZTIME"
  log=$(mktemp)
  ok=0
  for try in 1 2; do
    if go test -run '^$' -fuzz "^$fn\$" -fuzztime "$FUZZTIME" "./$pkg" >"$log" 2>&1; then ok=1; break; fi
    # Go's fuzzer can end a run with "context deadline exceeded" when its
    # time is up while a worker is busy (a loaded machine): no failing input,
    # nothing found. Try that target once more; a real finding fails at once.
    if grep -q "Failing input written" "$log" || ! grep -q "context deadline exceeded" "$log"; then break; fi
    echo "fuzz $pkg $fn: the fuzzer's deadline flake, once more"
  done
  if [ "$ok" != 1 ]; then
    cat "$log"; rm -f "$log"; exit 1
  fi
  tail -n 1 "$log"; rm -f "$log"
done
