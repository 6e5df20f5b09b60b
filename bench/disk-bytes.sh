#!/usr/bin/env bash
# Where a broker's disk writes go: runs one `txmq bench` scenario against BROKER (fresh data
# directory) with the broker under strace, and prints the RESULT line with the bytes per
# message that the broker handed to the kernel (pwrite64: sled's log and the value log) and
# that reached the device (/proc/PID/io write_bytes), and the fdatasync count. strace slows
# the broker: read the bytes, not the rate.
#
#   bash bench/disk-bytes.sh BROKER_BINARY [bench args, default: send --duration 10s]
#   bash bench/disk-bytes.sh target/release/txmq-broker send --duration 10s --size 1024
set -euo pipefail
broker=$1; shift
[ $# -gt 0 ] || set -- send --duration 10s
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_setup 18182
start_broker "$broker"
w0=$(awk '/^write_bytes/ {print $2}' "/proc/$pid/io")
strace -f -p "$pid" -e trace=pwrite64,fdatasync -o "$dir/strace" 2>/dev/null &
tracer=$!
sleep 1
line=$("$txmq" --broker 127.0.0.1:$port bench "$@" 2>/dev/null | grep '^RESULT' || true)
w1=$(awk '/^write_bytes/ {print $2}' "/proc/$pid/io")
kill "$tracer"; wait "$tracer" 2>/dev/null || true
kill "$pid"; wait "$pid" 2>/dev/null || true
msgs=$(echo "$line" | sed -n 's/.* msgs=\([0-9]*\).*/\1/p')
msgs=${msgs:-0}
[ "$msgs" -gt 0 ] || { echo "no RESULT line: $line" >&2; exit 1; }
# strace prints "pwrite64(fd, ..., len, off) = n", or an "<unfinished ...>" line and later
# "<... pwrite64 resumed>) = n": count the lines that end in a result only.
pwritten=$(awk '/pwrite64/ && match($0, /= [0-9]+$/) {s += substr($0, RSTART + 2)} END {print s + 0}' "$dir/strace")
syncs=$(grep -c fdatasync "$dir/strace" || true)
echo "$line pwrite_bytes_per_msg=$((pwritten / msgs)) device_bytes_per_msg=$(((w1 - w0) / msgs)) fdatasyncs=$syncs"
