//! The official RocketMQ Python client (rocketmq-python-client 5.1.2, in a virtualenv made by
//! tests/python/setup.sh from PyPI) against the broker: each scenario of tests/python/e2e.py
//! runs as a child process and must print "ok".
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

/// The virtualenv's python, made once per test run.
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let root = env!("CARGO_MANIFEST_DIR");
            let out = std::process::Command::new("bash").arg(format!("{root}/tests/python/setup.sh")).output().unwrap();
            assert!(out.status.success(), "setup.sh failed: {}", String::from_utf8_lossy(&out.stderr));
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
        .clone()
}

async fn scenario(name: &str) {
    scenario_after(name, |_| async {}).await;
}

/// A broker's admin API, signing as `credentials` when given.
type Admin = common::Admin;

/// Runs a scenario after `setup` prepared the broker (through its admin API).
async fn scenario_after<F, Fut>(name: &str, setup: F)
where
    F: FnOnce(Admin) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    scenario_with(name, |_| {}, None, None, &[], setup).await;
}

/// Runs a scenario against a broker configured by `tweak`, whose admin API `setup` uses (signing
/// as `admin_as`), with `env` for the script.
async fn scenario_with<F, Fut>(
    name: &str,
    tweak: impl FnOnce(&mut txmq_broker::config::Config),
    admin_as: Option<txmq_client::Credentials>,
    tls_ca: Option<std::path::PathBuf>,
    env: &[(&str, &str)],
    setup: F,
) where
    F: FnOnce(Admin) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::fast_config(dir.path());
    tweak(&mut config);
    let broker = common::start(config).await;
    setup(common::admin_over(&broker, admin_as, tls_ca).await).await;
    let script = format!("{}/tests/python/e2e.py", env!("CARGO_MANIFEST_DIR"));
    let (python, addr, name_owned) = (python(), broker.access_point(), name.to_string());
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).arg(script).arg(addr).arg(name_owned).envs(env).output()
    })
    .await
    .unwrap()
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.trim_end().ends_with("ok"), "scenario {name} failed:\n{stdout}\n{stderr}");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sql92_subscription_receives_exactly_the_matching_messages() {
    scenario("sql92").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_receives_a_gzip_body_byte_for_byte() {
    scenario("gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_recalls_a_delay_message_that_is_then_never_delivered() {
    scenario("recall").await;
}

/// Runs a scenario after creating `topic` of type `ty` with `queues` queues.
async fn scenario_on_topic(name: &str, topic: &'static str, ty: txmq_proto::admin::TopicType, queues: u32) {
    use txmq_proto::admin as pb;
    scenario_after(name, |mut admin| async move {
        let req = pb::CreateTopicRequest { name: topic.into(), r#type: ty as i32, queue_count: queues };
        let r = admin.create_topic(req).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_lite_consumer_receives_only_the_lite_topics_it_subscribes_to() {
    scenario_on_topic("lite", "py-chat", txmq_proto::admin::TopicType::Lite, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_priority_messages_arrive_highest_first() {
    scenario_on_topic("priority", "py-urgent", txmq_proto::admin::TopicType::Priority, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_signs_in_over_tls_with_its_own_date_format_and_a_wrong_secret_is_refused() {
    use txmq_proto::admin as pb;
    // The first super user's secret comes from the environment, as for an operator.
    std::env::set_var("TXMQ_AUTH_INIT_SECRET", "root-secret-python");
    let certs = common::TestCerts::new("python");
    let (cert, key) = (certs.cert.clone(), certs.key.clone());
    let tweak = move |c: &mut txmq_broker::config::Config| {
        c.auth = true;
        c.auth_init_user = Some("root".into());
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        c.tls_mode = txmq_broker::tls::TlsMode::Required;
    };
    let root = txmq_client::Credentials::new("root", "root-secret-python");
    let ca = certs.ca.to_str().unwrap().to_string();
    let env = [("PY_APP_SECRET", "py-app-secret-1"), ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", ca.as_str())];
    scenario_with("auth", tweak, Some(root), Some(certs.ca.clone()), &env, |mut admin| async move {
        let r = admin
            .create_user(pb::CreateUserRequest {
                name: "py-app".into(),
                secret: "py-app-secret-1".into(),
                r#type: "normal".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
        for (resource, actions) in [("Topic:py-secured", "Pub,Sub"), ("Group:py-readers", "Sub")] {
            let entry =
                pb::AclEntry { resource: resource.into(), actions: actions.into(), allow: true, sources: vec![] };
            admin.grant_acl(pb::GrantAclRequest { user: "py-app".into(), entry: Some(entry) }).await.unwrap();
        }
    })
    .await;
}
