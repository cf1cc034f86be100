//! The browser edge over real WebSockets: the protocol, its errors and limits, shared feeds,
//! and resume.

use std::time::Duration;

use herald_backend::auth::dev_key::TokenClaims;
use herald_e2e::{
    edge::{Closed, WsClient, spawn_edge, spawn_edge_with},
    range, spawn_app,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn error_code(reply: &Value) -> &str {
    reply["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {reply}"))
}

#[tokio::test]
async fn a_socket_subscribes_publishes_receives_and_unsubscribes() {
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let mut alice = edge.connect_as(&app.token("alice", &[])).await;

    let reply = alice
        .request("subscribe", json!({ "topic": "room:lobby" }))
        .await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let reply = alice
        .request(
            "publish",
            json!({ "topic": "room:lobby", "type": "chat.message", "data": { "text": "hi" } }),
        )
        .await;
    assert_eq!(reply["result"]["position"]["offset"], "1", "{reply}");

    let push = alice.next_event().await;
    assert_eq!(push["topic"], "room:lobby");
    assert_eq!(push["offset"], "1");
    assert_eq!(push["event"]["type"], "chat.message");
    assert_eq!(push["event"]["data"], json!({ "text": "hi" }));
    assert_eq!(push["event"]["publisher"], "alice");
    assert_eq!(push["epoch"], reply["result"]["position"]["epoch"]);

    let reply = alice
        .request("unsubscribe", json!({ "topic": "room:lobby" }))
        .await;
    assert_eq!(reply["result"], json!({}));
    app.service().await.publish("room:lobby", 2).await;
    let reply = alice.request("ping", json!({})).await;
    assert_eq!(
        reply["result"],
        json!({}),
        "nothing but the ping reply arrives: {reply}"
    );
}

#[tokio::test]
async fn a_topic_is_shared_by_many_sockets_and_each_gets_every_event_once_in_order() {
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let mut sockets = vec![];
    for name in ["a", "b", "c"] {
        let mut socket = edge.connect_as(&app.token(name, &[])).await;
        let reply = socket
            .request("subscribe", json!({ "topic": "room:shared" }))
            .await;
        assert!(reply.get("result").is_some(), "{reply}");
        sockets.push(socket);
    }
    let service = app.service().await;
    for n in 1..=50 {
        service.publish("room:shared", n).await;
    }
    for socket in &mut sockets {
        assert_eq!(socket.offsets(50).await, range(1, 50));
    }
    // One socket leaving does not disturb the others.
    sockets[0].close().await;
    service.publish("room:shared", 51).await;
    for socket in &mut sockets[1..] {
        assert_eq!(socket.offsets(1).await, vec![51]);
    }
}

#[tokio::test]
async fn call_reaches_any_unary_rpc_and_reports_errors_by_name() {
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let service = app.service().await;
    for n in 1..=3 {
        service.publish("room:h", n).await;
    }
    let mut socket = edge.connect_as(&app.token("alice", &[])).await;
    let reply = socket
        .request("call", json!({ "rpc": "herald.v1.Rooms/History", "request": { "topic": "room:h", "limit": 2 } }))
        .await;
    let events = reply["result"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["offset"], "1");
    let reply = socket
        .request(
            "call",
            json!({ "rpc": "herald.v1.Auth/Whoami", "request": {} }),
        )
        .await;
    assert_eq!(reply["result"]["userId"], "alice");

    let reply = socket
        .request(
            "call",
            json!({ "rpc": "herald.v1.Rooms/Nope", "request": {} }),
        )
        .await;
    assert_eq!(error_code(&reply), "not_found");
    let reply = socket
        .request(
            "call",
            json!({ "rpc": "herald.v1.Edge/Follow", "request": {} }),
        )
        .await;
    assert_eq!(
        error_code(&reply),
        "not_found",
        "internal services are not reachable"
    );
    let reply = socket
        .request(
            "call",
            json!({ "rpc": "herald.v1.Rooms/History", "request": { "topik": "x" } }),
        )
        .await;
    assert_eq!(error_code(&reply), "invalid_argument");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("topik")
    );
    let reply = socket
        .request(
            "call",
            json!({ "rpc": "herald.v1.Rooms/History", "request": { "topic": "user:bob" } }),
        )
        .await;
    assert_eq!(error_code(&reply), "permission_denied");
}

#[tokio::test]
async fn a_bearer_header_on_the_upgrade_authenticates_non_browser_clients() {
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let mut request = edge.url().into_client_request().unwrap();
    let bearer = format!("Bearer {}", app.token("alice", &[]));
    request
        .headers_mut()
        .insert("authorization", bearer.parse().unwrap());
    let mut socket = WsClient::connect_with(request).await;
    let reply = socket
        .request("subscribe", json!({ "topic": "user:alice" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
}

#[tokio::test]
async fn origins_outside_the_allow_list_are_refused_with_403() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |c| {
        c.allowed_origins = vec!["https://app.example.com".into()]
    })
    .await;
    let mut request = edge.url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example.com".parse().unwrap());
    let error = tokio_tungstenite::connect_async(request).await.unwrap_err();
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 403),
        other => panic!("expected HTTP 403, got {other:?}"),
    }
    let mut request = edge.url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://app.example.com".parse().unwrap());
    WsClient::connect_with(request).await;
}

#[tokio::test]
async fn a_socket_may_hold_at_most_the_configured_number_of_subscriptions() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |c| {
        c.limits.max_subscriptions = 3;
    })
    .await;
    let mut socket = edge.connect_as(&app.token("alice", &[])).await;
    for n in 0..3 {
        let reply = socket
            .request("subscribe", json!({ "topic": format!("room:{n}") }))
            .await;
        assert!(reply.get("result").is_some(), "{reply}");
    }
    let reply = socket
        .request("subscribe", json!({ "topic": "room:3" }))
        .await;
    assert_eq!(error_code(&reply), "resource_exhausted");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 3")
    );
}

#[tokio::test]
async fn the_default_limit_is_128_subscriptions() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |c| c.limits.rate_burst = 1000).await;
    let mut socket = edge.connect_as(&app.token("alice", &[])).await;
    for n in 0..128 {
        let reply = socket
            .request("subscribe", json!({ "topic": format!("room:{n}") }))
            .await;
        assert!(reply.get("result").is_some(), "{reply}");
    }
    let reply = socket
        .request("subscribe", json!({ "topic": "room:128" }))
        .await;
    assert_eq!(error_code(&reply), "resource_exhausted");
}

#[tokio::test]
async fn a_socket_that_never_authenticates_is_closed_as_stale() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |c| c.limits.auth_timeout = Duration::from_millis(300)).await;
    let mut socket = WsClient::connect(&edge.url()).await;
    let closed = socket.closed().await;
    assert_eq!(closed.code, 3004, "{closed:?}");
}

#[tokio::test]
async fn requests_over_the_rate_are_refused_and_sustained_abuse_closes_the_socket() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |c| {
        c.limits.rate_burst = 3;
        c.limits.rate_per_second = 1;
        c.limits.rate_abuse_limit = 5;
    })
    .await;
    let mut socket = edge.connect_as(&app.token("alice", &[])).await;
    let publish = json!({ "topic": "room:a", "type": "x", "data": {} });
    for _ in 0..3 {
        let reply = socket.request("publish", publish.clone()).await;
        assert!(reply.get("result").is_some(), "{reply}");
    }
    let reply = socket.request("publish", publish.clone()).await;
    assert_eq!(error_code(&reply), "rate_limited");
    for _ in 0..10 {
        let frame = json!({ "id": 99, "method": "publish", "params": publish });
        socket.send_text(frame.to_string()).await;
    }
    assert_eq!(socket.closed().await.code, 3504);
}

#[tokio::test]
async fn a_socket_that_does_not_read_is_closed_as_slow_while_others_get_everything() {
    let app = spawn_app().await;
    // The queue bound is what this test is about; the write timeout (which closes a peer that
    // stays unread, see the test of it below) is set out of the way so the slow socket still
    // reads its close frame when it finally reads.
    let edge = spawn_edge_with(&app, |c| {
        c.limits.max_outbound_bytes = 256 * 1024;
        c.limits.write_timeout = Duration::from_secs(120);
    })
    .await;
    let mut slow = edge.connect_as(&app.token("slow", &[])).await;
    let mut fast = edge.connect_as(&app.token("fast", &[])).await;
    for socket in [&mut slow, &mut fast] {
        let reply = socket
            .request("subscribe", json!({ "topic": "room:firehose" }))
            .await;
        assert!(reply.get("result").is_some());
    }
    let reader = tokio::spawn(async move { fast.offsets(1500).await });
    let service = app.service().await;
    let blob = "x".repeat(8 * 1024);
    for n in 0..1500 {
        service
            .try_publish(
                "room:firehose",
                "blob",
                json!({ "n": n, "blob": blob }),
                None,
            )
            .await
            .unwrap();
    }
    assert_eq!(
        reader.await.unwrap(),
        range(1, 1500),
        "the fast socket got everything"
    );
    let closed: Closed = slow.closed().await;
    assert_eq!(closed.code, 3001, "{closed:?}");
}

#[tokio::test]
async fn resubscribing_with_since_on_any_edge_replays_what_was_missed() {
    let app = spawn_app().await;
    let first = spawn_edge(&app).await;
    let second = spawn_edge(&app).await;
    let token = app.token("alice", &[]);
    let mut socket = first.connect_as(&token).await;
    let reply = socket
        .request("subscribe", json!({ "topic": "room:r" }))
        .await;
    let epoch = reply["result"]["position"]["epoch"].clone();
    let service = app.service().await;
    for n in 1..=3 {
        service.publish("room:r", n).await;
    }
    assert_eq!(socket.offsets(3).await, vec![1, 2, 3]);
    socket.close().await;
    for n in 4..=6 {
        service.publish("room:r", n).await;
    }
    let mut again = second.connect_as(&token).await;
    let reply = again
        .request(
            "subscribe",
            json!({ "topic": "room:r", "since": { "offset": "3", "epoch": epoch } }),
        )
        .await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    service.publish("room:r", 7).await;
    assert_eq!(again.offsets(4).await, range(4, 7));
}

#[tokio::test]
async fn an_expiring_token_ends_subscriptions_unless_refreshed() {
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let short = app.sign(&TokenClaims::new("alice", &[], Duration::from_secs(3)));
    let mut expiring = edge.connect_as(&short).await;
    let mut refreshed = edge.connect_as(&short).await;
    for socket in [&mut expiring, &mut refreshed] {
        let reply = socket
            .request("subscribe", json!({ "topic": "user:alice" }))
            .await;
        assert!(reply.get("result").is_some());
    }
    let reply = refreshed
        .request("refresh", json!({ "token": app.token("alice", &[]) }))
        .await;
    assert_eq!(reply["result"]["userId"], "alice", "{reply}");

    let push = expiring.next_push().await;
    assert_eq!(push["unsubscribed"]["topic"], "user:alice", "{push}");
    assert_eq!(push["unsubscribed"]["code"], 3002);
    assert_eq!(push["unsubscribed"]["reason"], "token_expired");

    app.service().await.publish("user:alice", 1).await;
    assert_eq!(
        refreshed.offsets(1).await,
        vec![1],
        "the refreshed socket kept its subscription"
    );
}

#[tokio::test]
async fn shutdown_closes_sockets_with_the_reconnect_code() {
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let mut socket = edge.connect_as(&app.token("alice", &[])).await;
    socket
        .request("subscribe", json!({ "topic": "room:a" }))
        .await;
    let closing = tokio::spawn(async move { socket.closed().await });
    edge.shutdown().await;
    assert_eq!(closing.await.unwrap().code, 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_kill_9_of_the_edge_a_client_resumes_on_another_edge_losing_and_repeating_nothing()
{
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use herald_e2e::process::spawn_edge_process;

    let app = spawn_app().await;
    let doomed = spawn_edge_process(&[app.addr]).await;
    let survivor = spawn_edge(&app).await;
    let token = app.token("alice", &[]);

    let mut socket = WsClient::connect(&doomed.ws_url()).await;
    let reply = socket.request("auth", json!({ "token": token })).await;
    assert!(reply.get("result").is_some(), "{reply}");
    let reply = socket
        .request("subscribe", json!({ "topic": "room:k" }))
        .await;
    let epoch = reply["result"]["position"]["epoch"].clone();

    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = {
        let service = app.service().await;
        let publishing = publishing.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while publishing.load(Ordering::Relaxed) || n < 400 {
                n += 1;
                service.publish("room:k", n).await;
            }
            n
        })
    };

    let mut received = socket.offsets(100).await;
    doomed.kill9().await;
    // Whatever was already in flight to the client still counts; then the socket is gone.
    while let Ok(frame) = socket.next_frame().await {
        if let Some(offset) = frame["offset"].as_str() {
            received.push(offset.parse().unwrap());
        }
    }

    let mut resumed = survivor.connect_as(&token).await;
    let since = json!({ "offset": received.last().unwrap().to_string(), "epoch": epoch });
    let reply = resumed
        .request("subscribe", json!({ "topic": "room:k", "since": since }))
        .await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    publishing.store(false, Ordering::Relaxed);
    let total = publisher.await.unwrap();
    let remaining = usize::try_from(total).unwrap() - received.len();
    received.extend(resumed.offsets(remaining).await);
    assert_eq!(
        received,
        range(1, total),
        "zero lost, zero duplicated, order kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_restart_behind_the_edge_keeps_the_socket_open() {
    use herald_e2e::spawn_app_at;

    let app = spawn_app().await;
    let addr = app.addr;
    let edge = spawn_edge(&app).await;
    let mut socket = edge.connect_as(&app.token("alice", &[])).await;
    let reply = socket
        .request("subscribe", json!({ "topic": "room:restart" }))
        .await;
    assert!(reply.get("result").is_some());
    app.service().await.publish("room:restart", 1).await;
    assert_eq!(socket.offsets(1).await, vec![1]);

    app.shutdown().await.unwrap();
    let app = spawn_app_at(&addr.to_string(), |_| {}).await;

    // The in-memory broker lost its history with the old process, so the edge cannot prove
    // continuity: it says so with "insufficient state" (reconnect class) instead of guessing.
    let push = loop {
        // Presence diffs go out on their own interval and may come first.
        let push = socket.next_push().await;
        if push.get("presence").is_none() {
            break push;
        }
    };
    assert_eq!(push["unsubscribed"]["code"], 3003, "{push}");
    assert_eq!(push["unsubscribed"]["offset"], "1");
    // The same socket is still open: resubscribing works and events flow again.
    let reply = socket
        .request("subscribe", json!({ "topic": "room:restart" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    app.service().await.publish("room:restart", 2).await;
    assert_eq!(
        socket.offsets(1).await,
        vec![1],
        "offsets restart in the new epoch"
    );
}

#[tokio::test]
async fn health_says_up_and_readiness_follows_the_backends() {
    use herald_e2e::edge::{http_status, spawn_edge_for};

    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    assert_eq!(http_status(edge.addr, "/healthz").await, 200);
    assert_eq!(http_status(edge.addr, "/readyz").await, 200);

    // An edge whose only backend is not there is up but not ready.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    let lonely = spawn_edge_for(&[nowhere], |_| {}).await;
    assert_eq!(http_status(lonely.addr, "/healthz").await, 200);
    assert_eq!(http_status(lonely.addr, "/readyz").await, 503);
}

#[tokio::test]
async fn only_services_may_open_edge_follow_streams() {
    use herald_proto::v1::{
        FollowOpen, FollowRequest, edge_client::EdgeClient, follow_request::Action,
    };

    let app = spawn_app().await;
    let alice = app.client("alice", &[]).await;
    let open = FollowRequest {
        action: Some(Action::Open(FollowOpen {
            topic: "room:a".into(),
        })),
    };
    let request = alice.request(tokio_stream::iter(vec![open]));
    let channel = app.endpoint().connect().await.unwrap();
    let status = EdgeClient::new(channel).follow(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("service"), "{}", status.message());
}

#[tokio::test]
async fn edge_verify_answers_each_token_on_its_own_and_only_to_services() {
    use herald_proto::v1::{VerifyRequest, edge_client::EdgeClient, verify_outcome::Outcome};

    let app = spawn_app().await;
    let mut expired = TokenClaims::new("carol", &[], Duration::from_secs(3600));
    expired.exp -= 7200;
    let tokens = vec![
        app.token("alice", &["reviewer"]),
        "garbage".to_owned(),
        app.sign(&expired),
        app.token("bob", &[]),
    ];
    let verify = |client: herald_e2e::Client, tokens: Vec<String>| async move {
        EdgeClient::new(client.channel.clone())
            .verify(client.request(VerifyRequest { tokens }))
            .await
    };

    let outcomes = verify(app.service().await, tokens.clone())
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    let outcomes: Vec<_> = outcomes.into_iter().map(|o| o.outcome.unwrap()).collect();
    assert_eq!(outcomes.len(), 4);
    let Outcome::Identity(alice) = &outcomes[0] else {
        panic!("alice's token is valid: {:?}", outcomes[0]);
    };
    assert_eq!(
        (alice.user_id.as_str(), &alice.roles[..]),
        ("alice", &["reviewer".to_owned()][..])
    );
    for (index, reason) in [(1, "not a well-formed JWT"), (2, "token expired")] {
        let Outcome::Refused(refusal) = &outcomes[index] else {
            panic!("token {index} is refused: {:?}", outcomes[index]);
        };
        assert_eq!(refusal.code, tonic::Code::Unauthenticated as i32);
        assert!(refusal.message.contains(reason), "{}", refusal.message);
    }
    assert!(matches!(&outcomes[3], Outcome::Identity(bob) if bob.user_id == "bob"));

    let status = verify(app.client("alice", &[]).await, tokens)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("service"), "{}", status.message());
    for count in [0, 1001] {
        let status = verify(app.service().await, vec![app.token("bob", &[]); count])
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{count} tokens"
        );
        assert!(
            status.message().contains("1 to 1000"),
            "{}",
            status.message()
        );
    }
}

#[tokio::test]
async fn sockets_authenticating_together_are_each_answered_and_a_bad_token_closes_only_its_own() {
    use herald_e2e::fault_proxy::{Fault, FaultProxy};

    let app = spawn_app().await;
    // Half a second each way between the edge and its backend: every auth arrives while the
    // first calls are still out.
    let proxy = FaultProxy::start(app.addr).await;
    proxy.set(Fault::Delay(Duration::from_millis(500)));
    let edge = herald_e2e::edge::spawn_edge_for(&[proxy.addr], |_| {}).await;
    let mut sockets = Vec::new();
    for _ in 0..60 {
        sockets.push(WsClient::connect(&edge.url()).await);
    }
    // Sent back to back, the auths outnumber the 8 verify calls the edge keeps in flight, so
    // the rest wait and share the next call.
    for (n, socket) in sockets.iter_mut().enumerate() {
        let token = if n % 10 == 3 {
            "garbage".to_owned()
        } else {
            app.token(&format!("user-{n}"), &[])
        };
        socket
            .send_text(
                json!({ "id": 1, "method": "auth", "params": { "token": token } }).to_string(),
            )
            .await;
    }
    for (n, socket) in sockets.iter_mut().enumerate() {
        let reply = socket.reply_to(1).await;
        if n % 10 == 3 {
            assert_eq!(error_code(&reply), "unauthenticated", "socket {n}: {reply}");
            assert_eq!(socket.closed().await.code, 3500, "socket {n}");
        } else {
            assert_eq!(
                reply["result"]["userId"],
                format!("user-{n}"),
                "socket {n}: {reply}"
            );
        }
    }
    let metrics = herald_e2e::edge::http_get(edge.addr, "/metrics").await;
    let counter = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map(|value| value.parse::<f64>().expect("a number"))
            .unwrap_or_else(|| panic!("{name} is exported: {metrics}"))
    };
    assert_eq!(counter("herald_edge_verified_tokens_total"), 60.0);
    let calls = counter("herald_edge_verify_calls_total");
    assert!(
        calls <= 9.0,
        "at most 8 calls out, then one for every auth that waited: {calls} calls"
    );
}

#[tokio::test]
async fn requests_sent_right_behind_auth_wait_for_it_instead_of_failing() {
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let mut socket = WsClient::connect(&edge.url()).await;
    let token = app.token("alice", &[]);
    socket
        .send_text(json!({ "id": 1, "method": "auth", "params": { "token": token } }).to_string())
        .await;
    socket
        .send_text(
            json!({ "id": 2, "method": "subscribe", "params": { "topic": "room:eager" } })
                .to_string(),
        )
        .await;
    socket
        .send_text(json!({ "id": 3, "method": "ping" }).to_string())
        .await;
    assert!(socket.reply_to(1).await.get("result").is_some());
    let reply = socket.reply_to(2).await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    assert_eq!(socket.reply_to(3).await["result"], json!({}));
    app.service().await.publish("room:eager", 1).await;
    assert_eq!(socket.offsets(1).await, vec![1]);
}

#[tokio::test]
async fn edges_started_with_reuse_port_share_one_address() {
    use herald_e2e::process::spawn_edge_process_with;

    let app = spawn_app().await;
    let first = spawn_edge_process_with(&[app.addr], "127.0.0.1:0", &["--reuse-port"]).await;
    let shared = first.addr.to_string();
    let second = spawn_edge_process_with(&[app.addr], &shared, &["--reuse-port"]).await;
    assert_eq!(second.addr, first.addr);
    // Sockets on the shared address work, whichever process accepts them.
    for _ in 0..4 {
        let mut socket = WsClient::connect(&first.ws_url()).await;
        let reply = socket
            .request("auth", json!({ "token": app.token("alice", &[]) }))
            .await;
        assert!(reply.get("result").is_some(), "{reply}");
    }
}

#[tokio::test]
async fn a_socket_that_stops_answering_pings_is_closed_as_stale() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |c| {
        c.limits.ping_interval = Duration::from_millis(100);
        c.limits.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let mut socket = edge.connect_as(&app.token("alice", &[])).await;
    // A client that reads nothing sends no pongs (tungstenite answers pings while reading).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let closed = socket.closed().await;
    assert_eq!(closed.code, 3004, "{closed:?}");
    assert!(closed.reason.contains("pong"), "{closed:?}");
}

#[tokio::test]
async fn a_socket_that_answers_pings_stays_open() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |c| {
        c.limits.ping_interval = Duration::from_millis(100);
        c.limits.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let mut socket = edge.connect_as(&app.token("alice", &[])).await;
    let reply = socket
        .request("subscribe", json!({ "topic": "room:alive" }))
        .await;
    assert!(reply.get("result").is_some());
    // Reading keeps answering pings; well past the idle timeout the socket still works.
    let reader = tokio::spawn(async move {
        let push = socket.next_event().await;
        (socket, push)
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    app.service().await.publish("room:alive", 1).await;
    let (_socket, push) = reader.await.unwrap();
    assert_eq!(push["offset"], "1", "{push}");
}

#[tokio::test]
async fn an_oversize_frame_is_closed_with_its_size_and_the_configured_limit() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |c| c.limits.max_frame_bytes = 4096).await;
    let mut socket = edge.connect_as(&app.token("alice", &[])).await;
    socket.send_text("x".repeat(5000)).await;
    assert_eq!(
        socket.closed().await,
        Closed {
            code: 1009,
            reason: "frame too large: the frame is 5000 bytes; the limit is 4096 bytes (edge.limits.max_frame_bytes)".into(),
        }
    );
}

#[tokio::test]
async fn publishes_pipelined_on_one_socket_take_offsets_in_the_order_they_were_sent() {
    const PUBLISHES: u64 = 1000;
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |config| {
        config.limits.rate_burst = 2 * PUBLISHES as u32;
        config.limits.rate_per_second = 2 * PUBLISHES as u32;
        config.limits.max_calls_in_flight = 2 * PUBLISHES as usize;
    })
    .await;
    let mut watcher = app
        .client("watcher", &[])
        .await
        .subscribe("room:pipeline")
        .await;
    let mut socket = edge.connect_as(&app.token("alice", &[])).await;
    // Back to back, without waiting for any reply.
    for n in 0..PUBLISHES {
        let frame = json!({ "id": 100 + n, "method": "publish",
            "params": { "topic": "room:pipeline", "type": "test.event", "data": { "n": n } } });
        socket.send_text(frame.to_string()).await;
    }
    for n in 0..PUBLISHES {
        let reply = socket.reply_to(100 + n).await;
        let offset: u64 = reply["result"]["position"]["offset"]
            .as_str()
            .and_then(|o| o.parse().ok())
            .unwrap_or_else(|| panic!("publish {n}: {reply}"));
        assert_eq!(offset, n + 1, "publish {n} took offset {offset}");
    }
    for n in 0..PUBLISHES {
        let event = watcher.next_event().await;
        let data = serde_json::to_value(event.data.unwrap()).unwrap();
        assert_eq!(
            data["n"].as_f64(),
            Some(n as f64),
            "offset {} carries",
            event.offset
        );
    }
}

/// Publishes queued behind one in flight go to the backend together, in order; one the
/// backend refuses (a bad type) and one the edge cannot encode (`data` not an object) are
/// refused alone, and every other takes the next offset.
#[tokio::test]
async fn a_bad_publish_among_pipelined_ones_is_refused_alone() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |config| {
        config.limits.max_calls_in_flight = 64;
    })
    .await;
    let mut socket = edge.connect_as(&app.token("alice", &[])).await;
    for n in 0..30u64 {
        let params = match n {
            5 => json!({ "topic": "room:mixed", "type": "not a type!", "data": { "n": n } }),
            10 => json!({ "topic": "room:mixed", "type": "test.event", "data": 5 }),
            _ => json!({ "topic": "room:mixed", "type": "test.event", "data": { "n": n } }),
        };
        let frame = json!({ "id": 100 + n, "method": "publish", "params": params });
        socket.send_text(frame.to_string()).await;
    }
    let mut next = 1;
    for n in 0..30u64 {
        let reply = socket.reply_to(100 + n).await;
        if n == 5 || n == 10 {
            assert_eq!(
                reply["error"]["code"], "invalid_argument",
                "publish {n}: {reply}"
            );
            continue;
        }
        let offset: u64 = reply["result"]["position"]["offset"]
            .as_str()
            .and_then(|o| o.parse().ok())
            .unwrap_or_else(|| panic!("publish {n}: {reply}"));
        assert_eq!(offset, next, "publish {n}");
        next += 1;
    }
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_closed_as_slow_and_releases_its_subscriptions() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let app = spawn_app().await;
    // A queue far larger than the kernel buffers: only the write timeout can notice.
    let edge = spawn_edge_with(&app, |config| {
        config.limits.max_outbound_bytes = 256 * 1024 * 1024;
    })
    .await;
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(edge.addr).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async(edge.url(), stream)
        .await
        .unwrap();
    let token = app.token("stalled", &[]);
    let frames = [
        json!({ "id": 1, "method": "auth", "params": { "token": token } }),
        json!({ "id": 2, "method": "subscribe", "params": { "topic": "room:stall" } }),
    ];
    for frame in frames {
        socket.send(Message::text(frame.to_string())).await.unwrap();
    }
    let service = app.service().await;
    let present = |members: &herald_proto::v1::PresenceResponse| {
        members.members.iter().any(|m| m.user_id == "stalled")
    };
    let deadline = tokio::time::Instant::now() + herald_e2e::PATIENCE;
    while !present(&service.presence("room:stall").await.unwrap()) {
        assert!(tokio::time::Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // From here on the peer reads nothing: the kernel buffers fill, then the edge's writes.
    let blob = "x".repeat(60 * 1024);
    for n in 0..300 {
        service
            .try_publish(
                "room:stall",
                "test.blob",
                json!({ "n": n, "blob": blob }),
                None,
            )
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + herald_e2e::PATIENCE;
    while present(&service.presence("room:stall").await.unwrap()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled socket still holds its subscription"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(socket);
}

/// Finding 13 of the hardening review: a client's Close frame is answered with a Close frame
/// carrying the client's code (RFC 6455 §5.5.1), so a browser sees its own clean close
/// instead of 1006.
#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame_carrying_its_code() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{
        Message,
        protocol::{CloseFrame, frame::coding::CloseCode as WsCode},
    };

    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    for authenticated in [false, true] {
        let (mut socket, _) = tokio_tungstenite::connect_async(edge.url()).await.unwrap();
        if authenticated {
            let token = app.token("closer", &[]);
            let auth = json!({ "id": 1, "method": "auth", "params": { "token": token } });
            socket.send(Message::text(auth.to_string())).await.unwrap();
            let reply = socket.next().await.unwrap().unwrap();
            assert!(reply.to_text().unwrap().contains("\"result\""), "{reply:?}");
        }
        socket
            .send(Message::Close(Some(CloseFrame {
                code: WsCode::Normal,
                reason: "bye".into(),
            })))
            .await
            .unwrap();
        let answer = tokio::time::timeout(herald_e2e::PATIENCE, socket.next())
            .await
            .expect("the edge answers within the patience");
        match answer {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, WsCode::Normal, "authenticated: {authenticated}")
            }
            other => panic!(
                "expected a Close frame with code 1000, got {other:?} (authenticated: {authenticated})"
            ),
        }
    }
}

// Finding 11 of the hardening review: slowloris. Raw TCP clients that never finish their
// request are cut off at the configured deadline while a control client keeps working.

/// Reads until the edge closes the connection; `None` if it is still open after the
/// patience.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(herald_e2e::PATIENCE, read)
        .await
        .ok()?;
    Some(received)
}

/// A control socket authenticates and gets its ping answered.
async fn control_client_works(edge: &herald_e2e::edge::TestEdge, app: &herald_e2e::TestApp) {
    let mut control = edge.connect_as(&app.token("control", &[])).await;
    let reply = control.request("ping", json!({})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
}

#[tokio::test]
async fn finding_11_slowloris_a_request_head_sent_a_byte_at_a_time_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |config| {
        config.connections.header_read_timeout = Duration::from_secs(1);
        config.connections.handshake_timeout = Duration::from_secs(600);
    })
    .await;
    let mut slow = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let head = b"GET /ws HTTP/1.1\r\nhost: edge\r\nupgrade: websocket\r\nx-slow: ";
    let mut sent = 0usize;
    let dripping = async {
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if slow.write_all(&[*byte]).await.is_err() {
                return;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if sent.is_multiple_of(10) {
                control_client_works(&edge, &app).await;
            }
        }
    };
    let cut_off = tokio::time::timeout(herald_e2e::PATIENCE, dripping).await;
    assert!(cut_off.is_ok(), "the edge kept a byte-at-a-time head open");
    assert!(sent > 0);
    control_client_works(&edge, &app).await;
}

#[tokio::test]
async fn finding_11_slowloris_a_connection_that_never_sends_a_request_is_closed_at_the_handshake_deadline()
 {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |config| {
        config.connections.handshake_timeout = Duration::from_secs(1);
        config.connections.header_read_timeout = Duration::from_secs(600);
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    control_client_works(&edge, &app).await;
    let answer = read_until_closed(&mut silent).await;
    assert_eq!(
        answer,
        Some(Vec::new()),
        "closed without an answer at the deadline"
    );
    control_client_works(&edge, &app).await;
}

#[tokio::test]
async fn finding_11_slowloris_a_grpc_web_body_that_never_finishes_is_answered_deadline_exceeded() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |config| {
        config.connections.body_read_timeout = Duration::from_secs(1);
    })
    .await;
    let mut slow = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    slow.write_all(
        b"POST /herald.v1.Auth/Whoami HTTP/1.1\r\nhost: edge\r\ncontent-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\ncontent-length: 100\r\n\r\n\0\0\0",
    )
    .await
    .unwrap();
    control_client_works(&edge, &app).await;
    let answer = read_until_closed(&mut slow)
        .await
        .expect("the edge answers and closes the connection");
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(
        answer.contains("grpc-status: 4"),
        "DEADLINE_EXCEEDED: {answer}"
    );
    assert!(
        answer.contains("edge.connections.body_read_timeout"),
        "names the setting: {answer}"
    );
    control_client_works(&edge, &app).await;
}

#[tokio::test]
async fn finding_11_connections_over_the_per_process_cap_are_answered_503_and_closed() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |config| {
        config.connections.max_connections = 3;
    })
    .await;
    let mut held = Vec::new();
    for n in 0..3 {
        held.push(edge.connect_as(&app.token(&format!("u{n}"), &[])).await);
    }
    let mut over = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let answer = read_until_closed(&mut over)
        .await
        .expect("the connection over the cap is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("edge.connections.max_connections"),
        "names the setting: {answer}"
    );
    // The held sockets keep working; when one leaves, its slot is free again.
    let reply = held[0].request("ping", json!({})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + herald_e2e::PATIENCE;
    let mut socket = loop {
        match tokio_tungstenite::connect_async(edge.url()).await {
            Ok((socket, _)) => break socket,
            // Refused with 503 until the left socket's session has ended.
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the freed slot never came back: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    use futures_util::{SinkExt, StreamExt};
    let auth = json!({ "id": 1, "method": "auth", "params": { "token": app.token("late", &[]) } });
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            auth.to_string(),
        ))
        .await
        .unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert!(reply.to_text().unwrap().contains("\"result\""), "{reply:?}");
}

// Finding 4 of the hardening review: connections per user and per address, the edge's
// streams to the backends, and a deadline on every unary call it makes.

#[tokio::test]
async fn finding_4_a_user_holds_at_most_the_configured_number_of_sockets() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |config| config.connections.max_per_user = 2).await;
    let token = app.token("many", &[]);
    let first = edge.connect_as(&token).await;
    let mut second = edge.connect_as(&token).await;
    let mut other = edge.connect_as(&app.token("someone-else", &[])).await;

    let mut third = WsClient::connect(&edge.url()).await;
    let reply = third.request("auth", json!({ "token": token })).await;
    assert_eq!(error_code(&reply), "resource_exhausted", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("edge.connections.max_per_user"),
        "{reply}"
    );
    assert_eq!(
        third.closed().await,
        Closed {
            code: 3503,
            reason: "limit exceeded: the user holds 2 sockets (edge.connections.max_per_user)"
                .into(),
        }
    );
    for socket in [&mut second, &mut other] {
        let reply = socket.request("ping", json!({})).await;
        assert_eq!(
            reply["result"],
            json!({}),
            "the others keep working: {reply}"
        );
    }

    // A socket that leaves frees its place.
    drop(first);
    let deadline = tokio::time::Instant::now() + herald_e2e::PATIENCE;
    loop {
        let mut again = WsClient::connect(&edge.url()).await;
        let reply = again.request("auth", json!({ "token": token })).await;
        if reply.get("result").is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place never came back: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn finding_4_an_address_holds_at_most_the_configured_number_of_connections() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |config| config.connections.max_per_ip = 2).await;
    let mut first = edge.connect_as(&app.token("a", &[])).await;
    let _second = edge.connect_as(&app.token("b", &[])).await;
    let mut over = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let answer = read_until_closed(&mut over)
        .await
        .expect("the connection over the limit is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains("edge.connections.max_per_ip"),
        "names the setting: {answer}"
    );
    let reply = first.request("ping", json!({})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
}

#[tokio::test]
async fn finding_4_the_edge_holds_at_most_the_configured_number_of_backend_streams() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |config| config.connections.max_backend_streams = 2).await;
    let mut alice = edge.connect_as(&app.token("alice", &[])).await;
    for topic in ["room:a", "room:b"] {
        let reply = alice.request("subscribe", json!({ "topic": topic })).await;
        assert!(reply.get("result").is_some(), "{reply}");
    }
    let reply = alice
        .request("subscribe", json!({ "topic": "room:c" }))
        .await;
    assert_eq!(error_code(&reply), "resource_exhausted", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("edge.connections.max_backend_streams"),
        "{reply}"
    );
    // A second socket on a followed topic shares its stream.
    let mut bob = edge.connect_as(&app.token("bob", &[])).await;
    let reply = bob.request("subscribe", json!({ "topic": "room:a" })).await;
    assert!(reply.get("result").is_some(), "{reply}");
    // The refused subscription is not held: subscribing again is not "already subscribed".
    let reply = alice
        .request("subscribe", json!({ "topic": "room:c" }))
        .await;
    assert_eq!(error_code(&reply), "resource_exhausted", "{reply}");

    // grpc-web calls count too: with both streams held, one is refused.
    let answer = grpc_web_whoami(edge.addr, &app.token("alice", &[])).await;
    assert!(
        answer.contains("grpc-status: 8"),
        "RESOURCE_EXHAUSTED: {answer}"
    );

    // Leaving a topic frees its stream.
    let reply = alice
        .request("unsubscribe", json!({ "topic": "room:b" }))
        .await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    let deadline = tokio::time::Instant::now() + herald_e2e::PATIENCE;
    loop {
        let reply = alice
            .request("subscribe", json!({ "topic": "room:c" }))
            .await;
        if reply.get("result").is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream never came back: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A grpc-web `Auth/Whoami` over a raw HTTP/1.1 connection; the whole answer, lowercased.
async fn grpc_web_whoami(addr: std::net::SocketAddr, token: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /herald.v1.Auth/Whoami HTTP/1.1\r\nhost: edge\r\ncontent-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\nauthorization: Bearer {token}\r\nconnection: close\r\ncontent-length: 5\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp.write_all(&[0, 0, 0, 0, 0]).await.unwrap();
    let answer = read_until_closed(&mut tcp).await.expect("an answer");
    String::from_utf8_lossy(&answer).to_lowercase()
}

#[tokio::test]
async fn finding_4_a_stuck_backend_answers_the_socket_with_deadline_exceeded_instead_of_hanging() {
    let app = spawn_app().await;
    let proxy = herald_e2e::fault_proxy::FaultProxy::start(app.addr).await;
    let edge = herald_e2e::edge::spawn_edge_for(&[proxy.addr], |config| {
        config.connections.backend_call_timeout = Duration::from_secs(1);
    })
    .await;
    let mut alice = edge.connect_as(&app.token("alice", &[])).await;
    proxy.set(herald_e2e::fault_proxy::Fault::BlackHole);
    let reply = alice
        .request(
            "call",
            json!({ "rpc": "herald.v1.Auth/Whoami", "request": {} }),
        )
        .await;
    assert_eq!(error_code(&reply), "deadline_exceeded", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("edge.connections.backend_call_timeout"),
        "{reply}"
    );
    let reply = alice
        .request(
            "publish",
            json!({ "topic": "room:lobby", "type": "chat.message", "data": {} }),
        )
        .await;
    assert_eq!(error_code(&reply), "deadline_exceeded", "{reply}");
    // A new socket's `auth` is answered too, and the socket closed as "unavailable".
    let mut late = WsClient::connect(&edge.url()).await;
    let reply = late
        .request("auth", json!({ "token": app.token("bob", &[]) }))
        .await;
    assert_eq!(error_code(&reply), "deadline_exceeded", "{reply}");
    assert_eq!(late.closed().await.code, 3005);
}

// Finding 10 of the hardening review: several backends with in-memory brokers lose events,
// so an edge refuses to start in front of more than one of them.

const MEMORY_BROKERS_REFUSED: &str = "they run the in-memory broker";

#[tokio::test]
async fn finding_10_an_edge_in_front_of_two_memory_broker_backends_refuses_to_start() {
    let first = spawn_app().await;
    let second = spawn_app().await;
    let edge = herald_e2e::edge::spawn_edge_for(&[first.addr, second.addr], |_| {}).await;
    let error = edge.exit().await.expect_err("the edge refuses to start");
    let message = error.to_string();
    assert!(message.contains(MEMORY_BROKERS_REFUSED), "{message}");
    assert!(
        message.contains("one edge per backend"),
        "names the fix: {message}"
    );

    // Two URLs of one backend share its broker: nothing is lost, the edge runs.
    let same = herald_e2e::edge::spawn_edge_for(&[first.addr, first.addr], |_| {}).await;
    let mut alice = same.connect_as(&first.token("alice", &[])).await;
    let reply = alice.request("ping", json!({})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
}

#[tokio::test]
async fn finding_10_herald_edge_with_two_memory_broker_backends_exits_non_zero_with_the_fix() {
    let first = spawn_app().await;
    let second = spawn_app().await;
    let output = tokio::process::Command::new(herald_e2e::process::herald_binary())
        .args(["edge", "--http-addr", "127.0.0.1:0", "--backend"])
        .arg(format!("http://{},http://{}", first.addr, second.addr))
        .env("HERALD_AUTH_HS256_SECRET", herald_e2e::SECRET)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(herald_e2e::PATIENCE, output)
        .await
        .expect("herald edge exits in time")
        .expect("run herald edge");
    assert!(!output.status.success(), "{:?}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(MEMORY_BROKERS_REFUSED), "{stderr}");
    assert!(stderr.contains("one edge per backend"), "{stderr}");
}

// Finding 14 of the hardening review: every timestamp the edge writes in JSON follows the
// proto3 JSON mapping.

/// `2026-12-01T10:00:00Z`, `…:00.120Z`, `…:00.120500Z` or `…:00.120500001Z`.
fn assert_z_normalized(timestamp: &Value) {
    let text = timestamp
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp string, got {timestamp}"));
    let (seconds, fraction) = text
        .strip_suffix('Z')
        .unwrap_or_else(|| panic!("`{text}` does not end in Z"))
        .split_once('.')
        .map_or((text.trim_end_matches('Z'), ""), |(s, f)| (s, f));
    assert_eq!(seconds.len(), 19, "`{text}`: YYYY-MM-DDTHH:MM:SS");
    assert!(!seconds.contains('+'), "`{text}` has an offset");
    assert!(
        [0, 3, 6, 9].contains(&fraction.len()) && fraction.bytes().all(|b| b.is_ascii_digit()),
        "`{text}` has {} fractional digits",
        fraction.len()
    );
}

#[tokio::test]
async fn finding_14_timestamps_on_the_websocket_are_z_normalized() {
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let mut alice = WsClient::connect(&edge.url()).await;
    let reply = alice
        .request("auth", json!({ "token": app.token("alice", &[]) }))
        .await;
    assert_z_normalized(&reply["result"]["expiresAt"]);

    let reply = alice
        .request("subscribe", json!({ "topic": "room:clock" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    for n in 0..5 {
        let reply = alice
            .request(
                "publish",
                json!({ "topic": "room:clock", "type": "tick", "data": { "n": n } }),
            )
            .await;
        assert!(reply.get("result").is_some(), "{reply}");
    }
    for _ in 0..5 {
        let push = alice.next_event().await;
        assert_z_normalized(&push["event"]["time"]);
    }
    let reply = alice
        .request(
            "call",
            json!({ "rpc": "herald.v1.Rooms/History", "request": { "topic": "room:clock", "limit": 5 } }),
        )
        .await;
    let events = reply["result"]["events"].as_array().expect("events");
    assert_eq!(events.len(), 5, "{reply}");
    for event in events {
        assert_z_normalized(&event["time"]);
    }
}

// Finding 16 of the hardening review, the edge's parts.

#[tokio::test]
async fn finding_16_auth_with_id_0_gets_its_reply() {
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let mut socket = WsClient::connect(&edge.url()).await;
    let auth = json!({ "id": 0, "method": "auth", "params": { "token": app.token("zero", &[]) } });
    socket.send_text(auth.to_string()).await;
    let reply = socket.reply_to(0).await;
    assert_eq!(reply["result"]["userId"], "zero", "{reply}");
    let reply = socket.request("ping", json!({})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
}

#[tokio::test]
async fn finding_16_herald_edge_runs_with_only_a_service_token_and_holds_no_signing_secret() {
    let app = spawn_app().await;
    let service_token = app.token("edge-1", &["service"]);
    let edge =
        herald_e2e::process::spawn_edge_process_with_service_token(&[app.addr], &service_token)
            .await;
    // Users authenticate, subscribe and receive through it: the backend verifies their tokens.
    let mut alice = WsClient::connect(&edge.ws_url()).await;
    let reply = alice
        .request("auth", json!({ "token": app.token("alice", &[]) }))
        .await;
    assert_eq!(reply["result"]["userId"], "alice", "{reply}");
    let reply = alice
        .request("subscribe", json!({ "topic": "room:lobby" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    app.client("bob", &[]).await.publish("room:lobby", 1).await;
    assert_eq!(alice.offsets(1).await, vec![1]);
    // With no key it cannot mint development tokens.
    let answer = herald_e2e::edge::http_get(edge.addr, "/dev/token").await;
    assert!(
        answer.contains(r#""available":false"#),
        "the development sign-in is off: {answer}"
    );
}

/// Who the backend lists in `topic`'s presence.
async fn present(socket: &mut WsClient, topic: &str) -> Vec<String> {
    let reply = socket
        .request(
            "call",
            json!({ "rpc": "herald.v1.Rooms/Presence", "request": { "topic": topic } }),
        )
        .await;
    let members = reply["result"]["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut users: Vec<String> = members
        .iter()
        .filter_map(|m| m["userId"].as_str().map(str::to_owned))
        .collect();
    users.sort();
    users
}

#[tokio::test]
async fn finding_16_pipelined_subscribe_and_unsubscribe_racing_the_last_subscriber_leave_no_ghost()
{
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |config| {
        config.limits.rate_burst = 10_000;
        config.limits.rate_per_second = 10_000;
    })
    .await;
    let mut ghost = edge.connect_as(&app.token("ghost", &[])).await;
    let mut watcher = edge.connect_as(&app.token("watcher", &[])).await;
    // Each round, the ghost is the topic's only subscriber: its unsubscribe races the feed's
    // retirement and the next round's subscribe races both.
    let mut id = 1000u64;
    for round in 0..100 {
        let topic = format!("room:ghost-{}", round % 3);
        let subscribe = json!({ "id": id, "method": "subscribe", "params": { "topic": topic } });
        let unsubscribe =
            json!({ "id": id + 1, "method": "unsubscribe", "params": { "topic": topic } });
        ghost.send_text(subscribe.to_string()).await;
        ghost.send_text(unsubscribe.to_string()).await;
        let subscribed = ghost.reply_to(id).await;
        let unsubscribed = ghost.reply_to(id + 1).await;
        assert_eq!(unsubscribed["result"], json!({}), "{unsubscribed}");
        assert!(
            subscribed.get("result").is_some() || error_code(&subscribed) == "cancelled",
            "{subscribed}"
        );
        id += 2;
    }
    for n in 0..3 {
        let topic = format!("room:ghost-{n}");
        let deadline = tokio::time::Instant::now() + herald_e2e::PATIENCE;
        loop {
            let users = present(&mut watcher, &topic).await;
            if users.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{topic} still lists {users:?} after every unsubscribe"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The ghost socket is fine and still subscribes normally.
    let reply = ghost
        .request("subscribe", json!({ "topic": "room:ghost-0" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    assert_eq!(present(&mut watcher, "room:ghost-0").await, vec!["ghost"]);
}

#[tokio::test]
async fn finding_16_a_feed_survives_more_backend_failures_over_its_life_than_its_reconnect_limit() {
    let app = spawn_app().await;
    let proxy = herald_e2e::fault_proxy::FaultProxy::start(app.addr).await;
    let edge = herald_e2e::edge::spawn_edge_for(&[proxy.addr], |_| {}).await;
    let mut alice = edge.connect_as(&app.token("alice", &[])).await;
    let reply = alice
        .request("subscribe", json!({ "topic": "room:flaky" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let service = app.service().await;
    // More failures than the feed's limit of 10 reconnects in a row, each after the stream
    // worked again: the subscription goes on and sees every event.
    for n in 1..=14u64 {
        proxy.reset_all();
        service.publish("room:flaky", 1).await;
        let push = loop {
            let push = alice.next_push().await;
            if push.get("presence").is_none() {
                break push;
            }
        };
        assert!(
            push.get("unsubscribed").is_none(),
            "failure {n} ended it: {push}"
        );
        assert_eq!(push["offset"], n.to_string(), "{push}");
    }
}
