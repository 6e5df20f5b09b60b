//! A flood of large sends from many concurrent requests, beyond the broker's byte budget for
//! sends in progress: the broker answers each one (OK or TOO_MANY_REQUESTS — and it does
//! refuse some), keeps serving, and its peak memory stays bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

/// Peak resident memory of a process, in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_sends_is_answered_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // 96 concurrent 1 MiB sends on 8 connections against a 4 MiB budget: some are refused.
    let (mut child, addr, _log) = common::start_broker(dir.path(), &["--max-inflight-bytes", "4194304"]);
    let (ok, busy, other) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let body = vec![7u8; 1024 * 1024];
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for conn in 0..8 {
        let c =
            MessagingServiceClient::connect(format!("http://{addr}")).await.unwrap().max_encoding_message_size(8 << 20);
        for t in 0..12 {
            let (mut c, ok, busy, other, body) = (c.clone(), ok.clone(), busy.clone(), other.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < deadline {
                    let m = v2::Message {
                        topic: Some(v2::Resource { resource_namespace: String::new(), name: "flood".into() }),
                        user_properties: Default::default(),
                        system_properties: Some(v2::SystemProperties {
                            message_id: format!("{conn}-{t}-{i}"),
                            message_type: v2::MessageType::Normal as i32,
                            body_encoding: v2::Encoding::Identity as i32,
                            ..Default::default()
                        }),
                        body: body.clone(),
                    };
                    i += 1;
                    match c.send_message(v2::SendMessageRequest { messages: vec![m] }).await {
                        Ok(r) => match r.into_inner().status.map(|s| s.code) {
                            Some(c) if c == v2::Code::Ok as i32 => ok.fetch_add(1, Ordering::Relaxed),
                            Some(c) if c == v2::Code::TooManyRequests as i32 => busy.fetch_add(1, Ordering::Relaxed),
                            _ => other.fetch_add(1, Ordering::Relaxed),
                        },
                        Err(_) => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let peak = peak_rss_mib(child.id());
    let (ok, busy, other) = (ok.load(Ordering::Relaxed), busy.load(Ordering::Relaxed), other.load(Ordering::Relaxed));
    eprintln!("flood: {ok} stored, {busy} TOO_MANY_REQUESTS, {other} other; broker peak RSS {peak} MiB");
    assert_eq!(other, 0, "every request got OK or TOO_MANY_REQUESTS");
    assert!(ok > 0);
    assert!(busy > 0, "96 MiB in flight against a 4 MiB budget drew no TOO_MANY_REQUESTS");
    assert!(peak < 768, "peak RSS {peak} MiB");
    // Still serving.
    let mut c = MessagingServiceClient::connect(format!("http://{addr}")).await.unwrap();
    c.heartbeat(v2::HeartbeatRequest { group: None, client_type: 1 }).await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}
