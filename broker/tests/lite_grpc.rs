//! Lite topics over raw gRPC: LITE messages land in their lite topic's queue (created on first
//! use, kept across a restart), a lite consumer receives only the lite topics it subscribes to,
//! two consumers of one group split lite topics between them, exclusive mode moves a lite topic
//! and tells its previous subscriber, and bad names, quotas and non-LITE topics are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{as_client, message, res};
use std::time::Duration;
use txmq_broker::config::Config;
use txmq_proto::{admin as pb, v2};

type Messaging = v2::messaging_service_client::MessagingServiceClient<tonic::transport::Channel>;

fn lite_message(id: &str, lite: &str) -> v2::Message {
    let mut m = message("chat", id, v2::MessageType::Lite, id.as_bytes());
    m.system_properties.as_mut().unwrap().lite_topic = Some(lite.into());
    m
}

fn config(dir: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::with_data_dir(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.long_polling_max = Duration::from_millis(300);
    tweak(&mut config);
    config
}

async fn send(c: &Messaging, m: v2::Message) -> i32 {
    let r = c.clone().send_message(v2::SendMessageRequest { messages: vec![m] }).await.unwrap().into_inner();
    r.status.unwrap().code
}

async fn sync(c: &Messaging, client: &str, topic: &str, action: v2::LiteSubscriptionAction, lites: &[&str]) -> i32 {
    let req = v2::SyncLiteSubscriptionRequest {
        action: action as i32,
        topic: res(topic),
        group: res("readers"),
        lite_topic_set: lites.iter().map(|s| s.to_string()).collect(),
        version: None,
        offset_option: None,
    };
    let r = c.clone().sync_lite_subscription(as_client(client, req)).await.unwrap().into_inner();
    r.status.unwrap().code
}

/// Receives as `client` of group `readers` (acking everything); returns `(lite topic, id)`.
async fn receive(c: &Messaging, client: &str) -> Vec<(String, String)> {
    let req = common::receive_request("readers", "chat", 30);
    let mut stream = c.clone().receive_message(as_client(client, req)).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        if let Some(v2::receive_message_response::Content::Message(m)) = item.content {
            let sp = m.system_properties.unwrap();
            assert_eq!(sp.message_type, v2::MessageType::Lite as i32);
            let lite = sp.lite_topic.clone().unwrap();
            let entry = v2::AckMessageEntry {
                message_id: sp.message_id.clone(),
                receipt_handle: sp.receipt_handle.unwrap(),
                lite_topic: Some(lite.clone()),
            };
            let ack = v2::AckMessageRequest { group: res("readers"), topic: res("chat"), entries: vec![entry] };
            let r = c.clone().ack_message(as_client(client, ack)).await.unwrap().into_inner();
            assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
            got.push((lite, sp.message_id));
        }
    }
    got.sort();
    got
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

async fn create_lite_topic(url: &str) {
    let mut admin = pb::admin_client::AdminClient::connect(url.to_string()).await.unwrap();
    let req = pb::CreateTopicRequest { name: "chat".into(), r#type: pb::TopicType::Lite as i32, queue_count: 1 };
    let r = admin.create_topic(req).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
}

async fn describe(url: &str) -> pb::DescribeTopicResponse {
    let mut admin = pb::admin_client::AdminClient::connect(url.to_string()).await.unwrap();
    admin.describe_topic(pb::DescribeTopicRequest { name: "chat".into() }).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_receive_only_their_lite_topics_and_everything_survives_a_restart() {
    use v2::LiteSubscriptionAction::{CompleteAdd, PartialAdd, PartialRemove};
    let dir = tempfile::tempdir().unwrap();
    let broker = txmq_broker::server::spawn(config(dir.path(), |_| {})).await.unwrap();
    let url = format!("http://{}", broker.addr);
    create_lite_topic(&url).await;
    let c = Messaging::connect(url.clone()).await.unwrap();

    // Two consumers of one group: c1 wants rooms a and b, c2 room c.
    assert_eq!(sync(&c, "c1", "chat", PartialAdd, &["a", "b"]).await, v2::Code::Ok as i32);
    assert_eq!(sync(&c, "c2", "chat", CompleteAdd, &["c"]).await, v2::Code::Ok as i32);
    for (id, lite) in [("a-1", "a"), ("b-1", "b"), ("c-1", "c"), ("d-1", "d"), ("a-2", "a")] {
        assert_eq!(send(&c, lite_message(id, lite)).await, v2::Code::Ok as i32);
    }
    assert_eq!(receive(&c, "c1").await, pairs(&[("a", "a-1"), ("a", "a-2"), ("b", "b-1")]));
    assert_eq!(receive(&c, "c2").await, pairs(&[("c", "c-1")]));
    assert_eq!(receive(&c, "c3").await, pairs(&[]), "a consumer with no subscription receives nothing");

    // c1 drops room a: its later messages wait for the group's next subscriber of a.
    assert_eq!(sync(&c, "c1", "chat", PartialRemove, &["a"]).await, v2::Code::Ok as i32);
    assert_eq!(send(&c, lite_message("a-3", "a")).await, v2::Code::Ok as i32);
    assert_eq!(send(&c, lite_message("b-2", "b")).await, v2::Code::Ok as i32);
    assert_eq!(receive(&c, "c1").await, pairs(&[("b", "b-2")]));

    let d = describe(&url).await;
    assert_eq!(d.lite_topic_count, 4);
    let lites: Vec<(String, u64)> = d.queues.iter().map(|q| (q.lite_topic.clone(), q.max_offset)).collect();
    let want = [("a", 3), ("b", 2), ("c", 1), ("d", 1)];
    assert_eq!(lites, want.iter().map(|(l, n)| (l.to_string(), *n)).collect::<Vec<_>>());
    assert_eq!(d.message_count, 7);
    broker.stop().await.unwrap();

    // After a restart: the same lite topics and queues, the group where it was.
    let broker = txmq_broker::server::spawn(config(dir.path(), |_| {})).await.unwrap();
    let url = format!("http://{}", broker.addr);
    let before = d.queues.iter().map(|q| (q.lite_topic.clone(), q.queue_id)).collect::<Vec<_>>();
    let d = describe(&url).await;
    assert_eq!(d.queues.iter().map(|q| (q.lite_topic.clone(), q.queue_id)).collect::<Vec<_>>(), before);
    let c = Messaging::connect(url.clone()).await.unwrap();
    assert_eq!(send(&c, lite_message("b-3", "b")).await, v2::Code::Ok as i32);
    // Subscriptions live in memory: the consumer re-sends its set, as the clients do.
    assert_eq!(sync(&c, "c1", "chat", CompleteAdd, &["a", "b"]).await, v2::Code::Ok as i32);
    assert_eq!(receive(&c, "c1").await, pairs(&[("a", "a-3"), ("b", "b-3")]));
    let mut admin = pb::admin_client::AdminClient::connect(url.clone()).await.unwrap();
    let g = admin.describe_group(pb::DescribeGroupRequest { name: "readers".into() }).await.unwrap().into_inner();
    let subs = g.group.unwrap().lite_subscriptions;
    assert_eq!(subs.len(), 1);
    assert_eq!((subs[0].client_id.as_str(), subs[0].topic.as_str()), ("c1", "chat"));
    let backlog: Vec<(String, u64)> = subs[0].lite_topics.iter().map(|b| (b.lite_topic.clone(), b.backlog)).collect();
    assert_eq!(backlog, vec![("a".to_string(), 0), ("b".to_string(), 0)]);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_quotas_and_other_topic_types_are_refused() {
    use v2::LiteSubscriptionAction::PartialAdd;
    let dir = tempfile::tempdir().unwrap();
    let broker = txmq_broker::server::spawn(config(dir.path(), |c| {
        c.max_lite_topics = 2;
        c.max_lite_subscriptions = 3;
    }))
    .await
    .unwrap();
    let url = format!("http://{}", broker.addr);
    create_lite_topic(&url).await;
    let c = Messaging::connect(url.clone()).await.unwrap();
    assert_eq!(send(&c, lite_message("m-1", "room 1")).await, v2::Code::IllegalLiteTopic as i32);
    assert_eq!(send(&c, lite_message("m-2", &"x".repeat(65))).await, v2::Code::IllegalLiteTopic as i32);
    let mut no_lite = lite_message("m-3", "a");
    no_lite.system_properties.as_mut().unwrap().lite_topic = None;
    assert_eq!(send(&c, no_lite).await, v2::Code::MessagePropertyConflictWithType as i32);
    let normal = message("chat", "m-4", v2::MessageType::Normal, b"n");
    assert_eq!(send(&c, normal).await, v2::Code::MessagePropertyConflictWithType as i32, "a LITE topic takes LITE");
    let elsewhere = v2::Message { topic: res("plain"), ..lite_message("m-5", "a") };
    assert_eq!(send(&c, elsewhere).await, v2::Code::MessagePropertyConflictWithType as i32);
    assert_eq!(send(&c, lite_message("m-6", "a")).await, v2::Code::Ok as i32);
    assert_eq!(send(&c, lite_message("m-7", "b")).await, v2::Code::Ok as i32);
    assert_eq!(send(&c, lite_message("m-8", "c")).await, v2::Code::LiteTopicQuotaExceeded as i32);
    assert_eq!(
        send(&c, lite_message("m-9", "a")).await,
        v2::Code::Ok as i32,
        "existing lite topics still take messages"
    );
    assert_eq!(describe(&url).await.lite_topic_count, 2);

    assert_eq!(sync(&c, "c1", "chat", PartialAdd, &["a", "b"]).await, v2::Code::Ok as i32);
    assert_eq!(sync(&c, "c2", "chat", PartialAdd, &["a", "b"]).await, v2::Code::LiteSubscriptionQuotaExceeded as i32);
    assert_eq!(sync(&c, "c2", "chat", PartialAdd, &["a"]).await, v2::Code::Ok as i32);
    assert_eq!(sync(&c, "c2", "chat", PartialAdd, &["bad name"]).await, v2::Code::IllegalLiteTopic as i32);
    assert_eq!(sync(&c, "c3", "plain", PartialAdd, &["a"]).await, v2::Code::MessagePropertyConflictWithType as i32);
    assert_eq!(sync(&c, "c3", "nowhere", PartialAdd, &["a"]).await, v2::Code::TopicNotFound as i32);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_mode_moves_a_lite_topic_and_tells_its_previous_subscriber() {
    use v2::LiteSubscriptionAction::PartialAdd;
    let dir = tempfile::tempdir().unwrap();
    let broker = txmq_broker::server::spawn(config(dir.path(), |c| c.lite_exclusive = true)).await.unwrap();
    let url = format!("http://{}", broker.addr);
    create_lite_topic(&url).await;
    let c = Messaging::connect(url.clone()).await.unwrap();

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let settings = v2::Settings {
        client_type: Some(v2::ClientType::LiteSimpleConsumer as i32),
        pub_sub: Some(v2::settings::PubSub::Subscription(v2::Subscription {
            group: res("readers"),
            ..Default::default()
        })),
        ..Default::default()
    };
    tx.send(v2::TelemetryCommand { status: None, command: Some(v2::telemetry_command::Command::Settings(settings)) })
        .await
        .unwrap();
    let mut stream = c
        .clone()
        .telemetry(as_client("c1", tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    let Some(v2::telemetry_command::Command::Settings(s)) = first.command else { panic!("no settings: {first:?}") };
    let Some(v2::settings::PubSub::Subscription(sub)) = s.pub_sub else { panic!("no subscription settings") };
    assert!(sub.lite_subscription_quota.unwrap() > 0);
    assert_eq!(sub.max_lite_topic_size, Some(64));

    assert_eq!(sync(&c, "c1", "chat", PartialAdd, &["a", "b"]).await, v2::Code::Ok as i32);
    assert_eq!(sync(&c, "c2", "chat", PartialAdd, &["a"]).await, v2::Code::Ok as i32);
    let cmd = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    let Some(v2::telemetry_command::Command::NotifyUnsubscribeLiteCommand(n)) = cmd.command else {
        panic!("expected NotifyUnsubscribeLiteCommand, got {cmd:?}")
    };
    assert_eq!(n.lite_topic, "a");
    assert_eq!(send(&c, lite_message("a-1", "a")).await, v2::Code::Ok as i32);
    assert_eq!(send(&c, lite_message("b-1", "b")).await, v2::Code::Ok as i32);
    assert_eq!(receive(&c, "c1").await, pairs(&[("b", "b-1")]));
    assert_eq!(receive(&c, "c2").await, pairs(&[("a", "a-1")]));
    drop(tx);
    broker.stop().await.unwrap();
}
