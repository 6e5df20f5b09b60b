//! Crash suite under mixed load: a broker child process runs normal sends, transactional sends
//! (committed, rolled back, or left to the check-back), a consumer group acking, and a checker
//! on a Telemetry stream — and is killed with SIGKILL at a random moment, 20 times. At the end:
//! every acknowledged send is there; every transaction ends as its producer intended (nothing
//! rolled back or undecided is ever delivered, nothing is delivered twice); no half message is
//! left pending; and, draining the group completely, no message whose ack was acknowledged
//! comes back to it while every message it never acked does.
//!
//! The checker answers the *opposite* of the producer's decision for every transaction whose
//! EndTransaction was acknowledged: the broker must refuse that answer, so a decision it
//! acknowledged and then lost shows up as a wrong outcome instead of being silently redone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use txmq_proto::admin as pb;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

type Client = MessagingServiceClient<tonic::transport::Channel>;

const ROUNDS: u64 = 20;
const TOPIC: &str = "mixed";
const ARGS: &[&str] = &["--txn-timeout", "1s", "--txn-check-interval", "1s", "--long-polling-max", "1s"];
/// Invisible duration of the load's deliveries: short, so that after the last restart every
/// unacked delivery is visible again within a few seconds.
const LOAD_INVISIBLE_S: i64 = 2;

use common::res;

/// What the producer intends for transaction number `i` (the checker answers the same).
fn intended_commit(i: u64) -> bool {
    match i % 3 {
        0 => true,
        1 => false,
        _ => i % 2 == 0,
    }
}

fn message(id: &str, t: v2::MessageType) -> v2::Message {
    common::message(TOPIC, id, t, id.as_bytes())
}

fn ok(s: Option<&v2::Status>) -> bool {
    s.is_some_and(|s| s.code == v2::Code::Ok as i32)
}

async fn end(c: &mut Client, id: &str, txn: &str, commit: bool, source: v2::TransactionSource) -> bool {
    let resolution = if commit { v2::TransactionResolution::Commit } else { v2::TransactionResolution::Rollback };
    let req = v2::EndTransactionRequest {
        topic: res(TOPIC),
        message_id: id.into(),
        transaction_id: txn.into(),
        resolution: resolution as i32,
        source: source as i32,
        trace_context: String::new(),
    };
    matches!(c.end_transaction(req).await, Ok(r) if ok(r.get_ref().status.as_ref()))
}

/// A producer's Telemetry stream answering check-backs until `stop`: the intended decision for
/// transactions nobody decided yet, the opposite for those whose producer's decision the
/// broker acknowledged (`decided`), which the broker must refuse.
async fn checker(mut c: Client, decided: Arc<Mutex<HashMap<String, bool>>>, stop: CancellationToken) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let settings = v2::Settings {
        client_type: Some(v2::ClientType::Producer as i32),
        pub_sub: Some(v2::settings::PubSub::Publishing(v2::Publishing {
            topics: vec![res(TOPIC).unwrap()],
            max_body_size: 0,
            validate_message_type: true,
        })),
        ..Default::default()
    };
    let _ = tx
        .send(v2::TelemetryCommand { status: None, command: Some(v2::telemetry_command::Command::Settings(settings)) })
        .await;
    let Ok(resp) = c.telemetry(tokio_stream::wrappers::ReceiverStream::new(rx)).await else { return };
    let mut inbound = resp.into_inner();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            n = inbound.message() => n,
        };
        let Ok(Some(cmd)) = next else { return };
        if let Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(r)) = cmd.command {
            let id = r.message.and_then(|m| m.system_properties).map(|s| s.message_id).unwrap_or_default();
            let i: u64 = id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(1);
            let acked = decided.lock().unwrap().get(&id).copied();
            let answer = match acked {
                Some(commit) => !commit,
                None => intended_commit(i),
            };
            let accepted = end(&mut c, &id, &r.transaction_id, answer, v2::TransactionSource::SourceServerCheck).await;
            if accepted && acked.is_some() {
                decided.lock().unwrap().insert(format!("LOST:{id}"), answer);
            }
        }
    }
}

#[derive(Default)]
struct Ledger {
    sends_acked: HashSet<String>,
    halves_acked: HashSet<String>,
    /// Messages whose ack by group `g` was acknowledged.
    group_acked: HashSet<String>,
    /// Messages whose ack was sent but not acknowledged (it may or may not have been applied).
    group_ack_unsure: HashSet<String>,
}

async fn receive(c: &mut Client, group: &str, invisible: i64) -> Vec<(String, String)> {
    let Ok(r) = c.receive_message(common::receive_request(group, TOPIC, invisible)).await else { return Vec::new() };
    let mut s = r.into_inner();
    let mut out = Vec::new();
    while let Ok(Some(item)) = s.message().await {
        if let Some(v2::receive_message_response::Content::Message(m)) = item.content {
            let sp = m.system_properties.unwrap_or_default();
            out.push((sp.message_id, sp.receipt_handle.unwrap_or_default()));
        }
    }
    out
}

async fn ack(c: &mut Client, group: &str, id: &str, handle: &str) -> bool {
    let req = v2::AckMessageRequest {
        group: res(group),
        topic: res(TOPIC),
        entries: vec![v2::AckMessageEntry { message_id: id.into(), receipt_handle: handle.into(), lite_topic: None }],
    };
    matches!(c.ack_message(req).await, Ok(r) if ok(r.get_ref().status.as_ref()))
}

/// One round of load until `stop`.
async fn load(
    c: Client,
    round: u64,
    ledger: Arc<Mutex<Ledger>>,
    decided: Arc<Mutex<HashMap<String, bool>>>,
    stop: CancellationToken,
) {
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (mut c, ledger, decided, stop) = (c.clone(), ledger.clone(), decided.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.is_cancelled() {
                let id = format!("N{round}-{i}");
                if let Ok(r) = c
                    .send_message(v2::SendMessageRequest { messages: vec![message(&id, v2::MessageType::Normal)] })
                    .await
                {
                    if ok(r.get_ref().status.as_ref()) {
                        ledger.lock().unwrap().sends_acked.insert(id);
                    }
                }
                let id = format!("T{round}-{i}");
                let Ok(r) = c
                    .send_message(v2::SendMessageRequest { messages: vec![message(&id, v2::MessageType::Transaction)] })
                    .await
                else {
                    continue;
                };
                let r = r.into_inner();
                let Some(e) = r.entries.first().filter(|e| ok(e.status.as_ref())) else { continue };
                ledger.lock().unwrap().halves_acked.insert(id.clone());
                if i % 3 != 2 {
                    let commit = intended_commit(i);
                    if end(&mut c, &id, &e.transaction_id, commit, v2::TransactionSource::SourceClient).await {
                        decided.lock().unwrap().insert(id.clone(), commit);
                    }
                }
                i += 4;
            }
        }));
    }
    {
        let (mut c, ledger, stop) = (c.clone(), ledger.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                for (id, handle) in receive(&mut c, "g", LOAD_INVISIBLE_S).await {
                    let acked = ack(&mut c, "g", &id, &handle).await;
                    let mut l = ledger.lock().unwrap();
                    if acked {
                        l.group_acked.insert(id);
                    } else {
                        l.group_ack_unsure.insert(id);
                    }
                }
            }
        }));
    }
    tasks.push(tokio::spawn(checker(c, decided, stop)));
    for t in tasks {
        t.await.expect("a load task panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let decided = Arc::new(Mutex::new(HashMap::new()));
    for round in 0..ROUNDS {
        let (mut child, addr, _log) = common::start_broker(dir.path(), ARGS);
        let c = loop {
            match MessagingServiceClient::connect(format!("http://{addr}")).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let stop = CancellationToken::new();
        let running = tokio::spawn(load(c, round, ledger.clone(), decided.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(300 + (round * 7919) % 700)).await;
        child.kill().unwrap(); // SIGKILL mid-load
        child.wait().unwrap();
        stop.cancel();
        running.await.expect("the load panicked");
    }

    // Recovery: a live checker resolves every pending transaction.
    let (mut child, addr, _log) = common::start_broker(dir.path(), ARGS);
    let c = MessagingServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let stop = CancellationToken::new();
    let check = tokio::spawn(checker(c.clone(), decided.clone(), stop.clone()));
    let mut admin = pb::admin_client::AdminClient::connect(format!("http://{addr}")).await.unwrap();
    let started = Instant::now();
    loop {
        let pending = admin
            .list_transactions(pb::ListTransactionsRequest {
                state: pb::TxnState::Pending as i32,
                limit: 100_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .transactions
            .len();
        if pending == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{pending} transactions still pending");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Everything a fresh group can read, counted per id.
    let mut c2 = c.clone();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut idle = 0;
    while idle < 3 {
        let got = receive(&mut c2, "verify", 300).await;
        if got.is_empty() {
            idle += 1;
        }
        for (id, handle) in got {
            *seen.entry(id.clone()).or_default() += 1;
            assert!(ack(&mut c2, "verify", &id, &handle).await);
        }
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    for id in &ledger.sends_acked {
        assert_eq!(seen.get(id), Some(&1), "acked send {id} delivered exactly once");
    }
    for (id, n) in &seen {
        assert_eq!(*n, 1, "{id} delivered {n} times");
        if let Some(i) = id.strip_prefix('T').and_then(|r| r.rsplit('-').next()).and_then(|n| n.parse::<u64>().ok()) {
            assert!(intended_commit(i), "{id} was delivered although its producer meant to roll it back");
        }
    }
    for id in &ledger.halves_acked {
        let i: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
        if intended_commit(i) {
            assert_eq!(seen.get(id), Some(&1), "committed transaction {id} delivered once");
        }
    }
    // Decisions the broker acknowledged were never replaced by the checker's contrary answer.
    let lost: Vec<String> = decided.lock().unwrap().keys().filter(|k| k.starts_with("LOST:")).cloned().collect();
    assert!(lost.is_empty(), "acknowledged decisions lost (the contrary check answer was accepted): {lost:?}");
    let decisions = decided.lock().unwrap().len();
    for (id, commit) in decided.lock().unwrap().iter().filter(|(k, _)| !k.starts_with("LOST:")) {
        assert_eq!(
            seen.contains_key(id),
            *commit,
            "{id}: acknowledged {} but delivered {:?}",
            if *commit { "commit" } else { "rollback" },
            seen.get(id)
        );
    }

    // Drain group `g` completely, past the load's invisible time: a message whose ack was
    // acknowledged never comes back; every message it never acked does.
    tokio::time::sleep(Duration::from_secs(LOAD_INVISIBLE_S as u64 + 1)).await;
    let mut again: HashSet<String> = HashSet::new();
    let mut idle = 0;
    while idle < 3 {
        let got = receive(&mut c2, "g", 300).await;
        idle = if got.is_empty() { idle + 1 } else { 0 };
        again.extend(got.into_iter().map(|(id, _)| id));
    }
    let came_back: Vec<&String> = again.iter().filter(|id| ledger.group_acked.contains(*id)).collect();
    assert!(came_back.is_empty(), "acknowledged acks were lost: {came_back:?}");
    let mut missing = Vec::new();
    for id in seen.keys() {
        if !ledger.group_acked.contains(id) && !ledger.group_ack_unsure.contains(id) && !again.contains(id) {
            missing.push(id.clone());
        }
    }
    assert!(missing.is_empty(), "never acked by g, yet not delivered to it again: {missing:?}");
    eprintln!(
        "{ROUNDS} SIGKILL rounds: {} acked sends, {} acked half messages, {decisions} acknowledged decisions held \
         against contrary check answers, {} acked acks never redelivered, {} unacked messages redelivered \
         ({} acks of unknown outcome); {} messages delivered",
        ledger.sends_acked.len(),
        ledger.halves_acked.len(),
        ledger.group_acked.len(),
        again.len(),
        ledger.group_ack_unsure.len(),
        seen.len()
    );
    stop.cancel();
    check.await.expect("the checker panicked");
    child.kill().unwrap();
    child.wait().unwrap();
}
