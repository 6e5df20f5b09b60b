#!/usr/bin/env python3
"""Why the journal writes its segments full of zeros instead of only reserving them.

Writes records one after another into a file and syncs each (`pwrite` + `fdatasync`), as the
journal's group commit does, on a file made three ways:

- zeros:     written full of zeros and synced first (what `store::segment_file` does);
- fallocate: blocks reserved with posix_fallocate (no data written: "unwritten" extents);
- append:    an empty file that grows with each record.

For each it prints syncs per second and the latency of a write + sync (p50, p99), interleaved
rep by rep so the host's drift hits all three alike. On ext4, a write into an unwritten extent
or past the end changes the file's metadata, and `fdatasync` then waits for a journal commit;
over zeros already written it does not.

    python3 bench/prealloc.py [DIR] [--reps N] [--count N] [--record BYTES]

DIR (default: the current directory) must be on the filesystem the broker's data will be on.
"""
import argparse
import os
import time

SEGMENT = 64 << 20


def make(path, how):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    if how == "zeros":
        step = bytes(1 << 20)
        for i in range(SEGMENT // len(step)):
            os.pwrite(fd, step, i * len(step))
        os.fsync(fd)
    elif how == "fallocate":
        os.posix_fallocate(fd, 0, SEGMENT)
        os.fsync(fd)
    return fd


def run(directory, how, count, record):
    path = os.path.join(directory, f"prealloc-{how}.tmp")
    fd = make(path, how)
    data = b"r" * record
    latencies = []
    try:
        start = time.perf_counter()
        for i in range(count):
            t = time.perf_counter()
            os.pwrite(fd, data, i * record)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1e6
    return count / elapsed, p(0.5), p(0.99)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", default=".")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--record", type=int, default=4096)
    a = ap.parse_args()
    if a.count * a.record > SEGMENT:
        ap.error(f"count x record must fit a {SEGMENT >> 20} MiB segment")
    for rep in range(1, a.reps + 1):
        for how in ("zeros", "fallocate", "append"):
            rate, p50, p99 = run(a.dir, how, a.count, a.record)
            print(f"RESULT file={how} record={a.record} rep={rep} syncs_per_s={rate:.0f} "
                  f"p50_us={p50:.0f} p99_us={p99:.0f}", flush=True)


if __name__ == "__main__":
    main()
