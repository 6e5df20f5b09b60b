#!/usr/bin/env bash
# Runs `txmq bench send` and `txmq bench e2e --txn` against two broker builds, interleaved
# (old, new, old, new …), each on a fresh data directory, with the same txmq CLI, and prints
# the RESULT lines tagged with the rep and the broker. Compare ratios within one run.
#
#   bash bench/before-after.sh OLD_BROKER_BINARY NEW_BROKER_BINARY [REPS] [DURATION]
#
# Build an older broker with `git worktree add /tmp/old <rev>` and
# `cargo build --release -p txmq-broker --target-dir /tmp/old-target` in it.
set -euo pipefail
old=$1 new=$2 reps=${3:-2} duration=${4:-10s}
cd "$(dirname "$0")/.."
cargo build --release -q -p txmq
txmq=target/release/txmq
port=18181
for rep in $(seq 1 "$reps"); do
  for which in old new; do
    bin=$old; [ "$which" = new ] && bin=$new
    dir=$(mktemp -d)
    "$bin" --listen 127.0.0.1:$port --data-dir "$dir/data" >"$dir/broker.log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do "$txmq" --broker 127.0.0.1:$port status >/dev/null 2>&1 && break; sleep 0.2; done
    for scenario in "send" "e2e --txn"; do
      # shellcheck disable=SC2086
      "$txmq" --broker 127.0.0.1:$port bench $scenario --duration "$duration" 2>/dev/null \
        | grep '^RESULT' | sed "s/^/rep=$rep broker=$which /"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
  done
done
