//! Where tokens come from: a fixed token, or a function asked again before the current one
//! expires.

use std::{
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;

/// Gives the token for the next request. Called for every call and (re)subscribe: a fixed
/// `String`, or [`refreshing`] around a function that fetches a new token.
pub trait TokenSource: Send + Sync + 'static {
    fn token(&self) -> Result<String, String>;
}

/// A fixed token.
impl TokenSource for String {
    fn token(&self) -> Result<String, String> {
        Ok(self.clone())
    }
}

/// How long before its `exp` a cached token is renewed.
const RENEW_BEFORE: Duration = Duration::from_secs(30);

/// A token source that asks `fetch` only when it has no token or the one it has expires
/// within 30 s, so open subscriptions reconnect with a valid token and calls never carry an
/// expired one.
pub struct Refreshing<F> {
    fetch: F,
    current: Mutex<Option<String>>,
}

impl<F> std::fmt::Debug for Refreshing<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Refreshing")
    }
}

/// Caches what `fetch` returns until 30 s before the token's `exp`, then asks again.
pub fn refreshing<F>(fetch: F) -> Refreshing<F>
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    Refreshing {
        fetch,
        current: Mutex::new(None),
    }
}

impl<F> TokenSource for Refreshing<F>
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    fn token(&self) -> Result<String, String> {
        let mut current = self.current.lock().map_err(|_| "token cache poisoned")?;
        let fresh = current.as_deref().is_some_and(|token| {
            expires_at(token).is_none_or(|exp| exp > SystemTime::now() + RENEW_BEFORE)
        });
        if !fresh {
            *current = Some((self.fetch)()?);
        }
        Ok(current.clone().unwrap_or_default())
    }
}

/// When a JWT expires, read from its payload's `exp` without verifying it (the server does
/// that); `None` when it has no readable `exp`.
pub fn expires_at(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn jwt(exp: u64) -> String {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"sub":"a","exp":{exp}}}"#));
        format!("e30.{payload}.sig")
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn the_expiry_is_read_from_the_payload_and_garbage_has_none() {
        assert_eq!(
            expires_at(&jwt(1_900_000_000)),
            Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000))
        );
        assert_eq!(expires_at("not a token"), None);
        assert_eq!(expires_at("a.!!!.c"), None);
        assert_eq!(expires_at(&format!("e30.{}.s", "e30")), None, "no exp");
    }

    #[test]
    fn a_cached_token_is_renewed_only_when_it_is_about_to_expire() {
        let fetched = std::sync::Arc::new(AtomicU64::new(0));
        let counter = fetched.clone();
        let long = refreshing(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(jwt(now() + 3600))
        });
        for _ in 0..5 {
            long.token().unwrap();
        }
        assert_eq!(fetched.load(Ordering::SeqCst), 1, "cached while valid");

        let fetched = std::sync::Arc::new(AtomicU64::new(0));
        let counter = fetched.clone();
        let short = refreshing(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(jwt(now() + 10))
        });
        short.token().unwrap();
        short.token().unwrap();
        assert_eq!(
            fetched.load(Ordering::SeqCst),
            2,
            "within 30 s of exp: renewed"
        );
    }
}
