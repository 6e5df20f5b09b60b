#!/usr/bin/env bash
# How busy the group commit is at a paced rate: runs paced `txmq bench e2e` scenarios (64
# producers, fresh data directory per scenario) and prints each RESULT line with, from the
# broker's metrics, the number of group commits, their mean duration and the share of the
# run's wall time the committer spent in them (`flush_busy`: sum of flush durations / wall
# time, the start and the drain included) and how many took more than 5 ms (`over_5ms`). A
# share near 1 means the messages queue for the disk's flushes, whatever the CPU.
#
#   bash bench/paced-flush.sh BROKER_BINARY [DURATION, default 8s] [broker args...]
set -euo pipefail
broker=$1 duration=${2:-8s}
shift $(( $# < 2 ? $# : 2 ))
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_setup 18184
metrics=127.0.0.1:18185
# sum and count of the flush-duration histogram, and the count of flushes up to 5 ms
flushes() {
  curl -s "http://$metrics/metrics" | awk '/^txmq_store_flush_duration_seconds_sum/ {s=$2}
    /^txmq_store_flush_duration_seconds_count/ {c=$2}
    /^txmq_store_flush_duration_seconds_bucket\{le="0.005"\}/ {f=$2} END {print s + 0, c + 0, f + 0}'
}
for scenario in "e2e --rate 2000" "e2e --txn --rate 2000" "e2e --txn --rate 2000 --sdk" "e2e --txn --rate 1000"; do
  rm -rf "$dir/data"
  start_broker "$broker" --metrics-listen "$metrics" "$@"
  read -r s0 c0 f0 < <(flushes)
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  line=$("$txmq" --broker 127.0.0.1:"$port" bench $scenario --concurrency 64 --duration "$duration" 2>/dev/null | grep '^RESULT' || true)
  t1=$(date +%s.%N)
  read -r s1 c1 f1 < <(flushes)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$line group_commits=$(( ${c1%.*} - ${c0%.*} )) over_5ms=$(( (${c1%.*} - ${c0%.*}) - (${f1%.*} - ${f0%.*}) ))" \
    "$(echo "$s0 $s1 $c0 $c1 $t0 $t1" | awk '{n = $4 - $3; printf "mean_flush_ms=%.2f flush_busy=%.2f", (n > 0 ? ($2 - $1) / n * 1000 : 0), ($2 - $1) / ($6 - $5)}')"
done
