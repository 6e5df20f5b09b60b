#!/usr/bin/env python3
"""targets.py RAWFILE... : the performance targets (BENCHMARKS.md) from the RESULT lines of one
run of bench/compare.sh.

A row whose run reported errors (`errors=N` with N > 0, or a missing count of acknowledged
messages) is refused: it is listed and never enters a median. A ratio is taken rep by rep
(compare.sh tags each line `rep=K`; the systems take turns rep by rep) and reported as the
median of the reps with its spread (lowest–highest); a target is met only if the median meets
it. A row whose inputs are missing says so instead of guessing."""
import re
import statistics
import sys

# Disk bytes the broker wrote per 256 B message, unary send at 64 in flight, measured before
# round 2 (2026-12-01, /proc/PID/io of a fresh broker, four runs: 6.4, 6.7, 6.9, 7.1 KB).
BASELINE_DISK_BYTES_PER_MSG = 6800

rows = {}
refused = []
for fn in sys.argv[1:]:
    for line in open(fn):
        if not line.startswith("RESULT "):
            continue
        kv = dict(re.findall(r"(\w+)=(\S+)", line))
        errors = re.search(r"(?:^|[ ,=])errors=(\d+)", line)
        if errors and int(errors.group(1)) > 0:
            refused.append(line.strip())
            continue
        rows.setdefault((kv["system"], kv["scenario"], kv["clients"]), []).append(kv)


def runs(system, scenario, clients):
    return rows.get((system, scenario, str(clients)), [])


def num(r, k):
    try:
        return float(str(r[k]).rstrip("%"))
    except (KeyError, TypeError, ValueError):
        return None


def by_rep(system, scenario, clients):
    out = {}
    for r in runs(system, scenario, clients):
        out.setdefault(r.get("rep", "1"), r)
    return out


def cpu_per_msg(r):
    """CPU-seconds of the server per message: its CPU (% of one core) over its rate."""
    cpu, rate = num(r, "srv_cpu"), num(r, "rate")
    return cpu / 100 / rate if cpu is not None and rate else None


def ratio(a, b, value=lambda r: num(r, "rate")):
    """Per-rep ratios value(a) / value(b) over the reps both have; else the ratio of the
    medians when the runs are not tagged with reps."""
    ra, rb = by_rep(*a), by_rep(*b)
    both = sorted(set(ra) & set(rb))
    xs = []
    for k in both:
        va, vb = value(ra[k]), value(rb[k])
        if va is not None and vb:
            xs.append(va / vb)
    if not xs:
        va = [value(r) for r in runs(*a) if value(r) is not None]
        vb = [value(r) for r in runs(*b) if value(r) is not None]
        if va and vb and statistics.median(vb):
            xs = [statistics.median(va) / statistics.median(vb)]
    return xs


def median_of(system, scenario, clients, key):
    vs = [num(r, key) for r in runs(system, scenario, clients)]
    vs = [v for v in vs if v is not None]
    return statistics.median(vs) if vs else None


out = []


def row(target, value, goal, ok):
    verdict = "-" if ok is None else ("met" if ok else "MISSED")
    out.append(f"| {target} | {value} | {goal} | {verdict} |")


def ratio_row(target, a, b, goal, at_most=False, value=lambda r: num(r, "rate")):
    xs = ratio(a, b, value)
    sign = "<=" if at_most else ">="
    if not xs:
        missing = [f"{s} {sc} ({c})" for (s, sc, c) in (a, b) if not runs(s, sc, c)]
        row(target, "missing input: " + "; ".join(missing or ["no comparable runs"]), f"{sign} {goal}x", None)
        return
    m = statistics.median(xs)
    spread = f" (reps {min(xs):.2f}–{max(xs):.2f}, n={len(xs)})" if len(xs) > 1 else " (one rep)"
    ok = m <= goal if at_most else m >= goal
    row(target, f"{m:.2f}x{spread}", f"{sign} {goal}x", ok)


TX = "txmq"
RQ = "rabbitmq-3.10-quorum"
PG = "postgres-15-outbox"
RQ_PUB = (RQ, "publish-confirmed-256B", 64)
RQ_E2E = (RQ, "e2e-pub+consume-ack-256B", 64)
PG_TXN = (PG, "order+outbox-txn-with-relay-running", 8)

ratio_row("SDK send, 64 tasks, natural batching / RabbitMQ quorum publish-confirm, 64 in flight",
          (TX, "send-durable-256B-sdk", 64), RQ_PUB, 2.0)
ratio_row("unary send as the official clients send (64 in flight) / RabbitMQ quorum",
          (TX, "send-durable-256B", 64), RQ_PUB, 1.0)
ratio_row("txn e2e through the SDK, 64 / PostgreSQL outbox with relay (8 clients)",
          (TX, "e2e-txn-half+commit+receive+ack-256B-sdk", 64), PG_TXN, 2.0)
ratio_row("txn e2e through the SDK, 8 clients / PostgreSQL outbox with relay, 8 clients",
          (TX, "e2e-txn-half+commit+receive+ack-256B-sdk", 8), PG_TXN, 2.0)
ratio_row("txn e2e through the SDK / RabbitMQ quorum e2e (not transactional)",
          (TX, "e2e-txn-half+commit+receive+ack-256B-sdk", 64), RQ_E2E, 1.0)
# The same through the SDK committing one way, as send_in_db_transaction does.
ONEWAY = "e2e-txn-half+commit+receive+ack-256B-sdk-oneway"
ratio_row("txn e2e through the SDK, one-way commit, 64 / PostgreSQL outbox with relay (8 clients)",
          (TX, ONEWAY, 64), PG_TXN, 2.0)
ratio_row("txn e2e through the SDK, one-way commit, 8 clients / PostgreSQL outbox with relay, 8 clients",
          (TX, ONEWAY, 8), PG_TXN, 2.0)
ratio_row("txn e2e through the SDK, one-way commit / RabbitMQ quorum e2e (not transactional)",
          (TX, ONEWAY, 64), RQ_E2E, 1.0)
ratio_row("broker CPU per sent message / RabbitMQ CPU per published message (unary, 64)",
          (TX, "send-durable-256B", 64), RQ_PUB, 0.6, at_most=True, value=cpu_per_msg)
ratio_row("broker CPU per sent message, SDK / RabbitMQ CPU per published message",
          (TX, "send-durable-256B-sdk", 64), RQ_PUB, 0.6, at_most=True, value=cpu_per_msg)

for name, scenario in (("unary", "send-durable-256B"), ("SDK", "send-durable-256B-sdk")):
    d = median_of(TX, scenario, 64, "disk_bytes_per_msg")
    goal = BASELINE_DISK_BYTES_PER_MSG / 3
    if d is None:
        row(f"disk bytes written per 256 B message, {name} send, 64 in flight", "not measured",
            f"<= {goal:,.0f} B (1/3 of {BASELINE_DISK_BYTES_PER_MSG:,} B)", None)
    else:
        row(f"disk bytes written per 256 B message, {name} send, 64 in flight", f"{d:,.0f} B",
            f"<= {goal:,.0f} B (1/3 of {BASELINE_DISK_BYTES_PER_MSG:,} B)", d <= goal)

for rate, goal_ms, mode in ((2000, 5, ""), (5000, 10, ""), (2000, 5, "-sdk"), (5000, 10, "-sdk"),
                           (2000, 5, "-sdk-oneway")):
    scenario = f"e2e-txn-half+commit+receive+ack-256B-paced{rate}{mode}"
    rs = runs(TX, scenario, 64)
    how = {"": "", "-sdk": ", through the SDK", "-sdk-oneway": ", through the SDK, one-way commit"}[mode]
    name = f"commit-to-consumer p99 at a paced {rate:,}/s{how}, every run"
    if not rs:
        row(name, "not measured", f"< {goal_ms} ms", None)
        continue
    p99s = [num(r, "p99_us") / 1000 for r in rs if num(r, "p99_us") is not None]
    theirs = ""
    rq = median_of(RQ, f"e2e-pub+consume-ack-256B-paced{rate}", 64, "p99_us")
    if rq is not None:
        theirs = f"; RabbitMQ quorum median {rq / 1000:.1f} ms"
    row(name,
        "runs " + ", ".join(f"{p:.1f}" for p in p99s) + f" ms{theirs}", f"< {goal_ms} ms in every run",
        bool(p99s) and max(p99s) < goal_ms)

checks = runs(TX, "checkback-commit-256B", 64)
if checks:
    p99 = median_of(TX, "checkback-commit-256B", 64, "p99_us")
    row("check-back lateness against its due time, p99 (median of runs)", f"{p99 / 1000:.1f} ms", "reported", None)

restart = runs(TX, "restart-to-serving", 1)
if not restart:
    row("10,000,000 stored: restart to serving / RSS", "not measured", "< 5 s / < 250 MiB", None)
else:
    r = restart[0]
    ex = dict(re.findall(r"(\w+)=([\d.]+)", r.get("extra", "")))
    secs, msgs = num(r, "secs"), num(r, "msgs")
    rss = max(float(ex.get(k, 0)) for k in ("rss_mib_after_restart", "rss_mib_after_fill", "peak_rss_mib_fill"))
    full = msgs is not None and msgs >= 1e7
    row(f"{msgs:,.0f} stored: restart to serving / peak RSS", f"{secs:.2f} s / {rss:.0f} MiB",
        "< 5 s / < 250 MiB with 10,000,000 stored (RESTART_MESSAGES=10000000)",
        (secs < 5 and rss < 250) if full else None)

print("| target | value | goal | verdict |")
print("|---|---|---|---|")
print("\n".join(out))
if refused:
    print(f"\nRefused ({len(refused)} runs reported errors):")
    for line in refused:
        print("  " + line)
