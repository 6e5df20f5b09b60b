//! Counters and histograms for the Prometheus endpoint (`--metrics-listen`), rendered in the
//! text exposition format. Gauges (backlogs, pending transactions) are computed at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Upper bounds of batch-size buckets.
const SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// A fixed-bucket histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one value (seconds for latencies, a count for sizes).
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        self.render_scaled(out, name, labels, 1.0);
    }

    /// Renders with bucket bounds and sum multiplied by `scale` (1000: seconds as milliseconds).
    fn render_scaled(&self, out: &mut String, name: &str, labels: &str, scale: f64) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}", b * scale);
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6 * scale;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Counters keyed by label values.
#[derive(Debug, Default)]
pub struct Counter {
    values: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl Counter {
    pub fn add(&self, labels: &[&str], n: u64) {
        *crate::sync::lock(&self.values).entry(labels.iter().map(|s| s.to_string()).collect()).or_insert(0) += n;
    }

    /// The sum over every label value.
    pub fn total(&self) -> u64 {
        crate::sync::lock(&self.values).values().sum()
    }

    fn render(&self, out: &mut String, name: &str, label_names: &[&str]) {
        let m = crate::sync::lock(&self.values);
        for (values, v) in m.iter() {
            let labels: Vec<String> =
                label_names.iter().zip(values).map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = writeln!(out, "{name}{{{}}} {v}", labels.join(","));
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Every metric the broker keeps.
#[derive(Debug)]
pub struct Metrics {
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub acks: Counter,
    pub dead_letters: Counter,
    pub dead_letter_failures: Counter,
    pub auth_failures: Counter,
    pub checks_sent: Counter,
    pub checks_unanswered: Counter,
    pub checks_unreachable: Counter,
    pub check_answers: Counter,
    pub txn_decisions: Counter,
    pub txn_parked: Counter,
    /// Transactional messages committed / rolled back, by topic.
    pub commits: Counter,
    pub rollbacks: Counter,
    /// Requests passed to another node of the cluster, by RPC and node.
    pub forwards: Counter,
    pub forward_latency: Mutex<BTreeMap<&'static str, std::sync::Arc<Histogram>>>,
    pub rpc_latency: Mutex<BTreeMap<&'static str, std::sync::Arc<Histogram>>>,
    pub flush_latency: Histogram,
    pub flush_batch: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            acks: Counter::default(),
            dead_letters: Counter::default(),
            dead_letter_failures: Counter::default(),
            auth_failures: Counter::default(),
            checks_sent: Counter::default(),
            checks_unanswered: Counter::default(),
            checks_unreachable: Counter::default(),
            check_answers: Counter::default(),
            txn_decisions: Counter::default(),
            txn_parked: Counter::default(),
            commits: Counter::default(),
            rollbacks: Counter::default(),
            forwards: Counter::default(),
            forward_latency: Mutex::new(BTreeMap::new()),
            rpc_latency: Mutex::new(BTreeMap::new()),
            flush_latency: Histogram::new(&LATENCY_BUCKETS),
            flush_batch: Histogram::new(&SIZE_BUCKETS),
        }
    }
}

/// One group's position on one topic, at scrape time.
#[derive(Debug, Default)]
pub struct GroupGauge {
    pub group: String,
    pub topic: String,
    /// Stored and not delivered to the group yet.
    pub ready: u64,
    pub in_flight: u64,
    /// Milliseconds since the oldest undelivered message was stored.
    pub lag_ms: i64,
}

/// Values computed at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    pub pending_transactions: u64,
    pub oldest_pending_age_seconds: f64,
    pub parked_transactions: u64,
    pub groups: Vec<GroupGauge>,
    pub store_bytes: u64,
    pub store_writable: bool,
    /// Free bytes on the data directory's disk, when known.
    pub disk_free_bytes: Option<u64>,
    /// Whether new messages are refused for lack of disk space.
    pub messages_refused: bool,
}

impl Metrics {
    /// Records the latency of one RPC.
    pub fn rpc(&self, rpc: &'static str, took: Duration) {
        let h = crate::sync::lock(&self.rpc_latency)
            .entry(rpc)
            .or_insert_with(|| std::sync::Arc::new(Histogram::new(&LATENCY_BUCKETS)))
            .clone();
        h.observe(took.as_secs_f64());
    }

    /// Records a request passed to node `node` and how long it took to answer.
    pub fn forward(&self, rpc: &'static str, node: &str, took: Duration) {
        self.forwards.add(&[rpc, node], 1);
        let h = crate::sync::lock(&self.forward_latency)
            .entry(rpc)
            .or_insert_with(|| std::sync::Arc::new(Histogram::new(&LATENCY_BUCKETS)))
            .clone();
        h.observe(took.as_secs_f64());
    }

    /// The text exposition of every metric. Names follow RocketMQ 5's where RocketMQ has the
    /// same measure (`rocketmq_*`, with its label names and units); the rest are `txmq_*`.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "rocketmq_messages_in_total",
            "counter",
            "Messages stored, by topic and message type (sends, and transactional messages at commit).",
        );
        self.messages_in.render(&mut out, "rocketmq_messages_in_total", &["topic", "message_type"]);
        family(&mut out, "rocketmq_messages_out_total", "counter", "Deliveries to consumers, by topic and group.");
        self.messages_out.render(&mut out, "rocketmq_messages_out_total", &["consumer_group", "topic"]);
        family(&mut out, "txmq_acks_total", "counter", "Acknowledged deliveries, by group and topic.");
        self.acks.render(&mut out, "txmq_acks_total", &["consumer_group", "topic"]);
        family(
            &mut out,
            "rocketmq_send_to_dlq_messages_total",
            "counter",
            "Messages moved to a group's dead-letter topic, by group and topic.",
        );
        self.dead_letters.render(&mut out, "rocketmq_send_to_dlq_messages_total", &["consumer_group", "topic"]);
        family(
            &mut out,
            "txmq_dead_letter_failures_total",
            "counter",
            "Dead-letter moves that failed (retried), by group.",
        );
        self.dead_letter_failures.render(&mut out, "txmq_dead_letter_failures_total", &["consumer_group"]);
        family(
            &mut out,
            "txmq_auth_failures_total",
            "counter",
            "Requests refused because their signature, access key or date was wrong or missing, by RPC.",
        );
        self.auth_failures.render(&mut out, "txmq_auth_failures_total", &["rpc"]);
        family(&mut out, "txmq_transaction_checks_total", "counter", "Check-backs written to a live producer stream.");
        self.checks_sent.render(&mut out, "txmq_transaction_checks_total", &["topic"]);
        family(
            &mut out,
            "txmq_transaction_checks_unanswered_total",
            "counter",
            "Check-backs not answered within --txn-check-timeout (their stream is then tried last).",
        );
        self.checks_unanswered.render(&mut out, "txmq_transaction_checks_unanswered_total", &["topic"]);
        family(
            &mut out,
            "txmq_transaction_checks_unreachable_total",
            "counter",
            "Check attempts that found no live producer stream (retried with backoff, not counted as checks).",
        );
        self.checks_unreachable.render(&mut out, "txmq_transaction_checks_unreachable_total", &["topic"]);
        family(&mut out, "txmq_transaction_check_answers_total", "counter", "Check-back answers, by answer.");
        self.check_answers.render(&mut out, "txmq_transaction_check_answers_total", &["answer"]);
        family(
            &mut out,
            "txmq_transaction_decisions_total",
            "counter",
            "Commits and rollbacks, by source (producer, check, operator, policy).",
        );
        self.txn_decisions.render(&mut out, "txmq_transaction_decisions_total", &["decision", "source"]);
        family(&mut out, "rocketmq_commit_messages_total", "counter", "Transactional messages committed, by topic.");
        self.commits.render(&mut out, "rocketmq_commit_messages_total", &["topic"]);
        family(
            &mut out,
            "rocketmq_rollback_messages_total",
            "counter",
            "Transactional messages rolled back, by topic.",
        );
        self.rollbacks.render(&mut out, "rocketmq_rollback_messages_total", &["topic"]);
        family(&mut out, "txmq_transactions_parked_total", "counter", "Transactions parked by the max-checks policy.");
        self.txn_parked.render(&mut out, "txmq_transactions_parked_total", &["topic"]);
        family(
            &mut out,
            "rocketmq_half_messages",
            "gauge",
            "Half messages waiting for a decision, by state (pending: being checked; parked: waiting for an operator).",
        );
        let _ = writeln!(out, "rocketmq_half_messages{{state=\"pending\"}} {}", g.pending_transactions);
        let _ = writeln!(out, "rocketmq_half_messages{{state=\"parked\"}} {}", g.parked_transactions);
        family(
            &mut out,
            "txmq_transaction_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest pending half message.",
        );
        let _ = writeln!(out, "txmq_transaction_oldest_pending_age_seconds {}", g.oldest_pending_age_seconds);
        let per_group =
            |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(&GroupGauge) -> String| {
                family(out, name, kind, help);
                for gg in &g.groups {
                    let _ = writeln!(
                        out,
                        "{name}{{consumer_group=\"{}\",topic=\"{}\"}} {}",
                        escape(&gg.group),
                        escape(&gg.topic),
                        value(gg)
                    );
                }
            };
        per_group(
            &mut out,
            "rocketmq_consumer_ready_messages",
            "gauge",
            "Messages stored and not delivered to the group yet, by group and topic.",
            &|gg| gg.ready.to_string(),
        );
        per_group(
            &mut out,
            "rocketmq_consumer_inflight_messages",
            "gauge",
            "Messages delivered to the group and not acked, by group and topic.",
            &|gg| gg.in_flight.to_string(),
        );
        per_group(
            &mut out,
            "rocketmq_consumer_lag_messages",
            "gauge",
            "Messages the group has not acked (ready + in flight), by group and topic.",
            &|gg| (gg.ready + gg.in_flight).to_string(),
        );
        per_group(
            &mut out,
            "rocketmq_consumer_lag_latency",
            "gauge",
            "Milliseconds since the oldest message the group has not received was stored (0 when none waits).",
            &|gg| gg.lag_ms.to_string(),
        );
        family(
            &mut out,
            "rocketmq_rpc_latency",
            "histogram",
            "RocketMQ RPC latency in milliseconds, by RPC (request_code) over gRPC.",
        );
        for (rpc, h) in crate::sync::lock(&self.rpc_latency).iter() {
            h.render_scaled(
                &mut out,
                "rocketmq_rpc_latency",
                &format!("protocol_type=\"grpc\",request_code=\"{rpc}\""),
                1000.0,
            );
        }
        family(
            &mut out,
            "txmq_cluster_forwards_total",
            "counter",
            "Requests passed to the node owning what they concern, by RPC and node.",
        );
        self.forwards.render(&mut out, "txmq_cluster_forwards_total", &["rpc", "to"]);
        family(
            &mut out,
            "txmq_cluster_forward_duration_seconds",
            "histogram",
            "Time for another node to answer a passed request, by RPC (receives include their long poll).",
        );
        for (rpc, h) in crate::sync::lock(&self.forward_latency).iter() {
            h.render(&mut out, "txmq_cluster_forward_duration_seconds", &format!("rpc=\"{rpc}\""));
        }
        family(&mut out, "txmq_store_flush_duration_seconds", "histogram", "Group commit: apply + fsync time.");
        self.flush_latency.render(&mut out, "txmq_store_flush_duration_seconds", "");
        family(&mut out, "txmq_store_flush_batch_size", "histogram", "Group commit: writes per flush.");
        self.flush_batch.render(&mut out, "txmq_store_flush_batch_size", "");
        family(&mut out, "rocketmq_storage_size", "gauge", "Bytes the store uses on disk.");
        let _ = writeln!(out, "rocketmq_storage_size {}", g.store_bytes);
        family(&mut out, "txmq_store_writable", "gauge", "1 while the store accepts writes; 0 after a failed flush.");
        let _ = writeln!(out, "txmq_store_writable {}", u8::from(g.store_writable));
        if let Some(free) = g.disk_free_bytes {
            family(&mut out, "txmq_disk_free_bytes", "gauge", "Free bytes on the data directory's disk.");
            let _ = writeln!(out, "txmq_disk_free_bytes {free}");
        }
        family(
            &mut out,
            "txmq_messages_refused",
            "gauge",
            "1 while new messages are refused: the disk has less free than --min-free-disk-bytes.",
        );
        let _ = writeln!(out, "txmq_messages_refused {}", u8::from(g.messages_refused));
        out
    }
}

/// `text` (an exposition) with `node="<node>"` added to every sample: the series of one cluster
/// node, told apart from the others'.
pub fn label_node(text: &str, node: &str) -> String {
    let label = format!("node=\"{}\"", escape(node));
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
        } else if let Some(i) = line.find('{') {
            out.push_str(&line[..=i]);
            out.push_str(&label);
            if !line[i + 1..].starts_with('}') {
                out.push(',');
            }
            out.push_str(&line[i + 1..]);
        } else if let Some(i) = line.find(' ') {
            out.push_str(&line[..i]);
            out.push('{');
            out.push_str(&label);
            out.push('}');
            out.push_str(&line[i..]);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_sample_gets_the_node_label() {
        let text = "# HELP a x\n# TYPE a gauge\na 1\nb{topic=\"t\"} 2\nc{} 3\n";
        assert_eq!(
            super::label_node(text, "n1"),
            "# HELP a x\n# TYPE a gauge\na{node=\"n1\"} 1\nb{node=\"n1\",topic=\"t\"} 2\nc{node=\"n1\"} 3\n"
        );
    }

    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let m = Metrics::default();
        m.flush_batch.observe(3.0);
        m.flush_batch.observe(40.0);
        let text = m.render(&Gauges::default());
        assert!(text.contains("txmq_store_flush_batch_size_bucket{le=\"4\"} 1"), "{text}");
        assert!(text.contains("txmq_store_flush_batch_size_bucket{le=\"64\"} 2"));
        assert!(text.contains("txmq_store_flush_batch_size_count 2"));
    }

    #[test]
    fn counters_render_with_labels() {
        let m = Metrics::default();
        m.messages_in.add(&["orders", "NORMAL"], 3);
        m.txn_decisions.add(&["commit", "check"], 1);
        let text = m.render(&Gauges::default());
        assert!(text.contains("rocketmq_messages_in_total{topic=\"orders\",message_type=\"NORMAL\"} 3"));
        assert!(text.contains("txmq_transaction_decisions_total{decision=\"commit\",source=\"check\"} 1"));
    }
}
