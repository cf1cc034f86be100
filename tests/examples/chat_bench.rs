//! Messaging benchmark (docs/benchmarks.md, "Messaging"): `--conversations` group
//! conversations of `--members` members each, every member subscribed to its conversation over
//! gRPC, and `--rate` messages/s offered overall for `--seconds`, each preceded by a
//! `SetTyping(true)` of its sender (typing traffic: most are signalled, the 2 s rule absorbs
//! the rest). Reports messages committed/s, deliveries/s (messages and typing signals),
//! send-to-receive latency (from the client's call to each member's receipt) and the database
//! write rate (transactions and outbox events committed per second). Everything runs in this
//! process on loopback; the database is the one `HERALD_TEST_DATABASE` selects.
//!
//! ```sh
//! cargo run --release -p herald-e2e --example chat_bench                                # SQLite
//! HERALD_TEST_DATABASE=postgres cargo run --release -p herald-e2e --example chat_bench  # PostgreSQL
//! ```
//!
//! Bounded: sends stop after `--seconds`; the receivers stop once they have every message or
//! 30 s later.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use herald_e2e::{TestApp, spawn_app_with};
use herald_proto::v1::{
    ChatCreateConversationRequest, ChatCreateGroupRequest, ChatSendMessageRequest,
    ChatSetTypingRequest, SubscribeRequest, chat_client::ChatClient,
    chat_create_conversation_request::With, event::Body, rooms_client::RoomsClient,
    subscribe_response::Frame,
};
use sea_orm::{ConnectionTrait, Statement};
use tokio::sync::mpsc;
use tonic::{Request, transport::Channel};

struct Args {
    conversations: usize,
    members: usize,
    rate: u64,
    seconds: u64,
    senders: usize,
}

fn args() -> Args {
    let mut args = Args {
        conversations: 1_000,
        members: 10,
        rate: 2_000,
        seconds: 10,
        senders: 64,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value: u64 = given
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--conversations" => args.conversations = value as usize,
            "--members" => args.members = value as usize,
            "--rate" => args.rate = value,
            "--seconds" => args.seconds = value,
            "--senders" => args.senders = value as usize,
            other => {
                panic!("unknown flag {other}: --conversations --members --rate --seconds --senders")
            }
        }
    }
    args
}

fn authorized<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

fn now_us() -> u64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)] as f64 / 1000.0
}

async fn count(app: &TestApp, table: &str) -> u64 {
    let db = app.store.db();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .expect("count")
        .expect("a row");
    u64::try_from(row.try_get::<i64>("", "n").expect("n")).unwrap_or_default()
}

/// One conversation of the benchmark: its id and its members' tokens.
struct Room {
    id: u64,
    members: Vec<String>,
}

#[tokio::main]
async fn main() {
    let args = args();
    let app = spawn_app_with(|config| {
        config.chat.max_group_members = args.members.max(2);
        config.node.subscriber_queue = 4096;
    })
    .await;
    let channels: Vec<Channel> = {
        let mut channels = Vec::new();
        for _ in 0..16 {
            channels.push(app.endpoint().connect().await.expect("connect"));
        }
        channels
    };

    // Setup: one group per conversation, its members distinct users.
    let setup = Instant::now();
    let (done_tx, mut done_rx) = mpsc::channel(args.conversations.max(1));
    let next = Arc::new(AtomicU64::new(0));
    let tokens: Arc<Vec<Vec<(String, String)>>> = Arc::new(
        (0..args.conversations)
            .map(|c| {
                (0..args.members)
                    .map(|m| {
                        let user = format!("c{c}m{m}");
                        let token = app.token(&user, &[]);
                        (user, token)
                    })
                    .collect()
            })
            .collect(),
    );
    for worker in 0..8 {
        let channel = channels[worker % channels.len()].clone();
        let next = next.clone();
        let done = done_tx.clone();
        let app_tokens = tokens.clone();
        let total = args.conversations as u64;
        tokio::spawn(async move {
            let mut chat = ChatClient::new(channel);
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= total {
                    return;
                }
                let members = &app_tokens[c as usize];
                let (admin, token) = &members[0];
                let group = chat
                    .create_group(authorized(
                        token,
                        ChatCreateGroupRequest {
                            name: format!("bench {c}"),
                            member_ids: members[1..].iter().map(|(u, _)| u.clone()).collect(),
                        },
                    ))
                    .await
                    .expect("create group")
                    .into_inner()
                    .group
                    .expect("group");
                let conversation = chat
                    .create_conversation(authorized(
                        token,
                        ChatCreateConversationRequest {
                            with: Some(With::GroupId(group.id)),
                            title: format!("room of {admin}"),
                        },
                    ))
                    .await
                    .expect("create conversation")
                    .into_inner()
                    .conversation
                    .expect("conversation");
                let room = Room {
                    id: conversation.id,
                    members: members.iter().map(|(_, t)| t.clone()).collect(),
                };
                done.send((c as usize, room)).await.expect("collect");
            }
        });
    }
    drop(done_tx);
    let mut rooms: Vec<Option<Room>> = (0..args.conversations).map(|_| None).collect();
    while let Some((index, room)) = done_rx.recv().await {
        rooms[index] = Some(room);
    }
    let rooms: Arc<Vec<Room>> = Arc::new(rooms.into_iter().map(|r| r.expect("room")).collect());
    println!(
        "database: {:?}; setup: {} groups with {} members and a conversation each in {:.1}s",
        herald_e2e::TestDatabase::from_env(),
        rooms.len(),
        args.members,
        setup.elapsed().as_secs_f64()
    );

    // Receivers: every member subscribed to its conversation.
    let deliveries = Arc::new(AtomicU64::new(0));
    let typing_deliveries = Arc::new(AtomicU64::new(0));
    let mut receivers = Vec::with_capacity(rooms.len() * args.members);
    let (expected_tx, expected_rx) = tokio::sync::watch::channel(Vec::<u64>::new());
    for (index, room) in rooms.iter().enumerate() {
        for (m, token) in room.members.iter().enumerate() {
            let channel = channels[(index * args.members + m) % channels.len()].clone();
            let mut stream = RoomsClient::new(channel)
                .subscribe(authorized(
                    token,
                    SubscribeRequest {
                        topic: format!("conv:{}", room.id),
                        since: None,
                    },
                ))
                .await
                .expect("subscribe")
                .into_inner();
            let deliveries = deliveries.clone();
            let typing = typing_deliveries.clone();
            let mut expected = expected_rx.clone();
            receivers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut messages = 0u64;
                loop {
                    let target = expected.borrow().get(index).copied();
                    if target.is_some_and(|t| messages >= t) {
                        return latencies;
                    }
                    let next = tokio::select! {
                        next = stream.message() => next,
                        changed = expected.changed() => {
                            if changed.is_err() {
                                return latencies;
                            }
                            continue;
                        }
                    };
                    match next {
                        Ok(Some(response)) => match response.frame {
                            Some(Frame::Event(event)) => {
                                if let Some(Body::ChatMessageChanged(changed)) = event.body {
                                    let text = changed.message.map(|m| m.text).unwrap_or_default();
                                    if let Some(sent) = text
                                        .strip_prefix("sent_us=")
                                        .and_then(|t| t.split(' ').next())
                                        .and_then(|t| t.parse::<u64>().ok())
                                    {
                                        latencies.push(now_us().saturating_sub(sent));
                                    }
                                    messages += 1;
                                    deliveries.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Some(Frame::Signal(signal)) if signal.r#type == "chat.typing" => {
                                typing.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        },
                        Ok(None) | Err(_) => return latencies,
                    }
                }
            }));
        }
    }
    println!("subscribed: {} gRPC streams", receivers.len());

    // Senders: a pacer offers `rate` messages/s; `senders` workers type, then send.
    let outbox_before = count(&app, "outbox").await;
    let sent_per_room: Arc<Vec<AtomicU64>> =
        Arc::new((0..rooms.len()).map(|_| AtomicU64::new(0)).collect());
    let typing_calls = Arc::new(AtomicU64::new(0));
    let (jobs_tx, jobs_rx) = async_channel::<(usize, usize)>(args.senders * 4);
    let mut workers = Vec::new();
    for w in 0..args.senders {
        let jobs = jobs_rx.clone();
        let rooms = rooms.clone();
        let sent = sent_per_room.clone();
        let typing_calls = typing_calls.clone();
        let mut chat = ChatClient::new(channels[w % channels.len()].clone());
        workers.push(tokio::spawn(async move {
            while let Ok((room, member)) = jobs.recv().await {
                let room_ref: &Room = &rooms[room];
                let token = &room_ref.members[member];
                chat.set_typing(authorized(
                    token,
                    ChatSetTypingRequest {
                        conversation_id: room_ref.id,
                        typing: true,
                    },
                ))
                .await
                .expect("set typing");
                typing_calls.fetch_add(1, Ordering::Relaxed);
                chat.send_message(authorized(
                    token,
                    ChatSendMessageRequest {
                        conversation_id: room_ref.id,
                        text: format!("sent_us={} hello from member {member}", now_us()),
                        ..ChatSendMessageRequest::default()
                    },
                ))
                .await
                .expect("send");
                sent[room].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let total = args.rate * args.seconds;
    let tick = Duration::from_millis(10);
    let per_tick = args.rate as f64 / 100.0;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut offered = 0u64;
    let mut due = 0.0;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    while offered < total {
        ticker.tick().await;
        due += per_tick;
        while due >= 1.0 && offered < total {
            due -= 1.0;
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let room = (seed % rooms.len() as u64) as usize;
            let member = ((seed >> 32) % args.members as u64) as usize;
            jobs_tx.send((room, member)).await.expect("a worker");
            offered += 1;
        }
    }
    jobs_tx.close();
    for worker in workers {
        worker.await.expect("worker");
    }
    let sending = started.elapsed().as_secs_f64();
    let outbox_after = count(&app, "outbox").await;
    let messages: u64 = sent_per_room
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .sum();

    // Wait for every member to have every message of its conversation (at most 30 s).
    expected_tx.send_replace(
        sent_per_room
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect(),
    );
    let mut latencies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut incomplete = 0;
    for receiver in receivers {
        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok(mut l)) => latencies.append(&mut l),
            _ => incomplete += 1,
        }
    }
    let span = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let delivered = deliveries.load(Ordering::Relaxed);
    let typing = typing_deliveries.load(Ordering::Relaxed);
    let events = outbox_after.saturating_sub(outbox_before);
    println!(
        "offered {} messages/s for {}s; committed {messages} messages in {sending:.2}s = {:.0} messages/s ({} SetTyping calls)",
        args.rate,
        args.seconds,
        messages as f64 / sending,
        typing_calls.load(Ordering::Relaxed),
    );
    println!(
        "deliveries: {delivered} messages ({:.0}/s) + {typing} typing signals ({:.0}/s) over {span:.2}s; {incomplete} streams incomplete",
        delivered as f64 / span,
        typing as f64 / span,
    );
    println!(
        "send-to-receive: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        latencies.len()
    );
    println!(
        "database writes: {:.0} message transactions/s, {events} outbox events ({:.0}/s, {:.1} per message)",
        messages as f64 / sending,
        events as f64 / sending,
        events as f64 / messages.max(1) as f64,
    );
    // 10,000 open streams take a while to end; the process exits anyway.
    app.cancel();
}

/// A bounded multi-consumer job queue (tokio's mpsc has one consumer).
fn async_channel<T: Send + 'static>(bound: usize) -> (JobSender<T>, JobReceiver<T>) {
    let (tx, rx) = mpsc::channel(bound);
    (
        JobSender(Some(tx)),
        JobReceiver(Arc::new(tokio::sync::Mutex::new(rx))),
    )
}

struct JobSender<T>(Option<mpsc::Sender<T>>);

impl<T> JobSender<T> {
    async fn send(&self, job: T) -> Result<(), ()> {
        match &self.0 {
            Some(tx) => tx.send(job).await.map_err(|_| ()),
            None => Err(()),
        }
    }

    fn close(mut self) {
        self.0.take();
    }
}

struct JobReceiver<T>(Arc<tokio::sync::Mutex<mpsc::Receiver<T>>>);

impl<T> Clone for JobReceiver<T> {
    fn clone(&self) -> Self {
        JobReceiver(self.0.clone())
    }
}

impl<T> JobReceiver<T> {
    async fn recv(&self) -> Result<T, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}
