#!/usr/bin/env bash
# Runs the three servers in turns (REPS rounds) against the same client at each concurrency.
# usage: bench/unary-floor/run.sh   env: REPS (3), SECS (5), CONCS ("1 8 64")
set -eu
cd "$(dirname "$0")"
cargo build --release -q
BIN=target/release/unary-floor ADDR=127.0.0.1:18399
for rep in $(seq "${REPS:-3}"); do
  for conc in ${CONCS:-1 8 64}; do
    for mode in ${MODES:-tonic tonic-local h2-spawn h2-inline}; do
      $BIN server $mode $ADDR & SRV=$!
      sleep 0.3
      echo "$($BIN client $ADDR "$conc" "${SECS:-5}" $SRV) server=$mode rep=$rep loadavg=$(cut -d' ' -f1 /proc/loadavg)"
      kill $SRV; wait $SRV 2>/dev/null || true
    done
  done
done
