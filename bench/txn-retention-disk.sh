#!/usr/bin/env bash
# Disk use of the store during a long `txmq bench txn` with short retentions: resolved
# transactions must be purged as fast as they are made, so the store stops growing.
#   bash bench/txn-retention-disk.sh [SECONDS] [extra broker flags...]
# e.g. bash bench/txn-retention-disk.sh 420 --txn-retention 30s --retention 30s
# Prints one line every 10 s: elapsed, bytes on disk (du), commits so far, store bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-180}; shift || true
flags=("$@"); [ ${#flags[@]} -gt 0 ] || flags=(--txn-retention 30s)
cargo build --release -q -p txmq-broker -p txmq
work=$(mktemp -d); trap 'kill $broker 2>/dev/null || true; rm -rf "$work"' EXIT
target/release/txmq-broker --listen 127.0.0.1:18181 --metrics-listen 127.0.0.1:18182 \
  --data-dir "$work/data" "${flags[@]}" 2> "$work/broker.log" &
broker=$!
sleep 1
target/release/txmq --broker 127.0.0.1:18181 bench txn --duration "${secs}s" > "$work/bench.txt" 2>/dev/null &
bench=$!
echo "# broker flags: ${flags[*]}; bench txn for ${secs}s"
start=$(date +%s)
while kill -0 $bench 2>/dev/null; do
  m=$(curl -s 127.0.0.1:18182/metrics)
  commits=$(grep -E '^txmq_transaction_decisions_total\{decision="commit",source="producer"\}' <<<"$m" | awk '{print $2}')
  store=$(grep -E '^rocketmq_storage_size ' <<<"$m" | awk '{print $2}')
  echo "t=$(( $(date +%s) - start ))s du_bytes=$(du -sb "$work/data" | cut -f1) commits=${commits:-0} store_bytes=${store:-0}"
  sleep 10
done
grep -h "purged" "$work/broker.log" | sed 's/^/# /' || true
tail -n 1 "$work/bench.txt"
