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

use tokio::time::Instant;

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
    /// `expires_at` on the runtime's clock, fixed when the principal is made: the wall clock
    /// is read once, there, and every later question ([`Principal::time_left`], the expiry
    /// timers built from it) follows `tokio::time`, so tests drive token expiry with
    /// `tokio::time::pause` and `advance`.
    deadline: Instant,
}

/// Instead of a deadline beyond what `Instant` holds (tokens that never expire in practice).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

impl Principal {
    /// The caller a verified token names, expiring at `expires_at` (Unix seconds).
    pub fn new(user_id: impl Into<String>, roles: Vec<String>, expires_at: u64) -> Principal {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let left = Duration::from_secs(expires_at.saturating_sub(now));
        let start = Instant::now();
        Principal {
            user_id: user_id.into(),
            roles,
            expires_at,
            deadline: start
                .checked_add(left)
                .unwrap_or_else(|| start + FAR_FUTURE),
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn is_service(&self) -> bool {
        self.has_role(SERVICE_ROLE)
    }

    /// How long until the token expires (zero if it already has), on the runtime's clock.
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
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
    /// The token names a key id this server has no key for (not echoed: it is the client's
    /// input, and reflecting it helps nobody but a prober).
    #[error("the token's key id (`kid`) names no configured key")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token's `{0}` claim is missing or has the wrong type")]
    BadClaim(String),
    /// A claim is present but outside what Herald accepts.
    #[error("the token's `{claim}` claim is out of range: {rule}")]
    OutOfRange { claim: &'static str, rule: String },
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
}

impl AuthError {
    /// The index of this refusal's reason in [`crate::metrics::AUTH_REASONS`].
    pub fn reason(&self) -> usize {
        match self {
            AuthError::Missing | AuthError::NotBearer => 0,
            AuthError::Malformed => 1,
            AuthError::AlgorithmNotAllowed { .. } => 2,
            AuthError::UnknownKey => 3,
            AuthError::BadSignature => 4,
            AuthError::Expired => 5,
            AuthError::NotYetValid => 6,
            AuthError::BadClaim(_) | AuthError::OutOfRange { .. } => 7,
            AuthError::WrongIssuer | AuthError::WrongAudience => 8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_left_runs_on_the_runtime_clock() {
        let who = Principal::new("alice", vec![], unix_now() + 60);
        let left = who.time_left();
        assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(who.time_left(), left - Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(who.time_left(), Duration::ZERO);
    }

    #[test]
    fn an_expired_or_far_away_expiry_is_no_problem() {
        assert_eq!(Principal::new("a", vec![], 0).time_left(), Duration::ZERO);
        assert!(Principal::new("a", vec![], u64::MAX).time_left() > Duration::from_secs(86_400));
    }
}
