#!/usr/bin/env bash
# The cost of the cluster's forwarding, and what etcd sees under load: runs `txmq bench send`
# and `txmq bench e2e --txn` against a standalone broker and against one node of a 3-node
# cluster (a local etcd, three brokers on loopback, all on this machine), interleaved, and
# counts etcd's gRPC requests (its own /metrics) while each cluster run lasts.
#
#   bash bench/cluster.sh [REPS] [DURATION]
#   SETUPS="cluster replicated" bash bench/cluster.sh   # 3 nodes with 1 copy vs 3 copies each
#   SETUPS="replicated rabbit3" bash bench/cluster.sh   # 3 copies vs a 3-node RabbitMQ cluster
#
# Setups: `standalone` (one broker), `cluster` (3 nodes, --replicas 1), `replicated` (3 nodes,
# --replicas 3 --min-insync-replicas 2: each write fsynced on its node and both followers),
# `rabbit3` (three RabbitMQ nodes clustered on this machine, one quorum queue on all three:
# a publish is confirmed once a majority has fsynced it; load by the peers' amqp_bench).
# Needs etcd (`apt-get install etcd-server`); rabbit3 needs rabbitmq-server and amqp_bench built
# by `bench/compare.sh install` (PEERS_BUILD). Prints RESULT lines tagged with the rep and the
# setup, and one ETCD line per txmq cluster run: requests during the run and per 1,000 messages.
set -euo pipefail
reps=${1:-2} duration=${2:-10s} setups=${SETUPS:-standalone cluster}
cd "$(dirname "$0")/.."
cargo build --release -q -p txmq -p txmq-broker
txmq=target/release/txmq broker=target/release/txmq-broker
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_up() { for _ in $(seq 100); do "$txmq" --broker "$1" status >/dev/null 2>&1 && return; sleep 0.1; done; echo "no broker at $1" >&2; exit 1; }
etcd_requests() { curl -s "http://127.0.0.1:22379/metrics" | awk '/^grpc_server_started_total/ {s += $NF} END {printf "%d", s}'; }

etcd --name bench --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:22379 \
  --advertise-client-urls http://127.0.0.1:22379 --listen-peer-urls http://127.0.0.1:22380 \
  --initial-advertise-peer-urls http://127.0.0.1:22380 --initial-cluster bench=http://127.0.0.1:22380 \
  >"$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s http://127.0.0.1:22379/health >/dev/null 2>&1 && break; sleep 0.1; done

# RabbitMQ runs as user rabbitmq: its directories are outside the private temporary one.
rabbit_base=${PEERS_BUILD:-/var/tmp/txmq-peers}/rabbit3
amqp_bench=${PEERS_BUILD:-/var/tmp/txmq-peers}/target/release/amqp_bench
rabbitmqctl() { ERL_EPMD_ADDRESS=127.0.0.1 /usr/sbin/rabbitmqctl "$@"; }
rabbit_up() { [ "$(rabbitmqctl -n "$1" -q eval 'rabbit:is_running().' 2>/dev/null)" = true ]; }
rabbit3() { # rep: three clustered nodes r1..r3@localhost on AMQP ports 15693-15695, then the load
  rm -rf "$rabbit_base"
  for i in 1 2 3; do
    mkdir -p "$rabbit_base/r$i/mnesia" "$rabbit_base/r$i/log"
  done
  chown -R rabbitmq:rabbitmq "$rabbit_base"
  for i in 1 2 3; do
    su rabbitmq -s /bin/sh -c "cd /var/lib/rabbitmq && env HOME=/var/lib/rabbitmq RABBITMQ_NODENAME=r$i@localhost \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=1569$((i + 2)) RABBITMQ_DIST_PORT=2569$((i + 2)) \
      ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_MNESIA_BASE=$rabbit_base/r$i/mnesia RABBITMQ_LOG_BASE=$rabbit_base/r$i/log \
      /usr/lib/rabbitmq/bin/rabbitmq-server" >"$rabbit_base/r$i/stdout.log" 2>&1 &
  done
  for i in 1 2 3; do
    for _ in $(seq 90); do rabbit_up "r$i@localhost" && break; sleep 2; done
    rabbit_up "r$i@localhost" || { echo "RabbitMQ node r$i did not start" >&2; exit 1; }
  done
  for i in 2 3; do
    rabbitmqctl -n "r$i@localhost" -q stop_app
    rabbitmqctl -n "r$i@localhost" -q join_cluster r1@localhost
    rabbitmqctl -n "r$i@localhost" -q start_app
  done
  echo "# $(rabbitmqctl -n r1@localhost -q cluster_status --formatter json | python3 -c 'import json,sys; print("rabbitmq nodes running:", json.load(sys.stdin)["running_nodes"])')"
  local url=amqp://guest:guest@127.0.0.1:15693/%2f secs=${duration%s}
  # The queue is declared through r1 (its leader) with members on all three nodes.
  for scenario in "pub --window 64" "e2e --window 64"; do
    # shellcheck disable=SC2086
    out=$("$amqp_bench" $scenario --secs "$secs" --url "$url" --qtype quorum 2>/dev/null | grep '^RESULT')
    echo "rep=$rep setup=rabbit3 $out"
  done
  echo "# quorum queue members: $(rabbitmqctl -n r1@localhost -q list_queues name members --formatter json 2>/dev/null | tr -d '\n')"
  for i in 3 2 1; do rabbitmqctl -n "r$i@localhost" -q stop >/dev/null 2>&1 || true; done
  pkill -u rabbitmq -x epmd 2>/dev/null || true
}

for rep in $(seq 1 "$reps"); do
  for setup in $setups; do
    if [ "$setup" = rabbit3 ]; then
      rabbit3
      continue
    fi
    dir="$work/$setup-$rep"
    mkdir -p "$dir"
    started=()
    if [ "$setup" = standalone ]; then
      "$broker" --listen 127.0.0.1:18291 --data-dir "$dir/n0" --metrics-listen off >"$dir/n0.log" 2>&1 &
      started+=($!)
    else
      copies=1
      [ "$setup" = replicated ] && copies=3
      for i in 1 2 3; do
        "$broker" --listen 127.0.0.1:1829$i --data-dir "$dir/n$i" --metrics-listen off --replicas "$copies" \
          --etcd http://127.0.0.1:22379 --etcd-prefix "/bench-$rep-$setup" --node-id "n$i" >"$dir/n$i.log" 2>&1 &
        started+=($!)
      done
    fi
    pids+=("${started[@]}")
    wait_up 127.0.0.1:18291
    [ "$setup" != standalone ] && { wait_up 127.0.0.1:18292; wait_up 127.0.0.1:18293; sleep 4; }
    if [ "$setup" = replicated ]; then
      # Until every shard has both followers in sync.
      for _ in $(seq 100); do
        synced=$({ "$txmq" --broker 127.0.0.1:18291 --json cluster status 2>/dev/null || true; } | grep -o '"in_sync":true' | wc -l || true)
        [ "$synced" -ge 6 ] && break
        sleep 0.2
      done
    fi
    if [ "$setup" != standalone ]; then
      # etcd requests with the cluster idle, for comparison: they depend on time, not load.
      before=$(etcd_requests); sleep "${duration%s}"; after=$(etcd_requests)
      echo "ETCD rep=$rep scenario=idle requests=$((after - before)) msgs=0"
    fi
    for scenario in "send" "e2e" "e2e --txn"; do
      before=$(etcd_requests)
      # shellcheck disable=SC2086
      out=$("$txmq" --broker 127.0.0.1:18291 bench $scenario --duration "$duration" 2>/dev/null | grep '^RESULT')
      after=$(etcd_requests)
      echo "rep=$rep setup=$setup $out"
      if [ "$setup" != standalone ]; then
        msgs=$(echo "$out" | sed -n 's/.* msgs=\([0-9]*\).*/\1/p')
        echo "ETCD rep=$rep scenario=${scenario// /-} requests=$((after - before)) msgs=$msgs per_1000_msgs=$(awk -v r=$((after - before)) -v m="$msgs" 'BEGIN {printf "%.2f", m ? r * 1000 / m : 0}')"
      fi
    done
    for p in "${started[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  done
done
