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

/// Binds both listeners, then runs the backend and (unless disabled) the edge until
/// `shutdown`.
pub async fn serve(
    settings: Settings,
    with_edge: bool,
    edge_auth: &EdgeAuthArgs,
    shutdown: CancellationToken,
) -> Result<(), CliError> {
    let Settings {
        backend: mut config,
        edge: mut edge_config,
    } = settings;
    let grpc = bind(config.grpc_addr, "--grpc-addr", false)?;
    let grpc_addr = grpc
        .local_addr()
        .map_err(|e| CliError::new(format!("gRPC listener: {e}")))?;
    let http = if with_edge {
        Some(bind(edge_config.http_addr, "--http-addr", false)?)
    } else {
        None
    };
    let backend = herald_backend::Backend::build(config.clone())
        .await
        .map_err(CliError::new)?;
    // The dev key may have just been created: the edge signs its service tokens with it.
    if config.auth.hs256_secret.is_none() && config.auth.public_keys.is_empty() {
        config.auth.hs256_secret = dev_key::load(&config.data_dir).ok();
    }
    let backend = tokio::spawn(backend.serve(grpc, shutdown.clone()));
    let edge = match http {
        Some(http) => {
            edge_config.backends = vec![format!("http://{grpc_addr}")];
            let token = service_token(&config, edge_auth)?;
            Some(tokio::spawn(herald_edge::run(
                http,
                edge_config,
                token,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let backend_result = backend.await;
    shutdown.cancel();
    if let Some(edge) = edge {
        match edge.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(CliError::new(error)),
            Err(error) => return Err(CliError::new(format!("the edge failed: {error}"))),
        }
    }
    match backend_result {
        Ok(result) => result.map_err(CliError::new),
        Err(error) => Err(CliError::new(format!("the backend failed: {error}"))),
    }
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
    } = settings;
    if config.auth.hs256_secret.is_none() && edge_auth.edge_service_token.is_none() {
        config.auth.hs256_secret = dev_key::load(&config.data_dir).ok();
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
