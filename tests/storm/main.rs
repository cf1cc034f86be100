//! A reconnect storm: 5,000 WebSockets connect, authenticate and subscribe to a durable topic
//! at once; then `herald serve` (backend and edge) is killed with SIGKILL and restarted on the
//! same ports. Every client reconnects with exponential backoff and jitter, as an SDK does,
//! and resumes from the last event it processed. All of them end up subscribed again, every
//! event acknowledged during and after the outage reaches every one of them once and in
//! order, and the process returns to its baseline once they are gone.
//!
//! Its own test target: `herald serve` restarts on its SQLite data directory whatever
//! `HERALD_TEST_DATABASE` says, so the PostgreSQL pass of the end-to-end suite would only
//! repeat it.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use herald_backend::auth::dev_key::{self, TokenClaims};
use herald_e2e::{
    PATIENCE, SECRET,
    baseline::{Baseline, FD_SLACK, open_fds},
    eventually, eventually_within,
    history_checker::HistoryChecker,
    process::{spawn_serve_process, spawn_serve_process_at},
    sdk::{ClientState, Publisher, SdkClient},
};
use tokio_util::sync::CancellationToken;

/// The storm's deadlines: generous, since 5,000 sockets share two cores with the server.
const STORM_PATIENCE: Duration = Duration::from_secs(120);

const CLIENTS: usize = 5_000;
/// Tasks that open the sockets side by side.
const OPENERS: usize = 8;
const TOPIC: &str = "order:storm";

fn token(sub: &str, roles: &[&str]) -> String {
    dev_key::sign_hs256(
        SECRET,
        &TokenClaims::new(sub, roles, Duration::from_secs(3600)),
    )
    .expect("sign a token")
}

fn all_subscribed(states: &[Arc<ClientState>]) -> usize {
    states
        .iter()
        .filter(|s| s.subscribed.load(Ordering::Relaxed))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_5000_sockets_survives_a_kill_9_of_the_backend_and_everyone_resumes_gapless() {
    let dir = tempfile::tempdir().expect("a data directory");
    let serve = spawn_serve_process(dir.path()).await;
    let (grpc_addr, http_addr) = (serve.grpc_addr, serve.http_addr);
    let fds_before = open_fds(serve.pid());
    let baseline = Baseline::of_edge_at(http_addr).await;
    let url = serve.ws_url();
    let checker = Arc::new(HistoryChecker::new());
    let stop = CancellationToken::new();

    // The storm: every client its own user (the per-user socket cap is per user).
    let mut states = Vec::with_capacity(CLIENTS + 1);
    let mut clients = Vec::with_capacity(CLIENTS + 1);
    for n in 0..=CLIENTS {
        let name = if n == CLIENTS {
            "control".to_owned()
        } else {
            format!("storm-{n}")
        };
        let mut client = SdkClient::new(
            &name,
            &url,
            token(&name, &["admin"]),
            &[TOPIC],
            checker.clone(),
        );
        client.cap = Duration::from_secs(3);
        states.push(client.state.clone());
        clients.push(client);
    }
    let mut running = Vec::with_capacity(CLIENTS + 1);
    let chunk = clients.len().div_ceil(OPENERS);
    let mut openers = Vec::new();
    while !clients.is_empty() {
        let batch: Vec<_> = clients.drain(..chunk.min(clients.len())).collect();
        let stop = stop.clone();
        openers.push(tokio::spawn(async move {
            batch
                .into_iter()
                .map(|client| tokio::spawn(client.run(stop.clone())))
                .collect::<Vec<_>>()
        }));
    }
    for opener in openers {
        running.extend(opener.await.expect("an opener ran"));
    }
    eventually_within(
        "all 5,000 sockets and the control client subscribe",
        STORM_PATIENCE,
        || all_subscribed(&states) == CLIENTS + 1,
    )
    .await;

    let mut publisher = Publisher::new(&url, token("publisher", &["service"]), checker.clone());
    for n in 0..5 {
        assert!(
            publisher
                .publish(TOPIC, &format!("before-{n}"), PATIENCE)
                .await
        );
    }

    serve.kill9().await;
    // Published during the outage: retried with their keys until the restarted process takes
    // them.
    let during = tokio::spawn(async move {
        for n in 0..5 {
            assert!(
                publisher
                    .publish(TOPIC, &format!("during-{n}"), PATIENCE * 4)
                    .await,
                "during-{n} is acknowledged once the backend is back"
            );
        }
        publisher
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let serve =
        spawn_serve_process_at(dir.path(), &grpc_addr.to_string(), &http_addr.to_string()).await;
    let mut publisher = during.await.expect("the publisher ran");
    let deadline = tokio::time::Instant::now() + STORM_PATIENCE;
    while all_subscribed(&states) < CLIENTS + 1 {
        let stuck: Vec<_> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.subscribed.load(Ordering::Relaxed))
            .take(3)
            .collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} clients resubscribed; first still out: {stuck:?}",
            all_subscribed(&states),
            CLIENTS + 1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 0..5 {
        assert!(
            publisher
                .publish(TOPIC, &format!("after-{n}"), PATIENCE)
                .await
        );
    }
    checker.assert_clean_within(STORM_PATIENCE).await;
    let classification = checker.classify();
    assert_eq!(classification.forgiven, 0, "a durable topic has no gap");
    assert_eq!(
        classification.ok,
        u64::try_from((CLIENTS + 1) * 15).expect("small"),
        "every client got all 15 events\n{classification}"
    );
    let reconnected = states
        .iter()
        .filter(|s| s.reconnects.load(Ordering::Relaxed) > 0)
        .count();
    assert_eq!(
        reconnected,
        CLIENTS + 1,
        "every socket died with the process"
    );

    stop.cancel();
    for client in running {
        if let Err(error) = client.await {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    drop(publisher);
    baseline.assert_returns(Some(http_addr)).await;
    let pid = serve.pid();
    eventually("the restarted process closes what the storm opened", || {
        open_fds(pid) <= fds_before + FD_SLACK
    })
    .await;
}
