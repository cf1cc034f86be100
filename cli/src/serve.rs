//! `herald serve` (backend and edge in one process) and `herald edge` (an edge alone).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use herald_backend::{
    Config,
    auth::dev_key::{self, TokenClaims},
};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::{CliError, EdgeAuthArgs, Settings};

/// Pending connections the kernel queues per listener.
const ACCEPT_BACKLOG: u32 = 4096;

/// How `herald serve` runs its edge: on a runtime of its own, beside the backend's.
#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeRuntime {
    /// Worker threads; `None`: one per CPU.
    pub threads: Option<u16>,
}

/// Binds both listeners, then runs the backend and (unless `edge` is `None`) the edge until
/// `shutdown`.
///
/// The edge gets its own Tokio runtime on its own threads. On one runtime, a saturated
/// fan-out (tens of thousands of socket writes queued as tasks) sat in the same run queues as
/// the backend's publishes and database work, and publish latency grew into seconds; as
/// separate threads, the operating system shares the cores between the two.
pub async fn serve(
    settings: Settings,
    edge: Option<EdgeRuntime>,
    edge_auth: &EdgeAuthArgs,
    shutdown: CancellationToken,
) -> Result<(), CliError> {
    let Settings {
        backend: mut config,
        edge: mut edge_config,
        dev_metrics,
    } = settings;
    let grpc = bind(config.grpc_addr, "--grpc-addr", false)?;
    let grpc_addr = grpc
        .local_addr()
        .map_err(|e| CliError::new(format!("gRPC listener: {e}")))?;
    let http = match edge {
        Some(runtime) => Some((bind(edge_config.http_addr, "--http-addr", false)?, runtime)),
        None => None,
    };
    let mut backend = herald_backend::Backend::build(config.clone())
        .await
        .map_err(CliError::new)?;
    if dev_metrics {
        match TcpListener::bind(crate::DEV_METRICS_ADDR).await {
            Ok(listener) => backend = backend.with_metrics_listener(listener),
            Err(_) => tracing::warn!(
                metrics_addr = %crate::DEV_METRICS_ADDR,
                "the metrics port is in use: /metrics is off; pass --metrics-addr"
            ),
        }
    }
    // The dev key may have just been created: the edge signs its service tokens with it.
    if config.auth.hs256_secret.is_none() && config.auth.public_keys.is_empty() {
        config.auth.hs256_secret = dev_key::load(&config.data_dir).ok();
        edge_config.dev_tokens = dev_tokens(&config);
    }
    let backend = tokio::spawn(backend.serve(grpc, shutdown.clone()));
    let edge = match http {
        Some((http, runtime)) => {
            edge_config.backends = vec![format!("http://{grpc_addr}")];
            let token = service_token(&config, edge_auth)?;
            Some(spawn_edge(
                http,
                runtime,
                edge_config,
                token,
                shutdown.clone(),
            )?)
        }
        None => None,
    };
    let backend_result = backend.await;
    shutdown.cancel();
    if let Some(edge) = edge {
        match edge.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(CliError::new(error)),
            Err(_) => return Err(CliError::new("the edge's runtime stopped unexpectedly")),
        }
    }
    match backend_result {
        Ok(result) => result.map_err(CliError::new),
        Err(error) => Err(CliError::new(format!("the backend failed: {error}"))),
    }
}

/// Starts the edge on a runtime of its own (a thread that owns it); the answer arrives when the
/// edge has stopped.
fn spawn_edge(
    http: TcpListener,
    runtime: EdgeRuntime,
    config: herald_edge::EdgeConfig,
    token: herald_edge::ServiceToken,
    shutdown: CancellationToken,
) -> Result<tokio::sync::oneshot::Receiver<Result<(), String>>, CliError> {
    let threads = runtime.threads.map_or_else(
        || std::thread::available_parallelism().map_or(2, usize::from),
        usize::from,
    );
    let edge_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("herald-edge")
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the edge's runtime: {e}")))?;
    // A listener belongs to the runtime that registered it: hand it over as a std socket.
    let http = http
        .into_std()
        .map_err(|e| CliError::new(format!("HTTP listener: {e}")))?;
    let (done, stopped) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("herald-edge-main".into())
        .spawn(move || {
            let result = edge_runtime.block_on(async move {
                let http =
                    TcpListener::from_std(http).map_err(|e| format!("HTTP listener: {e}"))?;
                herald_edge::run(http, config, token, shutdown)
                    .await
                    .map_err(|e| e.to_string())
            });
            let _ = done.send(result);
        })
        .map_err(|e| CliError::new(format!("cannot start the edge's thread: {e}")))?;
    Ok(stopped)
}

/// Runs an edge alone in front of `settings.edge.backends`. The backend's part of the
/// configuration only says how to sign the edge's service tokens.
pub async fn serve_edge(
    settings: Settings,
    edge_auth: &EdgeAuthArgs,
    reuse_port: bool,
    shutdown: CancellationToken,
) -> Result<(), CliError> {
    let Settings {
        backend: mut config,
        edge,
        ..
    } = settings;
    let development = config.auth.hs256_secret.is_none() && config.auth.public_keys.is_empty();
    if config.auth.hs256_secret.is_none() && edge_auth.edge_service_token.is_none() {
        config.auth.hs256_secret = dev_key::load(&config.data_dir).ok();
    }
    let mut edge = edge;
    if development {
        edge.dev_tokens = dev_tokens(&config);
    }
    let http = bind(edge.http_addr, "--http-addr", reuse_port)?;
    let token = service_token(&config, edge_auth)?;
    herald_edge::run(http, edge, token, shutdown)
        .await
        .map_err(CliError::new)
}

/// Binds a listener with a deep accept queue (bursts of connects), optionally sharing the
/// port with other processes.
fn bind(addr: SocketAddr, flag: &str, reuse_port: bool) -> Result<TcpListener, CliError> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        socket.set_reuseport(reuse_port)?;
        socket.bind(addr)?;
        socket.listen(ACCEPT_BACKLOG)
    };
    listen().map_err(|e| {
        CliError::new(format!(
            "cannot listen on {addr}: {e}; choose another address with {flag}"
        ))
    })
}

/// The edge's own credentials: a given token, or tokens signed on demand with the HS256 secret.
fn service_token(
    config: &Config,
    args: &EdgeAuthArgs,
) -> Result<herald_edge::ServiceToken, CliError> {
    if let Some(token) = args.edge_service_token.clone() {
        return Ok(Arc::new(move || token.clone()));
    }
    let Some(secret) = config.auth.hs256_secret.clone() else {
        return Err(CliError::new(
            "the edge needs credentials for its backend streams: pass --edge-service-token \
             (a JWT with the `service` role) or configure auth.hs256_secret",
        ));
    };
    let issuer = config.auth.issuer.clone();
    let audience = config.auth.audience.clone();
    Ok(Arc::new(move || {
        let mut claims = TokenClaims::new("herald-edge", &["service"], Duration::from_secs(3600));
        claims.iss.clone_from(&issuer);
        claims.aud.clone_from(&audience);
        dev_key::sign_hs256(&secret, &claims).unwrap_or_default()
    }))
}

/// The console's development sign-in, signing with the development key (`config` holds it
/// once loaded); `None` when it could not be read.
fn dev_tokens(config: &Config) -> Option<herald_edge::DevTokens> {
    let secret = config.auth.hs256_secret.clone()?;
    let issuer = config.auth.issuer.clone();
    let audience = config.auth.audience.clone();
    Some(herald_edge::DevTokens::new(move |sub, roles, ttl| {
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        let mut claims = TokenClaims::new(sub, &roles, ttl);
        claims.iss.clone_from(&issuer);
        claims.aud.clone_from(&audience);
        dev_key::sign_hs256(&secret, &claims).map_err(|e| e.to_string())
    }))
}
