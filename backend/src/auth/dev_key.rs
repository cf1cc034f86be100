//! The development signing key: an HS256 secret created in the data directory on first start,
//! so `herald serve` works with no configuration and `herald token` can sign tokens it accepts.

use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

/// The file, inside the data directory, that holds the development secret.
pub const FILE_NAME: &str = "dev-signing-key";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the development secret, creating it first if it does not exist.
/// Returns the secret and whether it was just created.
pub fn load_or_create(data_dir: &Path) -> io::Result<(String, bool)> {
    let path = path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(secret) => Ok((secret.trim().to_owned(), false)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)?;
            let bytes: [u8; 32] = rand::random();
            let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            write_private(&path, &secret)?;
            Ok((secret, true))
        }
        Err(error) => Err(error),
    }
}

/// Reads the development secret; fails with a message naming the fix if it does not exist.
pub fn load(data_dir: &Path) -> io::Result<String> {
    std::fs::read_to_string(path(data_dir))
        .map(|secret| secret.trim().to_owned())
        .map_err(|error| {
            io::Error::new(
                error.kind(),
                format!(
                    "cannot read the development signing key {}: {error}; start `herald serve` once \
                     with this --data-dir to create it, or pass --secret",
                    path(data_dir).display()
                ),
            )
        })
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    std::fs::write(path, contents)
}

/// Claims of a token Herald signs itself (development tokens and tests).
#[derive(Debug, Clone, Serialize)]
pub struct TokenClaims {
    pub sub: String,
    pub roles: Vec<String>,
    pub exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl TokenClaims {
    pub fn new(sub: &str, roles: &[&str], ttl: Duration) -> TokenClaims {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        TokenClaims {
            sub: sub.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            exp: (now + ttl).as_secs(),
            iss: None,
            aud: None,
        }
    }
}

/// Signs `claims` with an HS256 secret.
pub fn sign_hs256(
    secret: &str,
    claims: &TokenClaims,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, TokenVerifier};

    #[test]
    fn the_key_is_created_once_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        let (second, created) = load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(first, second);
        assert_eq!(load(dir.path()).unwrap(), first);
    }

    #[test]
    fn a_signed_development_token_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = load_or_create(dir.path()).unwrap();
        let token = sign_hs256(
            &secret,
            &TokenClaims::new("alice", &["admin"], Duration::from_secs(60)),
        )
        .unwrap();
        let verifier = TokenVerifier::new(&AuthConfig {
            hs256_secret: Some(secret),
            ..AuthConfig::default()
        })
        .unwrap();
        let principal = verifier.verify(&token).unwrap();
        assert_eq!(principal.user_id, "alice");
        assert!(principal.has_role("admin"));
    }
}
