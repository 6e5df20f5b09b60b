//! Natural batching: calls made while others are in flight wait, and leave together in the
//! next request.
//!
//! There is no linger: an item submitted while fewer than [`Batching::in_flight`] requests of
//! its kind ([`Batching::decisions_in_flight`] for decisions) are out leaves after one turn of
//! the scheduler, with whatever the tasks ready to run submitted meanwhile: on an idle client
//! nothing else is ready, and the turn costs microseconds. Under load, items gather while
//! requests are out, and batches grow with the load up to the bounds.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Bounds of the SDK's natural batching (sends, acks and transaction decisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Items per request; 1 turns batching off (one request per call).
    pub max_items: usize,
    /// Message body bytes per request (an item larger than this still leaves, alone).
    pub max_bytes: usize,
    /// Requests of sends (half messages included), of acks and of one-way commits in flight
    /// at once; further calls wait and form the next batches.
    pub in_flight: usize,
    /// Requests of awaited transaction decisions (commits, rollbacks, answers to the broker's
    /// checks) in flight at once; one-way commits keep [`Self::in_flight`]. A decision carries
    /// no body and an awaited one holds its caller: 4 instead of 2 gave awaited transactions
    /// at 8 tasks 7–14 % more a second (medians of four runs of 5–8 pairs) and a p99 12–21 %
    /// lower (lower in all 23 pairs), at 64 tasks the same within the host's spread. One-way
    /// commits, which nobody waits for, went 7–9 % slower in one run of two with 4 (more
    /// requests out, each carrying fewer), hence their own bound (BENCHMARKS.md, 2026-12-05).
    pub decisions_in_flight: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching { max_items: 128, max_bytes: 1 << 20, in_flight: 2, decisions_in_flight: 4 }
    }
}

impl Batching {
    /// One request per call.
    pub fn off() -> Self {
        Batching { max_items: 1, ..Batching::default() }
    }

    /// The bounds a batcher of awaited transaction decisions keeps: these, with
    /// [`Self::decisions_in_flight`] requests in flight.
    pub(crate) fn for_decisions(&self) -> Batching {
        Batching { in_flight: self.decisions_in_flight, ..*self }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.max_items > 1
    }
}

type Waiting<I, O> = (I, oneshot::Sender<O>);

/// The queue the request tasks take batches from, and an item that did not fit the last batch.
struct Queue<I, O> {
    rx: mpsc::UnboundedReceiver<Waiting<I, O>>,
    held: Option<Waiting<I, O>>,
}

/// Submits items one at a time; `in_flight` tasks send them in batches. The tasks end when the
/// batcher is dropped (after the items already submitted).
pub(crate) struct Batcher<I, O> {
    tx: mpsc::UnboundedSender<Waiting<I, O>>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// `call` sends one batch and returns one output per item, in order; `size` is an item's
    /// weight against [`Batching::max_bytes`].
    pub fn start<F, Fut>(limits: Batching, size: fn(&I) -> usize, call: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(Queue { rx, held: None }));
        let call = Arc::new(call);
        for _ in 0..limits.in_flight.max(1) {
            let (queue, call) = (queue.clone(), call.clone());
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&queue, limits, size).await {
                    let (items, replies): (Vec<I>, Vec<oneshot::Sender<O>>) = batch.into_iter().unzip();
                    let outputs = call(items).await;
                    for (reply, out) in replies.into_iter().zip(outputs) {
                        let _ = reply.send(out);
                    }
                }
            });
        }
        Batcher { tx }
    }

    /// [`Self::start`] with `call(target, batch)` on a clone of `target` (a client handle) for
    /// each batch.
    pub fn start_on<T, F, Fut>(limits: Batching, size: fn(&I) -> usize, target: T, call: F) -> Self
    where
        T: Clone + Send + Sync + 'static,
        F: Fn(T, Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send,
    {
        Self::start(limits, size, move |items| call(target.clone(), items))
    }

    /// Submits `item` and waits for its output; `None` when the batcher's tasks are gone.
    pub async fn submit(&self, item: I) -> Option<O> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).ok()?;
        answer.await.ok()
    }
}

/// Splits a batch into the groups one request can carry (an item joins the first group whose
/// first item `fits` it), sends every group at once with `call` (one output per item, in
/// order), and returns the outputs in the batch's order (`missing()` for an item a call left
/// unanswered).
pub(crate) async fn in_groups<I, O, Fut>(
    items: Vec<I>,
    fits: impl Fn(&I, &I) -> bool,
    call: impl Fn(Vec<I>) -> Fut,
    missing: impl Fn() -> O,
) -> Vec<O>
where
    Fut: Future<Output = Vec<O>>,
{
    let total = items.len();
    let mut groups: Vec<(Vec<usize>, Vec<I>)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match groups.iter_mut().find(|(_, g)| fits(&g[0], &item)) {
            Some((at, g)) => {
                at.push(i);
                g.push(item);
            }
            None => groups.push((vec![i], vec![item])),
        }
    }
    let sent = futures_util::future::join_all(groups.into_iter().map(|(at, g)| {
        let answers = call(g);
        async move { (at, answers.await) }
    }))
    .await;
    let mut out: Vec<Option<O>> = (0..total).map(|_| None).collect();
    for (at, answers) in sent {
        for (i, a) in at.into_iter().zip(answers) {
            out[i] = Some(a);
        }
    }
    out.into_iter().map(|a| a.unwrap_or_else(&missing)).collect()
}

/// Waits for one item, lets the tasks ready to run make their calls, then takes every item
/// waiting, within the bounds.
async fn next_batch<I, O>(
    queue: &Mutex<Queue<I, O>>,
    limits: Batching,
    size: fn(&I) -> usize,
) -> Option<Vec<Waiting<I, O>>> {
    let mut q = queue.lock().await;
    let first = match q.held.take() {
        Some(w) => w,
        None => q.rx.recv().await?,
    };
    // One turn of the scheduler before the batch is taken, so that the tasks ready to run now
    // (typically those the last answers woke, each about to make its next call) get their
    // calls in. tokio's default scheduler runs a task woken by the running one next (its "LIFO
    // slot"): without this turn, the first of them woke this task, which then ran at once and
    // sent that call alone, and the next requests went out with one or two calls each. Not a
    // linger: with nothing else to run the turn costs microseconds, and an idle client's
    // request still leaves at once.
    tokio::task::yield_now().await;
    let mut bytes = size(&first.0);
    let mut batch = vec![first];
    while batch.len() < limits.max_items.max(1) {
        let Ok(next) = q.rx.try_recv() else { break };
        let more = size(&next.0);
        if bytes + more > limits.max_bytes {
            q.held = Some(next);
            break;
        }
        bytes += more;
        batch.push(next);
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn unit(_: &u32) -> usize {
        1
    }

    /// The sizes of a batcher's requests, in the order they were sent.
    type Sizes = Arc<std::sync::Mutex<Vec<usize>>>;

    /// A batcher whose requests take `millis` and answer each item with itself, and the sizes
    /// of its requests, in the order they were sent.
    fn recording(limits: Batching, millis: u64) -> (Arc<Batcher<u32, u32>>, Sizes) {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = sizes.clone();
        let b = Arc::new(Batcher::start(limits, unit, move |items: Vec<u32>| {
            s.lock().unwrap().push(items.len());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
                items
            }
        }));
        (b, sizes)
    }

    /// Submits `0..n` at once, each from a task of its own; their outputs, in that order.
    async fn submit_at_once(b: &Arc<Batcher<u32, u32>>, n: u32) -> Vec<Option<u32>> {
        let calls: Vec<_> = (0..n)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.submit(i).await })
            })
            .collect();
        let mut outputs = Vec::new();
        for c in calls {
            outputs.push(c.await.unwrap());
        }
        outputs
    }

    #[tokio::test]
    async fn an_idle_call_leaves_alone_and_calls_under_load_share_requests() {
        let requests = Arc::new(AtomicUsize::new(0));
        let r = requests.clone();
        let limits = Batching { max_items: 10, max_bytes: 1000, in_flight: 1, decisions_in_flight: 1 };
        let b = Arc::new(Batcher::start(limits, unit, move |items: Vec<u32>| {
            r.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                items.into_iter().map(|i| i * 2).collect::<Vec<_>>()
            }
        }));
        assert_eq!(b.submit(21).await, Some(42));
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        let outputs = submit_at_once(&b, 25).await;
        assert_eq!(outputs, (0..25).map(|i| Some(i * 2)).collect::<Vec<_>>(), "each call gets its own output");
        let used = requests.load(Ordering::SeqCst) - 1;
        assert!((3..25).contains(&used), "25 calls in {used} requests of at most 10");
    }

    /// Tasks woken together make their calls before the batch leaves, also on tokio's default
    /// scheduler, which runs a woken task next: eight calls made one after another by tasks
    /// one answer woke leave in one request. Without the scheduler turn in `next_batch`, the
    /// batchers ran right after each call: four requests of one call each (as many as may be
    /// in flight), then one with the other four.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn calls_made_by_tasks_woken_together_leave_together() {
        let limits = Batching { max_items: 100, max_bytes: 1000, in_flight: 4, decisions_in_flight: 4 };
        let (b, requests) = recording(limits, 20);
        // On the runtime's one worker: eight tasks wait for their answer; one task answers them
        // all in a row, as the batcher of their previous calls does; each then makes a call.
        let calls = tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut waiting = Vec::new();
            for i in 0..8u32 {
                let (tx, rx) = oneshot::channel::<()>();
                answers.push(tx);
                let b = b.clone();
                waiting.push(tokio::spawn(async move {
                    rx.await.unwrap();
                    b.submit(i).await
                }));
            }
            // The eight run first and park on their answers, as callers waiting for a request.
            tokio::task::yield_now().await;
            for tx in answers {
                tx.send(()).unwrap();
            }
            let mut outputs = Vec::new();
            for w in waiting {
                outputs.push(w.await.unwrap());
            }
            outputs
        });
        assert_eq!(calls.await.unwrap(), (0..8).map(Some).collect::<Vec<_>>());
        assert_eq!(*requests.lock().unwrap(), vec![8], "requests and their sizes");
    }

    #[tokio::test]
    async fn requests_in_flight_keep_to_their_bound_and_decisions_have_their_own() {
        let limits = Batching { in_flight: 2, decisions_in_flight: 3, ..Batching::default() };
        for (limits, want) in [(limits, 2), (limits.for_decisions(), 3)] {
            // Requests out now, and the most ever out at once.
            let most = Arc::new(AtomicUsize::new(0));
            let (n, m) = (Arc::new(AtomicUsize::new(0)), most.clone());
            // One item per request, so that every call under load needs a request of its own.
            let b = Arc::new(Batcher::start(Batching { max_items: 1, ..limits }, unit, move |items: Vec<u32>| {
                let (n, m) = (n.clone(), m.clone());
                async move {
                    m.fetch_max(n.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    items
                }
            }));
            assert_eq!(submit_at_once(&b, 12).await, (0..12).map(Some).collect::<Vec<_>>());
            assert_eq!(most.load(Ordering::SeqCst), want, "requests out at once with {limits:?}");
        }
    }

    #[tokio::test]
    async fn groups_go_in_one_call_each_and_outputs_keep_the_items_order() {
        let calls = std::sync::Mutex::new(Vec::new());
        let out = in_groups(
            vec![1u32, 12, 3, 14, 5, 16],
            |a, b| a / 10 == b / 10,
            |g: Vec<u32>| {
                calls.lock().unwrap().push(g.clone());
                // The call answers all but the last item of a group.
                async move { g.iter().take(g.len() - 1).map(|i| i * 2).collect::<Vec<_>>() }
            },
            || 0,
        )
        .await;
        assert_eq!(*calls.lock().unwrap(), vec![vec![1, 3, 5], vec![12, 14, 16]]);
        assert_eq!(out, vec![2, 24, 6, 28, 0, 0]);
    }

    #[tokio::test]
    async fn batches_keep_to_the_byte_bound() {
        let limits = Batching { max_items: 100, max_bytes: 3, in_flight: 1, decisions_in_flight: 1 };
        let (b, sizes) = recording(limits, 10);
        assert!(submit_at_once(&b, 10).await.iter().all(Option::is_some));
        assert!(sizes.lock().unwrap().iter().all(|n| *n <= 3), "{:?}", sizes.lock().unwrap());
    }
}
