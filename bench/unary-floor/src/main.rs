//! What one unary gRPC call costs a server on this machine, with the broker's runtime (two
//! workers, tokio's LIFO slot off, mimalloc), served five ways to the same tonic client:
//!
//! - `tonic`: tonic's server (hyper underneath), as the broker served its services before b17d54e;
//! - `tonic-local`: the same tonic services on hyper's HTTP/2 connection, with an executor that
//!   runs each stream's future inside its connection's task instead of spawning a task per call;
//! - `tonic-hyper`: the same, with hyper's executor spawning a task per call (what tonic's own
//!   server does, without its per-connection layers);
//! - `h2-spawn`: the `h2` crate used directly, one task per stream (what hyper does);
//! - `h2-inline`: the `h2` crate used directly, every stream answered inside its connection's
//!   task (no task per call).
//!
//! usage: unary-floor server MODE ADDR
//!        unary-floor client ADDR CONCURRENCY SECONDS SERVER_PID
//! The client prints one RESULT line: calls per second and the server's CPU per call, taken from
//! /proc/SERVER_PID/stat over the measured seconds (after one second of warm-up).
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use prost::Message;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod echo {
    tonic::include_proto!("echo");
}
use echo::EchoMsg;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let rt = builder.build()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["server", mode, addr] => rt.block_on(server(mode, addr)),
        ["client", addr, conc, secs, pid] => rt.block_on(client(addr, conc.parse()?, secs.parse()?, pid.parse()?)),
        _ => Err("usage: unary-floor server tonic|tonic-local|tonic-hyper|h2-spawn|h2-inline ADDR | client ADDR CONC SECS PID".into()),
    }
}

struct Echo;

#[tonic::async_trait]
impl echo::echo_server::Echo for Echo {
    async fn unary(&self, req: tonic::Request<EchoMsg>) -> Result<tonic::Response<EchoMsg>, tonic::Status> {
        Ok(tonic::Response::new(req.into_inner()))
    }
}

async fn server(mode: &str, addr: &str) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    if mode == "tonic" {
        let incoming = tokio_stream_of(listener);
        tonic::transport::Server::builder()
            .add_service(echo::echo_server::EchoServer::new(Echo))
            .serve_with_incoming(incoming)
            .await?;
        return Ok(());
    }
    if mode == "tonic-local" || mode == "tonic-hyper" {
        let spawn = mode == "tonic-hyper";
        let routes = tonic::service::Routes::new(echo::echo_server::EchoServer::new(Echo));
        loop {
            let (sock, _) = listener.accept().await?;
            sock.set_nodelay(true)?;
            let svc = hyper_util::service::TowerToHyperService::new(MapBody(routes.clone()));
            tokio::spawn(async move {
                let r = if spawn {
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .timer(hyper_util::rt::TokioTimer::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await
                        .map_err(Error::from)
                } else {
                    local::serve(sock, svc).await
                };
                if let Err(e) = r {
                    eprintln!("connection: {e}");
                }
            });
        }
    }
    let inline = match mode {
        "h2-inline" => true,
        "h2-spawn" => false,
        _ => return Err(format!("unknown mode {mode}").into()),
    };
    loop {
        let (sock, _) = listener.accept().await?;
        sock.set_nodelay(true)?;
        tokio::spawn(async move {
            if let Err(e) = connection(sock, inline).await {
                eprintln!("connection: {e}");
            }
        });
    }
}

/// tonic's routes taking hyper's request body.
#[derive(Clone)]
struct MapBody(tonic::service::Routes);

impl tower_service::Service<http::Request<hyper::body::Incoming>> for MapBody {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = <tonic::service::Routes as tower_service::Service<http::Request<tonic::body::Body>>>::Future;
    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        tower_service::Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.0, cx)
    }
    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.0.call(req.map(tonic::body::Body::new))
    }
}

mod local {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Hands each stream's future to the task that serves its connection.
    #[derive(Clone)]
    pub struct Exec(tokio::sync::mpsc::UnboundedSender<Task>);

    impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Exec {
        fn execute(&self, fut: F) {
            let _ = self.0.send(Box::pin(fut));
        }
    }

    pub async fn serve<S, B>(sock: tokio::net::TcpStream, svc: S) -> Result<(), super::Error>
    where
        S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<super::Error>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<super::Error>,
    {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Task>();
        let conn = hyper::server::conn::http2::Builder::new(Exec(tx))
            .timer(hyper_util::rt::TokioTimer::new())
            .serve_connection(hyper_util::rt::TokioIo::new(sock), svc);
        let mut conn = std::pin::pin!(conn);
        let mut streams = FuturesUnordered::new();
        std::future::poll_fn(|cx: &mut Context<'_>| loop {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(r.map_err(super::Error::from));
            }
            let mut more = false;
            while let Poll::Ready(Some(t)) = rx.poll_recv(cx) {
                streams.push(t);
                more = true;
            }
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            if !more {
                return Poll::Pending;
            }
        })
        .await
    }
}

/// Accepted sockets with TCP_NODELAY set, as a stream tonic can serve.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s).and_then(|s| s.set_nodelay(true).map(|()| s));
        Some((r, l))
    })
}

async fn connection(sock: tokio::net::TcpStream, inline: bool) -> Result<(), Error> {
    let mut conn = h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .max_concurrent_streams(1000)
        .handshake::<_, Bytes>(sock)
        .await?;
    if !inline {
        while let Some(r) = conn.accept().await {
            let (req, respond) = r?;
            tokio::spawn(async move {
                if let Err(e) = answer(req, respond).await {
                    eprintln!("stream: {e}");
                }
            });
        }
        return Ok(());
    }
    let mut calls = FuturesUnordered::new();
    loop {
        tokio::select! {
            r = conn.accept() => match r {
                Some(r) => { let (req, respond) = r?; calls.push(answer(req, respond)); }
                None => return Ok(()),
            },
            Some(r) = calls.next(), if !calls.is_empty() => if let Err(e) = r { eprintln!("stream: {e}"); },
        }
    }
}

/// One unary call: read the request's gRPC frame, decode it, answer the same message with status 0.
async fn answer(req: http::Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) -> Result<(), Error> {
    let mut body = req.into_body();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
    if buf.len() < 5 {
        return Err("short gRPC frame".into());
    }
    let msg = EchoMsg::decode(&buf[5..])?;
    let mut out = BytesMut::with_capacity(5 + msg.encoded_len());
    out.put_u8(0);
    out.put_u32(u32::try_from(msg.encoded_len())?);
    msg.encode(&mut out)?;
    let head = http::Response::builder().status(200).header("content-type", "application/grpc").body(())?;
    let mut send = respond.send_response(head, false)?;
    send.send_data(out.freeze(), false)?;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    send.send_trailers(trailers)?;
    Ok(())
}

/// utime + stime of a process, in clock ticks (100 per second here).
fn cpu_ticks(pid: u32) -> Result<u64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').ok_or("bad stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

async fn client(addr: &str, conc: usize, secs: u64, pid: u32) -> Result<(), Error> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(secs + 1);
    let mut tasks = Vec::new();
    for t in 0..conc {
        let mut c = echo::echo_client::EchoClient::new(channel.clone());
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            let payload = vec![7u8; 256];
            let mut seq = t as u64;
            while Instant::now() < stop {
                let r = c.unary(EchoMsg { payload: payload.clone(), seq }).await;
                if r.is_ok() {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                seq += conc as u64;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (n0, c0, t0) = (count.load(std::sync::atomic::Ordering::Relaxed), cpu_ticks(pid)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (n1, c1, t1) = (count.load(std::sync::atomic::Ordering::Relaxed), cpu_ticks(pid)?, Instant::now());
    for t in tasks {
        t.await?;
    }
    let calls = n1 - n0;
    let elapsed = (t1 - t0).as_secs_f64();
    let cpu_us = (c1 - c0) as f64 * 10_000.0;
    println!(
        "RESULT calls={calls} rate={:.0} server_cpu={:.0}% server_us_per_call={:.1} concurrency={conc}",
        calls as f64 / elapsed,
        cpu_us / elapsed / 10_000.0,
        cpu_us / calls.max(1) as f64
    );
    Ok(())
}
