//! [`Auth`]: who is calling (the official clients' signed requests) and what they may do.
//!
//! Owns: the users (`User` records: name, kind, secret, access policy) and the key that seals
//! their secrets at rest. Never touches topics, messages, groups or transactions: the gRPC
//! layer asks it to authenticate a request and to authorize each (resource, action) pair.
//!
//! Secrets: the signature scheme (HMAC-SHA1 of the date) needs the secret itself, so it cannot
//! be stored hashed. With `TXMQ_AUTH_KEY_FILE` set, each secret is sealed with
//! ChaCha20-Poly1305 under a key derived (SHA-256) from that file; without it secrets are
//! stored as they are and the broker warns at start. Secrets never appear in logs, errors,
//! listings, status or metrics.
//!
//! # Layout
//! - [`header`]: the `authorization` header, its signature and its date.
//! - [`acl`]: resources, actions, policy entries and the decision rule.

pub mod acl;
pub mod header;

use crate::cluster::Membership;
use crate::codec::{CodecError, Decoder, Encoder, Record};
use crate::error::{BrokerError, Result};
use crate::model::Millis;
use crate::store::{scan_prefix, Batch, Committer, Key, Store, StoreError};
use acl::{Action, Actions, Cidr, Decision, Entry, Pattern, Resource};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The authentication settings of the broker's configuration.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// Check signatures and policies. Off: every request is allowed, as before.
    pub enabled: bool,
    /// How far a signed date may be from the broker's clock.
    pub max_skew: Duration,
    /// File whose contents seal secrets at rest.
    pub key_file: Option<PathBuf>,
}

/// A user's kind: super users bypass policies (and may use the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKind {
    Super,
    Normal,
}

impl UserKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UserKind::Super => "super",
            UserKind::Normal => "normal",
        }
    }

    pub fn parse(s: &str) -> Result<UserKind> {
        match s.to_ascii_lowercase().as_str() {
            "super" => Ok(UserKind::Super),
            "normal" | "" => Ok(UserKind::Normal),
            _ => Err(BrokerError::BadRequest(format!("user type {s:?} is not super or normal"))),
        }
    }
}

/// A user as the broker knows it. `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub kind: UserKind,
    pub created_at: Millis,
    pub policy: Vec<Entry>,
    secret: String,
}

impl User {
    /// A user (for the store's loader and tests; users are created through [`Auth`]).
    pub fn new(name: &str, kind: UserKind, secret: &str, policy: Vec<Entry>) -> Self {
        User { name: name.into(), kind, created_at: 0, policy, secret: secret.into() }
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User").field("name", &self.name).field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// Why a request could not be authenticated (said to the client and logged, never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    pub access_key: Option<String>,
    pub reason: String,
}

impl AuthFailure {
    fn new(access_key: Option<&str>, reason: impl Into<String>) -> Self {
        AuthFailure { access_key: access_key.map(str::to_string), reason: reason.into() }
    }
}

/// Every user, over the store.
pub struct Auth {
    settings: AuthSettings,
    users: RwLock<HashMap<String, Arc<User>>>,
    committer: Arc<Committer>,
    seal: Option<Seal>,
    /// Serializes user changes (read, change, write of one record).
    change_lock: tokio::sync::Mutex<()>,
    failures_logged: LogLimiter,
    /// In a cluster, users live in etcd (every node the same) instead of this node's store.
    cluster: RwLock<Option<Membership>>,
}

impl Auth {
    /// Loads every user. Fails when secrets are sealed and no key (or another key) is given.
    pub fn load(store: &dyn Store, committer: Arc<Committer>, settings: AuthSettings) -> Result<Self> {
        let seal = match &settings.key_file {
            Some(path) => Some(Seal::from_file(path)?),
            None => None,
        };
        let mut users = HashMap::new();
        for (k, v) in scan_prefix(store, &Key::user_prefix(), usize::MAX, false)? {
            let stored =
                StoredUser::decode(&v).map_err(|e| StoreError::Corrupt { key: k.clone(), detail: e.to_string() })?;
            let user = open_stored(seal.as_ref(), stored)?;
            users.insert(user.name.clone(), Arc::new(user));
        }
        if settings.enabled && seal.is_none() {
            tracing::warn!("authentication is on and TXMQ_AUTH_KEY_FILE is not set: user secrets are stored unsealed");
        }
        Ok(Self {
            settings,
            users: RwLock::new(users),
            committer,
            seal,
            change_lock: tokio::sync::Mutex::new(()),
            failures_logged: LogLimiter::default(),
            cluster: RwLock::new(None),
        })
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// The user whose signature `authorization` carries over `date`, checked at `now`.
    /// `Ok(None)` when authentication is off.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        date: Option<&str>,
        now: Millis,
    ) -> std::result::Result<Option<Arc<User>>, AuthFailure> {
        if !self.settings.enabled {
            return Ok(None);
        }
        let value = authorization.ok_or_else(|| AuthFailure::new(None, "the request is not signed"))?;
        let signed = header::parse(value).map_err(|e| AuthFailure::new(None, e))?;
        let ak = Some(signed.access_key.as_str());
        let date = date.ok_or_else(|| AuthFailure::new(ak, "the request has no x-mq-date-time"))?;
        let user = crate::sync::read(&self.users)
            .get(&signed.access_key)
            .cloned()
            .ok_or_else(|| AuthFailure::new(ak, "unknown access key or wrong signature"))?;
        if !header::verify(&user.secret, date, &signed.signature) {
            return Err(AuthFailure::new(ak, "unknown access key or wrong signature"));
        }
        let skew = self.settings.max_skew.as_millis() as Millis;
        if skew > 0 {
            let at = header::parse_date(date)
                .ok_or_else(|| AuthFailure::new(ak, "x-mq-date-time is in no format the broker reads"))?;
            if !header::fresh(at, now, skew) {
                return Err(AuthFailure::new(
                    ak,
                    "x-mq-date-time is too far from the broker's clock (stale or replayed)",
                ));
            }
        }
        Ok(Some(user))
    }

    /// The user a verified client certificate names (mutual TLS): its subject's common name.
    pub fn authenticate_certificate(&self, common_name: &str) -> std::result::Result<Option<Arc<User>>, AuthFailure> {
        if !self.settings.enabled {
            return Ok(None);
        }
        crate::sync::read(&self.users)
            .get(common_name)
            .cloned()
            .map(Some)
            .ok_or_else(|| AuthFailure::new(Some(common_name), "the client certificate names no user"))
    }

    /// Whether the failure should be logged now: at most 10 lines a second, so a flood of bad
    /// requests cannot flood the log.
    pub fn log_failure_now(&self, now: Millis) -> bool {
        self.failures_logged.allow(now)
    }

    /// Whether `user` may do `action` on `resource` from `from`.
    pub fn allowed(user: &User, resource: Resource<'_>, action: Action, from: Option<IpAddr>) -> bool {
        user.kind == UserKind::Super || acl::decide(&user.policy, resource, action, from) == Decision::Allow
    }

    /// [`Auth::allowed`] as an error: FORBIDDEN naming the user, resource and action.
    pub fn authorize(user: &User, resource: Resource<'_>, action: Action, from: Option<IpAddr>) -> Result<()> {
        if Self::allowed(user, resource, action, from) {
            return Ok(());
        }
        Err(BrokerError::Forbidden(format!("user {} may not {action:?} {resource}", user.name)))
    }

    /// Every user (without secrets), sorted by name.
    pub fn users(&self) -> Vec<Arc<User>> {
        let mut v: Vec<_> = crate::sync::read(&self.users).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn is_empty(&self) -> bool {
        crate::sync::read(&self.users).is_empty()
    }

    /// Creates a user durably. Fails if it exists.
    pub async fn create_user(&self, name: &str, secret: &str, kind: UserKind, now: Millis) -> Result<()> {
        validate_user(name, secret)?;
        let _guard = self.change_lock.lock().await;
        let exists = || BrokerError::BadRequest(format!("user {name} exists"));
        let user = User { name: name.into(), kind, created_at: now, policy: Vec::new(), secret: secret.into() };
        if let Some(m) = self.membership() {
            if !m.put_user_if(name, self.encode(&user)?, 0).await.map_err(cluster_error)? {
                return Err(exists());
            }
            crate::sync::write(&self.users).insert(user.name.clone(), Arc::new(user));
            return Ok(());
        }
        if crate::sync::read(&self.users).contains_key(name) {
            return Err(exists());
        }
        self.store_user(user).await
    }

    /// Whether user `name` exists; in a cluster, asked of etcd, and a user found there that this
    /// node has not seen yet (its watch lags) is taken into this node's copy at once.
    pub async fn user_exists(&self, name: &str) -> Result<bool> {
        let Some(m) = self.membership() else { return Ok(crate::sync::read(&self.users).contains_key(name)) };
        let Some(entry) = m.user(name).await.map_err(cluster_error)? else { return Ok(false) };
        let user = self.decode(&entry.value)?;
        crate::sync::write(&self.users).insert(user.name.clone(), Arc::new(user));
        Ok(true)
    }

    /// Deletes a user durably (its requests fail from now on; on every node of a cluster as
    /// soon as its watch sees the deletion).
    pub async fn delete_user(&self, name: &str) -> Result<()> {
        let _guard = self.change_lock.lock().await;
        let missing = || BrokerError::NotFound(format!("no user {name}"));
        if let Some(m) = self.membership() {
            if !m.delete_user(name).await.map_err(cluster_error)? {
                return Err(missing());
            }
            crate::sync::write(&self.users).remove(name);
            return Ok(());
        }
        if !crate::sync::read(&self.users).contains_key(name) {
            return Err(missing());
        }
        let mut batch = Batch::new();
        batch.delete(&Key::User(name.into()));
        self.committer.commit(batch).await?;
        crate::sync::write(&self.users).remove(name);
        Ok(())
    }

    /// Adds a policy entry to a user (replacing one with the same resource and decision).
    pub async fn grant(&self, name: &str, entry: Entry) -> Result<()> {
        self.change_policy(name, |policy| {
            if let Some(e) = policy.iter_mut().find(|e| e.resource == entry.resource && e.decision == entry.decision) {
                e.actions = Actions(e.actions.0 | entry.actions.0);
                e.sources = entry.sources.clone();
            } else {
                policy.push(entry.clone());
            }
        })
        .await
    }

    /// Removes `actions` from a user's entries for `resource`; entries left with no action go.
    pub async fn revoke(&self, name: &str, resource: &Pattern, actions: Actions) -> Result<()> {
        self.change_policy(name, |policy| {
            for e in policy.iter_mut().filter(|e| &e.resource == resource) {
                e.actions = Actions(e.actions.0 & !actions.0);
            }
            policy.retain(|e| e.actions.0 != 0);
        })
        .await
    }

    async fn change_policy(&self, name: &str, change: impl Fn(&mut Vec<Entry>)) -> Result<()> {
        let _guard = self.change_lock.lock().await;
        if let Some(m) = self.membership() {
            // Read, change, write if no one else wrote in between; else again with theirs.
            for _ in 0..10 {
                let entry = m.user(name).await.map_err(cluster_error)?;
                let entry = entry.ok_or_else(|| BrokerError::NotFound(format!("no user {name}")))?;
                let mut user = self.decode(&entry.value)?;
                change(&mut user.policy);
                if m.put_user_if(name, self.encode(&user)?, entry.revision).await.map_err(cluster_error)? {
                    crate::sync::write(&self.users).insert(user.name.clone(), Arc::new(user));
                    return Ok(());
                }
            }
            return Err(BrokerError::Internal(format!("user {name} kept changing under this change; try again")));
        }
        let mut user = crate::sync::read(&self.users)
            .get(name)
            .map(|u| (**u).clone())
            .ok_or_else(|| BrokerError::NotFound(format!("no user {name}")))?;
        change(&mut user.policy);
        self.store_user(user).await
    }

    /// A user's record as stored (the secret sealed when there is a key).
    fn encode(&self, user: &User) -> Result<Vec<u8>> {
        let secret = match &self.seal {
            Some(seal) => Secret::Sealed(seal.seal(&user.secret)?),
            None => Secret::Plain(user.secret.clone()),
        };
        let stored = StoredUser {
            name: user.name.clone(),
            kind: user.kind,
            created_at: user.created_at,
            policy: user.policy.clone(),
            secret,
        };
        Ok(stored.encode())
    }

    fn decode(&self, bytes: &[u8]) -> Result<User> {
        let stored = StoredUser::decode(bytes).map_err(|e| BrokerError::Internal(format!("user record: {e}")))?;
        open_stored(self.seal.as_ref(), stored)
    }

    fn membership(&self) -> Option<Membership> {
        crate::sync::read(&self.cluster).clone()
    }

    /// Switches to the cluster's users (in etcd): this node's users are copied there when the
    /// cluster has none yet (the first node to join with users brings them). Returns the etcd
    /// revision they were read at, to [`Auth::follow_cluster`] from.
    pub async fn attach_cluster(&self, m: Membership) -> Result<i64> {
        let _guard = self.change_lock.lock().await;
        let (mut entries, mut revision) = m.users().await.map_err(cluster_error)?;
        if entries.is_empty() {
            let local = self.users();
            for user in &local {
                m.put_user_if(&user.name, self.encode(user)?, 0).await.map_err(cluster_error)?;
            }
            if !local.is_empty() {
                tracing::info!(users = local.len(), "this node's users copied to the cluster (it had none)");
            }
            (entries, revision) = m.users().await.map_err(cluster_error)?;
        }
        let mut users = HashMap::new();
        for e in entries {
            match self.decode(&e.value) {
                Ok(u) => {
                    users.insert(u.name.clone(), Arc::new(u));
                }
                Err(err) => return Err(BrokerError::Config(format!("user {} in etcd: {err}", e.name))),
            }
        }
        *crate::sync::write(&self.users) = users;
        *crate::sync::write(&self.cluster) = Some(m);
        Ok(revision)
    }

    /// Applies every change to the cluster's users as etcd reports it, until `shutdown`; a
    /// broken watch is re-established from a fresh read of every user.
    pub async fn follow_cluster(&self, mut revision: i64, shutdown: tokio_util::sync::CancellationToken) {
        let Some(m) = self.membership() else { return };
        loop {
            let apply = |c: crate::cluster::users::UserChange| match c.value {
                None => {
                    crate::sync::write(&self.users).remove(&c.name);
                }
                Some(v) => match self.decode(&v) {
                    Ok(u) => {
                        crate::sync::write(&self.users).insert(u.name.clone(), Arc::new(u));
                    }
                    Err(e) => tracing::warn!(user = c.name, error = %e, "unreadable user record in etcd; ignored"),
                },
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                e = m.follow_users(revision, apply) => tracing::warn!(error = %e, "watch of users broken; reading them again"),
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                match m.users().await {
                    Ok((entries, at)) => {
                        let users = entries
                            .iter()
                            .filter_map(|e| self.decode(&e.value).ok().map(|u| (u.name.clone(), Arc::new(u))))
                            .collect();
                        *crate::sync::write(&self.users) = users;
                        revision = at;
                        break;
                    }
                    Err(e) => tracing::debug!(error = %e, "users not read from etcd yet"),
                }
            }
        }
    }

    async fn store_user(&self, user: User) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(&Key::User(user.name.clone()), self.encode(&user)?);
        self.committer.commit(batch).await?;
        crate::sync::write(&self.users).insert(user.name.clone(), Arc::new(user));
        Ok(())
    }
}

/// An etcd failure as the admin API reports it (retry later; nothing was guessed).
fn cluster_error(e: crate::cluster::ClusterError) -> BrokerError {
    BrokerError::Internal(format!("cluster: {e}"))
}

/// A stored user with its secret opened.
fn open_stored(seal: Option<&Seal>, stored: StoredUser) -> Result<User> {
    let secret = match (&stored.secret, seal) {
        (Secret::Plain(s), _) => s.clone(),
        (Secret::Sealed(bytes), Some(seal)) => seal.open(bytes).ok_or_else(|| {
            BrokerError::Config(format!(
                "the secret of user {} does not open with the key in TXMQ_AUTH_KEY_FILE (another key?)",
                stored.name
            ))
        })?,
        (Secret::Sealed(_), None) => {
            return Err(BrokerError::Config(
                "users' secrets are sealed; set TXMQ_AUTH_KEY_FILE to the key file they were sealed with".into(),
            ))
        }
    };
    Ok(User { name: stored.name, kind: stored.kind, created_at: stored.created_at, policy: stored.policy, secret })
}

/// Parses a policy entry as the CLI and admin API give it.
pub fn entry(resource: &str, actions: &str, allow: bool, sources: &[String]) -> Result<Entry> {
    let bad = |e: String| BrokerError::BadRequest(e);
    Ok(Entry {
        resource: Pattern::parse(resource).map_err(bad)?,
        actions: Actions::parse(actions).map_err(bad)?,
        decision: if allow { Decision::Allow } else { Decision::Deny },
        sources: sources.iter().map(|s| Cidr::parse(s)).collect::<std::result::Result<_, _>>().map_err(bad)?,
    })
}

fn validate_user(name: &str, secret: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(BrokerError::BadRequest(
            "a user name (access key) is 1 to 64 letters, digits, '_', '-' or '.'".into(),
        ));
    }
    if secret.len() < 8 || secret.len() > 256 || secret.chars().any(|c| c.is_control()) {
        return Err(BrokerError::BadRequest("a secret is 8 to 256 printable characters".into()));
    }
    Ok(())
}

/// At most 10 events per second.
#[derive(Default)]
struct LogLimiter {
    /// Second (since the epoch) << 8 | events in it.
    window: AtomicU64,
}

impl LogLimiter {
    fn allow(&self, now: Millis) -> bool {
        let second = (now.max(0) / 1000) as u64;
        let mut cur = self.window.load(Ordering::Relaxed);
        loop {
            let (s, n) = (cur >> 8, cur & 0xff);
            let next = if s == second { (n < 10).then(|| cur + 1) } else { Some(second << 8 | 1) };
            let Some(next) = next else { return false };
            match self.window.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// A user's secret as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Secret {
    Plain(String),
    /// Nonce (12 bytes) then the ChaCha20-Poly1305 ciphertext and tag.
    Sealed(Vec<u8>),
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredUser {
    name: String,
    kind: UserKind,
    created_at: Millis,
    policy: Vec<Entry>,
    secret: Secret,
}

impl Record for StoredUser {
    const KIND: &'static str = "user record";
    const VERSION: u8 = 1;

    fn write(&self, e: &mut Encoder) {
        e.str(&self.name).u8(if self.kind == UserKind::Super { 1 } else { 2 }).i64(self.created_at);
        match &self.secret {
            Secret::Plain(s) => e.u8(0).str(s),
            Secret::Sealed(b) => e.u8(1).bytes(b),
        };
        e.u32(self.policy.len() as u32);
        for p in &self.policy {
            e.str(&p.resource.to_string())
                .u8(p.actions.0)
                .bool(p.decision == Decision::Allow)
                .u32(p.sources.len() as u32);
            for c in &p.sources {
                e.str(&c.to_string());
            }
        }
    }

    fn read(d: &mut Decoder<'_>, _version: u8) -> std::result::Result<Self, CodecError> {
        let bad = |what: &'static str| move |e: String| crate::codec::invalid(what, e);
        let name = d.str()?;
        let kind = match d.u8()? {
            1 => UserKind::Super,
            2 => UserKind::Normal,
            v => return Err(crate::codec::invalid("user kind", v)),
        };
        let created_at = d.i64()?;
        let secret = match d.u8()? {
            0 => Secret::Plain(d.str()?),
            1 => Secret::Sealed(d.bytes()?.to_vec()),
            v => return Err(crate::codec::invalid("secret form", v)),
        };
        let n = d.u32()?;
        let mut policy = Vec::new();
        for _ in 0..n {
            let resource = Pattern::parse(&d.str()?).map_err(bad("policy resource"))?;
            let actions = Actions(d.u8()?);
            let decision = if d.bool()? { Decision::Allow } else { Decision::Deny };
            let m = d.u32()?;
            let mut sources = Vec::new();
            for _ in 0..m {
                sources.push(Cidr::parse(&d.str()?).map_err(bad("policy source"))?);
            }
            policy.push(Entry { resource, actions, decision, sources });
        }
        Ok(StoredUser { name, kind, created_at, policy, secret })
    }
}

/// Seals and opens secrets with a key derived from a file.
struct Seal {
    key: ring::aead::LessSafeKey,
}

impl Seal {
    fn from_file(path: &std::path::Path) -> Result<Seal> {
        let bytes = std::fs::read(path)
            .map_err(|e| BrokerError::Config(format!("cannot read TXMQ_AUTH_KEY_FILE {}: {e}", path.display())))?;
        if bytes.len() < 16 {
            return Err(BrokerError::Config(format!(
                "TXMQ_AUTH_KEY_FILE {} holds {} bytes; give at least 16 random bytes",
                path.display(),
                bytes.len()
            )));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, digest.as_ref())
            .map_err(|_| BrokerError::Internal("cannot make the sealing key".into()))?;
        Ok(Seal { key: ring::aead::LessSafeKey::new(unbound) })
    }

    fn seal(&self, secret: &str) -> Result<Vec<u8>> {
        use ring::rand::SecureRandom;
        let mut nonce = [0u8; 12];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| BrokerError::Internal("no randomness for sealing a secret".into()))?;
        let mut data = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut data,
            )
            .map_err(|_| BrokerError::Internal("cannot seal a secret".into()))?;
        let mut out = nonce.to_vec();
        out.extend(data);
        Ok(out)
    }

    fn open(&self, sealed: &[u8]) -> Option<String> {
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, data) = sealed.split_at(12);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = self.key.open_in_place(nonce, ring::aead::Aad::empty(), &mut data).ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn auth(store: Arc<dyn Store>, key_file: Option<PathBuf>) -> Auth {
        let committer = Arc::new(Committer::start(store.clone(), 64).unwrap());
        let settings = AuthSettings { enabled: true, max_skew: Duration::from_secs(900), key_file };
        Auth::load(store.as_ref(), committer, settings).unwrap()
    }

    #[tokio::test]
    async fn users_and_policies_survive_a_reload_and_secrets_are_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, b"0123456789abcdef0123456789abcdef").unwrap();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let a = auth(store.clone(), Some(key.clone()));
        a.create_user("alice", "alice-secret-1", UserKind::Normal, 5).await.unwrap();
        a.grant("alice", entry("Topic:orders", "Pub", true, &[]).unwrap()).await.unwrap();
        a.grant("alice", entry("Topic:orders", "Sub", true, &["10.0.0.0/8".into()]).unwrap()).await.unwrap();
        let raw = store.get(&Key::User("alice".into()).encode()).unwrap().unwrap();
        assert!(!raw.windows(14).any(|w| w == b"alice-secret-1"), "the secret is stored sealed");

        let b = auth(store.clone(), Some(key));
        let alice = b.users().into_iter().find(|u| u.name == "alice").unwrap();
        assert_eq!(alice.policy.len(), 1);
        assert_eq!(alice.policy[0].actions.to_string(), "Pub,Sub");
        let date = "2026-12-01T09:30:00Z";
        let Some(header::SignedAt::Exact(now)) = header::parse_date(date) else { panic!() };
        let signed = header::sign("alice", "alice-secret-1", date);
        assert!(b.authenticate(Some(&signed), Some(date), now).unwrap().is_some());
        assert!(!format!("{alice:?}").contains("secret-1"));

        b.revoke("alice", &Pattern::parse("Topic:orders").unwrap(), Actions::parse("Pub,Sub").unwrap()).await.unwrap();
        assert!(b.users()[0].policy.is_empty());
        let committer = Arc::new(Committer::start(store.clone(), 64).unwrap());
        let settings = AuthSettings { enabled: true, max_skew: Duration::ZERO, key_file: None };
        assert!(Auth::load(store.as_ref(), committer, settings).is_err(), "sealed secrets need the key");
    }

    #[tokio::test]
    async fn authentication_refuses_every_wrong_header() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let a = auth(store, None);
        a.create_user("bob", "bob-secret-1", UserKind::Normal, 0).await.unwrap();
        let date = "2026-12-01T09:30:00+08:00";
        let Some(header::SignedAt::Exact(now)) = header::parse_date("2026-12-01T01:30:00Z") else { panic!() };
        let ok = header::sign("bob", "bob-secret-1", date);
        assert!(a.authenticate(Some(&ok), Some(date), now).is_ok());
        let fail = |h: Option<&str>, d: Option<&str>, at: Millis| a.authenticate(h, d, at).unwrap_err().reason;
        assert!(fail(None, Some(date), now).contains("not signed"));
        assert!(fail(Some(&header::sign("bob", "wrong-secret", date)), Some(date), now).contains("wrong signature"));
        assert!(fail(Some(&header::sign("eve", "bob-secret-1", date)), Some(date), now).contains("unknown access key"));
        assert!(fail(Some(&ok), Some("2026-12-01T09:30:01+08:00"), now).contains("wrong signature"));
        assert!(fail(Some(&ok), Some(date), now + 16 * 60_000).contains("too far"));
        assert!(fail(Some(&ok), None, now).contains("no x-mq-date-time"));
    }

    #[test]
    fn the_log_limiter_allows_ten_a_second() {
        let l = LogLimiter::default();
        assert_eq!((0..20).filter(|_| l.allow(5_000)).count(), 10);
        assert!(l.allow(6_000));
    }
}
