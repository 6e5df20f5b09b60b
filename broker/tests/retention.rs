//! Retention: old messages are deleted whether consumed or not, and a consumer group that was
//! behind skips ahead to what is left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tokio_util::sync::CancellationToken;
use txmq_broker::broker::Broker;
use txmq_broker::config::Config;
use txmq_broker::consume::filter::Filter;
use txmq_broker::consume::service::ReceiveRequest;
use txmq_broker::model::{MessageType, NewMessage};

fn msg(id: &str) -> NewMessage {
    NewMessage {
        topic: "logs".into(),
        message_id: id.into(),
        message_type: MessageType::Normal,
        tag: None,
        keys: Vec::new(),
        message_group: None,
        born_timestamp: 0,
        born_host: "test".into(),
        delivery_timestamp: None,
        trace_context: None,
        recovery_duration_ms: None,
        origin_topic: None,
        user_properties: Default::default(),
        body: id.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_messages_are_deleted_and_groups_skip_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.retention = Duration::from_millis(500);
    config.default_queue_count = 1;
    let broker = Broker::open(config).unwrap();
    for i in 0..300 {
        broker.send("logs", vec![msg(&format!("old-{i}"))], "producer").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    for i in 0..5 {
        broker.send("logs", vec![msg(&format!("new-{i}"))], "producer").await.unwrap();
    }
    assert_eq!(broker.enforce_retention().await.unwrap(), 300, "every expired message, in bounded steps");
    let topic = broker.topic("logs").unwrap();
    let q = broker.queue_offsets(&topic)[0];
    assert_eq!((q.min, q.durable), (300, 305));
    assert!(broker.log().locate("logs", "old-0").unwrap().is_none(), "its id index entry is gone too");
    assert_eq!(broker.enforce_retention().await.unwrap(), 0);

    // A group starting now (at the earliest retained message) sees only what is left.
    let alive = |_: &str| true;
    let req = ReceiveRequest {
        group: "late".into(),
        topic: "logs".into(),
        filter: Filter::All,
        batch: 64,
        invisible: Duration::from_secs(30),
        auto_renew: false,
        poll: Duration::from_millis(100),
        client: "c".into(),
        alive: &alive,
    };
    let got = broker.receive(&req, &CancellationToken::new()).await.unwrap();
    let ids: Vec<String> = got.iter().map(|d| d.message.msg.message_id.clone()).collect();
    assert_eq!(ids, ["new-0", "new-1", "new-2", "new-3", "new-4"]);
    broker.shutdown();
}
