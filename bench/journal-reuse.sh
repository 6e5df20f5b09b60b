#!/usr/bin/env bash
# Zeros written ahead of the journal once retention removes old segments: runs a long unary
# `txmq bench send` against each broker binary (fresh data directory, 10 s retention checked
# every 2 s) and, over a 25 s window after the journal has reached full-size segments and
# retention has begun, prints the bytes the broker wrote to journal segments and to the next
# segment made ahead (strace pwrite64: zeros, unless a removed segment is reused), and what
# reached the device (/proc/PID/io write_bytes). strace slows the broker: read the bytes, not
# the rate.
#
#   bash bench/journal-reuse.sh OLD_BROKER_BINARY NEW_BROKER_BINARY
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_setup 18191
for bin in "$@"; do
  rm -rf "$dir/data"
  start_broker "$bin" --retention 10s --retention-interval 2s
  "$txmq" --broker 127.0.0.1:$port bench send --duration 80s >"$dir/bench.txt" 2>/dev/null &
  bench=$!
  sleep 45
  w0=$(awk '/^write_bytes/ {print $2}' "/proc/$pid/io")
  timeout 25 strace -f -y -p "$pid" -e trace=pwrite64 -o "$dir/strace" >/dev/null 2>&1 || true
  w1=$(awk '/^write_bytes/ {print $2}' "/proc/$pid/io")
  wait "$bench"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # "pwrite64(fd<path>, ..., len, off) = n": bytes per kind of file, lines with a result only.
  awk -v bin="$bin" -v dev=$((w1 - w0)) '
    /pwrite64/ && match($0, /= [0-9]+$/) {
      n = substr($0, RSTART + 2)
      if ($0 ~ /spare\.tmp>/) z += n; else if ($0 ~ /\.jnl>/) j += n; else o += n
    }
    END { printf "broker=%s window=25s journal_MiB=%.1f zeros_MiB=%.1f other_MiB=%.1f device_MiB=%.1f device_per_journal_byte=%.2f\n",
          bin, j / 2^20, z / 2^20, o / 2^20, dev / 2^20, dev / (j > 0 ? j : 1) }' "$dir/strace"
  grep '^RESULT' "$dir/bench.txt" || true
done
