//! Lite subscriptions: which lite topics of a LITE topic each lite consumer wants now.
//!
//! A lite consumer (the Python client's `LiteSimpleConsumer` / `LitePushConsumer`) binds to one
//! LITE topic and names the lite topics it wants with SyncLiteSubscription: PARTIAL_ADD and
//! PARTIAL_REMOVE change its set, COMPLETE_ADD replaces it (the clients send their whole set
//! this way every 30 s), COMPLETE_REMOVE empties it. A receive of a lite consumer reads only the
//! lite topics of its set. Each lite topic is a queue with its own position per group, so two
//! consumers of one group subscribed to different lite topics never take each other's messages,
//! and a consumer that unsubscribes leaves the group's position in that lite topic where it was
//! (a later subscriber of the group continues from there).
//!
//! Subscriptions live in memory, as in RocketMQ's broker: a restarted broker learns them again
//! from the clients' periodic complete sync. A client's subscription ends when it terminates,
//! or after [`EXPIRY`] without a sync or a receive.
//!
//! Exclusive mode (`--lite-exclusive`): a lite topic has at most one subscriber per group; a new
//! subscriber (an explicit add) takes it over, and the previous one is told with a
//! NotifyUnsubscribeLiteCommand on its Telemetry stream (RocketMQ's exclusive lite groups do
//! the same).

use crate::error::{BrokerError, Result};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A subscription with no sync and no receive for this long is dropped: four of the clients'
/// 30 s complete syncs missed.
pub const EXPIRY: Duration = Duration::from_secs(120);

/// What a SyncLiteSubscription asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAction {
    /// Add these lite topics to the set.
    PartialAdd,
    /// Remove these lite topics from the set.
    PartialRemove,
    /// The set is exactly these lite topics.
    CompleteAdd,
    /// The set is empty.
    CompleteRemove,
}

/// One lite consumer's subscription.
#[derive(Debug, Clone)]
struct Subscription {
    group: String,
    topic: String,
    lites: HashSet<String>,
    /// The highest version a complete sync carried; an older complete sync is ignored.
    version: Option<i64>,
    touched: Instant,
}

/// Every lite consumer's subscription, by client id.
pub struct LiteSubscriptions {
    inner: Mutex<Inner>,
    quota: usize,
    exclusive: bool,
}

#[derive(Default)]
struct Inner {
    by_client: HashMap<String, Subscription>,
    /// Lite topics subscribed, all clients together (the quota counts these).
    active: usize,
}

impl Inner {
    fn drop_client(&mut self, client: &str) {
        if let Some(s) = self.by_client.remove(client) {
            self.active -= s.lites.len();
        }
    }

    fn expire(&mut self, now: Instant) {
        let stale: Vec<String> = self
            .by_client
            .iter()
            .filter(|(_, s)| now.duration_since(s.touched) > EXPIRY)
            .map(|(c, _)| c.clone())
            .collect();
        for c in stale {
            tracing::info!(client_id = c, "lite subscription expired");
            self.drop_client(&c);
        }
    }
}

/// A lite topic taken from a client in exclusive mode: tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub client: String,
    pub lite_topic: String,
}

/// One client's subscription, for `group describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionView {
    pub client: String,
    pub topic: String,
    /// Sorted.
    pub lite_topics: Vec<String>,
}

impl LiteSubscriptions {
    /// At most `quota` subscribed lite topics, all clients together.
    pub fn new(quota: usize, exclusive: bool) -> Self {
        Self { inner: Mutex::new(Inner::default()), quota, exclusive }
    }

    /// Applies one SyncLiteSubscription of `client` (a consumer of `group` bound to `topic`).
    /// Lite topic names must be validated already. Returns the subscriptions other clients lost
    /// to this one (exclusive mode). Refused as a whole (nothing changes) past the quota.
    pub fn sync(
        &self,
        client: &str,
        group: &str,
        topic: &str,
        action: SyncAction,
        lites: &[String],
        version: Option<i64>,
    ) -> Result<Vec<Evicted>> {
        let now = Instant::now();
        let mut inner = crate::sync::lock(&self.inner);
        inner.expire(now);
        // A client re-bound to another group or topic starts over.
        if inner.by_client.get(client).is_some_and(|s| s.group != group || s.topic != topic) {
            inner.drop_client(client);
        }
        let current = inner.by_client.get(client).map(|s| (s.lites.clone(), s.version));
        let (held, last_version) = current.unwrap_or_default();
        let complete = matches!(action, SyncAction::CompleteAdd | SyncAction::CompleteRemove);
        if complete && matches!((version, last_version), (Some(v), Some(last)) if v < last) {
            return Ok(Vec::new()); // an older complete set, overtaken by a newer one
        }
        let wanted: HashSet<String> = match action {
            SyncAction::PartialAdd => held.iter().chain(lites).cloned().collect(),
            SyncAction::PartialRemove => held.iter().filter(|l| !lites.contains(l)).cloned().collect(),
            SyncAction::CompleteAdd => lites.iter().cloned().collect(),
            SyncAction::CompleteRemove => HashSet::new(),
        };
        let added: Vec<String> = wanted.iter().filter(|l| !held.contains(*l)).cloned().collect();
        let after = inner.active - held.len() + wanted.len();
        if wanted.len() > held.len() && after > self.quota {
            return Err(BrokerError::LiteSubscriptionQuotaExceeded(format!(
                "{} lite subscriptions exist, {} more would pass max-lite-subscriptions ({})",
                inner.active,
                wanted.len() - held.len(),
                self.quota
            )));
        }
        let mut evicted = Vec::new();
        // Only an explicit add takes a lite topic over: the clients' periodic complete sync
        // re-sends what they hold, and must not take back what another consumer took.
        if self.exclusive && action == SyncAction::PartialAdd && !added.is_empty() {
            let others: Vec<String> = inner
                .by_client
                .iter()
                .filter(|(c, s)| c.as_str() != client && s.group == group && s.topic == topic)
                .map(|(c, _)| c.clone())
                .collect();
            for other in others {
                let Some(s) = inner.by_client.get_mut(&other) else { continue };
                let lost: Vec<String> = added.iter().filter(|l| s.lites.remove(*l)).cloned().collect();
                inner.active -= lost.len();
                evicted.extend(lost.into_iter().map(|lite_topic| Evicted { client: other.clone(), lite_topic }));
            }
        }
        inner.active = inner.active - held.len() + wanted.len();
        let version = if complete { version.or(last_version) } else { last_version };
        let sub = Subscription { group: group.into(), topic: topic.into(), lites: wanted, version, touched: now };
        inner.by_client.insert(client.to_string(), sub);
        Ok(evicted)
    }

    /// The lite topics `client` subscribes to on `topic` for `group` (none if it is bound to
    /// another), marking the subscription as used.
    pub fn subscribed(&self, client: &str, group: &str, topic: &str) -> Vec<String> {
        let mut inner = crate::sync::lock(&self.inner);
        match inner.by_client.get_mut(client) {
            Some(s) if s.group == group && s.topic == topic => {
                s.touched = Instant::now();
                s.lites.iter().cloned().collect()
            }
            _ => Vec::new(),
        }
    }

    /// Forgets a client that terminated.
    pub fn forget(&self, client: &str) {
        crate::sync::lock(&self.inner).drop_client(client);
    }

    /// The subscriptions of `group`'s consumers, by client id.
    pub fn of_group(&self, group: &str) -> Vec<SubscriptionView> {
        let mut inner = crate::sync::lock(&self.inner);
        inner.expire(Instant::now());
        let mut v: Vec<SubscriptionView> = inner
            .by_client
            .iter()
            .filter(|(_, s)| s.group == group)
            .map(|(c, s)| {
                let mut lite_topics: Vec<String> = s.lites.iter().cloned().collect();
                lite_topics.sort();
                SubscriptionView { client: c.clone(), topic: s.topic.clone(), lite_topics }
            })
            .collect();
        v.sort_by(|a, b| a.client.cmp(&b.client));
        v
    }

    /// Subscribed lite topics, all clients together.
    pub fn active(&self) -> usize {
        crate::sync::lock(&self.inner).active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn set(s: &LiteSubscriptions, client: &str) -> Vec<String> {
        let mut v = s.subscribed(client, "g", "t");
        v.sort();
        v
    }

    #[test]
    fn partial_and_complete_syncs_change_the_set() {
        let s = LiteSubscriptions::new(10, false);
        s.sync("c1", "g", "t", SyncAction::PartialAdd, &names(&["a", "b"]), None).unwrap();
        s.sync("c1", "g", "t", SyncAction::PartialAdd, &names(&["c"]), None).unwrap();
        assert_eq!(set(&s, "c1"), names(&["a", "b", "c"]));
        s.sync("c1", "g", "t", SyncAction::PartialRemove, &names(&["b", "zz"]), None).unwrap();
        assert_eq!(set(&s, "c1"), names(&["a", "c"]));
        s.sync("c1", "g", "t", SyncAction::CompleteAdd, &names(&["d"]), Some(2)).unwrap();
        assert_eq!(set(&s, "c1"), names(&["d"]));
        // An older complete set does not undo a newer one.
        s.sync("c1", "g", "t", SyncAction::CompleteAdd, &names(&["x"]), Some(1)).unwrap();
        assert_eq!(set(&s, "c1"), names(&["d"]));
        assert_eq!(s.active(), 1);
        s.sync("c1", "g", "t", SyncAction::CompleteRemove, &[], Some(3)).unwrap();
        assert!(set(&s, "c1").is_empty());
        assert_eq!(s.active(), 0);
        // Another group or topic sees nothing.
        s.sync("c2", "g", "t", SyncAction::PartialAdd, &names(&["a"]), None).unwrap();
        assert!(s.subscribed("c2", "other", "t").is_empty());
        assert!(s.subscribed("c2", "g", "other").is_empty());
    }

    #[test]
    fn the_quota_refuses_a_sync_as_a_whole() {
        let s = LiteSubscriptions::new(3, false);
        s.sync("c1", "g", "t", SyncAction::PartialAdd, &names(&["a", "b"]), None).unwrap();
        let err = s.sync("c2", "g", "t", SyncAction::PartialAdd, &names(&["a", "b"]), None).unwrap_err();
        assert!(matches!(err, BrokerError::LiteSubscriptionQuotaExceeded(_)));
        assert!(set(&s, "c2").is_empty());
        s.sync("c2", "g", "t", SyncAction::PartialAdd, &names(&["a"]), None).unwrap();
        assert_eq!(s.active(), 3);
        // Shrinking is always allowed; terminating frees the client's share.
        s.forget("c1");
        assert_eq!(s.active(), 1);
    }

    #[test]
    fn exclusive_mode_moves_a_lite_topic_to_its_newest_subscriber() {
        let s = LiteSubscriptions::new(10, true);
        s.sync("c1", "g", "t", SyncAction::PartialAdd, &names(&["a", "b"]), None).unwrap();
        s.sync("c3", "other", "t", SyncAction::PartialAdd, &names(&["a"]), None).unwrap();
        let evicted = s.sync("c2", "g", "t", SyncAction::PartialAdd, &names(&["a"]), None).unwrap();
        assert_eq!(evicted, vec![Evicted { client: "c1".into(), lite_topic: "a".into() }]);
        assert_eq!(set(&s, "c1"), names(&["b"]));
        assert_eq!(s.subscribed("c3", "other", "t"), names(&["a"]), "another group keeps its own subscriber");
        assert_eq!(s.active(), 3);
        let shared = LiteSubscriptions::new(10, false);
        shared.sync("c1", "g", "t", SyncAction::PartialAdd, &names(&["a"]), None).unwrap();
        assert!(shared.sync("c2", "g", "t", SyncAction::PartialAdd, &names(&["a"]), None).unwrap().is_empty());
    }
}
