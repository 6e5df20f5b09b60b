//! Where check-backs go: a stream that breaks in the middle of a check, a producer that stops
//! answering while its connection stays up, and transactions with no producer at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};
use txmq_broker::config::Config;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

use common::{as_client, res};

fn settings() -> v2::TelemetryCommand {
    v2::TelemetryCommand {
        status: None,
        command: Some(v2::telemetry_command::Command::Settings(v2::Settings {
            client_type: Some(v2::ClientType::Producer as i32),
            pub_sub: Some(v2::settings::PubSub::Publishing(v2::Publishing {
                topics: vec![res("orders").unwrap()],
                ..Default::default()
            })),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_lost_with_a_broken_stream_is_retried_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.txn_timeout = Duration::from_millis(500);
    config.txn_check_interval = Duration::from_millis(500);
    let broker = txmq_broker::server::spawn(config).await.unwrap();
    let url = format!("http://{}", broker.addr);
    let mut c = MessagingServiceClient::connect(url.clone()).await.unwrap();

    // Producer A: sends the half message and holds a stream it never answers on.
    let (a_tx, a_rx) = tokio::sync::mpsc::channel(4);
    a_tx.send(settings()).await.unwrap();
    let mut a_stream = c
        .telemetry(as_client("producer-a", tokio_stream::wrappers::ReceiverStream::new(a_rx)))
        .await
        .unwrap()
        .into_inner();
    let half = v2::Message {
        topic: res("orders"),
        user_properties: Default::default(),
        system_properties: Some(v2::SystemProperties {
            message_id: "m-1".into(),
            message_type: v2::MessageType::Transaction as i32,
            body_encoding: v2::Encoding::Identity as i32,
            ..Default::default()
        }),
        body: b"x".to_vec(),
    };
    let sent = c
        .send_message(as_client("producer-a", v2::SendMessageRequest { messages: vec![half] }))
        .await
        .unwrap()
        .into_inner();
    let txn = sent.entries[0].transaction_id.clone();

    // A receives the check (after its Settings reply), then its stream breaks.
    let got_check = loop {
        let cmd = tokio::time::timeout(Duration::from_secs(10), a_stream.message()).await.unwrap().unwrap().unwrap();
        if let Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(r)) = cmd.command {
            break r;
        }
    };
    assert_eq!(got_check.transaction_id, txn);
    let m = got_check.message.unwrap();
    let sp = m.system_properties.unwrap();
    assert_eq!((sp.message_id.as_str(), sp.body_encoding), ("m-1", v2::Encoding::Identity as i32), "complete message");
    drop(a_stream);
    drop(a_tx);

    // Producer B comes online; the next check reaches it, and its answer commits.
    let (b_tx, b_rx) = tokio::sync::mpsc::channel(4);
    b_tx.send(settings()).await.unwrap();
    let mut b_stream = c
        .telemetry(as_client("producer-b", tokio_stream::wrappers::ReceiverStream::new(b_rx)))
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    loop {
        let cmd = tokio::time::timeout(Duration::from_secs(10), b_stream.message()).await.unwrap().unwrap().unwrap();
        if let Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(r)) = cmd.command {
            assert_eq!(r.transaction_id, txn);
            let end = v2::EndTransactionRequest {
                topic: res("orders"),
                message_id: "m-1".into(),
                transaction_id: r.transaction_id,
                resolution: v2::TransactionResolution::Commit as i32,
                source: v2::TransactionSource::SourceServerCheck as i32,
                trace_context: String::new(),
            };
            let r = c.end_transaction(as_client("producer-b", end)).await.unwrap().into_inner();
            assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    let t = common::admin_transaction(&url, &txn).await;
    assert_eq!(t.state, txmq_proto::admin::TxnState::Committed as i32);
    let checks: Vec<&str> = t.timeline.iter().filter(|e| e.kind == "check").map(|e| e.client.as_str()).collect();
    assert_eq!(checks.first(), Some(&"producer-a"));
    assert_eq!(checks.last(), Some(&"producer-b"));
    assert!(t.timeline.iter().any(|e| e.kind == "check" && e.client == "producer-b" && e.answered));
    drop(b_tx);
    broker.stop().await.unwrap();
}

fn half_message(id: &str) -> v2::Message {
    common::message("orders", id, v2::MessageType::Transaction, id.as_bytes())
}

type Commands = tonic::Streaming<v2::TelemetryCommand>;

/// Opens a producer's Telemetry stream (Settings for topic `orders`); keep the sender alive.
async fn producer_stream(
    c: &mut MessagingServiceClient<tonic::transport::Channel>,
    client_id: &str,
) -> (tokio::sync::mpsc::Sender<v2::TelemetryCommand>, Commands) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(settings()).await.unwrap();
    let stream = c.telemetry(as_client(client_id, tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap();
    (tx, stream.into_inner())
}

/// Finding 3: producer P1 sends a half message, then stops reading its stream and stops
/// heartbeating but keeps its connection. Its check goes unanswered; the next check goes to
/// P2, a live producer of the same topic, whose COMMIT decides — instead of every check
/// being spent on P1 and the max-checks policy rolling back what P2 could commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_producer_stream_loses_the_next_check_to_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.txn_timeout = Duration::from_millis(300);
    config.txn_check_interval = Duration::from_millis(1500);
    config.txn_check_timeout = Duration::from_millis(600);
    config.txn_max_checks = 3;
    let broker = txmq_broker::server::spawn(config).await.unwrap();
    let url = format!("http://{}", broker.addr);
    let mut c = MessagingServiceClient::connect(url.clone()).await.unwrap();

    // P2 first: a producer of the topic (it sent and committed a transaction of its own).
    let (_p2_tx, mut p2) = producer_stream(&mut c, "producer-2").await;
    let own =
        c.send_message(as_client("producer-2", v2::SendMessageRequest { messages: vec![half_message("p2-own")] }));
    let own = own.await.unwrap().into_inner().entries[0].transaction_id.clone();
    let end = |txn: String, id: &str| v2::EndTransactionRequest {
        topic: res("orders"),
        message_id: id.into(),
        transaction_id: txn,
        resolution: v2::TransactionResolution::Commit as i32,
        source: v2::TransactionSource::SourceClient as i32,
        trace_context: String::new(),
    };
    c.end_transaction(as_client("producer-2", end(own, "p2-own"))).await.unwrap();

    // P1 sends the half message, then goes silent: its stream is never read again and it
    // sends no more heartbeats, but the connection (and the stream) stay open.
    let (_p1_tx, _p1_never_read) = producer_stream(&mut c, "producer-1").await;
    let sent = c.send_message(as_client("producer-1", v2::SendMessageRequest { messages: vec![half_message("m-1")] }));
    let txn = sent.await.unwrap().into_inner().entries[0].transaction_id.clone();

    // P2 answers the checks it gets.
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(15), "P2 never got the check");
        let cmd = tokio::time::timeout(Duration::from_secs(15), p2.message()).await.unwrap().unwrap().unwrap();
        if let Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(r)) = cmd.command {
            assert_eq!(r.transaction_id, txn);
            let answer = v2::EndTransactionRequest {
                source: v2::TransactionSource::SourceServerCheck as i32,
                ..end(r.transaction_id, "m-1")
            };
            let r = c.end_transaction(as_client("producer-2", answer)).await.unwrap().into_inner();
            assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
            break;
        }
    }
    let t = common::admin_transaction(&url, &txn).await;
    assert_eq!(t.state, txmq_proto::admin::TxnState::Committed as i32);
    let checks: Vec<(&str, u64, bool)> =
        t.timeline.iter().filter(|e| e.kind == "check").map(|e| (e.client.as_str(), e.stream, e.answered)).collect();
    eprintln!("checks (client, stream, answered): {checks:?}");
    assert_eq!(checks.len(), 2, "one check to P1, then one to P2: {checks:?}");
    assert_eq!((checks[0].0, checks[0].2), ("producer-1", false));
    assert_eq!((checks[1].0, checks[1].2), ("producer-2", true));
    assert!(checks[0].1 != 0 && checks[1].1 != 0 && checks[0].1 != checks[1].1, "each check names its stream");
    let decided = t.timeline.iter().find(|e| e.kind == "decision").unwrap();
    assert_eq!((decided.resolution.as_str(), decided.by.as_str()), ("COMMIT", "check"));
    broker.stop().await.unwrap();
}

/// Finding 5: transactions whose producer is gone (the Rust 5.0.0 client never re-opens
/// Telemetry after a broker restart) are retried with a growing pause, not every 2 s with an
/// fsynced write each, their attempts show in the timeline, and the max-checks policy applies
/// once no producer was reachable for `txn_unreachable_max_age`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_nobody_can_answer_back_off_and_end_by_policy() {
    const N: usize = 10_000;
    let mut config = Config::with_data_dir("/nonexistent");
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.txn_timeout = Duration::from_millis(200);
    config.txn_check_interval = Duration::from_secs(30);
    config.txn_unreachable_max_age = Duration::from_secs(20);
    let store = std::sync::Arc::new(txmq_broker::store::MemoryStore::new());
    let broker = txmq_broker::server::spawn_with(config, Some(store)).await.unwrap();
    let metrics = broker.metrics_addr.unwrap();
    let c = MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    let first_sent = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for r in 0..10 {
        let mut c = c.clone();
        sends.spawn(async move {
            let messages = (0..N / 10).map(|i| half_message(&format!("m-{r}-{i}"))).collect();
            let out = c.send_message(as_client("gone", v2::SendMessageRequest { messages })).await.unwrap();
            assert_eq!(out.into_inner().status.unwrap().code, v2::Code::Ok as i32);
        });
    }
    while let Some(r) = sends.join_next().await {
        r.unwrap();
    }
    let last_sent = first_sent.elapsed();
    assert!(last_sent < Duration::from_secs(5), "sending took {last_sent:?}; the quiet window below needs < 5 s");
    // Each transaction's first check is due 0.2 s after its send and finds nobody; the next
    // attempts follow 1, 2, 4 and 8 s later (at +1.2, +3.2, +7.2, +15.2 s), then the policy at
    // +20.2 s. Between the +7.2 s attempts of the last sends and the +15.2 s attempts of the
    // first ones, nothing is due.
    // Writes and flushes (group commits) so far, from the metrics.
    let counts = || {
        let m = common::scrape(metrics);
        (common::sample(&m, "txmq_store_flush_batch_size_sum"), common::sample(&m, "txmq_store_flush_batch_size_count"))
    };
    let writes = || counts().0;
    let quiet_from = last_sent + Duration::from_secs(9);
    let quiet_to = Duration::from_millis(14_500);
    tokio::time::sleep(quiet_from.saturating_sub(first_sent.elapsed())).await;
    let before = counts();
    tokio::time::sleep(quiet_to.saturating_sub(first_sent.elapsed())).await;
    let after = counts();
    let (during, flushes) = (after.0 - before.0, after.1 - before.1);
    let secs = quiet_to.saturating_sub(quiet_from).as_secs_f64();
    eprintln!(
        "quiet window {quiet_from:?}..{quiet_to:?}: {during} writes, {flushes} flushes ({:.1}/s)",
        flushes / secs
    );
    assert!(during < 100.0, "{during} writes while every transaction was backing off");
    assert!(flushes / secs < 5.0, "{flushes} flushes in {secs:.1} s while every transaction was backing off");
    // Unreachable for 12 s: the policy (rollback) ends every one of them.
    let rolled_back = r#"txmq_transaction_decisions_total{decision="rollback",source="policy"}"#;
    loop {
        let m = common::scrape(metrics);
        if common::sample(&m, rolled_back) as usize == N {
            // The series itself, not `sample`'s 0 for a missing one.
            assert!(m.lines().any(|l| l == "rocketmq_half_messages{state=\"pending\"} 0"), "{m}");
            break;
        }
        assert!(
            first_sent.elapsed() < Duration::from_secs(35),
            "policy not applied: {}",
            common::sample(&m, rolled_back)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total = writes();
    eprintln!("writes in all (sends, attempts, policy): {total}");
    let mut admin =
        txmq_proto::admin::admin_client::AdminClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    let list = txmq_proto::admin::ListTransactionsRequest { limit: 1, ..Default::default() };
    let id = admin.list_transactions(list).await.unwrap().into_inner().transactions[0].id.clone();
    let t = admin.get_transaction(txmq_proto::admin::GetTransactionRequest { id }).await.unwrap().into_inner();
    let t = t.transaction.unwrap();
    let unreachable = t.timeline.iter().find(|e| e.kind == "unreachable").expect("attempts in the timeline");
    assert!(unreachable.attempts >= 4, "{unreachable:?}");
    let decision = t.timeline.iter().find(|e| e.kind == "decision").unwrap();
    assert!(decision.reason.contains("no producer reachable"), "{}", decision.reason);
    broker.stop().await.unwrap();
}

/// A loopback TCP proxy to `target` for one connection that can be frozen: frozen, it stops
/// forwarding in both directions (bytes are read and dropped) but keeps both sockets open, as
/// a peer that vanished without closing looks from the broker. It reports when the broker
/// closes its side.
async fn freezable_proxy(
    target: std::net::SocketAddr,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>, tokio::sync::oneshot::Receiver<Instant>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let f = frozen.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(target).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let f2 = f.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = cr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if !f2.load(Ordering::SeqCst) && sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            // Keep the broker-side socket open while frozen.
            std::future::pending::<()>().await;
        });
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !f.load(Ordering::SeqCst) {
                        let _ = cw.write_all(&buf[..n]).await;
                    }
                }
            }
        }
        let _ = closed_tx.send(Instant::now());
        std::future::pending::<()>().await;
    });
    (addr, frozen, closed_rx)
}

/// Finding 3 (keepalive): a producer whose machine vanished (no FIN, no answers) keeps its
/// connection, and so its Telemetry stream, open for the kernel's ~15 minutes of
/// retransmissions unless the broker pings; with HTTP/2 keepalive the broker closes it within
/// interval + timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_peers_connection_is_closed_by_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.keepalive_interval = Duration::from_millis(300);
    config.keepalive_timeout = Duration::from_millis(300);
    let broker = txmq_broker::server::spawn(config).await.unwrap();
    let (proxy, frozen, closed) = freezable_proxy(broker.addr).await;
    let mut c = MessagingServiceClient::connect(format!("http://{proxy}")).await.unwrap();
    let (_tx, _stream) = producer_stream(&mut c, "vanishing").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    let froze_at = Instant::now();
    let closed_at = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the broker kept a vanished peer's connection open")
        .unwrap();
    eprintln!("closed {:?} after the peer vanished", closed_at - froze_at);
    broker.stop().await.unwrap();
}
