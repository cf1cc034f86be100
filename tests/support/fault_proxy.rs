//! A TCP fault proxy for tests: listens on 127.0.0.1:0 and forwards every connection to a
//! target, and can be switched at run time to delay each chunk, black-hole the link (accept
//! and read, forward nothing) or reset every current connection (RST, via `SO_LINGER` 0).
//! Put it between an edge and its backend to test what the edge does when the link fails.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// What the proxy does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward at once.
    Pass,
    /// Forward each chunk this long after it was read (latency, not a throughput cap).
    Delay(Duration),
    /// Read and discard, in both directions; new connections are accepted and read too.
    BlackHole,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    /// Cancelled to reset every connection open at that moment.
    generation: Arc<Mutex<CancellationToken>>,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `target`, passing everything.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (fault, _) = watch::channel(Fault::Pass);
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let fault = fault.clone();
            let generation = generation.clone();
            let open = open.clone();
            let accepted = accepted.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let reset = generation.lock().expect("proxy lock").clone();
                    let fault = fault.subscribe();
                    let open = open.clone();
                    open.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        relay(client, target, fault, reset).await;
                        open.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            }
        });
        FaultProxy {
            addr,
            fault,
            generation,
            open,
            accepted,
            accept,
        }
    }

    /// Switches what happens to bytes from now on (connections open now included).
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Resets every connection open now (both sides get an RST); later ones are not affected.
    pub fn reset_all(&self) {
        let mut generation = self.generation.lock().expect("proxy lock");
        generation.cancel();
        *generation = CancellationToken::new();
    }

    /// Connections open through the proxy now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections accepted since the start.
    pub fn accepted_connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset_all();
    }
}

async fn relay(
    client: TcpStream,
    target: SocketAddr,
    fault: watch::Receiver<Fault>,
    reset: CancellationToken,
) {
    let server = tokio::select! {
        server = TcpStream::connect(target) => match server {
            Ok(server) => server,
            Err(_) => return abort(&client),
        },
        () = reset.cancelled() => return abort(&client),
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        direction(client_read, server_write, fault.clone(), reset.clone()),
        direction(server_read, client_write, fault, reset),
    );
}

// `SO_LINGER` 0 makes the close an RST; only a non-zero linger blocks on drop, which is what
// tokio's deprecation warns about.
#[allow(deprecated)]
fn abort(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// One direction of a connection: the reader stamps chunks, the writer sends each when its
/// delay is over. On a reset both set `SO_LINGER` 0 on their socket before dropping their
/// half, so the close is an RST.
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    fault: watch::Receiver<Fault>,
    reset: CancellationToken,
) {
    let (chunks, mut queued) = mpsc::channel::<(Instant, Bytes)>(1024);
    let reader = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = tokio::select! {
                read = from.read(&mut buffer) => read,
                () = reset.cancelled() => {
                    abort(from.as_ref());
                    break;
                }
            };
            let read = match read {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let due = match *fault.borrow() {
                Fault::Pass => Instant::now(),
                Fault::Delay(delay) => Instant::now() + delay,
                Fault::BlackHole => continue,
            };
            if chunks
                .send((due, Bytes::copy_from_slice(&buffer[..read])))
                .await
                .is_err()
            {
                break;
            }
        }
        drop(chunks);
    };
    let writer = async {
        let written = async {
            while let Some((due, chunk)) = queued.recv().await {
                tokio::time::sleep_until(due).await;
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = to.shutdown().await;
        };
        tokio::select! {
            () = written => {}
            () = reset.cancelled() => {
                abort(to.as_ref());
            }
        }
    };
    tokio::join!(reader, writer);
}
