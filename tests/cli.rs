//! The `txmq` CLI against an in-process broker: topics, an in-doubt transaction from list to
//! operator commit, groups, message lookup, `--json`, errors, and the metrics endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{consumer, drain, start, tags, txn_config, txn_producer};
use rocketmq::model::message::MessageBuilder;
use rocketmq::model::transaction::{Transaction, TransactionResolution};
use std::time::{Duration, Instant};

/// Runs `txmq --broker ADDR ARGS…`; returns (success, stdout, stderr).
async fn txmq(broker: &str, args: &[&str]) -> (bool, String, String) {
    let mut full = vec!["--broker".to_string(), broker.to_string()];
    full.extend(args.iter().map(|s| s.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_txmq")).args(&full).output()
    })
    .await
    .unwrap()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn json(broker: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let (ok, out, err) = txmq(broker, &a).await;
    assert!(ok, "txmq {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("txmq {args:?} printed invalid JSON ({e}): {out}"))
}

/// The value of the first sample line starting with `series`.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_find_and_resolve_in_doubt_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = txn_config(dir.path());
    config.txn_max_checks = 100;
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let broker = start(config).await;
    let addr = broker.access_point();

    let (ok, out, _) = txmq(&addr, &["topic", "create", "orders", "--type", "TRANSACTION", "--queues", "4"]).await;
    assert!(ok && out.contains("created topic orders"), "{out}");
    let topics = json(&addr, &["topic", "list"]).await;
    assert_eq!(topics[0]["name"], "orders");
    assert_eq!(topics[0]["type"], "TRANSACTION");

    // A producer that sends a half message and never decides; its checker says "unknown".
    let p = txn_producer(&broker, &["orders"], || TransactionResolution::UNKNOWN).await;
    let msg = MessageBuilder::transaction_message_builder("orders", b"order 42 paid".to_vec())
        .set_keys(vec!["order-42"])
        .build()
        .unwrap();
    let t = p.send_transaction_message(msg).await.unwrap();
    let (id, message_id) = (t.transaction_id().to_string(), t.message_id().to_string());

    let pending = json(&addr, &["txn", "list", "--state", "pending"]).await;
    assert!(pending.as_array().unwrap().iter().any(|t| t["id"] == id.as_str()), "{pending}");
    let (ok, table, _) = txmq(&addr, &["txn", "list", "--topic", "orders"]).await;
    assert!(ok && table.contains(&id) && table.contains("pending"), "{table}");

    // Its checks show up in the timeline with the producer's answer.
    let started = Instant::now();
    loop {
        let shown = json(&addr, &["txn", "show", &id]).await;
        let answered =
            shown["timeline"].as_array().unwrap().iter().any(|e| e["kind"] == "check" && e["answered"] == true);
        if answered {
            assert_eq!(shown["last_answer"], "UNKNOWN");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no answered check: {shown}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, text, _) = txmq(&addr, &["txn", "show", &id]).await;
    assert!(ok && text.contains("check sent to") && text.contains("answered UNKNOWN"), "{text}");

    // The operator commits it; the timeline records who and why; the message is delivered.
    let (ok, _, err) = txmq(&addr, &["txn", "commit", &id]).await;
    assert!(!ok && err.contains("--reason"), "a reason is required: {err}");
    let (ok, out, err) = txmq(&addr, &["txn", "commit", &id, "--reason", "payment confirmed with the bank"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("committed"), "{out}");
    let shown = json(&addr, &["txn", "show", &id]).await;
    let last = shown["timeline"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["by"].as_str(), last["reason"].as_str()),
        (Some("operator"), Some("payment confirmed with the bank"))
    );
    let (ok, _, err) = txmq(&addr, &["txn", "rollback", &id, "--reason", "changed my mind"]).await;
    assert!(!ok && err.contains("FAILED_PRECONDITION"), "{err}");
    // Both attempts are in the audit log, newest first, with who, why and how they ended.
    let audit = json(&addr, &["audit", "list"]).await;
    let entries = audit.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{audit}");
    assert_eq!((entries[0]["action"].as_str(), entries[0]["target"].as_str()), (Some("rollback"), Some(id.as_str())));
    assert!(entries[0]["outcome"].as_str().unwrap().contains("committed"), "{audit}");
    assert_eq!(entries[1]["action"], "commit");
    assert_eq!(entries[1]["reason"], "payment confirmed with the bank");
    assert_eq!(entries[1]["outcome"], "ok");
    assert!(entries[1]["actor"].as_str().unwrap().ends_with(" via cli"), "{audit}");
    let (ok, table, _) = txmq(&addr, &["audit", "list"]).await;
    assert!(ok && table.contains("payment confirmed with the bank"), "{table}");

    let c = consumer(&broker, "inventory", &["orders"]).await;
    let got = drain(&c, "orders", &tags("*"), 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id(), message_id);

    // Lookup by id and key, groups, status.
    let found = json(&addr, &["msg", "show", &message_id]).await;
    assert_eq!(found[0]["topic"], "orders");
    let by_key = json(&addr, &["msg", "find", "--topic", "orders", "--key", "order-42"]).await;
    assert_eq!(by_key[0]["message_id"], message_id.as_str());
    let created = json(&addr, &["group", "create", "billing"]).await;
    assert_eq!(created["name"], "billing");
    let (ok, _, err) = txmq(&addr, &["group", "create", "bad|name"]).await;
    assert!(!ok && err.contains("INVALID_ARGUMENT"), "{err}");
    let groups = json(&addr, &["group", "list"]).await;
    assert_eq!(groups.as_array().unwrap().len(), 2, "{groups}");
    let group = json(&addr, &["group", "describe", "inventory"]).await;
    assert_eq!(group["topics"][0]["topic"], "orders");
    assert_eq!(group["topics"][0]["backlog"], 0);
    let status = json(&addr, &["status"]).await;
    assert_eq!(status["store_writable"], true);
    assert_eq!(status["pending_transactions"], 0);

    // Clear errors and exit codes.
    let (ok, _, err) = txmq(&addr, &["txn", "show", "NO-SUCH-ID"]).await;
    assert!(!ok && err.contains("NOT_FOUND"), "{err}");
    let (ok, _, err) = txmq("127.0.0.1:1", &["status"]).await;
    assert!(!ok && err.contains("cannot reach the broker"), "{err}");

    // The metrics endpoint tells the same story.
    let m = common::scrape(broker.metrics_addr.unwrap());
    assert_eq!(sample(&m, "rocketmq_messages_in_total{topic=\"orders\",message_type=\"TRANSACTION\"}"), 1.0);
    assert_eq!(sample(&m, "rocketmq_commit_messages_total{topic=\"orders\"}"), 1.0);
    assert!(sample(&m, "txmq_transaction_checks_total{topic=\"orders\"}") >= 1.0);
    assert!(sample(&m, "txmq_transaction_check_answers_total{answer=\"unknown\"}") >= 1.0);
    assert_eq!(sample(&m, "txmq_transaction_decisions_total{decision=\"commit\",source=\"operator\"}"), 1.0);
    assert_eq!(sample(&m, "rocketmq_half_messages{state=\"pending\"}"), 0.0);
    assert_eq!(sample(&m, "rocketmq_messages_out_total{consumer_group=\"inventory\",topic=\"orders\"}"), 1.0);
    assert_eq!(sample(&m, "txmq_acks_total{consumer_group=\"inventory\",topic=\"orders\"}"), 1.0);
    assert_eq!(sample(&m, "rocketmq_consumer_ready_messages{consumer_group=\"inventory\",topic=\"orders\"}"), 0.0);
    assert_eq!(sample(&m, "rocketmq_consumer_inflight_messages{consumer_group=\"inventory\",topic=\"orders\"}"), 0.0);
    assert!(sample(&m, "rocketmq_rpc_latency_count{protocol_type=\"grpc\",request_code=\"SendMessage\"}") >= 1.0);
    assert!(sample(&m, "txmq_store_flush_batch_size_count") >= 1.0);
    assert_eq!(sample(&m, "txmq_store_writable"), 1.0);
    assert_eq!(sample(&m, "txmq_messages_refused"), 0.0);
    assert!(sample(&m, "txmq_disk_free_bytes") > 0.0);
    for family in [
        "rocketmq_send_to_dlq_messages_total",
        "txmq_transactions_parked_total",
        "txmq_transaction_oldest_pending_age_seconds",
        "txmq_store_flush_duration_seconds",
    ] {
        assert!(m.contains(&format!("# TYPE {family} ")), "family {family} missing");
    }
    drop(p);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_listed_and_resent() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::fast_config(dir.path());
    config.max_delivery_attempts = 1;
    let broker = start(config).await;
    let addr = broker.access_point();
    let p = common::producer(&broker, &["jobs"]).await;
    let id = common::send_n(&p, "jobs", "job", 1).await.remove(0);
    let c = consumer(&broker, "workers", &["jobs"]).await;
    assert_eq!(c.receive_with("jobs", &tags("*"), 1, Duration::from_secs(1)).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(c.receive_with("jobs", &tags("*"), 1, Duration::from_secs(1)).await.unwrap().is_empty());

    let dead = json(&addr, &["dlq", "list", "workers"]).await;
    assert_eq!(dead[0]["message_id"], id.as_str());
    assert_eq!(dead[0]["origin_topic"], "jobs");
    let resent = json(&addr, &["dlq", "resend", "workers", "--all"]).await;
    assert_eq!(resent["resent"], 1);
    let back = drain(&c, "jobs", &tags("*"), 1, Duration::from_secs(5)).await;
    assert_eq!(back.len(), 1, "the resent message is delivered to the group again");
    assert_eq!(back[0].message_id(), id);
    broker.stop().await.unwrap();
}

/// `txmq --json bench …` against a small broker: every scenario reports exactly what it did
/// (counts the broker agrees with, no errors), and the text form ends with the peers' RESULT line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_scenarios_report_what_they_measured() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = txn_config(dir.path());
    // The broker would not check a transaction for an hour: `bench checkback` finishes only if
    // the 1 s it sets on each half message (`with_check_after`) reaches the broker.
    config.txn_timeout = Duration::from_secs(3600);
    let broker = start(config).await;
    let addr = broker.access_point();
    let messages = |s: &serde_json::Value| s["messages"].as_u64().unwrap();

    let before = json(&addr, &["status"]).await;
    let send = json(&addr, &["bench", "send", "--count", "200", "--concurrency", "8", "--topic", "b1"]).await;
    assert_eq!((messages(&send), send["errors"].as_u64()), (200, Some(0)), "{send}");
    assert_eq!(send["result_name"], "send-durable-256B");
    assert!(send["p50_ms"].as_f64().unwrap() > 0.0 && send["p999_ms"].as_f64() >= send["p50_ms"].as_f64());
    let after = json(&addr, &["status"]).await;
    // The 200 measured sends plus the warm-up one are stored.
    assert_eq!(after["messages"].as_u64().unwrap() - before["messages"].as_u64().unwrap(), 201);

    let txn = json(&addr, &["bench", "txn", "--count", "100", "--concurrency", "8", "--topic", "b2"]).await;
    assert_eq!((messages(&txn), txn["errors"].as_u64()), (100, Some(0)), "{txn}");
    assert_eq!(json(&addr, &["status"]).await["pending_transactions"], 0);
    // Every measured transaction was committed into its topic (plus the warm-up message).
    let b2 = json(&addr, &["topic", "describe", "b2"]).await;
    assert_eq!(b2["message_count"].as_u64(), Some(101), "{b2}");

    let e2e = json(&addr, &["bench", "e2e", "--txn", "--count", "100", "--concurrency", "8", "--consumers", "2"]).await;
    assert_eq!((messages(&e2e), e2e["errors"].as_u64()), (100, Some(0)), "{e2e}");
    assert!(e2e["commit_to_receipt"]["p99_ms"].as_f64().unwrap() > 0.0, "{e2e}");
    let paced = json(&addr, &["bench", "e2e", "--count", "100", "--rate", "400", "--consumers", "1"]).await;
    assert_eq!((messages(&paced), paced["errors"].as_u64()), (100, Some(0)), "{paced}");
    // 100 messages at 400/s cannot take less than a quarter of a second.
    assert!(paced["seconds"].as_f64().unwrap() >= 0.24, "{paced}");

    let consume = json(&addr, &["bench", "consume", "--backlog", "300", "--consumers", "2"]).await;
    assert_eq!((messages(&consume), consume["errors"].as_u64()), (300, Some(0)), "{consume}");
    // One AckMessage call per receive: every entry is counted, none twice.
    let batched = json(&addr, &["bench", "consume", "--backlog", "300", "--consumers", "2", "--ack-batch"]).await;
    assert_eq!((messages(&batched), batched["errors"].as_u64()), (300, Some(0)), "{batched}");
    assert_eq!(batched["result_name"], "consume-receive32+ack-batched-256B");
    let e2e = json(&addr, &["bench", "e2e", "--txn", "--count", "100", "--concurrency", "8", "--ack-batch"]).await;
    assert_eq!((messages(&e2e), e2e["errors"].as_u64()), (100, Some(0)), "{e2e}");

    // Every consumer group of the e2e and consume runs received and acked everything.
    let groups = json(&addr, &["group", "list"]).await;
    let bench_groups: Vec<&serde_json::Value> =
        groups.as_array().unwrap().iter().filter(|g| g["name"].as_str().unwrap().starts_with("bench-")).collect();
    assert_eq!(bench_groups.len(), 5, "three e2e runs and two consume runs: {groups}");
    for g in &bench_groups {
        for t in g["topics"].as_array().unwrap() {
            assert_eq!((t["backlog"].as_u64(), t["in_flight"].as_u64()), (Some(0), Some(0)), "{g}");
        }
    }

    let before = json(&addr, &["status"]).await;
    let check =
        json(&addr, &["bench", "checkback", "--count", "50", "--concurrency", "8", "--check-after", "1s"]).await;
    assert_eq!((messages(&check), check["errors"].as_u64()), (50, Some(0)), "{check}");
    let after = json(&addr, &["status"]).await;
    assert_eq!(after["pending_transactions"], 0, "check-backs committed every half message");
    // 50 commits by check-back plus the warm-up send.
    assert_eq!(after["messages"].as_u64().unwrap() - before["messages"].as_u64().unwrap(), 51);

    let (ok, out, err) = txmq(&addr, &["bench", "send", "--count", "10", "--concurrency", "2", "--topic", "b1"]).await;
    assert!(ok, "{err}");
    let result = out.lines().last().unwrap();
    assert!(
        result.starts_with("RESULT system=txmq scenario=send-durable-256B clients=2 msgs=10 "),
        "the last line is the peers' RESULT line: {out}"
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_describe_shows_pull_offsets() {
    use txmq_proto::v2;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::fast_config(dir.path());
    config.default_queue_count = 1;
    let broker = start(config).await;
    let addr = broker.access_point();
    let p = common::producer(&broker, &["ledger"]).await;
    common::send_n(&p, "ledger", "m", 5).await;
    let mut c = v2::messaging_service_client::MessagingServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let res = |n: &str| Some(v2::Resource { resource_namespace: String::new(), name: n.into() });
    let r = c
        .update_offset(v2::UpdateOffsetRequest {
            group: res("auditors"),
            message_queue: Some(v2::MessageQueue { topic: res("ledger"), id: 0, ..Default::default() }),
            offset: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    let g = json(&addr, &["group", "describe", "auditors"]).await;
    assert_eq!(g["pull_offsets"][0]["topic"], "ledger");
    assert_eq!(g["pull_offsets"][0]["offset"], 2);
    assert_eq!(g["pull_offsets"][0]["end"], 5);
    let (ok, out, _) = txmq(&addr, &["group", "describe", "auditors"]).await;
    assert!(ok && out.contains("pull offsets") && out.contains("BEHIND"), "{out}");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_show_marks_a_recalled_message() {
    use txmq_proto::v2;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(common::fast_config(dir.path())).await;
    let addr = broker.access_point();
    let mut c = v2::messaging_service_client::MessagingServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let res = |n: &str| Some(v2::Resource { resource_namespace: String::new(), name: n.into() });
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + 600;
    let m = v2::Message {
        topic: res("reminders"),
        user_properties: Default::default(),
        system_properties: Some(v2::SystemProperties {
            message_id: "R1".into(),
            message_type: v2::MessageType::Delay as i32,
            delivery_timestamp: Some(prost_types::Timestamp { seconds: at, nanos: 0 }),
            ..Default::default()
        }),
        body: b"later".to_vec(),
    };
    let sent = c.send_message(v2::SendMessageRequest { messages: vec![m] }).await.unwrap().into_inner();
    let handle = sent.entries[0].recall_handle.clone();
    let r = c
        .recall_message(v2::RecallMessageRequest { topic: res("reminders"), recall_handle: handle })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    let shown = json(&addr, &["msg", "show", "R1", "--topic", "reminders"]).await;
    assert!(shown[0]["recalled_at_ms"].as_i64().unwrap() > 0, "{shown}");
    let (ok, out, _) = txmq(&addr, &["msg", "show", "R1"]).await;
    assert!(ok && out.contains("recalled:"), "{out}");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_topics_are_created_and_priorities_shown() {
    use txmq_proto::v2;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(common::fast_config(dir.path())).await;
    let addr = broker.access_point();
    let created = json(&addr, &["topic", "create", "urgent", "--type", "priority", "--queues", "4"]).await;
    assert_eq!(created["type"], "PRIORITY");
    let mut c = v2::messaging_service_client::MessagingServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let m = v2::Message {
        topic: Some(v2::Resource { resource_namespace: String::new(), name: "urgent".into() }),
        user_properties: Default::default(),
        system_properties: Some(v2::SystemProperties {
            message_id: "P1".into(),
            message_type: v2::MessageType::Priority as i32,
            priority: Some(2),
            ..Default::default()
        }),
        body: b"now".to_vec(),
    };
    let r = c.send_message(v2::SendMessageRequest { messages: vec![m] }).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    let shown = json(&addr, &["msg", "show", "P1", "--topic", "urgent"]).await;
    assert_eq!(shown[0]["priority"], 2);
    assert_eq!(shown[0]["queue"], 2, "priority p is stored in queue p");
    let (ok, out, _) = txmq(&addr, &["msg", "show", "P1"]).await;
    assert!(ok && out.contains("priority: 2"), "{out}");
    broker.stop().await.unwrap();
}
