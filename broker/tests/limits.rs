//! Limits: connections beyond `max_connections` are closed while the others keep working; a
//! connection that sends no HTTP/2 preface within `handshake_timeout` is closed; a client over
//! its in-flight limit, or receives beyond the long-poll limit, get TOO_MANY_REQUESTS.
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

/// The HTTP/2 client preface and an empty SETTINGS frame: all a client must send first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Whether the broker closes `stream` within `wait` (reads until the end or an error; what
/// the broker writes before, such as its SETTINGS, is read and let go).
async fn closed_within(stream: &mut (impl tokio::io::AsyncRead + Unpin), wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(wait, read_to_end).await.is_ok()
}

/// A connection holds a place under `max_connections` from its accept, and HTTP/2 pings only
/// start once its preface is read: a peer that connects and then says nothing (a half-done
/// health check, a scanner, a slow-loris) held its place forever, and enough of them locked
/// every client out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_preface_in_time_gives_its_place_back() {
    use tokio::io::AsyncWriteExt;
    let (broker, _dir) = spawn(|c| {
        c.max_connections = 3;
        c.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let url = format!("http://{}", broker.addr);
    let mut silent = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    partial.write_all(&PREFACE[..16]).await.unwrap();
    let mut greeted = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    greeted.write_all(PREFACE).await.unwrap();
    assert!(heartbeat(&url).await.is_err(), "the three connections take every place");

    let started = std::time::Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await, "a connection that sent nothing is closed");
    assert!(closed_within(&mut partial, Duration::from_secs(5)).await, "a connection with part of a preface is closed");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(500), "closed after the timeout, not at once: {waited:?}");
    assert!(
        !closed_within(&mut greeted, Duration::from_millis(1500)).await,
        "a connection that sent its preface stays open past the timeout"
    );
    heartbeat(&url).await.expect("the places given back take new clients");

    // A client that sent its preface and then stays idle past the timeout keeps its connection.
    drop(greeted);
    let mut idle = within("connect", MessagingServiceClient::connect(url.clone())).await.unwrap();
    let beat = || v2::HeartbeatRequest { group: None, client_type: 1 };
    within("heartbeat", idle.heartbeat(beat())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    within("heartbeat after idling", idle.heartbeat(beat())).await.expect("an idle client keeps working");
    broker.stop().await.unwrap();
}

/// hyper's graceful shutdown waits for a connection's handshake to end: a connection that had
/// sent nothing held a shutdown up until its deadline (10 s; before the deadline, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sent_nothing_does_not_hold_up_a_shutdown() {
    let (broker, _dir) = spawn(|_| {}).await;
    let _silent = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let url = format!("http://{}", broker.addr);
    heartbeat(&url).await.expect("the broker serves");
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), broker.stop()).await.expect("the broker stops within 5 s").unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "the silent connection held the shutdown up for {took:?}");
}

/// The same deadline covers a TLS handshake and the preface sent over TLS after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_that_sends_no_preface_in_time_is_closed() {
    use tokio::io::AsyncWriteExt;
    use tokio_rustls::rustls;
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    let (cert_path, key_path) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let (broker, _dir) = spawn(|c| {
        c.tls_cert = Some(cert_path);
        c.tls_key = Some(key_path);
        c.tls_mode = txmq_broker::tls::TlsMode::Required;
        c.handshake_timeout = Duration::from_secs(1);
    })
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tls = || async {
        let tcp = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.expect("the TLS handshake succeeds")
    };
    let mut silent = tls().await;
    let mut greeted = tls().await;
    greeted.write_all(PREFACE).await.unwrap();
    greeted.flush().await.unwrap();
    let started = std::time::Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await, "a TLS connection that sent nothing is closed");
    assert!(started.elapsed() >= Duration::from_millis(300), "closed at the timeout, not at once");
    assert!(!closed_within(&mut greeted, Duration::from_millis(1500)).await, "one that sent its preface stays open");
    broker.stop().await.unwrap();
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
