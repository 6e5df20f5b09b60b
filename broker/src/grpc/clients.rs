//! Connected clients: their last sign of life, their Settings, their live Telemetry streams, and
//! the check-backs written to those streams and not answered yet.
//!
//! A client id (`x-mq-client-id`) may hold several Telemetry streams (the Rust client opens one
//! per address spelling and closes extra ones soon after). Only streams that are still open are
//! kept, oldest first: the oldest is the access-point stream, the one the Rust client keeps.
//!
//! A stream whose check-back got no answer within the check timeout is *silent*: later checks
//! try every other stream first, and a client whose streams are all silent and who showed no
//! other sign of life for the liveness window is swept (its streams are ended). An answer from
//! a stream's client makes it responsive again.

use crate::auth::acl::{Action, Resource};
use crate::auth::{Auth, User};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use txmq_proto::v2;

/// Where server commands for one Telemetry stream are written.
pub type CommandSender = mpsc::Sender<Result<v2::TelemetryCommand, tonic::Status>>;

/// A client counts as alive while it showed a sign of life (heartbeat, request, stream message)
/// this recently: three Rust-client heartbeat intervals (30 s each).
pub const ALIVE_WINDOW: Duration = Duration::from_secs(90);

/// A live Telemetry stream of a client.
#[derive(Clone)]
pub struct StreamHandle {
    pub id: u64,
    pub tx: CommandSender,
    /// Ends the stream from the broker's side (the client was swept).
    pub cancel: CancellationToken,
}

/// The user a Telemetry stream authenticated as (authentication on), and from where.
pub type Identity = Option<(Arc<User>, Option<IpAddr>)>;

struct Stream {
    handle: StreamHandle,
    /// A check written to it went unanswered past the check timeout.
    silent: bool,
    /// Who opened it: check-backs of a topic go only to streams whose user may publish to it
    /// (a client id is only a name any client may send; the stream's own user decides).
    identity: Identity,
}

struct Client {
    last_seen: Instant,
    settings: Option<v2::Settings>,
    streams: Vec<Stream>,
    /// Topics it sent transactional messages to: it is one of the topic's transactional
    /// producers (RocketMQ's producer group of a gRPC producer is its topic).
    sends_txn: HashSet<String>,
    /// Topics it announced in its Settings: it may answer check-backs for them.
    declared: HashSet<String>,
}

impl Client {
    fn new() -> Self {
        Self {
            last_seen: Instant::now(),
            settings: None,
            streams: Vec::new(),
            sends_txn: HashSet::new(),
            declared: HashSet::new(),
        }
    }
}

/// One client as operators see it ([`Clients::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientView {
    pub client_id: String,
    /// Its Settings' client type (`PRODUCER`, `SIMPLE_CONSUMER`, ...); empty before Settings.
    pub kind: String,
    /// A consumer's group.
    pub group: String,
    /// Topics it sends transactional messages to or declared.
    pub topics: Vec<String>,
    pub language: String,
    pub version: String,
    pub platform: String,
    pub last_seen_ms: i64,
    pub streams: usize,
    /// Has a live stream and showed a sign of life within [`ALIVE_WINDOW`].
    pub online: bool,
}

/// A check written to a stream and not answered yet.
struct PendingCheck {
    client: String,
    stream: u64,
    topic: String,
    sent: Instant,
}

/// A check that went unanswered: its stream is now silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswered {
    pub transaction_id: String,
    pub client: String,
    pub stream: u64,
    pub topic: String,
}

/// Sort key of a check candidate, best first: silent?, where in the clients to avoid (0: not
/// one of them), originator (0) / the topic's producer (1) / a declarer (2), most recently
/// seen, oldest stream.
type CandidateRank = (bool, usize, u8, std::cmp::Reverse<Instant>, u64);

/// The registry of clients, keyed by client id.
#[derive(Default)]
pub struct Clients {
    inner: Mutex<HashMap<String, Client>>,
    next_stream: AtomicU64,
    /// Requests in progress per client id.
    inflight: Mutex<HashMap<String, usize>>,
    /// Checks written and not answered, by transaction id (one per pending transaction).
    checks: Mutex<HashMap<String, PendingCheck>>,
}

/// One request in progress for a client; released when dropped.
pub struct InFlight<'a> {
    clients: &'a Clients,
    client_id: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut m = crate::sync::lock(&self.clients.inflight);
        if let Some(n) = m.get_mut(&self.client_id) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.client_id);
            }
        }
    }
}

impl Clients {
    fn with<R>(&self, client_id: &str, f: impl FnOnce(&mut Client) -> R) -> R {
        let mut inner = crate::sync::lock(&self.inner);
        let client = inner.entry(client_id.to_string()).or_insert_with(Client::new);
        client.last_seen = Instant::now();
        f(client)
    }

    /// Admits one more request of `client_id`, unless it already has `max` in progress.
    pub fn admit(&self, client_id: &str, max: usize) -> Option<InFlight<'_>> {
        let mut m = crate::sync::lock(&self.inflight);
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

    /// Registers a new Telemetry stream opened by `identity`; returns its handle (id and cancel
    /// token).
    pub fn open_stream(&self, client_id: &str, tx: CommandSender, identity: Identity) -> StreamHandle {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed) + 1;
        let handle = StreamHandle { id, tx, cancel: CancellationToken::new() };
        self.with(client_id, |c| c.streams.push(Stream { handle: handle.clone(), silent: false, identity }));
        handle
    }

    /// Forgets a stream that ended.
    pub fn close_stream(&self, client_id: &str, stream_id: u64) {
        if let Some(c) = crate::sync::lock(&self.inner).get_mut(client_id) {
            c.streams.retain(|s| s.handle.id != stream_id);
        }
    }

    /// Marks stream `stream` of `client` silent (a check went unanswered) or responsive.
    fn set_silent(&self, client: &str, stream: u64, silent: bool) {
        let mut inner = crate::sync::lock(&self.inner);
        if let Some(s) = inner.get_mut(client).and_then(|c| c.streams.iter_mut().find(|s| s.handle.id == stream)) {
            s.silent = silent;
        }
    }

    pub fn set_settings(&self, client_id: &str, settings: v2::Settings) {
        self.with(client_id, |c| {
            // A client's settings name all the topics it publishes to now: the latest replace
            // those before (so they stay bounded); names that are not topics' are not kept.
            if let Some(v2::settings::PubSub::Publishing(p)) = &settings.pub_sub {
                c.declared = p
                    .topics
                    .iter()
                    .filter(|t| crate::topics::validate_name(&t.name).is_ok())
                    .map(|t| t.name.clone())
                    .collect();
            }
            c.settings = Some(settings);
        });
    }

    /// Records that a client publishes transactional messages to `topic`.
    pub fn register_topic(&self, client_id: &str, topic: &str) {
        self.with(client_id, |c| {
            if !c.sends_txn.contains(topic) {
                c.sends_txn.insert(topic.to_string());
            }
        });
    }

    /// `(topic, client id)` of every client with a live stream that produces to (sent
    /// transactional messages to, or declared) the topic: who could answer its check-backs.
    pub fn producers(&self) -> std::collections::BTreeSet<(String, String)> {
        let inner = crate::sync::lock(&self.inner);
        let mut out = std::collections::BTreeSet::new();
        for (id, c) in inner.iter().filter(|(_, c)| !c.streams.is_empty()) {
            for topic in c.sends_txn.iter().chain(&c.declared) {
                out.insert((topic.clone(), id.clone()));
            }
        }
        out
    }

    /// Streams a check of a transaction of `topic` sent by `originator` may go to, best first:
    /// the originator's, then those of the topic's other transactional producers (most recently
    /// seen first), then those of clients that only declared the topic; within that order,
    /// responsive streams before silent ones, and the clients in `avoid` (whose checks brought
    /// no decision, the most recent last) after every other client, in that order.
    pub fn check_candidates(&self, topic: &str, originator: &str, avoid: &[&str]) -> Vec<(String, StreamHandle)> {
        let inner = crate::sync::lock(&self.inner);
        let mut ranked: Vec<(CandidateRank, String, StreamHandle)> = Vec::new();
        for (id, c) in inner.iter() {
            let rank = if id == originator {
                0
            } else if c.sends_txn.contains(topic) {
                1
            } else if c.declared.contains(topic) {
                2
            } else {
                continue;
            };
            let avoided = avoid.iter().position(|a| *a == id.as_str()).map_or(0, |i| i + 1);
            for s in &c.streams {
                if let Some((user, from)) = &s.identity {
                    if !Auth::allowed(user, Resource::topic(topic), Action::Pub, *from) {
                        continue;
                    }
                }
                let key = (s.silent, avoided, rank, std::cmp::Reverse(c.last_seen), s.handle.id);
                ranked.push((key, id.clone(), s.handle.clone()));
            }
        }
        ranked.sort_by_key(|r| r.0);
        ranked.into_iter().map(|(_, id, h)| (id, h)).collect()
    }

    /// Records a check of `transaction_id` written to `stream` of `client`.
    pub fn check_sent(&self, transaction_id: &str, topic: &str, client: &str, stream: u64) {
        let check = PendingCheck { client: client.to_string(), stream, topic: topic.to_string(), sent: Instant::now() };
        crate::sync::lock(&self.checks).insert(transaction_id.to_string(), check);
    }

    /// Records `client`'s answer to a check of `transaction_id`: when the check was written to
    /// that client, it is no longer waited for and its stream is responsive again. An answer
    /// from any other client changes neither (it may not clear another's pending check).
    pub fn check_answered(&self, transaction_id: &str, client: &str) {
        let check = {
            let mut checks = crate::sync::lock(&self.checks);
            match checks.get(transaction_id) {
                Some(c) if c.client == client => checks.remove(transaction_id),
                _ => None,
            }
        };
        if let Some(check) = check {
            self.set_silent(&check.client, check.stream, false);
        }
    }

    /// Ends the wait for checks older than `timeout`: their streams become silent. Returns
    /// them, for logs and metrics.
    pub fn expire_checks(&self, timeout: Duration) -> Vec<Unanswered> {
        let expired: Vec<(String, PendingCheck)> = {
            let mut m = crate::sync::lock(&self.checks);
            let ids: Vec<String> =
                m.iter().filter(|(_, c)| c.sent.elapsed() >= timeout).map(|(id, _)| id.clone()).collect();
            ids.iter().filter_map(|id| m.remove_entry(id)).collect()
        };
        for (_, check) in &expired {
            self.set_silent(&check.client, check.stream, true);
        }
        expired
            .into_iter()
            .map(|(id, c)| Unanswered { transaction_id: id, client: c.client, stream: c.stream, topic: c.topic })
            .collect()
    }

    pub fn settings(&self, client_id: &str) -> Option<v2::Settings> {
        crate::sync::lock(&self.inner).get(client_id)?.settings.clone()
    }

    /// Live streams of a client, oldest first.
    pub fn streams(&self, client_id: &str) -> Vec<StreamHandle> {
        let inner = crate::sync::lock(&self.inner);
        inner.get(client_id).map(|c| c.streams.iter().map(|s| s.handle.clone()).collect()).unwrap_or_default()
    }

    /// Whether the client showed a sign of life within `window`. An open stream alone does not
    /// count: a peer that vanished without closing keeps its streams until keepalive ends them.
    pub fn alive(&self, client_id: &str, window: Duration) -> bool {
        let inner = crate::sync::lock(&self.inner);
        inner.get(client_id).is_some_and(|c| c.last_seen.elapsed() <= window)
    }

    /// Forgets clients with no live stream that showed no sign of life for `idle`, and ends
    /// the streams of clients whose streams are all silent and who showed no sign of life for
    /// `alive` (the broker uses [`ALIVE_WINDOW`]). Returns how many clients were forgotten.
    pub fn sweep(&self, idle: Duration, alive: Duration) -> usize {
        let mut inner = crate::sync::lock(&self.inner);
        let before = inner.len();
        inner.retain(|id, c| {
            let all_silent = !c.streams.is_empty() && c.streams.iter().all(|s| s.silent);
            if all_silent && c.last_seen.elapsed() > alive {
                tracing::info!(client_id = id, streams = c.streams.len(), "ending the streams of a silent client");
                for s in &c.streams {
                    s.handle.cancel.cancel();
                }
                return false;
            }
            !c.streams.is_empty() || c.last_seen.elapsed() < idle
        });
        before - inner.len()
    }

    /// Drops everything known about a client that announced its termination.
    /// A client ends, told by `by` (`None`: authentication is off): the streams `by` opened
    /// under its id go, and the client itself once no stream of another user is left (a client
    /// id is only a name: one user must not end another's client). Returns whether the client
    /// was forgotten.
    pub fn terminate(&self, client_id: &str, by: Option<&User>) -> bool {
        let mut inner = crate::sync::lock(&self.inner);
        let Some(c) = inner.get_mut(client_id) else { return true };
        if let Some(by) = by {
            c.streams.retain(|s| s.identity.as_ref().is_some_and(|(u, _)| u.name != by.name));
            if !c.streams.is_empty() {
                return false;
            }
        }
        inner.remove(client_id);
        true
    }

    /// What the registry knows about every client, for operators.
    pub fn snapshot(&self) -> Vec<ClientView> {
        let inner = crate::sync::lock(&self.inner);
        let now = crate::clock::now_ms();
        let mut out: Vec<ClientView> = inner
            .iter()
            .map(|(id, c)| {
                let mut topics: Vec<String> = c.sends_txn.iter().chain(&c.declared).cloned().collect();
                topics.sort();
                topics.dedup();
                let settings = c.settings.as_ref();
                let ua = settings.and_then(|s| s.user_agent.as_ref());
                ClientView {
                    client_id: id.clone(),
                    kind: settings
                        .and_then(|s| s.client_type)
                        .and_then(|t| v2::ClientType::try_from(t).ok())
                        .map(|t| t.as_str_name().to_string())
                        .unwrap_or_default(),
                    group: match settings.and_then(|s| s.pub_sub.as_ref()) {
                        Some(v2::settings::PubSub::Subscription(sub)) => {
                            sub.group.as_ref().map(|g| g.name.clone()).unwrap_or_default()
                        }
                        _ => String::new(),
                    },
                    topics,
                    language: ua
                        .and_then(|u| v2::Language::try_from(u.language).ok())
                        .map(|l| l.as_str_name().to_string())
                        .unwrap_or_default(),
                    version: ua.map(|u| u.version.clone()).unwrap_or_default(),
                    platform: ua.map(|u| u.platform.clone()).unwrap_or_default(),
                    last_seen_ms: now - c.last_seen.elapsed().as_millis() as i64,
                    streams: c.streams.len(),
                    online: !c.streams.is_empty() && c.last_seen.elapsed() <= ALIVE_WINDOW,
                }
            })
            .collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }

    /// Number of clients seen and not terminated.
    pub fn len(&self) -> usize {
        crate::sync::lock(&self.inner).len()
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
        c.open_stream("streaming", tx, None);
        assert_eq!(c.sweep(Duration::ZERO, ALIVE_WINDOW), 1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.streams("streaming").len(), 1);

        let a = c.admit("x", 2).unwrap();
        let _b = c.admit("x", 2).unwrap();
        assert!(c.admit("x", 2).is_none());
        assert!(c.admit("y", 2).is_some());
        drop(a);
        assert!(c.admit("x", 2).is_some());
    }

    #[test]
    fn check_backs_go_only_to_clients_whose_user_may_publish_to_the_topic() {
        use crate::auth::{entry, UserKind};
        let c = Clients::default();
        let (tx, _rx) = mpsc::channel(4);
        let user = |name: &str, grant: &str| {
            Arc::new(User::new(name, UserKind::Normal, "secret-123", vec![entry(grant, "Pub", true, &[]).unwrap()]))
        };
        let local = Some("127.0.0.1".parse().unwrap());
        let (a, b) = (user("a", "Topic:orders"), user("b", "Topic:payments"));
        let allowed = c.open_stream("allowed", tx.clone(), Some((a.clone(), local)));
        let _other = c.open_stream("other-topic-only", tx.clone(), Some((b.clone(), local)));
        c.register_topic("allowed", "orders");
        c.register_topic("other-topic-only", "orders");
        let ids: Vec<_> = c.check_candidates("orders", "other-topic-only", &[]).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["allowed"], "even the originator is skipped once its user may not publish");
        assert_eq!(c.check_candidates("orders", "x", &[])[0].1.id, allowed.id);
        // b opens a stream under a's client id: it gets none of a's checks, and its termination
        // ends only its own stream; a's ends a's, and the client once none is left.
        let _hijack = c.open_stream("allowed", tx, Some((b.clone(), local)));
        let streams: Vec<_> = c.check_candidates("orders", "allowed", &[]).into_iter().map(|(_, h)| h.id).collect();
        assert_eq!(streams, [allowed.id], "a stream of another user under the same client id");
        assert!(!c.terminate("allowed", Some(&a)), "b's stream is left");
        assert!(c.streams("allowed").iter().all(|s| s.id != allowed.id), "a's stream is gone");
        assert!(c.terminate("allowed", Some(&b)));
        assert!(c.streams("allowed").is_empty());
    }

    #[test]
    fn an_open_stream_alone_does_not_keep_a_client_alive() {
        let c = Clients::default();
        let (tx, _rx) = mpsc::channel(1);
        c.open_stream("push-consumer", tx, None);
        assert!(c.alive("push-consumer", Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!c.alive("push-consumer", Duration::from_millis(1)), "no sign of life within the window");
    }

    #[test]
    fn unanswered_checks_send_the_next_one_elsewhere_until_an_answer() {
        let c = Clients::default();
        let (tx, _rx) = mpsc::channel(4);
        let p1 = c.open_stream("p1", tx.clone(), None);
        let p2 = c.open_stream("p2", tx.clone(), None);
        let other = c.open_stream("declares", tx, None);
        c.register_topic("p1", "orders");
        c.register_topic("p2", "orders");
        c.set_settings(
            "declares",
            v2::Settings {
                pub_sub: Some(v2::settings::PubSub::Publishing(v2::Publishing {
                    topics: vec![v2::Resource { resource_namespace: String::new(), name: "orders".into() }],
                    ..Default::default()
                })),
                ..Default::default()
            },
        );
        let order = |avoid: &[&str]| {
            c.check_candidates("orders", "p1", avoid).into_iter().map(|(_, h)| h.id).collect::<Vec<_>>()
        };
        assert_eq!(order(&[]), [p1.id, p2.id, other.id], "originator, its topic's producers, declarers");
        assert_eq!(order(&["p1"]), [p2.id, other.id, p1.id]);
        assert_eq!(order(&["p2", "p1"]), [other.id, p2.id, p1.id], "the least recently undecided first");
        c.check_sent("t1", "orders", "p1", p1.id);
        let expired = c.expire_checks(Duration::ZERO);
        assert_eq!(expired.len(), 1);
        assert_eq!(order(&[]), [p2.id, other.id, p1.id], "a silent stream is tried last");
        c.check_sent("t2", "orders", "p1", p1.id);
        c.check_answered("t2", "p1");
        assert_eq!(order(&[]), [p1.id, p2.id, other.id], "an answer makes it responsive again");
    }

    #[test]
    fn only_the_client_a_check_went_to_clears_it() {
        let c = Clients::default();
        let (tx, _rx) = mpsc::channel(4);
        let asked = c.open_stream("asked", tx, None);
        c.check_sent("t1", "orders", "asked", asked.id);
        c.check_answered("t1", "someone-else");
        assert_eq!(c.expire_checks(Duration::ZERO).len(), 1, "still waited for");
        c.check_sent("t2", "orders", "asked", asked.id);
        c.check_answered("t2", "asked");
        assert!(c.expire_checks(Duration::ZERO).is_empty());
    }

    #[test]
    fn a_client_whose_streams_are_all_silent_is_swept_and_its_streams_ended() {
        let c = Clients::default();
        let (tx, _rx) = mpsc::channel(4);
        let silent = c.open_stream("silent", tx.clone(), None);
        let answering = c.open_stream("answering", tx, None);
        c.check_sent("t1", "orders", "silent", silent.id);
        c.check_sent("t2", "orders", "answering", answering.id);
        c.check_answered("t2", "answering");
        c.expire_checks(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.sweep(Duration::from_secs(600), Duration::from_millis(1)), 1);
        assert!(silent.cancel.is_cancelled(), "the silent client's stream is ended");
        assert!(!answering.cancel.is_cancelled());
        assert!(c.streams("silent").is_empty());
        assert_eq!(c.streams("answering").len(), 1);
    }
}
