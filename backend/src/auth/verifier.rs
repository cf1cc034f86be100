//! JWT verification: an explicit allow-list of algorithms, each tied to its key family.
//!
//! - HS256 with a shared secret;
//! - RS256, ES256 and EdDSA with PEM public keys chosen by the token's `kid`.
//!
//! `none` is never accepted, a key is only ever used with the algorithm it was configured
//! for (so an RSA public key cannot be used as an HMAC secret), `exp` is required, `nbf` is
//! checked, leeway is at most 30 seconds, and `iss`/`aud` are required when configured.

use std::{collections::HashMap, fmt, path::PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use super::{AuthError, Principal};

/// The longest `sub` (a user id; stored as events' `publisher`, a 255-character column).
pub const MAX_SUB_LEN: usize = 255;
/// The latest `exp` accepted: the end of year 9999, the range of `google.protobuf.Timestamp`.
pub const MAX_EXP: u64 = 253_402_300_799;

/// The longest clock skew tolerated on `exp` and `nbf`.
pub const MAX_LEEWAY_SECS: u64 = 30;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens.
    pub hs256_secret: Option<String>,
    /// Public keys for RS256, ES256 and EdDSA tokens, chosen by `kid`.
    #[serde(default)]
    pub public_keys: Vec<PublicKeyConfig>,
    /// When set, tokens must carry exactly this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`, at most 30 seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_leeway() -> u64 {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    pub kid: String,
    /// `RS256`, `ES256` or `EdDSA`.
    pub algorithm: String,
    /// A PEM file holding the public key.
    pub pem_file: PathBuf,
}

/// Why the auth configuration cannot be used; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("no signing key is configured: set auth.hs256_secret or add auth.public_keys")]
    NoKeys,
    #[error("auth.leeway_secs is {0}; the limit is 30")]
    LeewayTooLarge(u64),
    #[error("key `{kid}`: algorithm `{algorithm}` is not supported; use RS256, ES256 or EdDSA")]
    UnsupportedAlgorithm { kid: String, algorithm: String },
    #[error("key `{kid}`: cannot read {path}: {source}")]
    ReadKey {
        kid: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key `{kid}`: {path} is not a valid PEM public key for {algorithm}: {source}")]
    ParseKey {
        kid: String,
        path: PathBuf,
        algorithm: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("auth.hs256_secret is shorter than 32 bytes; use a longer random secret")]
    WeakSecret,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    exp: u64,
}

/// Verifies tokens against the configured keys.
pub struct TokenVerifier {
    hs256: Option<DecodingKey>,
    by_kid: HashMap<String, (Algorithm, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    accepted: String,
    /// Refusals per reason ([`crate::metrics::AUTH_REASONS`] order).
    failures: [std::sync::atomic::AtomicU64; crate::metrics::AUTH_REASONS.len()],
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("accepted", &self.accepted)
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    pub fn new(config: &AuthConfig) -> Result<TokenVerifier, AuthConfigError> {
        if config.leeway_secs > MAX_LEEWAY_SECS {
            return Err(AuthConfigError::LeewayTooLarge(config.leeway_secs));
        }
        let hs256 = match &config.hs256_secret {
            Some(secret) if secret.len() < 32 => return Err(AuthConfigError::WeakSecret),
            Some(secret) => Some(DecodingKey::from_secret(secret.as_bytes())),
            None => None,
        };
        let mut by_kid = HashMap::new();
        let mut accepted: Vec<&str> = hs256.iter().map(|_| "HS256").collect();
        for key in &config.public_keys {
            let (algorithm, key_value) = load_public_key(key)?;
            let name = match algorithm {
                Algorithm::RS256 => "RS256",
                Algorithm::ES256 => "ES256",
                _ => "EdDSA",
            };
            if !accepted.contains(&name) {
                accepted.push(name);
            }
            by_kid.insert(key.kid.clone(), (algorithm, key_value));
        }
        if accepted.is_empty() {
            return Err(AuthConfigError::NoKeys);
        }
        Ok(TokenVerifier {
            failures: Default::default(),
            hs256,
            by_kid,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_secs,
            accepted: accepted.join(", "),
        })
    }

    /// Verifies a token. Claims a client controls are bounded here, once, so no later
    /// arithmetic (timers, timestamps, column sizes) can overflow on them.
    /// Verifies `token`; a refusal is counted by its reason (`herald_auth_failures_total`).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.check(token)
            .inspect_err(|error| self.count_failure(error))
    }

    /// Counts a refused token (the interceptor counts a missing one here too).
    pub fn count_failure(&self, error: &AuthError) {
        self.failures[error.reason()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Refusals so far per reason ([`crate::metrics::AUTH_REASONS`] order).
    pub fn failures(&self) -> [u64; crate::metrics::AUTH_REASONS.len()] {
        std::array::from_fn(|i| self.failures[i].load(std::sync::atomic::Ordering::Relaxed))
    }

    fn check(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|error| match error.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => self.not_allowed(),
            _ => AuthError::Malformed,
        })?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref().ok_or_else(|| self.not_allowed())?,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => {
                let kid = header.kid.as_deref().ok_or_else(|| self.not_allowed())?;
                let (algorithm, key) = self.by_kid.get(kid).ok_or(AuthError::UnknownKey)?;
                // The key decides the algorithm, never the token.
                if *algorithm != header.alg {
                    return Err(self.not_allowed());
                }
                key
            }
            _ => return Err(self.not_allowed()),
        };

        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        let data =
            jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|error| match error
                .into_kind()
            {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidKeyFormat
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
                    AuthError::BadClaim(claim)
                }
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => self.not_allowed(),
                ErrorKind::Json(_) => AuthError::BadClaim("sub, roles or exp".to_owned()),
                _ => AuthError::Malformed,
            })?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::BadClaim("sub".to_owned()));
        }
        if data.claims.sub.len() > MAX_SUB_LEN {
            return Err(AuthError::OutOfRange {
                claim: "sub",
                rule: format!(
                    "{} bytes; at most {MAX_SUB_LEN} (it is stored as an event's publisher)",
                    data.claims.sub.len()
                ),
            });
        }
        if data.claims.exp > MAX_EXP {
            return Err(AuthError::OutOfRange {
                claim: "exp",
                rule: format!(
                    "{}; at most {MAX_EXP} (9999-12-31T23:59:59Z)",
                    data.claims.exp
                ),
            });
        }
        Ok(Principal::new(
            data.claims.sub,
            data.claims.roles,
            data.claims.exp,
        ))
    }

    fn not_allowed(&self) -> AuthError {
        AuthError::AlgorithmNotAllowed {
            accepted: self.accepted.clone(),
        }
    }
}

fn load_public_key(key: &PublicKeyConfig) -> Result<(Algorithm, DecodingKey), AuthConfigError> {
    let pem = std::fs::read(&key.pem_file).map_err(|source| AuthConfigError::ReadKey {
        kid: key.kid.clone(),
        path: key.pem_file.clone(),
        source,
    })?;
    let (algorithm, parsed) = match key.algorithm.as_str() {
        "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
        "ES256" => (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)),
        "EdDSA" => (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem)),
        other => {
            return Err(AuthConfigError::UnsupportedAlgorithm {
                kid: key.kid.clone(),
                algorithm: other.to_owned(),
            });
        }
    };
    let parsed = parsed.map_err(|source| AuthConfigError::ParseKey {
        kid: key.kid.clone(),
        path: key.pem_file.clone(),
        algorithm: key.algorithm.clone(),
        source,
    })?;
    Ok((algorithm, parsed))
}
