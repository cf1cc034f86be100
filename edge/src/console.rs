//! The web console (clients/web) and the development sign-in it uses.
//!
//! The console's built files are embedded at compile time (see `build.rs`): `/` answers
//! `index.html` and `/assets/…` the files Vite named by their content hash, so those are
//! cached for good while `index.html` is revalidated on every load.
//!
//! `/dev/token` mints tokens for any user and roles, and only when the server signs with its
//! development key (no `auth` keys configured): `GET` says whether it is available, `POST
//! {"sub": "alice", "roles": ["admin"]}` answers `{"token": "…", "expires_in_seconds": 3600}`.
//! Anywhere else it answers 403 with the reason. The edge holds no signing key of its own:
//! whoever starts it hands it a [`DevTokens`] minter, or none.

use std::{fmt, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};

/// `(URL path, content type, bytes)` of every file under clients/web/dist.
static ASSETS: &[(&str, &str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// How long a development token lasts; the console mints the next one before it expires.
pub const DEV_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Most bytes of a `/dev/token` request body.
const MAX_REQUEST_BYTES: usize = 4 * 1024;

/// Who a development token may name: the token's `sub` and each role, like the backend's
/// topic ids, 1–128 printable ASCII characters without spaces.
const MAX_NAME_CHARS: usize = 128;
const MAX_ROLES: usize = 16;

/// Signs a development token for `(sub, roles)` valid for `ttl`.
type Mint = dyn Fn(&str, &[String], Duration) -> Result<String, String> + Send + Sync;

/// The development sign-in: present only while the server uses its development key.
#[derive(Clone)]
pub struct DevTokens(Arc<Mint>);

impl DevTokens {
    pub fn new(
        mint: impl Fn(&str, &[String], Duration) -> Result<String, String> + Send + Sync + 'static,
    ) -> DevTokens {
        DevTokens(Arc::new(mint))
    }
}

impl fmt::Debug for DevTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevTokens(..)")
    }
}

/// The routes of the console and of `/dev/token`.
pub(crate) fn routes<S>(dev_tokens: Option<DevTokens>) -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("/index.html") }))
        .route("/index.html", get(|| async { asset("/index.html") }))
        .route("/favicon.svg", get(|| async { asset("/favicon.svg") }))
        .route(
            "/assets/{*file}",
            get(|Path(file): Path<String>| async move { asset(&format!("/assets/{file}")) }),
        )
        .route("/dev/token", get(dev_status).post(mint))
        .with_state(dev_tokens)
}

fn asset(path: &str) -> Response {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        let message = if path == "/index.html" {
            "the web console was not built into this binary: run `npm ci && npm run build` in \
             clients/web, then build herald again"
        } else {
            "not found"
        };
        return (StatusCode::NOT_FOUND, message).into_response();
    };
    let mut response = Bytes::from_static(bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if path.starts_with("/assets/") {
        // Vite names these by their content: a new build is a new name.
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
    } else {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if path == "/index.html" {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                 base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        );
    }
    response
}

const REFUSED: &str = "development sign-in is off: this server verifies tokens with configured \
                       keys (auth.hs256_secret or auth.public_keys), so paste a token issued for it";

#[derive(Serialize)]
struct DevStatus {
    available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

async fn dev_status(State(dev): State<Option<DevTokens>>) -> Response {
    json(
        StatusCode::OK,
        &DevStatus {
            available: dev.is_some(),
            reason: dev.is_none().then_some(REFUSED),
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Serialize)]
struct Minted {
    token: String,
    expires_in_seconds: u64,
}

#[derive(Serialize)]
struct Refusal<'a> {
    error: &'a str,
}

async fn mint(State(dev): State<Option<DevTokens>>, body: Bytes) -> Response {
    let Some(DevTokens(mint)) = dev else {
        return refuse(StatusCode::FORBIDDEN, REFUSED);
    };
    if body.len() > MAX_REQUEST_BYTES {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the request is too large");
    }
    let request: MintRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                r#"expected JSON {"sub": "alice", "roles": ["admin"]}"#,
            );
        }
    };
    if !valid_name(&request.sub) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "sub must be 1–128 printable ASCII characters without spaces",
        );
    }
    if request.roles.len() > MAX_ROLES || !request.roles.iter().all(|r| valid_name(r)) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "roles: at most 16, each 1–128 printable ASCII characters without spaces",
        );
    }
    match mint(&request.sub, &request.roles, DEV_TOKEN_TTL) {
        Ok(token) => json(
            StatusCode::OK,
            &Minted {
                token,
                expires_in_seconds: DEV_TOKEN_TTL.as_secs(),
            },
        ),
        Err(error) => {
            tracing::error!(%error, "cannot sign a development token");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot sign a development token",
            )
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_CHARS && name.bytes().all(|b| b.is_ascii_graphic())
}

fn refuse(status: StatusCode, error: &str) -> Response {
    json(status, &Refusal { error })
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, http::Request};
    use tower::ServiceExt;

    async fn send(dev: Option<DevTokens>, request: Request<Body>) -> (StatusCode, String) {
        let response = routes::<()>(dev)
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a small body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn post(body: &str) -> Request<Body> {
        Request::post("/dev/token")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .expect("a valid request")
    }

    fn minter() -> DevTokens {
        DevTokens::new(|sub, roles, ttl| Ok(format!("{sub}|{}|{}", roles.join(","), ttl.as_secs())))
    }

    #[tokio::test]
    async fn dev_tokens_are_refused_outside_development_mode() {
        let (status, body) = send(None, post(r#"{"sub":"alice"}"#)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("development sign-in is off"), "{body}");
        let (status, body) = send(
            None,
            Request::get("/dev/token").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains(r#""available":false"#), "{body}");
    }

    #[tokio::test]
    async fn dev_tokens_are_minted_for_the_chosen_user_and_roles() {
        let (status, body) = send(
            Some(minter()),
            post(r#"{"sub":"alice","roles":["admin","reviewer"]}"#),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body.contains(r#""token":"alice|admin,reviewer|3600""#),
            "{body}"
        );
        let (status, _) = send(Some(minter()), post(r#"{"sub":"a b"}"#)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = send(Some(minter()), post("not json")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn unknown_assets_are_not_found() {
        let request = Request::get("/assets/nope.js").body(Body::empty()).unwrap();
        let (status, _) = send(None, request).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
