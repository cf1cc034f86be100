//! grpc-web for browsers: every public herald service, unary and server-streaming, translated
//! by tonic-web and proxied to a backend unchanged. The browser's own `authorization` header
//! travels with the call; the backend authenticates and authorizes as for any gRPC client.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use tonic::{Status, body::Body};
use tower::Service;

use crate::backends::Backends;

/// Path prefix of the services a browser may call.
const PUBLIC_PREFIX: &str = "/herald.v1.";
/// The largest grpc-web request accepted (the backend's own limit is 1 MiB per message).
const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;
/// Internal services (edge ↔ backend), never proxied.
const INTERNAL_PREFIXES: &[&str] = &["/herald.v1.Edge/"];

/// Forwards gRPC requests to the next backend connection.
#[derive(Debug, Clone)]
pub struct BackendProxy {
    backends: Arc<Backends>,
    body_read_timeout: Duration,
}

impl BackendProxy {
    /// A request body that does not arrive within `body_read_timeout` is answered
    /// DEADLINE_EXCEEDED (`edge.connections.body_read_timeout`).
    pub fn new(backends: Arc<Backends>, body_read_timeout: Duration) -> Self {
        Self {
            backends,
            body_read_timeout,
        }
    }
}

impl Service<Request<Body>> for BackendProxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let mut channel = self.backends.pick();
        let backends = self.backends.clone();
        let body_read_timeout = self.body_read_timeout;
        Box::pin(async move {
            // grpc-web has no client streaming, so the request is one small message. Reading it
            // whole before answering keeps HTTP/1.1 connections usable even when the answer is
            // a refusal (answering early would make the server drop the unread body and close).
            let (parts, body) = request.into_parts();
            let read = tokio::time::timeout(
                body_read_timeout,
                Limited::new(body, MAX_REQUEST_BYTES).collect(),
            );
            let body = match read.await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Err(_) => {
                    // The unread rest makes the server close the connection after this answer.
                    let status = Status::deadline_exceeded(format!(
                        "the request body did not arrive within {} ms (edge.connections.body_read_timeout)",
                        body_read_timeout.as_millis()
                    ));
                    return Ok(status.into_http());
                }
                Ok(Err(_)) => {
                    let status = Status::resource_exhausted(format!(
                        "the request is larger than {MAX_REQUEST_BYTES} bytes"
                    ));
                    return Ok(status.into_http());
                }
            };
            let path = parts.uri.path();
            let public = path.starts_with(PUBLIC_PREFIX)
                && !INTERNAL_PREFIXES
                    .iter()
                    .any(|prefix| path.starts_with(prefix));
            if !public {
                let status = Status::unimplemented(format!(
                    "`{path}` is not a herald service reachable from browsers"
                ));
                return Ok(status.into_http());
            }
            // The call holds one of the edge's backend streams until its answer is consumed.
            let stream = match backends.try_stream() {
                Ok(stream) => stream,
                Err(status) => return Ok(status.into_http()),
            };
            let request = Request::from_parts(parts, Body::new(Full::new(body)));
            if let Err(error) = std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                return Ok(
                    Status::unavailable(format!("the backend is unreachable: {error}")).into_http(),
                );
            }
            match channel.call(request).await {
                Ok(response) => Ok(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _held = &stream;
                        frame
                    }))
                })),
                Err(error) => Ok(Status::unavailable(format!(
                    "the backend is unreachable: {error}"
                ))
                .into_http()),
            }
        })
    }
}
