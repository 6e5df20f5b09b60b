#!/usr/bin/env bash
# Installs (if needed) and starts a local PostgreSQL for the SDK's PostgreSQL tests, then
# prints the connection URL. Loopback only; idempotent.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
cluster=$(pg_lsclusters -h | awk 'NR==1 {print $2}')
pg_ctlcluster "$version" "$cluster" start >/dev/null 2>&1 || true
for _ in $(seq 1 30); do
  su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 && break
  sleep 1
done
su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='txmq'\"" | grep -q 1 ||
  su postgres -c "psql -qc \"create role txmq login password 'txmq'\""
su postgres -c "psql -qtAc \"select 1 from pg_database where datname='txmq_test'\"" | grep -q 1 ||
  su postgres -c "createdb -O txmq txmq_test"
echo "postgres://txmq:txmq@127.0.0.1:5432/txmq_test"
