//! The edge's HTTP server: `/ws`, grpc-web, `/healthz`, `/readyz`, the web console (`/`,
//! `/assets/…`, `/dev/token`), the Origin allow-list, CORS for grpc-web, and graceful shutdown.

use std::sync::{Arc, LazyLock};

use axum::{
    Router,
    extract::{State, WebSocketUpgrade},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::StreamExt;
use herald_proto::codes::{CLOSE_CODE_TRAILER, EPOCH_TRAILER, OFFSET_TRAILER};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::Layer;

use crate::{
    EdgeContext,
    backends::{BackendError, Backends, ServiceToken},
    config::EdgeConfig,
    connections,
    feeds::Feeds,
    grpc_web::BackendProxy,
    session,
    transcode::{TranscodeError, Transcoder},
};

/// How long each of several backends gets to answer `Edge/Describe` at start.
const BROKER_CHECK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Bytes of frames gathered before a socket write, unless a flush comes first.
const WRITE_BATCH_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Backends(#[from] BackendError),
    #[error(transparent)]
    Descriptors(#[from] TranscodeError),
    #[error("edge HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the edge on `listener` until `shutdown` is cancelled; then every socket is closed
/// with the "shutdown" code (reconnect), and the server waits for them at most
/// `config.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    config: EdgeConfig,
    service_token: ServiceToken,
    shutdown: CancellationToken,
) -> Result<(), EdgeError> {
    let backends = Arc::new(
        Backends::with_keepalive(
            &config.backends,
            config.connections_per_backend,
            service_token,
            &config.connections,
        )?
        .with_limits(&config.connections),
    );
    backends.check_brokers(BROKER_CHECK_PATIENCE).await?;
    let grace = config.shutdown_grace;
    let limits = config.connections.clone();
    let metrics = crate::metrics::EdgeMetrics::new();
    let ctx = Arc::new(EdgeContext {
        metrics: metrics.clone(),
        feeds: Feeds::new(backends.clone(), shutdown.clone()),
        verifier: crate::verify::Verifier::spawn(backends.clone(), metrics.clone()),
        transcoder: Transcoder::new(herald_proto::FILE_DESCRIPTOR_SET)?,
        backends: backends.clone(),
        users: crate::slots::Slots::new(config.connections.max_per_user),
        connections: std::sync::OnceLock::new(),
        config,
        shutdown: shutdown.clone(),
    });
    let sessions = TaskTracker::new();
    let connection_slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    ctx.connections
        .set(connection_slots.clone())
        .expect("set once, before serving");
    let grpc_web =
        tonic_web::GrpcWebLayer::new().layer(BackendProxy::new(backends, limits.body_read_timeout));
    let console = crate::console::routes(ctx.config.dev_tokens.clone());
    let app = Router::new()
        .merge(console)
        .route("/ws", get(upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(scrape))
        .route("/readyz", get(ready))
        .route("/statsz", get(stats))
        .fallback_service(grpc_web)
        .layer(middleware::from_fn_with_state(ctx.clone(), check_origin))
        .with_state((ctx, sessions.clone()));

    if let Ok(addr) = listener.local_addr() {
        tracing::info!(http_addr = %addr, "herald edge listening");
    }
    connections::serve(
        listener,
        app,
        limits,
        connection_slots,
        metrics,
        shutdown,
        grace,
    )
    .await;
    sessions.close();
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!("some sockets did not close within the grace period");
    }
    Ok(())
}

type AppState = (Arc<EdgeContext>, TaskTracker);

async fn upgrade(
    State((ctx, sessions)): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|token| token.trim().to_owned());
    let limits = &ctx.config.limits;
    ws.max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .read_buffer_size(512)
        // Frames are gathered up to this size and written with one system call per flush;
        // the session flushes after each batch of queued frames.
        .write_buffer_size(WRITE_BATCH_BYTES)
        .max_write_buffer_size(limits.max_outbound_bytes.max(64 * 1024))
        .on_upgrade(move |socket| {
            let (sink, stream) = socket.split();
            sessions.track_future(session::run(sink, stream, ctx, bearer))
        })
}

/// What the edge holds now, as JSON: open client connections, WebSocket sessions, topic
/// feeds and streams towards the backends. For operators and for tests that check the edge
/// returns to its baseline after abuse.
async fn stats(State((ctx, sessions)): State<AppState>) -> Response {
    let connections = ctx.connections.get().map_or(0, |slots| {
        ctx.config
            .connections
            .max_connections
            .saturating_sub(slots.available_permits())
    });
    let body = serde_json::json!({
        "connections": connections,
        "sessions": sessions.len(),
        "feeds": ctx.feeds.topic_count(),
        "backend_streams": ctx.backends.streams_held(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn scrape(State((ctx, _)): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ctx.metrics.render(),
    )
        .into_response()
}

async fn ready(State((ctx, _)): State<AppState>) -> Response {
    if ctx.backends.any_ready().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no backend is reachable").into_response()
    }
}

/// Refuses requests whose `Origin` is not allowed (WebSocket has no CORS, so the check is
/// on the upgrade itself), and answers grpc-web CORS preflights for allowed origins.
async fn check_origin(
    State(ctx): State<Arc<EdgeContext>>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
        return next.run(request).await; // not a browser
    };
    if !origin_allowed(&ctx.config, &origin, request.headers().get(header::HOST)) {
        // Read the (small) body first so an HTTP/1.1 connection survives the refusal.
        let _ = axum::body::to_bytes(request.into_body(), 2 * 1024 * 1024).await;
        return (
            StatusCode::FORBIDDEN,
            "origin not allowed: add it to edge.allowed_origins",
        )
            .into_response();
    }
    if request.method() == Method::OPTIONS {
        let mut response = StatusCode::NO_CONTENT.into_response();
        cors_headers(response.headers_mut(), origin);
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, GET, OPTIONS"),
        );
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "authorization, content-type, x-grpc-web, x-user-agent, grpc-timeout, connect-protocol-version, connect-timeout-ms",
            ),
        );
        response.headers_mut().insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return response;
    }
    let mut response = next.run(request).await;
    cors_headers(response.headers_mut(), origin);
    response
}

fn cors_headers(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    // The gRPC status and Herald's stream-end trailers, readable by grpc-web clients.
    static EXPOSED: LazyLock<HeaderValue> = LazyLock::new(|| {
        let names = [
            "grpc-status",
            "grpc-message",
            "grpc-status-details-bin",
            CLOSE_CODE_TRAILER,
            OFFSET_TRAILER,
            EPOCH_TRAILER,
        ];
        HeaderValue::from_str(&names.join(", "))
            .expect("header names are visible ASCII, so a valid header value")
    });
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED.clone());
}

fn origin_allowed(config: &EdgeConfig, origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if config
        .allowed_origins
        .iter()
        .any(|allowed| allowed == "*" || allowed == origin)
    {
        return true;
    }
    // Same origin: the page was served by this host.
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host.and_then(|h| h.to_str().ok())), (Some(o), Some(h)) if o == h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allowed: &[&str]) -> EdgeConfig {
        EdgeConfig {
            allowed_origins: allowed.iter().map(|s| (*s).to_owned()).collect(),
            ..EdgeConfig::default()
        }
    }

    #[test]
    fn origins_match_exactly_or_by_same_host() {
        let host = HeaderValue::from_static("127.0.0.1:8080");
        let allowed = config(&["https://app.example.com"]);
        let check = |origin: &'static str| {
            origin_allowed(&allowed, &HeaderValue::from_static(origin), Some(&host))
        };
        assert!(check("https://app.example.com"));
        assert!(!check("https://app.example.com.evil.com"));
        assert!(!check("http://app.example.com"));
        assert!(check("http://127.0.0.1:8080"));
        assert!(!check("http://127.0.0.1:8081"));
        let any = config(&["*"]);
        assert!(origin_allowed(
            &any,
            &HeaderValue::from_static("https://x.test"),
            None
        ));
    }
}
