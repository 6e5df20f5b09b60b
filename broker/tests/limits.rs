//! Limits: connections beyond `max_connections` are closed while the others keep working;
//! a client over its in-flight limit, or receives beyond the long-poll limit, get
//! TOO_MANY_REQUESTS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;
use tonic::metadata::MetadataValue;
use txmq_broker::config::Config;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

use common::res;

async fn spawn(tune: impl FnOnce(&mut Config)) -> (txmq_broker::server::RunningBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::with_data_dir(dir.path());
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.long_polling_max = Duration::from_secs(1);
    tune(&mut c);
    (txmq_broker::server::spawn(c).await.unwrap(), dir)
}

/// One heartbeat on a new connection; a connection that gets no answer within 5 s counts as
/// refused (the test must fail, not hang, if the broker neither serves nor closes it).
async fn heartbeat(url: &str) -> Result<(), String> {
    let call = async {
        let mut c = MessagingServiceClient::connect(url.to_string()).await.map_err(|e| e.to_string())?;
        c.heartbeat(v2::HeartbeatRequest { group: None, client_type: 1 }).await.map(|_| ()).map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), call).await.unwrap_or_else(|_| Err("no answer within 5 s".into()))
}

/// `step` within 10 s, or a failure naming it (this test once hung in a full run, in a step
/// that was not bounded then).
async fn within<T>(what: &str, step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), step)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 10 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed() {
    let (broker, _dir) = spawn(|c| c.max_connections = 2).await;
    let url = format!("http://{}", broker.addr);
    let beat = || v2::HeartbeatRequest { group: None, client_type: 1 };
    let mut a = within("connect a", MessagingServiceClient::connect(url.clone())).await.unwrap();
    let mut b = within("connect b", MessagingServiceClient::connect(url.clone())).await.unwrap();
    within("heartbeat a", a.heartbeat(beat())).await.unwrap();
    within("heartbeat b", b.heartbeat(beat())).await.unwrap();
    assert!(heartbeat(&url).await.is_err(), "a third connection is refused");
    within("heartbeat a again", a.heartbeat(beat())).await.expect("the first ones keep working");
    drop(a);
    let mut ok = false;
    for _ in 0..50 {
        if heartbeat(&url).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a slot frees when a connection closes");
    drop(b);
    tokio::time::timeout(Duration::from_secs(30), broker.stop()).await.expect("the broker stops").unwrap();
}

fn receive_req() -> v2::ReceiveMessageRequest {
    v2::ReceiveMessageRequest {
        group: res("g"),
        message_queue: Some(v2::MessageQueue { topic: res("quiet"), ..Default::default() }),
        filter_expression: None,
        batch_size: 1,
        invisible_duration: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
        auto_renew: false,
        long_polling_timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        attempt_id: None,
    }
}

/// Runs `n` concurrent receives (as `client(i)`); returns their status codes.
async fn concurrent_receives(url: &str, n: usize, client: impl Fn(usize) -> String) -> Vec<i32> {
    let c = MessagingServiceClient::connect(url.to_string()).await.unwrap();
    c.clone().query_route(v2::QueryRouteRequest { topic: res("quiet"), endpoints: None }).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = c.clone();
        let mut req = tonic::Request::new(receive_req());
        req.metadata_mut().insert("x-mq-client-id", MetadataValue::try_from(client(i)).unwrap());
        tasks.push(tokio::spawn(async move {
            let mut s = c.receive_message(req).await.unwrap().into_inner();
            let mut code = 0;
            while let Some(item) = s.message().await.unwrap() {
                if let Some(v2::receive_message_response::Content::Status(st)) = item.content {
                    code = st.code;
                }
            }
            code
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_in_flight_limit_gets_too_many_requests() {
    let (broker, _dir) = spawn(|c| c.max_inflight_per_client = 2).await;
    let codes = concurrent_receives(&format!("http://{}", broker.addr), 3, |_| "greedy".into()).await;
    assert_eq!(
        codes,
        [v2::Code::MessageNotFound as i32, v2::Code::MessageNotFound as i32, v2::Code::TooManyRequests as i32]
    );
    // Other clients are not affected.
    let codes = concurrent_receives(&format!("http://{}", broker.addr), 2, |i| format!("polite-{i}")).await;
    assert!(codes.iter().all(|c| *c == v2::Code::MessageNotFound as i32), "{codes:?}");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_beyond_the_limit_get_too_many_requests() {
    let (broker, _dir) = spawn(|c| c.max_long_polls = 2).await;
    let codes = concurrent_receives(&format!("http://{}", broker.addr), 3, |i| format!("c{i}")).await;
    assert_eq!(
        codes,
        [v2::Code::MessageNotFound as i32, v2::Code::MessageNotFound as i32, v2::Code::TooManyRequests as i32]
    );
    broker.stop().await.unwrap();
}
