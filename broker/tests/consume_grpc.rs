//! The consumption RPCs the official Rust client does not use (Python's push and simple
//! consumers do), over raw gRPC: ChangeInvisibleDuration, ForwardMessageToDeadLetterQueue,
//! QueryAssignment, filter and handle errors; and `--new-group-start latest`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;
use tonic::transport::Channel;
use txmq_broker::config::Config;
use txmq_broker::consume::StartAt;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

type Client = MessagingServiceClient<Channel>;

use common::{as_client, res};

async fn send(c: &mut Client, topic: &str, id: &str) {
    let r = c.send_message(common::send_request(topic, id)).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
}

/// Receives; returns the stream's status code and messages.
async fn receive(
    c: &mut Client,
    group: &str,
    topic: &str,
    filter: v2::FilterExpression,
    invisible_s: i64,
) -> (i32, Vec<v2::Message>) {
    let req = v2::ReceiveMessageRequest {
        group: res(group),
        message_queue: Some(v2::MessageQueue { topic: res(topic), ..Default::default() }),
        filter_expression: Some(filter),
        batch_size: 16,
        invisible_duration: Some(prost_types::Duration { seconds: invisible_s, nanos: 0 }),
        auto_renew: false,
        long_polling_timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        attempt_id: None,
    };
    common::read_receive(c.receive_message(req).await.unwrap().into_inner()).await
}

fn all() -> v2::FilterExpression {
    v2::FilterExpression { r#type: v2::FilterType::Tag as i32, expression: "*".into() }
}

fn handle(m: &v2::Message) -> String {
    m.system_properties.as_ref().unwrap().receipt_handle.clone().unwrap()
}

async fn start(config: impl FnOnce(&mut Config)) -> (txmq_broker::server::RunningBroker, Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::with_data_dir(dir.path());
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.long_polling_max = Duration::from_secs(1);
    config(&mut c);
    let broker = txmq_broker::server::spawn(c).await.unwrap();
    let client = MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    (broker, client, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_invisible_duration_issues_a_new_handle() {
    let (broker, mut c, _dir) = start(|_| {}).await;
    send(&mut c, "jobs", "j1").await;
    let (_, got) = receive(&mut c, "g", "jobs", all(), 60).await;
    let old = handle(&got[0]);
    let req = |h: &str, secs: i64| v2::ChangeInvisibleDurationRequest {
        group: res("g"),
        topic: res("jobs"),
        receipt_handle: h.into(),
        invisible_duration: Some(prost_types::Duration { seconds: secs, nanos: 0 }),
        message_id: "j1".into(),
        lite_topic: None,
        suspend: None,
    };
    let r = c.change_invisible_duration(req(&old, 0)).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    assert_ne!(r.receipt_handle, old);
    // Visible again at once: redelivered as attempt 2; the old handle is stale.
    let (_, again) = receive(&mut c, "g", "jobs", all(), 60).await;
    assert_eq!(again[0].system_properties.as_ref().unwrap().delivery_attempt, Some(2));
    let r = c.change_invisible_duration(req(&old, 5)).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::InvalidReceiptHandle as i32);
    assert_eq!(r.receipt_handle, old, "a refused change hands the caller's handle back");
    let r = c.change_invisible_duration(req("garbage", 5)).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::InvalidReceiptHandle as i32);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_to_the_dead_letter_queue_moves_the_message() {
    let (broker, mut c, _dir) = start(|_| {}).await;
    send(&mut c, "orders", "o1").await;
    let (_, got) = receive(&mut c, "fifo-group", "orders", all(), 60).await;
    let r = c
        .forward_message_to_dead_letter_queue(v2::ForwardMessageToDeadLetterQueueRequest {
            group: res("fifo-group"),
            topic: res("orders"),
            receipt_handle: handle(&got[0]),
            message_id: "o1".into(),
            delivery_attempt: 1,
            max_delivery_attempts: 1,
            lite_topic: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    let (_, dead) = receive(&mut c, "dlq-reader", "%DLQ%fifo-group", all(), 60).await;
    let sp = dead[0].system_properties.as_ref().unwrap();
    assert_eq!(sp.message_id, "o1");
    let dlq = sp.dead_letter_queue.as_ref().unwrap();
    assert_eq!((dlq.topic.as_str(), dlq.message_id.as_str()), ("orders", "o1"));
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_filters_and_handles() {
    let (broker, mut c, _dir) = start(|_| {}).await;
    let a = c
        .query_assignment(v2::QueryAssignmentRequest { topic: res("orders"), group: res("g"), endpoints: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.status.unwrap().code, v2::Code::Ok as i32);
    assert_eq!(a.assignments.len(), 1);
    let sql = v2::FilterExpression { r#type: v2::FilterType::Sql as i32, expression: "a > ".into() };
    assert_eq!(receive(&mut c, "g", "orders", sql, 30).await.0, v2::Code::IllegalFilterExpression as i32);
    let empty_tag = v2::FilterExpression { r#type: v2::FilterType::Tag as i32, expression: "a||".into() };
    assert_eq!(receive(&mut c, "g", "orders", empty_tag, 30).await.0, v2::Code::IllegalFilterExpression as i32);
    assert_eq!(receive(&mut c, "g", "orders", all(), 0).await.0, v2::Code::IllegalInvisibleTime as i32);
    assert_eq!(receive(&mut c, "bad|group", "orders", all(), 30).await.0, v2::Code::IllegalConsumerGroup as i32);
    let ack = c
        .ack_message(v2::AckMessageRequest {
            group: res("g"),
            topic: res("orders"),
            entries: vec![v2::AckMessageEntry {
                message_id: "x".into(),
                receipt_handle: "not-a-handle".into(),
                lite_topic: None,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.status.unwrap().code, v2::Code::InvalidReceiptHandle as i32);
    assert_eq!(ack.entries.len(), 1);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_group_skips_what_came_before_it() {
    let (broker, mut c, _dir) = start(|c| c.new_group_start = StartAt::Latest).await;
    send(&mut c, "news", "before").await;
    let (code, got) = receive(&mut c, "late", "news", all(), 30).await;
    assert_eq!((code, got.len()), (v2::Code::MessageNotFound as i32, 0));
    send(&mut c, "news", "after").await;
    let (_, got) = receive(&mut c, "late", "news", all(), 30).await;
    assert_eq!(
        got.iter().map(|m| m.system_properties.as_ref().unwrap().message_id.as_str()).collect::<Vec<_>>(),
        ["after"]
    );
    broker.stop().await.unwrap();
}

/// A receive as the Python push consumer makes it: `auto_renew` on, as client `client_id`.
async fn receive_auto_renewed(c: &mut Client, client_id: &str, group: &str, topic: &str) -> Vec<v2::Message> {
    let req = v2::ReceiveMessageRequest {
        group: res(group),
        message_queue: Some(v2::MessageQueue { topic: res(topic), ..Default::default() }),
        filter_expression: Some(all()),
        batch_size: 16,
        invisible_duration: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
        auto_renew: true,
        long_polling_timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        attempt_id: None,
    };
    let mut stream = c.receive_message(as_client(client_id, req)).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        if let Some(v2::receive_message_response::Content::Message(m)) = item.content {
            out.push(m);
        }
    }
    out
}

fn forward_req(group: &str, topic: &str, handle: String, id: &str) -> v2::ForwardMessageToDeadLetterQueueRequest {
    v2::ForwardMessageToDeadLetterQueueRequest {
        group: res(group),
        topic: res(topic),
        receipt_handle: handle,
        message_id: id.into(),
        delivery_attempt: 1,
        max_delivery_attempts: 16,
        lite_topic: None,
    }
}

/// Finding 1: the Python push consumer receives with `auto_renew` and nacks a failed message
/// with ChangeInvisibleDuration(backoff); the message must come back after the backoff, not
/// be renewed for hours because its consumer is still alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_auto_renewed_delivery_comes_back_after_its_backoff() {
    let (broker, mut c, _dir) = start(|_| {}).await;
    send(&mut c, "jobs", "n1").await;
    let got = receive_auto_renewed(&mut c, "push-1", "g", "jobs").await;
    assert_eq!(got.len(), 1);
    let nack = v2::ChangeInvisibleDurationRequest {
        group: res("g"),
        topic: res("jobs"),
        receipt_handle: handle(&got[0]),
        invisible_duration: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        message_id: "n1".into(),
        lite_topic: None,
        suspend: None,
    };
    let r = c.change_invisible_duration(as_client("push-1", nack)).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    // The consumer stays alive (heartbeats) while its backoff runs out.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2000) {
        let hb = v2::HeartbeatRequest { group: res("g"), client_type: v2::ClientType::PushConsumer as i32 };
        c.heartbeat(as_client("push-1", hb)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let again = receive_auto_renewed(&mut c, "push-1", "g", "jobs").await;
    assert_eq!(again.len(), 1, "the nacked message is delivered again after its 1 s backoff");
    let sp = again[0].system_properties.as_ref().unwrap();
    assert_eq!((sp.message_id.as_str(), sp.delivery_attempt), ("n1", Some(2)));
    broker.stop().await.unwrap();
}

/// Finding 7: the Python client retries ForwardMessageToDeadLetterQueue every second until OK;
/// a retry after a lost reply must be answered OK, and leave one dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_forward_to_the_dead_letter_queue_answers_ok_once_forwarded() {
    let (broker, mut c, _dir) = start(|_| {}).await;
    send(&mut c, "orders", "o1").await;
    let (_, got) = receive(&mut c, "g", "orders", all(), 60).await;
    for attempt in 0..2 {
        let r = c.forward_message_to_dead_letter_queue(forward_req("g", "orders", handle(&got[0]), "o1")).await;
        assert_eq!(r.unwrap().into_inner().status.unwrap().code, v2::Code::Ok as i32, "forward #{attempt}");
    }
    let (_, dead) = receive(&mut c, "dlq-reader", "%DLQ%g", all(), 60).await;
    assert_eq!(dead.len(), 1);
    // A handle that never named a forwarded message is still refused.
    let r = c.forward_message_to_dead_letter_queue(forward_req("g", "orders", "0.0.99.1".into(), "o1")).await;
    assert_eq!(r.unwrap().into_inner().status.unwrap().code, v2::Code::InvalidReceiptHandle as i32);
    broker.stop().await.unwrap();
}

/// Finding 10: one group consuming two topics whose messages share an id gets two dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_two_topics_with_the_same_message_id_are_both_kept() {
    let (broker, mut c, _dir) = start(|_| {}).await;
    for topic in ["orders", "refunds"] {
        send(&mut c, topic, "same-id").await;
        let (_, got) = receive(&mut c, "g", topic, all(), 60).await;
        let r = c.forward_message_to_dead_letter_queue(forward_req("g", topic, handle(&got[0]), "same-id")).await;
        assert_eq!(r.unwrap().into_inner().status.unwrap().code, v2::Code::Ok as i32);
    }
    let (_, dead) = receive(&mut c, "dlq-reader", "%DLQ%g", all(), 60).await;
    let mut origins: Vec<String> = dead
        .iter()
        .map(|m| m.system_properties.as_ref().unwrap().dead_letter_queue.as_ref().unwrap().topic.clone())
        .collect();
    origins.sort();
    assert_eq!(origins, ["orders", "refunds"]);
    broker.stop().await.unwrap();
}

/// Finding 8: requests naming unknown groups and topics create no durable state, and the
/// number of topics and groups is capped with a clear answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_create_no_state_and_topics_and_groups_are_capped() {
    let (broker, mut c, _dir) = start(|c| {
        c.auto_create_topics = false;
        c.max_topics = 3;
        c.max_groups = 2;
    })
    .await;
    let mut admin =
        txmq_proto::admin::admin_client::AdminClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    let groups = |admin: &mut txmq_proto::admin::admin_client::AdminClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            let r = admin.list_groups(txmq_proto::admin::ListGroupsRequest {}).await.unwrap().into_inner();
            r.groups.into_iter().map(|g| g.name).collect::<Vec<_>>()
        }
    };
    let topics = |admin: &mut txmq_proto::admin::admin_client::AdminClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            let r = admin.list_topics(txmq_proto::admin::ListTopicsRequest {}).await.unwrap().into_inner();
            r.topics.into_iter().map(|t| t.name).collect::<Vec<_>>()
        }
    };
    // A receive from a topic that does not exist creates no group.
    assert_eq!(receive(&mut c, "ghost", "nowhere", all(), 30).await.0, v2::Code::TopicNotFound as i32);
    assert!(groups(&mut admin).await.is_empty());
    // Routes of dead-letter topics of groups that do not exist create nothing.
    for name in ["%DLQ%nobody", "%DLQ%ghost"] {
        let r = c.query_route(v2::QueryRouteRequest { topic: res(name), endpoints: None }).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, v2::Code::TopicNotFound as i32, "{name}");
        let a = c
            .query_assignment(v2::QueryAssignmentRequest { topic: res(name), group: res("x"), endpoints: None })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(a.status.unwrap().code, v2::Code::TopicNotFound as i32, "{name}");
    }
    assert!(topics(&mut admin).await.is_empty());
    // Within the caps, topics and groups are created; the dead-letter topic of a real group
    // is routable.
    for t in ["a", "b"] {
        let r = admin
            .create_topic(txmq_proto::admin::CreateTopicRequest {
                name: t.into(),
                queue_count: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status.unwrap().code, txmq_proto::admin::StatusCode::Ok as i32, "{t}");
    }
    send(&mut c, "a", "m1").await;
    assert_eq!(receive(&mut c, "g1", "a", all(), 30).await.0, v2::Code::Ok as i32);
    assert_eq!(receive(&mut c, "g2", "a", all(), 30).await.0, v2::Code::Ok as i32);
    let r = c.query_route(v2::QueryRouteRequest { topic: res("%DLQ%g1"), endpoints: None }).await.unwrap();
    assert_eq!(r.into_inner().status.unwrap().code, v2::Code::Ok as i32);
    // Over the caps: a clear refusal, nothing stored.
    assert_eq!(receive(&mut c, "g3", "a", all(), 30).await.0, v2::Code::Forbidden as i32);
    let r = c.query_route(v2::QueryRouteRequest { topic: res("%DLQ%g2"), endpoints: None }).await.unwrap();
    let st = r.into_inner().status.unwrap();
    assert_eq!(st.code, v2::Code::Forbidden as i32);
    assert!(st.message.contains("topics"), "{}", st.message);
    assert_eq!(groups(&mut admin).await, ["g1", "g2"]);
    assert_eq!(topics(&mut admin).await.len(), 3);
    broker.stop().await.unwrap();
}

/// Finding 11: a dead-letter move that fails (here: the dead-letter topic cannot be created,
/// the topic quota is full) must not fail the consumer's receive nor park the message until a
/// restart: it is reported and retried, and succeeds once the cause is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dead_letter_move_is_reported_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let config = |max_topics: usize| {
        let mut c = Config::with_data_dir(dir.path());
        c.listen = "127.0.0.1:0".parse().unwrap();
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.long_polling_max = Duration::from_secs(1);
        c.max_delivery_attempts = 1;
        c.max_topics = max_topics;
        c
    };
    let broker = txmq_broker::server::spawn(config(1)).await.unwrap();
    let mut c = MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    send(&mut c, "jobs", "j1").await;
    let (_, got) = receive(&mut c, "g", "jobs", all(), 1).await;
    assert_eq!(got.len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Its one attempt is used up; the move fails (no room for %DLQ%g), the receive does not.
    let failures = r#"txmq_dead_letter_failures_total{consumer_group="g"}"#;
    let started = std::time::Instant::now();
    while common::sample(&common::scrape(broker.metrics_addr.unwrap()), failures) < 2.0 {
        let (code, got) = receive(&mut c, "g", "jobs", all(), 1).await;
        assert_eq!((code, got.len()), (v2::Code::MessageNotFound as i32, 0));
        assert!(started.elapsed() < Duration::from_secs(10), "the failed move was not retried");
    }
    broker.stop().await.unwrap();
    // With room for the dead-letter topic, the retried move succeeds.
    let broker = txmq_broker::server::spawn(config(2)).await.unwrap();
    let mut c = MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    let _ = receive(&mut c, "g", "jobs", all(), 1).await;
    let (_, dead) = receive(&mut c, "g", "%DLQ%g", all(), 30).await;
    assert_eq!(
        dead.iter().map(|m| m.system_properties.as_ref().unwrap().message_id.as_str()).collect::<Vec<_>>(),
        ["j1"]
    );
    broker.stop().await.unwrap();
}

/// A receive cancelled while it moves a message to the dead-letter topic (its client gone, or
/// its deadline passed, at the move's write) leaves the message due again, not parked until a
/// restart: a later receive moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_cancelled_during_a_dead_letter_move_leaves_the_message_to_a_later_one() {
    let (broker, faults) = common::spawn_faulty(|c| c.max_delivery_attempts = 1).await;
    let mut c = MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    send(&mut c, "jobs", "j1").await;
    let (_, got) = receive(&mut c, "g", "jobs", all(), 1).await;
    assert_eq!(got.len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Its one attempt is used up: the next receive starts the move, whose first write is held;
    // the client gives up on the receive meanwhile.
    let mut held = c.clone();
    let receiving = common::start_held(&faults, async move { receive(&mut held, "g", "jobs", all(), 1).await }).await;
    receiving.abort();
    let _ = receiving.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    faults.release();

    let started = std::time::Instant::now();
    loop {
        let (_, got) = receive(&mut c, "g", "jobs", all(), 1).await;
        assert!(got.is_empty(), "delivered past its attempts");
        let (_, dead) = receive(&mut c, "g", "%DLQ%g", all(), 30).await;
        if !dead.is_empty() {
            assert_eq!(dead[0].system_properties.as_ref().unwrap().message_id, "j1");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the message stayed parked");
    }
    broker.stop().await.unwrap();
}

/// Finding 12 and its companions: `dlq resend --all` works in bounded pages (never holds
/// more than a page of dead letters before writing), marks what it resent so a second
/// `--all` resends nothing, and resent messages count as backlog, not as deferred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_all_dead_letters_works_in_pages_and_marks_them() {
    use txmq_proto::admin as pb;
    const N: usize = 600;
    // The most dead-letter chunks read between two writes: how many messages resend holds.
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let (since_write, peak) = (std::sync::Arc::new(AtomicUsize::new(0)), std::sync::Arc::new(AtomicUsize::new(0)));
    let prefix = txmq_broker::store::Key::queue_prefix("%DLQ%g", 0);
    let store = std::sync::Arc::new(common::ObservedStore::new({
        let (since_write, peak) = (since_write.clone(), peak.clone());
        move |e: common::StoreEvent<'_>| match e {
            common::StoreEvent::Read(k) if k.starts_with(&prefix) => {
                peak.fetch_max(since_write.fetch_add(1, SeqCst) + 1, SeqCst);
            }
            common::StoreEvent::Read(_) | common::StoreEvent::Scan(_) => {}
            common::StoreEvent::Apply => since_write.store(0, SeqCst),
        }
    }));
    let mut config = Config::with_data_dir("/nonexistent");
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.long_polling_max = Duration::from_secs(1);
    let broker = txmq_broker::server::spawn_with(config, Some(store)).await.unwrap();
    let url = format!("http://{}", broker.addr);
    let mut c = MessagingServiceClient::connect(url.clone()).await.unwrap();
    let mut admin = pb::admin_client::AdminClient::connect(url).await.unwrap();
    for i in 0..N {
        send(&mut c, "jobs", &format!("m{i}")).await;
    }
    let mut forwarded = 0;
    while forwarded < N {
        let (_, got) = receive(&mut c, "g", "jobs", all(), 60).await;
        for m in got {
            let id = m.system_properties.as_ref().unwrap().message_id.clone();
            let r = c.forward_message_to_dead_letter_queue(forward_req("g", "jobs", handle(&m), &id)).await;
            assert_eq!(r.unwrap().into_inner().status.unwrap().code, v2::Code::Ok as i32);
            forwarded += 1;
        }
    }
    let resend = |admin: &mut pb::admin_client::AdminClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            let req = pb::ResendDeadLettersRequest {
                group: "g".into(),
                message_ids: Vec::new(),
                all: true,
                ..Default::default()
            };
            admin.resend_dead_letters(req).await.unwrap().into_inner().resent
        }
    };
    peak.store(0, SeqCst);
    assert_eq!(resend(&mut admin).await, N as u32);
    let peak = peak.load(SeqCst);
    assert_eq!(txmq_broker::consume::admin::RESEND_PAGE, 256);
    assert!(peak <= 256, "read {peak} dead letters before writing any");
    // Marked: listed as resent, and a second --all has nothing left to resend.
    let listed = admin.list_dead_letters(pb::ListDeadLettersRequest { group: "g".into(), limit: 0 }).await.unwrap();
    let listed = listed.into_inner().messages;
    assert_eq!(listed.len(), N);
    assert!(listed.iter().all(|m| m.resent_at_ms > 0));
    assert_eq!(resend(&mut admin).await, 0);
    // Waiting for delivery again: backlog, not deferred delay messages.
    let g = admin.describe_group(pb::DescribeGroupRequest { name: "g".into() }).await.unwrap().into_inner();
    let t = &g.group.unwrap().topics[0];
    assert_eq!((t.backlog, t.deferred), (N as u64, 0));
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_round_trip_byte_for_byte_and_survive_a_restart() {
    // "order 42 paid, compressed by the producer", gzip-compressed (as the Java client does
    // for bodies over 4 KiB).
    const GZIPPED: [u8; 61] = [
        31, 139, 8, 0, 0, 0, 0, 0, 2, 3, 203, 47, 74, 73, 45, 82, 48, 49, 82, 40, 72, 204, 76, 209, 81, 72, 206, 207,
        45, 40, 74, 45, 46, 78, 77, 81, 72, 170, 84, 40, 201, 72, 85, 40, 40, 202, 79, 41, 77, 78, 45, 2, 0, 32, 181,
        63, 89, 41, 0, 0, 0,
    ];
    let (broker, mut c, dir) = start(|_| {}).await;
    let mut m = common::message("zipped", "z1", v2::MessageType::Normal, &GZIPPED);
    m.system_properties.as_mut().unwrap().body_encoding = v2::Encoding::Gzip as i32;
    let r = c.send_message(v2::SendMessageRequest { messages: vec![m] }).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    broker.stop().await.unwrap();

    let mut config = Config::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.long_polling_max = Duration::from_secs(1);
    let broker = txmq_broker::server::spawn(config).await.unwrap();
    let mut c =
        v2::messaging_service_client::MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    let (code, got) = receive(&mut c, "readers", "zipped", all(), 30).await;
    assert_eq!(code, v2::Code::Ok as i32);
    assert_eq!(got[0].body, GZIPPED, "delivered as sent");
    let sp = got[0].system_properties.as_ref().unwrap();
    assert_eq!(sp.body_encoding, v2::Encoding::Gzip as i32);
    let digest = sp.body_digest.as_ref().unwrap();
    assert_eq!(digest.checksum, txmq_broker::model::md5_hex(&GZIPPED), "the digest is of the bytes delivered");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_groups_backlog_counts_only_what_its_filter_accepts() {
    use txmq_proto::admin as pb;
    let (broker, mut c, _dir) = start(|_| {}).await;
    let send_from = |region: &str, id: &str| {
        let mut m = common::message("regions", id, v2::MessageType::Normal, b"x");
        m.user_properties.insert("region".into(), region.into());
        v2::SendMessageRequest { messages: vec![m] }
    };
    let backlog = |group: &'static str| {
        let url = format!("http://{}", broker.addr);
        async move {
            let mut admin = pb::admin_client::AdminClient::connect(url).await.unwrap();
            let g = admin.describe_group(pb::DescribeGroupRequest { name: group.into() }).await.unwrap();
            g.into_inner().group.unwrap().topics[0].backlog
        }
    };
    let sql = v2::FilterExpression { r#type: v2::FilterType::Sql as i32, expression: "region = 'eu'".into() };
    c.send_message(send_from("eu", "eu-1")).await.unwrap();
    let (_, got) = receive(&mut c, "eu-readers", "regions", sql, 30).await;
    assert_eq!(got.len(), 1);
    let (_, got) = receive(&mut c, "all-readers", "regions", all(), 30).await;
    assert_eq!(got.len(), 1);
    for (region, id) in [("us", "us-1"), ("eu", "eu-2"), ("us", "us-2"), ("apac", "apac-1")] {
        c.send_message(send_from(region, id)).await.unwrap();
    }
    assert_eq!(backlog("eu-readers").await, 1, "only eu-2 is the filtered group's to consume");
    assert_eq!(backlog("all-readers").await, 4);
    broker.stop().await.unwrap();
}
