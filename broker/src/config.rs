//! Broker configuration: every option declared once (in the `options!` block below), from which come
//! the [`Config`] struct and its defaults, the command-line flags and their `TXMQ_*`
//! environment variables, the TOML file keys, and the table in README.md (a test keeps the
//! README in step with `--help`).
//!
//! Precedence, lowest first: built-in defaults, the `--config` TOML file, environment
//! variables, command-line flags. TOML keys are the flag names (`data-dir = "/var/lib/txmq"`).
//! Durations are written like `500ms`, `6s`, `5m`, `72h`.

use crate::consume::StartAt;
use crate::tls::TlsMode;
use crate::txn::service::MaxChecksPolicy;
use clap::Parser;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An optional value: `off` (or empty) on the command line or in the file means none.
pub type Maybe<T> = Option<T>;

/// How an option's value is read from a flag, an environment variable or the TOML file, and
/// shown as a default.
pub trait Value: Sized + Clone + Send + Sync + 'static {
    fn parse_arg(s: &str) -> Result<Self, String>;
    fn show(&self) -> String;
    /// The value of the flag given bare (`--auth` for `--auth true`); `None`: a value is needed.
    fn bare() -> Option<&'static str> {
        None
    }
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::String(s) => Self::parse_arg(s),
            toml::Value::Integer(i) => Self::parse_arg(&i.to_string()),
            toml::Value::Boolean(b) => Self::parse_arg(&b.to_string()),
            other => Err(format!("unexpected {}", other.type_str())),
        }
    }
}

macro_rules! from_str_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn parse_arg(s: &str) -> Result<Self, String> {
                s.trim().parse::<$t>().map_err(|e| format!("invalid value {s:?}: {e}"))
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
from_str_value!(SocketAddr, String, u8, u32, u64, usize);

impl Value for bool {
    fn parse_arg(s: &str) -> Result<Self, String> {
        s.trim().parse::<bool>().map_err(|e| format!("invalid value {s:?}: {e}"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
    fn bare() -> Option<&'static str> {
        Some("true")
    }
}

impl Value for PathBuf {
    fn parse_arg(s: &str) -> Result<Self, String> {
        Ok(PathBuf::from(s))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl Value for Duration {
    fn parse_arg(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map_err(|e| format!("invalid duration {s:?} ({e}); write it like 500ms, 6s, 5m"))
    }
    fn show(&self) -> String {
        let (secs, ms) = (self.as_secs(), self.subsec_millis());
        match (secs, ms) {
            (s, 0) if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
            (s, 0) if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
            (s, 0) => format!("{s}s"),
            _ => format!("{}ms", self.as_millis()),
        }
    }
}

/// Options whose value is one of a few words: each word is written once, here.
macro_rules! word_values {
    ($($t:ident { $($variant:ident => $word:literal),+ $(,)? })*) => {$(
        impl Value for $t {
            fn parse_arg(s: &str) -> Result<Self, String> {
                match s.trim() {
                    $($word => Ok($t::$variant),)+
                    other => Err(format!("{other:?} is not {}", [$($word),+].join(" or "))),
                }
            }
            fn show(&self) -> String {
                match self {
                    $($t::$variant => $word,)+
                }
                .into()
            }
        }
    )*};
}

word_values! {
    StartAt { Earliest => "earliest", Latest => "latest" }
    MaxChecksPolicy { Rollback => "rollback", Park => "park" }
    TlsMode { Permissive => "permissive", Required => "required" }
}

impl<T: Value> Value for Option<T> {
    fn parse_arg(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" | "off" => Ok(None),
            v => T::parse_arg(v).map(Some),
        }
    }
    fn show(&self) -> String {
        self.as_ref().map_or_else(|| "off".to_string(), T::show)
    }
}

/// One option, as documented (README, `--help`).
#[derive(Debug, Clone)]
pub struct OptionDoc {
    pub flag: &'static str,
    pub env: &'static str,
    pub default: String,
    pub doc: String,
}

/// The options table of README.md, generated from the declarations (a test keeps them equal).
pub fn readme_table() -> String {
    let mut out = String::from("| flag | env | default | meaning |\n|---|---|---|---|\n");
    for o in options() {
        let default = if o.default.contains(' ') { o.default.clone() } else { format!("`{}`", o.default) };
        out.push_str(&format!("| `--{}` | `{}` | {default} | {} |\n", o.flag, o.env, o.doc));
    }
    out
}

fn help(doc: &str, default: String) -> String {
    format!("{} [default: {default}]", doc.trim())
}

/// Declares every option once: `/// doc` then `name: Type = default, "flag", "TXMQ_ENV";`
/// (optionally `shown "text"` for a default that is better said in words).
macro_rules! options {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident : $ty:ty = $default:expr, $flag:literal, $env:literal $(, shown $shown:literal)?;
    )*) => {
        /// Everything the broker needs to run. `Config::default()` is the documented default set.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Self { $( $name: $default, )* }
            }
        }

        /// Command-line flags of `txmq-broker`; each also reads its `TXMQ_*` environment variable.
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
            $(
                #[arg(long = $flag, env = $env, value_parser = <$ty as Value>::parse_arg,
                      num_args = if <$ty as Value>::bare().is_some() { 0..=1 } else { 1..=1 },
                      default_missing_value = <$ty as Value>::bare(),
                      help = help(concat!($($doc),+), options!(@shown Config::default().$name $(, $shown)?)))]
                pub $name: Option<$ty>,
            )*
        }

        /// Every option with its flag, variable, default and meaning, in declaration order.
        pub fn options() -> Vec<OptionDoc> {
            let d = Config::default();
            vec![$(
                OptionDoc {
                    flag: $flag,
                    env: $env,
                    default: options!(@shown d.$name $(, $shown)?),
                    doc: concat!($($doc),+).trim().to_string(),
                },
            )*]
        }

        impl Args {
            /// Resolves defaults, the config file, the environment and the flags into a [`Config`].
            pub fn resolve(self) -> Result<Config, String> {
                let file: toml::Table = match &self.config {
                    Some(path) => {
                        let text = std::fs::read_to_string(path)
                            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                        text.parse().map_err(|e| format!("invalid config file {}: {e}", path.display()))?
                    }
                    None => toml::Table::new(),
                };
                let known = [$($flag),*];
                if let Some(unknown) = file.keys().find(|k| !known.contains(&k.as_str())) {
                    return Err(format!("unknown key {unknown:?} in the config file"));
                }
                let d = Config::default();
                let config = Config {
                    $( $name: match (self.$name, file.get($flag)) {
                        (Some(v), _) => v,
                        (None, Some(v)) => <$ty as Value>::from_toml(v).map_err(|e| format!("config file key {}: {e}", $flag))?,
                        (None, None) => d.$name,
                    }, )*
                };
                config.validate()?;
                Ok(config)
            }
        }
    };
    (@shown $value:expr) => { Value::show(&$value) };
    (@shown $value:expr, $shown:literal) => { $shown.to_string() };
}

options! {
    /// Address the gRPC server binds (RocketMQ and admin services).
    listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8081)), "listen", "TXMQ_LISTEN";
    /// `host:port` that routes tell clients to dial.
    advertise: Maybe<String> = None, "advertise", "TXMQ_ADVERTISE", shown "the listen address";
    /// etcd endpoints (comma-separated URLs): join the cluster they coordinate; without, the broker runs standalone.
    etcd: Maybe<String> = None, "etcd", "TXMQ_ETCD", shown "off (standalone)";
    /// This node's id in the cluster (letters, digits, '_', '-'); required with --etcd, and bound to the data directory.
    node_id: Maybe<String> = None, "node-id", "TXMQ_NODE_ID", shown "none";
    /// Key prefix of this cluster in etcd, so several clusters can share one etcd.
    etcd_prefix: String = "/txmq".to_string(), "etcd-prefix", "TXMQ_ETCD_PREFIX";
    /// In a cluster: copies of this node's store, its own included (1: none; needs that many nodes).
    replicas: usize = 1, "replicas", "TXMQ_REPLICAS";
    /// In a cluster with replicas: copies a write must be on before it is acknowledged; writes are refused with fewer in sync (0: the lesser of 2 and --replicas).
    min_insync_replicas: usize = 0, "min-insync-replicas", "TXMQ_MIN_INSYNC_REPLICAS", shown "min(2, replicas)";
    /// How long a write waits for an in-sync replica before that replica leaves the in-sync set (one whose stream broke, dead or frozen, is not waited for).
    replica_ack_timeout: Duration = Duration::from_secs(3), "replica-ack-timeout", "TXMQ_REPLICA_ACK_TIMEOUT";
    /// Bytes of recent writes kept for replicas catching up; one further behind gets a snapshot.
    replication_log_bytes: usize = 64 * 1024 * 1024, "replication-log-bytes", "TXMQ_REPLICATION_LOG_BYTES";
    /// How long a follower may be gone before its copy is made on another live node (a drained follower's at once; 0: never).
    replica_replace_after: Duration = Duration::from_secs(600), "replica-replace-after", "TXMQ_REPLICA_REPLACE_AFTER";
    /// Time-to-live of this node's etcd lease: a node that stops renewing it leaves the cluster this long after.
    etcd_lease_ttl: Duration = Duration::from_secs(10), "etcd-lease-ttl", "TXMQ_ETCD_LEASE_TTL";
    /// Directory of the store (sled's database, the journal, the index files).
    data_dir: PathBuf = PathBuf::from("./txmq-data"), "data-dir", "TXMQ_DATA_DIR";
    /// A new store keeps message bodies in a value log beside sled: 38% fewer bytes written per message and a faster restart, but fewer batched sends per second (docs/storage.md). Fixed when the store is created.
    value_log: bool = false, "value-log", "TXMQ_VALUE_LOG";
    /// A new store writes each message once, in a journal, and finds it through per-queue index files; the records looked up by key (message ids, transactions and half messages, cursors, deliveries in flight) go to sorted runs; sled keeps the configuration and the transactions' due index (docs/storage.md, "Building the store"). `false`: everything in sled, as stores before 2026-12-04. Fixed when the store is created; --value-log true takes precedence.
    message_files: bool = true, "message-files", "TXMQ_MESSAGE_FILES";
    /// Version of the message records written: 4 (compact, since 2026-12-05) or 3, which brokers of before read too — for a cluster upgraded node by node, until every node runs this version (docs/replication.md). A store with version-4 records is refused by brokers of before.
    message_record_version: u8 = 4, "message-record-version", "TXMQ_MESSAGE_RECORD_VERSION";
    /// Create unknown topics (as MIXED) on first route or send; otherwise answer TOPIC_NOT_FOUND.
    auto_create_topics: bool = true, "auto-create-topics", "TXMQ_AUTO_CREATE_TOPICS";
    /// Queues of a topic created without an explicit count.
    default_queue_count: u32 = 8, "default-queue-count", "TXMQ_DEFAULT_QUEUE_COUNT";
    /// Largest message body in bytes, below the Rust client's 4 MiB receive limit.
    max_body_size: usize = 4 * 1024 * 1024 - 64 * 1024, "max-body-size", "TXMQ_MAX_BODY_SIZE";
    /// Furthest a delay message may be scheduled into the future.
    max_delay: Duration = Duration::from_secs(24 * 3600), "max-delay", "TXMQ_MAX_DELAY";
    /// Writes that may wait for the group-commit writer before senders are slowed down.
    writer_queue: usize = 4096, "writer-queue", "TXMQ_WRITER_QUEUE";
    /// Longest a ReceiveMessage long poll is held (the Rust client gives up at 40 s).
    long_polling_max: Duration = Duration::from_secs(20), "long-polling-max", "TXMQ_LONG_POLLING_MAX";
    /// Deliveries of one message to one group before it moves to `%DLQ%<group>`.
    max_delivery_attempts: u32 = 17, "max-delivery-attempts", "TXMQ_MAX_DELIVERY_ATTEMPTS";
    /// Where a new consumer group starts on a topic: `earliest` or `latest`.
    new_group_start: StartAt = StartAt::Earliest, "new-group-start", "TXMQ_NEW_GROUP_START";
    /// Messages older than this are deleted, consumed or not.
    retention: Duration = Duration::from_secs(72 * 3600), "retention", "TXMQ_RETENTION";
    /// How often retention and the purge of resolved transactions run.
    retention_interval: Duration = Duration::from_secs(60), "retention-interval", "TXMQ_RETENTION_INTERVAL";
    /// ReceiveMessage calls that may wait at once; more get TOO_MANY_REQUESTS.
    max_long_polls: usize = 1024, "max-long-polls", "TXMQ_MAX_LONG_POLLS";
    /// Shortest invisible duration a receive may ask for.
    min_invisible: Duration = Duration::from_secs(1), "min-invisible", "TXMQ_MIN_INVISIBLE";
    /// Age of an undecided transaction at its first check-back (unless the message sets its own).
    txn_timeout: Duration = Duration::from_secs(6), "txn-timeout", "TXMQ_TXN_TIMEOUT";
    /// Time between check-backs of a pending transaction.
    txn_check_interval: Duration = Duration::from_secs(30), "txn-check-interval", "TXMQ_TXN_CHECK_INTERVAL";
    /// Check-backs before the max-checks policy applies.
    txn_max_checks: u32 = 15, "txn-max-checks", "TXMQ_TXN_MAX_CHECKS";
    /// After the last check: `rollback`, or `park` for an operator.
    txn_max_checks_policy: MaxChecksPolicy = MaxChecksPolicy::Rollback, "txn-max-checks-policy", "TXMQ_TXN_MAX_CHECKS_POLICY";
    /// How long resolved transactions (and their timelines) are kept.
    txn_retention: Duration = Duration::from_secs(72 * 3600), "txn-retention", "TXMQ_TXN_RETENTION";
    /// A check-back unanswered this long marks its stream silent; the next check goes to another producer first.
    txn_check_timeout: Duration = Duration::from_secs(10), "txn-check-timeout", "TXMQ_TXN_CHECK_TIMEOUT";
    /// A transaction whose checks found no live producer for this long gets the max-checks policy (retries back off from 1 s to the check interval).
    txn_unreachable_max_age: Duration = Duration::from_secs(3600), "txn-unreachable-max-age", "TXMQ_TXN_UNREACHABLE_MAX_AGE";
    /// Address of the Prometheus endpoint (`GET /metrics`).
    metrics_listen: Maybe<SocketAddr> = None, "metrics-listen", "TXMQ_METRICS_LISTEN";
    /// Open client connections at most; more are closed at once.
    max_connections: usize = 10_000, "max-connections", "TXMQ_MAX_CONNECTIONS";
    /// A new connection that has not finished its TLS handshake and sent the HTTP/2 preface this long after it was accepted is closed.
    handshake_timeout: Duration = Duration::from_secs(10), "handshake-timeout", "TXMQ_HANDSHAKE_TIMEOUT";
    /// RocketMQ requests one client id may have in progress at once; more get TOO_MANY_REQUESTS.
    max_inflight_per_client: usize = 1024, "max-inflight-per-client", "TXMQ_MAX_INFLIGHT_PER_CLIENT";
    /// Message bytes being stored at once, all senders together; sends beyond it get TOO_MANY_REQUESTS.
    max_inflight_bytes: usize = 256 * 1024 * 1024, "max-inflight-bytes", "TXMQ_MAX_INFLIGHT_BYTES";
    /// New messages (sends, half messages, dead letters resent) and copies of other nodes' shards (--replicas) are refused while the data directory's disk has less free than this; acks, transaction decisions and deletes go on (0: no check).
    min_free_disk_bytes: u64 = 1024 * 1024 * 1024, "min-free-disk-bytes", "TXMQ_MIN_FREE_DISK_BYTES";
    /// Topics at most, dead-letter topics included; more are refused (FORBIDDEN).
    max_topics: usize = 10_000, "max-topics", "TXMQ_MAX_TOPICS";
    /// Consumer groups at most; a receive that would create one more is refused (FORBIDDEN).
    max_groups: usize = 10_000, "max-groups", "TXMQ_MAX_GROUPS";
    /// Lite topics at most in one LITE topic; a message to one more is refused (LITE_TOPIC_QUOTA_EXCEEDED).
    max_lite_topics: usize = 1_000_000, "max-lite-topics", "TXMQ_MAX_LITE_TOPICS";
    /// Lite subscriptions at most (each lite topic a consumer subscribes to counts once); more are refused (LITE_SUBSCRIPTION_QUOTA_EXCEEDED).
    max_lite_subscriptions: usize = 1_000_000, "max-lite-subscriptions", "TXMQ_MAX_LITE_SUBSCRIPTIONS";
    /// A lite topic has one subscriber per consumer group: a new subscriber takes it over and the previous one gets NotifyUnsubscribeLiteCommand.
    lite_exclusive: bool = false, "lite-exclusive", "TXMQ_LITE_EXCLUSIVE";
    /// HTTP/2 ping interval on every client connection.
    keepalive_interval: Duration = Duration::from_secs(10), "keepalive-interval", "TXMQ_KEEPALIVE_INTERVAL";
    /// A connection whose ping is not answered within this is closed (with its Telemetry streams).
    keepalive_timeout: Duration = Duration::from_secs(10), "keepalive-timeout", "TXMQ_KEEPALIVE_TIMEOUT";
    /// Require signed requests (the RocketMQ clients' access key and secret) and check each
    /// caller's access policy (`txmq user`, `txmq acl`).
    auth: bool = false, "auth", "TXMQ_AUTH";
    /// How far a request's signed date may be from the broker's clock (0s: not checked).
    auth_max_skew: Duration = Duration::from_secs(15 * 60), "auth-max-skew", "TXMQ_AUTH_MAX_SKEW";
    /// On a store without users, create this super user; its secret is read from the
    /// `TXMQ_AUTH_INIT_SECRET` environment variable (never a flag).
    auth_init_user: Maybe<String> = None, "auth-init-user", "TXMQ_AUTH_INIT_USER", shown "none";
    /// File whose contents seal user secrets at rest (at least 16 random bytes).
    auth_key_file: Maybe<PathBuf> = None, "auth-key-file", "TXMQ_AUTH_KEY_FILE", shown "none: secrets unsealed";
    /// TLS certificate chain (PEM) of the gRPC port; read again on SIGHUP.
    tls_cert: Maybe<PathBuf> = None, "tls-cert", "TXMQ_TLS_CERT", shown "none: plaintext only";
    /// Private key (PEM) of `--tls-cert`.
    tls_key: Maybe<PathBuf> = None, "tls-key", "TXMQ_TLS_KEY", shown "none";
    /// With a certificate: `permissive` takes TLS and plaintext on the one port, `required`
    /// closes plaintext connections.
    tls_mode: TlsMode = TlsMode::Permissive, "tls-mode", "TXMQ_TLS_MODE";
    /// CA certificates (PEM) of client certificates (mutual TLS): a client presenting one is
    /// the user named by its subject's common name, without signing its requests.
    tls_client_ca: Maybe<PathBuf> = None, "tls-client-ca", "TXMQ_TLS_CLIENT_CA", shown "none";
    /// In a cluster: a file of at least 16 random bytes, the same on every node; nodes sign
    /// every request they pass each other with it and refuse unsigned ones (needed with `--auth`).
    cluster_key_file: Maybe<PathBuf> = None, "cluster-key-file", "TXMQ_CLUSTER_KEY_FILE", shown "none: nodes trust the network";
    /// In a cluster with TLS: the CA (PEM) the other nodes' certificates chain to, for dialing them over TLS.
    tls_peer_ca: Maybe<PathBuf> = None, "tls-peer-ca", "TXMQ_TLS_PEER_CA", shown "system roots";
}

impl Config {
    /// Defaults with the store in `data_dir`.
    pub fn with_data_dir(data_dir: impl AsRef<Path>) -> Self {
        Self { data_dir: data_dir.as_ref().to_path_buf(), ..Self::default() }
    }
}

impl Config {
    /// How this node joins its cluster (`None` standalone): reads the cluster key file and the
    /// peers' CA. `address` is what peers dial; `acting_on` the node serving this shard from a
    /// copy, for a broker started by a failover.
    pub fn cluster_settings(
        &self,
        address: String,
        acting_on: Option<String>,
    ) -> Result<Option<crate::cluster::ClusterSettings>, String> {
        let (Some(etcd), Some(node_id)) = (&self.etcd, &self.node_id) else { return Ok(None) };
        let key = match &self.cluster_key_file {
            Some(path) => {
                Some(std::sync::Arc::new(crate::cluster::peer::NodeKey::from_file(path).map_err(|e| e.to_string())?))
            }
            None => None,
        };
        let tls = match (&self.tls_cert, &self.tls_peer_ca) {
            (None, _) => None,
            (Some(_), None) => Some(None),
            (Some(_), Some(ca)) => {
                Some(Some(std::fs::read(ca).map_err(|e| format!("cannot read tls-peer-ca {}: {e}", ca.display()))?))
            }
        };
        Ok(Some(crate::cluster::ClusterSettings {
            endpoints: crate::cluster::endpoints(etcd)?,
            node_id: node_id.clone(),
            address,
            prefix: self.etcd_prefix.clone(),
            lease_ttl: self.etcd_lease_ttl,
            peer: crate::cluster::peer::PeerSettings { key, tls },
            acting_on,
        }))
    }
}

/// Splits `host:port` (IPv6 as `[::1]:8081`).
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not host:port"))?;
    let port: u16 = port.parse().map_err(|_| format!("invalid port in {s:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("empty host in {s:?}"));
    }
    Ok((host.to_string(), port))
}

impl Config {
    /// Rejects values the broker cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        if !(3..=4).contains(&self.message_record_version) {
            return Err("message-record-version must be 3 or 4".into());
        }
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
        if self.max_topics == 0 || self.max_groups == 0 || self.max_lite_topics == 0 || self.max_lite_subscriptions == 0
        {
            return Err("max-topics, max-groups, max-lite-topics and max-lite-subscriptions must be at least 1".into());
        }
        if self.max_delivery_attempts == 0 {
            return Err("max-delivery-attempts must be at least 1".into());
        }
        if self.long_polling_max > Duration::from_secs(30) {
            return Err("long-polling-max must be at most 30s (the Rust client's deadline is 40s)".into());
        }
        if let Some(a) = &self.advertise {
            parse_host_port(a).map_err(|e| format!("invalid advertise address: {e}"))?;
        }
        if let Some(e) = &self.etcd {
            crate::cluster::endpoints(e)?;
            let id = self.node_id.as_deref().ok_or("--etcd needs --node-id")?;
            crate::cluster::validate_node_id(id)?;
            if self.etcd_lease_ttl < Duration::from_secs(2) {
                return Err("etcd-lease-ttl must be at least 2s".into());
            }
            if !self.etcd_prefix.starts_with('/') || self.etcd_prefix.ends_with('/') {
                return Err("etcd-prefix must start with '/' and not end with one".into());
            }
            if self.auth && self.cluster_key_file.is_none() {
                return Err("--auth with --etcd needs --cluster-key-file: the nodes sign what they pass each other \
                    with it (the same file on every node)"
                    .into());
            }
            if self.replicas == 0 || self.replicas > 7 {
                return Err("replicas must be between 1 and 7".into());
            }
            if self.min_insync_replicas > self.replicas {
                return Err("min-insync-replicas cannot exceed replicas".into());
            }
        } else if self.replicas != 1 {
            return Err("replicas are for a cluster (--etcd)".into());
        } else if self.cluster_key_file.is_some() || self.tls_peer_ca.is_some() {
            return Err("cluster-key-file and tls-peer-ca are for a cluster (--etcd)".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls-cert and tls-key go together".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err("tls-client-ca needs tls-cert and tls-key".into());
        }
        if self.tls_mode == TlsMode::Required && self.tls_cert.is_none() {
            return Err("tls-mode required needs tls-cert and tls-key".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_the_docs_say() {
        assert_eq!(Duration::parse_arg("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(Duration::parse_arg("5m").unwrap(), Duration::from_secs(300));
        assert!(Duration::parse_arg("5 parsecs").is_err());
        assert_eq!(Option::<SocketAddr>::parse_arg("off").unwrap(), None);
    }

    /// The README's options table is the one the declarations make, and `--help` names every
    /// option with its variable and default.
    #[test]
    fn readme_table_and_help_come_from_the_declarations() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let table = readme_table();
        assert!(readme.contains(&table), "README.md's options table differs; it should be:\n{table}");
        let help = <Args as clap::CommandFactory>::command().render_long_help().to_string();
        for o in options() {
            assert!(
                help.contains(&format!("--{} <", o.flag)) || help.contains(&format!("--{} [<", o.flag)),
                "--{} missing from --help",
                o.flag
            );
            assert!(help.contains(o.env), "{} missing from --help", o.env);
            assert!(help.contains(&format!("[default: {}]", o.default)), "default of --{} missing from --help", o.flag);
        }
    }

    #[test]
    fn message_records_are_written_in_version_3_or_4() {
        for (v, ok) in [("3", true), ("4", true), ("2", false), ("5", false)] {
            let r = Args::parse_from(["txmq-broker", "--message-record-version", v]).resolve();
            assert_eq!(r.is_ok(), ok, "{v}: {:?}", r.err());
        }
    }

    #[test]
    fn a_cluster_with_authentication_needs_a_cluster_key() {
        let base = ["txmq-broker", "--etcd", "http://127.0.0.1:2379", "--node-id", "n1"];
        assert!(Args::parse_from(base).resolve().is_ok());
        let err = Args::parse_from([&base[..], &["--auth"]].concat()).resolve().unwrap_err();
        assert!(err.contains("--cluster-key-file"), "{err}");
        let keyed = [&base[..], &["--auth", "--cluster-key-file", "/k"]].concat();
        assert!(Args::parse_from(keyed).resolve().is_ok());
        let err = Args::parse_from(["txmq-broker", "--cluster-key-file", "/k"]).resolve().unwrap_err();
        assert!(err.contains("for a cluster"), "{err}");
        assert!(Args::parse_from(["txmq-broker", "--etcd", "http://127.0.0.1:2379"]).resolve().is_err(), "needs an id");
    }

    #[test]
    fn the_file_takes_numbers_booleans_and_strings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("txmq.toml");
        std::fs::write(&path, "max-topics = 7\nauto-create-topics = false\nmetrics-listen = \"127.0.0.1:9999\"\n")
            .unwrap();
        let c = Args::parse_from(["txmq-broker", "--config", path.to_str().unwrap()]).resolve().unwrap();
        assert_eq!((c.max_topics, c.auto_create_topics), (7, false));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9999".parse().unwrap()));
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
    fn host_ports_parse() {
        assert_eq!(parse_host_port("127.0.0.1:8081").unwrap(), ("127.0.0.1".into(), 8081));
        assert_eq!(parse_host_port("[::1]:9").unwrap(), ("::1".into(), 9));
        assert!(parse_host_port("nohost").is_err());
        assert!(parse_host_port(":80").is_err());
    }

    #[test]
    fn boolean_flags_may_be_given_bare() {
        let c = Args::parse_from(["txmq-broker", "--auth", "--tls-mode", "permissive"]).resolve().unwrap();
        assert!(c.auth);
        let c = Args::parse_from(["txmq-broker", "--auth", "false", "--auto-create-topics=false"]).resolve().unwrap();
        assert!(!c.auth && !c.auto_create_topics);
        assert!(!Args::parse_from(["txmq-broker"]).resolve().unwrap().auth);
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
