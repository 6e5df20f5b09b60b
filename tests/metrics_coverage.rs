//! The Grafana dashboard (`deploy/grafana/txmq.json`) and the alert rules
//! (`deploy/prometheus/alerts.yml`) only reference metrics the broker exports, with the labels
//! it gives them: a scripted workload (sends, acks, commits, rollbacks, check-backs answered,
//! unanswered and unreachable, a parked transaction, dead letters) runs against a broker, its
//! `/metrics` is scraped, and every metric and label in every query is looked up in it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{admin, consumer, fast_config, producer, scrape, send_n, start, tags};
use rocketmq::model::message::MessageBuilder;
use rocketmq::model::transaction::{Transaction, TransactionResolution};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use txmq_proto::admin as pb;

/// The PromQL expressions of the dashboard (targets and template-variable queries).
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// The `expr:` values of an alert rules file (inline, or a `|` / `>` block).
fn rule_queries(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(at) = line.find("expr:") else { continue };
        let value = line[at + 5..].trim();
        if value.starts_with('|') || value.starts_with('>') {
            let indent = line.len() - line.trim_start().len();
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            out.push(block.join(" "));
        } else {
            out.push(value.trim_matches(|c| c == '\'' || c == '"').to_string());
        }
    }
    out
}

/// What one query references: metrics with the labels their selectors name, and the labels of
/// its `by` / `without` clauses and `label_values` calls.
#[derive(Debug, Default)]
struct Refs {
    selectors: BTreeMap<String, BTreeSet<String>>,
    grouping: BTreeSet<String>,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn refs(query: &str) -> Refs {
    let chars: Vec<char> = query.chars().collect();
    let mut r = Refs::default();
    let mut i = 0;
    let mut last_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            // Skip string literals (label values, regexes).
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if is_ident(c) && !c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.starts_with("rocketmq_") || word.starts_with("txmq_") {
                let labels = r.selectors.entry(word.clone()).or_default();
                let mut j = i;
                while j < chars.len() && chars[j] == ' ' {
                    j += 1;
                }
                if j < chars.len() && chars[j] == '{' {
                    let end = j + chars[j..].iter().position(|c| *c == '}').unwrap_or(chars.len() - j);
                    let inside: String = chars[j + 1..end].iter().collect();
                    for pair in inside.split(',') {
                        let name: String = pair.trim().chars().take_while(|c| is_ident(*c)).collect();
                        if !name.is_empty() {
                            labels.insert(name);
                        }
                    }
                    i = end + 1;
                }
            }
            last_word = word;
            continue;
        }
        if c == '(' && matches!(last_word.as_str(), "by" | "without" | "label_values") {
            let end = i + chars[i..].iter().position(|c| *c == ')').unwrap_or(chars.len() - i);
            let inside: String = chars[i + 1..end].iter().collect();
            let names: Vec<&str> = inside.split(',').map(str::trim).collect();
            // label_values(metric, label): only the last argument is a label.
            let names = if last_word == "label_values" { &names[names.len().saturating_sub(1)..] } else { &names[..] };
            for n in names {
                if !n.is_empty() && !n.starts_with("rocketmq_") && !n.starts_with("txmq_") {
                    r.grouping.insert(n.to_string());
                }
            }
            last_word.clear();
        }
        if !c.is_whitespace() {
            last_word.clear();
        }
        i += 1;
    }
    r
}

/// Label names of every sample of each metric in an exposition.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let end = line.find('}').unwrap_or(line.len());
            for pair in line[name_end + 1..end].split("\",") {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.trim().to_string());
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported_with_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(dir.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.txn_timeout = Duration::from_secs(1);
    config.txn_check_interval = Duration::from_secs(1);
    config.txn_check_timeout = Duration::from_secs(1);
    config.txn_max_checks = 2;
    config.txn_max_checks_policy = txmq_broker::txn::service::MaxChecksPolicy::Park;
    config.max_delivery_attempts = 2;
    let broker = start(config).await;
    let mut api = admin(&broker).await;
    for (name, ty) in [
        ("orders", pb::TopicType::Transaction),
        ("slow", pb::TopicType::Transaction),
        ("lost", pb::TopicType::Transaction),
    ] {
        api.create_topic(pb::CreateTopicRequest { name: name.into(), r#type: ty as i32, queue_count: 1 })
            .await
            .unwrap();
    }

    // Normal messages: one acked, three left unacked until they are dead-lettered.
    let billing = consumer(&broker, "billing", &["events"]).await;
    let _ = billing.receive("events", &tags("*")).await;
    let events = producer(&broker, &["events"]).await;
    send_n(&events, "events", "e", 1).await;
    for m in billing.receive("events", &tags("*")).await.unwrap() {
        billing.ack(&m).await.unwrap();
    }
    send_n(&events, "events", "dead", 3).await;

    // Transactions: committed, rolled back, and one whose checks answer UNKNOWN until parked.
    let unsure = common::txn_producer(&broker, &["orders"], || TransactionResolution::UNKNOWN).await;
    let txn = |body: &'static str, topic: &'static str| {
        MessageBuilder::transaction_message_builder(topic, body.as_bytes().to_vec()).build().unwrap()
    };
    unsure.send_transaction_message(txn("paid", "orders")).await.unwrap().commit().await.unwrap();
    unsure.send_transaction_message(txn("cancelled", "orders")).await.unwrap().rollback().await.unwrap();
    let _parked = unsure.send_transaction_message(txn("in doubt", "orders")).await.unwrap();
    // A producer whose checker takes longer than the check timeout: its checks go unanswered.
    let slow = common::txn_producer(&broker, &["slow"], || {
        std::thread::sleep(Duration::from_millis(2500));
        TransactionResolution::COMMIT
    })
    .await;
    let _slow_txn = slow.send_transaction_message(txn("slow", "slow")).await.unwrap();
    // A producer that leaves: its transaction's checks find nobody to ask.
    let gone = common::txn_producer(&broker, &["lost"], || TransactionResolution::COMMIT).await;
    let _lost = gone.send_transaction_message(txn("lost", "lost")).await.unwrap();
    gone.shutdown().await.unwrap();

    // Wait until every kind of event happened, receiving the unacked events again meanwhile.
    let addr = broker.metrics_addr.unwrap();
    let wanted = [
        "rocketmq_send_to_dlq_messages_total{",
        "txmq_transactions_parked_total{",
        "txmq_transaction_checks_unanswered_total{",
        "txmq_transaction_checks_unreachable_total{",
        "rocketmq_rollback_messages_total{",
        "rocketmq_commit_messages_total{",
    ];
    let started = Instant::now();
    loop {
        let _ = billing.receive_with("events", &tags("*"), 32, Duration::from_secs(1)).await;
        let text = scrape(addr);
        let missing: Vec<&&str> = wanted.iter().filter(|w| !text.contains(**w)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "still missing {missing:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Two failure counters the workload cannot cause (a refused signature needs a broker with
    // authentication; a failed dead-letter move needs a failing disk): one sample each is
    // recorded directly, so their label names are checked like the rest.
    broker.broker.metrics().auth_failures.add(&["SendMessage"], 1);
    broker.broker.metrics().dead_letter_failures.add(&["billing"], 1);
    let text = scrape(addr);
    let exported = exported(&text);

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana/txmq.json")).unwrap()).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let dashboard_count = queries.len();
    queries.extend(rule_queries(&std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap()));
    assert!(dashboard_count >= 15 && queries.len() >= dashboard_count + 6, "{queries:#?}");

    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for q in &queries {
        let r = refs(q);
        for (metric, labels) in &r.selectors {
            seen.insert(metric.clone());
            let Some(has) = exported.get(metric) else {
                problems.push(format!("{metric} is not exported (query: {q})"));
                continue;
            };
            // `node` is added to every series in a cluster (tested with the exposition);
            // this broker runs alone.
            for l in labels.iter().filter(|l| *l != "node" && !has.contains(*l)) {
                problems.push(format!("{metric} has no label {l} (has {has:?}; query: {q})"));
            }
        }
        for l in r.grouping.iter().filter(|l| *l != "node") {
            if !r.selectors.keys().any(|m| exported.get(m).is_some_and(|has| has.contains(l))) {
                problems.push(format!("no metric of the query has label {l} (query: {q})"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The files cover the broker's main families.
    for family in [
        "rocketmq_messages_in_total",
        "rocketmq_consumer_lag_messages",
        "rocketmq_half_messages",
        "txmq_store_writable",
        "txmq_messages_refused",
        "txmq_transaction_oldest_pending_age_seconds",
    ] {
        assert!(seen.contains(family), "{family} is on no dashboard panel or alert");
    }

    events.shutdown().await.unwrap();
    billing.shutdown().await.unwrap();
    unsure.shutdown().await.unwrap();
    slow.shutdown().await.unwrap();
    broker.stop().await.unwrap();
}

#[test]
fn queries_are_read_into_metrics_and_labels() {
    let r = refs(
        r#"histogram_quantile(0.99, sum by (le, request_code) (rate(rocketmq_rpc_latency_bucket{protocol_type="grpc", node=~"$node"}[5m])))"#,
    );
    assert_eq!(r.selectors["rocketmq_rpc_latency_bucket"], BTreeSet::from(["protocol_type".into(), "node".into()]));
    assert_eq!(r.grouping, BTreeSet::from(["le".to_string(), "request_code".to_string()]));
    let r = refs("label_values(rocketmq_storage_size, node)");
    assert!(r.selectors.contains_key("rocketmq_storage_size"));
    assert_eq!(r.grouping, BTreeSet::from(["node".to_string()]));
    let yaml = "  - alert: A\n    expr: txmq_store_writable == 0\n  - alert: B\n    expr: |\n      max without(state) (rocketmq_half_messages{state=\"parked\"})\n        > 0\n    for: 5m\n";
    assert_eq!(
        rule_queries(yaml),
        ["txmq_store_writable == 0", "max without(state) (rocketmq_half_messages{state=\"parked\"}) > 0"]
    );
    let exported = exported("# TYPE a counter\na{x=\"1\",y=\"a,b\"} 1\nb 2\n");
    assert_eq!(exported["a"], BTreeSet::from(["x".to_string(), "y".to_string()]));
    assert!(exported["b"].is_empty());
}
