//! Authentication: JWTs verified once per call by an interceptor, turned into a [`Principal`]
//! that handlers receive through request extensions. Handlers never see tokens.
//!
//! - [`verifier`]: keys, the algorithm allow-list and claim checks.
//! - [`interceptor`]: the tonic interceptor reading `authorization: Bearer …`.
//! - [`dev_key`]: the development signing key created in the data directory.

pub mod dev_key;
pub mod interceptor;
pub mod verifier;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use interceptor::AuthInterceptor;
pub use verifier::{AuthConfig, PublicKeyConfig, TokenVerifier};

/// The role that marks a backend service: it may publish anywhere and subscribe for users.
pub const SERVICE_ROLE: &str = "service";
/// The role of administrators (order and deployment topics admit them).
pub const ADMIN_ROLE: &str = "admin";

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: the user id (or the service name).
    pub user_id: String,
    pub roles: Vec<String>,
    /// The token's `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
}

impl Principal {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn is_service(&self) -> bool {
        self.has_role(SERVICE_ROLE)
    }

    /// How long until the token expires (zero if it already has).
    pub fn time_left(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Duration::from_secs(self.expires_at.saturating_sub(now))
    }
}

/// Why a token was refused. The messages go to the client; none contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send the metadata `authorization: Bearer <JWT>`")]
    Missing,
    #[error("the authorization metadata must be `Bearer <JWT>`")]
    NotBearer,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not accepted; accepted: {accepted}")]
    AlgorithmNotAllowed { accepted: String },
    #[error("no key with kid `{0}` is configured")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token's `{0}` claim is missing or has the wrong type")]
    BadClaim(String),
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
}
