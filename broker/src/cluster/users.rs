//! Users and their access policies in etcd, so every node of a cluster authenticates the same
//! users (`<prefix>/users/<name>`, the user record as the auth module encodes it, secrets
//! sealed with the key every node is given). Changes are compare-and-swap on the key's
//! modification revision, so two nodes changing one user never lose an update; every node
//! follows the prefix with a watch and applies each change as it happens.

use super::{timed, ClusterError, Membership};
use etcd_client::{Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};

/// A stored user record and the revision it was last written at.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub name: String,
    pub value: Vec<u8>,
    pub revision: i64,
}

/// One change a watch saw: a record written (`Some`) or deleted (`None`).
#[derive(Debug, Clone)]
pub struct UserChange {
    pub name: String,
    pub value: Option<Vec<u8>>,
}

impl Membership {
    fn users_prefix(&self) -> String {
        format!("{}/users/", self.inner.settings.prefix)
    }

    /// Every user record, and the store revision they were read at (to watch from).
    pub async fn users(&self) -> Result<(Vec<StoredEntry>, i64), ClusterError> {
        let mut client = self.inner.client.clone();
        let prefix = self.users_prefix();
        let answer = timed("list users", client.get(prefix.clone(), Some(GetOptions::new().with_prefix()))).await?;
        let revision = answer.header().map_or(0, |h| h.revision());
        let entries = answer
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = kv.key_str().ok()?.strip_prefix(&prefix)?.to_string();
                Some(StoredEntry { name, value: kv.value().to_vec(), revision: kv.mod_revision() })
            })
            .collect();
        Ok((entries, revision))
    }

    /// The record of user `name`, if any.
    pub async fn user(&self, name: &str) -> Result<Option<StoredEntry>, ClusterError> {
        let mut client = self.inner.client.clone();
        let answer = timed("read user", client.get(format!("{}{name}", self.users_prefix()), None)).await?;
        Ok(answer.kvs().first().map(|kv| StoredEntry {
            name: name.to_string(),
            value: kv.value().to_vec(),
            revision: kv.mod_revision(),
        }))
    }

    /// Writes user `name`'s record if it is still at `revision` (0: absent). `false`: someone
    /// changed it first (read it again).
    pub async fn put_user_if(&self, name: &str, value: Vec<u8>, revision: i64) -> Result<bool, ClusterError> {
        let key = format!("{}{name}", self.users_prefix());
        let unchanged = if revision == 0 {
            Compare::create_revision(key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.clone(), CompareOp::Equal, revision)
        };
        let txn = Txn::new().when([unchanged]).and_then([TxnOp::put(key, value, None)]);
        let mut client = self.inner.client.clone();
        Ok(timed("write user", client.txn(txn)).await?.succeeded())
    }

    /// Deletes user `name`'s record; `false` when there was none.
    pub async fn delete_user(&self, name: &str) -> Result<bool, ClusterError> {
        let mut client = self.inner.client.clone();
        let answer = timed("delete user", client.delete(format!("{}{name}", self.users_prefix()), None)).await?;
        Ok(answer.deleted() > 0)
    }

    /// Calls `apply` with every change to users after `revision`, until the watch fails (then
    /// returns why: the caller reads every user again and watches anew).
    pub async fn follow_users(&self, revision: i64, mut apply: impl FnMut(UserChange)) -> ClusterError {
        let mut client = self.inner.client.clone();
        let prefix = self.users_prefix();
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut stream = match timed("watch users", client.watch(prefix.clone(), Some(options))).await {
            Ok(w) => w,
            Err(e) => return e,
        };
        loop {
            let answer = match stream.message().await {
                Ok(Some(a)) => a,
                Ok(None) => return ClusterError::Etcd("watch users: stream ended".into()),
                Err(e) => return ClusterError::Etcd(format!("watch users: {e}")),
            };
            if answer.canceled() {
                return ClusterError::Etcd(format!("watch users: cancelled ({})", answer.cancel_reason()));
            }
            for event in answer.events() {
                let Some(kv) = event.kv() else { continue };
                let Some(name) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)) else { continue };
                let value = match event.event_type() {
                    EventType::Put => Some(kv.value().to_vec()),
                    EventType::Delete => None,
                };
                apply(UserChange { name: name.to_string(), value });
            }
        }
    }
}
