//! The web console in a real headless Chromium (WebDriver through chromedriver), with
//! JavaScript switched off in the browser: every page must read and every action must work as
//! plain HTML forms. The broker runs in process; the console is the `txmq` binary itself.
//!
//! Screenshots of each step go to `target/console-screenshots/` (kept as CI artifacts).
//!
//! Needs `chromium` and `chromedriver` (Debian `chromium`, `chromium-driver`; `.ci/run`
//! installs them). Set `TXMQ_CHROMEDRIVER` / `TXMQ_CHROMIUM` to use other paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{admin, consumer, drain, fast_config, producer, send_n, start, tags, txn_producer};
use fantoccini::{Client, ClientBuilder, Locator};
use rocketmq::model::message::MessageBuilder;
use rocketmq::model::transaction::{Transaction, TransactionResolution};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use txmq_proto::admin as pb;

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts chromedriver and waits until it answers.
async fn chromedriver() -> (Killed, String) {
    let bin = std::env::var("TXMQ_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = free_port();
    let child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin} ({e}); install Debian's chromium-driver"));
    let guard = Killed(child);
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (guard, format!("http://127.0.0.1:{port}"))
}

/// A headless Chromium session with JavaScript disabled.
async fn browser(driver: &str) -> Client {
    let binary = std::env::var("TXMQ_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": binary,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"],
            "prefs": { "profile.managed_default_content_settings.javascript": 2 }
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a Chromium session")
}

/// Starts `txmq console` against `broker` on a free port; returns it and its base URL.
fn console(broker: &str) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_txmq"))
        .args(["--broker", broker, "console", "--listen", "127.0.0.1:0", "--operator", "ci-operator"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("txmq console starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect("the console prints its URL");
    (Killed(child), url.to_string())
}

/// Saves a screenshot of the current page as `target/console-screenshots/<name>.png`.
async fn screenshot(c: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).text().await.unwrap()
}

/// Waits (a click's navigation may still be loading) until the text of `css` is `want`.
async fn wait_text(c: &Client, css: &str, want: &str) {
    let started = Instant::now();
    loop {
        let got = match c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if got == want {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{css} shows {got:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_commits_a_stuck_transaction_and_reads_a_groups_backlog_in_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(dir.path());
    // Checked soon and often, never parked: it stays pending while nobody can answer.
    config.txn_timeout = Duration::from_secs(1);
    config.txn_check_interval = Duration::from_secs(1);
    config.txn_max_checks = 1000;
    let broker = start(config).await;
    let addr = broker.access_point();
    let mut api = admin(&broker).await;
    api.create_topic(pb::CreateTopicRequest {
        name: "orders".into(),
        r#type: pb::TopicType::Transaction as i32,
        queue_count: 2,
    })
    .await
    .unwrap();

    // The group that will receive the order once it is committed subscribes first.
    let shipping = consumer(&broker, "shipping", &["orders"]).await;
    assert!(drain(&shipping, "orders", &tags("*"), 1, Duration::from_millis(1500)).await.is_empty());

    // A producer sends a half message and goes away without deciding.
    let p = txn_producer(&broker, &["orders"], || TransactionResolution::UNKNOWN).await;
    let msg = MessageBuilder::transaction_message_builder("orders", b"order 7 paid".to_vec())
        .set_keys(vec!["order-7"])
        .build()
        .unwrap();
    let t = p.send_transaction_message(msg).await.unwrap();
    let (id, message_id) = (t.transaction_id().to_string(), t.message_id().to_string());
    p.shutdown().await.unwrap();
    // Its client is gone from the broker's registry (termination, or its stream closed).
    let started = Instant::now();
    loop {
        let clients = api.list_clients(pb::ListClientsRequest {}).await.unwrap().into_inner().clients;
        if !clients.iter().any(|c| c.online && c.topics.contains(&"orders".to_string())) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the producer still looks online: {clients:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (_console, url) = console(&addr);
    let (_driver, driver_url) = chromedriver().await;
    let c = browser(&driver_url).await;
    // Scripting really is off in this browser: <noscript> content renders.
    c.goto("data:text/html,<noscript><p id=off>scripts off</p></noscript>").await.unwrap();
    assert_eq!(text(&c, "#off").await, "scripts off");

    // The inbox lists it, classified "no producer online".
    c.goto(&format!("{url}/transactions")).await.unwrap();
    let row = text(&c, &format!("tr[data-txn='{id}']")).await;
    assert!(row.contains("no producer online"), "inbox row: {row}");
    assert!(row.contains("orders"), "inbox row: {row}");
    screenshot(&c, "1-inbox").await;

    // Its page; a commit without a reason is refused, with a reason and confirmation it lands.
    c.find(Locator::Css(&format!("tr[data-txn='{id}'] a"))).await.unwrap().click().await.unwrap();
    wait_text(&c, "#txn-id", &id).await;
    assert_eq!(text(&c, "#txn-state").await, "PENDING");
    screenshot(&c, "2-transaction").await;
    c.find(Locator::Id("reason")).await.unwrap().send_keys("bank confirmed payment of order 7").await.unwrap();
    c.find(Locator::Id("confirm")).await.unwrap().click().await.unwrap();
    c.find(Locator::Id("commit")).await.unwrap().click().await.unwrap();
    wait_text(&c, "#txn-state", "COMMITTED").await;
    let timeline = text(&c, "#timeline").await;
    assert!(timeline.contains("bank confirmed payment of order 7"), "timeline: {timeline}");
    screenshot(&c, "3-committed").await;

    // The consumer receives the committed message.
    let got = drain(&shipping, "orders", &tags("*"), 1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id(), message_id);
    assert_eq!(got[0].body(), b"order 7 paid");

    // The audit log shows who did what and why, in the console and over the admin API.
    c.goto(&format!("{url}/audit")).await.unwrap();
    let audit = text(&c, "#audit").await;
    assert!(audit.contains("ci-operator via console"), "audit: {audit}");
    assert!(audit.contains("commit") && audit.contains(&id), "audit: {audit}");
    assert!(audit.contains("bank confirmed payment of order 7"), "audit: {audit}");
    screenshot(&c, "4-audit").await;
    let entries = api.list_audit(pb::ListAuditRequest { limit: 10 }).await.unwrap().into_inner().entries;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!((entries[0].action.as_str(), entries[0].outcome.as_str()), ("commit", "ok"));

    // A group page shows the backlog the admin API reports.
    let billing = consumer(&broker, "billing", &["events"]).await;
    let events = producer(&broker, &["events"]).await;
    send_n(&events, "events", "e", 1).await;
    assert_eq!(drain(&billing, "events", &tags("*"), 1, Duration::from_secs(10)).await.len(), 1);
    send_n(&events, "events", "e", 5).await;
    let described = api
        .describe_group(pb::DescribeGroupRequest { name: "billing".into() })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    let backlog: u64 = described.topics.iter().map(|t| t.backlog).sum();
    assert_eq!(backlog, 5);
    c.goto(&format!("{url}/groups/billing")).await.unwrap();
    assert_eq!(text(&c, "#backlog").await, backlog.to_string());
    let events_row = text(&c, "tr.topic-total[data-topic='events'] td.backlog").await;
    assert_eq!(events_row, "5");
    screenshot(&c, "5-group").await;

    // The other pages read without scripts too.
    for (path, shot) in [("/", "6-overview"), ("/groups", "7-groups"), ("/dead-letters", "8-dead-letters")] {
        c.goto(&format!("{url}{path}")).await.unwrap();
        assert!(!text(&c, "h1").await.is_empty());
        screenshot(&c, shot).await;
    }
    c.goto(&format!("{url}/messages?topic=orders&id={message_id}")).await.unwrap();
    let states = text(&c, "table.states").await;
    assert!(states.contains("shipping") && states.contains("acked"), "message states: {states}");
    let from = text(&c, "p.from-txn").await;
    assert!(from.contains(&id) && from.contains("COMMITTED"), "message's transaction: {from}");
    screenshot(&c, "9-message").await;

    c.close().await.unwrap();
    events.shutdown().await.unwrap();
    billing.shutdown().await.unwrap();
    shipping.shutdown().await.unwrap();
    broker.stop().await.unwrap();
}
