#!/usr/bin/env bash
# bench/compare.sh: txmq and the peers users would pick instead, in one run on this machine,
# then one table of the issue's targets with ratios (BENCHMARKS.md explains every row).
#
# usage: bench/compare.sh [SECTION ...]   sections: install txmq restart pg rabbit nats redis fsync grpc sled
#        (default: txmq restart pg rabbit). `install` (root, Debian 12) installs the peers' servers
#        and tools and builds their load generators; run it once on a new machine.
# env:   REPS (3) runs per scenario, taken in turns (rep 1 of every system, then rep 2, ...),
#        SECS (5) seconds per run, OUT (RESULT file; stderr of every run beside it, .stderr.log),
#        PEERS (../shared/peers), PEERS_BUILD (/var/tmp/txmq-peers), RESTART_MESSAGES (10000000).
# Every server listens on 127.0.0.1 only and is stopped by PID; every load is bounded in time.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
# Not under /root: RabbitMQ runs as user rabbitmq and must reach its data directory here.
export PEERS_BUILD=${PEERS_BUILD:-/var/tmp/txmq-peers}
export REPS=${REPS:-3} SECS=${SECS:-5}
mkdir -p "$PEERS_BUILD/results"
export OUT=${OUT:-$PEERS_BUILD/results/compare-$(date +%Y%m%d-%H%M%S).txt}
MEASURE="python3 $PEERS/tools/measure.py"
ADDR=127.0.0.1:18181
DATA=$PEERS_BUILD/txmq-data
TXMQ="$ROOT/target/release/txmq --broker $ADDR"
log() { echo "# $(date +%T) $*" | tee -a "$OUT" >&2; }

start_broker() { # fresh unless $1 = keep
  [ "${1:-}" = keep ] || rm -rf "$DATA"
  "$ROOT/target/release/txmq-broker" --data-dir "$DATA" --listen $ADDR > "$PEERS_BUILD/txmq-broker.log" 2>&1 &
  BROKER=$!
  local i; for i in $(seq 200); do $TXMQ status > /dev/null 2>&1 && return 0; sleep 0.05; done
  log "txmq broker did not start"; return 1
}
stop_broker() { kill -TERM "$BROKER" 2>/dev/null; wait "$BROKER" 2>/dev/null; }
ERRLOG=${OUT%.txt}.stderr.log
write_bytes() { awk '/^write_bytes/ {print $2}' "/proc/$BROKER/io"; }
# One txmq bench run: its RESULT line with the CPU accounting, the bytes the broker wrote to
# disk per message (/proc/PID/io) and the rep. stderr goes to $ERRLOG, never to /dev/null.
run() {
  echo "# loadavg $(cut -d' ' -f1-3 /proc/loadavg) before: bench $*" >> "$OUT"
  local w0 w1 line msgs
  w0=$(write_bytes)
  line=$($MEASURE --srv-pid "$BROKER" -- $TXMQ bench "$@" 2>>"$ERRLOG" | grep '^RESULT')
  w1=$(write_bytes)
  [ -n "$line" ] || { log "no result from: bench $*"; return; }
  msgs=$(echo "$line" | sed -n 's/.* msgs=\([0-9]*\).*/\1/p')
  echo "$line disk_bytes_per_msg=$(( (w1 - w0) / (msgs > 0 ? msgs : 1) )) rep=${REP:-1}" | tee -a "$OUT"
}
timed() { run "$@" --duration "${SECS}s"; }

do_txmq() { # one rep of every txmq row
  (cd "$ROOT" && cargo build --release -q -p txmq-broker -p txmq) || return 1
  start_broker || return 1
  log "txmq $($TXMQ status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])') pid=$BROKER rep=${REP:-1}"
  timed send --concurrency 1
  timed send --concurrency 64
  timed send --concurrency 64 --sdk
  timed txn --concurrency 64
  timed txn --concurrency 64 --sdk
  run consume --backlog 100000
  timed e2e --concurrency 64
  # One consumer, as RabbitMQ's e2e row runs.
  timed e2e --concurrency 64 --consumers 1
  timed e2e --concurrency 64 --rate "${E2E_RATE:-2000}"
  timed e2e --txn --concurrency 64
  timed e2e --txn --concurrency 64 --sdk
  # Eight clients, as the PostgreSQL outbox row runs.
  timed e2e --txn --concurrency 8
  timed e2e --txn --concurrency 8 --sdk
  timed e2e --txn --concurrency 64 --rate "${E2E_RATE:-2000}"
  timed e2e --txn --concurrency 64 --rate 5000
  # The same paced load through the SDK (natural batching), the path an order service takes.
  timed e2e --txn --concurrency 64 --sdk --rate "${E2E_RATE:-2000}"
  # And at 5,000/s, where the unary row above runs the host near its limit (BENCHMARKS.md).
  timed e2e --txn --concurrency 64 --sdk --rate 5000
  # Through the SDK committing one way, as send_in_db_transaction does: the producer goes on
  # without waiting for the commit's answer (the broker still makes it durable before delivery).
  timed e2e --txn --concurrency 64 --sdk --oneway
  timed e2e --txn --concurrency 8 --sdk --oneway
  timed e2e --txn --concurrency 64 --sdk --oneway --rate "${E2E_RATE:-2000}"
  # The same with one AckMessage call per receive (the protocol allows it; the official
  # clients send one per message).
  run consume --backlog 100000 --ack-batch
  timed e2e --concurrency 64 --ack-batch
  timed e2e --txn --concurrency 64 --ack-batch
  run checkback --count 10000 --check-after 6s
  stop_broker
}

rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
# The process's peak resident set so far (VmHWM): what "memory while filling" means.
peak_rss_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

do_restart() { # RESTART_MESSAGES stored, then a graceful restart: time to serving and RSS
  (cd "$ROOT" && cargo build --release -q -p txmq-broker -p txmq) || return 1
  local n=${RESTART_MESSAGES:-10000000}
  start_broker || return 1
  log "filling $n messages"
  # Filled through the SDK (natural batching): the store is the same, the fill quicker.
  $TXMQ bench send --count "$n" --concurrency 64 --sdk --topic restart > /dev/null 2>>"$ERRLOG"
  local full; full=$(rss_mib "$BROKER")
  local peak; peak=$(peak_rss_mib "$BROKER")
  local disk; disk=$(du -sm "$DATA" | cut -f1)
  stop_broker
  local t0; t0=$(date +%s.%N)
  start_broker keep || return 1
  local secs; secs=$(printf '%.3f' "$(echo "$(date +%s.%N) - $t0" | bc)")
  local stored; stored=$($TXMQ status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])')
  echo "RESULT system=txmq scenario=restart-to-serving clients=1 msgs=$stored secs=$secs rate=$(echo "$stored / $secs" | bc) p50_us=- p99_us=- durability=fsync-before-ok extra=rss_mib_after_restart=$(rss_mib "$BROKER"),rss_mib_after_fill=$full,peak_rss_mib_fill=$peak,disk_mib=$disk" | tee -a "$OUT"
  stop_broker
}

[ $# -eq 0 ] && set -- txmq restart pg rabbit
do_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql rabbitmq-server nats-server redis-server fio \
    protobuf-compiler bc python3-venv > /dev/null
  [ -x "$PEERS_BUILD/venv/bin/python" ] || python3 -m venv "$PEERS_BUILD/venv"
  "$PEERS_BUILD/venv/bin/python" -m pip install -q "psycopg[binary]"
  OUT=/dev/null "$PEERS/run.sh" build > /dev/null
}

# A peer's section for one rep: its RESULT lines tagged with the rep.
peer() {
  local tmp; tmp=$(mktemp)
  REPS=1 OUT=$tmp "$PEERS/run.sh" "$1" > /dev/null 2>>"$ERRLOG"
  sed "/^RESULT /s/\$/ rep=$REP/" "$tmp" | tee -a "$OUT" | grep '^RESULT' >&2
  rm -f "$tmp"
}

for s in "$@"; do
  case $s in
    install) do_install ;;
    txmq|restart|pg|rabbit|nats|redis|fsync|grpc|sled) ;;
    *) echo "unknown section $s" >&2; exit 2 ;;
  esac
done
# The systems take turns rep by rep (txmq, then each peer, then again), so that the host's
# drift over the minutes a section takes falls on all of them alike.
for REP in $(seq "$REPS"); do
  export REP
  for s in "$@"; do
    case $s in
      txmq) do_txmq ;;
      restart) [ "$REP" = 1 ] && do_restart ;;
      pg|rabbit|nats|redis|fsync|grpc|sled) peer "$s" ;;
    esac
  done
done
grep -q '^RESULT' "$OUT" 2>/dev/null || exit 0
echo "raw results: $OUT" >&2
python3 "$PEERS/tools/median.py" "$OUT"
echo
python3 "$ROOT/bench/targets.py" "$OUT"
