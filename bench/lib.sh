# Shared by the bench scripts that run one broker binary on a scratch data directory.
# Source it after `set -euo pipefail`; then `bench_setup PORT` and `start_broker BINARY [ARGS]`.

# Moves to the repository root, builds the CLI, and makes a scratch directory removed at exit.
# Sets: txmq (the CLI), port, dir.
bench_setup() {
  port=$1
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  cargo build --release -q -p txmq
  txmq=target/release/txmq
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
}

# Starts BINARY on $port over $dir/data (extra ARGS passed on) and waits until it serves (up to
# 60 s: a start replays sled's log). Sets: pid.
start_broker() {
  local bin=$1; shift
  "$bin" --listen 127.0.0.1:"$port" --data-dir "$dir/data" "$@" >>"$dir/broker.log" 2>&1 &
  pid=$!
  for _ in $(seq 1200); do "$txmq" --broker 127.0.0.1:"$port" status >/dev/null 2>&1 && return; sleep 0.05; done
  echo "the broker did not start; its log: $dir/broker.log" >&2
  return 1
}
