//! Broker configuration: defaults, a TOML file, `TXMQ_*` environment variables and flags.
//!
//! Precedence, lowest first: built-in defaults, the `--config` TOML file, environment
//! variables, command-line flags. TOML keys are the flag names (`data-dir = "/var/lib/txmq"`).
//! Durations are written like `500ms`, `6s`, `5m`, `72h`.

use crate::consume::StartAt;
use crate::txn::service::MaxChecksPolicy;
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A duration written like `500ms`, `6s`, `5m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write it like 500ms, 6s, 5m"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Everything the broker needs to run. `Config::default()` is the documented default set.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the gRPC server binds.
    pub listen: SocketAddr,
    /// `host:port` that routes tell clients to dial; `None` means the listen address.
    pub advertise: Option<String>,
    /// Directory of the sled store.
    pub data_dir: PathBuf,
    /// Create unknown topics as MIXED on route or send; otherwise answer TOPIC_NOT_FOUND.
    pub auto_create_topics: bool,
    /// Queues of a topic created without an explicit count.
    pub default_queue_count: u32,
    /// Largest accepted message body. Kept below 4 MiB because the Rust client cannot
    /// receive a gRPC message of 4 MiB or more.
    pub max_body_size: usize,
    /// Furthest a delay message may be scheduled into the future.
    pub max_delay: Duration,
    /// Writes that may wait for the group-commit writer before senders are slowed down.
    pub writer_queue: usize,
    /// Longest a ReceiveMessage long poll is held (well below the Rust client's 40 s deadline).
    pub long_polling_max: Duration,
    /// Deliveries of one message to one group before it is dead-lettered.
    pub max_delivery_attempts: u32,
    /// Where a new consumer group starts on a topic.
    pub new_group_start: StartAt,
    /// Messages older than this are deleted, consumed or not.
    pub retention: Duration,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// ReceiveMessage calls that may wait at once; more get TOO_MANY_REQUESTS.
    pub max_long_polls: usize,
    /// Shortest invisible duration a receive may ask for.
    pub min_invisible: Duration,
    /// Age of a pending transaction at its first check (unless the message sets its own).
    pub txn_timeout: Duration,
    /// Time between checks of a pending transaction.
    pub txn_check_interval: Duration,
    /// Checks before the max-checks policy applies.
    pub txn_max_checks: u32,
    /// What happens after the last check: roll back or park for an operator.
    pub txn_max_checks_policy: MaxChecksPolicy,
    /// How long resolved transactions (and their timelines) are kept.
    pub txn_retention: Duration,
    /// Address of the Prometheus endpoint (`GET /metrics`); `None` turns it off.
    pub metrics_listen: Option<SocketAddr>,
    /// Open client connections at most; more are closed at once.
    pub max_connections: usize,
    /// RocketMQ requests one client id may have in progress at once; more get
    /// TOO_MANY_REQUESTS.
    pub max_inflight_per_client: usize,
    /// Message bytes being stored at once (all senders); sends beyond it get
    /// TOO_MANY_REQUESTS, which bounds memory under a flood.
    pub max_inflight_bytes: usize,
    /// Topics at most (dead-letter topics included); creating more is refused (FORBIDDEN).
    pub max_topics: usize,
    /// Consumer groups at most; a receive that would create one more is refused (FORBIDDEN).
    pub max_groups: usize,
    /// How long a check-back may go unanswered before its stream counts as silent and the
    /// next check goes to another producer.
    pub txn_check_timeout: Duration,
    /// How long a pending transaction may find no producer to check with before the
    /// max-checks policy applies to it.
    pub txn_unreachable_max_age: Duration,
    /// HTTP/2 ping interval on every client connection.
    pub keepalive_interval: Duration,
    /// A connection whose ping is not answered within this is closed.
    pub keepalive_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            advertise: None,
            data_dir: PathBuf::from("./txmq-data"),
            auto_create_topics: true,
            default_queue_count: 8,
            max_body_size: 4 * 1024 * 1024 - 64 * 1024,
            max_delay: Duration::from_secs(24 * 3600),
            writer_queue: 4096,
            long_polling_max: Duration::from_secs(20),
            max_delivery_attempts: 17,
            new_group_start: StartAt::Earliest,
            retention: Duration::from_secs(72 * 3600),
            retention_interval: Duration::from_secs(60),
            max_long_polls: 1024,
            min_invisible: Duration::from_secs(1),
            txn_timeout: Duration::from_secs(6),
            txn_check_interval: Duration::from_secs(30),
            txn_max_checks: 15,
            txn_max_checks_policy: MaxChecksPolicy::Rollback,
            txn_retention: Duration::from_secs(72 * 3600),
            metrics_listen: None,
            max_connections: 10_000,
            max_inflight_per_client: 1024,
            max_inflight_bytes: 256 * 1024 * 1024,
            max_topics: 10_000,
            max_groups: 10_000,
            txn_check_timeout: Duration::from_secs(10),
            txn_unreachable_max_age: Duration::from_secs(3600),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Defaults with the store in `data_dir`.
    pub fn with_data_dir(data_dir: impl AsRef<Path>) -> Self {
        Self { data_dir: data_dir.as_ref().to_path_buf(), ..Self::default() }
    }
}

/// Command-line flags of `txmq-broker`; each also reads a `TXMQ_*` environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "txmq-broker",
    version,
    about = "txmq: a transactional message broker speaking the RocketMQ 5 gRPC protocol"
)]
pub struct Args {
    /// TOML file with the same keys as the flags (for example `data-dir = "/var/lib/txmq"`).
    #[arg(long, env = "TXMQ_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to bind [default: 127.0.0.1:8081].
    #[arg(long, env = "TXMQ_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// host:port returned in routes [default: the listen address].
    #[arg(long, env = "TXMQ_ADVERTISE")]
    pub advertise: Option<String>,
    /// Data directory [default: ./txmq-data].
    #[arg(long, env = "TXMQ_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Create unknown topics (as MIXED) on first route or send [default: true].
    #[arg(long, env = "TXMQ_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Queues per topic when not given [default: 8].
    #[arg(long, env = "TXMQ_DEFAULT_QUEUE_COUNT")]
    pub default_queue_count: Option<u32>,
    /// Largest message body in bytes [default: 4128768 = 4 MiB - 64 KiB].
    #[arg(long, env = "TXMQ_MAX_BODY_SIZE")]
    pub max_body_size: Option<usize>,
    /// Longest delay of a delay message [default: 24h].
    #[arg(long, env = "TXMQ_MAX_DELAY")]
    pub max_delay: Option<HumanDuration>,
    /// Deliveries of a message to a group before it moves to `%DLQ%<group>` [default: 17].
    #[arg(long, env = "TXMQ_MAX_DELIVERY_ATTEMPTS")]
    pub max_delivery_attempts: Option<u32>,
    /// Where a new consumer group starts: earliest or latest [default: earliest].
    #[arg(long, env = "TXMQ_NEW_GROUP_START")]
    pub new_group_start: Option<StartAt>,
    /// Delete messages older than this [default: 72h].
    #[arg(long, env = "TXMQ_RETENTION")]
    pub retention: Option<HumanDuration>,
    /// Longest a ReceiveMessage long poll waits [default: 20s].
    #[arg(long, env = "TXMQ_LONG_POLLING_MAX")]
    pub long_polling_max: Option<HumanDuration>,
    /// Age of a pending transaction at its first check-back [default: 6s].
    #[arg(long, env = "TXMQ_TXN_TIMEOUT")]
    pub txn_timeout: Option<HumanDuration>,
    /// Time between check-backs [default: 30s].
    #[arg(long, env = "TXMQ_TXN_CHECK_INTERVAL")]
    pub txn_check_interval: Option<HumanDuration>,
    /// Check-backs before the policy applies [default: 15].
    #[arg(long, env = "TXMQ_TXN_MAX_CHECKS")]
    pub txn_max_checks: Option<u32>,
    /// After the last check: rollback or park [default: rollback].
    #[arg(long, env = "TXMQ_TXN_MAX_CHECKS_POLICY")]
    pub txn_max_checks_policy: Option<MaxChecksPolicy>,
    /// Keep resolved transactions this long [default: 72h].
    #[arg(long, env = "TXMQ_TXN_RETENTION")]
    pub txn_retention: Option<HumanDuration>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long, env = "TXMQ_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Most open client connections [default: 10000].
    #[arg(long, env = "TXMQ_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Message bytes being stored at once, all senders together; sends beyond it get
    /// TOO_MANY_REQUESTS [default: 268435456 = 256 MiB].
    #[arg(long, env = "TXMQ_MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<usize>,
    /// Most topics, dead-letter topics included [default: 10000].
    #[arg(long, env = "TXMQ_MAX_TOPICS")]
    pub max_topics: Option<usize>,
    /// Most consumer groups [default: 10000].
    #[arg(long, env = "TXMQ_MAX_GROUPS")]
    pub max_groups: Option<usize>,
    /// A check-back unanswered this long marks its stream silent; the next check goes to
    /// another producer [default: 10s].
    #[arg(long, env = "TXMQ_TXN_CHECK_TIMEOUT")]
    pub txn_check_timeout: Option<HumanDuration>,
    /// A pending transaction with no reachable producer for this long gets the max-checks
    /// policy [default: 1h].
    #[arg(long, env = "TXMQ_TXN_UNREACHABLE_MAX_AGE")]
    pub txn_unreachable_max_age: Option<HumanDuration>,
}

/// The TOML file: the same keys as the flags, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    auto_create_topics: Option<bool>,
    default_queue_count: Option<u32>,
    max_body_size: Option<usize>,
    max_delay: Option<HumanDuration>,
    max_delivery_attempts: Option<u32>,
    new_group_start: Option<String>,
    retention: Option<HumanDuration>,
    long_polling_max: Option<HumanDuration>,
    txn_timeout: Option<HumanDuration>,
    txn_check_interval: Option<HumanDuration>,
    txn_max_checks: Option<u32>,
    txn_max_checks_policy: Option<String>,
    txn_retention: Option<HumanDuration>,
    metrics_listen: Option<SocketAddr>,
    max_connections: Option<usize>,
    max_inflight_bytes: Option<usize>,
    max_topics: Option<usize>,
    max_groups: Option<usize>,
    txn_check_timeout: Option<HumanDuration>,
    txn_unreachable_max_age: Option<HumanDuration>,
}

impl Args {
    /// Resolves defaults, the config file, the environment and the flags into a [`Config`].
    pub fn resolve(self) -> Result<Config, String> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| format!("invalid config file {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        let config = Config {
            listen: self.listen.or(file.listen).unwrap_or(d.listen),
            advertise: self.advertise.or(file.advertise).or(d.advertise),
            data_dir: self.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            auto_create_topics: self.auto_create_topics.or(file.auto_create_topics).unwrap_or(d.auto_create_topics),
            default_queue_count: self.default_queue_count.or(file.default_queue_count).unwrap_or(d.default_queue_count),
            max_body_size: self.max_body_size.or(file.max_body_size).unwrap_or(d.max_body_size),
            max_delay: self.max_delay.or(file.max_delay).map(|h| h.0).unwrap_or(d.max_delay),
            writer_queue: d.writer_queue,
            long_polling_max: self
                .long_polling_max
                .or(file.long_polling_max)
                .map(|h| h.0)
                .unwrap_or(d.long_polling_max),
            max_delivery_attempts: self
                .max_delivery_attempts
                .or(file.max_delivery_attempts)
                .unwrap_or(d.max_delivery_attempts),
            new_group_start: match (self.new_group_start, file.new_group_start) {
                (Some(s), _) => s,
                (None, Some(f)) => f.parse()?,
                (None, None) => d.new_group_start,
            },
            retention: self.retention.or(file.retention).map(|h| h.0).unwrap_or(d.retention),
            retention_interval: d.retention_interval,
            max_long_polls: d.max_long_polls,
            min_invisible: d.min_invisible,
            txn_timeout: self.txn_timeout.or(file.txn_timeout).map(|h| h.0).unwrap_or(d.txn_timeout),
            txn_check_interval: self
                .txn_check_interval
                .or(file.txn_check_interval)
                .map(|h| h.0)
                .unwrap_or(d.txn_check_interval),
            txn_max_checks: self.txn_max_checks.or(file.txn_max_checks).unwrap_or(d.txn_max_checks),
            txn_max_checks_policy: match (self.txn_max_checks_policy, file.txn_max_checks_policy) {
                (Some(p), _) => p,
                (None, Some(f)) => f.parse()?,
                (None, None) => d.txn_max_checks_policy,
            },
            txn_retention: self.txn_retention.or(file.txn_retention).map(|h| h.0).unwrap_or(d.txn_retention),
            metrics_listen: self.metrics_listen.or(file.metrics_listen).or(d.metrics_listen),
            max_connections: self.max_connections.or(file.max_connections).unwrap_or(d.max_connections),
            max_inflight_per_client: d.max_inflight_per_client,
            max_inflight_bytes: self.max_inflight_bytes.or(file.max_inflight_bytes).unwrap_or(d.max_inflight_bytes),
            max_topics: self.max_topics.or(file.max_topics).unwrap_or(d.max_topics),
            max_groups: self.max_groups.or(file.max_groups).unwrap_or(d.max_groups),
            txn_check_timeout: self
                .txn_check_timeout
                .or(file.txn_check_timeout)
                .map(|h| h.0)
                .unwrap_or(d.txn_check_timeout),
            txn_unreachable_max_age: self
                .txn_unreachable_max_age
                .or(file.txn_unreachable_max_age)
                .map(|h| h.0)
                .unwrap_or(d.txn_unreachable_max_age),
            keepalive_interval: d.keepalive_interval,
            keepalive_timeout: d.keepalive_timeout,
        };
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Rejects values the broker cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=1024).contains(&self.default_queue_count) {
            return Err("default-queue-count must be between 1 and 1024".into());
        }
        let rust_client_limit = 4 * 1024 * 1024 - 16 * 1024;
        if self.max_body_size == 0 || self.max_body_size > rust_client_limit {
            return Err(format!("max-body-size must be between 1 and {rust_client_limit} bytes"));
        }
        if self.txn_timeout > Duration::from_secs(3600) {
            return Err("txn-timeout must be at most 1h".into());
        }
        if self.txn_check_interval.is_zero() {
            return Err("txn-check-interval must be positive".into());
        }
        if self.txn_check_timeout.is_zero() {
            return Err("txn-check-timeout must be positive".into());
        }
        if self.max_topics == 0 || self.max_groups == 0 {
            return Err("max-topics and max-groups must be at least 1".into());
        }
        if self.max_delivery_attempts == 0 {
            return Err("max-delivery-attempts must be at least 1".into());
        }
        if self.long_polling_max > Duration::from_secs(30) {
            return Err("long-polling-max must be at most 30s (the Rust client's deadline is 40s)".into());
        }
        if let Some(a) = &self.advertise {
            crate::grpc::route::parse_host_port(a).map_err(|e| format!("invalid advertise address: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_the_docs_say() {
        assert_eq!("500ms".parse::<HumanDuration>().unwrap().0, Duration::from_millis(500));
        assert_eq!("5m".parse::<HumanDuration>().unwrap().0, Duration::from_secs(300));
        assert!("5 parsecs".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("txmq.toml");
        std::fs::write(&path, "data-dir = \"/from/file\"\nmax-delay = \"2h\"\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let args = Args::parse_from(["txmq-broker", "--config", path.to_str().unwrap(), "--listen", "127.0.0.1:9100"]);
        let c = args.resolve().unwrap();
        assert_eq!(c.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.max_delay, Duration::from_secs(7200));
        assert!(c.auto_create_topics);
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("txmq.toml");
        std::fs::write(&path, "data_dirr = \"x\"\n").unwrap();
        let err = Args::parse_from(["txmq-broker", "--config", path.to_str().unwrap()]).resolve().unwrap_err();
        assert!(err.contains("data_dirr"), "{err}");
    }
}
