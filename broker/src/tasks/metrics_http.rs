//! A minimal HTTP/1.1 endpoint for Prometheus: `GET /metrics` answers the text exposition;
//! anything else 404. One request per connection; requests are bounded to 8 KiB of headers.

use crate::broker::Broker;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const MAX_REQUEST: usize = 8 * 1024;

/// Accepts scrapes until `shutdown`.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, shutdown: CancellationToken, tracker: TaskTracker) {
    loop {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, _)) => {
                let broker = broker.clone();
                tracker.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &broker)).await;
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a moment instead of spinning.
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, broker: &Broker) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
    let (status, body) = if line.starts_with(b"GET /metrics") {
        let gauges = tokio::task::block_in_place(|| broker.gauges());
        let text = broker.metrics().render(&gauges);
        // A cluster node labels its series with its node id.
        let c = broker.config();
        match (&c.etcd, &c.node_id) {
            (Some(_), Some(node)) => ("200 OK", crate::metrics::label_node(&text, node)),
            _ => ("200 OK", text),
        }
    } else {
        ("404 Not Found", "not found; try /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
