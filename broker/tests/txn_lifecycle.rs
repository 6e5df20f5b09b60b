//! Transaction bookkeeping through the broker API: per-message recovery durations, parking
//! and operator resume, and purging resolved transactions after their retention.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ops::Bound;
use std::time::Duration;
use txmq_broker::broker::{now_ms, Broker};
use txmq_broker::config::Config;
use txmq_broker::model::{MessageType, NewMessage};
use txmq_broker::store::{Key, MemoryStore, Store};
use txmq_broker::txn::service::{CheckOutcome, CheckTarget, MaxChecksPolicy, TxnFilter};
use txmq_broker::txn::state::{Actor, Resolution, TxnState};

fn half(id: &str, recovery_ms: Option<i64>) -> NewMessage {
    NewMessage {
        recovery_duration_ms: recovery_ms,
        body: b"x".to_vec(),
        body_gzip: false,
        priority: None,
        ..common::new_message("orders", id, MessageType::Transaction)
    }
}

async fn send_half(b: &Broker, id: &str, recovery_ms: Option<i64>) -> String {
    b.send("orders", vec![half(id, recovery_ms)], "producer-1").await.unwrap()[0].transaction_id.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_duration_parking_resume_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.txn_max_checks = 1;
    config.txn_check_interval = Duration::from_millis(200);
    config.txn_max_checks_policy = MaxChecksPolicy::Park;
    config.txn_retention = Duration::from_millis(200);
    let b = Broker::open(config).unwrap();

    // The message's own recovery duration sets its first check.
    let before = now_ms();
    let slow = send_half(&b, "slow", Some(60_000)).await;
    let t = b.transaction(&slow).unwrap().unwrap();
    assert!(t.next_check.unwrap() >= before + 60_000);
    assert!(b.due_transactions(now_ms(), 10).unwrap().is_empty(), "nothing due before 6 s");

    // One check (max 1), then the park policy; then an operator resumes it.
    let id = send_half(&b, "parked", Some(0)).await;
    let due = b.transaction(&id).unwrap().unwrap().next_check.unwrap();
    let target = || Some(CheckTarget { client: "producer-2".into(), stream: 1 });
    let sent = b.check_transaction(&id, due, |_, _| target()).await.unwrap();
    assert_eq!(sent, CheckOutcome::Sent { client: "producer-2".into(), stream: 1 });
    let due = b.transaction(&id).unwrap().unwrap().next_check.unwrap();
    tokio::time::sleep(Duration::from_millis((due - now_ms()).max(0) as u64 + 10)).await;
    let exhausted = b.check_transaction(&id, due, |_, _| target()).await.unwrap();
    assert_eq!(exhausted, CheckOutcome::Exhausted { state: TxnState::Parked });
    assert!(
        !b.due_transactions(now_ms() + 3_600_000, 10).unwrap().iter().any(|(_, t)| *t == id),
        "parked ones are not checked"
    );
    let resumed = b.resume_transaction(&id, Some("fixed the database".into())).await.unwrap();
    assert_eq!((resumed.state, resumed.checks), (TxnState::Pending, 0));
    assert!(b.due_transactions(now_ms(), 10).unwrap().iter().any(|(_, t)| *t == id), "checks start over");

    // Resolved transactions are purged after the retention, with their half message.
    b.end_transaction("orders", "", &id, Resolution::Rollback, Actor::Operator, Some("refunded".into())).await.unwrap();
    assert_eq!(b.purge_transactions().await.unwrap(), 0, "kept during the retention");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(b.purge_transactions().await.unwrap(), 1);
    assert!(b.transaction(&id).unwrap().is_none());
    assert!(b.half_message(&id).unwrap().is_none());
    assert!(b.transaction(&slow).unwrap().is_some(), "pending ones are never purged");
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_and_counting_read_past_the_first_pages() {
    let store = std::sync::Arc::new(txmq_broker::store::MemoryStore::new());
    let b = Broker::with_store(Config::with_data_dir("/unused"), store).unwrap();
    let mut ids = Vec::new();
    for i in 0..2_500 {
        ids.push(send_half(&b, &format!("m{i}"), None).await);
    }
    // The oldest 2,450 are resolved; the 50 newest stay pending, behind 2 full pages.
    for id in &ids[..2_450] {
        b.end_transaction("orders", "", id, Resolution::Rollback, Actor::Producer, None).await.unwrap();
    }
    let filter = TxnFilter { state: Some(TxnState::Pending), limit: 1000, ..Default::default() };
    let pending = b.list_transactions(&filter).unwrap();
    assert_eq!(pending.len(), 50);
    assert_eq!(pending[0].id, ids[2_450]);
    let counts = b.transaction_counts().unwrap();
    assert_eq!((counts.pending, counts.parked), (50, 0));
    let all = TxnFilter { limit: 10_000, ..Default::default() };
    assert_eq!(b.list_transactions(&all).unwrap().len(), 2_500);
    b.shutdown();
}

/// Sends `n` half messages and resolves all but the last `pending` of them, 8 at a time.
async fn resolved_and_pending(b: &std::sync::Arc<Broker>, n: usize, pending: usize) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let b = b.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in (w..n).step_by(8) {
                let id = send_half(&b, &format!("m{i}"), None).await;
                if i < n - pending {
                    b.end_transaction("orders", "", &id, Resolution::Commit, Actor::Producer, None).await.unwrap();
                }
                ids.push(id);
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ids.extend(r.unwrap());
    }
    ids
}

fn count_keys(store: &dyn Store, kind: &Key) -> usize {
    scan_kind(store, kind).len()
}

/// Every stored key of `kind`'s kind.
fn scan_kind(store: &dyn Store, kind: &Key) -> Vec<Vec<u8>> {
    let prefix = kind.kind_prefix();
    let end = txmq_broker::store::keys::prefix_end(&prefix).unwrap();
    let entries = store.scan(Bound::Included(&prefix), Bound::Excluded(&end), usize::MAX, false).unwrap();
    entries.into_iter().map(|(k, _)| k).collect()
}

/// Finding 2: one retention pass purges every resolved transaction past the retention, however
/// many (it used to purge 256 a minute while the broker resolves thousands a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_purge_pass_removes_twenty_thousand_resolved_transactions() {
    let store = std::sync::Arc::new(MemoryStore::new());
    let mut config = Config::with_data_dir("/unused");
    config.txn_retention = Duration::from_millis(1);
    let b = Broker::with_store(config, store.clone()).unwrap();
    resolved_and_pending(&b, 20_000, 0).await;
    let kinds = [Key::Txn(String::new()), Key::TxnByMessage { topic: String::new(), message_id: String::new() }];
    for k in &kinds {
        assert!(count_keys(store.as_ref(), k) >= 20_000, "{k:?} written");
    }
    // The purge walks the records themselves: no index of resolution times is kept.
    assert_eq!(count_keys(store.as_ref(), &Key::TxnResolved { at: 0, txn: String::new() }), 0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(b.purge_transactions().await.unwrap(), 20_000);
    for k in &kinds {
        assert_eq!(count_keys(store.as_ref(), k), 0, "{k:?} left after one pass");
    }
    // The committed messages themselves stay (message retention is separate), with the half
    // messages holding their bodies.
    assert_eq!(b.queue_offsets(&b.topic("orders").unwrap()).iter().map(|q| q.durable - q.min).sum::<u64>(), 20_000);
    b.shutdown();
}

/// Finding 6: counting pending and parked transactions (every `/metrics` scrape, `txmq
/// status`) reads no transaction record, and listing the pending ones reads only those — not
/// the whole history. A store written before the open index existed gets it at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_pending_lists_cost_what_is_open_not_the_history() {
    // Reads of transaction records (point reads and scanned entries).
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let store = std::sync::Arc::new(common::ObservedStore::new({
        let reads = reads.clone();
        move |e: common::StoreEvent<'_>| {
            if matches!(e, common::StoreEvent::Read(k) if k.starts_with(&Key::txn_prefix())) {
                reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }));
    let take = || reads.swap(0, std::sync::atomic::Ordering::SeqCst);
    let b = Broker::with_store(Config::with_data_dir("/unused"), store.clone()).unwrap();
    let ids = resolved_and_pending(&b, 2_005, 5).await;
    let pending_ids: std::collections::HashSet<&String> =
        ids.iter().filter(|id| b.transaction(id).unwrap().unwrap().state == TxnState::Pending).collect();
    assert_eq!(pending_ids.len(), 5);
    take();
    let counts = b.transaction_counts().unwrap();
    assert_eq!((counts.pending, counts.parked), (5, 0));
    assert!(counts.oldest_pending.is_some());
    assert_eq!(take(), 0, "counting read transaction records");
    let g = b.gauges();
    assert_eq!(g.pending_transactions, 5);
    assert_eq!(take(), 0, "a metrics scrape read transaction records");
    let filter = TxnFilter { state: Some(TxnState::Pending), limit: 100, ..Default::default() };
    let listed = b.list_transactions(&filter).unwrap();
    assert_eq!(listed.len(), 5);
    assert!(listed.iter().all(|t| pending_ids.contains(&t.id)));
    let reads = take();
    assert!(reads <= 5, "listing 5 pending of 2,005 read {reads} records");
    b.shutdown();

    // After a restart the pending ones are found again (from the due index).
    let b = Broker::with_store(Config::with_data_dir("/unused"), store.clone()).unwrap();
    assert_eq!(b.transaction_counts().unwrap(), counts);
    assert_eq!(b.list_transactions(&filter).unwrap().len(), 5);
    b.shutdown();
}

/// Issue #20, fewer keys per transaction: a store written with the previous indexes (an open
/// index of pending and parked transactions, a resolution index) — or before the open index
/// existed — is converted once at start: the old keys go, parked transactions are indexed, and
/// counts, listings and the purge work as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_the_previous_transaction_indexes_is_converted_at_start() {
    let store = std::sync::Arc::new(MemoryStore::new());
    let mut config = Config::with_data_dir("/unused");
    config.txn_max_checks = 0;
    config.txn_max_checks_policy = MaxChecksPolicy::Park;
    config.txn_retention = Duration::from_millis(1);
    let b = Broker::with_store(config.clone(), store.clone()).unwrap();
    let pending = send_half(&b, "pending", None).await;
    let parked = send_half(&b, "parked", Some(0)).await;
    let committed = send_half(&b, "committed", None).await;
    let due = b.transaction(&parked).unwrap().unwrap().next_check.unwrap();
    let outcome = b.check_transaction(&parked, due, |_, _| None).await.unwrap();
    assert_eq!(outcome, CheckOutcome::Exhausted { state: TxnState::Parked });
    let done = b.end_transaction("orders", "", &committed, Resolution::Commit, Actor::Producer, None).await.unwrap();
    b.shutdown();

    // The previous layout: the pending one in the open index, the committed one in the
    // resolution index, the parked one not indexed (a store from before the open index).
    let txn = |id: &str| b.transaction(id).unwrap().unwrap();
    let open_index = Key::TxnOpen { state: 0, created_at: 0, txn: String::new() };
    let resolution_index = Key::TxnResolved { at: 0, txn: String::new() };
    let mut batch = txmq_broker::store::Batch::new();
    batch.put(&Key::TxnOpen { state: 1, created_at: txn(&pending).created_at, txn: pending.clone() }, Vec::new());
    batch.delete(&Key::TxnOpen { state: 4, created_at: txn(&parked).created_at, txn: parked.clone() });
    batch.put(&Key::TxnResolved { at: done.resolved_at.unwrap(), txn: committed.clone() }, Vec::new());
    batch.delete(&Key::Meta("txn-lean-indexes".into()));
    batch.put(&Key::Meta("txn-open-index".into()), vec![1]);
    store.apply(&batch).unwrap();
    assert_eq!((count_keys(store.as_ref(), &open_index), count_keys(store.as_ref(), &resolution_index)), (1, 1));

    let b = Broker::with_store(config, store.clone()).unwrap();
    assert_eq!(count_keys(store.as_ref(), &resolution_index), 0, "the resolution index is gone");
    let open_keys = scan_kind(store.as_ref(), &open_index);
    let parked_key = Key::TxnOpen { state: 4, created_at: txn(&parked).created_at, txn: parked.clone() };
    assert_eq!(open_keys, vec![parked_key.encode()], "only the parked transaction is indexed");
    assert!(store.get(&Key::Meta("txn-open-index".into()).encode()).unwrap().is_none());
    let counts = b.transaction_counts().unwrap();
    assert_eq!((counts.pending, counts.parked), (1, 1));
    assert_eq!(counts.oldest_pending, Some(txn(&pending).created_at));
    let listed = |state| {
        let filter = TxnFilter { state: Some(state), limit: 10, ..Default::default() };
        b.list_transactions(&filter).unwrap().into_iter().map(|t| t.id).collect::<Vec<_>>()
    };
    assert_eq!((listed(TxnState::Pending), listed(TxnState::Parked)), (vec![pending.clone()], vec![parked.clone()]));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(b.purge_transactions().await.unwrap(), 1, "the committed one, past its retention");
    assert!(b.transaction(&committed).unwrap().is_none());
    b.resume_transaction(&parked, None).await.unwrap();
    assert_eq!(count_keys(store.as_ref(), &open_index), 0, "a resumed transaction leaves the parked index");
    let counts = b.transaction_counts().unwrap();
    assert_eq!((counts.pending, counts.parked), (2, 0));
    b.shutdown();
}

/// The purge walks transaction records oldest first and stops at the first created after the
/// cutoff; it passes over (and keeps) the open ones and those resolved within the retention,
/// however old they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_keeps_open_transactions_and_those_resolved_within_the_retention() {
    let mut config = Config::with_data_dir("/unused");
    config.txn_retention = Duration::from_millis(300);
    let b = Broker::with_store(config, std::sync::Arc::new(MemoryStore::new())).unwrap();
    let open = send_half(&b, "open", None).await;
    let late = send_half(&b, "late", None).await;
    let early = send_half(&b, "early", None).await;
    b.end_transaction("orders", "", &early, Resolution::Rollback, Actor::Producer, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    // Created before the cutoff, resolved now: kept for its retention.
    b.end_transaction("orders", "", &late, Resolution::Commit, Actor::Producer, None).await.unwrap();
    assert_eq!(b.purge_transactions().await.unwrap(), 1);
    assert!(b.transaction(&early).unwrap().is_none());
    assert!(b.transaction(&late).unwrap().is_some(), "resolved within the retention");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(b.purge_transactions().await.unwrap(), 1);
    assert!(b.transaction(&late).unwrap().is_none());
    assert_eq!(b.transaction(&open).unwrap().unwrap().state, TxnState::Pending, "open ones are never purged");
    b.shutdown();
}

/// The pending transactions kept in memory agree with the store even when requests are
/// dropped while their write is under way (a client that gives up): the bookkeeping runs once
/// the write is durable, not in the request that may be gone by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_counts_agree_with_the_store_when_requests_are_dropped() {
    let b = Broker::with_store(Config::with_data_dir("/unused"), std::sync::Arc::new(MemoryStore::new())).unwrap();
    let mut ids = Vec::new();
    for i in 0..300u64 {
        ids.push(send_half(&b, &format!("m{i}"), None).await);
    }
    // Half sends and decisions, each dropped after a different short while.
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (b, id) = (b.clone(), id.clone());
        let budget = Duration::from_micros((i as u64 * 37) % 3_000);
        tasks.spawn(async move {
            let send = b.send("orders", vec![half(&format!("n{i}"), None)], "producer-1");
            let _ = tokio::time::timeout(budget, send).await;
            let end = b.end_transaction("orders", "", &id, Resolution::Commit, Actor::Producer, None);
            let _ = tokio::time::timeout(budget, end).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all = b.list_transactions(&TxnFilter { limit: 10_000, ..Default::default() }).unwrap();
    let stored: std::collections::BTreeSet<String> =
        all.iter().filter(|t| t.state == TxnState::Pending).map(|t| t.id.clone()).collect();
    let filter = TxnFilter { state: Some(TxnState::Pending), limit: 10_000, ..Default::default() };
    let listed: std::collections::BTreeSet<String> =
        b.list_transactions(&filter).unwrap().into_iter().map(|t| t.id).collect();
    let missing: Vec<_> = stored.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&stored).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "pending but not listed: {missing:?}; listed, not pending: {extra:?}"
    );
    let counts = b.transaction_counts().unwrap();
    assert_eq!(counts.pending, stored.len() as u64, "pending count vs stored pending transactions");
    let oldest = all.iter().filter(|t| t.state == TxnState::Pending).map(|t| t.created_at).min();
    assert_eq!(counts.oldest_pending, oldest);
    assert!(all.iter().any(|t| t.state == TxnState::Committed) && !stored.is_empty(), "some of each");
    b.shutdown();
}

/// Every stored value, as one list (keys and values).
fn everything(store: &dyn Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    store.scan(Bound::Unbounded, Bound::Unbounded, usize::MAX, false).unwrap()
}

/// Issue #20, lever 3: a commit does not write the message again. Its queue record points at
/// the half message, which stays past the transaction's purge for as long as the queue record
/// lives, and goes with it when the message expires; readers see the whole message throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_body_is_stored_once_and_expires_with_its_message() {
    let store = std::sync::Arc::new(MemoryStore::new());
    let mut config = Config::with_data_dir("/unused");
    config.txn_retention = Duration::from_millis(1);
    config.retention = Duration::from_millis(300);
    let b = Broker::with_store(config, store.clone()).unwrap();
    let body = b"order 9 paid: a body long enough to be told apart from every other value".repeat(4);
    let msg = NewMessage { body: body.clone(), keys: vec!["order-9".into()], ..half("m9", None) };
    let id = b.send("orders", vec![msg], "producer-1").await.unwrap()[0].transaction_id.clone().unwrap();
    let rolled = send_half(&b, "m10", None).await;
    b.end_transaction("orders", "", &id, Resolution::Commit, Actor::Producer, None).await.unwrap();
    b.end_transaction("orders", "", &rolled, Resolution::Rollback, Actor::Producer, None).await.unwrap();

    let holding_body = |store: &dyn Store| {
        everything(store).iter().filter(|(_, v)| v.windows(body.len()).any(|w| w == body.as_slice())).count()
    };
    assert_eq!(holding_body(store.as_ref()), 1, "the body is stored once");
    let read = || {
        let found = b.find_messages("orders", "m9", "", 10).unwrap();
        assert_eq!(found.len(), 1);
        let m = b.log().read("orders", found[0].queue, found[0].offset).unwrap().expect("readable");
        assert_eq!((m.msg.body.as_slice(), m.msg.message_type), (body.as_slice(), MessageType::Transaction));
        assert_eq!((m.queue, m.offset), (found[0].queue, found[0].offset));
        assert_eq!(b.find_messages("orders", "", "order-9", 10).unwrap().len(), 1, "by key too");
        m
    };
    let before_purge = read();

    // The transactions are purged; the committed one's half message stays for its message,
    // the rolled-back one's goes.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(b.purge_transactions().await.unwrap(), 2);
    assert!(b.transaction(&id).unwrap().is_none());
    assert!(b.half_message(&rolled).unwrap().is_none());
    assert_eq!(count_keys(store.as_ref(), &Key::HalfChunk { txn: String::new(), chunk: 0 }), 1);
    assert_eq!(read(), before_purge);

    // The message expires with its body.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(b.enforce_retention().await.unwrap(), 1);
    assert!(b.find_messages("orders", "m9", "", 10).unwrap().is_empty());
    assert_eq!(count_keys(store.as_ref(), &Key::HalfChunk { txn: String::new(), chunk: 0 }), 0);
    assert_eq!(holding_body(store.as_ref()), 0, "nothing of it is left");
    b.shutdown();
}

/// A purge resumes where the last one stopped instead of walking again over the records it
/// deleted (a store of sorted runs keeps their tombstones for a while), and still purges what
/// it kept before once that is resolved and past its retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_resumes_where_the_last_one_stopped() {
    let mut config = Config::with_data_dir("/unused");
    config.txn_retention = Duration::from_millis(200);
    // Where each scan of transaction records starts.
    let starts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = std::sync::Arc::new(common::ObservedStore::new({
        let starts = starts.clone();
        move |e: common::StoreEvent<'_>| match e {
            common::StoreEvent::Scan(start @ (Bound::Included(k) | Bound::Excluded(k)))
                if k.first() == Key::txn_prefix().first() =>
            {
                starts.lock().unwrap().push(start.map(<[u8]>::to_vec));
            }
            _ => {}
        }
    }));
    let b = Broker::with_store(config, store).unwrap();
    let open = send_half(&b, "open", None).await;
    let mut first = Vec::new();
    for i in 0..20 {
        let id = send_half(&b, &format!("first-{i}"), None).await;
        b.end_transaction("orders", "", &id, Resolution::Rollback, Actor::Producer, None).await.unwrap();
        first.push(id);
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    starts.lock().unwrap().clear();
    assert_eq!(b.purge_transactions().await.unwrap(), 20);
    assert_eq!(
        starts.lock().unwrap().first(),
        Some(&Bound::Included(Key::txn_prefix())),
        "the first purge walks from the oldest record"
    );
    let later = send_half(&b, "later", None).await;
    b.end_transaction("orders", "", &later, Resolution::Commit, Actor::Producer, None).await.unwrap();
    b.end_transaction("orders", "", &open, Resolution::Commit, Actor::Producer, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    starts.lock().unwrap().clear();
    assert_eq!(b.purge_transactions().await.unwrap(), 2, "the one kept before, and the later one");
    let starts = starts.lock().unwrap().clone();
    let last_purged = Key::Txn(first.last().unwrap().clone()).encode();
    assert!(
        starts.iter().all(|s| match s {
            Bound::Included(k) => *k > last_purged,
            Bound::Excluded(k) => *k >= last_purged,
            Bound::Unbounded => false,
        }),
        "no walk over the records purged before: {starts:?}"
    );
    assert!(b.transaction(&open).unwrap().is_none() && b.transaction(&later).unwrap().is_none());
    b.shutdown();
}

/// `--message-record-version 3` writes messages and half messages as brokers of before
/// 2026-12-05 did, and keeps the store's schema stamp at 8, so that they still open and read
/// it (a cluster upgraded node by node); 4, the default, writes compact records and stamps 9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_records_are_written_in_the_configured_version() {
    use txmq_broker::codec::Record;
    use txmq_broker::model::StoredMessage;
    for (version, schema) in [(3u8, 8u32), (4, 9)] {
        let store = std::sync::Arc::new(MemoryStore::new());
        let mut config = Config::with_data_dir("/unused");
        config.message_record_version = version;
        let b = Broker::with_store(config, store.clone()).unwrap();
        send_half(&b, "half", None).await;
        let normal = NewMessage { body: b"y".to_vec(), ..common::new_message("orders", "normal", MessageType::Normal) };
        b.send("orders", vec![normal], "producer-1").await.unwrap();
        let kinds = [
            (Key::MessageChunk { topic: String::new(), queue: 0, offset: 0, chunk: 0 }, "normal"),
            (Key::HalfChunk { txn: String::new(), chunk: 0 }, "half"),
        ];
        for (kind, id) in kinds {
            let keys = scan_kind(store.as_ref(), &kind);
            assert_eq!(keys.len(), 1, "{kind:?}");
            let record = store.get(&keys[0]).unwrap().unwrap();
            assert_eq!(record[0], version, "{id}: record version");
            assert_eq!(StoredMessage::decode(&record).unwrap().msg.message_id, id);
        }
        let stamp = store.get(&Key::Meta("schema-version".into()).encode()).unwrap().unwrap();
        assert_eq!(stamp, schema.to_be_bytes(), "schema stamp writing version {version}");
        b.shutdown();
    }
}
