//! Bad input over real gRPC: random and hostile messages (missing fields, unknown enum values,
//! control characters, bodies one byte over the limit, thousands of properties, huge keys and
//! tags, junk receipt handles and transaction ids). Every answer carries a status the official
//! Rust client can decode (one entry per message), and the broker keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use std::collections::HashMap;
use txmq_broker::config::Config;
use txmq_broker::grpc::status::NEVER_SENT;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

/// Whether the official Rust client decodes `code`: every code but UNSPECIFIED and
/// `NEVER_SENT`, a set `tests/send_rocketmq.rs` checks against the client's own `Code` enum.
fn decodable(code: i32) -> bool {
    matches!(v2::Code::try_from(code), Ok(c) if !NEVER_SENT.contains(&c) && c != v2::Code::Unspecified)
}

fn hostile_message() -> impl Strategy<Value = v2::Message> {
    let text = prop_oneof![
        Just(String::new()),
        "[a-zA-Z0-9_%-]{1,20}",
        "\\PC{0,40}",
        "[\\x00-\\x1f|]{1,5}",
        Just("x".repeat(300)),
    ];
    (
        proptest::option::of(text.clone()),
        text.clone(),
        -2i32..9,
        proptest::option::of(text.clone()),
        proptest::collection::vec(text.clone(), 0..4),
        proptest::option::of(text.clone()),
        prop_oneof![Just(0usize), Just(1), Just(100), Just(4 * 1024 * 1024 - 64 * 1024 + 1)],
        prop_oneof![Just(0usize), Just(3), Just(200), Just(3000)],
        -1i32..4,
        proptest::option::of(-100_000_000_000i64..100_000_000_000i64),
    )
        .prop_map(|(topic, id, mtype, tag, keys, group, body_len, props, encoding, delivery)| v2::Message {
            topic: topic.map(|name| v2::Resource { resource_namespace: String::new(), name }),
            user_properties: (0..props).map(|i| (format!("k{i}"), "v".repeat(i % 7))).collect::<HashMap<_, _>>(),
            system_properties: Some(v2::SystemProperties {
                message_id: id,
                message_type: mtype,
                tag,
                keys,
                message_group: group,
                body_encoding: encoding,
                delivery_timestamp: delivery.map(|s| prost_types::Timestamp { seconds: s, nanos: 0 }),
                ..Default::default()
            }),
            body: vec![b'x'; body_len],
        })
}

#[test]
fn hostile_requests_get_decodable_statuses_and_the_broker_keeps_serving() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.long_polling_max = std::time::Duration::from_millis(200);
    let broker = rt.block_on(txmq_broker::server::spawn(config)).unwrap();
    let client = rt.block_on(MessagingServiceClient::connect(format!("http://{}", broker.addr))).unwrap();
    let tried = std::sync::atomic::AtomicU32::new(0);

    let mut runner = TestRunner::new(RunnerConfig { cases: 300, failure_persistence: None, ..RunnerConfig::default() });
    runner
        .run(&proptest::collection::vec(hostile_message(), 1..3), |messages| {
            tried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut c = client.clone();
            let n = messages.len();
            let r = rt
                .block_on(c.send_message(v2::SendMessageRequest { messages }))
                .expect("transport stays up")
                .into_inner();
            let code = r.status.as_ref().map(|s| s.code).unwrap_or(0);
            prop_assert!(decodable(code), "undecodable top-level code {}", code);
            prop_assert_eq!(r.entries.len(), n, "one entry per message");
            for e in &r.entries {
                prop_assert!(decodable(e.status.as_ref().map(|s| s.code).unwrap_or(0)));
            }
            Ok(())
        })
        .unwrap();

    // Junk on the other RPCs.
    rt.block_on(async {
        let mut c = client.clone();
        let res = |n: &str| Some(v2::Resource { resource_namespace: String::new(), name: n.into() });
        let ack = c
            .ack_message(v2::AckMessageRequest {
                group: res("g"),
                topic: res("t"),
                entries: vec![v2::AckMessageEntry {
                    message_id: "m".into(),
                    receipt_handle: "\u{0}".repeat(40),
                    lite_topic: None,
                }],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(decodable(ack.status.unwrap().code));
        let ack = c
            .ack_message(v2::AckMessageRequest { group: None, topic: None, entries: vec![] })
            .await
            .unwrap()
            .into_inner();
        assert!(decodable(ack.status.unwrap().code) && ack.entries.len() == 1);
        for (txn, res_code) in [("", 99), ("junk", 1), (&*"z".repeat(10_000), 2)] {
            let r = c
                .end_transaction(v2::EndTransactionRequest {
                    topic: res("t"),
                    message_id: "m".into(),
                    transaction_id: txn.to_string(),
                    resolution: res_code,
                    source: 7,
                    trace_context: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(decodable(r.status.unwrap().code));
        }
        let route = c.query_route(v2::QueryRouteRequest { topic: None, endpoints: None }).await.unwrap().into_inner();
        assert!(decodable(route.status.unwrap().code));
        let recv = v2::ReceiveMessageRequest { group: None, message_queue: None, ..Default::default() };
        let mut s = c.receive_message(recv).await.unwrap().into_inner();
        while let Some(item) = s.message().await.unwrap() {
            assert!(item.content.is_some(), "every stream item has content");
        }
        // Huge headers: refused by the transport or ignored, never a crash.
        for size in [8 * 1024, 64 * 1024, 1024 * 1024] {
            let mut req = tonic::Request::new(v2::HeartbeatRequest { group: None, client_type: 1 });
            let big = tonic::metadata::MetadataValue::try_from("h".repeat(size)).unwrap();
            req.metadata_mut().insert("x-mq-client-id", big);
            if let Ok(r) = c.heartbeat(req).await {
                assert!(decodable(r.into_inner().status.unwrap().code));
            }
        }
        let mut c = MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
        // Still serving: a good send works.
        let good = v2::Message {
            topic: res("after-the-storm"),
            user_properties: Default::default(),
            system_properties: Some(v2::SystemProperties {
                message_id: "fine".into(),
                message_type: v2::MessageType::Normal as i32,
                body_encoding: v2::Encoding::Identity as i32,
                ..Default::default()
            }),
            body: b"ok".to_vec(),
        };
        let r = c.send_message(v2::SendMessageRequest { messages: vec![good] }).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    });
    eprintln!("tried {} hostile send requests", tried.into_inner());
    rt.block_on(broker.stop()).unwrap();
}

/// Finding 9: system-property strings are bounded, so no accepted message can outgrow what a
/// client decodes (4 MiB per gRPC message for the Rust client and tonic's default): the
/// largest message the broker accepts is delivered to a client with that limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_property_strings_are_refused_and_the_largest_message_is_deliverable() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.long_polling_max = std::time::Duration::from_secs(1);
    let max_body = config.max_body_size;
    let broker = txmq_broker::server::spawn(config).await.unwrap();
    // The default decoding limit of a tonic client is the Rust client's: 4 MiB.
    let mut c = MessagingServiceClient::connect(format!("http://{}", broker.addr))
        .await
        .unwrap()
        .max_decoding_message_size(4 * 1024 * 1024);
    let res = |n: &str| Some(v2::Resource { resource_namespace: String::new(), name: n.into() });
    let message = |id: &str, born_host: String, trace_context: Option<String>| v2::Message {
        topic: res("big"),
        user_properties: (0..7).map(|i| (format!("p{i}"), "v".repeat(2000))).collect(),
        system_properties: Some(v2::SystemProperties {
            message_id: id.into(),
            tag: Some("t".repeat(100)),
            keys: (0..4).map(|i| format!("{i}{}", "k".repeat(99))).collect(),
            message_type: v2::MessageType::Normal as i32,
            body_encoding: v2::Encoding::Identity as i32,
            born_host,
            trace_context,
            ..Default::default()
        }),
        body: vec![b'x'; max_body],
    };
    let code = |r: v2::SendMessageResponse| r.status.unwrap().code;
    let huge_host = message("huge-host", "h".repeat(300 * 1024), None);
    let r = c.send_message(v2::SendMessageRequest { messages: vec![huge_host] }).await.unwrap().into_inner();
    assert_eq!(code(r), v2::Code::BadRequest as i32);
    let huge_trace = message("huge-trace", "host".into(), Some("t".repeat(2048)));
    let r = c.send_message(v2::SendMessageRequest { messages: vec![huge_trace] }).await.unwrap().into_inner();
    assert_eq!(code(r), v2::Code::BadRequest as i32);
    let largest = message("largest", "h".repeat(255), Some("t".repeat(1024)));
    let r = c.send_message(v2::SendMessageRequest { messages: vec![largest] }).await.unwrap().into_inner();
    assert_eq!(code(r), v2::Code::Ok as i32);
    let mut stream = c.receive_message(common::receive_request("g", "big", 30)).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(item) = stream.message().await.expect("every delivery fits the client's limit") {
        if let Some(v2::receive_message_response::Content::Message(m)) = item.content {
            ids.push(m.system_properties.unwrap().message_id);
        }
    }
    assert_eq!(ids, ["largest"]);
    broker.stop().await.unwrap();
}
