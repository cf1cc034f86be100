//! PostgreSQL goes away for 10 seconds: writes fail with UNAVAILABLE and a retry hint,
//! readiness turns NOT_SERVING, and everything recovers by itself when the database is back.

use std::time::Duration;

use herald_e2e::{
    HealthCheckRequest, PATIENCE, ServingStatus, TestDatabase, postgres::PgCluster, spawn_app_on,
};
use herald_proto::codes::RETRY_AFTER_TRAILER;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;

async fn run_blocking(f: impl FnOnce() -> Result<(), String> + Send + 'static) {
    tokio::task::spawn_blocking(f).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_writes_with_unavailable_and_recovers_without_a_restart() {
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(PgCluster::start)
            .await
            .unwrap()
            .unwrap(),
    );
    let url = cluster.fresh_database().await;
    let app = spawn_app_on(TestDatabase::Sqlite, |config| {
        config.database_url = Some(url);
    })
    .await;
    let service = app.service().await;
    let mut sub = service.subscribe("order:outage").await;
    let first = service
        .try_publish_durable("order:outage", "test.event", json!({ "n": 1 }))
        .await
        .unwrap();
    assert_eq!(first.position.unwrap().offset, 1);

    let mut health = app.health().await;
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // Waits until readiness reports `expected` (updates may repeat a status).
    let mut reaches = async |expected: ServingStatus| {
        loop {
            let status = tokio::time::timeout(PATIENCE, watch.next())
                .await
                .expect("a health update in time")
                .expect("the health stream stays open")
                .unwrap()
                .status;
            if ServingStatus::try_from(status).unwrap() == expected {
                return;
            }
        }
    };
    reaches(ServingStatus::Serving).await;

    let down = tokio::time::Instant::now();
    let stopping = cluster.clone();
    run_blocking(move || stopping.stop_server()).await;
    reaches(ServingStatus::NotServing).await;

    let refused = service
        .try_publish_durable("order:outage", "test.event", json!({ "n": 99 }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("retry"), "{}", refused.message());
    let hint: u64 = refused
        .metadata()
        .get(RETRY_AFTER_TRAILER)
        .expect("a retry hint")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(hint > 0);

    // The outage lasts 10 seconds: that is the scenario, not a wait for something.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    let starting = cluster.clone();
    run_blocking(move || starting.start_server()).await;
    reaches(ServingStatus::Serving).await;

    let second = service
        .try_publish_durable("order:outage", "test.event", json!({ "n": 2 }))
        .await
        .unwrap();
    assert_eq!(second.position.unwrap().offset, 2);
    assert_eq!(sub.offsets(2).await, vec![1, 2]);
}
