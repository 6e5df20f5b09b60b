#!/usr/bin/env bash
# Makes the virtualenv with the official RocketMQ Python client that tests/python_client.rs
# runs (target/python-venv, from PyPI); prints its python. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/python-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import rocketmq.v5" 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q rocketmq-python-client==5.1.2 >&2
fi
echo "$PWD/$venv/bin/python"
