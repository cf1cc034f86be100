//! Authentication and authorization as a client meets them: every bad token is
//! UNAUTHENTICATED, every policy refusal PERMISSION_DENIED, and nothing leaks.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use herald_backend::auth::PublicKeyConfig;
use herald_e2e::{Client, SECRET, TestApp, spawn_app, spawn_app_with};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tonic::Code;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn valid_claims() -> Value {
    json!({ "sub": "alice", "roles": [], "exp": now() + 3600 })
}

/// A server that also accepts RS256, ES256 and EdDSA keys.
async fn spawn_app_with_public_keys() -> TestApp {
    spawn_app_with(|config| {
        for (kid, algorithm, file) in [
            ("rsa-1", "RS256", "rsa-public.pem"),
            ("ec-1", "ES256", "ec-public.pem"),
            ("ed-1", "EdDSA", "ed-public.pem"),
        ] {
            config.auth.public_keys.push(PublicKeyConfig {
                kid: kid.into(),
                algorithm: algorithm.into(),
                pem_file: fixture(file),
            });
        }
    })
    .await
}

async fn assert_unauthenticated(app: &TestApp, token: String, why: &str) {
    let client = app.client_with_token(token).await;
    let error = client.try_subscribe("room:lobby", None).await.err();
    let status = error.unwrap_or_else(|| panic!("{why}: subscribe was accepted"));
    assert_eq!(status.code(), Code::Unauthenticated, "{why}: {status:?}");
    let error = client
        .try_publish("room:lobby", "x", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Code::Unauthenticated,
        "{why}: publish {error:?}"
    );
}

#[tokio::test]
async fn tokens_signed_with_each_configured_algorithm_are_accepted() {
    let app = spawn_app_with_public_keys().await;
    let keys = [
        (
            Algorithm::RS256,
            "rsa-1",
            EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap(),
        ),
        (
            Algorithm::ES256,
            "ec-1",
            EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem")).unwrap()).unwrap(),
        ),
        (
            Algorithm::EdDSA,
            "ed-1",
            EncodingKey::from_ed_pem(&std::fs::read(fixture("ed-private.pem")).unwrap()).unwrap(),
        ),
    ];
    for (alg, kid, key) in &keys {
        let client = app
            .client_with_token(sign(*alg, Some(kid), key, &valid_claims()))
            .await;
        client
            .try_subscribe("room:lobby", None)
            .await
            .unwrap_or_else(|s| panic!("{alg:?}: {s:?}"));
    }
    let client = app.client_with_token(hs256(&valid_claims())).await;
    client.try_subscribe("room:lobby", None).await.unwrap();
}

#[tokio::test]
async fn missing_malformed_and_forged_tokens_are_unauthenticated() {
    let app = spawn_app_with_public_keys().await;

    let anonymous = Client::connect(app.endpoint(), String::new()).await;
    let request = tonic::Request::new(herald_proto::v1::SubscribeRequest {
        topic: "room:lobby".into(),
        since: None,
    });
    let status = anonymous
        .rooms
        .clone()
        .subscribe(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("authorization: Bearer"),
        "{}",
        status.message()
    );

    assert_unauthenticated(&app, "garbage".into(), "garbage").await;

    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&valid_claims())
    );
    assert_unauthenticated(&app, none, "alg none").await;

    // Algorithm confusion: HS256 "signed" with the server's RSA public key as the secret.
    let public_pem = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let confused = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(&public_pem),
        &valid_claims(),
    );
    assert_unauthenticated(&app, confused, "HS256 with the RSA public key").await;

    // A real RS256 signature presented under the EC key's kid: the key decides the algorithm.
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    let wrong_family = sign(Algorithm::RS256, Some("ec-1"), &rsa, &valid_claims());
    assert_unauthenticated(&app, wrong_family, "RS256 under an ES256 kid").await;

    let unknown_kid = sign(Algorithm::RS256, Some("<probe>"), &rsa, &valid_claims());
    let status = app
        .client_with_token(unknown_kid.clone())
        .await
        .try_subscribe("room:lobby", None)
        .await
        .err()
        .expect("refused");
    assert!(
        !status.message().contains("<probe>"),
        "the client's kid is not echoed: {}",
        status.message()
    );
    assert_unauthenticated(&app, unknown_kid, "unknown kid").await;

    let other_secret = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"another-secret-another-secret-0123"),
        &valid_claims(),
    );
    assert_unauthenticated(&app, other_secret, "wrong HS256 secret").await;
}

#[tokio::test]
async fn expired_premature_and_mistyped_claims_are_unauthenticated() {
    let app = spawn_app().await;
    let cases = [
        (json!({"sub": "alice", "exp": now() - 120}), "expired"),
        (
            json!({"sub": "alice", "exp": now() + 3600, "nbf": now() + 600}),
            "nbf in the future",
        ),
        (
            json!({"sub": "alice", "exp": (now() + 3600).to_string()}),
            "string-typed exp",
        ),
        (json!({"sub": "alice"}), "no exp"),
        (json!({"exp": now() + 3600}), "no sub"),
    ];
    for (claims, why) in cases {
        assert_unauthenticated(&app, hs256(&claims), why).await;
    }
    let client = app
        .client_with_token(hs256(&json!({"sub": "alice", "exp": now() - 120})))
        .await;
    let status = client
        .try_subscribe("room:lobby", None)
        .await
        .err()
        .unwrap();
    assert_eq!(status.message(), "token expired");
}

#[tokio::test]
async fn issuer_and_audience_are_required_when_configured() {
    let app = spawn_app_with(|config| {
        config.auth.issuer = Some("https://id.example".into());
        config.auth.audience = Some("herald".into());
    })
    .await;
    let good =
        json!({"sub": "alice", "exp": now() + 3600, "iss": "https://id.example", "aud": "herald"});
    app.client_with_token(hs256(&good))
        .await
        .try_subscribe("room:lobby", None)
        .await
        .unwrap();
    let cases = [
        (
            json!({"sub": "alice", "exp": now() + 3600, "iss": "https://evil.example", "aud": "herald"}),
            "wrong iss",
        ),
        (
            json!({"sub": "alice", "exp": now() + 3600, "iss": "https://id.example", "aud": "other"}),
            "wrong aud",
        ),
        (
            json!({"sub": "alice", "exp": now() + 3600, "aud": "herald"}),
            "missing iss",
        ),
        (
            json!({"sub": "alice", "exp": now() + 3600, "iss": "https://id.example"}),
            "missing aud",
        ),
    ];
    for (claims, why) in cases {
        assert_unauthenticated(&app, hs256(&claims), why).await;
    }
}

#[tokio::test]
async fn users_are_denied_other_users_and_roles_they_lack_and_see_none_of_their_events() {
    let app = spawn_app().await;
    let alice = app.client("alice", &[]).await;
    for topic in ["user:bob", "role:admin"] {
        let status = alice.try_subscribe(topic, None).await.err().unwrap();
        assert_eq!(status.code(), Code::PermissionDenied, "{topic}");
        assert!(
            status.message().contains(topic),
            "the refusal names the topic: {}",
            status.message()
        );
        let status = alice.history(topic, None, 0).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "history of {topic}");
    }
    let status = alice
        .try_publish("user:bob", "x", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let mut own = alice.subscribe("user:alice").await;
    let service = app.service().await;
    service.publish("user:bob", 1).await;
    service.publish("role:admin", 1).await;
    service.publish("user:alice", 7).await;
    let event = own.next_event().await;
    assert_eq!((event.topic.as_str(), event.offset), ("user:alice", 1));
    own.assert_quiet(Duration::from_millis(200)).await;

    let admin = app.client("carol", &["admin"]).await;
    let mut admins = admin.subscribe("role:admin").await;
    service.publish("role:admin", 2).await;
    assert_eq!(admins.next_event().await.offset, 2);
}

#[tokio::test]
async fn claims_beyond_what_herald_can_store_or_time_are_refused_not_a_panic() {
    let app = spawn_app().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let far = hs256(&json!({ "sub": "alice", "exp": 1u64 << 63 }));
    let status = app
        .client_with_token(far.clone())
        .await
        .try_subscribe("room:lobby", None)
        .await
        .err()
        .expect("refused");
    assert!(status.message().contains("exp"), "{}", status.message());
    assert_unauthenticated(&app, far, "exp beyond year 9999").await;
    let whoami = app
        .client_with_token(hs256(
            &json!({ "sub": "alice", "exp": now + 40_000 * 86_400 }),
        ))
        .await
        .whoami()
        .await
        .expect("a token valid for a century still works");
    assert_eq!(whoami.user_id, "alice");
    let long_sub = hs256(&json!({ "sub": "x".repeat(256), "exp": now + 600 }));
    assert_unauthenticated(&app, long_sub, "a sub longer than 255 bytes").await;
}
