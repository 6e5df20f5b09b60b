//! TLS on the broker's one port, beside plaintext.
//!
//! The Java and Go RocketMQ clients default to TLS, the Rust, Python and Node ones to
//! plaintext; so, like RocketMQ's proxy, the broker can take both on one port: a connection
//! whose first byte is a TLS handshake record (0x16) gets a TLS handshake, one that starts
//! with the HTTP/2 preface is served as is (`--tls-mode permissive`), or closed
//! (`--tls-mode required`). The certificate and key are read again on SIGHUP; connections
//! already open keep the certificate they were accepted with, new ones get the new one.
//!
//! With `--tls-client-ca`, a client may present a certificate signed by that CA (mutual TLS);
//! the common name of its subject is then its user name, for requests that carry no signature.
//! Clients without a certificate are still accepted (and must sign their requests).
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

/// The first byte of a TLS handshake record (a ClientHello).
pub const HANDSHAKE: u8 = 0x16;

/// The broker's TLS configuration, reloadable.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    pub mode: TlsMode,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl Tls {
    /// Reads the certificate chain and key (PEM).
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>, mode: TlsMode) -> Result<Tls> {
        let config = server_config(cert, key, client_ca)?;
        Ok(Tls {
            cert: cert.into(),
            key: key.into(),
            client_ca: client_ca.map(Path::to_path_buf),
            mode,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again; on an error the current certificate stays in use.
    pub fn reload(&self) -> Result<()> {
        let config = server_config(&self.cert, &self.key, self.client_ca.as_deref())?;
        *crate::sync::write(&self.current) = Arc::new(config);
        Ok(())
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(crate::sync::read(&self.current).clone())
    }
}

fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<rustls::ServerConfig> {
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
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Config(format!("TLS: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad("client CA", ca, &e))? {
                roots.add(c.map_err(|e| bad("client CA", ca, &e))?).map_err(|e| bad("client CA", ca, &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| bad("client CA", ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key_der).map_err(|e| bad("certificate and key", cert, &e))?;
    // gRPC is HTTP/2; the clients insist on negotiating it.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The common name (CN) of a DER certificate's subject; `None` if it has none or the DER is
/// malformed. Reads only as far as the subject.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    let (cert, _) = element(der, 0x30)?;
    let (tbs, _) = element(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = skip(rest)?; // version
    }
    for _ in 0..4 {
        rest = skip(rest)?; // serial number, signature algorithm, issuer, validity
    }
    let (mut subject, _) = element(rest, 0x30)?;
    while !subject.is_empty() {
        let (mut set, after) = element(subject, 0x31)?;
        subject = after;
        while !set.is_empty() {
            let (attribute, after) = element(set, 0x30)?;
            set = after;
            let (oid, value) = element(attribute, 0x06)?;
            if oid == [0x55, 0x04, 0x03] {
                // UTF8String, PrintableString, IA5String or the like: the bytes are the name.
                let (_, content, _) = next(value)?;
                return String::from_utf8(content.to_vec()).ok();
            }
        }
    }
    None
}

/// The first DER element of `input`: `(tag, content, rest)`.
fn next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |l, b| l << 8 | *b as usize), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The first element, which must have `tag`: `(content, rest)`.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = next(input)?;
    (t == tag).then_some((content, rest))
}

fn skip(input: &[u8]) -> Option<&[u8]> {
    next(input).map(|(_, _, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_common_name_of_a_certificate_is_read() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "txmq");
        params.distinguished_name.push(rcgen::DnType::CommonName, "orders-app");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(subject_common_name(cert.der()).as_deref(), Some("orders-app"));
        let mut params = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(subject_common_name(cert.der()), None);
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = subject_common_name(&bytes);
        }
    }
}
