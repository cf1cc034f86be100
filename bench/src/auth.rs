//! The bearer token every call presents: given, or minted as a `service` principal (which may
//! publish and subscribe on any topic and is left out of presence, so opening thousands of
//! streams does not fan out thousands of join events).

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;
use tonic::metadata::AsciiMetadataValue;

use crate::{cli::Credentials, error::BenchError};

/// The development key's file name inside the server's data directory.
const DEV_KEY_FILE: &str = "dev-signing-key";

#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: &'a str,
    roles: [&'a str; 1],
    exp: u64,
}

/// The token to present, given or minted; minted tokens live for `ttl`: a subscription
/// outlives its token only to be ended with TOKEN_EXPIRED.
pub(crate) fn token(credentials: &Credentials, ttl: Duration) -> Result<String, BenchError> {
    match credentials {
        Credentials::Token(token) => Ok(token.trim().to_owned()),
        Credentials::Secret(secret) => mint(secret, ttl),
        Credentials::DataDir(dir) => mint(&read_dev_key(dir)?, ttl),
    }
}

/// The `authorization` metadata value, `Bearer <JWT>`.
pub(crate) fn bearer(token: &str) -> Result<AsciiMetadataValue, BenchError> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| BenchError::new("the token contains characters not allowed in gRPC metadata"))
}

fn read_dev_key(dir: &Path) -> Result<String, BenchError> {
    let path = dir.join(DEV_KEY_FILE);
    std::fs::read_to_string(&path)
        .map(|secret| secret.trim().to_owned())
        .map_err(|error| {
            BenchError::new(format!(
                "cannot read the development signing key {}: {error}; pass the server's \
                 --data-dir, or --secret / --token",
                path.display()
            ))
        })
}

fn mint(secret: &str, ttl: Duration) -> Result<String, BenchError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let claims = Claims {
        sub: "herald-bench",
        roles: ["service"],
        exp: (now + ttl).as_secs(),
    };
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|error| BenchError::new(format!("cannot sign a token: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_is_a_service_token_signed_with_the_secret() {
        let secret = "0123456789abcdef0123456789abcdef";
        let minted = token(&Credentials::Secret(secret.into()), Duration::from_secs(60)).unwrap();
        let value = bearer(&minted).unwrap();
        let token = value.to_str().unwrap().strip_prefix("Bearer ").unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["roles"], serde_json::json!(["service"]));
        assert_eq!(data.claims["sub"], "herald-bench");
    }

    #[test]
    fn a_missing_data_dir_names_the_file_and_the_alternatives() {
        let error = token(
            &Credentials::DataDir("/nonexistent/herald".into()),
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(error.to_string().contains("dev-signing-key"));
        assert!(error.to_string().contains("--secret"));
    }
}
