//! TLS on the broker's port: TLS and plaintext clients side by side (permissive), plaintext
//! refused (required), and a certificate reloaded on SIGHUP without dropping connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{quiet_logs, TestCerts};
use rocketmq::conf::ProducerOption;
use rocketmq::model::message::MessageBuilder;
use std::time::Duration;
use txmq_broker::server::RunningBroker;
use txmq_broker::tls::TlsMode;
use txmq_client::{ClientConfig, Message, Producer};

async fn start_tls(dir: &std::path::Path, certs: &TestCerts, mode: TlsMode) -> RunningBroker {
    let mut config = common::fast_config(dir);
    config.tls_cert = Some(certs.cert.clone());
    config.tls_key = Some(certs.key.clone());
    config.tls_mode = mode;
    common::start(config).await
}

/// Sends one message with the SDK; `Err` text when the connection or the send fails.
async fn sdk_send(config: ClientConfig, body: &str) -> Result<(), String> {
    let config = ClientConfig { request_timeout: Duration::from_secs(2), ..config };
    let p = Producer::connect(config, &["secure"]).await.map_err(|e| e.to_string())?;
    p.send(Message::new("secure", body.as_bytes().to_vec())).await.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plaintext_clients_share_the_port_in_permissive_mode() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new("permissive");
    let broker = start_tls(dir.path(), &certs, TlsMode::Permissive).await;
    let addr = broker.access_point();
    sdk_send(ClientConfig::new(&addr), "plain").await.expect("plaintext works");
    sdk_send(ClientConfig::new(&addr).with_tls(Some(certs.ca.clone())), "tls").await.expect("TLS works");
    // A client that does not trust the broker's CA fails its handshake (an error, no hang).
    let other = TestCerts::new("other");
    let e = sdk_send(ClientConfig::new(&addr).with_tls(Some(other.ca.clone())), "x").await.unwrap_err();
    assert!(!e.is_empty());

    // The official Rust client over TLS: it trusts the roots in SSL_CERT_FILE.
    std::env::set_var("SSL_CERT_FILE", &certs.ca);
    let mut o = common::client_option(&broker);
    o.set_enable_tls(true);
    let mut opt = ProducerOption::default();
    opt.set_logging_format(quiet_logs());
    opt.set_topics(vec!["secure"]);
    let mut p = rocketmq::Producer::new(opt, o).unwrap();
    p.start().await.expect("the Rust client starts over TLS");
    let m = MessageBuilder::builder().set_topic("secure").set_body(b"rust over tls".to_vec()).build().unwrap();
    p.send(m).await.expect("the Rust client sends over TLS");

    let c = common::consumer(&broker, "readers", &["secure"]).await; // plaintext
    let got = common::drain(&c, "secure", &common::tags("*"), 3, Duration::from_secs(5)).await;
    let mut bodies: Vec<_> = got.iter().map(|m| String::from_utf8_lossy(m.body()).into_owned()).collect();
    bodies.sort();
    assert_eq!(bodies, ["plain", "rust over tls", "tls"]);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_when_tls_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new("required");
    let broker = start_tls(dir.path(), &certs, TlsMode::Required).await;
    let addr = broker.access_point();
    assert!(sdk_send(ClientConfig::new(&addr), "plain").await.is_err(), "plaintext refused");
    sdk_send(ClientConfig::new(&addr).with_tls(Some(certs.ca.clone())), "tls").await.expect("TLS works");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new("first");
    let broker = start_tls(dir.path(), &certs, TlsMode::Required).await;
    let addr = broker.access_point();
    let first_ca = certs.dir.path().join("first-ca.pem");
    std::fs::copy(&certs.ca, &first_ca).unwrap();
    let config = |ca: &std::path::Path| ClientConfig {
        request_timeout: Duration::from_secs(2),
        ..ClientConfig::new(&addr).with_tls(Some(ca.to_path_buf()))
    };
    let open = Producer::connect(config(&first_ca), &["secure"]).await.unwrap();
    open.send(Message::new("secure", b"before".to_vec())).await.unwrap();

    certs.issue("second");
    // The broker listens for SIGHUP from its start; give its task a moment to be running.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The shell's own `kill`, present wherever `sh` is.
    let hup = format!("kill -HUP {}", std::process::id());
    let status = std::process::Command::new("sh").args(["-c", &hup]).status().unwrap();
    assert!(status.success());

    let started = std::time::Instant::now();
    loop {
        match sdk_send(config(&certs.ca), "after").await {
            Ok(()) => break,
            Err(e) => assert!(started.elapsed() < Duration::from_secs(10), "the new certificate is not served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sdk_send(config(&first_ca), "old CA").await.is_err(), "new connections get the new certificate");
    open.send(Message::new("secure", b"same connection".to_vec())).await.expect("the open connection was kept");
    broker.stop().await.unwrap();
}

/// A client certificate named `cn`, signed by a new CA: `(ca pem, cert pem, key pem)`.
fn client_certificate(cn: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, "clients CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

async fn send_over_mtls(
    broker: &RunningBroker,
    server_ca: &std::path::Path,
    identity: Option<(&str, &str)>,
    topic: &str,
) -> i32 {
    use txmq_proto::v2;
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(server_ca).unwrap()));
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", broker.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let message = v2::Message {
        topic: Some(v2::Resource { resource_namespace: String::new(), name: topic.into() }),
        user_properties: Default::default(),
        system_properties: Some(v2::SystemProperties {
            message_id: format!(
                "{:X}",
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            ),
            body_encoding: v2::Encoding::Identity as i32,
            message_type: v2::MessageType::Normal as i32,
            born_timestamp: Some(prost_types::Timestamp { seconds: 1, nanos: 0 }),
            born_host: "test".into(),
            ..Default::default()
        }),
        body: b"over mTLS".to_vec(),
    };
    let r = v2::messaging_service_client::MessagingServiceClient::new(channel)
        .send_message(v2::SendMessageRequest { messages: vec![message] })
        .await
        .unwrap()
        .into_inner();
    r.status.unwrap().code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_as_the_user_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new("mtls");
    let (client_ca, cert, key) = client_certificate("cert-user");
    let client_ca_file = certs.dir.path().join("clients-ca.pem");
    std::fs::write(&client_ca_file, client_ca).unwrap();
    std::env::set_var("TXMQ_AUTH_INIT_SECRET", "root-secret-mtls");
    let mut config = common::fast_config(dir.path());
    config.tls_cert = Some(certs.cert.clone());
    config.tls_key = Some(certs.key.clone());
    config.tls_client_ca = Some(client_ca_file);
    config.auth = true;
    config.auth_init_user = Some("root".into());
    let broker = common::start(config).await;
    let mut admin = common::admin_with(&broker, Some(txmq_client::Credentials::new("root", "root-secret-mtls"))).await;
    use txmq_proto::admin as pb;
    let r = admin
        .create_user(pb::CreateUserRequest {
            name: "cert-user".into(),
            secret: "unused-secret-1".into(),
            r#type: "normal".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
    let entry = pb::AclEntry { resource: "Topic:orders".into(), actions: "Pub".into(), allow: true, sources: vec![] };
    admin.grant_acl(pb::GrantAclRequest { user: "cert-user".into(), entry: Some(entry) }).await.unwrap();

    use txmq_proto::v2::Code;
    let id = Some((cert.as_str(), key.as_str()));
    assert_eq!(send_over_mtls(&broker, &certs.ca, id, "orders").await, Code::Ok as i32);
    assert_eq!(send_over_mtls(&broker, &certs.ca, id, "payments").await, Code::Forbidden as i32);
    assert_eq!(
        send_over_mtls(&broker, &certs.ca, None, "orders").await,
        Code::Unauthorized as i32,
        "no certificate, no signature"
    );
    broker.stop().await.unwrap();
}
