//! Sending with the official Apache RocketMQ Rust client (crates.io `rocketmq` 5.0.0):
//! normal, FIFO and delay sends succeed with their ids echoed; bad input gets the right
//! RocketMQ status and never crashes the client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use rocketmq::model::message::MessageBuilder;
use std::collections::HashSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_sends_normal_fifo_and_delay_messages() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(common::config(dir.path())).await;
    let producer = common::producer(&broker, &["orders"]).await;

    let mut ids = HashSet::new();
    for i in 0..100 {
        let msg = MessageBuilder::builder()
            .set_topic("orders")
            .set_tag("created")
            .set_keys(vec![format!("order-{i}")])
            .set_body(format!("order {i}").into_bytes())
            .build()
            .unwrap();
        let receipt = producer.send(msg).await.expect("normal send");
        assert!(!receipt.message_id().is_empty());
        assert!(ids.insert(receipt.message_id().to_string()), "ids are unique");
    }

    let mut fifo_ids = Vec::new();
    for i in 0..10 {
        let msg = MessageBuilder::fifo_message_builder("orders", format!("step {i}").into_bytes(), "order-7")
            .build()
            .unwrap();
        let receipt = producer.send(msg).await.expect("fifo send");
        assert!(ids.insert(receipt.message_id().to_string()));
        fifo_ids.push(receipt.message_id().to_string());
    }

    let in_ten_seconds =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + 10;
    let msg = MessageBuilder::delay_message_builder("orders", b"later".to_vec(), in_ten_seconds).build().unwrap();
    let receipt = producer.send(msg).await.expect("delay send");
    assert!(ids.insert(receipt.message_id().to_string()));

    // Everything is stored: 111 messages across the topic's queues.
    let admin = txmq_broker_admin(&broker).await;
    let d = admin.describe("orders").await;
    assert_eq!(d.message_count, 111);
    // All FIFO messages of one group went to one queue, in send order.
    let mut places = Vec::new();
    for id in &fifo_ids {
        let found = admin.find(id).await;
        assert_eq!(found.len(), 1, "{id} stored once");
        places.push((found[0].queue, found[0].offset));
    }
    assert!(places.iter().all(|(q, _)| *q == places[0].0), "{places:?}");
    assert!(places.windows(2).all(|w| w[0].1 < w[1].1), "{places:?}");
    producer.shutdown().await.expect("clean shutdown");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_statuses_and_the_client_survives() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(common::config(dir.path())).await;
    let producer = common::producer(&broker, &["orders"]).await;

    // The client itself accepts this name, so it reaches the broker.
    let bad_topic = MessageBuilder::builder().set_topic("bad.topic").set_body(b"x".to_vec()).build().unwrap();
    let e = producer.send(bad_topic).await.unwrap_err();
    assert_eq!(common::code_of(&e), "ILLEGAL_TOPIC", "{e:?}");

    let empty = MessageBuilder::builder().set_topic("orders").set_body(Vec::new()).build().unwrap();
    let e = producer.send(empty).await.unwrap_err();
    assert_eq!(common::code_of(&e), "BAD_REQUEST", "{e:?}");

    let huge = MessageBuilder::builder().set_topic("orders").set_body(vec![7; 4 * 1024 * 1024]).build().unwrap();
    let e = producer.send(huge).await.unwrap_err();
    assert_eq!(common::code_of(&e), "MESSAGE_BODY_TOO_LARGE", "{e:?}");

    let bad_tag = MessageBuilder::builder().set_topic("orders").set_tag("a|b").set_body(b"x".to_vec()).build().unwrap();
    let e = producer.send(bad_tag).await.unwrap_err();
    assert_eq!(common::code_of(&e), "ILLEGAL_MESSAGE_TAG", "{e:?}");

    // The client and the broker still work after all of that.
    let fine = MessageBuilder::builder().set_topic("orders").set_body(b"fine".to_vec()).build().unwrap();
    producer.send(fine).await.expect("a good send still works");
    let admin = txmq_broker_admin(&broker).await;
    assert_eq!(admin.describe("orders").await.message_count, 1, "nothing of the bad sends was stored");
    broker.stop().await.unwrap();
}

/// A minimal admin client for assertions.
struct Admin(txmq_proto::admin::admin_client::AdminClient<tonic::transport::Channel>);

async fn txmq_broker_admin(broker: &txmq_broker::server::RunningBroker) -> Admin {
    let client =
        txmq_proto::admin::admin_client::AdminClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    Admin(client)
}

impl Admin {
    async fn find(&self, message_id: &str) -> Vec<txmq_proto::admin::StoredMessage> {
        let mut c = self.0.clone();
        let req = txmq_proto::admin::FindMessagesRequest { message_id: message_id.into(), ..Default::default() };
        c.find_messages(req).await.unwrap().into_inner().messages
    }

    async fn describe(&self, topic: &str) -> txmq_proto::admin::DescribeTopicResponse {
        let mut c = self.0.clone();
        c.describe_topic(txmq_proto::admin::DescribeTopicRequest { name: topic.into() }).await.unwrap().into_inner()
    }
}

/// The status codes the Rust 5.0.0 client can decode, read from its generated `Code` enum
/// (its `pb` module is private, so from the crate's source as Cargo resolved it): the client
/// `unwrap`s `Code::from_i32`, so any other code crashes it.
fn rust_client_codes() -> HashSet<i32> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "rocketmq" && p["version"] == "5.0.0")
        .expect("rocketmq 5.0.0 among the packages")["manifest_path"]
        .as_str()
        .unwrap()
        .to_string();
    let source = std::path::Path::new(&manifest).with_file_name("src/pb/apache.rocketmq.v2.rs");
    let text = std::fs::read_to_string(&source).unwrap();
    let body = text.split("pub enum Code {").nth(1).expect("a Code enum").split('}').next().unwrap();
    let codes: HashSet<i32> = body
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').split_once(" = "))
        .filter_map(|(_, n)| n.trim().parse().ok())
        .collect();
    assert!(codes.len() > 40 && codes.contains(&20000), "parsed {codes:?} from {}", source.display());
    codes
}

/// Every code the broker may send (all of our `Code` enum but `NEVER_SENT` and UNSPECIFIED —
/// the set `broker/tests/bad_input.rs` judges answers by) is one the official client decodes.
#[test]
fn every_code_the_broker_may_send_is_in_the_official_clients_enum() {
    use txmq_broker::grpc::status::NEVER_SENT;
    use txmq_proto::v2::Code;
    let client = rust_client_codes();
    let ours: Vec<i32> = (0..=60_000).filter(|c| Code::try_from(*c).is_ok()).collect();
    let sendable: Vec<i32> = ours
        .iter()
        .copied()
        .filter(|c| *c != Code::Unspecified as i32 && !NEVER_SENT.iter().any(|n| *n as i32 == *c))
        .collect();
    let undecodable: Vec<i32> = sendable.iter().copied().filter(|c| !client.contains(c)).collect();
    assert!(undecodable.is_empty(), "the broker may send codes the Rust 5.0.0 client cannot decode: {undecodable:?}");
    // And every status the broker's error mapping produces is among them.
    for code in txmq_broker::grpc::status::all_error_codes() {
        assert!(client.contains(&(code as i32)), "{code:?} is not decodable by the Rust client");
    }
}
