//! Helpers shared by the broker's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts the `txmq-broker` binary on a free loopback port with `args`; returns the child, its
/// address, and a thread collecting the rest of its log (joined once the child exits).
pub fn start_broker(dir: &Path, args: &[&str]) -> (Child, String, std::thread::JoinHandle<Vec<String>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_txmq-broker"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("broker binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("broker printed its address").unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect());
    (child, addr, log)
}
