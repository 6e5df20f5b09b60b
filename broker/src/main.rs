//! `txmq-broker`: runs the broker until SIGINT or SIGTERM.

use clap::Parser;
use std::process::ExitCode;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use txmq_broker::{broker::Broker, config::Args, server};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("txmq-broker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

/// tokio's multi-threaded runtime, one worker per core, without the "LIFO slot" when built
/// with `--cfg tokio_unstable` (as .cargo/config.toml does).
///
/// Why: with the slot, a task woken by the task running on a worker runs right after it. Once
/// a group commit answers its waiters, each request's task finishes by handing its response to
/// the connection's task, which then ran next and wrote that one response to the socket: about
/// one `writev` per two messages at 64 in flight. Without the slot the connection's task queues
/// behind the other finished requests and writes their responses together: 0.15 `writev` per
/// message, and broker CPU per unary send 46 → 41 and 38 → 31 µs in two measured pairs
/// (BENCHMARKS.md).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

async fn run() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let config = match Args::parse().resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("txmq-broker: {e}");
            return ExitCode::from(2);
        }
    };
    if !cfg!(tokio_unstable) {
        tracing::info!("built without --cfg tokio_unstable: tokio's default scheduler, more CPU per request (README)");
    }
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "broker failed");
            eprintln!("txmq-broker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: txmq_broker::config::Config) -> anyhow::Result<()> {
    loop {
        // A node replaced after a failover, or drained (its shard served from a copy), runs
        // again: it waits while drained, stands by until the shard is handed back, then serves it.
        let standby = txmq_broker::replication::rejoin::rejoin(&config).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        tracing::info!(data_dir = %config.data_dir.display(), "opening store");
        let broker = Broker::open(config.clone())?;
        if let Some(s) = standby {
            broker.set_standby(s);
        }
        match server::run(listener, broker, shutdown_signal()).await {
            Err(server::ServeError::Superseded) => {
                tracing::warn!("this node no longer serves its shard (replaced while cut off, or drained); rejoining");
                continue;
            }
            other => return Ok(other?),
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the broker");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    /// Builds here pass `--cfg tokio_unstable` (.cargo/config.toml), without which the runtime
    /// keeps tokio's LIFO slot and each response leaves in its own write (see [`super::runtime`]).
    #[test]
    #[allow(clippy::assertions_on_constants)] // the constant is the build's configuration
    fn builds_here_run_the_broker_without_tokio_s_lifo_slot() {
        assert!(
            cfg!(tokio_unstable),
            "built without --cfg tokio_unstable: .cargo/config.toml is missing or RUSTFLAGS replaced it"
        );
        let runtime = super::runtime().unwrap_or_else(|e| panic!("runtime: {e}"));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(runtime.metrics().num_workers(), cores, "one worker per core");
    }
}
