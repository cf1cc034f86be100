//! A bearer token as a client sends it: the JOSE header and the claims are read by the
//! verifier before any signature check could refuse them. Nothing may panic, and no made-up
//! token is accepted.

#![no_main]

use std::sync::LazyLock;

use herald_backend::auth::{AuthConfig, TokenVerifier};
use libfuzzer_sys::fuzz_target;

static VERIFIER: LazyLock<TokenVerifier> = LazyLock::new(|| {
    TokenVerifier::new(&AuthConfig {
        hs256_secret: Some("fuzz-secret-fuzz-secret-fuzz-secret-0123".into()),
        public_keys: Vec::new(),
        issuer: None,
        audience: None,
        leeway_secs: 5,
    })
    .expect("a valid configuration")
});

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    assert!(
        VERIFIER.verify(token).is_err(),
        "a token the fuzzer made up cannot carry a valid signature"
    );
});
