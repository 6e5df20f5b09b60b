//! How nodes reach and recognize each other: one gRPC channel per peer (TLS when the cluster
//! runs with it) and the node signature every node-to-node request carries when the cluster
//! has a key (docs/cluster.md, "Security").
//!
//! A node signs a request it passes on with HMAC-SHA256 under the cluster key (the contents
//! of `--cluster-key-file`, the same file on every node) over its node id, the time, and the
//! original client's address and certificate name it vouches for. The receiving node accepts
//! the forwarding marks only with a valid signature dated within the allowed skew; the
//! client's own signature travels unchanged and is checked by the node that serves the call,
//! against the users every node reads from etcd.

use super::ClusterError;
use std::collections::HashMap;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// Metadata key of the node signature: `<node id>:<ms since the epoch>:<hex HMAC>`.
pub const NODE_AUTH: &str = "x-txmq-node-auth";

/// Metadata key naming the node that made (or passed on) a request.
pub const FORWARDED_BY: &str = "x-txmq-forwarded-by";

/// Marks a request this node makes of a peer as its own, signed when the cluster has a key.
pub fn mark_as_node<T>(m: &super::Membership, req: &mut tonic::Request<T>) {
    let by = m.node_id();
    if let Ok(v) = by.parse() {
        req.metadata_mut().insert(FORWARDED_BY, v);
    }
    if let Some(key) = &m.peer_settings().key {
        if let Ok(v) = key.sign(by, crate::clock::now_ms(), "", "").parse() {
            req.metadata_mut().insert(NODE_AUTH, v);
        }
    }
}

/// The cluster's shared key.
pub struct NodeKey {
    key: ring::hmac::Key,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

impl NodeKey {
    /// The key a file's contents make (at least 16 bytes).
    pub fn from_file(path: &std::path::Path) -> Result<NodeKey, ClusterError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ClusterError::Config(format!("cannot read cluster key file {}: {e}", path.display())))?;
        Self::from_bytes(&bytes)
            .map_err(|why| ClusterError::Config(format!("cluster key file {}: {why}", path.display())))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<NodeKey, String> {
        if bytes.len() < 16 {
            return Err(format!("holds {} bytes; give at least 16 random bytes", bytes.len()));
        }
        Ok(NodeKey { key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes) })
    }

    fn mac(&self, node: &str, at_ms: i64, client_addr: &str, client_cn: &str) -> ring::hmac::Tag {
        let text = format!("txmq-node\n{node}\n{at_ms}\n{client_addr}\n{client_cn}");
        ring::hmac::sign(&self.key, text.as_bytes())
    }

    /// The signature header value of `node` at `at_ms`, vouching for the client's address and
    /// certificate name (empty when none).
    pub fn sign(&self, node: &str, at_ms: i64, client_addr: &str, client_cn: &str) -> String {
        format!("{node}:{at_ms}:{}", hex(self.mac(node, at_ms, client_addr, client_cn).as_ref()))
    }

    /// The node a signature header names, when it is valid for the client marks given and
    /// dated within `max_skew` of `now_ms`; else why not.
    pub fn verify(
        &self,
        value: &str,
        client_addr: &str,
        client_cn: &str,
        now_ms: i64,
        max_skew: Duration,
    ) -> Result<String, String> {
        let mut parts = value.splitn(3, ':');
        let (Some(node), Some(at), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("malformed node signature".into());
        };
        let at: i64 = at.parse().map_err(|_| "malformed node signature time".to_string())?;
        let mac = unhex(mac).ok_or("malformed node signature")?;
        let text = format!("txmq-node\n{node}\n{at}\n{client_addr}\n{client_cn}");
        ring::hmac::verify(&self.key, text.as_bytes(), &mac)
            .map_err(|_| "wrong node signature (another cluster key?)")?;
        if (now_ms - at).unsigned_abs() > max_skew.as_millis() as u64 {
            return Err(format!("node signature of {node} is {} ms from this node's clock", now_ms - at));
        }
        Ok(node.to_string())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// How this node dials its peers.
#[derive(Debug, Clone, Default)]
pub struct PeerSettings {
    /// Signs every request to a peer; peers require it.
    pub key: Option<std::sync::Arc<NodeKey>>,
    /// Dial peers over TLS; the CA (PEM) their certificates chain to, or the system's roots.
    pub tls: Option<Option<Vec<u8>>>,
}

/// How long a connection to a peer with calls open may go without a frame before it is
/// pinged, and how long the ping may go unanswered before the connection is given up: a peer
/// that is frozen (stopped, or a hung machine) keeps its socket open, so only a ping finds it
/// out, within twice this, before the official clients' 3 s deadline for a send it was passed.
pub(super) const PING_AFTER: Duration = Duration::from_secs(1);

/// How often a peer left out after a failed call is probed, and how long a probe waits.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(500);

/// True when a process answers HTTP/2 on `channel` within [`PROBE_EVERY`]
/// ([`txmq_proto::probe`]).
pub(super) async fn answers(channel: &Channel) -> bool {
    use tonic::codegen::Service;
    let mut channel = channel.clone();
    let call = async {
        std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
        channel.call(txmq_proto::probe::request()).await
    };
    matches!(tokio::time::timeout(PROBE_EVERY, call).await, Ok(Ok(_)))
}

/// One channel per peer address, shared by every request to it.
#[derive(Default)]
pub(super) struct Channels {
    open: std::sync::Mutex<HashMap<String, Channel>>,
}

impl Channels {
    pub(super) fn get(&self, settings: &PeerSettings, node: &str, address: &str) -> Result<Channel, ClusterError> {
        let mut open = crate::sync::lock(&self.open);
        if let Some(c) = open.get(address) {
            return Ok(c.clone());
        }
        let bad = |e: &dyn std::fmt::Display| ClusterError::Config(format!("node {node} at {address}: {e}"));
        let scheme = if settings.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Channel::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| bad(&e))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(PING_AFTER)
            .keep_alive_timeout(PING_AFTER)
            .keep_alive_while_idle(false);
        if let Some(ca) = &settings.tls {
            let host =
                address.rsplit_once(':').map_or(address, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
            let mut tls = ClientTlsConfig::new().domain_name(host);
            tls = match ca {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(&e))?;
        }
        let channel = endpoint.connect_lazy();
        open.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_node_time_and_client_marks() {
        let k = NodeKey::from_bytes(b"0123456789abcdef").unwrap();
        let v = k.sign("n1", 1_000, "10.0.0.5", "");
        let skew = Duration::from_secs(60);
        assert_eq!(k.verify(&v, "10.0.0.5", "", 1_500, skew).unwrap(), "n1");
        assert!(k.verify(&v, "10.0.0.6", "", 1_500, skew).unwrap_err().contains("wrong node signature"));
        assert!(k.verify(&v, "10.0.0.5", "alice", 1_500, skew).is_err());
        assert!(k.verify(&v.replace("n1:", "n2:"), "10.0.0.5", "", 1_500, skew).is_err());
        assert!(k.verify(&v, "10.0.0.5", "", 1_000 + 61_000, skew).unwrap_err().contains("clock"));
        let other = NodeKey::from_bytes(b"fedcba9876543210").unwrap();
        assert!(other.verify(&v, "10.0.0.5", "", 1_500, skew).is_err());
        assert!(k.verify("garbage", "", "", 0, skew).is_err());
        assert!(k.verify("n1:5:zz", "", "", 0, skew).is_err());
        assert!(NodeKey::from_bytes(b"short").is_err());
    }
}
