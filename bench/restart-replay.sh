#!/usr/bin/env bash
# What a restart replays: fills a fresh store with N messages (`txmq bench send --sdk`), stops
# the broker, then starts and stops it twice with nothing written in between, printing the
# time to serving and the RSS of each start. sled 0.34 writes its page-table snapshot only
# when it opens a database, so the first start replays the whole log written since the
# previous start and the second replays nothing (docs/storage.md, "What a restart spends its
# time on").
#
#   bash bench/restart-replay.sh BROKER_BINARY [MESSAGES, default 1000000] [broker args...]
#   bash bench/restart-replay.sh target/release/txmq-broker 1000000 --value-log true
set -euo pipefail
broker=$1 n=${2:-1000000}
shift $(( $# < 2 ? $# : 2 ))
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_setup 18183
start() { start_broker "$broker" "$@"; }
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
start "$@"
"$txmq" --broker 127.0.0.1:$port bench send --count "$n" --concurrency 64 --sdk --topic restart 2>/dev/null | grep '^RESULT'
echo "filled: rss_mib=$(rss_mib) disk_mib=$(du -sm "$dir/data" | cut -f1)"
stop
for i in 1 2; do
  t0=$(date +%s.%N)
  start "$@"
  secs=$(echo "$(date +%s.%N) - $t0" | bc)
  stored=$("$txmq" --broker 127.0.0.1:$port status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])')
  echo "start $i: secs=$secs rss_mib=$(rss_mib) stored=$stored"
  stop
done
