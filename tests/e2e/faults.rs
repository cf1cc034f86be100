//! The edge↔backend link under faults, through a TCP fault proxy: delayed, black-holed, and
//! reset. A control subscriber (an SDK-like client that reconnects and resumes) follows a
//! memory topic and a durable topic through the edge while a publisher publishes to both
//! through the edge, retrying each publish with its idempotency key until acknowledged. Every
//! case ends with the history checker clean: every acknowledged publish delivered once, in
//! order, and the control client live.

use std::{sync::Arc, time::Duration};

use herald_e2e::{
    PATIENCE, TestApp,
    edge::{TestEdge, spawn_edge_for},
    eventually,
    fault_proxy::{Fault, FaultProxy},
    history_checker::HistoryChecker,
    sdk::{ClientState, Publisher, SdkClient},
    spawn_app,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const ROOM: &str = "room:faults";
const ORDER: &str = "order:faults";

struct Rig {
    app: TestApp,
    proxy: FaultProxy,
    edge: TestEdge,
    checker: Arc<HistoryChecker>,
    watcher: Arc<ClientState>,
    stop: CancellationToken,
    running: JoinHandle<()>,
    baseline: herald_e2e::baseline::Baseline,
}

impl Rig {
    async fn start() -> Rig {
        let app = spawn_app().await;
        let proxy = FaultProxy::start(app.addr).await;
        let edge = spawn_edge_for(&[proxy.addr], |config| {
            config.connections.backend_keepalive_interval = Duration::from_millis(500);
            config.connections.backend_keepalive_timeout = Duration::from_secs(1);
            config.connections.backend_call_timeout = Duration::from_secs(2);
        })
        .await;
        let baseline = herald_e2e::baseline::Baseline::of_edge(&edge).await;
        let checker = Arc::new(HistoryChecker::new());
        let client = SdkClient::new(
            "watcher",
            &edge.url(),
            app.token("watcher", &["admin"]),
            &[ROOM, ORDER],
            checker.clone(),
        );
        let watcher = client.state.clone();
        let stop = CancellationToken::new();
        let running = tokio::spawn(client.run(stop.clone()));
        eventually("the control client subscribes", || {
            watcher
                .subscribed
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .await;
        Rig {
            app,
            proxy,
            edge,
            checker,
            watcher,
            stop,
            running,
            baseline,
        }
    }

    fn publisher(&self) -> Publisher {
        Publisher::new(
            &self.edge.url(),
            self.app.token("publisher", &["service"]),
            self.checker.clone(),
        )
    }

    /// Publishes `ids` to both lanes at once (one publisher per lane), each until it is
    /// acknowledged.
    fn publish_both(&self, name: &str, ids: std::ops::Range<u32>) -> JoinHandle<()> {
        let lanes = [ROOM, ORDER].map(|topic| {
            let mut publisher = self.publisher();
            let ids = ids.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                for n in ids {
                    let id = format!("{name}-{topic}-{n}");
                    assert!(
                        publisher.publish(topic, &id, PATIENCE * 2).await,
                        "{id} is acknowledged in time"
                    );
                }
            })
        });
        tokio::spawn(async move {
            for lane in lanes {
                lane.await.expect("a publisher ran");
            }
        })
    }

    async fn publish_both_now(&self, name: &str, ids: std::ops::Range<u32>) {
        self.publish_both(name, ids)
            .await
            .expect("the publishers ran");
    }

    /// Everything acknowledged arrived once and in order, the control client is live, and the
    /// edge is back to its baseline.
    async fn finish(self) {
        self.publish_both_now("final", 0..3).await;
        self.checker.assert_clean_within(PATIENCE * 2).await;
        assert!(
            self.watcher
                .subscribed
                .load(std::sync::atomic::Ordering::Relaxed),
            "the control client is live"
        );
        eprintln!("{}", self.checker.report());
        self.stop.cancel();
        self.running.await.expect("the control client ran");
        self.baseline.assert_edge_returns(&self.edge).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_delayed_by_200_ms_delivers_everything_on_both_lanes() {
    let rig = Rig::start().await;
    rig.proxy.set(Fault::Delay(Duration::from_millis(200)));
    rig.publish_both_now("delayed", 0..8).await;
    rig.checker.assert_clean_within(PATIENCE * 2).await;
    rig.proxy.set(Fault::Pass);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_link_is_noticed_by_keepalive_and_feeds_resume_without_a_gap_once_restored() {
    let rig = Rig::start().await;
    rig.publish_both_now("before", 0..5).await;
    let accepted = rig.proxy.accepted_connections();
    rig.proxy.set(Fault::BlackHole);
    // Publishes during the outage time out at the edge and are retried with their keys.
    let during = rig.publish_both("during", 0..5);
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.proxy.set(Fault::Pass);
    during.await.expect("the publishers ran");
    assert!(
        rig.proxy.accepted_connections() > accepted,
        "the edge gave up the dead connection and opened a new one"
    );
    rig.publish_both_now("after", 0..5).await;
    rig.checker.assert_clean_within(PATIENCE * 2).await;
    let classification = rig.checker.classify();
    assert_eq!(
        classification.forgiven, 0,
        "the backend kept its history: both lanes resumed without a gap\n{classification}"
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_every_edge_backend_connection_resumes_feeds_from_their_last_offset() {
    let rig = Rig::start().await;
    rig.publish_both_now("before", 0..5).await;
    let accepted = rig.proxy.accepted_connections();
    for round in 0..3 {
        rig.proxy.reset_all();
        rig.publish_both_now(&format!("after-reset-{round}"), 0..5)
            .await;
    }
    assert!(rig.proxy.accepted_connections() > accepted);
    rig.checker.assert_clean_within(PATIENCE * 2).await;
    assert_eq!(
        rig.checker.classify().forgiven,
        0,
        "{}",
        rig.checker.report()
    );
    rig.finish().await;
}
