//! Who is calling: the authenticated user of a request (or why it is not authenticated), and
//! the checks of what that user may do. One place for every service: messaging, Telemetry and
//! the admin API.

use crate::auth::acl::{Action, Resource};
use crate::auth::header::DATE_HEADER;
use crate::auth::{Auth, User};
use crate::broker::{now_ms, Broker};
use crate::error::BrokerError;
use std::net::IpAddr;
use std::sync::Arc;
use tonic::Request;

/// What each request of a connection knows about it (the server puts it in the request's
/// extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<std::net::SocketAddr>,
    /// The common name of the client's TLS certificate, when it presented one.
    pub client_cn: Option<String>,
}

/// The caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `Ok(None)`: authentication is off. `Err`: why the request is not authenticated.
    identity: Result<Option<Arc<User>>, String>,
    pub from: Option<IpAddr>,
}

impl Caller {
    /// The peer's address, when the connection has one.
    pub fn peer<T>(req: &Request<T>) -> Option<std::net::SocketAddr> {
        req.extensions().get::<ConnInfo>().and_then(|c| c.remote)
    }

    /// Authenticates `req` (counting and logging a failure, at most ten lines a second).
    pub fn of<T>(broker: &Broker, req: &Request<T>, client_id: &str, rpc: &'static str) -> Caller {
        // A request a node passed on: the address and certificate of the client that node
        // served (it vouched for them, see `forward::NodeGate`).
        let (from, certificate) = match req.extensions().get::<super::forward::Hop>() {
            Some(hop) => (hop.client_addr, hop.client_cn.as_deref()),
            None => {
                let conn = req.extensions().get::<ConnInfo>();
                (conn.and_then(|c| c.remote).map(|a| a.ip()), conn.and_then(|c| c.client_cn.as_deref()))
            }
        };
        let auth = broker.auth();
        if !auth.enabled() {
            return Caller { identity: Ok(None), from };
        }
        let header = |name: &str| req.metadata().get(name).and_then(|v| v.to_str().ok());
        let now = now_ms();
        let identity = match (header("authorization"), certificate) {
            // A client certificate stands for the signature when the request carries none.
            (None, Some(cn)) => auth.authenticate_certificate(cn),
            (authorization, _) => auth.authenticate(authorization, header(DATE_HEADER), now),
        };
        let identity = identity.map_err(|f| {
            broker.metrics().auth_failures.add(&[rpc], 1);
            if auth.log_failure_now(now) {
                tracing::warn!(
                    client_id,
                    rpc,
                    source = ?from,
                    access_key = f.access_key.as_deref().unwrap_or(""),
                    reason = f.reason,
                    "authentication failed"
                );
            }
            f.reason
        });
        Caller { identity, from }
    }

    /// The authenticated user (`None` when authentication is off).
    pub fn user(&self) -> Result<Option<&Arc<User>>, BrokerError> {
        match &self.identity {
            Ok(u) => Ok(u.as_ref()),
            Err(why) => Err(BrokerError::Unauthorized(why.clone())),
        }
    }

    /// Whether the request is authenticated (or authentication is off).
    pub fn authenticated(&self) -> bool {
        self.identity.is_ok()
    }

    /// Checks that the caller may do every `(resource, action)` of `needs`.
    pub fn allow(&self, needs: &[(Resource<'_>, Action)]) -> Result<(), BrokerError> {
        let Some(user) = self.user()? else { return Ok(()) };
        needs.iter().try_for_each(|(r, a)| Auth::authorize(user, *r, *a, self.from))
    }

    /// Checks that the caller may do at least one `(resource, action)` of `options`; the
    /// refusal names the first.
    pub fn allow_any(&self, options: &[(Resource<'_>, Action)]) -> Result<(), BrokerError> {
        let Some(user) = self.user()? else { return Ok(()) };
        match options.iter().find(|(r, a)| Auth::allowed(user, *r, *a, self.from)).or(options.first()) {
            Some((r, a)) => Auth::authorize(user, *r, *a, self.from),
            None => Ok(()),
        }
    }
}
