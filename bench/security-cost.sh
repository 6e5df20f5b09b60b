#!/usr/bin/env bash
# The cost of authentication + TLS on `txmq bench send`: the same release broker run plain and
# with --auth and --tls-mode required (the CLI signing every request and speaking TLS),
# interleaved, fresh data directory each; prints the RESULT lines tagged with the setup.
#
#   bash bench/security-cost.sh [REPS] [DURATION]
set -euo pipefail
reps=${1:-2} duration=${2:-10s}
cd "$(dirname "$0")/.."
cargo build --release -q -p txmq -p txmq-broker
txmq=target/release/txmq broker=target/release/txmq-broker
certs=$(mktemp -d)
trap 'rm -rf "$certs"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench-ca -keyout "$certs/ca.key" -out "$certs/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=txmq \
  -keyout "$certs/key.pem" -out "$certs/req.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$certs/san.ext"
openssl x509 -req -in "$certs/req.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca.key" -CAcreateserial \
  -days 2 -extfile "$certs/san.ext" -out "$certs/cert.pem" 2>/dev/null
port=18282
for rep in $(seq 1 "$reps"); do
  for setup in plain auth+tls; do
    dir=$(mktemp -d)
    if [ "$setup" = plain ]; then
      "$broker" --listen 127.0.0.1:$port --data-dir "$dir/data" >"$dir/log" 2>&1 &
      cli=("$txmq" --broker 127.0.0.1:$port)
      env=()
    else
      TXMQ_AUTH_INIT_SECRET=bench-secret-123 "$broker" --listen 127.0.0.1:$port --data-dir "$dir/data" \
        --auth --auth-init-user bench --tls-cert "$certs/cert.pem" --tls-key "$certs/key.pem" \
        --tls-mode required >"$dir/log" 2>&1 &
      cli=("$txmq" --broker 127.0.0.1:$port --access-key bench --ca-file "$certs/ca.pem")
      env=(TXMQ_SECRET_KEY=bench-secret-123)
    fi
    pid=$!
    for _ in $(seq 50); do env "${env[@]}" "${cli[@]}" status >/dev/null 2>&1 && break; sleep 0.2; done
    env "${env[@]}" "${cli[@]}" bench send --duration "$duration" 2>/dev/null \
      | grep '^RESULT' | sed "s/^/rep=$rep setup=$setup /"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
  done
done
