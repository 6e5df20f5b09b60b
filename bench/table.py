#!/usr/bin/env python3
"""table.py RAWFILE : every row of one run of bench/compare.sh as the Markdown table of
BENCHMARKS.md: per (system, scenario, clients), the median rate of its reps, every rep's rate,
and the other columns from the rep whose rate is the median (the lower middle one of an even
count). Rows whose run reported errors are marked, as targets.py refuses them."""
import re
import sys

rows = {}
order = []
for line in open(sys.argv[1]):
    if not line.startswith("RESULT "):
        continue
    kv = dict(re.findall(r"(\w+)=(\S+)", line))
    key = (kv["system"], kv["scenario"], kv["clients"])
    if key not in rows:
        order.append(key)
    rows.setdefault(key, []).append(kv)

print("| system | scenario | clients | msgs/s (median) | runs (msgs/s) | p50 µs | p99 µs | durability "
      "| server CPU | client CPU | other CPU | extra |")
print("|---|---|---:|---:|---|---:|---:|---|---:|---:|---:|---|")
for key in order:
    reps = rows[key]
    by_rate = sorted(reps, key=lambda r: float(r.get("rate", 0)))
    mid = by_rate[(len(by_rate) - 1) // 2]
    runs = ", ".join(str(round(float(r.get("rate", 0)))) for r in reps)
    extra = mid.get("extra", "")
    if "disk_bytes_per_msg" in mid:
        extra += f",disk_bytes_per_msg={mid['disk_bytes_per_msg']}"
    if any(re.search(r"errors=([1-9]\d*)", r.get("extra", "")) for r in reps):
        extra += " (a rep reported errors)"
    print(f"| {key[0]} | {key[1]} | {key[2]} | {round(float(mid.get('rate', 0))):,} | {runs} "
          f"| {mid.get('p50_us', '-')} | {mid.get('p99_us', '-')} | {mid.get('durability', '-')} "
          f"| {mid.get('srv_cpu', '-')} | {mid.get('cli_cpu', '-')} | {mid.get('other_cpu', '-')} | {extra} |")
