//! The broker binary's lifecycle and topic policy: SIGTERM under load shuts it down cleanly
//! (in-flight requests answered, exit 0) with everything acknowledged on disk;
//! `--auto-create-topics false` answers TOPIC_NOT_FOUND.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use txmq_broker::broker::Broker;
use txmq_broker::config::Config;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

use common::send_request;

/// SIGTERM with work in flight: 16 senders keep sending and a consumer's long poll is
/// waiting. The broker answers the long poll (no transport error), lets the sends in flight
/// finish, flushes and exits 0; every send it acknowledged, before or after the signal, is on
/// disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, drain) = common::start_broker(dir.path(), &["--long-polling-max", "20s"]);
    let client = MessagingServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let mut c = client.clone();
    let r = c.send_message(send_request("idle", "first")).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    // A Telemetry stream is open: shutdown must end it rather than hang on it.
    let (_tx, rx) = tokio::sync::mpsc::channel::<v2::TelemetryCommand>(1);
    let _stream = c.telemetry(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
    // A long poll that would wait 20 s for a message of a topic nobody sends to any more.
    let mut poller = client.clone();
    let long_poll = tokio::spawn(async move {
        let req = v2::ReceiveMessageRequest {
            group: Some(v2::Resource { resource_namespace: String::new(), name: "g".into() }),
            message_queue: Some(v2::MessageQueue {
                topic: Some(v2::Resource { resource_namespace: String::new(), name: "idle".into() }),
                ..Default::default()
            }),
            filter_expression: None,
            batch_size: 1,
            invisible_duration: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
            auto_renew: false,
            long_polling_timeout: Some(prost_types::Duration { seconds: 20, nanos: 0 }),
            attempt_id: None,
        };
        // Take the one message first, so the second receive waits.
        let mut s = poller.receive_message(req.clone()).await.unwrap().into_inner();
        while s.message().await.unwrap().is_some() {}
        let started = std::time::Instant::now();
        let mut s = poller.receive_message(req).await.unwrap().into_inner();
        let mut codes = Vec::new();
        while let Some(item) = s.message().await.expect("the long poll is answered, not cut") {
            if let Some(v2::receive_message_response::Content::Status(st)) = item.content {
                codes.push(st.code);
            }
        }
        (codes, started.elapsed())
    });
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = tokio::task::JoinSet::new();
    for t in 0..16 {
        let (mut c, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        senders.spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = format!("s{t}-{i}");
                i += 1;
                match c.send_message(send_request("shutdown", &id)).await {
                    Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.code == v2::Code::Ok as i32) => {
                        acked.lock().unwrap().push(id)
                    }
                    _ => return,
                }
            }
        });
    }
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // the long poll is waiting
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while let Some(r) = senders.join_next().await {
        r.expect("a sender panicked");
    }
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
    let (codes, waited) = long_poll.await.unwrap();
    assert_eq!(codes.first().copied(), Some(v2::Code::MessageNotFound as i32), "{codes:?}");
    assert!(waited < std::time::Duration::from_secs(10), "answered at shutdown, not after its 20 s: {waited:?}");
    let log = drain.join().unwrap().join("\n");
    assert!(log.contains("store flushed; broker stopped"), "{log}");
    let broker = Broker::open(Config::with_data_dir(dir.path())).unwrap();
    assert!(broker.log().locate("idle", "first").unwrap().is_some());
    let acked = acked.lock().unwrap().clone();
    for id in &acked {
        assert!(broker.log().locate("shutdown", id).unwrap().is_some(), "acked {id} missing after shutdown");
    }
    eprintln!("{} acknowledged sends on disk after SIGTERM under load", acked.len());
    broker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_create_unknown_topics_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.auto_create_topics = false;
    let broker = txmq_broker::server::spawn(config).await.unwrap();
    let mut client = MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    let route = client
        .query_route(v2::QueryRouteRequest {
            topic: Some(v2::Resource { resource_namespace: String::new(), name: "nope".into() }),
            endpoints: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.status.unwrap().code, v2::Code::TopicNotFound as i32);
    assert!(route.message_queues.is_empty());
    let sent = client.send_message(send_request("nope", "m1")).await.unwrap().into_inner();
    assert_eq!(sent.status.unwrap().code, v2::Code::TopicNotFound as i32);
    assert_eq!(sent.entries.len(), 1, "one entry per message, even on failure");
    broker.stop().await.unwrap();
}
