//! The order service's race suite: 2,000 orders whose payment callbacks and timeout cancels
//! race with random timings, with duplicated submits and callbacks — plain, with the broker
//! stopped for part of the run (outbox path), and with producers "crashing" between the half
//! message's database commit and its commit (check-back path). Every invariant must hold.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../examples/order_service/service.rs"]
mod service;
#[path = "../examples/order_service/suite.rs"]
mod suite;

fn options(seed: u64) -> suite::Options {
    suite::Options { orders: 2000, concurrency: 32, outage: false, crash_rate: 0.0, seed, show: 0, broker: None }
}

async fn check(opts: suite::Options) -> suite::Report {
    let dir = tempfile::tempdir().unwrap();
    let report = suite::run(dir.path(), opts).await.unwrap();
    println!("{}", report.line());
    assert!(report.violations.is_empty(), "invariants broken: {:#?}\n{}", report.violations, report.line());
    assert!(
        report.paid > 0 && report.cancelled > 0 && report.cancelled_refunded > 0,
        "all outcomes occur: {}",
        report.line()
    );
    assert_eq!(
        report.duplicate_submits,
        report.orders,
        "each order's second submit found the first: {}",
        report.line()
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_suite_holds_its_invariants() {
    check(options(7)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_suite_with_a_broker_outage_uses_the_outbox() {
    check(suite::Options { outage: true, ..options(11) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_suite_with_producers_crashing_before_commit_uses_check_back() {
    let report = check(suite::Options { crash_rate: 0.3, ..options(13) }).await;
    // About 30% of the ~4,000 order changes left their commit to the check-back.
    assert!(report.checks_answered >= 500, "the check-back path was used: {}", report.line());
}
