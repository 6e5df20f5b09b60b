#!/usr/bin/env bash
# A local txmq cluster to try: a 3-member etcd and 3 brokers on loopback, all on this machine.
#
#   bash examples/cluster/run.sh start   # prints the brokers' addresses; data under ./txmq-cluster
#   bash examples/cluster/run.sh stop    # stops every process it started (by PID)
#
# Needs etcd (`apt-get install etcd-server`). Point any RocketMQ 5 client at any one broker
# (127.0.0.1:8081, :8082 or :8083); `txmq --broker 127.0.0.1:8081 cluster status` lists them.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=${TXMQ_CLUSTER_DIR:-./txmq-cluster}
pidfile=$root/pids

case "${1:-}" in
start)
  [ -f "$pidfile" ] && { echo "already started (see $pidfile); run: $0 stop" >&2; exit 1; }
  cargo build --release -q -p txmq -p txmq-broker
  mkdir -p "$root"
  members=""
  for i in 1 2 3; do members+="${members:+,}e$i=http://127.0.0.1:2${i}380"; done
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$root/etcd-$i" \
      --listen-client-urls "http://127.0.0.1:2${i}379" --advertise-client-urls "http://127.0.0.1:2${i}379" \
      --listen-peer-urls "http://127.0.0.1:2${i}380" --initial-advertise-peer-urls "http://127.0.0.1:2${i}380" \
      --initial-cluster "$members" --initial-cluster-state new >"$root/etcd-$i.log" 2>&1 &
    echo $! >>"$pidfile"
  done
  endpoints=http://127.0.0.1:21379,http://127.0.0.1:22379,http://127.0.0.1:23379
  for _ in $(seq 100); do curl -s http://127.0.0.1:21379/health | grep -q true && break; sleep 0.2; done
  for i in 1 2 3; do
    target/release/txmq-broker --etcd "$endpoints" --node-id "n$i" --listen "127.0.0.1:808$i" \
      --data-dir "$root/broker-$i" --metrics-listen "127.0.0.1:909$i" >"$root/broker-$i.log" 2>&1 &
    echo $! >>"$pidfile"
  done
  for i in 1 2 3; do
    for _ in $(seq 100); do target/release/txmq --broker "127.0.0.1:808$i" status >/dev/null 2>&1 && break; sleep 0.2; done
  done
  target/release/txmq --broker 127.0.0.1:8081 cluster status
  echo "logs and data: $root; stop with: $0 stop"
  ;;
stop)
  [ -f "$pidfile" ] || { echo "nothing started" >&2; exit 0; }
  # Brokers first (they leave the cluster), then etcd.
  tac "$pidfile" | while read -r pid; do kill "$pid" 2>/dev/null || true; done
  # Wait until they are gone, so that a new start finds the ports free.
  for pid in $(cat "$pidfile"); do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  rm -f "$pidfile"
  echo "stopped; data kept in $root"
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
