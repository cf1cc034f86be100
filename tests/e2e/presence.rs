//! Finding 15 of the hardening issue: presence pushes are coalesced per topic into one diff per
//! interval, and above a member threshold carry counts only, so a room that N users join costs
//! each subscriber O(N / batch) frames instead of O(N) (O(N²) in all).

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use herald_e2e::{Client, spawn_app_with};
use herald_proto::v1::{PresenceChange, presence_change::Kind, subscribe_response::Frame};

/// Reads presence frames until one reports `members` members; returns every presence frame.
async fn presence_until(
    subscription: &mut herald_e2e::Subscription,
    members: u32,
) -> Vec<PresenceChange> {
    let mut frames = Vec::new();
    loop {
        match subscription.next_frame().await {
            Ok(Frame::Presence(change)) => {
                let done = change.members == members;
                frames.push(change);
                if done {
                    return frames;
                }
            }
            Ok(other) => panic!("unexpected frame {other:?}"),
            Err(end) => panic!("the stream ended: {end:?}"),
        }
    }
}

async fn users(base: &Client, app: &herald_e2e::TestApp, n: usize) -> Vec<Client> {
    (0..n)
        .map(|i| Client {
            token: app.token(&format!("user-{i}"), &[]),
            ..base.clone()
        })
        .collect()
}

#[tokio::test]
async fn finding_15_n_users_joining_one_room_each_receive_a_diff_per_interval_not_a_frame_per_join()
{
    const N: usize = 200;
    let interval = Duration::from_millis(500);
    let app = spawn_app_with(|config| {
        config.node.presence_interval = interval;
        config.node.presence_max_members = 1000;
    })
    .await;
    let base = app.client("base", &[]).await;
    let users = users(&base, &app, N).await;
    let started = Instant::now();
    let mut subscriptions = join_all(users.iter().map(|user| user.subscribe("room:crowd"))).await;
    let frames = join_all(
        subscriptions
            .iter_mut()
            .map(|subscription| presence_until(subscription, N as u32)),
    )
    .await;
    let intervals = (started.elapsed().as_millis() / interval.as_millis()) as usize;
    let mut most = 0;
    for (i, frames) in frames.iter().enumerate() {
        // At most one frame per interval that passed (plus the one in flight at each end).
        assert!(
            frames.len() <= intervals + 2,
            "user-{i}: {} frames in {intervals} intervals",
            frames.len()
        );
        most = most.max(frames.len());
    }
    assert!(
        most < N / 4,
        "O(N / batch) frames per subscriber, not O(N): {most} for {N} joins"
    );
    // The diffs carry every join: together the subscribers saw each user join.
    let seen: std::collections::HashSet<&str> = frames
        .iter()
        .flatten()
        .flat_map(|change| change.joins.iter().chain(change.member.as_ref()))
        .map(|member| member.user_id.as_str())
        .collect();
    assert_eq!(seen.len(), N, "every join was announced");
    assert!(app.node.presence_pushes() as usize <= intervals + 2);
}

#[tokio::test]
async fn finding_15_above_the_member_threshold_only_counts_are_pushed_and_presence_still_lists_everyone()
 {
    const N: usize = 120;
    let app = spawn_app_with(|config| config.node.presence_max_members = 50).await;
    let base = app.client("base", &[]).await;
    let users = users(&base, &app, N).await;
    let mut watcher = base.subscribe("room:stadium").await;
    let _subscriptions = join_all(users.iter().map(|user| user.subscribe("room:stadium"))).await;
    // `base` itself is a member too.
    let frames = presence_until(&mut watcher, N as u32 + 1).await;
    let last = frames.last().expect("a frame");
    assert_eq!(Kind::try_from(last.kind), Ok(Kind::Diff));
    assert!(last.joins.is_empty() && last.leaves.is_empty() && last.member.is_none());
    let joined: u32 = frames.iter().map(|change| change.joined).sum();
    assert_eq!(joined as usize, N + 1, "the counts carry every join");
    let listed = base
        .presence("room:stadium")
        .await
        .expect("presence")
        .members;
    assert_eq!(
        listed.len(),
        N + 1,
        "the Presence RPC still lists every member"
    );
}
