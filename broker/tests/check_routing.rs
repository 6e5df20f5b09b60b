//! A Telemetry stream that breaks in the middle of a check: the check it swallowed counts, and
//! the next check goes to another live stream, which resolves the transaction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use tonic::metadata::MetadataValue;
use txmq_broker::config::Config;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

fn res(n: &str) -> Option<v2::Resource> {
    Some(v2::Resource { resource_namespace: String::new(), name: n.into() })
}

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

fn as_client<T>(client_id: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-mq-client-id", MetadataValue::try_from(client_id).unwrap());
    r
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
    let mut admin = txmq_proto::admin::admin_client::AdminClient::connect(url).await.unwrap();
    let t = admin
        .get_transaction(txmq_proto::admin::GetTransactionRequest { id: txn })
        .await
        .unwrap()
        .into_inner()
        .transaction
        .unwrap();
    assert_eq!(t.state, txmq_proto::admin::TxnState::Committed as i32);
    let checks: Vec<&str> = t.timeline.iter().filter(|e| e.kind == "check").map(|e| e.client.as_str()).collect();
    assert_eq!(checks.first(), Some(&"producer-a"));
    assert_eq!(checks.last(), Some(&"producer-b"));
    assert!(t.timeline.iter().any(|e| e.kind == "check" && e.client == "producer-b" && e.answered));
    drop(b_tx);
    broker.stop().await.unwrap();
}
