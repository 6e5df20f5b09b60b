//! Retention: old messages are deleted whether consumed or not, and a consumer group that was
//! behind skips ahead to what is left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;
use tokio_util::sync::CancellationToken;
use txmq_broker::broker::Broker;
use txmq_broker::config::Config;
use txmq_broker::consume::filter::Filter;
use txmq_broker::consume::service::ReceiveRequest;
use txmq_broker::model::{MessageType, NewMessage};

fn msg(id: &str) -> NewMessage {
    common::new_message("logs", id, MessageType::Normal)
}

fn request<'a>(
    group: &str,
    batch: usize,
    invisible: Duration,
    alive: &'a (dyn Fn(&str) -> bool + Sync),
) -> ReceiveRequest<'a> {
    ReceiveRequest {
        group: group.into(),
        topic: "logs".into(),
        filter: Filter::All,
        batch,
        invisible,
        auto_renew: false,
        poll: Duration::from_millis(100),
        client: "c".into(),
        alive,
    }
}

/// One queue, and messages kept for 800 ms.
fn short_retention(dir: &std::path::Path) -> Config {
    let mut config = Config::with_data_dir(dir);
    config.retention = Duration::from_millis(800);
    config.default_queue_count = 1;
    config.min_invisible = Duration::from_millis(100);
    config
}

fn ids(got: &[txmq_broker::consume::service::Delivery]) -> Vec<String> {
    got.iter().map(|d| d.message.msg.message_id.clone()).collect()
}

/// Retention deletes old messages whether a group consumed them or not; a group that consumed
/// some and was behind skips ahead to what is left, its expired in-flight delivery is dropped
/// rather than redelivered, and a new group starts at what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_messages_are_deleted_consumed_or_not_and_a_group_behind_skips_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let config = short_retention(dir.path());
    let broker = Broker::open(config).unwrap();
    for i in 0..300 {
        broker.send("logs", vec![msg(&format!("old-{i}"))], "producer").await.unwrap();
    }
    // Group "behind" consumes (receives and acks) the first 10, and holds the 11th in flight.
    let stop = CancellationToken::new();
    let alive = |_: &str| true;
    let got = broker.receive(&request("behind", 10, Duration::from_secs(30), &alive), &stop).await.unwrap();
    assert_eq!(got.len(), 10);
    let handles: Vec<String> = got.iter().map(|d| d.handle.clone()).collect();
    assert!(broker.ack("behind", "logs", &handles).await.unwrap().iter().all(|r| r.is_ok()));
    let held = broker.receive(&request("behind", 1, Duration::from_millis(300), &alive), &stop).await.unwrap();
    assert_eq!(ids(&held), ["old-10"]);
    tokio::time::sleep(Duration::from_millis(900)).await;
    for i in 0..5 {
        broker.send("logs", vec![msg(&format!("new-{i}"))], "producer").await.unwrap();
    }
    assert_eq!(broker.enforce_retention().await.unwrap(), 300, "consumed or not, in bounded steps");
    let topic = broker.topic("logs").unwrap();
    let q = broker.queue_offsets(&topic)[0];
    assert_eq!((q.min, q.durable), (300, 305));
    assert!(broker.log().locate("logs", "old-0").unwrap().is_none(), "its id index entry is gone too");
    assert!(broker.log().locate("logs", "old-200").unwrap().is_none());
    assert_eq!(broker.enforce_retention().await.unwrap(), 0);

    // The group behind (cursor at 11, old-10 in flight and due again) skips ahead: the expired
    // delivery is dropped, and it gets exactly what is left.
    let got = broker.receive(&request("behind", 64, Duration::from_secs(30), &alive), &stop).await.unwrap();
    assert_eq!(ids(&got), ["new-0", "new-1", "new-2", "new-3", "new-4"]);
    let stats = broker.group_stats("behind").unwrap();
    assert_eq!((stats.topics[0].backlog, stats.topics[0].in_flight), (0, 5));

    // A group starting now (at the earliest retained message) sees only what is left.
    let got = broker.receive(&request("late", 64, Duration::from_secs(30), &alive), &stop).await.unwrap();
    assert_eq!(ids(&got), ["new-0", "new-1", "new-2", "new-3", "new-4"]);
    broker.shutdown();
}

/// A queue that retention emptied keeps its offsets across a restart: the next message gets
/// the next offset, not offset 0 again, so a group whose cursor is past the deleted messages
/// still receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_queue_keeps_its_offsets_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = short_retention(dir.path());
    let stop = CancellationToken::new();
    let alive = |_: &str| true;
    let broker = Broker::open(config.clone()).unwrap();
    for i in 0..20 {
        broker.send("logs", vec![msg(&format!("old-{i}"))], "producer").await.unwrap();
    }
    let got = broker.receive(&request("g", 64, Duration::from_secs(30), &alive), &stop).await.unwrap();
    assert_eq!(got.len(), 20);
    let handles: Vec<String> = got.iter().map(|d| d.handle.clone()).collect();
    assert!(broker.ack("g", "logs", &handles).await.unwrap().iter().all(|r| r.is_ok()));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(broker.enforce_retention().await.unwrap(), 20);
    let topic = broker.topic("logs").unwrap();
    assert_eq!(broker.queue_offsets(&topic).iter().map(|q| (q.min, q.durable)).collect::<Vec<_>>(), [(20, 20)]);
    broker.shutdown();
    drop(broker);

    let broker = Broker::open(config).unwrap();
    let topic = broker.topic("logs").unwrap();
    assert_eq!(
        broker.queue_offsets(&topic).iter().map(|q| (q.min, q.durable)).collect::<Vec<_>>(),
        [(20, 20)],
        "the emptied queue's offsets survive the restart"
    );
    let placed = broker.send("logs", vec![msg("after-0")], "producer").await.unwrap();
    assert_eq!(placed[0].offset, 20, "{placed:?}");
    let got = broker.receive(&request("g", 64, Duration::from_secs(30), &alive), &stop).await.unwrap();
    assert_eq!(ids(&got), ["after-0"], "the group past the deleted messages gets the new one");
    broker.shutdown();
}
