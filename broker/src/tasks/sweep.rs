//! Forgets clients that are gone: those without a stream and silent for [`IDLE_CLIENT`], and
//! those whose every stream went silent on check-backs and who sent nothing for
//! [`ALIVE_WINDOW`] (their streams are ended).

use crate::grpc::clients::{Clients, ALIVE_WINDOW};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the registry is swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Clients gone without NotifyClientTermination and without a stream are forgotten after this.
pub const IDLE_CLIENT: Duration = Duration::from_secs(600);

/// Runs until `shutdown`.
pub async fn run(clients: Arc<Clients>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let forgotten = clients.sweep(IDLE_CLIENT, ALIVE_WINDOW);
        if forgotten > 0 {
            tracing::debug!(forgotten, "forgot gone clients");
        }
    }
}
