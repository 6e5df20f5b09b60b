//! How the CLI reaches the broker: its address, credentials and TLS, from the global options.
//! Every command (admin calls, and the SDK clients of `bench`) connects through here, so each
//! signs its requests and speaks TLS the same way.

use anyhow::Context;
use std::path::PathBuf;
use std::sync::OnceLock;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use txmq_client::{ClientConfig, Credentials, Signer};

/// Credentials and TLS for every connection of this run.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub credentials: Option<Credentials>,
    /// `Some(ca)`: TLS, trusting `ca` (PEM) or the system's roots.
    pub tls: Option<Option<PathBuf>>,
}

static CONNECTION: OnceLock<Connection> = OnceLock::new();

/// Sets the connection options once, from the command line.
pub fn configure(c: Connection) {
    let _ = CONNECTION.set(c);
}

fn current() -> &'static Connection {
    CONNECTION.get_or_init(Connection::default)
}

/// The SDK's configuration for `broker` with this run's credentials and TLS.
pub fn client_config(broker: &str) -> ClientConfig {
    let c = current();
    let mut config = ClientConfig::new(broker);
    config.credentials = c.credentials.clone();
    config.tls = c.tls.clone();
    config
}

/// A channel that signs its requests.
pub type Signed = InterceptedService<Channel, Signer>;

/// One HTTP/2 connection to `broker` (`TCP_NODELAY`), over TLS when asked, signing requests.
pub async fn connect(broker: &str) -> anyhow::Result<Signed> {
    let channel = client_config(broker)
        .endpoint()?
        .connect()
        .await
        .with_context(|| format!("cannot reach the broker at {broker}"))?;
    Ok(InterceptedService::new(channel, Signer(current().credentials.clone())))
}
