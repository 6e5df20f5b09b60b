//! Helpers shared by the broker's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts the `txmq-broker` binary on a free loopback port with `args`; returns the child, its
/// address, and a thread collecting the rest of its log (joined once the child exits).
pub fn start_broker(dir: &Path, args: &[&str]) -> (Child, String, std::thread::JoinHandle<Vec<String>>) {
    start_broker_under(&[], dir, args)
}

/// [`start_broker`] run by `wrapper` (for example `strace -f -o FILE`), which must pass the
/// broker's stderr through.
pub fn start_broker_under(
    wrapper: &[&str],
    dir: &Path,
    args: &[&str],
) -> (Child, String, std::thread::JoinHandle<Vec<String>>) {
    let broker = env!("CARGO_BIN_EXE_txmq-broker");
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(broker);
            c
        }
        None => Command::new(broker),
    };
    let mut child = command
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
    let mut seen = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("broker exited before printing its address:\n{}", seen.join("\n"))
        };
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        seen.push(line);
    };
    // Keep draining the log so the child never blocks on a full pipe.
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect());
    (child, addr, log)
}

/// The value of the sample `series` (name with labels, exactly as rendered), or 0 when absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// What an [`ObservedStore`] reports.
pub enum StoreEvent<'a> {
    /// A key read: a point read, or one entry a scan returned.
    Read(&'a [u8]),
    /// A scan started, at this bound (before its entries' `Read`s).
    Scan(std::ops::Bound<&'a [u8]>),
    /// A batch applied.
    Apply,
}

/// A memory store that tells `observe` about every read key and every apply, for tests that
/// count what an operation reads or how much it reads before it writes.
pub struct ObservedStore<F> {
    inner: txmq_broker::store::MemoryStore,
    observe: F,
}

impl<F: Fn(StoreEvent<'_>) + Send + Sync + 'static> ObservedStore<F> {
    pub fn new(observe: F) -> Self {
        Self { inner: txmq_broker::store::MemoryStore::new(), observe }
    }
}

impl<F: Fn(StoreEvent<'_>) + Send + Sync + 'static> txmq_broker::store::Store for ObservedStore<F> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, txmq_broker::store::StoreError> {
        (self.observe)(StoreEvent::Read(key));
        self.inner.get(key)
    }
    fn scan(
        &self,
        start: std::ops::Bound<&[u8]>,
        end: std::ops::Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<txmq_broker::store::Entry>, txmq_broker::store::StoreError> {
        (self.observe)(StoreEvent::Scan(start));
        let entries = self.inner.scan(start, end, limit, reverse)?;
        for (k, _) in &entries {
            (self.observe)(StoreEvent::Read(k));
        }
        Ok(entries)
    }
    fn apply(&self, batch: &txmq_broker::store::Batch) -> Result<(), txmq_broker::store::StoreError> {
        (self.observe)(StoreEvent::Apply);
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), txmq_broker::store::StoreError> {
        self.inner.flush()
    }
    fn size_on_disk(&self) -> u64 {
        0
    }
}

/// A RocketMQ resource (topic or group) in no namespace.
pub fn res(name: &str) -> Option<txmq_proto::v2::Resource> {
    Some(txmq_proto::v2::Resource { resource_namespace: String::new(), name: name.into() })
}

/// A message as a producer sends it: `id`, of type `t`, with `body`.
pub fn message(topic: &str, id: &str, t: txmq_proto::v2::MessageType, body: &[u8]) -> txmq_proto::v2::Message {
    txmq_proto::v2::Message {
        topic: res(topic),
        user_properties: Default::default(),
        system_properties: Some(txmq_proto::v2::SystemProperties {
            message_id: id.into(),
            message_type: t as i32,
            body_encoding: txmq_proto::v2::Encoding::Identity as i32,
            ..Default::default()
        }),
        body: body.to_vec(),
    }
}

/// A SendMessage request of one NORMAL message whose body is its id.
pub fn send_request(topic: &str, id: &str) -> txmq_proto::v2::SendMessageRequest {
    txmq_proto::v2::SendMessageRequest {
        messages: vec![message(topic, id, txmq_proto::v2::MessageType::Normal, id.as_bytes())],
    }
}

/// `msg` sent as client `client_id` (`x-mq-client-id`).
pub fn as_client<T>(client_id: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-mq-client-id", client_id.parse().unwrap());
    r
}

/// A validated message for the in-process broker API: `id` of type `t` in `topic`, body = id.
pub fn new_message(topic: &str, id: &str, t: txmq_broker::model::MessageType) -> txmq_broker::model::NewMessage {
    txmq_broker::model::NewMessage {
        topic: topic.into(),
        message_id: id.into(),
        message_type: t,
        tag: None,
        keys: Vec::new(),
        message_group: None,
        born_timestamp: 0,
        born_host: "test".into(),
        delivery_timestamp: None,
        trace_context: None,
        recovery_duration_ms: None,
        origin_topic: None,
        user_properties: Default::default(),
        body: id.as_bytes().to_vec(),
        body_gzip: false,
        priority: None,
        lite_topic: None,
    }
}

/// A ReceiveMessage answer read to its end: the status code it closed with and its messages.
pub async fn read_receive(
    mut stream: tonic::Streaming<txmq_proto::v2::ReceiveMessageResponse>,
) -> (i32, Vec<txmq_proto::v2::Message>) {
    use txmq_proto::v2::receive_message_response::Content;
    let (mut code, mut out) = (0, Vec::new());
    while let Some(item) = stream.message().await.unwrap() {
        match item.content.unwrap() {
            Content::Status(s) => code = s.code,
            Content::Message(m) => out.push(m),
            Content::DeliveryTimestamp(_) => {}
        }
    }
    (code, out)
}

/// A ReceiveMessage request: up to 32 messages of `topic` for `group`, invisible for
/// `invisible_s`, long-polling 1 s.
pub fn receive_request(group: &str, topic: &str, invisible_s: i64) -> txmq_proto::v2::ReceiveMessageRequest {
    txmq_proto::v2::ReceiveMessageRequest {
        group: res(group),
        message_queue: Some(txmq_proto::v2::MessageQueue { topic: res(topic), ..Default::default() }),
        filter_expression: None,
        batch_size: 32,
        invisible_duration: Some(prost_types::Duration { seconds: invisible_s, nanos: 0 }),
        auto_renew: false,
        long_polling_timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        attempt_id: None,
    }
}

/// A transaction as the admin API shows it, with its timeline.
pub async fn admin_transaction(url: &str, id: &str) -> txmq_proto::admin::Transaction {
    let mut admin = txmq_proto::admin::admin_client::AdminClient::connect(url.to_string()).await.unwrap();
    let req = txmq_proto::admin::GetTransactionRequest { id: id.into() };
    admin.get_transaction(req).await.unwrap().into_inner().transaction.unwrap()
}

mod etcd;
#[allow(unused_imports)]
pub use etcd::{signal_pid, Etcd};

pub mod replicated;

mod scrape;
// Not every test binary reads metrics.
#[allow(unused_imports)]
pub use scrape::scrape;

/// A broker in this process on an in-memory store whose faults the test injects (long polls of
/// at most 1 s; `config` sets the rest).
pub async fn spawn_faulty(
    config: impl FnOnce(&mut txmq_broker::config::Config),
) -> (txmq_broker::server::RunningBroker, std::sync::Arc<txmq_broker::store::faults::Faults>) {
    let (store, faults) = txmq_broker::store::faults::FaultyStore::new(txmq_broker::store::MemoryStore::new());
    let mut c = txmq_broker::config::Config::with_data_dir("/nonexistent");
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.long_polling_max = std::time::Duration::from_secs(1);
    config(&mut c);
    (txmq_broker::server::spawn_with(c, Some(std::sync::Arc::new(store))).await.unwrap(), faults)
}

/// Holds the store's applies, starts `request` and returns its task once its write is held.
pub async fn start_held<T: Send + 'static>(
    faults: &txmq_broker::store::faults::Faults,
    request: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    faults.hold_applies();
    let applies = faults.applies();
    let task = tokio::spawn(request);
    let started = std::time::Instant::now();
    while faults.applies() == applies {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the request never wrote");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    task
}
