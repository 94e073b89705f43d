#!/usr/bin/env bash
# Runs postern's benchmarks and prints the median of each metric over the
# runs. The machines are shared and noisy: compare ratios within one run and
# quote medians. The knock-to-open benchmark needs root (network namespaces).
#   bench/run.sh            # 5 runs of the micro-benchmarks, 3 of knock-to-open
#   COUNT=9 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
COUNT=${COUNT:-5}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(go version | cut -d' ' -f3)"
go test ./spa -run '^$' -bench 'RejectJunk|VerifyValid|Seal|AdvancePersistent' -benchmem -count "$COUNT" | tee -a "$out" | grep '^Benchmark' >&2 || true
go test ./spa -run '^$' -bench 'ValidMAC1Flood' -benchtime 2000x -count "$COUNT" | tee -a "$out" | grep '^Benchmark' >&2 || true
go test ./knock -run '^$' -bench 'Hit' -benchmem -count "$COUNT" | tee -a "$out" | grep '^Benchmark' >&2 || true
go test ./fko -run '^$' -bench . -benchmem -count "$COUNT" | sed 's/^Benchmark/BenchmarkFKO/' | tee -a "$out" | grep '^Benchmark' >&2 || true
go test ./covert -run '^$' -bench . -benchmem -count "$COUNT" | tee -a "$out" | grep '^Benchmark' >&2 || true
if [ "$(id -u)" = 0 ]; then
  go test ./firewall -run '^$' -bench 'Grant$' -benchtime 1000x -count "$COUNT" | tee -a "$out" | grep '^Benchmark' >&2 || true
  go test ./firewall -run '^$' -bench 'GrantBatch' -benchtime 20x -count "$COUNT" | tee -a "$out" | grep '^Benchmark' >&2 || true
  go test ./cmd/postern -run '^$' -bench KnockToOpen -benchtime 100x -count "${LATENCY_COUNT:-3}" | tee -a "$out" | grep '^Benchmark' >&2 || true
  go test ./cmd/postern -run '^$' -bench ValidMAC1FloodNamespace -benchtime 1x -count "${LATENCY_COUNT:-3}" | tee -a "$out" | grep '^Benchmark' >&2 || true
fi

# Median of every "value unit" pair per benchmark name.
awk '/^Benchmark/ {
  name=$1; sub(/-[0-9]+$/, "", name)
  for (i = 3; i < NF; i += 2) { key = name "\t" $(i+1); vals[key] = vals[key] " " $i }
}
END {
  for (k in vals) {
    n = split(substr(vals[k], 2), v, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
    m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    split(k, p, "\t"); printf "%-32s %14s %s   (median of %d)\n", p[1], m, p[2], n
  }
}' "$out" | sort
