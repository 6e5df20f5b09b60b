//! What a bench run measured: the report (text with the peers' `RESULT` line, or JSON),
//! latency histograms, and the live progress line.

use crate::admin;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub concurrency: usize,
    pub size: usize,
    pub messages: u64,
    pub errors: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub flushes: u64,
    pub writes_per_flush: f64,
    /// Transactional e2e only: latency from the commit call to the consumer's receipt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_to_receipt: Option<Percentiles>,
    /// The scenario's name in the `RESULT` lines that `bench/compare.sh` collects.
    pub result_name: String,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let at = |q| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles { p50_ms: at(0.5), p99_ms: at(0.99), p999_ms: at(0.999) }
    }
}

/// A latency histogram in microseconds, 1 µs to 60 s.
pub(super) fn histogram() -> Histogram<u64> {
    // The sum of no histograms is an empty, auto-resizing one with 3 significant figures.
    std::iter::empty().sum()
}

pub(super) fn record(h: &Mutex<Histogram<u64>>, micros: u64) {
    if let Ok(mut h) = h.lock() {
        let _ = h.record(micros.clamp(1, 60_000_000));
    }
}

/// What a scenario measured, before the broker's counters are added.
pub(super) struct Run {
    pub(super) scenario: String,
    pub(super) result_name: String,
    pub(super) concurrency: usize,
    pub(super) size: usize,
    pub(super) messages: u64,
    pub(super) errors: u64,
    pub(super) seconds: f64,
    pub(super) latency: Histogram<u64>,
    pub(super) commit_latency: Option<Histogram<u64>>,
}

impl Report {
    /// The report of a run, with the broker's flushes between the `before` and `after` status
    /// readings.
    pub(super) fn new(run: Run, before: &admin::StatusView, after: &admin::StatusView) -> Self {
        let flushes = after.flushes.saturating_sub(before.flushes);
        let writes = after.flushed_writes.saturating_sub(before.flushed_writes);
        let latency = Percentiles::of(&run.latency);
        Report {
            scenario: run.scenario,
            concurrency: run.concurrency,
            size: run.size,
            messages: run.messages,
            errors: run.errors,
            seconds: run.seconds,
            msgs_per_sec: run.messages as f64 / run.seconds.max(1e-3),
            p50_ms: latency.p50_ms,
            p99_ms: latency.p99_ms,
            p999_ms: latency.p999_ms,
            flushes,
            writes_per_flush: if flushes == 0 { 0.0 } else { writes as f64 / flushes as f64 },
            commit_to_receipt: run.commit_latency.as_ref().map(Percentiles::of),
            result_name: run.result_name,
        }
    }
}

/// Two lines for people, then a `RESULT` line in the format of the peers' load generators, so
/// that txmq and its peers land in one table (`bench/compare.sh`).
pub(super) fn render(r: &Report) -> String {
    let us = |ms: f64| (ms * 1000.0).round() as u64;
    let mut text = format!(
        "{}: {} msgs in {:.1}s = {:.0} msgs/s ({} in flight, {} B), p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, {} errors\n",
        r.scenario, r.messages, r.seconds, r.msgs_per_sec, r.concurrency, r.size, r.p50_ms, r.p99_ms, r.p999_ms, r.errors,
    );
    let mut extra = format!("p999_us={},writes_per_flush={:.1},errors={}", us(r.p999_ms), r.writes_per_flush, r.errors);
    let (mut p50, mut p99) = (us(r.p50_ms), us(r.p99_ms));
    if let Some(c) = &r.commit_to_receipt {
        text +=
            &format!("commit to receipt: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms\n", c.p50_ms, c.p99_ms, c.p999_ms);
        // The transactional rows compare commit-to-consumer latency; send-to-receipt goes to extra.
        extra += &format!(",send_p50_us={p50},send_p99_us={p99},commit_p999_us={}", us(c.p999_ms));
        (p50, p99) = (us(c.p50_ms), us(c.p99_ms));
    }
    text += &format!("broker: {} flushes, {:.1} writes per flush\n", r.flushes, r.writes_per_flush);
    text += &format!(
        "RESULT system=txmq scenario={} clients={} msgs={} secs={:.3} rate={:.1} p50_us={p50} p99_us={p99} \
         durability=fsync-before-ok extra={extra}\n",
        r.result_name, r.concurrency, r.messages, r.seconds, r.msgs_per_sec
    );
    text
}

/// A live progress line on stderr, one update a second, until dropped.
pub(super) struct Progress(tokio::task::JoinHandle<()>);

impl Progress {
    pub(super) fn start(what: &'static str, counter: Arc<AtomicU64>) -> Self {
        Progress(tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = counter.load(Ordering::Relaxed);
                eprint!("\r{now} {what}, {} msgs/s    ", now - last);
                last = now;
            }
        }))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
        eprintln!();
    }
}

pub(super) fn take(h: &Mutex<Histogram<u64>>) -> Histogram<u64> {
    h.lock().map(|mut h| std::mem::replace(&mut *h, histogram())).unwrap_or_else(|_| histogram())
}
