//! Consumption with the official Apache RocketMQ Rust client's SimpleConsumer: receive and ack,
//! consumer groups, redelivery, stale handles, dead letters, FIFO, delay, tag filters, long
//! polling and restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{consumer, drain, fast_config, producer, send_n, start, tags};
use rocketmq::model::message::MessageBuilder;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_receives_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(fast_config(dir.path())).await;
    let p = producer(&broker, &["orders"]).await;
    let ids: HashSet<String> = send_n(&p, "orders", "m", 1000).await.into_iter().collect();

    for group in ["billing", "shipping"] {
        let c = consumer(&broker, group, &["orders"]).await;
        let got = drain(&c, "orders", &tags("*"), 1000, LONG).await;
        let got_ids: Vec<String> = got.iter().map(|m| m.message_id().to_string()).collect();
        assert_eq!(got_ids.len(), 1000, "{group} got every message");
        assert_eq!(got_ids.iter().cloned().collect::<HashSet<_>>(), ids, "{group} got each message once");
        assert!(got.iter().all(|m| m.delivery_attempt() == 1));
        // Nothing more arrives: all were acked.
        assert!(c.receive("orders".to_string(), &tags("*")).await.unwrap().is_empty());
    }
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_come_back_and_stale_handles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(fast_config(dir.path())).await;
    let p = producer(&broker, &["jobs"]).await;
    send_n(&p, "jobs", "job", 1).await;
    let c = consumer(&broker, "workers", &["jobs"]).await;

    let first = c.receive_with("jobs", &tags("*"), 32, Duration::from_secs(3)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].delivery_attempt(), 1);
    // Invisible for 3 s: a receive that long-polls 1 s gets nothing.
    assert!(c.receive_with("jobs", &tags("*"), 32, Duration::from_secs(3)).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let again = c.receive_with("jobs", &tags("*"), 32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message_id(), first[0].message_id());
    assert_eq!(again[0].delivery_attempt(), 2);

    let e = c.ack(&first[0]).await.unwrap_err();
    assert_eq!(common::code_of(&e), "INVALID_RECEIPT_HANDLE", "{e:?}");
    c.ack(&again[0]).await.expect("the current handle acks");
    let e = c.ack(&again[0]).await.unwrap_err();
    assert_eq!(common::code_of(&e), "INVALID_RECEIPT_HANDLE", "an acked handle cannot ack again");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_past_max_attempts_go_to_the_dead_letter_topic() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(dir.path());
    config.max_delivery_attempts = 2;
    let broker = start(config).await;
    let p = producer(&broker, &["payments"]).await;
    let id = send_n(&p, "payments", "poison", 1).await.remove(0);
    // Only `payments` at start: like RocketMQ, txmq has no `%DLQ%ledger` until the group
    // exists (its first receive); the consumer routes the dead-letter topic when it reads it.
    let c = consumer(&broker, "ledger", &["payments"]).await;

    for attempt in 1..=2 {
        let started = Instant::now();
        let mut got = Vec::new();
        while got.is_empty() && started.elapsed() < LONG {
            got = c.receive_with("payments", &tags("*"), 32, Duration::from_secs(1)).await.unwrap();
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].delivery_attempt(), attempt);
        // Never acked: the consumer keeps failing on it.
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The third delivery would exceed the limit: it is dead-lettered instead.
    assert!(c.receive_with("payments", &tags("*"), 32, Duration::from_secs(1)).await.unwrap().is_empty());
    let dead = drain(&c, "%DLQ%ledger", &tags("*"), 1, LONG).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id(), id, "the dead letter keeps the original id");
    assert_eq!(dead[0].body(), b"poison0");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_order_holds_under_four_concurrent_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(fast_config(dir.path())).await;
    let p = producer(&broker, &["steps"]).await;
    const GROUPS: usize = 6;
    const PER_GROUP: usize = 25;
    for i in 0..PER_GROUP {
        for g in 0..GROUPS {
            let m =
                MessageBuilder::fifo_message_builder("steps", format!("{g}:{i}").into_bytes(), format!("order-{g}"))
                    .build()
                    .unwrap();
            p.send(m).await.unwrap();
        }
    }
    let seen: Arc<std::sync::Mutex<HashMap<usize, Vec<usize>>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = consumer(&broker, "fulfilment", &["steps"]).await;
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < LONG {
                let total: usize = seen.lock().unwrap().values().map(Vec::len).sum();
                if total >= GROUPS * PER_GROUP {
                    break;
                }
                for m in c.receive("steps".to_string(), &tags("*")).await.unwrap() {
                    let body = String::from_utf8(m.body().to_vec()).unwrap();
                    let (g, i) = body.split_once(':').unwrap();
                    // Record, "process", then ack: the next step of this order only comes after.
                    seen.lock().unwrap().entry(g.parse().unwrap()).or_default().push(i.parse().unwrap());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    c.ack(&m).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    for g in 0..GROUPS {
        assert_eq!(seen[&g], (0..PER_GROUP).collect::<Vec<_>>(), "order-{g} processed in order, once each");
    }
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_messages_wait_for_their_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(fast_config(dir.path())).await;
    let p = producer(&broker, &["reminders"]).await;
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let due = now_s + 3;
    let m = MessageBuilder::delay_message_builder("reminders", b"later".to_vec(), due).build().unwrap();
    p.send(m).await.unwrap();
    let c = consumer(&broker, "reminder-service", &["reminders"]).await;
    let started = Instant::now();
    let got = drain(&c, "reminders", &tags("*"), 1, LONG).await;
    assert_eq!(got.len(), 1);
    let delivered_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!(delivered_at >= due * 1000, "delivered {} ms early", due * 1000 - delivered_at);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(got[0].delivery_attempt(), 1);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filters_select_messages() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(fast_config(dir.path())).await;
    let p = producer(&broker, &["events"]).await;
    for (i, tag) in ["created", "paid", "cancelled", "paid", "created"].iter().enumerate() {
        let m = MessageBuilder::builder()
            .set_topic("events")
            .set_tag(*tag)
            .set_body(format!("{i}").into_bytes())
            .build()
            .unwrap();
        p.send(m).await.unwrap();
    }
    let c = consumer(&broker, "payments-view", &["events"]).await;
    let got = drain(&c, "events", &tags("paid||cancelled"), 3, Duration::from_secs(10)).await;
    let mut bodies: Vec<String> = got.iter().map(|m| String::from_utf8(m.body().to_vec()).unwrap()).collect();
    bodies.sort();
    assert_eq!(bodies, ["1", "2", "3"]);
    assert!(c.receive("events".to_string(), &tags("paid||cancelled")).await.unwrap().is_empty());

    let all = consumer(&broker, "audit", &["events"]).await;
    assert_eq!(drain(&all, "events", &tags("*"), 5, Duration::from_secs(10)).await.len(), 5);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql92_filters_select_exactly_the_matching_messages() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(fast_config(dir.path())).await;
    let p = producer(&broker, &["orders"]).await;
    // (region, amount, tag); the filter wants European orders over 100 that were paid.
    let batch = [("eu", "150", "paid"), ("us", "150", "paid"), ("eu", "50", "paid"), ("eu", "500", "created")];
    for (i, (region, amount, tag)) in batch.iter().enumerate() {
        let props = std::collections::HashMap::from([("region", *region), ("amount", *amount)]);
        let m = MessageBuilder::builder()
            .set_topic("orders")
            .set_tag(*tag)
            .set_properties(props)
            .set_body(format!("{i}").into_bytes())
            .build()
            .unwrap();
        p.send(m).await.unwrap();
    }
    let no_props = MessageBuilder::builder().set_topic("orders").set_body(b"4".to_vec()).build().unwrap();
    p.send(no_props).await.unwrap();
    let sql = rocketmq::model::common::FilterExpression::new(
        rocketmq::model::common::FilterType::Sql,
        "region IN ('eu', 'uk') AND amount > 100 AND TAGS = 'paid'",
    );
    let c = consumer(&broker, "eu-payments", &["orders"]).await;
    let got = drain(&c, "orders", &sql, 2, Duration::from_secs(5)).await;
    let bodies: Vec<String> = got.iter().map(|m| String::from_utf8(m.body().to_vec()).unwrap()).collect();
    assert_eq!(bodies, ["0"], "only the paid European order over 100");
    assert!(c.receive("orders".to_string(), &sql).await.unwrap().is_empty());
    // A malformed expression is refused with its position.
    let bad = rocketmq::model::common::FilterExpression::new(rocketmq::model::common::FilterType::Sql, "amount >");
    let Err(e) = c.receive("orders".to_string(), &bad).await else { panic!("accepted") };
    assert_eq!(common::code_of(&e), "ILLEGAL_FILTER_EXPRESSION");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_receive_answers_before_the_client_deadline() {
    let dir = tempfile::tempdir().unwrap();
    // Default long polling (20 s) against the Rust client's 40 s deadline.
    let broker = start(common::config(dir.path())).await;
    let p = producer(&broker, &["quiet"]).await;
    let c = consumer(&broker, "listener", &["quiet"]).await;
    let started = Instant::now();
    let got = c.receive("quiet".to_string(), &tags("*")).await.expect("MESSAGE_NOT_FOUND is an empty answer");
    assert!(got.is_empty());
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(25), "waited {waited:?}");
    assert!(waited >= Duration::from_secs(15), "long polling held the call: {waited:?}");

    // A message sent during a long poll ends the wait at once.
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let got = c.receive("quiet".to_string(), &tags("*")).await.unwrap();
        (got.len(), t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_n(&p, "quiet", "wake", 1).await;
    let (n, waited) = waiter.await.unwrap();
    assert_eq!(n, 1);
    assert!(waited < Duration::from_secs(5), "woken after {waited:?}");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_survive_a_restart_and_unacked_messages_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(fast_config(dir.path())).await;
    let addr = broker.addr;
    let p = producer(&broker, &["audit"]).await;
    send_n(&p, "audit", "a", 20).await;
    let c = consumer(&broker, "archiver", &["audit"]).await;
    let got = c.receive_with("audit", &tags("*"), 20, Duration::from_secs(4)).await.unwrap();
    assert_eq!(got.len(), 20);
    for m in &got[..12] {
        c.ack(m).await.unwrap();
    }
    let unacked: HashSet<String> = got[12..].iter().map(|m| m.message_id().to_string()).collect();
    drop((c, p));
    broker.stop().await.unwrap();

    let mut config = fast_config(dir.path());
    config.listen = addr;
    let broker = start(config).await;
    let c = consumer(&broker, "archiver", &["audit"]).await;
    // After their invisibility ends, exactly the 8 unacked messages come back, as attempt 2.
    let back = drain(&c, "audit", &tags("*"), 8, Duration::from_secs(20)).await;
    assert_eq!(back.iter().map(|m| m.message_id().to_string()).collect::<HashSet<_>>(), unacked);
    assert!(back.iter().all(|m| m.delivery_attempt() == 2));
    // The 12 acked ones never do.
    assert!(drain(&c, "audit", &tags("*"), 1, Duration::from_secs(2)).await.is_empty());
    broker.stop().await.unwrap();
}
