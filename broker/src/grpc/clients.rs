//! Connected clients: their last sign of life, their Settings, and their live Telemetry streams.
//!
//! A client id (`x-mq-client-id`) may hold several Telemetry streams (the Rust client opens one
//! per address spelling and closes extra ones soon after). Only streams that are still open are
//! kept, oldest first: the oldest is the access-point stream, the one the Rust client keeps.

use std::collections::{HashMap, HashSet};
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
    /// Topics it publishes to (from its Settings, or transactional sends): it can answer
    /// check-backs for them.
    topics: HashSet<String>,
}

impl Client {
    fn new() -> Self {
        Self { last_seen: Instant::now(), settings: None, streams: Vec::new(), topics: HashSet::new() }
    }
}

/// The registry of clients, keyed by client id.
#[derive(Default)]
pub struct Clients {
    inner: Mutex<HashMap<String, Client>>,
    next_stream: AtomicU64,
    /// Requests in progress per client id.
    inflight: Mutex<HashMap<String, usize>>,
}

/// One request in progress for a client; released when dropped.
pub struct InFlight<'a> {
    clients: &'a Clients,
    client_id: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.clients.inflight.lock() {
            if let Some(n) = m.get_mut(&self.client_id) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.client_id);
                }
            }
        }
    }
}

impl Clients {
    fn with<R>(&self, client_id: &str, f: impl FnOnce(&mut Client) -> R) -> Option<R> {
        let mut inner = self.inner.lock().ok()?;
        let client = inner.entry(client_id.to_string()).or_insert_with(Client::new);
        client.last_seen = Instant::now();
        Some(f(client))
    }

    /// Admits one more request of `client_id`, unless it already has `max` in progress.
    pub fn admit(&self, client_id: &str, max: usize) -> Option<InFlight<'_>> {
        let mut m = self.inflight.lock().ok()?;
        let n = m.entry(client_id.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(InFlight { clients: self, client_id: client_id.to_string() })
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
        self.with(client_id, |c| {
            if let Some(v2::settings::PubSub::Publishing(p)) = &settings.pub_sub {
                c.topics.extend(p.topics.iter().map(|t| t.name.clone()));
            }
            c.settings = Some(settings);
        });
    }

    /// Records that a client publishes transactional messages to `topic`.
    pub fn register_topic(&self, client_id: &str, topic: &str) {
        self.with(client_id, |c| {
            if !c.topics.contains(topic) {
                c.topics.insert(topic.to_string());
            }
        });
    }

    /// Clients with a live stream that publish to `topic`, most recently seen first.
    pub fn producers_of(&self, topic: &str) -> Vec<String> {
        let Ok(inner) = self.inner.lock() else { return Vec::new() };
        let mut v: Vec<(&String, Instant)> = inner
            .iter()
            .filter(|(_, c)| !c.streams.is_empty() && c.topics.contains(topic))
            .map(|(id, c)| (id, c.last_seen))
            .collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.1));
        v.into_iter().map(|(id, _)| id.clone()).collect()
    }

    pub fn settings(&self, client_id: &str) -> Option<v2::Settings> {
        self.inner.lock().ok()?.get(client_id)?.settings.clone()
    }

    /// Live streams of a client, oldest first.
    pub fn streams(&self, client_id: &str) -> Vec<StreamHandle> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        inner.get(client_id).map(|c| c.streams.clone()).unwrap_or_default()
    }

    /// Whether the client showed a sign of life within `window` or holds an open stream.
    pub fn alive(&self, client_id: &str, window: std::time::Duration) -> bool {
        let Ok(inner) = self.inner.lock() else {
            return false;
        };
        inner.get(client_id).is_some_and(|c| !c.streams.is_empty() || c.last_seen.elapsed() <= window)
    }

    /// Forgets clients with no live stream that showed no sign of life for `idle`.
    pub fn sweep(&self, idle: std::time::Duration) -> usize {
        let Ok(mut inner) = self.inner.lock() else { return 0 };
        let before = inner.len();
        inner.retain(|_, c| !c.streams.is_empty() || c.last_seen.elapsed() < idle);
        before - inner.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_clients_without_streams_are_swept_and_limits_count_per_client() {
        let c = Clients::default();
        c.touch("idle");
        let (tx, _rx) = mpsc::channel(1);
        c.open_stream("streaming", tx);
        assert_eq!(c.sweep(std::time::Duration::ZERO), 1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.streams("streaming").len(), 1);

        let a = c.admit("x", 2).unwrap();
        let _b = c.admit("x", 2).unwrap();
        assert!(c.admit("x", 2).is_none());
        assert!(c.admit("y", 2).is_some());
        drop(a);
        assert!(c.admit("x", 2).is_some());
    }
}
