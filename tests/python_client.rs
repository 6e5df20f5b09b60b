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

/// Runs a scenario after `setup` prepared the broker (through its admin API).
async fn scenario_after<F, Fut>(name: &str, setup: F)
where
    F: FnOnce(txmq_proto::admin::admin_client::AdminClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(common::fast_config(dir.path())).await;
    let admin = txmq_proto::admin::admin_client::AdminClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    setup(admin).await;
    let script = format!("{}/tests/python/e2e.py", env!("CARGO_MANIFEST_DIR"));
    let (python, addr, name_owned) = (python(), broker.access_point(), name.to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).arg(script).arg(addr).arg(name_owned).output()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_priority_messages_arrive_highest_first() {
    use txmq_proto::admin as pb;
    scenario_after("priority", |mut admin| async move {
        let r = admin
            .create_topic(pb::CreateTopicRequest {
                name: "py-urgent".into(),
                r#type: pb::TopicType::Priority as i32,
                queue_count: 4,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
    })
    .await;
}
