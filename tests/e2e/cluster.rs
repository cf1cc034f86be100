//! Several backends on one Redis broker (issue 14): an edge in front of several Redis-broker
//! backends starts (finding 10's refusal is for in-memory brokers only), readiness follows
//! Redis, and events and presence cross backends. The faults: `kill -9` of a backend and of
//! the relay leader, Redis paused, restarted without persistence, and its pub/sub connection
//! killed; a killed backend's presence members expiring.
//!
//! The memory lane (`room:`) is tested with each backend on its own database: only the broker
//! is shared. The durable lane needs one database for every backend (offsets are fixed by
//! the database); SQLite cannot be shared between processes, so the durable part of the
//! cluster test runs only with `HERALD_TEST_DATABASE=postgres`, both backends on the same
//! fresh PostgreSQL database.

use std::time::Duration;

use herald_e2e::{
    PATIENCE, TestApp, TestDatabase,
    edge::{TestEdge, spawn_edge_for},
    history_checker::HistoryChecker,
    redis::RedisServer,
    spawn_app, spawn_app_with,
};
use serde_json::json;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

fn redis() -> RedisServer {
    RedisServer::start().expect("start redis-server (tests/run.sh installs it)")
}

async fn on_redis(redis: &RedisServer) -> TestApp {
    let url = redis.url();
    spawn_app_with(move |config| config.broker.url = Some(url)).await
}

async fn edge_for(apps: &[&TestApp]) -> TestEdge {
    let addrs: Vec<_> = apps.iter().map(|app| app.addr).collect();
    spawn_edge_for(&addrs, |_| {}).await
}

async fn status(app: &TestApp) -> ServingStatus {
    let mut health = app.health().await;
    let answer = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("the health check answers");
    answer.into_inner().status()
}

async fn wait_for(app: &TestApp, wanted: ServingStatus, what: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while status(app).await != wanted {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn finding_10_an_edge_in_front_of_two_backends_sharing_one_redis_starts_and_delivers_across_them()
 {
    let redis = redis();
    let first = on_redis(&redis).await;
    let second = on_redis(&redis).await;
    let edge = edge_for(&[&first, &second]).await;

    // Sockets land on either backend; every one sees what is published on the other.
    let mut sockets = Vec::new();
    for user in ["alice", "bob", "carol", "dave"] {
        let mut socket = edge.connect_as(&first.token(user, &[])).await;
        let reply = socket
            .request("subscribe", json!({ "topic": "room:across" }))
            .await;
        assert_eq!(reply["result"]["recovered"], true, "{reply}");
        sockets.push(socket);
    }
    let on_first = first.service().await;
    let on_second = second.service().await;
    for n in 1..=20 {
        let publisher = if n % 2 == 0 { &on_first } else { &on_second };
        let position = publisher.publish("room:across", n).await;
        assert_eq!(position.offset, n, "one offset sequence across backends");
    }
    for socket in &mut sockets {
        assert_eq!(socket.offsets(20).await, herald_e2e::range(1, 20));
    }
}

#[tokio::test]
async fn finding_10_a_memory_broker_backend_among_redis_broker_backends_is_refused_with_the_fix() {
    let redis = redis();
    let shared = on_redis(&redis).await;
    let alone = spawn_app().await;
    let edge = edge_for(&[&shared, &alone]).await;
    let message = edge
        .exit()
        .await
        .expect_err("the edge refuses to start")
        .to_string();
    assert!(message.contains("in-memory broker"), "{message}");
    assert!(
        message.contains("--broker redis://"),
        "names the fix: {message}"
    );
}

/// Backends on different Redis servers, or on one Redis with different key prefixes, would
/// each deliver only what was published through them: an edge in front of them refuses to
/// start, naming each backend's broker and the fix. Backends on the same one pass (above).
#[tokio::test]
async fn an_edge_in_front_of_backends_on_different_redis_brokers_is_refused_with_the_fix() {
    let (one, two) = (redis(), redis());
    let on_one = on_redis(&one).await;
    let on_two = on_redis(&two).await;
    let url = one.url();
    let other_prefix = spawn_app_with(move |config| {
        config.broker.url = Some(url);
        config.broker.prefix = "other".into();
    })
    .await;
    for (pair, what) in [
        ([&on_one, &on_two], "two Redis servers"),
        ([&on_one, &other_prefix], "two prefixes on one Redis"),
    ] {
        let message = edge_for(&pair)
            .await
            .exit()
            .await
            .expect_err(what)
            .to_string();
        assert!(
            message.contains("different Redis brokers"),
            "{what}: {message}"
        );
        assert!(
            message.contains("the same Redis URL and broker.prefix"),
            "{what}: names the fix: {message}"
        );
        for app in pair {
            assert!(
                message.contains(&app.addr.to_string()),
                "{what}: names {}: {message}",
                app.addr
            );
        }
    }
}

#[tokio::test]
async fn a_backend_on_redis_is_not_ready_while_redis_is_paused_and_ready_again_after() {
    let redis = redis();
    let app = on_redis(&redis).await;
    // Ready once its pub/sub connection is up.
    wait_for(&app, ServingStatus::Serving, "ready after start").await;

    redis.pause().expect("SIGSTOP redis-server");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut not_serving = false;
    while tokio::time::Instant::now() < deadline {
        if status(&app).await == ServingStatus::NotServing {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.resume().expect("SIGCONT redis-server");
    assert!(
        not_serving,
        "readiness turns false while Redis does not answer"
    );
    wait_for(
        &app,
        ServingStatus::Serving,
        "ready again once Redis answers",
    )
    .await;
    // And it publishes again.
    let service = app.service().await;
    assert_eq!(service.publish("room:after-pause", 1).await.offset, 1);
}

#[tokio::test]
async fn herald_serve_with_a_broker_url_that_does_not_answer_exits_naming_the_setting() {
    let output = tokio::process::Command::new(herald_e2e::process::herald_binary())
        .args(["serve", "--no-edge", "--grpc-addr", "127.0.0.1:0"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(tempfile::tempdir().expect("a data directory").path())
        .env("HERALD_BROKER_URL", "redis://127.0.0.1:1/")
        .env("HERALD_AUTH_HS256_SECRET", herald_e2e::SECRET)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .expect("herald serve exits in time")
        .expect("run herald serve");
    assert!(!output.status.success(), "{:?}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HERALD_BROKER_URL"), "{stderr}");
}

/// Two backends on one Redis, each with an edge of its own: a subscriber on edge 1 (backend 1)
/// sees every event published on backend 2, once and in order, and presence joins on either
/// backend are seen on both. With `HERALD_TEST_DATABASE=postgres` the durable lane (`order:`
/// is durable, but needs customers; `user:` is the durable topic any service may publish to)
/// is checked the same way on a shared PostgreSQL database; on SQLite only the memory lane.
#[tokio::test]
async fn two_backends_and_two_edges_on_one_redis_deliver_every_event_in_order_and_share_presence() {
    let redis = redis();
    let database = TestDatabase::from_env();
    let shared_url = match database {
        TestDatabase::Postgres => Some(herald_e2e::postgres::shared().fresh_database().await),
        TestDatabase::Sqlite => None,
    };
    let start = |url: Option<String>| {
        let redis_url = redis.url();
        spawn_app_with(move |config| {
            config.broker.url = Some(redis_url);
            if let Some(url) = url {
                config.database_url = Some(url);
            }
        })
    };
    let first = start(shared_url.clone()).await;
    let second = start(shared_url.clone()).await;
    let edge1 = edge_for(&[&first]).await;
    let edge2 = edge_for(&[&second]).await;

    let checker = HistoryChecker::new();
    let mut alice = edge1.connect_as(&first.token("alice", &[])).await;
    let reply = alice
        .request("subscribe", json!({ "topic": "room:cluster" }))
        .await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    checker.expect("alice", "room:cluster", 0);
    let durable = shared_url.is_some();
    if durable {
        let reply = alice
            .request("subscribe", json!({ "topic": "user:alice" }))
            .await;
        assert!(reply.get("result").is_some(), "{reply}");
        checker.expect("alice", "user:alice", 0);
    }

    // Presence: bob joins through edge 2 / backend 2; backend 1 lists both.
    let mut bob = edge2.connect_as(&second.token("bob", &[])).await;
    let reply = bob
        .request("subscribe", json!({ "topic": "room:cluster" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let on_first = first.client("carol", &[]).await;
    let mut members = Vec::new();
    for _ in 0..200 {
        members = on_first
            .presence("room:cluster")
            .await
            .expect("presence answers")
            .members
            .into_iter()
            .map(|m| m.user_id)
            .collect::<Vec<_>>();
        members.sort();
        if members == ["alice", "bob"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        members,
        ["alice", "bob"],
        "joins on both backends are seen on backend 1"
    );

    // Publishers on backend 2, concurrently.
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let second = &second;
            let checker = &checker;
            async move {
                let service = second.service().await;
                for i in 0..25u64 {
                    let n = p * 1000 + i;
                    let position = service.publish("room:cluster", n).await;
                    checker.acked("room:cluster", position.offset, &format!("n{n}"));
                    if durable && p == 0 {
                        let id = format!("d{n}");
                        let position = service
                            .try_publish_durable("user:alice", "test.event", json!({ "id": id }))
                            .await
                            .expect("a durable publish on backend 2")
                            .position
                            .expect("position");
                        checker.acked("user:alice", position.offset, &id);
                    }
                }
            }
        })
        .collect();
    futures_util::future::join_all(publishers).await;

    let expected = checker.acked_count("room:cluster") + checker.acked_count("user:alice");
    let mut seen = 0;
    while seen < expected {
        let push = alice.next_event().await;
        checker.delivered_push("alice", &push);
        seen += 1;
    }
    checker.assert_clean_within(PATIENCE).await;

    // bob leaves on backend 2: backend 1 sees it.
    bob.close().await;
    let mut left = false;
    for _ in 0..400 {
        let members: Vec<_> = on_first
            .presence("room:cluster")
            .await
            .expect("presence answers")
            .members
            .into_iter()
            .map(|m| m.user_id)
            .collect();
        if members == ["alice"] {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(left, "bob's leave on backend 2 is seen on backend 1");
}

/// `kill -9` of backend 1 under load: the edge's feeds that were on it reconnect to backend 2
/// and resume from the last offset each socket was sent; with history in Redis nothing is
/// lost or repeated (the history checker). Memory lane; each process has its own SQLite.
#[tokio::test]
async fn kill_9_of_one_backend_under_load_resumes_its_feeds_on_the_other_with_nothing_lost_or_repeated()
 {
    use herald_backend::auth::dev_key::{self, TokenClaims};
    use herald_e2e::process::spawn_serve_process_with_env;

    let redis = redis();
    let url = redis.url();
    let env = [("HERALD_BROKER_URL", url.as_str())];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let first =
        spawn_serve_process_with_env(dirs[0].path(), "127.0.0.1:0", "127.0.0.1:0", &env).await;
    let second =
        spawn_serve_process_with_env(dirs[1].path(), "127.0.0.1:0", "127.0.0.1:0", &env).await;
    let edge = spawn_edge_for(&[first.grpc_addr, second.grpc_addr], |_| {}).await;
    let token = |sub: &str| {
        dev_key::sign_hs256(
            herald_e2e::SECRET,
            &TokenClaims::new(sub, &[], Duration::from_secs(3600)),
        )
        .expect("sign a token")
    };

    // Six topics: the edge opens one feed per topic on the next of its connections
    // round-robin (two per backend), so six consecutive feeds land on both backends.
    let topics: Vec<String> = (0..6).map(|i| format!("room:load-{i}")).collect();
    let checker = HistoryChecker::new();
    let mut alice = edge.connect_as(&token("alice")).await;
    for topic in &topics {
        let reply = alice.request("subscribe", json!({ "topic": topic })).await;
        assert_eq!(reply["result"]["recovered"], true, "{reply}");
        checker.expect("alice", topic, 0);
    }

    let endpoint = tonic::transport::Endpoint::from_shared(second.grpc_url()).unwrap();
    let publisher = herald_e2e::Client::connect(endpoint, token("publisher")).await;
    let publish = |from: u64, to: u64| {
        let publisher = &publisher;
        let checker = &checker;
        let topics = &topics;
        async move {
            for n in from..to {
                let topic = &topics[(n % 6) as usize];
                let position = publisher.publish(topic, n).await;
                checker.acked(topic, position.offset, &format!("n{n}"));
            }
        }
    };
    let reading = async {
        // Read while publishing: 360 events, each topic's in order.
        let all = async {
            for _ in 0..360 {
                let push = alice.next_event().await;
                checker.delivered_push("alice", &push);
            }
        };
        if tokio::time::timeout(PATIENCE * 2, all).await.is_err() {
            panic!("not every event arrived: {}", checker.report());
        }
    };
    let load = async {
        publish(0, 120).await;
        first.kill9().await;
        publish(120, 360).await;
    };
    tokio::join!(reading, load);
    checker.assert_clean();
}

/// A token for a process the test started (they all verify with the test secret).
fn token_for(sub: &str, roles: &[&str]) -> String {
    use herald_backend::auth::dev_key::{self, TokenClaims};
    dev_key::sign_hs256(
        herald_e2e::SECRET,
        &TokenClaims::new(sub, roles, Duration::from_secs(3600)),
    )
    .expect("sign a token")
}

async fn client_of(
    process: &herald_e2e::process::ServeProcess,
    sub: &str,
    roles: &[&str],
) -> herald_e2e::Client {
    let endpoint =
        tonic::transport::Endpoint::from_shared(process.grpc_url()).expect("an endpoint");
    herald_e2e::Client::connect(endpoint, token_for(sub, roles)).await
}

/// Waits until one of `processes` has logged `message`; returns its index.
async fn which_logged(processes: &[&herald_e2e::process::ServeProcess], message: &str) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(index) = processes.iter().position(|p| p.logged(message)) {
            return index;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no process logged {message:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const LEADS: &str = "this node relays the outbox for the cluster";
const STANDS_BY: &str = "another node relays the outbox; standing by";

/// `kill -9` of the relay leader while durable publishes commit on the other backend: the
/// other backend takes the cluster's relay lock and publishes what was committed and not yet
/// relayed; a subscriber (through an edge in front of both) gets every committed event once,
/// in offset order. The relay lock is a PostgreSQL advisory lock, so this test always runs
/// both backends on one fresh PostgreSQL database (SQLite has one process by design).
#[tokio::test]
async fn kill_9_of_the_relay_leader_hands_the_outbox_to_the_other_backend_and_every_committed_event_arrives_once()
 {
    use herald_e2e::process::spawn_serve_process_with_env;

    let redis = redis();
    let database = herald_e2e::postgres::shared().fresh_database().await;
    let redis_url = redis.url();
    let env = [
        ("HERALD_BROKER_URL", redis_url.as_str()),
        ("HERALD_DATABASE_URL", database.as_str()),
    ];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let one =
        spawn_serve_process_with_env(dirs[0].path(), "127.0.0.1:0", "127.0.0.1:0", &env).await;
    let two =
        spawn_serve_process_with_env(dirs[1].path(), "127.0.0.1:0", "127.0.0.1:0", &env).await;
    let leader_index = which_logged(&[&one, &two], LEADS).await;
    let (leader, standby) = if leader_index == 0 {
        (one, two)
    } else {
        (two, one)
    };
    which_logged(&[&standby], STANDS_BY).await;
    assert!(!standby.logged(LEADS), "one relay leader per cluster");

    let edge = spawn_edge_for(&[leader.grpc_addr, standby.grpc_addr], |_| {}).await;
    let checker = HistoryChecker::new();
    let mut alice = edge.connect_as(&token_for("alice", &[])).await;
    let reply = alice
        .request("subscribe", json!({ "topic": "user:alice" }))
        .await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    checker.expect("alice", "user:alice", 0);

    // Durable publishes commit on the standby; the leader relays them until it is killed.
    let publisher = client_of(&standby, "publisher", &["service"]).await;
    let publish = |from: u64, to: u64| {
        let publisher = &publisher;
        let checker = &checker;
        async move {
            for n in from..to {
                let id = format!("d{n}");
                let position = publisher
                    .try_publish_durable("user:alice", "test.event", json!({ "id": id }))
                    .await
                    .expect("a durable publish on the standby")
                    .position
                    .expect("a position");
                checker.acked("user:alice", position.offset, &id);
            }
        }
    };
    let total = 300;
    let reading = async {
        let all = async {
            for _ in 0..total {
                let push = alice.next_event().await;
                checker.delivered_push("alice", &push);
            }
        };
        if tokio::time::timeout(PATIENCE * 2, all).await.is_err() {
            panic!("not every event arrived: {}", checker.report());
        }
    };
    // The kill lands while publishes flow, so some are committed and not yet relayed.
    let kill = async {
        while checker.acked_count("user:alice") < 100 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        leader.kill9().await;
    };
    tokio::join!(reading, publish(0, total as u64), kill);
    checker.assert_clean();
    assert!(standby.logged(LEADS), "the standby took over the relay");
}

/// The pub/sub connection killed by Redis (`CLIENT KILL TYPE pubsub`, what Redis does to a
/// subscriber over its output buffer limit) while events flow on both lanes: the node
/// reconnects, fills what it missed from the stream (or the database), and the subscriber
/// sees every event once and in order: no silent gap.
#[tokio::test]
async fn a_pub_sub_connection_killed_by_redis_reconnects_and_its_subscribers_miss_nothing() {
    let redis = redis();
    let app = on_redis(&redis).await;
    wait_for(&app, ServingStatus::Serving, "ready after start").await;
    let edge = edge_for(&[&app]).await;
    let checker = HistoryChecker::new();
    let mut alice = edge.connect_as(&app.token("alice", &[])).await;
    for topic in ["room:pubsub", "user:alice"] {
        let reply = alice.request("subscribe", json!({ "topic": topic })).await;
        assert_eq!(reply["result"]["recovered"], true, "{reply}");
        checker.expect("alice", topic, 0);
    }

    let service = app.service().await;
    let total = 300u64;
    let publish = async {
        for n in 0..total {
            let id = format!("n{n}");
            if n % 2 == 0 {
                let position = service.publish("room:pubsub", n).await;
                checker.acked("room:pubsub", position.offset, &id);
            } else {
                let position = service
                    .try_publish_durable("user:alice", "test.event", json!({ "id": id }))
                    .await
                    .expect("a durable publish")
                    .position
                    .expect("a position");
                checker.acked("user:alice", position.offset, &id);
            }
        }
    };
    let kill = async {
        for at in [60, 180] {
            while (checker.acked_count("room:pubsub") + checker.acked_count("user:alice")) < at {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let reply = redis
                .command("CLIENT KILL TYPE pubsub")
                .expect("CLIENT KILL");
            let killed: u64 = reply
                .strip_prefix(':')
                .and_then(|count| count.parse().ok())
                .unwrap_or_else(|| panic!("CLIENT KILL answers a count: {reply}"));
            assert!(killed >= 1, "the backend's pub/sub connection was killed");
        }
    };
    let reading = async {
        let all = async {
            for _ in 0..total {
                let push = alice.next_event().await;
                checker.delivered_push("alice", &push);
            }
        };
        if tokio::time::timeout(PATIENCE * 2, all).await.is_err() {
            panic!("not every event arrived: {}", checker.report());
        }
    };
    tokio::join!(publish, kill, reading);
    checker.assert_clean();
}

/// Presence across processes: a member joined on backend 1 is listed on backend 2 while
/// backend 1 refreshes it (longer than the TTL), and disappears from backend 2's list within
/// the TTL after backend 1 is killed with `kill -9` (no leave is ever sent).
#[tokio::test]
async fn a_member_on_a_killed_backend_disappears_from_presence_within_the_ttl() {
    use herald_e2e::process::spawn_serve_process_with_env;

    let redis = redis();
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("herald.toml");
    let ttl = Duration::from_secs(2);
    std::fs::write(&config, "[broker]\npresence_ttl = \"2s\"\n").expect("write the config");
    let redis_url = redis.url();
    let config_path = config.to_str().expect("a UTF-8 path");
    let env = [
        ("HERALD_BROKER_URL", redis_url.as_str()),
        ("HERALD_CONFIG", config_path),
    ];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let one =
        spawn_serve_process_with_env(dirs[0].path(), "127.0.0.1:0", "127.0.0.1:0", &env).await;
    let two =
        spawn_serve_process_with_env(dirs[1].path(), "127.0.0.1:0", "127.0.0.1:0", &env).await;

    let mut bob = herald_e2e::edge::WsClient::connect(&one.ws_url()).await;
    let reply = bob
        .request("auth", json!({ "token": token_for("bob", &[]) }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let reply = bob
        .request("subscribe", json!({ "topic": "room:lobby" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");

    let carol = client_of(&two, "carol", &[]).await;
    let members = || async {
        carol
            .presence("room:lobby")
            .await
            .expect("presence answers")
            .members
            .into_iter()
            .map(|m| m.user_id)
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while members().await != ["bob"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's join reaches backend 2"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Kept alive by backend 1's refresh for twice the TTL.
    let kept_until = tokio::time::Instant::now() + ttl * 2;
    while tokio::time::Instant::now() < kept_until {
        assert_eq!(members().await, ["bob"], "a live member stays listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let killed = tokio::time::Instant::now();
    one.kill9().await;
    let mut gone_after = None;
    while killed.elapsed() < ttl * 3 {
        if members().await.is_empty() {
            gone_after = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone_after = gone_after.expect("bob disappears from backend 2's presence");
    // Within the TTL, plus the time a poll takes on a busy test machine.
    assert!(
        gone_after <= ttl + Duration::from_millis(1500),
        "bob was listed {gone_after:?} after backend 1 died; the TTL is {ttl:?}"
    );
    drop(two);
}

/// Redis restarted without persistence (every key gone): a memory-lane subscriber is ended
/// with `insufficient_state` at its last position *in the old epoch*, and resubscribing with
/// it answers `recovered = false` at the new epoch, whose events follow; no event is ever
/// delivered under an offset of the old epoch. The durable subscriber on the same socket
/// recovers fully from the database: same epoch, every offset once. Publishing works again,
/// and is delivered, within 10 s of the restart.
#[tokio::test]
async fn redis_restarted_without_persistence_gives_memory_subscribers_a_new_epoch_and_durable_ones_everything()
 {
    redis_restarted(Snapshot::None).await;
}

/// The same when Redis restarts from a snapshot taken after the first event: it comes back
/// with the keys of then (top 1 where subscribers have seen 3). Continuing that epoch would
/// hand out offsets 2 and 3 again for other events; a new epoch begins instead.
#[tokio::test]
async fn redis_restarted_from_an_older_snapshot_gives_memory_subscribers_a_new_epoch_and_durable_ones_everything()
 {
    redis_restarted(Snapshot::AfterFirstEvent).await;
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Snapshot {
    None,
    AfterFirstEvent,
}

async fn redis_restarted(snapshot: Snapshot) {
    let mut redis = redis();
    let app = on_redis(&redis).await;
    wait_for(&app, ServingStatus::Serving, "ready after start").await;
    let edge = edge_for(&[&app]).await;
    let mut alice = edge.connect_as(&app.token("alice", &[])).await;
    for topic in ["room:restart", "user:alice"] {
        let reply = alice.request("subscribe", json!({ "topic": topic })).await;
        assert_eq!(reply["result"]["recovered"], true, "{reply}");
    }
    let service = app.service().await;
    let publish_durable = |n: u64| {
        let service = &service;
        async move {
            service
                .try_publish_durable("user:alice", "test.event", json!({ "id": format!("d{n}") }))
                .await
                .expect("a durable publish")
                .position
                .expect("a position")
        }
    };
    let mut old_epoch = String::new();
    for n in 1..=3u64 {
        old_epoch = service.publish("room:restart", n).await.epoch;
        publish_durable(n).await;
        if n == 1 && snapshot == Snapshot::AfterFirstEvent {
            // The durable event reaches Redis through the relay: wait for it in the stream.
            wait_until_cached(&redis, "user:alice").await;
            assert_eq!(redis.command("SAVE").unwrap(), "+OK");
        }
    }
    let mut durable = Vec::new();
    let mut memory = Vec::new();
    while durable.len() + memory.len() < 6 {
        let push = alice.next_event().await;
        let offset = push["offset"].as_str().unwrap().to_owned();
        match push["topic"].as_str() {
            Some("user:alice") => durable.push((offset, push["epoch"].clone())),
            _ => memory.push(offset),
        }
    }
    assert_eq!(memory, ["1", "2", "3"]);
    let durable_epoch = durable[0].1.clone();

    redis.restart().expect("restart redis-server");
    let restarted = tokio::time::Instant::now();
    let kept = redis.command("EXISTS herald:t:room:restart:m").unwrap();
    let expected = if snapshot == Snapshot::None {
        ":0"
    } else {
        ":1"
    };
    assert_eq!(kept, expected, "the memory topic's keys after the restart");
    // The first memory publish that goes through after the restart, within 10 s.
    let new_position = loop {
        match service
            .try_publish("room:restart", "test.event", json!({ "n": 4 }), None)
            .await
        {
            Ok(answer) => break answer.position.expect("a position"),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    restarted.elapsed() < Duration::from_secs(10),
                    "publishes still refused 10 s after the restart: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_ne!(
        new_position.epoch, old_epoch,
        "a new epoch after the restart"
    );
    assert_eq!(
        new_position.offset, 1,
        "offsets restart at 1 in the new epoch"
    );
    for n in 4..=6u64 {
        publish_durable(n).await;
    }

    // Everything on the durable topic, once, in the same epoch; the memory subscription ends
    // at its old position instead of carrying an event of the new epoch.
    let mut ended = None;
    while durable.len() < 6 || ended.is_none() {
        let push = alice.next_push().await;
        if let Some(unsubscribed) = push.get("unsubscribed") {
            assert_eq!(unsubscribed["topic"], "room:restart", "{push}");
            ended = Some(unsubscribed.clone());
        } else if push.get("event").is_some() {
            assert_eq!(
                push["topic"], "user:alice",
                "no memory event of the new epoch: {push}"
            );
            durable.push((
                push["offset"].as_str().unwrap().to_owned(),
                push["epoch"].clone(),
            ));
        }
    }
    let offsets: Vec<_> = durable.iter().map(|(offset, _)| offset.as_str()).collect();
    assert_eq!(offsets, ["1", "2", "3", "4", "5", "6"]);
    assert!(durable.iter().all(|(_, epoch)| *epoch == durable_epoch));
    let ended = ended.expect("the memory subscription ended");
    assert_eq!(ended["code"], 3003, "{ended}");
    assert_eq!(ended["offset"], "3", "{ended}");
    assert_eq!(
        ended["epoch"],
        old_epoch.as_str(),
        "its last position is in the old epoch"
    );

    // Resuming from there: not recovered, at the new epoch; the next event follows.
    let reply = alice
        .request(
            "subscribe",
            json!({ "topic": "room:restart", "since": { "offset": "3", "epoch": old_epoch } }),
        )
        .await;
    // (`recovered: false` is the JSON default, so it is left out.)
    assert_ne!(reply["result"]["recovered"], true, "{reply}");
    assert!(reply.get("result").is_some(), "{reply}");
    assert_eq!(
        reply["result"]["position"]["epoch"],
        new_position.epoch.as_str()
    );
    let top: u64 = reply["result"]["position"]["offset"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    service.publish("room:restart", 99).await;
    let push = alice.next_event().await;
    assert_eq!(push["epoch"], new_position.epoch.as_str(), "{push}");
    assert_eq!(push["offset"], (top + 1).to_string(), "{push}");
    assert!(
        restarted.elapsed() < Duration::from_secs(10),
        "live again within 10 s of the restart ({:?})",
        restarted.elapsed()
    );
}

/// Waits until the relay has put a durable topic's first event into its Redis stream.
async fn wait_until_cached(redis: &RedisServer, topic: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while redis
        .command(&format!("EXISTS herald:t:{topic}:s"))
        .unwrap()
        != ":1"
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not cache {topic} in Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Latest keyed signals across backends (issue 14): they live in Redis with their TTL, so a new
// subscriber on one backend is greeted by the courier position reported through another.
// ---------------------------------------------------------------------------------------------

/// The first frame after `subscribed`, which must be a signal.
async fn greeting(subscription: &mut herald_e2e::Subscription) -> herald_proto::v1::Signal {
    match subscription.next_frame().await {
        Ok(herald_proto::v1::subscribe_response::Frame::Signal(signal)) => signal,
        other => panic!("a signal frame, got {other:?}"),
    }
}

/// With `HERALD_TEST_DATABASE=postgres` both backends share the database and the order's
/// customer subscribes on backend 1; on SQLite the order exists on backend 2's database only,
/// so a service (which may read any order) subscribes on backend 1 instead.
#[tokio::test]
async fn a_courier_position_reported_through_backend_2_greets_a_new_subscriber_on_backend_1() {
    let redis = redis();
    let shared_url = match TestDatabase::from_env() {
        TestDatabase::Postgres => Some(herald_e2e::postgres::shared().fresh_database().await),
        TestDatabase::Sqlite => None,
    };
    let start = |url: Option<String>| {
        let redis_url = redis.url();
        spawn_app_with(move |config| {
            config.broker.url = Some(redis_url);
            if let Some(url) = url {
                config.database_url = Some(url);
            }
        })
    };
    let first = start(shared_url.clone()).await;
    let second = start(shared_url.clone()).await;

    let cast = crate::orders::cast(&second).await;
    let id = crate::orders::out_for_delivery(&cast).await;
    let topic = format!("order:{id}");

    // The first fix of a delivery goes out (kept, then broadcast) before ReportLocation
    // answers.
    let answer = cast
        .kim
        .report(vec![(
            id,
            crate::orders::fix(48.85, crate::orders::now_ms()),
        )])
        .await
        .expect("ReportLocation answers");
    assert_eq!((answer.accepted, answer.rejected), (1, 0));

    let newcomer = match shared_url {
        Some(_) => first.client("carol", &["customer"]).await,
        None => first.client("dispatch", &["service"]).await,
    };
    let mut late = newcomer.subscribe(&topic).await;
    let kept = greeting(&mut late).await;
    assert_eq!(kept.r#type, "courier.location");
    assert_eq!(kept.key, "courier");
    let data = serde_json::to_value(kept.data.expect("the fix")).unwrap();
    assert_eq!(data["fix"]["lat"], json!(48.85), "{data}");
}
