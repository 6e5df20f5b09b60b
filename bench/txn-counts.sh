#!/bin/bash
# /metrics latency and `txn list --state pending` with 1,000,000 resolved + 10 pending
# transactions: an earlier broker ($OLD) fills the store, then this one opens the same store.
# Run from the repository root after `cargo build --release -p txmq-broker -p txmq`.
set -u
OLD=${OLD:?path of a txmq-broker built from an earlier commit, e.g. 20c6709}
NEW=target/release/txmq-broker
CLI=target/release/txmq
D=$(mktemp -d)/data
$OLD --listen 127.0.0.1:18281 --data-dir $D --metrics-listen 127.0.0.1:18282 2> /dev/null &
B=$!; sleep 1
$CLI --broker 127.0.0.1:18281 bench txn --count 1000000 > "$D.fill" 2>/dev/null
tail -1 "$D.fill"
$CLI --broker 127.0.0.1:18281 bench checkback --count 10 --check-after 1h > /dev/null 2>&1 &
C=$!; sleep 5; kill $C
scrape() { for i in 1 2 3 4 5; do curl -s -o /dev/null -w "%{time_total}\n" 127.0.0.1:$1/metrics; done | sort -n | tr '\n' ' '; echo; }
echo "old pending: $(curl -s 127.0.0.1:18282/metrics | grep -E '^rocketmq_half_messages\{state="pending"\} ')"
echo "old /metrics seconds (5 scrapes, sorted): $(scrape 18282)"
s=$(date +%s.%N); $CLI --broker 127.0.0.1:18281 txn list --state pending > /dev/null; echo "old txn list --state pending: $(echo "$(date +%s.%N) - $s" | bc) s"
kill $B; wait $B
s=$(date +%s.%N)
$NEW --listen 127.0.0.1:18281 --data-dir $D --metrics-listen 127.0.0.1:18282 2> /dev/null &
B=$!
until curl -s -o /dev/null 127.0.0.1:18282/metrics; do sleep 0.05; done
echo "new broker serving after $(echo "$(date +%s.%N) - $s" | bc) s (builds the open-transaction index once)"
echo "new pending: $(curl -s 127.0.0.1:18282/metrics | grep -E '^rocketmq_half_messages\{state="pending"\} ')"
echo "new /metrics seconds (5 scrapes, sorted): $(scrape 18282)"
s=$(date +%s.%N); $CLI --broker 127.0.0.1:18281 txn list --state pending > /dev/null; echo "new txn list --state pending: $(echo "$(date +%s.%N) - $s" | bc) s"
du -sh $D
kill $B; wait $B
