//! Every OK follows an fsync: a SIGKILL keeps the page cache, so no crash test can notice a
//! missing `fdatasync`. These tests run the broker under `strace` (Debian `strace`, installed
//! by `.ci/run`) while a client sends messages, and check from the trace's timestamps that
//! every acknowledged send was preceded, after it was sent, by a completed `fdatasync` or
//! `fsync` of the store's log file (`<data-dir>/db`) — with `--value-log true`, preceded in
//! turn by one of a value-log segment (`<data-dir>/values/*.seg`, where message bodies then
//! live) — that every other file written in the data directory was synced after its last
//! write, and that sled never wrote a blob file (blob files are never fsynced by sled; txmq's
//! 4 KiB chunks keep every value in the log). Both layouts are traced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

const SENDS: usize = 200;
const CONCURRENCY: usize = 4;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// One system call from the trace: its name, the path of its file descriptor, and when it
/// completed (seconds since the epoch).
#[derive(Debug, Clone)]
struct Call {
    name: String,
    path: String,
    done: f64,
}

/// Parses `strace -f -ttt -T -y` output, joining `<unfinished ...>` / `<... resumed>` pairs.
/// Lines look like `1234  1796110077.914559 write(11</dir/conf>, …) = 58 <0.000094>`.
fn parse(trace: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut unfinished: HashMap<String, (String, String)> = HashMap::new();
    for line in trace.lines() {
        // `PID TIMESTAMP CALL…`; strace pads short pids with spaces.
        let Some((pid, rest)) = line.trim_start().split_once(char::is_whitespace) else { continue };
        let Some((ts, rest)) = rest.trim_start().split_once(' ') else { continue };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        let path_of = |s: &str| s.split_once('<').and_then(|(_, p)| p.split_once('>')).map(|(p, _)| p.to_string());
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let name = resumed.split_whitespace().next().unwrap_or_default().to_string();
            if let Some((n, path)) = unfinished.remove(pid) {
                if n == name && !rest.contains("= -1") {
                    calls.push(Call { name, path, done: ts });
                }
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else { continue };
        let path = path_of(args).unwrap_or_default();
        if rest.ends_with("<unfinished ...>") {
            unfinished.insert(pid.to_string(), (name.to_string(), path));
            continue;
        }
        if rest.contains("= -1") {
            continue;
        }
        let took = rest.rsplit_once('<').and_then(|(_, d)| d.trim_end_matches('>').parse::<f64>().ok()).unwrap_or(0.0);
        calls.push(Call { name: name.to_string(), path, done: ts + took });
    }
    calls
}

#[test]
fn trace_lines_parse_whatever_the_pid_width() {
    let trace = "7999  1796110077.961305 fsync(13</d/conf>) = 0 <0.000898>\n\
                 30415 1796110078.000000 fdatasync(12</d/db> <unfinished ...>\n\
                 30415 1796110078.000300 <... fdatasync resumed>) = 0 <0.000300>\n";
    let calls = parse(trace);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!((calls[0].name.as_str(), calls[0].path.as_str()), ("fsync", "/d/conf"));
    assert_eq!((calls[1].name.as_str(), calls[1].path.as_str()), ("fdatasync", "/d/db"));
    assert!((calls[1].done - 1796110078.0003).abs() < 1e-6);
}

/// Every record in sled (`--message-files false`): every OK follows an fdatasync of sled's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_send_follows_an_fdatasync_of_the_store() {
    let traced = traced_sends(&["--message-files", "false"]).await;
    assert!(traced.value_syncs.is_empty(), "a value-log segment was synced without --value-log");
    let unsynced = unsynced_oks(&traced.acked, &traced.log_syncs);
    assert!(unsynced.is_empty(), "acknowledged with no fdatasync of sled's log between send and OK: {unsynced:?}");
}

/// The acknowledged sends of `acked` with none of `syncs` between send and OK.
fn unsynced_oks(acked: &[(usize, f64, f64)], syncs: &[f64]) -> Vec<usize> {
    acked
        .iter()
        .filter(|(_, sent, acked_at)| !syncs.iter().any(|t| t >= sent && t <= acked_at))
        .map(|(i, _, _)| *i)
        .collect()
}

/// With `--value-log true`: the body's segment is synced, then sled's log, before every OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_value_log_every_ok_follows_a_segment_sync_then_the_stores() {
    bodies_synced_before_the_store(&traced_sends(&["--value-log", "true"]).await, "a value-log segment");
}

/// With message files (the default, `--message-files true`): the journal segment holding the
/// batch is synced before every OK, and sled's log is left alone (a send writes nothing to
/// sled: its record is whole in the journal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_message_files_every_ok_follows_a_journal_sync_and_sends_leave_sled_alone() {
    let traced = traced_sends(&["--message-files", "true"]).await;
    let unsynced = unsynced_oks(&traced.acked, &traced.value_syncs);
    assert!(
        unsynced.is_empty(),
        "acknowledged with no fdatasync of a journal segment between send and OK: {unsynced:?}"
    );
    let first = traced.acked.iter().map(|a| a.1).fold(f64::MAX, f64::min);
    let last = traced.acked.iter().map(|a| a.2).fold(0.0, f64::max);
    let during = |syncs: &[f64]| syncs.iter().filter(|t| **t >= first && **t <= last).count();
    let (journal, sled) = (during(&traced.value_syncs), during(&traced.log_syncs));
    // A checkpoint (every 10 s) writes to sled: at most a couple of its flushes fall in here.
    assert!(journal >= 20 && sled <= 3, "{journal} journal syncs and {sled} of sled's log while sending");
}

/// Every OK of `traced` follows an fdatasync of a file holding bodies, then one of sled's log.
fn bodies_synced_before_the_store(traced: &Traced, what: &str) {
    let mut bodies_unsynced = Vec::new();
    for (i, sent, acked_at) in &traced.acked {
        let ordered = traced
            .value_syncs
            .iter()
            .filter(|v| *v >= sent && *v <= acked_at)
            .any(|v| traced.log_syncs.iter().any(|t| t >= v && t <= acked_at));
        if !ordered {
            bodies_unsynced.push(*i);
        }
    }
    assert!(
        bodies_unsynced.is_empty(),
        "acknowledged with no fdatasync of {what}, then of sled's log, between send and OK: {bodies_unsynced:?}"
    );
}

/// What [`traced_sends`] saw: each acknowledged send `(index, sent, acked)`, and when sled's
/// log and the files holding bodies (value-log or journal segments) were synced.
struct Traced {
    acked: Vec<(usize, f64, f64)>,
    log_syncs: Vec<f64>,
    value_syncs: Vec<f64>,
}

/// Runs the broker (with `args`) under strace while `SENDS` messages are sent, and checks what
/// holds for every layout: sled's log was written and synced, every other file written in the
/// data directory was synced after its last write, and no blob file was written.
async fn traced_sends(args: &[&str]) -> Traced {
    let strace = std::process::Command::new("strace").arg("-V").output();
    assert!(strace.is_ok_and(|o| o.status.success()), "strace is needed (apt-get install strace; .ci/run installs it)");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let trace_file = dir.path().join("trace.txt");
    let trace_arg = trace_file.to_str().unwrap().to_string();
    let wrapper = [
        "strace",
        "-f",
        "-ttt",
        "-T",
        "-y",
        "-e",
        "trace=fdatasync,fsync,sync_file_range,pwrite64,write,writev",
        "-o",
        &trace_arg,
    ];
    let (mut child, addr, _log) = common::start_broker_under(&wrapper, &data, args);
    let client = loop {
        match MessagingServiceClient::connect(format!("http://{addr}")).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (mut c, next) = (client.clone(), next.clone());
        tasks.spawn(async move {
            let mut acked = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= SENDS {
                    return acked;
                }
                let m = v2::Message {
                    topic: Some(v2::Resource { resource_namespace: String::new(), name: "traced".into() }),
                    user_properties: Default::default(),
                    system_properties: Some(v2::SystemProperties {
                        message_id: format!("m{i}"),
                        message_type: v2::MessageType::Normal as i32,
                        body_encoding: v2::Encoding::Identity as i32,
                        ..Default::default()
                    }),
                    body: vec![b'x'; 1000 + i * 37],
                };
                let sent = now();
                let r = c.send_message(v2::SendMessageRequest { messages: vec![m] }).await.unwrap().into_inner();
                let acked_at = now();
                assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
                acked.push((i, sent, acked_at));
            }
        });
    }
    let mut acked = Vec::new();
    while let Some(r) = tasks.join_next().await {
        acked.extend(r.unwrap());
    }
    // SIGTERM to the broker (strace's child): it exits, and strace with it, writing the rest of
    // the trace.
    let stopped = std::process::Command::new("pkill").args(["-TERM", "-P", &child.id().to_string()]).status().unwrap();
    assert!(stopped.success(), "no broker process under strace");
    child.wait().unwrap();
    let trace = std::fs::read_to_string(&trace_file).unwrap();
    let calls = parse(&trace);
    let data = std::fs::canonicalize(&data).unwrap();
    let log = data.join("db").to_str().unwrap().to_string();
    let syncs: Vec<f64> = calls
        .iter()
        .filter(|c| (c.name == "fdatasync" || c.name == "fsync") && c.path == log)
        .map(|c| c.done)
        .collect();
    let log_writes = calls.iter().filter(|c| c.name.starts_with("pwrite") && c.path == log).count();
    assert!(
        log_writes > 0 && !syncs.is_empty(),
        "the trace saw no write or sync of {log}:\n{}",
        &trace[..trace.len().min(3000)]
    );
    let values_dir = format!("{}/", data.join("values").to_str().unwrap());
    let journal_dir = format!("{}/", data.join("messages").join("journal").to_str().unwrap());
    let value_syncs: Vec<f64> = calls
        .iter()
        .filter(|c| {
            c.name == "fdatasync"
                && ((c.path.starts_with(&values_dir) && c.path.ends_with(".seg"))
                    || (c.path.starts_with(&journal_dir) && c.path.ends_with(".jnl")))
        })
        .map(|c| c.done)
        .collect();
    assert_eq!(acked.len(), SENDS);
    // Other files written in the data directory, and whether each was synced after its last write.
    let mut others: HashMap<&str, (f64, Option<f64>)> = HashMap::new();
    for c in calls.iter().filter(|c| c.path.starts_with(data.to_str().unwrap()) && c.path != log) {
        let e = others.entry(&c.path).or_insert((0.0, None));
        if c.name.starts_with("pwrite") || c.name.starts_with("write") {
            e.0 = c.done;
        } else if c.name == "fsync" || c.name == "fdatasync" {
            e.1 = Some(c.done);
        }
    }
    let blobs: Vec<&&str> = others.keys().filter(|p| p.contains("/blobs/")).collect();
    assert!(blobs.is_empty(), "sled wrote blob files, which it never fsyncs: {blobs:?}");
    // Index files of message files are synced at checkpoints only: an open writes again, from
    // the journal, every entry written after the last one.
    let indexes = format!("{}/", data.join("messages").join("queues").to_str().unwrap());
    let unsynced_files: Vec<_> =
        others.iter().filter(|(p, (w, s))| !p.starts_with(&indexes) && s.is_none_or(|s| s < *w)).collect();
    assert!(unsynced_files.is_empty(), "files written and not synced afterwards: {unsynced_files:?}");
    eprintln!(
        "{} acked sends; {log}: {} syncs, {log_writes} writes; other files: {:?}",
        acked.len(),
        syncs.len(),
        others
    );
    Traced { acked, log_syncs: syncs, value_syncs }
}
