//! Restart: messages sent through the official client are all there, byte for byte, with their
//! properties and offsets, after a graceful shutdown and a restart on the same data directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use rocketmq::model::message::MessageBuilder;
use std::collections::HashMap;
use txmq_broker::broker::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(common::config(dir.path())).await;
    let producer = common::producer(&broker, &["events"]).await;
    let mut sent = HashMap::new();
    for i in 0..300 {
        let body = format!("event {i} {}", "x".repeat(i % 50)).into_bytes();
        let msg = MessageBuilder::builder()
            .set_topic("events")
            .set_tag(format!("t{}", i % 3))
            .set_keys(vec![format!("key-{i}")])
            .set_properties(vec![("n", i.to_string())].into_iter().collect::<HashMap<_, _>>())
            .set_body(body.clone())
            .build()
            .unwrap();
        let receipt = producer.send(msg).await.unwrap();
        sent.insert(receipt.message_id().to_string(), (i, body));
    }
    // One large body, split into many chunks on disk.
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let msg = MessageBuilder::builder().set_topic("events").set_body(big.clone()).build().unwrap();
    let big_id = producer.send(msg).await.unwrap().message_id().to_string();
    producer.shutdown().await.unwrap();
    broker.stop().await.unwrap();

    // Reopen the same directory and read everything back.
    let broker = Broker::open(common::config(dir.path())).unwrap();
    let topic = broker.topic("events").expect("topic survives");
    let mut per_queue: HashMap<u32, Vec<u64>> = HashMap::new();
    for (id, (i, body)) in &sent {
        let (queue, offset) = broker.log().locate("events", id).unwrap().expect("id is indexed");
        let m = broker.log().read("events", queue, offset).unwrap().expect("message is stored");
        assert_eq!(&m.msg.body, body);
        assert_eq!(m.msg.message_id, *id);
        assert_eq!(m.msg.tag.as_deref(), Some(format!("t{}", i % 3).as_str()));
        assert_eq!(m.msg.keys, vec![format!("key-{i}")]);
        assert_eq!(m.msg.user_properties.get("n"), Some(&i.to_string()));
        assert_eq!((m.queue, m.offset), (queue, offset));
        per_queue.entry(queue).or_default().push(offset);
    }
    let (q, o) = broker.log().locate("events", &big_id).unwrap().unwrap();
    assert_eq!(broker.log().read("events", q, o).unwrap().unwrap().msg.body, big);
    per_queue.entry(q).or_default().push(o);

    // Offsets are dense per queue and match what the queue reports.
    for offsets in broker.queue_offsets(&topic) {
        let mut got = per_queue.remove(&offsets.queue).unwrap_or_default();
        got.sort_unstable();
        assert_eq!(got, (offsets.min..offsets.durable).collect::<Vec<_>>(), "queue {}", offsets.queue);
    }
    assert!(per_queue.is_empty());
    broker.shutdown();
}
