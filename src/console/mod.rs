//! `txmq console`: a web console over a broker's admin API (standalone, or any node of a
//! cluster). Server-rendered HTML, no JavaScript, assets compiled into the binary: every page
//! reads with scripting off, and actions are plain form posts with a required reason and a
//! confirmation step. The broker records each action in its audit log.
//!
//! - `pages`: the read-only pages (overview, in-doubt transactions, groups, messages, dead
//!   letters, audit log).
//! - `actions`: commit / rollback / resume, bulk decisions, dead-letter resends.
//! - `layout`: the page frame, tables and formatting.

mod actions;
mod layout;
mod pages;

use crate::admin::Admin;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use txmq_proto::admin as pb;

/// Options of `txmq console`.
#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// Where to serve the console (keep it on a trusted interface: anyone who reaches it acts
    /// with the console's broker credentials).
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: String,
    /// Who operates this console, as the audit log records it (`NAME via console`).
    #[arg(long, env = "TXMQ_OPERATOR")]
    operator: Option<String>,
    /// A host name browsers may reach the console by (repeat for more). IP addresses and
    /// `localhost` always may; any other name is refused, so that a web page whose name an
    /// attacker points at this address (DNS rebinding) cannot use it.
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,
}

/// What every handler shares.
pub(crate) struct Console {
    broker: String,
    /// The audit log's actor for this console's actions.
    actor: String,
    /// One connection to the broker, made on first use and made again after a failure.
    admin: Mutex<Option<Admin>>,
    /// Message counters read every few seconds, for the overview's rates.
    rates: Mutex<Rates>,
    /// Host names besides IP addresses and `localhost` (`--allowed-host`), lowercase.
    allowed_hosts: Vec<String>,
}

/// The two latest readings of the broker's message counters.
#[derive(Debug, Default, Clone)]
pub(crate) struct Rates {
    /// `(when, messages in, messages out)`.
    last: Option<(std::time::Instant, u64, u64)>,
    /// Messages per second in and out between the last two readings.
    pub per_second: Option<(f64, f64)>,
}

type Shared = Arc<Console>;

/// Serves the console until the process is stopped.
pub async fn run(broker: &str, args: ConsoleArgs) -> anyhow::Result<()> {
    let actor = match args.operator {
        Some(name) => format!("{name} via console"),
        None => crate::admin::operator("console"),
    };
    let console = Arc::new(Console {
        broker: broker.to_string(),
        actor,
        admin: Mutex::new(None),
        rates: Mutex::new(Rates::default()),
        allowed_hosts: args.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
    });
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    // Printed for operators and for tests that listen on port 0.
    println!("txmq console on http://{addr} (broker {broker})");
    tokio::spawn(sample_rates(console.clone()));
    axum::serve(listener, router(console)).await?;
    Ok(())
}

fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/transactions", get(pages::inbox))
        .route("/transactions/{id}", get(pages::transaction))
        .route("/transactions/{id}/action", post(actions::decide))
        .route("/transactions-bulk", post(actions::bulk))
        .route("/groups", get(pages::groups))
        .route("/groups/{name}", get(pages::group))
        .route("/messages", get(pages::messages))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/dead-letters/resend", post(actions::resend))
        .route("/audit", get(pages::audit))
        .route("/style.css", get(layout::stylesheet))
        .layer(axum::middleware::from_fn_with_state(console.clone(), known_host))
        .with_state(console)
}

/// Refuses a request whose `Host` is a name this console was not told of: a page elsewhere
/// whose name is made to resolve here (DNS rebinding) is a same-origin page to the browser, and
/// would read and post as the operator.
async fn known_host(
    axum::extract::State(console): axum::extract::State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req.headers().get("host").map(|h| h.to_str().unwrap_or("?"));
    match host {
        Some(h) if !host_allowed(h, &console.allowed_hosts) => PageError::forbidden(format!(
            "this console does not answer to the host name {h:?}; start it with --allowed-host to allow one"
        ))
        .into_response(),
        _ => next.run(req).await,
    }
}

/// Whether `host` (a `Host` header: a name or address, maybe with a port) is an IP address,
/// `localhost`, or one of `allowed` (lowercase).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6 address]:port
        Some(rest) => return rest.split(']').next().is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok()),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        },
    };
    let name = name.to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || allowed.contains(&name)
}

impl Console {
    /// The admin API client (cheap clone of one connection).
    async fn admin(&self) -> Result<Admin, PageError> {
        let mut slot = self.admin.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = crate::admin::connect(&self.broker).await.map_err(|e| PageError::broker(format!("{e:#}")))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets the connection after a transport failure, so the next page connects again.
    async fn reset(&self) {
        *self.admin.lock().await = None;
    }
}

/// Reads the broker's message counters every 5 s; the overview shows the rates between the
/// two latest readings.
async fn sample_rates(console: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Ok(mut admin) = console.admin().await else { continue };
        let Ok(r) = admin.broker_status(pb::BrokerStatusRequest {}).await else {
            console.reset().await;
            continue;
        };
        let s = r.into_inner();
        let now = std::time::Instant::now();
        let mut rates = console.rates.lock().await;
        if let Some((at, i, o)) = rates.last {
            let secs = now.duration_since(at).as_secs_f64().max(0.001);
            rates.per_second =
                Some((s.messages_in.saturating_sub(i) as f64 / secs, s.messages_out.saturating_sub(o) as f64 / secs));
        }
        rates.last = Some((now, s.messages_in, s.messages_out));
    }
}

/// A page that could not be produced: the status and what to tell the operator.
#[derive(Debug)]
pub(crate) struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    fn broker(message: String) -> Self {
        Self { status: StatusCode::BAD_GATEWAY, message }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, message: message.into() }
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Self { status: StatusCode::FORBIDDEN, message: message.into() }
    }
}

impl From<tonic::Status> for PageError {
    fn from(s: tonic::Status) -> Self {
        PageError::broker(format!("the broker answered {:?}: {}", s.code(), s.message()))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = match self.status {
            StatusCode::BAD_GATEWAY => "Broker unavailable",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Refused",
            _ => "Cannot do that",
        };
        let body = layout::page(
            title,
            "",
            maud::html! {
                p.error { (self.message) }
                p { a href="/" { "Overview" } " · " a href="/transactions" { "In-doubt transactions" } }
            },
        );
        (self.status, body).into_response()
    }
}

/// An admin status that is not OK, as a page error (NOT_FOUND stays a 404).
fn checked(status: Option<pb::Status>) -> Result<(), PageError> {
    match status {
        Some(s) if s.code == pb::StatusCode::Ok as i32 => Ok(()),
        Some(s) if s.code == pb::StatusCode::NotFound as i32 => Err(PageError::not_found(s.message)),
        Some(s) => {
            let code = pb::StatusCode::try_from(s.code).map(|c| c.as_str_name()).unwrap_or("UNKNOWN");
            Err(PageError::bad_request(format!("{code}: {}", s.message)))
        }
        None => Err(PageError::broker("the broker answered without a status".into())),
    }
}

/// Refuses a form post sent from another site (a page elsewhere posting to this console in
/// the operator's browser): browsers name the posting page's origin, which must be this one.
fn same_origin(headers: &HeaderMap) -> Result<(), PageError> {
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("");
    if let Some(site) = headers.get("sec-fetch-site").and_then(|h| h.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return Err(PageError::forbidden(format!("a form posted from another site ({site}) was refused")));
        }
    }
    match headers.get("origin").and_then(|h| h.to_str().ok()) {
        // No origin: not a browser's form post (browsers name it on every post).
        None => Ok(()),
        // An opaque origin (a sandboxed frame, a file): never this console's own page.
        Some("null") => Err(PageError::forbidden("a form posted from an opaque origin was refused")),
        Some(origin) => {
            let origin_host = origin.split("://").nth(1).unwrap_or(origin);
            if origin_host == host {
                Ok(())
            } else {
                Err(PageError::forbidden(format!("a form posted from {origin} was refused")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn posts_from_this_console_pass_and_from_other_sites_are_refused() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8082"), ("origin", "http://127.0.0.1:8082")])).is_ok());
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8082")])).is_ok());
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8082"), ("origin", "http://evil.example")])).is_err());
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8082"), ("sec-fetch-site", "cross-site")])).is_err());
        assert!(same_origin(&headers(&[("host", "10.0.0.5:8082"), ("origin", "null")])).is_err(), "a sandboxed frame");
    }

    #[test]
    fn only_addresses_localhost_and_allowed_names_are_answered() {
        let allowed = vec!["ops.example".to_string()];
        for ok in ["127.0.0.1:8082", "10.1.2.3", "[::1]:8082", "localhost:8082", "LOCALHOST", "ops.example:8082"] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for refused in ["attacker.example:8082", "evil", "ops.example.attacker.example", "[not-an-address]:80", ""] {
            assert!(!host_allowed(refused, &allowed), "{refused}");
        }
    }
}
