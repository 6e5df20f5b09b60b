//! Crash safety: a broker child process is killed with SIGKILL while sends are in flight; every
//! send it acknowledged is found intact after a restart. 20 rounds of 500 sends, each killed
//! after a random number of acks (seeded: the seed is printed, and `TXMQ_CRASH_SEED=n` replays
//! a run); after the last round every acked send of every round is checked again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;
use txmq_broker::broker::Broker;
use txmq_broker::config::Config;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

const ROUNDS: usize = 20;
const SENDS_PER_ROUND: usize = 500;
const CONCURRENCY: usize = 32;

fn message(i: usize, round: usize) -> v2::Message {
    common::message("crash", &format!("R{round:02}M{i:04}"), v2::MessageType::Normal, &body(i, round))
}

fn body(i: usize, round: usize) -> Vec<u8> {
    format!("round {round} message {i} {}", "z".repeat(i % 300)).into_bytes()
}

/// The run's seed: `TXMQ_CRASH_SEED`, or the clock.
fn seed() -> u64 {
    std::env::var("TXMQ_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    })
}

/// Small xorshift generator over (seed, round): the number of acks after which a round is
/// killed, between 1 and the round's sends.
fn kill_point(seed: u64, round: usize) -> usize {
    let mut x = (seed ^ (round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    for _ in 0..3 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    1 + (x as usize % (SENDS_PER_ROUND - 1))
}

/// Checks that every acked send of `rounds` is stored intact in the store at `dir`.
fn verify(dir: &std::path::Path, acked: &[(usize, Vec<usize>)], when: &str) -> usize {
    let broker = Broker::open(Config::with_data_dir(dir)).unwrap();
    let mut n = 0;
    for (round, sends) in acked {
        for i in sends {
            let id = format!("R{round:02}M{i:04}");
            let (q, o) = broker
                .log()
                .locate("crash", &id)
                .unwrap()
                .unwrap_or_else(|| panic!("{when}: round {round}: acked {id} lost"));
            let m = broker.log().read("crash", q, o).unwrap().expect("stored message readable");
            assert_eq!(m.msg.body, body(*i, *round), "{when}: round {round}: {id} corrupted");
            n += 1;
        }
    }
    broker.shutdown();
    n
}

/// The default layout: message chunks and ids in message files, the rest in sled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_sends_survive_sigkill() {
    sigkill_rounds(&[]).await;
}

/// The same with every record in sled (`--message-files false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_sends_survive_sigkill_with_everything_in_sled() {
    sigkill_rounds(&["--message-files", "false"]).await;
}

/// The same with message bodies in the value log (`--value-log true`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_sends_survive_sigkill_with_the_value_log() {
    sigkill_rounds(&["--value-log", "true"]).await;
}

async fn sigkill_rounds(args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let seed = seed();
    eprintln!("crash seed {seed} (TXMQ_CRASH_SEED={seed} replays these kill points)");
    let mut all_acked: Vec<(usize, Vec<usize>)> = Vec::new();
    for round in 0..ROUNDS {
        let (mut child, addr, log) = common::start_broker(dir.path(), args);
        let client = loop {
            match MessagingServiceClient::connect(format!("http://{addr}")).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let acked = Arc::new(Mutex::new(Vec::new()));
        let kill_after = kill_point(seed, round);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..CONCURRENCY {
            let (mut client, acked, next, killed_tx) = (client.clone(), acked.clone(), next.clone(), killed_tx.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= SENDS_PER_ROUND {
                        return;
                    }
                    let req = v2::SendMessageRequest { messages: vec![message(i, round)] };
                    let Ok(resp) = client.send_message(req).await else {
                        return;
                    };
                    let resp = resp.into_inner();
                    if resp.status.as_ref().map(|s| s.code) != Some(v2::Code::Ok as i32) {
                        eprintln!("round {round}: send {i} answered {:?}", resp.status);
                    } else {
                        let n = {
                            let mut a = acked.lock().unwrap();
                            a.push(i);
                            a.len()
                        };
                        if n == kill_after {
                            let _ = killed_tx.send(true);
                        }
                    }
                }
            }));
        }
        let mut killed_rx = killed_rx;
        let _ = tokio::time::timeout(Duration::from_secs(30), killed_rx.wait_for(|k| *k)).await;
        child.kill().unwrap(); // SIGKILL, with sends still in flight
        child.wait().unwrap();
        for t in tasks {
            t.await.expect("a send task panicked");
        }
        let acked = acked.lock().unwrap().clone();
        let log = log.join().unwrap_or_default();
        assert!(
            acked.len() >= kill_after,
            "round {round}: only {} acks, killed after {kill_after}; the broker's log:\n{}",
            acked.len(),
            log.join("\n")
        );
        eprintln!("round {round}: killed after {kill_after} acks, {} acked in all", acked.len());
        all_acked.push((round, acked));
        verify(dir.path(), &all_acked[all_acked.len() - 1..], "after its crash");
    }
    // Later rounds' crashes and restarts must not have lost earlier rounds' messages.
    let verified = verify(dir.path(), &all_acked, "after the last crash");
    eprintln!(
        "verified {verified} acknowledged sends of {ROUNDS} SIGKILL rounds again after the last one (seed {seed})"
    );
}
