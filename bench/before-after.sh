#!/usr/bin/env bash
# Runs `txmq bench send`, `e2e --txn` and `e2e --txn --sdk` against two broker builds, interleaved
# (old, new, old, new …), each on a fresh data directory, with the same txmq CLI, and prints
# the RESULT lines tagged with the rep and the broker, with the bytes the broker wrote to disk
# per message (/proc/PID/io) and the broker's CPU time per message (user + system, from
# /proc/PID/stat; steadier than the rate on a shared host). Compare ratios within one run.
#
#   bash bench/before-after.sh OLD_BROKER_BINARY NEW_BROKER_BINARY [REPS] [DURATION]
#   SCENARIOS="send;send --sdk" bash bench/before-after.sh …   (scenarios separated by ';')
#
# A "binary" may be a script that execs the broker with more flags (one layout against another).
#
# Build an older broker with `git worktree add /tmp/old <rev>` and
# `cargo build --release -p txmq-broker --target-dir /tmp/old-target` in it.
set -euo pipefail
old=$1 new=$2 reps=${3:-2} duration=${4:-10s}
cd "$(dirname "$0")/.."
cargo build --release -q -p txmq
txmq=target/release/txmq
ticks=$(getconf CLK_TCK)
# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat; the command
# name in field 2 has no spaces here).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
port=18181
for rep in $(seq 1 "$reps"); do
  for which in old new; do
    bin=$old; [ "$which" = new ] && bin=$new
    dir=$(mktemp -d)
    "$bin" --listen 127.0.0.1:$port --data-dir "$dir/data" >"$dir/broker.log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do "$txmq" --broker 127.0.0.1:$port status >/dev/null 2>&1 && break; sleep 0.2; done
    IFS=';' read -r -a scenarios <<<"${SCENARIOS:-send;e2e --txn;e2e --txn --sdk}"
    for scenario in "${scenarios[@]}"; do
      w0=$(awk '/^write_bytes/ {print $2}' "/proc/$pid/io")
      c0=$(cpu_ticks "$pid")
      # shellcheck disable=SC2086
      line=$("$txmq" --broker 127.0.0.1:$port bench $scenario --duration "$duration" 2>/dev/null | grep '^RESULT' || true)
      w1=$(awk '/^write_bytes/ {print $2}' "/proc/$pid/io")
      c1=$(cpu_ticks "$pid")
      msgs=$(echo "$line" | sed -n 's/.* msgs=\([0-9]*\).*/\1/p')
      echo "rep=$rep broker=$which $line disk_bytes_per_msg=$(( (w1 - w0) / (${msgs:-0} > 0 ? ${msgs:-1} : 1) )) cpu_us_per_msg=$(( (c1 - c0) * 1000000 / ticks / (${msgs:-0} > 0 ? ${msgs:-1} : 1) ))"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
  done
done
