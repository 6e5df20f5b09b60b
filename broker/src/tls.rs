//! TLS on the broker's one port, beside plaintext.
//!
//! The Java and Go RocketMQ clients default to TLS, the Rust, Python and Node ones to
//! plaintext; so, like RocketMQ's proxy, the broker can take both on one port: a connection
//! whose first byte is a TLS handshake record (0x16) gets a TLS handshake, one that starts
//! with the HTTP/2 preface is served as is (`--tls-mode permissive`), or closed
//! (`--tls-mode required`). The certificate and key are read again on SIGHUP; connections
//! already open keep the certificate they were accepted with, new ones get the new one.
//!
//! Owns: the current TLS server configuration. Never touches the broker's state.

use crate::error::{BrokerError, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_rustls::rustls;

/// Whether plaintext connections are accepted beside TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS and plaintext on the same port (the first byte decides).
    Permissive,
    /// TLS only: plaintext connections are closed.
    Required,
}

impl std::str::FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "permissive" => Ok(TlsMode::Permissive),
            "required" => Ok(TlsMode::Required),
            _ => Err(format!("{s:?} is not permissive or required")),
        }
    }
}

/// The first byte of a TLS handshake record (a ClientHello).
pub const HANDSHAKE: u8 = 0x16;

/// The broker's TLS configuration, reloadable.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    pub mode: TlsMode,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl Tls {
    /// Reads the certificate chain and key (PEM).
    pub fn load(cert: &Path, key: &Path, mode: TlsMode) -> Result<Tls> {
        let config = server_config(cert, key)?;
        Ok(Tls { cert: cert.into(), key: key.into(), mode, current: RwLock::new(Arc::new(config)) })
    }

    /// Reads the files again; on an error the current certificate stays in use.
    pub fn reload(&self) -> Result<()> {
        let config = server_config(&self.cert, &self.key)?;
        *crate::sync::write(&self.current) = Arc::new(config);
        Ok(())
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(crate::sync::read(&self.current).clone())
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig> {
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        BrokerError::Config(format!("TLS {what} {}: {e}", path.display()))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("certificate", cert, &e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("certificate", cert, &e))?;
    if chain.is_empty() {
        return Err(bad("certificate", cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| bad("certificate and key", cert, &e))?;
    // gRPC is HTTP/2; the clients insist on negotiating it.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
