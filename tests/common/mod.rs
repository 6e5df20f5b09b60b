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
pub async fn producer(broker: &RunningBroker, topics: &[&str]) -> Producer {
    let mut opt = ProducerOption::default();
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
