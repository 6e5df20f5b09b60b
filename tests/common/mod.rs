//! Helpers shared by the end-to-end tests: an in-process broker on port 0 and the official
//! RocketMQ Rust client configured against it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use rocketmq::conf::{ClientOption, ProducerOption};
use rocketmq::error::ClientError;
use rocketmq::Producer;
use std::path::Path;
use txmq_broker::config::Config;
use txmq_broker::server::{self, RunningBroker};

/// Broker config for tests: port 0 on loopback, store in `dir`.
pub fn config(dir: &Path) -> Config {
    let mut c = Config::with_data_dir(dir);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c
}

pub async fn start(config: Config) -> RunningBroker {
    server::spawn(config).await.expect("broker starts")
}

pub fn client_option(broker: &RunningBroker) -> ClientOption {
    let mut o = ClientOption::default();
    o.set_access_url(broker.access_point());
    o.set_enable_tls(false);
    o
}

/// A started producer of the official client, announcing `topics`.
/// The official client logs every RPC to the terminal by default; send its log to
/// `logs/rocketmq_client.log` instead (the client needs the directory to exist).
pub fn quiet_logs() -> rocketmq::conf::LoggingFormat {
    std::fs::create_dir_all("logs").unwrap();
    rocketmq::conf::LoggingFormat::Json
}

pub async fn producer(broker: &RunningBroker, topics: &[&str]) -> Producer {
    let mut opt = ProducerOption::default();
    opt.set_logging_format(quiet_logs());
    opt.set_topics(topics.to_vec());
    let mut p = Producer::new(opt, client_option(broker)).unwrap();
    p.start().await.expect("producer starts");
    p
}

/// The RocketMQ status code name an official-client error carries (e.g. "ILLEGAL_TOPIC").
pub fn code_of(e: &ClientError) -> String {
    e.context()
        .iter()
        .find(|(k, _)| *k == "code")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| format!("no code in {e:?}"))
}

use rocketmq::conf::SimpleConsumerOption;
use rocketmq::model::common::{FilterExpression, FilterType};
use rocketmq::model::message::MessageView;
use rocketmq::SimpleConsumer;
use std::time::{Duration, Instant};

/// Broker config for consumption tests: short long polls so empty receives end quickly.
pub fn fast_config(dir: &Path) -> Config {
    let mut c = config(dir);
    c.long_polling_max = Duration::from_secs(1);
    c
}

/// A started simple consumer of the official client.
pub async fn consumer(broker: &RunningBroker, group: &str, topics: &[&str]) -> SimpleConsumer {
    let mut opt = SimpleConsumerOption::default();
    opt.set_logging_format(quiet_logs());
    opt.set_consumer_group(group);
    opt.set_topics(topics.to_vec());
    let mut c = SimpleConsumer::new(opt, client_option(broker)).unwrap();
    c.start().await.expect("consumer starts");
    c
}

pub fn tags(expression: &str) -> FilterExpression {
    FilterExpression::new(FilterType::Tag, expression)
}

/// Receives and acks until `want` messages arrived or `timeout` passed; returns them.
pub async fn drain(
    c: &SimpleConsumer,
    topic: &str,
    filter: &FilterExpression,
    want: usize,
    timeout: Duration,
) -> Vec<MessageView> {
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < want && started.elapsed() < timeout {
        for m in c.receive(topic.to_string(), filter).await.expect("receive") {
            c.ack(&m).await.expect("ack");
            got.push(m);
        }
    }
    got
}

/// Sends `n` normal messages with bodies `"{prefix}{i}"`; returns their ids in order.
pub async fn send_n(p: &Producer, topic: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let m = rocketmq::model::message::MessageBuilder::builder()
            .set_topic(topic)
            .set_body(format!("{prefix}{i}").into_bytes())
            .build()
            .unwrap();
        ids.push(p.send(m).await.expect("send").message_id().to_string());
    }
    ids
}

use rocketmq::model::transaction::TransactionResolution;
use txmq_proto::admin as pb;

/// Broker config for transaction tests: checks after 1 s, every 1 s, at most 3.
pub fn txn_config(dir: &Path) -> Config {
    let mut c = fast_config(dir);
    c.txn_timeout = Duration::from_secs(1);
    c.txn_check_interval = Duration::from_secs(1);
    c.txn_max_checks = 3;
    c
}

/// A started transaction producer of the official client whose checker answers `answer`.
pub async fn txn_producer(
    broker: &RunningBroker,
    topics: &[&str],
    answer: impl Fn() -> TransactionResolution + Send + Sync + 'static,
) -> Producer {
    let mut opt = ProducerOption::default();
    opt.set_logging_format(quiet_logs());
    opt.set_topics(topics.to_vec());
    let checker = Box::new(move |_txn_id: String, _msg: MessageView| answer());
    let mut p = Producer::new_transaction_producer(opt, client_option(broker), checker).unwrap();
    p.start().await.expect("transaction producer starts");
    p
}

pub type Admin = pb::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, txmq_client::Signer>,
>;

/// The credentials `admin` signs with (tests of a broker with authentication set them).
pub static ADMIN_AS: std::sync::OnceLock<txmq_client::Credentials> = std::sync::OnceLock::new();

pub async fn admin(broker: &RunningBroker) -> Admin {
    admin_with(broker, ADMIN_AS.get().cloned()).await
}

pub async fn admin_with(broker: &RunningBroker, credentials: Option<txmq_client::Credentials>) -> Admin {
    admin_over(broker, credentials, None).await
}

/// An admin client over TLS when `ca` (the broker's CA, PEM) is given.
pub async fn admin_over(
    broker: &RunningBroker,
    credentials: Option<txmq_client::Credentials>,
    ca: Option<std::path::PathBuf>,
) -> Admin {
    let mut config = txmq_client::ClientConfig::new(broker.access_point());
    config.tls = ca.map(Some);
    let channel = config.endpoint().unwrap().connect().await.unwrap();
    pb::admin_client::AdminClient::with_interceptor(channel, txmq_client::Signer(credentials))
}

/// The transaction with its timeline.
pub async fn txn(broker: &RunningBroker, id: &str) -> pb::Transaction {
    let r =
        admin(broker).await.get_transaction(pb::GetTransactionRequest { id: id.into() }).await.unwrap().into_inner();
    r.transaction.unwrap_or_else(|| panic!("no transaction {id}: {:?}", r.status))
}

/// Polls until the transaction reaches `state` (or panics after 30 s).
pub async fn wait_state(broker: &RunningBroker, id: &str, state: pb::TxnState) -> pb::Transaction {
    let started = Instant::now();
    loop {
        let t = txn(broker, id).await;
        if t.state == state as i32 {
            return t;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "transaction {id} stuck in {:?}", t.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A certificate authority and a broker certificate it signed (for 127.0.0.1 and localhost),
/// written as PEM files in a temporary directory.
pub struct TestCerts {
    pub dir: tempfile::TempDir,
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TestCerts {
    pub fn new(name: &str) -> TestCerts {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (dir.path().join("ca.pem"), dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let certs = TestCerts { dir, ca, cert, key };
        certs.issue(name);
        certs
    }

    /// Makes a new CA and broker certificate under the same file names.
    pub fn issue(&self, name: &str) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "txmq broker");
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(&self.ca, ca.pem()).unwrap();
        std::fs::write(&self.cert, cert.pem()).unwrap();
        std::fs::write(&self.key, key.serialize_pem()).unwrap();
    }
}

#[path = "../../broker/tests/common/scrape.rs"]
mod scrape;
// Not every test binary reads metrics.
#[allow(unused_imports)]
pub use scrape::scrape;
