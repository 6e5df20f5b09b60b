//! One suite, run against every [`Store`] implementation: the contract in `store/mod.rs`.

use super::*;
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::Arc;

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn put(store: &dyn Store, pairs: &[(&str, &str)]) {
    let mut b = Batch::new();
    for (key, v) in pairs {
        b.put_raw(k(key), k(v));
    }
    store.apply(&b).unwrap();
}

fn get_set_delete(store: &dyn Store) {
    assert_eq!(store.get(b"a").unwrap(), None);
    put(store, &[("a", "1"), ("b", "2")]);
    assert_eq!(store.get(b"a").unwrap(), Some(k("1")));
    let mut b = Batch::new();
    b.delete_raw(k("a")).put_raw(k("b"), k("3"));
    store.apply(&b).unwrap();
    assert_eq!(store.get(b"a").unwrap(), None);
    assert_eq!(store.get(b"b").unwrap(), Some(k("3")));
}

fn later_writes_in_a_batch_win(store: &dyn Store) {
    let mut b = Batch::new();
    b.put_raw(k("x"), k("1")).delete_raw(k("x")).put_raw(k("y"), k("1")).put_raw(k("y"), k("2"));
    store.apply(&b).unwrap();
    assert_eq!(store.get(b"x").unwrap(), None);
    assert_eq!(store.get(b"y").unwrap(), Some(k("2")));
}

fn scans_are_ordered_bounded_and_reversible(store: &dyn Store) {
    put(store, &[("p1", "a"), ("p3", "c"), ("p2", "b"), ("q1", "z"), ("o9", "y")]);
    let keys = |v: Vec<Entry>| v.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect::<Vec<_>>();
    assert_eq!(keys(scan_prefix(store, b"p", 10, false).unwrap()), ["p1", "p2", "p3"]);
    assert_eq!(keys(scan_prefix(store, b"p", 2, false).unwrap()), ["p1", "p2"]);
    assert_eq!(keys(scan_prefix(store, b"p", 2, true).unwrap()), ["p3", "p2"]);
    assert_eq!(keys(store.scan(Excluded(b"p1"), Included(b"p3"), 10, false).unwrap()), ["p2", "p3"]);
    assert_eq!(keys(store.scan(Unbounded, Excluded(b"p2"), 10, false).unwrap()), ["o9", "p1"]);
    assert!(store.scan(Included(b"z"), Excluded(b"a"), 10, false).unwrap().is_empty());
    assert!(store.scan(Excluded(b"p1"), Excluded(b"p1"), 10, false).unwrap().is_empty());
    assert_eq!(keys(store.scan(Included(b"p1"), Included(b"p1"), 10, false).unwrap()), ["p1"]);
    assert!(scan_prefix(store, b"p", 0, false).unwrap().is_empty());
}

fn binary_keys_and_empty_values(store: &dyn Store) {
    let mut b = Batch::new();
    b.put_raw(vec![0, 0xFF, 0], Vec::new()).put_raw(vec![0xFE, 0xFF, 0xFF], vec![0; 5]);
    store.apply(&b).unwrap();
    assert_eq!(store.get(&[0, 0xFF, 0]).unwrap(), Some(Vec::new()));
    assert_eq!(scan_prefix(store, &[0xFE, 0xFF], 10, false).unwrap().len(), 1);
}

fn chunked_records_roundtrip(store: &dyn Store) {
    let key = |chunk| Key::MessageChunk { topic: "t".into(), queue: 0, offset: 7, chunk };
    let prefix = Key::message_prefix("t", 0, 7);
    for len in [0, 1, chunks::CHUNK_SIZE, chunks::CHUNK_SIZE + 1, 3 * chunks::CHUNK_SIZE + 17] {
        let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut b = Batch::new();
        chunks::delete(store, &mut b, &prefix).unwrap();
        chunks::put(&mut b, &value, key).unwrap();
        store.apply(&b).unwrap();
        assert_eq!(chunks::get(store, &prefix).unwrap(), Some(value), "length {len}");
    }
    let mut b = Batch::new();
    chunks::delete(store, &mut b, &prefix).unwrap();
    store.apply(&b).unwrap();
    assert_eq!(chunks::get(store, &prefix).unwrap(), None);
}

/// Writes queued while one is being applied share the next apply and flush (group commit),
/// in submission order; every waiter hears only after its flush.
fn committer_groups_and_orders_writes(store: Arc<dyn Store>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    let (gate, faults) = faults::FaultyStore::new(store.clone());
    faults.hold_applies();
    let committer = Arc::new(Committer::start(Arc::new(gate), 256).unwrap());
    rt.block_on(async {
        // The first write holds the writer in its apply; 200 more queue behind it.
        let mut first = Batch::new();
        first.put_raw(k("first"), k("x"));
        let first = committer.reserve().await.unwrap().submit(first, None);
        while faults.applies() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let mut queued = Vec::new();
        for i in 0..200u32 {
            let mut b = Batch::new();
            b.put_raw(format!("c{i:04}").into_bytes(), i.to_be_bytes().to_vec());
            queued.push(committer.reserve().await.unwrap().submit(b, None));
        }
        // Same key written twice in one group: the later submit wins.
        let (s1, s2) = (committer.reserve().await.unwrap(), committer.reserve().await.unwrap());
        let mut b1 = Batch::new();
        b1.put_raw(k("order"), k("first"));
        let mut b2 = Batch::new();
        b2.put_raw(k("order"), k("second"));
        let (p1, p2) = (s1.submit(b1, None), s2.submit(b2, None));
        faults.release();
        first.durable().await.unwrap();
        for p in queued {
            p.durable().await.unwrap();
        }
        p1.durable().await.unwrap();
        p2.durable().await.unwrap();
    });
    assert_eq!(scan_prefix(store.as_ref(), b"c", 1000, false).unwrap().len(), 200);
    assert_eq!(store.get(b"order").unwrap(), Some(k("second")));
    let stats = committer.stats();
    assert_eq!(stats.jobs, 203);
    assert_eq!(stats.flushes, 2, "one flush for the held write, one for the 202 queued behind it");
    assert_eq!(stats.max_group, 202);
    committer.shutdown();
    let after = rt.block_on(committer.commit(Batch::new()));
    assert!(matches!(after, Err(StoreError::Closed)), "{after:?}");
}

/// Keys of several kinds (message chunks, message ids, transaction records and half messages,
/// due times, cursors and deliveries, others around them), written, deleted and flushed in
/// turn, read back as an ordered map holds them: some stores keep some kinds apart from the
/// rest.
fn keys_of_every_kind_read_as_one_ordered_map(store: &dyn Store) {
    let universe: Vec<Vec<u8>> = (0..40u64)
        .flat_map(|n| {
            [
                Key::MessageChunk { topic: "t".into(), queue: (n % 2) as u32, offset: n, chunk: 0 }.encode(),
                Key::MessageId { topic: "t".into(), message_id: format!("id{n:03}") }.encode(),
                Key::MessageId { topic: "u".into(), message_id: format!("id{n:03}") }.encode(),
                vec![0x02, n as u8],
                vec![0x05, n as u8],
                Key::Txn(format!("x{n:03}")).encode(),
                Key::HalfChunk { txn: format!("x{n:03}"), chunk: 0 }.encode(),
                Key::TxnDue { at: n as i64, txn: format!("x{n:03}") }.encode(),
                Key::Cursor { group: "g".into(), topic: "t".into(), queue: n as u32 }.encode(),
                Key::Inflight { group: "g".into(), topic: "t".into(), queue: 0, offset: n }.encode(),
            ]
        })
        .collect();
    let mut model: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = std::collections::BTreeMap::new();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for phase in 0..4 {
        for _ in 0..6 {
            let mut b = Batch::new();
            for _ in 0..12 {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let key = universe[(seed >> 33) as usize % universe.len()].clone();
                if (seed >> 20) % 3 == 0 {
                    b.delete_raw(key.clone());
                    model.remove(&key);
                } else {
                    let v = vec![phase as u8, (seed >> 8) as u8];
                    b.put_raw(key.clone(), v.clone());
                    model.insert(key, v);
                }
            }
            store.apply(&b).unwrap();
        }
        if phase % 2 == 0 {
            store.flush().unwrap();
        }
        for key in &universe {
            assert_eq!(store.get(key).unwrap(), model.get(key).cloned(), "key {key:?}");
        }
        let all: Vec<Entry> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(store.scan(Unbounded, Unbounded, 1000, false).unwrap(), all);
        assert_eq!(
            store.scan(Unbounded, Unbounded, 7, true).unwrap(),
            all.iter().rev().take(7).cloned().collect::<Vec<_>>()
        );
        let ids_u = Key::MessageId { topic: "u".into(), message_id: String::new() }.encode();
        let ids_u = &ids_u[..ids_u.len() - 2];
        let want: Vec<Entry> = all.iter().filter(|(k, _)| k.starts_with(ids_u)).cloned().collect();
        assert_eq!(scan_prefix(store, ids_u, 1000, false).unwrap(), want);
        assert_eq!(scan_prefix(store, ids_u, 3, true).unwrap(), want.iter().rev().take(3).cloned().collect::<Vec<_>>());
        let from = &universe[7];
        let want: Vec<Entry> = all.iter().filter(|(k, _)| k > from).take(9).cloned().collect();
        assert_eq!(store.scan(Excluded(from.as_slice()), Unbounded, 9, false).unwrap(), want);
    }
}

fn run_suite(make: impl Fn() -> Arc<dyn Store>) {
    keys_of_every_kind_read_as_one_ordered_map(make().as_ref());
    get_set_delete(make().as_ref());
    later_writes_in_a_batch_win(make().as_ref());
    scans_are_ordered_bounded_and_reversible(make().as_ref());
    binary_keys_and_empty_values(make().as_ref());
    chunked_records_roundtrip(make().as_ref());
    committer_groups_and_orders_writes(make());
}

#[test]
fn memory_store_conforms() {
    run_suite(|| Arc::new(MemoryStore::new()));
}

#[test]
fn sled_store_conforms() {
    let dirs = std::sync::Mutex::new(Vec::new());
    run_suite(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        dirs.lock().unwrap().push(dir);
        store
    });
}

#[test]
fn sled_store_with_a_value_log_conforms() {
    let dirs = std::sync::Mutex::new(Vec::new());
    run_suite(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open_with(dir.path(), sled_store::Layout::ValueLog).unwrap());
        assert!(store.has_value_log());
        dirs.lock().unwrap().push(dir);
        store
    });
}

#[test]
fn sled_store_with_message_files_conforms() {
    let dirs = std::sync::Mutex::new(Vec::new());
    run_suite(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open_with(dir.path(), sled_store::Layout::MessageFiles).unwrap());
        assert_eq!(store.layout(), sled_store::Layout::MessageFiles);
        dirs.lock().unwrap().push(dir);
        store
    });
}

#[test]
fn sled_keeps_large_records_out_of_unsynced_blob_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let body = vec![0xAB_u8; 4 * 1024 * 1024 - 64 * 1024];
    for offset in 0..4 {
        let mut b = Batch::new();
        chunks::put(&mut b, &body, |chunk| Key::MessageChunk { topic: "big".into(), queue: 0, offset, chunk }).unwrap();
        store.apply(&b).unwrap();
        store.flush().unwrap();
    }
    assert_eq!(store.blob_file_count(), 0);
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(chunks::get(&store, &Key::message_prefix("big", 0, 3)).unwrap(), Some(body));
}

#[test]
fn sled_data_survives_reopen_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        put(&store, &[("k", "v")]);
        store.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.get(b"k").unwrap(), Some(k("v")));
}

/// A store whose flush fails: the committer must refuse every later write.
struct FailingFlush(MemoryStore);

impl Store for FailingFlush {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(key)
    }
    fn scan(
        &self,
        s: std::ops::Bound<&[u8]>,
        e: std::ops::Bound<&[u8]>,
        l: usize,
        r: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        self.0.scan(s, e, l, r)
    }
    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        self.0.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        // As slow as a disk, so that groups queue behind the failing flush.
        std::thread::sleep(std::time::Duration::from_millis(2));
        Err(StoreError::Io("injected fsync failure".into()))
    }
    fn size_on_disk(&self) -> u64 {
        0
    }
}

#[test]
fn committer_poisons_after_a_failed_flush() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let committer = Committer::start(Arc::new(FailingFlush(MemoryStore::new())), 8).unwrap();
    rt.block_on(async {
        let first = committer.commit(Batch::new()).await;
        assert!(matches!(first, Err(StoreError::Poisoned(_))), "{first:?}");
        let second = committer.commit(Batch::new()).await;
        assert!(matches!(second, Err(StoreError::Poisoned(_))), "{second:?}");
    });
    assert!(committer.poisoned().unwrap().contains("injected"));
}

/// Groups applied behind a failing flush fail with it, and nothing is counted durable.
#[test]
fn a_failed_flush_fails_every_group_waiting_for_it() {
    let committer = Arc::new(Committer::start(Arc::new(FailingFlush(MemoryStore::new())), 64).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let c = committer.clone();
                tokio::spawn(async move { c.commit(Batch::new()).await })
            })
            .collect();
        for t in tasks {
            let r = t.await.unwrap();
            assert!(matches!(r, Err(StoreError::Poisoned(_))), "{r:?}");
        }
    });
    assert!(committer.poisoned().unwrap().contains("injected"));
    assert_eq!(committer.stats().jobs, 0, "nothing was counted durable");
}

#[test]
fn sled_blob_detector_sees_an_oversized_value() {
    // Guards the test above: an unchunked 256 KiB value does create a blob file.
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut b = Batch::new();
    b.put_raw(k("huge"), vec![1; 256 * 1024]);
    store.apply(&b).unwrap();
    store.flush().unwrap();
    assert!(store.blob_file_count() > 0);
}

#[test]
fn a_newer_store_is_refused_and_an_older_one_stamped() {
    let store = MemoryStore::new();
    let key = Key::Meta("schema-version".into()).encode();
    // A broker writing version-3 message records stamps the schema before compact records.
    check_schema(&store, crate::store::schema_written(3)).unwrap();
    assert_eq!(store.get(&key).unwrap(), Some(8u32.to_be_bytes().to_vec()));
    check_schema(&store, crate::store::schema_written(4)).unwrap();
    assert_eq!(store.get(&key).unwrap(), Some(SCHEMA_VERSION.to_be_bytes().to_vec()));
    check_schema(&store, crate::store::schema_written(3)).unwrap();
    assert_eq!(store.get(&key).unwrap(), Some(SCHEMA_VERSION.to_be_bytes().to_vec()), "never lowered");
    let mut b = Batch::new();
    b.put_raw(key, (SCHEMA_VERSION + 1).to_be_bytes().to_vec());
    store.apply(&b).unwrap();
    let err = check_schema(&store, SCHEMA_VERSION).unwrap_err().to_string();
    assert!(err.contains("newer txmq"), "{err}");
}
