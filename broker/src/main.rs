//! `txmq-broker`: runs the broker until SIGINT or SIGTERM.

use clap::Parser;
use std::process::ExitCode;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use txmq_broker::{broker::Broker, config::Args, server};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
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
