#!/usr/bin/env bash
# Installs the official RocketMQ Node.js client (rocketmq-client-nodejs, from npm) that
# broker/tests/cluster_clients.rs runs, into target/node-client; prints that directory. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=target/node-client
if [ ! -f "$dir/node_modules/rocketmq-client-nodejs/package.json" ]; then
  mkdir -p "$dir"
  [ -f "$dir/package.json" ] || echo '{"name":"txmq-node-e2e","private":true}' >"$dir/package.json"
  (cd "$dir" && npm install --silent --no-audit --no-fund rocketmq-client-nodejs@1.0.8 >&2)
fi
echo "$PWD/$dir"
