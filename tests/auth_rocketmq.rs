//! Authentication and authorization against a broker run with `--auth`: the official Rust
//! client 5.0.0 with its own access-key signing, raw gRPC with the Python, Node and Java
//! header variants, and the CLI's user, acl and admin commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{quiet_logs, tags, txn_config, wait_state};
use rocketmq::conf::{ClientOption, ProducerOption, SimpleConsumerOption};
use rocketmq::model::message::MessageBuilder;
use rocketmq::model::transaction::{Transaction, TransactionResolution};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tonic::Request;
use txmq_broker::auth::header;
use txmq_broker::server::RunningBroker;
use txmq_proto::admin as pb;
use txmq_proto::v2;

const ROOT: &str = "root";
const ROOT_SECRET: &str = "root-secret-7f3a9c";

/// Everything the brokers of this file log, to look for secrets in.
fn log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info,txmq_broker=debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The certificates of this file's brokers; the official client trusts their CA through
/// `SSL_CERT_FILE` (process-wide, so one CA for every test here).
fn certs() -> &'static common::TestCerts {
    static CERTS: OnceLock<common::TestCerts> = OnceLock::new();
    CERTS.get_or_init(|| {
        let certs = common::TestCerts::new("auth");
        std::env::set_var("SSL_CERT_FILE", &certs.ca);
        certs
    })
}

/// A broker with authentication on, the super user `root`, TLS beside plaintext, and metrics.
async fn start_secured(dir: &std::path::Path) -> RunningBroker {
    log();
    let _ = common::ADMIN_AS.set(txmq_client::Credentials::new(ROOT, ROOT_SECRET));
    // The first super user's secret comes from the environment, as for an operator.
    std::env::set_var("TXMQ_AUTH_INIT_SECRET", ROOT_SECRET);
    let mut config = txn_config(dir);
    config.auth = true;
    config.auth_init_user = Some(ROOT.into());
    config.tls_cert = Some(certs().cert.clone());
    config.tls_key = Some(certs().key.clone());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    common::start(config).await
}

fn signed<T>(message: T, authorization: &str, date: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert("authorization", authorization.parse().unwrap());
    r.metadata_mut().insert("x-mq-date-time", date.parse().unwrap());
    r.metadata_mut().insert("x-mq-client-id", "raw-client".parse().unwrap());
    r
}

/// An admin client signing as `root`.
async fn root_admin(broker: &RunningBroker) -> common::Admin {
    common::admin_with(broker, Some(txmq_client::Credentials::new(ROOT, ROOT_SECRET))).await
}

async fn create_user(broker: &RunningBroker, name: &str, secret: &str, grants: &[(&str, &str)]) {
    let mut admin = root_admin(broker).await;
    let r = admin
        .create_user(pb::CreateUserRequest { name: name.into(), secret: secret.into(), r#type: "normal".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
    for (resource, actions) in grants {
        let entry =
            pb::AclEntry { resource: resource.to_string(), actions: actions.to_string(), allow: true, sources: vec![] };
        let r =
            admin.grant_acl(pb::GrantAclRequest { user: name.into(), entry: Some(entry) }).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
    }
}

/// The official client's options: signing with `ak`/`sk`, over TLS.
fn option(broker: &RunningBroker, ak: &str, sk: &str) -> ClientOption {
    let mut o = common::client_option(broker);
    o.set_access_key(ak);
    o.set_secret_key(sk);
    o.set_enable_tls(true);
    o
}

async fn producer_as(
    broker: &RunningBroker,
    ak: &str,
    sk: &str,
    topics: &[&str],
) -> Result<rocketmq::Producer, String> {
    let mut opt = ProducerOption::default();
    opt.set_logging_format(quiet_logs());
    opt.set_topics(topics.to_vec());
    let mut p = rocketmq::Producer::new(opt, option(broker, ak, sk)).unwrap();
    match tokio::time::timeout(Duration::from_secs(10), p.start()).await {
        Ok(Ok(())) => Ok(p),
        Ok(Err(e)) => Err(format!("{e:?}")),
        Err(_) => panic!("the producer neither started nor failed within 10 s"),
    }
}

async fn consumer_as(broker: &RunningBroker, ak: &str, sk: &str, group: &str, topic: &str) -> rocketmq::SimpleConsumer {
    let mut opt = SimpleConsumerOption::default();
    opt.set_logging_format(quiet_logs());
    opt.set_consumer_group(group);
    opt.set_topics(vec![topic]);
    let mut c = rocketmq::SimpleConsumer::new(opt, option(broker, ak, sk)).unwrap();
    c.start().await.expect("consumer starts");
    c
}

fn text(body: &str, topic: &str) -> impl rocketmq::model::message::Message {
    MessageBuilder::builder().set_topic(topic).set_body(body.as_bytes().to_vec()).build().unwrap()
}

fn half(body: &str, topic: &str) -> impl rocketmq::model::message::Message {
    MessageBuilder::transaction_message_builder(topic, body.as_bytes().to_vec()).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_rust_client_signs_in_and_its_policy_holds() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_secured(dir.path()).await;
    create_user(
        &broker,
        "orders-app",
        "orders-secret-1",
        &[("Topic:orders", "Pub,Sub"), ("Topic:payments", "Pub"), ("Group:inventory", "Sub")],
    )
    .await;
    create_user(&broker, "pub-only", "pub-only-secret-1", &[("Topic:orders", "Pub")]).await;

    // Correct keys: send, transactional send with commit, a check-back answered, receive.
    let p = producer_as(&broker, "orders-app", "orders-secret-1", &["orders"]).await.unwrap();
    p.send(text("plain", "orders")).await.expect("send with correct keys");
    let mut opt = ProducerOption::default();
    opt.set_logging_format(quiet_logs());
    opt.set_topics(vec!["orders"]);
    let checker = Box::new(|_: String, _: rocketmq::model::message::MessageView| TransactionResolution::COMMIT);
    let mut tp =
        rocketmq::Producer::new_transaction_producer(opt, option(&broker, "orders-app", "orders-secret-1"), checker)
            .unwrap();
    tp.start().await.expect("transaction producer starts");
    let committed = tp.send_transaction_message(half("committed", "orders")).await.unwrap();
    committed.commit().await.expect("commit with correct keys");
    let undecided = tp.send_transaction_message(half("checked", "orders")).await.unwrap();
    let undecided_id = undecided.transaction_id().to_string();
    drop(undecided); // left to the check-back, which goes to this producer's signed stream
    wait_state(&broker, &undecided_id, pb::TxnState::Committed).await;
    let c = consumer_as(&broker, "orders-app", "orders-secret-1", "inventory", "orders").await;
    let got = common::drain(&c, "orders", &tags("*"), 3, Duration::from_secs(6)).await;
    let mut bodies: Vec<_> = got.iter().map(|m| String::from_utf8_lossy(m.body()).into_owned()).collect();
    bodies.sort();
    assert_eq!(bodies, ["checked", "committed", "plain"]);

    // A wrong secret: the client gets an error, not a panic or a hang.
    let Err(e) = producer_as(&broker, "orders-app", "wrong-secret-1", &["orders"]).await else { panic!("refused") };
    assert!(e.contains("UNAUTHORIZED") || e.contains("nauthenticated"), "{e}");

    // Only Pub on orders: sending works, receiving is refused.
    let p2 = producer_as(&broker, "pub-only", "pub-only-secret-1", &["orders"]).await.unwrap();
    p2.send(text("from pub-only", "orders")).await.expect("pub-only may publish to orders");
    let mut opt = SimpleConsumerOption::default();
    opt.set_logging_format(quiet_logs());
    opt.set_consumer_group("inventory");
    opt.set_topics(vec!["orders"]);
    let mut c2 = rocketmq::SimpleConsumer::new(opt, option(&broker, "pub-only", "pub-only-secret-1")).unwrap();
    c2.start().await.expect("a consumer may start: its route query only needs Pub or Sub");
    let Err(e) = c2.receive("orders".to_string(), &tags("*")).await else { panic!("receive refused") };
    assert_eq!(common::code_of(&e), "FORBIDDEN");
    // …and it cannot send to (or end a transaction on) payments.
    let Err(e) = producer_as(&broker, "pub-only", "pub-only-secret-1", &["payments"]).await else {
        panic!("route refused")
    };
    assert!(e.contains("FORBIDDEN"), "{e}");
    broker.stop().await.unwrap();
}

/// The client variants' formats of the date and signature.
struct Variant {
    name: &'static str,
    date: String,
    upper_hex: bool,
}

fn compact(t: time::OffsetDateTime) -> String {
    format!("{:04}{:02}{:02}T{:02}{:02}{:02}Z", t.year(), t.month() as u8, t.day(), t.hour(), t.minute(), t.second())
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

fn authorization(ak: &str, sk: &str, v: &Variant) -> String {
    let h = header::sign(ak, sk, &v.date);
    if !v.upper_hex {
        return h;
    }
    let at = h.find("Signature=").unwrap() + "Signature=".len();
    format!("{}{}", &h[..at], h[at..].to_uppercase())
}

async fn raw(
    broker: &RunningBroker,
) -> v2::messaging_service_client::MessagingServiceClient<tonic::transport::Channel> {
    v2::messaging_service_client::MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap()
}

fn message(topic: &str, id: &str, t: v2::MessageType) -> v2::Message {
    v2::Message {
        topic: Some(v2::Resource { resource_namespace: String::new(), name: topic.into() }),
        user_properties: Default::default(),
        system_properties: Some(v2::SystemProperties {
            message_id: id.into(),
            body_encoding: v2::Encoding::Identity as i32,
            message_type: t as i32,
            born_timestamp: Some(prost_types::Timestamp { seconds: 1, nanos: 0 }),
            born_host: "test".into(),
            ..Default::default()
        }),
        body: b"body".to_vec(),
    }
}

async fn send_code(broker: &RunningBroker, auth: &str, date: &str, topic: &str, t: v2::MessageType) -> (i32, String) {
    let id = format!("{:032X}", rand_id());
    let req = signed(v2::SendMessageRequest { messages: vec![message(topic, &id, t)] }, auth, date);
    let r = raw(broker).await.send_message(req).await.unwrap().into_inner();
    let entry = r.entries.first().cloned().unwrap_or_default();
    (r.status.unwrap().code, entry.transaction_id)
}

fn rand_id() -> u128 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    t ^ (N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as u128) << 100
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_clients_header_variant_is_checked_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_secured(dir.path()).await;
    create_user(&broker, "app", "app-secret-123", &[("Topic:orders", "Pub")]).await;
    create_user(&broker, "payer", "payer-secret-1", &[("Topic:payments", "Pub")]).await;
    let now = time::OffsetDateTime::now_utc();
    let shanghai = now + time::Duration::hours(8);
    let variants = [
        // Rust: RFC 3339 with the local offset, lower-case hex.
        Variant {
            name: "rust",
            date: rfc3339(now.to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap())),
            upper_hex: false,
        },
        // Python: local time (here UTC+8) written with a Z, lower-case hex.
        Variant { name: "python", date: compact(shanghai), upper_hex: false },
        // Node: UTC, upper-case hex.
        Variant { name: "node", date: compact(now), upper_hex: true },
        // Java: local time (UTC-5) with a Z.
        Variant { name: "java", date: compact(now - time::Duration::hours(5)), upper_hex: false },
    ];
    let ok = v2::Code::Ok as i32;
    let (unauthorized, forbidden) = (v2::Code::Unauthorized as i32, v2::Code::Forbidden as i32);
    for v in &variants {
        let cases = [
            (authorization("app", "app-secret-123", v), "orders", ok),
            // Allowed user, topic outside its policy.
            (authorization("app", "app-secret-123", v), "payments", forbidden),
            // Wrong secret, unknown key.
            (authorization("app", "not-the-secret", v), "orders", unauthorized),
            (authorization("eve", "app-secret-123", v), "orders", unauthorized),
        ];
        for (header, topic, want) in cases {
            let got = send_code(&broker, &header, &v.date, topic, v2::MessageType::Normal).await.0;
            assert_eq!(got, want, "{} to {topic}", v.name);
        }
    }
    // Python without credentials still sends the header, with an empty credential.
    let empty = "MQv2-HMAC-SHA1 Credential=, SignedHeaders=x-mq-date-time, Signature=";
    assert_eq!(send_code(&broker, empty, &compact(now), "orders", v2::MessageType::Normal).await.0, unauthorized);
    // A captured header replayed later: an hour old exact date, two days old compact date.
    let old = rfc3339(now - time::Duration::hours(1));
    let code =
        send_code(&broker, &header::sign("app", "app-secret-123", &old), &old, "orders", v2::MessageType::Normal)
            .await
            .0;
    assert_eq!(code, unauthorized, "an expired date is refused");
    let old = compact(now - time::Duration::days(2));
    let code =
        send_code(&broker, &header::sign("app", "app-secret-123", &old), &old, "orders", v2::MessageType::Normal)
            .await
            .0;
    assert_eq!(code, unauthorized, "an expired compact date is refused");

    // EndTransaction is checked on the transaction's own topic: `app` (Pub on orders only)
    // cannot commit a half message of payments, even naming orders as the topic.
    let date = rfc3339(time::OffsetDateTime::now_utc());
    let payer = header::sign("payer", "payer-secret-1", &date);
    let (code, txn_id) = send_code(&broker, &payer, &date, "payments", v2::MessageType::Transaction).await;
    assert_eq!(code, ok);
    let app = header::sign("app", "app-secret-123", &date);
    for topic in ["payments", "orders"] {
        let end = v2::EndTransactionRequest {
            topic: Some(v2::Resource { resource_namespace: String::new(), name: topic.into() }),
            message_id: String::new(),
            transaction_id: txn_id.clone(),
            resolution: v2::TransactionResolution::Commit as i32,
            source: v2::TransactionSource::SourceClient as i32,
            trace_context: String::new(),
        };
        let r = raw(&broker).await.end_transaction(signed(end, &app, &date)).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, forbidden, "commit on {topic}");
    }
    let t = common::txn(&broker, &txn_id).await;
    assert_eq!(t.state, pb::TxnState::Pending as i32, "nothing was decided");
    // ChangeInvisibleDuration needs Sub on the topic too, not only on the group.
    create_user(&broker, "grouper", "grouper-secret-1", &[("Group:inventory", "Sub"), ("Topic:orders", "Sub")]).await;
    let grouper = header::sign("grouper", "grouper-secret-1", &date);
    for (topic, want) in [("payments", forbidden), ("orders", v2::Code::InvalidReceiptHandle as i32)] {
        let change = v2::ChangeInvisibleDurationRequest {
            group: Some(v2::Resource { resource_namespace: String::new(), name: "inventory".into() }),
            topic: Some(v2::Resource { resource_namespace: String::new(), name: topic.into() }),
            receipt_handle: "not-a-handle".into(),
            invisible_duration: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
            message_id: "m".into(),
            lite_topic: None,
            suspend: None,
        };
        let r = raw(&broker).await.change_invisible_duration(signed(change, &grouper, &date)).await.unwrap();
        assert_eq!(r.into_inner().status.unwrap().code, want, "change invisible duration on {topic}");
    }
    // Unsigned requests are refused too.
    let r = raw(&broker)
        .await
        .query_route(v2::QueryRouteRequest {
            topic: Some(v2::Resource { resource_namespace: String::new(), name: "orders".into() }),
            endpoints: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, unauthorized);

    // The SDK signs the same way, over TLS too.
    let sdk = |sk: &str| {
        txmq_client::ClientConfig::new(broker.access_point())
            .with_credentials("app", sk)
            .with_tls(Some(certs().ca.clone()))
    };
    let p = txmq_client::Producer::connect(sdk("app-secret-123"), &["orders"]).await.expect("the SDK signs in");
    p.send(txmq_client::Message::new("orders", b"from the SDK".to_vec())).await.expect("allowed");
    let e = p.send(txmq_client::Message::new("payments", b"x".to_vec())).await.unwrap_err();
    assert!(e.to_string().contains("FORBIDDEN"), "{e}");
    // A signature is checked on each call against the clock: signed calls are unary, never
    // on the SDK's stream of calls.
    let metrics = broker.broker.metrics().render(&broker.broker.gauges());
    assert!(!metrics.contains("request_code=\"Calls\""), "a signed client opened a stream of calls");
    let Err(e) = txmq_client::Producer::connect(sdk("wrong-secret-1"), &["orders"]).await else { panic!("signed in") };
    assert!(e.to_string().contains("UNAUTHORIZED"), "{e}");
    broker.stop().await.unwrap();
}

/// Runs `txmq --broker ADDR ARGS…` with `env`; returns (success, stdout, stderr).
async fn txmq(broker: &RunningBroker, env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_txmq"));
    cmd.arg("--broker").arg(broker.addr.to_string()).args(args);
    cmd.env_remove("TXMQ_ACCESS_KEY").env_remove("TXMQ_SECRET_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signs_admin_calls_and_manages_users_without_showing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_secured(dir.path()).await;
    let root = [("TXMQ_ACCESS_KEY", ROOT), ("TXMQ_SECRET_KEY", ROOT_SECRET)];
    const ALICE_SECRET: &str = "alice-secret-4b2e";

    // No credentials, wrong credentials: refused.
    let (ok, _, err) = txmq(&broker, &[], &["topic", "list"]).await;
    assert!(!ok && err.contains("unauthorized"), "{err}");
    let (ok, _, err) = txmq(&broker, &[("TXMQ_SECRET_KEY", "nope-nope-nope")], &["--access-key", ROOT, "status"]).await;
    assert!(!ok && err.contains("unauthorized"), "{err}");
    // The super user: allowed.
    let (ok, out, err) = txmq(&broker, &root, &["--json", "status"]).await;
    assert!(ok, "{err}");
    assert!(!out.contains(ROOT_SECRET));

    // Users and policies round-trip.
    let mut with_secret = root.to_vec();
    with_secret.push(("TXMQ_NEW_USER_SECRET", ALICE_SECRET));
    let (ok, out, err) = txmq(&broker, &with_secret, &["--json", "user", "create", "alice"]).await;
    assert!(ok && !out.contains(ALICE_SECRET), "{out}{err}");
    let (ok, _, err) = txmq(&broker, &root, &["acl", "grant", "alice", "Topic:orders", "Pub,Sub"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) =
        txmq(&broker, &root, &["acl", "grant", "alice", "Group:inv*", "Sub", "--source", "127.0.0.0/8"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = txmq(&broker, &root, &["acl", "revoke", "alice", "Topic:orders", "Sub"]).await;
    assert!(ok, "{err}");
    let (ok, out, err) = txmq(&broker, &root, &["--json", "acl", "list", "alice"]).await;
    assert!(ok, "{err}");
    let entries: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 2, "{out}");
    assert_eq!(entries[0]["resource"], "Topic:orders");
    assert_eq!(entries[0]["actions"], "Pub");
    assert_eq!(entries[1]["sources"][0], "127.0.0.0/8");
    let (ok, out, _) = txmq(&broker, &root, &["--json", "user", "list"]).await;
    assert!(ok && out.contains("\"alice\"") && !out.contains(ALICE_SECRET) && !out.contains(ROOT_SECRET), "{out}");

    // A normal user without an Admin grant cannot use the admin API; with one it can.
    let alice = [("TXMQ_ACCESS_KEY", "alice"), ("TXMQ_SECRET_KEY", ALICE_SECRET)];
    let (ok, _, err) = txmq(&broker, &alice, &["topic", "list"]).await;
    assert!(!ok && err.contains("may not Admin"), "{err}");
    let (ok, _, err) = txmq(&broker, &root, &["acl", "grant", "alice", "Cluster:*", "Admin"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = txmq(&broker, &alice, &["topic", "list"]).await;
    assert!(ok, "{err}");
    // Her operator actions are recorded under her authenticated name, then the tool's.
    let (ok, _, err) = txmq(&broker, &alice, &["txn", "commit", "NO-SUCH-ID", "--reason", "testing"]).await;
    assert!(!ok && err.contains("NOT_FOUND"), "{err}");
    let (ok, out, err) = txmq(&broker, &root, &["--json", "audit", "list"]).await;
    assert!(ok, "{err}");
    let audit: serde_json::Value = serde_json::from_str(&out).unwrap();
    let actor = audit[0]["actor"].as_str().unwrap();
    assert!(actor.starts_with("alice (") && actor.ends_with(" via cli)"), "{out}");
    assert_eq!((audit[0]["action"].as_str(), audit[0]["reason"].as_str()), (Some("commit"), Some("testing")));
    assert!(audit[0]["outcome"].as_str().unwrap().contains("NO-SUCH-ID"), "{out}");

    // Deleted: refused from then on.
    let (ok, _, err) = txmq(&broker, &root, &["user", "delete", "alice"]).await;
    assert!(ok, "{err}");
    let (ok, _, _) = txmq(&broker, &alice, &["topic", "list"]).await;
    assert!(!ok);

    // The CLI over TLS, trusting the broker's CA.
    let ca = certs().ca.to_str().unwrap();
    let (ok, _, err) = txmq(&broker, &root, &["--ca-file", ca, "topic", "list"]).await;
    assert!(ok, "{err}");

    // The metrics count the failures and show no secret.
    let metrics = common::scrape(broker.metrics_addr.unwrap());
    let failures: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("txmq_auth_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(failures >= 3.0, "{metrics}");
    assert!(!metrics.contains(ROOT_SECRET) && !metrics.contains(ALICE_SECRET));
    broker.stop().await.unwrap();

    // The broker logged the failures and the user changes, and no secret.
    let log = String::from_utf8(log().lock().unwrap().clone()).unwrap();
    assert!(log.contains("authentication failed"), "failures are logged");
    assert!(log.contains("admin: create user"), "user changes are logged");
    for secret in [ROOT_SECRET, ALICE_SECRET, "orders-secret-1", "app-secret-123", "pub-only-secret-1"] {
        assert!(!log.contains(secret), "the log shows a secret");
    }
}
