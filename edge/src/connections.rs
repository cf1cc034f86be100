//! The edge's client connections, accepted here (not by `axum::serve`) so that each one is
//! bounded: a cap on open connections per process and per client address, a pace for new
//! connections (`accept_rate`), a header-read timeout on every request head and a handshake
//! deadline for a new connection (its first request, and its WebSocket upgrade).
//!
//! The edge speaks HTTP/1.1 (WebSocket and grpc-web) and HTTP/2 with prior knowledge
//! (grpc-web); a connection's slot in the cap is held by its socket, so an upgraded WebSocket
//! keeps its slot until the socket is dropped.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use herald_proto::rate::TokenBucket;

use crate::{
    config::ConnectionLimits,
    slots::{Slot, Slots},
};

/// How long a refused connection gets to read the `503` before it is closed.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// Accepts connections on `listener` until `shutdown`; then lets open HTTP requests finish
/// (graceful shutdown) for at most `grace`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    metrics: Arc<crate::metrics::EdgeMetrics>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let per_ip = Slots::<IpAddr>::new(limits.max_per_ip);
    let mut accept_rate = (limits.accept_rate > 0)
        .then(|| TokenBucket::new(limits.accept_burst, f64::from(limits.accept_rate)));
    let connections = TaskTracker::new();
    'accept: loop {
        if let Some(rate) = accept_rate.as_mut() {
            let mut waited = false;
            while !rate.try_take() {
                if !waited {
                    metrics.limit_hit(crate::metrics::Limit::AcceptRate);
                    waited = true;
                }
                let wait = rate.wait().unwrap_or(Duration::from_secs(1));
                tokio::select! {
                    () = shutdown.cancelled() => break 'accept,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // back off a little instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        // Replies and pushes are batched by the session (one flush per batch), so Nagle's
        // delay would only hold back the last frame of each batch.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on an accepted socket");
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.limit_hit(crate::metrics::Limit::MaxConnections);
            let body = format!(
                "the edge holds its limit of {} open connections (edge.connections.max_connections); retry later\n",
                limits.max_connections
            );
            connections.spawn(refuse(tcp, "503 Service Unavailable", body));
            continue;
        };
        let Some(address_slot) = per_ip.try_acquire(&peer.ip()) else {
            metrics.limit_hit(crate::metrics::Limit::MaxPerIp);
            let body = format!(
                "this address holds its limit of {} open connections (edge.connections.max_per_ip)\n",
                limits.max_per_ip
            );
            connections.spawn(refuse(tcp, "429 Too Many Requests", body));
            continue;
        };
        let io = Counted {
            tcp,
            _slot: slot,
            _address_slot: address_slot,
        };
        connections.spawn(connection(
            io,
            peer,
            app.clone(),
            limits.clone(),
            shutdown.clone(),
        ));
    }
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP requests did not finish within the grace period");
    }
}

/// Answers a connection over a limit with `status` and a body naming the limit, then closes
/// it.
async fn refuse(mut tcp: TcpStream, status: &'static str, body: String) {
    let response = format!(
        "HTTP/1.1 {status}\r\nconnection: close\r\nretry-after: 1\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        // Read what the client sends until it closes, so the answer is not lost to a reset.
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_GRACE, answer).await;
}

/// Serves one connection: HTTP/1.1 with upgrades and a header-read timeout on every request
/// head, or HTTP/2; either within the handshake deadline.
async fn connection(
    io: Counted,
    peer: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let first = Arc::new(FirstRequest::default());
    let service = {
        let first = first.clone();
        tower::service_fn(move |request: http::Request<Incoming>| {
            first.arrived(is_upgrade(&request));
            app.clone().oneshot(request)
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let mut conn = pin!(
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
    );
    let mut handshake = pin!(tokio::time::sleep(limits.handshake_timeout));
    let mut handshaking = true;
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, %peer, "connection ended");
                }
                break;
            }
            () = first.done.notified(), if handshaking => handshaking = false,
            () = &mut handshake, if handshaking => {
                tracing::debug!(%peer, "handshake deadline passed: connection closed");
                break;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

fn is_upgrade(request: &http::Request<Incoming>) -> bool {
    request.headers().contains_key(http::header::UPGRADE)
}

/// Whether a connection's handshake is over: its first request arrived and was not an
/// upgrade (an upgrade's handshake ends when the connection is handed to the WebSocket).
#[derive(Debug, Default)]
struct FirstRequest {
    seen: AtomicBool,
    done: Notify,
}

impl FirstRequest {
    fn arrived(&self, upgrade: bool) {
        if !self.seen.swap(true, Ordering::Relaxed) && !upgrade {
            self.done.notify_one();
        }
    }
}

/// A client socket holding its slot in the connection cap.
#[derive(Debug)]
struct Counted {
    tcp: TcpStream,
    _slot: OwnedSemaphorePermit,
    _address_slot: Slot<IpAddr>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}
