//! Connected clients: their last sign of life, their Settings, and their live Telemetry streams.
//!
//! A client id (`x-mq-client-id`) may hold several Telemetry streams (the Rust client opens one
//! per address spelling and closes extra ones soon after). Only streams that are still open are
//! kept, oldest first: the oldest is the access-point stream, the one the Rust client keeps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::mpsc;
use txmq_proto::v2;

/// Where server commands for one Telemetry stream are written.
pub type CommandSender = mpsc::Sender<Result<v2::TelemetryCommand, tonic::Status>>;

/// A live Telemetry stream of a client.
#[derive(Clone)]
pub struct StreamHandle {
    pub id: u64,
    pub tx: CommandSender,
}

struct Client {
    last_seen: Instant,
    settings: Option<v2::Settings>,
    streams: Vec<StreamHandle>,
}

impl Client {
    fn new() -> Self {
        Self {
            last_seen: Instant::now(),
            settings: None,
            streams: Vec::new(),
        }
    }
}

/// The registry of clients, keyed by client id.
#[derive(Default)]
pub struct Clients {
    inner: Mutex<HashMap<String, Client>>,
    next_stream: AtomicU64,
}

impl Clients {
    fn with<R>(&self, client_id: &str, f: impl FnOnce(&mut Client) -> R) -> Option<R> {
        let mut inner = self.inner.lock().ok()?;
        let client = inner
            .entry(client_id.to_string())
            .or_insert_with(Client::new);
        client.last_seen = Instant::now();
        Some(f(client))
    }

    /// Records any sign of life (heartbeat, send, stream message).
    pub fn touch(&self, client_id: &str) {
        self.with(client_id, |_| ());
    }

    /// Registers a new Telemetry stream; returns its id.
    pub fn open_stream(&self, client_id: &str, tx: CommandSender) -> u64 {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        self.with(client_id, |c| c.streams.push(StreamHandle { id, tx }));
        id
    }

    /// Forgets a stream that ended.
    pub fn close_stream(&self, client_id: &str, stream_id: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(c) = inner.get_mut(client_id) {
                c.streams.retain(|s| s.id != stream_id);
            }
        }
    }

    pub fn set_settings(&self, client_id: &str, settings: v2::Settings) {
        self.with(client_id, |c| c.settings = Some(settings));
    }

    pub fn settings(&self, client_id: &str) -> Option<v2::Settings> {
        self.inner.lock().ok()?.get(client_id)?.settings.clone()
    }

    /// Live streams of a client, oldest first.
    pub fn streams(&self, client_id: &str) -> Vec<StreamHandle> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        inner
            .get(client_id)
            .map(|c| c.streams.clone())
            .unwrap_or_default()
    }

    /// Whether the client showed a sign of life within `window` or holds an open stream.
    pub fn alive(&self, client_id: &str, window: std::time::Duration) -> bool {
        let Ok(inner) = self.inner.lock() else {
            return false;
        };
        inner
            .get(client_id)
            .is_some_and(|c| !c.streams.is_empty() || c.last_seen.elapsed() <= window)
    }

    /// Drops everything known about a client that announced its termination.
    pub fn terminate(&self, client_id: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.remove(client_id);
        }
    }

    /// Number of clients seen and not terminated.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
