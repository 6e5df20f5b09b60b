#!/usr/bin/env python3
"""targets.py RAWFILE... : the issue's targets (BENCHMARKS.md) from RESULT lines of one run.

Median of runs per (system, scenario, clients), as tools/median.py in shared/peers does; a row
whose inputs are missing says so instead of guessing."""
import re
import sys

rows = {}
for fn in sys.argv[1:]:
    for line in open(fn):
        if line.startswith("RESULT "):
            kv = dict(re.findall(r"(\w+)=(\S+)", line))
            rows.setdefault((kv["system"], kv["scenario"], kv["clients"]), []).append(kv)


def median(system, scenario, clients):
    rs = sorted(rows.get((system, scenario, str(clients)), []), key=lambda r: float(r["rate"]))
    return rs[(len(rs) - 1) // 2] if rs else None


def median_of(system, scenario, clients, key):
    """The median of one field over the runs (paced rows all run at the same rate, so the
    median-rate run says nothing about their latency)."""
    vs = sorted(float(r[key]) for r in rows.get((system, scenario, str(clients)), []) if r.get(key, "-") != "-")
    return vs[(len(vs) - 1) // 2] if vs else None


def num(r, k):
    try:
        return float(r[k])
    except (KeyError, TypeError, ValueError):
        return None


def extra(r, k):
    m = re.search(rf"(?:^|,){k}=([\d.]+)", r.get("extra", "")) if r else None
    return float(m.group(1)) if m else None


TX = "txmq"
RQ = "rabbitmq-3.10-quorum"
PG = "postgres-15-outbox"
send = median(TX, "send-durable-256B", 64)
rq_pub = median(RQ, "publish-confirmed-256B", 64)
e2e_txn = median(TX, "e2e-txn-half+commit+receive+ack-256B", 64)
e2e_txn_batched = median(TX, "e2e-txn-half+commit+receive+ack-batched-256B", 64)
pg_txn = median(PG, "order+outbox-txn-with-relay-running", 8)
rq_e2e = median(RQ, "e2e-pub+consume-ack-256B", 64)
paced = median(TX, "e2e-txn-half+commit+receive+ack-256B-paced2000", 64)
rq_paced = median(RQ, "e2e-pub+consume-ack-256B-paced2000", 64)
pg_lag = median(PG, "relay-follow-batch100-poll10ms", 1)
restart = median(TX, "restart-to-serving", 1)

out = []


def row(target, ours, theirs, value, goal, ok):
    verdict = "-" if ok is None else ("met" if ok else "MISSED")
    out.append(f"| {target} | {ours} | {theirs} | {value} | {goal} | {verdict} |")


def ratio_row(target, a, b, goal):
    if a is None or b is None:
        row(target, fmt(a), fmt(b), "missing input", f">= {goal}x", None)
        return
    x = num(a, "rate") / num(b, "rate")
    row(target, fmt(a), fmt(b), f"{x:.2f}x", f">= {goal}x", x >= goal)


def fmt(r):
    return "not measured" if r is None else f"{num(r, 'rate'):,.0f}/s"


ratio_row("durable send, 64 in flight / RabbitMQ quorum publish+confirm", send, rq_pub, 1.5)
ratio_row("txn e2e (half+commit+receive+ack) / PostgreSQL outbox with relay", e2e_txn, pg_txn, 3.0)
ratio_row("txn e2e / RabbitMQ quorum e2e (not transactional)", e2e_txn, rq_e2e, 1.0)
ratio_row("txn e2e, acks batched per receive / PostgreSQL outbox with relay", e2e_txn_batched, pg_txn, 3.0)
ratio_row("txn e2e, acks batched per receive / RabbitMQ quorum e2e", e2e_txn_batched, rq_e2e, 1.0)
if paced is None:
    row("commit-to-consumer p99 at 2,000/s", "not measured", "", "", "< 5 ms", None)
else:
    scenario = "e2e-txn-half+commit+receive+ack-256B-paced2000"
    p99 = median_of(TX, scenario, 64, "p99_us") / 1000
    p50 = median_of(TX, scenario, 64, "p50_us") / 1000
    runs = ", ".join(f"{float(r['p99_us']) / 1000:.1f}" for r in rows[(TX, scenario, "64")])
    theirs = []
    if rq_paced:
        theirs.append(f"RabbitMQ quorum {median_of(RQ, 'e2e-pub+consume-ack-256B-paced2000', 64, 'p99_us') / 1000:.1f} ms")
    if pg_lag:
        theirs.append(f"PG relay {num(pg_lag, 'p99_us') / 1000:.1f} ms")
    row("commit-to-consumer p99 at 2,000/s (median of runs)", f"{p99:.2f} ms (p50 {p50:.2f}; runs {runs})",
        ", ".join(theirs) or "-", f"{p99:.2f} ms", "< 5 ms", p99 < 5)
if restart is None:
    row("restart with 1M stored", "not measured", "", "", "< 5 s, RSS < 200 MiB", None)
else:
    secs, rss, msgs = num(restart, "secs"), extra(restart, "rss_mib_after_restart"), num(restart, "msgs")
    fill = extra(restart, "rss_mib_after_fill")
    # Runs before 2026-12-01 did not record the peak (VmHWM) during the fill.
    peak = extra(restart, "peak_rss_mib_fill")
    row(f"restart with {msgs:,.0f} stored", f"{secs:.2f} s", "-", f"{secs:.2f} s", "< 5 s", secs < 5 and msgs >= 1e6)
    worst = max(rss, fill, peak or 0)
    during = f"peak {peak:.0f} MiB during the fill" if peak is not None else "peak during the fill not recorded"
    row(f"RSS with {msgs:,.0f} stored", f"{rss:.0f} MiB after restart, {fill:.0f} MiB after the fill, {during}", "-",
        f"{worst:.0f} MiB", "< 200 MiB", worst < 200)

print("| target | txmq | peer | value | goal | verdict |")
print("|---|---|---|---|---|---|")
print("\n".join(out))
