//! Pull consumers over raw gRPC: PullMessage (offset reads of one queue, long-polled, filtered),
//! QueryOffset (beginning, end, by time), UpdateOffset / GetOffset surviving a restart, and
//! pulls beside the POP consumption of another group.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{message, res, send_request};
use std::time::Duration;
use txmq_broker::config::Config;
use txmq_broker::server::RunningBroker;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;
use v2::pull_message_response::Content;

type Client = MessagingServiceClient<tonic::transport::Channel>;

async fn start(dir: &std::path::Path) -> (RunningBroker, Client) {
    let mut c = Config::with_data_dir(dir);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.default_queue_count = 1;
    c.long_polling_max = Duration::from_secs(5);
    let broker = txmq_broker::server::spawn(c).await.unwrap();
    let client = MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    (broker, client)
}

fn queue(topic: &str) -> Option<v2::MessageQueue> {
    Some(v2::MessageQueue { topic: res(topic), id: 0, ..Default::default() })
}

/// Pulls from `offset`: (status code, bodies, next offset).
async fn pull(
    c: &mut Client,
    topic: &str,
    offset: i64,
    batch: i32,
    tag: &str,
    poll_ms: u64,
) -> (i32, Vec<String>, i64) {
    let req = v2::PullMessageRequest {
        group: res("pullers"),
        message_queue: queue(topic),
        offset,
        batch_size: batch,
        filter_expression: Some(v2::FilterExpression { r#type: v2::FilterType::Tag as i32, expression: tag.into() }),
        long_polling_timeout: Some(prost_types::Duration { seconds: 0, nanos: (poll_ms * 1_000_000) as i32 }),
    };
    let mut stream = c.pull_message(req).await.unwrap().into_inner();
    let (mut code, mut bodies, mut next) = (0, Vec::new(), -1);
    while let Some(item) = stream.message().await.unwrap() {
        match item.content.unwrap() {
            Content::Status(s) => code = s.code,
            Content::Message(m) => bodies.push(String::from_utf8(m.body).unwrap()),
            Content::NextOffset(n) => next = n,
        }
    }
    (code, bodies, next)
}

async fn query(c: &mut Client, topic: &str, policy: v2::QueryOffsetPolicy, at_ms: Option<i64>) -> i64 {
    let req = v2::QueryOffsetRequest {
        message_queue: queue(topic),
        query_offset_policy: policy as i32,
        timestamp: at_ms.map(|ms| prost_types::Timestamp { seconds: ms / 1000, nanos: (ms % 1000 * 1_000_000) as i32 }),
    };
    let r = c.query_offset(req).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    r.offset
}

async fn send(c: &mut Client, topic: &str, id: &str) {
    let r = c.send_message(send_request(topic, id)).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_read_by_offset_long_poll_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = start(dir.path()).await;
    for i in 0..10 {
        send(&mut c, "events", &format!("m{i}")).await;
    }
    assert_eq!(query(&mut c, "events", v2::QueryOffsetPolicy::Beginning, None).await, 0);
    assert_eq!(query(&mut c, "events", v2::QueryOffsetPolicy::End, None).await, 10);

    let (code, bodies, next) = pull(&mut c, "events", 0, 4, "*", 100).await;
    assert_eq!((code, bodies.len(), next), (v2::Code::Ok as i32, 4, 4));
    assert_eq!(bodies[0], "m0");
    let (_, bodies, next) = pull(&mut c, "events", next, 100, "*", 100).await;
    assert_eq!((bodies.len(), next), (6, 10));
    assert_eq!(bodies[5], "m9");
    let (code, bodies, next) = pull(&mut c, "events", 10, 100, "*", 200).await;
    assert_eq!((code, bodies.len(), next), (v2::Code::MessageNotFound as i32, 0, 10), "nothing new");

    // A pull at the end waits for the next message.
    let mut sender = c.clone();
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(&mut sender, "events", "late").await;
    });
    let started = std::time::Instant::now();
    let (_, bodies, next) = pull(&mut c, "events", 10, 10, "*", 4000).await;
    assert_eq!((bodies, next), (vec!["late".to_string()], 11));
    assert!(started.elapsed() < Duration::from_secs(3), "woken by the message, not the timeout");
    late.await.unwrap();

    // Filters pass over other messages; the next offset is past them.
    let mut tagged = message("events", "t1", v2::MessageType::Normal, b"tagged");
    tagged.system_properties.as_mut().unwrap().tag = Some("paid".into());
    c.send_message(v2::SendMessageRequest { messages: vec![tagged] }).await.unwrap();
    send(&mut c, "events", "after").await;
    let (_, bodies, next) = pull(&mut c, "events", 0, 100, "paid", 100).await;
    assert_eq!((bodies, next), (vec!["tagged".to_string()], 13));

    // Past the end is an error; a POP group still sees every message.
    assert_eq!(pull(&mut c, "events", 99, 1, "*", 0).await.0, v2::Code::BadRequest as i32);
    let (code, popped) = receive_all(&mut c, "poppers", "events").await;
    assert_eq!((code, popped), (v2::Code::Ok as i32, 13));
    broker.stop().await.unwrap();
}

async fn receive_all(c: &mut Client, group: &str, topic: &str) -> (i32, usize) {
    let mut stream = c.receive_message(common::receive_request(group, topic, 30)).await.unwrap().into_inner();
    let (mut code, mut n) = (0, 0);
    while let Some(item) = stream.message().await.unwrap() {
        match item.content.unwrap() {
            v2::receive_message_response::Content::Status(s) => code = s.code,
            v2::receive_message_response::Content::Message(_) => n += 1,
            _ => {}
        }
    }
    (code, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_found_by_time_and_committed_offsets_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = start(dir.path()).await;
    for i in 0..5 {
        send(&mut c, "ledger", &format!("early{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..5 {
        send(&mut c, "ledger", &format!("late{i}")).await;
    }
    assert_eq!(query(&mut c, "ledger", v2::QueryOffsetPolicy::Timestamp, Some(cut)).await, 5);
    assert_eq!(query(&mut c, "ledger", v2::QueryOffsetPolicy::Timestamp, Some(0)).await, 0);
    assert_eq!(query(&mut c, "ledger", v2::QueryOffsetPolicy::Timestamp, Some(cut + 3_600_000)).await, 10);

    let get = |c: &mut Client, group: &str| {
        let req = v2::GetOffsetRequest { group: res(group), message_queue: queue("ledger") };
        let mut c = c.clone();
        async move { c.get_offset(req).await.unwrap().into_inner() }
    };
    let update = |c: &mut Client, offset: i64| {
        let req = v2::UpdateOffsetRequest { group: res("pullers"), message_queue: queue("ledger"), offset };
        let mut c = c.clone();
        async move { c.update_offset(req).await.unwrap().into_inner().status.unwrap().code }
    };
    assert_eq!(get(&mut c, "pullers").await.status.unwrap().code, v2::Code::NotFound as i32, "nothing committed yet");
    assert_eq!(update(&mut c, 7).await, v2::Code::Ok as i32);
    assert_eq!(update(&mut c, 11).await, v2::Code::BadRequest as i32, "past the end");
    assert_eq!(get(&mut c, "pullers").await.offset, 7);
    broker.stop().await.unwrap();

    let (broker, mut c) = start(dir.path()).await;
    let r = get(&mut c, "pullers").await;
    assert_eq!((r.status.unwrap().code, r.offset), (v2::Code::Ok as i32, 7), "durable across a restart");
    assert_eq!(update(&mut c, 10).await, v2::Code::Ok as i32);
    assert_eq!(get(&mut c, "pullers").await.offset, 10);
    broker.stop().await.unwrap();
}

/// A filter that rejects a long backlog: a pull reads at most a budget of messages and says
/// where to go on; a receive works through the backlog a budget at a time and finds the one
/// message that matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_rejecting_a_long_backlog_is_read_a_budget_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = start(dir.path()).await;
    let budget = txmq_broker::consume::SCAN_BUDGET as i64;
    let total = 2 * budget + 10;
    for first in (0..total - 1).step_by(100) {
        let messages = (first..(first + 100).min(total - 1))
            .map(|i| message("backlog", &format!("m{i}"), v2::MessageType::Normal, b"other"))
            .collect();
        let r = c.send_message(v2::SendMessageRequest { messages }).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    }
    let mut tagged = message("backlog", "wanted", v2::MessageType::Normal, b"wanted");
    tagged.system_properties.as_mut().unwrap().tag = Some("paid".into());
    c.send_message(v2::SendMessageRequest { messages: vec![tagged] }).await.unwrap();

    let (_, bodies, next) = pull(&mut c, "backlog", 0, 32, "paid", 100).await;
    assert_eq!((bodies.len(), next), (0, budget));
    let (_, bodies, next) = pull(&mut c, "backlog", next, 32, "paid", 100).await;
    assert_eq!((bodies.len(), next), (0, 2 * budget));
    let (_, bodies, next) = pull(&mut c, "backlog", next, 32, "paid", 100).await;
    assert_eq!((bodies, next), (vec!["wanted".to_string()], total));

    let mut req = common::receive_request("poppers", "backlog", 30);
    req.filter_expression =
        Some(v2::FilterExpression { r#type: v2::FilterType::Tag as i32, expression: "paid".into() });
    let mut stream = c.receive_message(req).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        if let Some(v2::receive_message_response::Content::Message(m)) = item.content {
            ids.push(m.system_properties.unwrap().message_id);
        }
    }
    assert_eq!(ids, ["wanted"]);
    broker.stop().await.unwrap();
}
