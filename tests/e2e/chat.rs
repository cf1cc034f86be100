//! Messaging (`herald.v1.Chat`) over real gRPC and the edge's WebSocket: members only on
//! `group:` and `conv:`, messages in order with idempotent retries, edits and tombstones,
//! typing (time moved with the app's clock, never waited for), presence, removal ending the
//! removed member's streams at the removal, exact unread counts (a property test against the
//! rows), reactions under concurrent reactors, resume across a restart, and the inbox's
//! notifications.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use futures_util::future::join_all;
use herald_backend::clock::Clock;
use herald_e2e::{
    Client, End, Subscription, TestApp,
    edge::{WsClient, spawn_edge},
    spawn_app, spawn_app_with,
};
use herald_proto::{
    codes::close_code_of,
    v1::{
        ChatAddMemberRequest, ChatAddMemberResponse, ChatConversation,
        ChatCreateConversationRequest, ChatCreateGroupRequest, ChatDeleteMessageRequest,
        ChatEditMessageRequest, ChatGroup, ChatLeaveRequest, ChatListMembersRequest,
        ChatListMessagesRequest, ChatListMyConversationsRequest, ChatListMyConversationsResponse,
        ChatListMyGroupsRequest, ChatMarkReadRequest, ChatMarkReadResponse, ChatMemberChange,
        ChatMessage, ChatReactRequest, ChatReactResponse, ChatRemoveMemberRequest,
        ChatSendMessageRequest, ChatSendMessageResponse, ChatSetTypingRequest, CloseCode, Event,
        NotificationType, NotificationsListRequest, Signal, StreamPosition,
        chat_client::ChatClient, chat_create_conversation_request::With, event::Body,
        notifications_client::NotificationsClient, subscribe_response::Frame,
    },
};
use proptest::prelude::*;
use serde_json::{Value, json};
use tonic::{Code, Status, transport::Channel};

/// A user of the chat: their connection and a `herald.v1.Chat` client on it.
#[derive(Clone)]
struct Chatter {
    name: String,
    who: Client,
    chat: ChatClient<Channel>,
}

impl Chatter {
    async fn of(app: &TestApp, name: &str) -> Chatter {
        let who = app.client(name, &[]).await;
        Chatter {
            name: name.to_owned(),
            chat: ChatClient::new(who.channel.clone()),
            who,
        }
    }

    /// A user of a `herald serve` process.
    async fn at(grpc_url: &str, name: &str) -> Chatter {
        use herald_backend::auth::dev_key::{TokenClaims, sign_hs256};
        let token = sign_hs256(
            herald_e2e::SECRET,
            &TokenClaims::new(name, &[], Duration::from_secs(3600)),
        )
        .unwrap();
        let endpoint = tonic::transport::Endpoint::from_shared(grpc_url.to_owned()).unwrap();
        let who = Client::connect(endpoint, token).await;
        Chatter {
            name: name.to_owned(),
            chat: ChatClient::new(who.channel.clone()),
            who,
        }
    }

    /// Another device of the same user: its own connection.
    async fn device(&self, app: &TestApp) -> Chatter {
        Chatter::of(app, &self.name).await
    }

    async fn create_group(&self, name: &str, members: &[&str]) -> (ChatGroup, StreamPosition) {
        let request = self.who.request(ChatCreateGroupRequest {
            name: name.into(),
            member_ids: members.iter().map(|m| (*m).to_owned()).collect(),
        });
        let response = self
            .chat
            .clone()
            .create_group(request)
            .await
            .expect("create group")
            .into_inner();
        (response.group.unwrap(), response.position.unwrap())
    }

    async fn add(
        &self,
        group: u64,
        user: &str,
        admin: bool,
    ) -> Result<ChatAddMemberResponse, Status> {
        let request = self.who.request(ChatAddMemberRequest {
            group_id: group,
            user_id: user.into(),
            admin,
        });
        Ok(self.chat.clone().add_member(request).await?.into_inner())
    }

    async fn remove(&self, group: u64, user: &str) -> Result<(), Status> {
        let request = self.who.request(ChatRemoveMemberRequest {
            group_id: group,
            user_id: user.into(),
        });
        self.chat.clone().remove_member(request).await?;
        Ok(())
    }

    async fn leave(&self, group: u64) -> Result<(), Status> {
        let request = self.who.request(ChatLeaveRequest { group_id: group });
        self.chat.clone().leave(request).await?;
        Ok(())
    }

    async fn direct(&self, other: &str) -> (ChatConversation, bool) {
        let request = self.who.request(ChatCreateConversationRequest {
            with: Some(With::DirectUserId(other.into())),
            title: String::new(),
        });
        let response = self
            .chat
            .clone()
            .create_conversation(request)
            .await
            .expect("create a direct conversation")
            .into_inner();
        (response.conversation.unwrap(), response.created)
    }

    async fn conversation_in(&self, group: u64, title: &str) -> ChatConversation {
        let request = self.who.request(ChatCreateConversationRequest {
            with: Some(With::GroupId(group)),
            title: title.into(),
        });
        self.chat
            .clone()
            .create_conversation(request)
            .await
            .expect("create a group conversation")
            .into_inner()
            .conversation
            .unwrap()
    }

    async fn try_send(
        &self,
        request: ChatSendMessageRequest,
    ) -> Result<ChatSendMessageResponse, Status> {
        let request = self.who.request(request);
        Ok(self.chat.clone().send_message(request).await?.into_inner())
    }

    async fn send(&self, conversation: u64, text: &str) -> ChatMessage {
        self.try_send(ChatSendMessageRequest {
            conversation_id: conversation,
            text: text.into(),
            ..ChatSendMessageRequest::default()
        })
        .await
        .expect("send")
        .message
        .unwrap()
    }

    async fn try_messages(&self, conversation: u64) -> Result<Vec<ChatMessage>, Status> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let request = self.who.request(ChatListMessagesRequest {
                conversation_id: conversation,
                page_size: 100,
                page_token: token,
            });
            let page = self.chat.clone().list_messages(request).await?.into_inner();
            all.extend(page.messages);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            token = page.next_page_token;
        }
    }

    async fn messages(&self, conversation: u64) -> Vec<ChatMessage> {
        self.try_messages(conversation)
            .await
            .expect("list messages")
    }

    async fn conversations(&self) -> ChatListMyConversationsResponse {
        let request = self.who.request(ChatListMyConversationsRequest {
            page_size: 100,
            page_token: String::new(),
        });
        self.chat
            .clone()
            .list_my_conversations(request)
            .await
            .expect("list my conversations")
            .into_inner()
    }

    async fn mark_read(&self, conversation: u64, message: u64) -> ChatMarkReadResponse {
        let request = self.who.request(ChatMarkReadRequest {
            conversation_id: conversation,
            message_id: message,
        });
        self.chat
            .clone()
            .mark_read(request)
            .await
            .expect("mark read")
            .into_inner()
    }

    async fn react(&self, message: u64, emoji: &str) -> ChatReactResponse {
        let request = self.who.request(ChatReactRequest {
            message_id: message,
            emoji: emoji.into(),
        });
        self.chat
            .clone()
            .react(request)
            .await
            .expect("react")
            .into_inner()
    }

    async fn typing(&self, conversation: u64, typing: bool) -> bool {
        let request = self.who.request(ChatSetTypingRequest {
            conversation_id: conversation,
            typing,
        });
        self.chat
            .clone()
            .set_typing(request)
            .await
            .expect("set typing")
            .into_inner()
            .signalled
    }

    async fn notifications(&self, kind: NotificationType) -> usize {
        let request = self.who.request(NotificationsListRequest {
            r#type: kind.into(),
            limit: 50,
            ..NotificationsListRequest::default()
        });
        NotificationsClient::new(self.who.channel.clone())
            .list(request)
            .await
            .expect("list notifications")
            .into_inner()
            .notifications
            .len()
    }
}

fn conv(id: u64) -> String {
    format!("conv:{id}")
}

fn group(id: u64) -> String {
    format!("group:{id}")
}

/// The next event of a stream, skipping ephemeral frames (presence, signals).
async fn next_event(sub: &mut Subscription) -> Event {
    loop {
        match sub.next_frame().await {
            Ok(Frame::Event(event)) => return event,
            Ok(Frame::Presence(_) | Frame::Signal(_)) => continue,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

/// The next `type` signal of a stream, skipping other ephemeral frames; events are not
/// expected meanwhile.
async fn next_signal(sub: &mut Subscription, signal_type: &str) -> Signal {
    loop {
        match sub.next_frame().await {
            Ok(Frame::Signal(signal)) if signal.r#type == signal_type => return signal,
            Ok(Frame::Signal(_) | Frame::Presence(_)) => continue,
            other => panic!("expected a {signal_type} signal, got {other:?}"),
        }
    }
}

fn data(signal: &Signal) -> Value {
    serde_json::to_value(signal.data.clone().unwrap_or_default()).unwrap()
}

fn message_of(event: &Event) -> ChatMessage {
    match &event.body {
        Some(Body::ChatMessageChanged(changed)) => changed.message.clone().unwrap(),
        other => panic!("expected a message body in {}, got {other:?}", event.r#type),
    }
}

fn member_change_of(event: &Event) -> (ChatMemberChange, String) {
    match &event.body {
        Some(Body::ChatMemberChanged(changed)) => {
            (changed.change(), changed.member.clone().unwrap().user_id)
        }
        other => panic!(
            "expected a member change in {}, got {other:?}",
            event.r#type
        ),
    }
}

/// Reads a stream to its end and returns the events before it and the status.
async fn events_until_end(sub: &mut Subscription) -> (Vec<Event>, Status) {
    let mut events = Vec::new();
    loop {
        match sub.next_frame().await {
            Ok(Frame::Event(event)) => events.push(event),
            Ok(_) => {}
            Err(End::Status(status)) => return (events, status),
            Err(End::Finished) => panic!("the stream finished without a status"),
        }
    }
}

async fn ws_subscribe(ws: &mut WsClient, topic: &str) -> Value {
    ws.request("subscribe", json!({ "topic": topic })).await
}

/// The next push of a socket that is an event or an end, skipping ephemeral pushes.
async fn ws_next(ws: &mut WsClient) -> Value {
    loop {
        let push = ws.next_push().await;
        if push.get("event").is_some() || push.get("unsubscribed").is_some() {
            return push;
        }
    }
}

/// An app whose typing sweeper runs often, so a moved clock takes effect at once.
async fn app() -> TestApp {
    spawn_app_with(|config| {
        config.chat.typing_sweep = Duration::from_millis(20);
    })
    .await
}

#[tokio::test]
async fn two_members_exchange_messages_in_order_and_a_non_member_is_refused_and_sees_nothing() {
    let app = app().await;
    let edge = spawn_edge(&app).await;
    let alice = Chatter::of(&app, "alice").await;
    let bob = Chatter::of(&app, "bob").await;
    let carol = Chatter::of(&app, "carol").await;
    let (direct, created) = alice.direct("bob").await;
    assert!(created);
    assert_eq!(direct.member_ids, ["alice", "bob"]);
    let (again, created) = bob.direct("alice").await;
    assert_eq!(
        (again.id, created),
        (direct.id, false),
        "one conversation per pair"
    );
    let topic = conv(direct.id);

    let mut at_alice = alice.who.subscribe(&topic).await;
    let mut at_bob = bob.who.subscribe(&topic).await;
    let Err(refused) = carol.who.try_subscribe(&topic, None).await else {
        panic!("a non-member subscribed");
    };
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(close_code_of(&refused), Some(CloseCode::PermissionDenied));
    let mut carol_ws = edge.connect_as(&app.token("carol", &[])).await;
    let reply = ws_subscribe(&mut carol_ws, &topic).await;
    assert_eq!(reply["error"]["code"], "permission_denied", "{reply}");
    let mut bob_ws = edge.connect_as(&app.token("bob", &[])).await;
    let reply = ws_subscribe(&mut bob_ws, &topic).await;
    assert!(reply.get("result").is_some(), "{reply}");

    let script = [
        (&alice, "hi bob"),
        (&bob, "hi alice"),
        (&alice, "how are you?"),
        (&bob, "fine"),
        (&alice, "good"),
    ];
    for (who, text) in script {
        who.send(direct.id, text).await;
    }
    for sub in [&mut at_alice, &mut at_bob] {
        for (seq, (who, text)) in script.iter().enumerate() {
            let message = message_of(&next_event(sub).await);
            assert_eq!(
                (
                    message.seq,
                    message.author_id.as_str(),
                    message.text.as_str()
                ),
                (seq as u64 + 1, who.name.as_str(), *text)
            );
        }
    }
    for (who, text) in script {
        let push = ws_next(&mut bob_ws).await;
        let message = &push["event"]["chatMessageChanged"]["message"];
        assert_eq!(message["authorId"], who.name.as_str(), "{push}");
        assert_eq!(message["text"], text);
    }

    // Bob reads on the browser (a unary call over the socket); alice sees the receipt.
    let last = page_last(&bob, direct.id).await;
    let reply = bob_ws
        .request(
            "call",
            json!({ "rpc": "herald.v1.Chat/MarkRead",
                    "request": { "conversationId": direct.id.to_string(), "messageId": last.to_string() } }),
        )
        .await;
    assert_eq!(reply["result"]["moved"], true, "{reply}");
    let receipt = next_event(&mut at_alice).await;
    let Some(Body::ChatReadMoved(read)) = &receipt.body else {
        panic!("{receipt:?}");
    };
    assert_eq!((read.user_id.as_str(), read.message_id), ("bob", last));

    for denied in [
        carol
            .try_send(ChatSendMessageRequest {
                conversation_id: direct.id,
                text: "let me in".into(),
                ..ChatSendMessageRequest::default()
            })
            .await
            .map(|_| ()),
        carol.try_messages(direct.id).await.map(|_| ()),
        carol.who.history(&topic, None, 10).await.map(|_| ()),
        carol.who.presence(&topic).await.map(|_| ()),
    ] {
        assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
    }
    let page = bob.messages(direct.id).await;
    let texts: Vec<&str> = page.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        ["good", "fine", "how are you?", "hi alice", "hi bob"],
        "newest first"
    );
    let missing = alice.try_messages(999_999).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

/// The id of the newest message of a conversation.
async fn page_last(who: &Chatter, conversation: u64) -> u64 {
    who.messages(conversation).await[0].id
}

#[tokio::test]
async fn a_retried_send_creates_one_message_and_edits_and_deletes_reach_every_member() {
    let app = app().await;
    let alice = Chatter::of(&app, "alice").await;
    let bob = Chatter::of(&app, "bob").await;
    let (g, _) = alice.create_group("team", &["bob"]).await;
    let room = alice.conversation_in(g.id, "general").await;
    let mut at_alice = alice.who.subscribe(&conv(room.id)).await;
    let mut at_bob = bob.who.subscribe(&conv(room.id)).await;

    let send = ChatSendMessageRequest {
        conversation_id: room.id,
        text: "deploy at 5?".into(),
        client_message_id: "phone-1".into(),
        ..ChatSendMessageRequest::default()
    };
    let first = alice.try_send(send.clone()).await.unwrap();
    let retry = alice.try_send(send.clone()).await.unwrap();
    assert!(first.created);
    assert!(!retry.created, "the retry finds the first message");
    assert_eq!(
        retry.message.as_ref().unwrap().id,
        first.message.as_ref().unwrap().id
    );
    assert_eq!(alice.messages(room.id).await.len(), 1);
    let id = first.message.unwrap().id;

    let request = alice.who.request(ChatEditMessageRequest {
        message_id: id,
        text: "deploy at 6?".into(),
    });
    let edited = alice
        .chat
        .clone()
        .edit_message(request)
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!((edited.version, edited.text.as_str()), (2, "deploy at 6?"));
    let request = bob.who.request(ChatDeleteMessageRequest { message_id: id });
    let not_author = bob.chat.clone().delete_message(request).await.unwrap_err();
    assert_eq!(not_author.code(), Code::PermissionDenied);
    let request = alice
        .who
        .request(ChatDeleteMessageRequest { message_id: id });
    let tombstone = alice
        .chat
        .clone()
        .delete_message(request)
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert!(tombstone.deleted);
    assert_eq!((tombstone.version, tombstone.text.as_str()), (3, ""));
    let request = alice.who.request(ChatEditMessageRequest {
        message_id: id,
        text: "too late".into(),
    });
    let edit_gone = alice.chat.clone().edit_message(request).await.unwrap_err();
    assert_eq!(edit_gone.code(), Code::FailedPrecondition);

    for sub in [&mut at_alice, &mut at_bob] {
        let created = next_event(sub).await;
        assert_eq!(created.r#type, "chat.message_created");
        assert_eq!(message_of(&created).version, 1);
        let edit = next_event(sub).await;
        assert_eq!(edit.r#type, "chat.message_edited");
        assert_eq!(
            (message_of(&edit).version, message_of(&edit).text),
            (2, "deploy at 6?".to_owned())
        );
        let delete = next_event(sub).await;
        assert_eq!(delete.r#type, "chat.message_deleted");
        let gone = message_of(&delete);
        assert!(gone.deleted && gone.text.is_empty() && gone.version == 3);
    }
    let listed = bob.messages(room.id).await;
    assert_eq!(listed.len(), 1, "the tombstone keeps its place");
    assert!(listed[0].deleted);
}

#[tokio::test]
async fn typing_stops_after_six_seconds_without_a_refresh_and_at_once_when_the_typer_disconnects() {
    let app = app().await;
    let alice = Chatter::of(&app, "alice").await;
    let bob = Chatter::of(&app, "bob").await;
    let (direct, _) = alice.direct("bob").await;
    let topic = conv(direct.id);
    let mut at_bob = bob.who.subscribe(&topic).await;
    let alice_stream = alice.who.subscribe(&topic).await;

    assert!(alice.typing(direct.id, true).await);
    let start = next_signal(&mut at_bob, "chat.typing").await;
    assert_eq!(start.publisher, "alice");
    assert_eq!(data(&start)["typing"], true);
    // Six seconds pass on the app's clock, without a refresh: "stopped" by timeout.
    app.clock.advance(Duration::from_secs(6));
    let stop = next_signal(&mut at_bob, "chat.typing").await;
    assert_eq!(data(&stop)["typing"], false);
    assert_eq!(data(&stop)["reason"], "timeout");

    assert!(alice.typing(direct.id, true).await);
    assert_eq!(
        data(&next_signal(&mut at_bob, "chat.typing").await)["typing"],
        true
    );
    drop(alice_stream); // alice's last stream ends
    let stop = next_signal(&mut at_bob, "chat.typing").await;
    assert_eq!(data(&stop)["typing"], false);
    assert_eq!(data(&stop)["reason"], "disconnected");

    // Typing is never stored: no history, nothing replayed on a resume.
    let message = alice.send(direct.id, "done").await;
    let history = bob.who.history(&topic, None, 100).await.unwrap();
    let types: Vec<&str> = history.events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(types, ["chat.message_created"]);
    let mut resumed = bob
        .who
        .resume(
            &topic,
            StreamPosition {
                offset: 0,
                epoch: history.position.unwrap().epoch,
            },
        )
        .await;
    let first = next_event(&mut resumed).await;
    assert_eq!(message_of(&first).id, message.id);
    assert_eq!(message_of(&next_event(&mut at_bob).await).id, message.id);
}

#[tokio::test]
async fn a_burst_of_twenty_set_typing_calls_yields_at_most_one_signal_per_two_seconds() {
    let app = app().await;
    let alice = Chatter::of(&app, "alice").await;
    let bob = Chatter::of(&app, "bob").await;
    let (direct, _) = alice.direct("bob").await;
    let mut at_bob = bob.who.subscribe(&conv(direct.id)).await;

    let mut signalled = 0;
    let began = app.clock.now();
    for round in 0..2 {
        for _ in 0..20 {
            signalled += usize::from(alice.typing(direct.id, true).await);
        }
        if round == 0 {
            app.clock.advance(Duration::from_secs(2));
        }
    }
    let elapsed = app.clock.now().duration_since(began).unwrap();
    let allowed = 1 + (elapsed.as_millis() / 2000) as usize;
    assert!(
        (2..=allowed).contains(&signalled),
        "{signalled} signals in {elapsed:?} on the app's clock"
    );
    // A stop as the sentinel: everything before it is what the burst sent.
    assert!(alice.typing(direct.id, false).await);
    let mut starts = 0;
    loop {
        let signal = next_signal(&mut at_bob, "chat.typing").await;
        if data(&signal)["typing"] == false {
            break;
        }
        starts += 1;
    }
    assert_eq!(starts, signalled);
}

#[tokio::test]
async fn presence_goes_online_with_the_first_session_and_offline_with_the_last_for_members_only() {
    let app = app().await;
    let alice = Chatter::of(&app, "alice").await;
    let bob = Chatter::of(&app, "bob").await;
    let carol = Chatter::of(&app, "carol").await;
    let (team, _) = alice.create_group("team", &["bob"]).await;
    let (other, _) = carol.create_group("elsewhere", &[]).await;
    let mut at_bob = bob.who.subscribe(&group(team.id)).await;
    let mut at_carol = carol.who.subscribe(&group(other.id)).await;

    let phone = alice.who.subscribe("user:alice").await;
    let second_device = alice.device(&app).await;
    let laptop = second_device.who.subscribe("user:alice").await;
    let online = loop {
        let signal = next_signal(&mut at_bob, "chat.presence").await;
        if data(&signal)["user_id"] == "alice" {
            break signal;
        }
    };
    assert_eq!(data(&online)["online"], true);
    drop(phone);
    drop(laptop);
    let offline = loop {
        let signal = next_signal(&mut at_bob, "chat.presence").await;
        if data(&signal)["user_id"] == "alice" {
            break signal;
        }
    };
    assert_eq!(
        data(&offline)["online"],
        false,
        "one offline, after the last session"
    );
    assert!(
        data(&offline)["last_seen"].as_str().is_some(),
        "{:?}",
        data(&offline)
    );

    // Carol shares nothing with alice: the next thing she sees is her own group's change.
    carol.conversation_in(other.id, "sentinel").await;
    loop {
        match at_carol.next_frame().await {
            Ok(Frame::Event(event)) => {
                assert_eq!(event.r#type, "chat.conversation_created");
                break;
            }
            Ok(Frame::Signal(signal)) => {
                assert_ne!(
                    data(&signal)["user_id"],
                    "alice",
                    "carol saw alice's presence"
                )
            }
            Ok(_) => {}
            Err(end) => panic!("{end:?}"),
        }
    }

    // Who is in a conversation now: its members' open streams.
    let room = alice.conversation_in(team.id, "general").await;
    let _a = alice.who.subscribe(&conv(room.id)).await;
    let _b = bob.who.subscribe(&conv(room.id)).await;
    let members = bob.who.presence(&conv(room.id)).await.unwrap().members;
    let present: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(present, ["alice", "bob"]);
    let refused = carol.who.presence(&conv(room.id)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn removing_a_member_ends_their_streams_right_after_the_removal_on_grpc_and_websocket() {
    let app = app().await;
    let edge = spawn_edge(&app).await;
    let alice = Chatter::of(&app, "alice").await;
    let bob = Chatter::of(&app, "bob").await;
    let (team, _) = alice.create_group("team", &["bob", "carol"]).await;
    let room = alice.conversation_in(team.id, "general").await;
    let before = alice.send(room.id, "before").await;

    let mut bob_group = bob.who.subscribe(&group(team.id)).await;
    let mut bob_room = bob.who.subscribe(&conv(room.id)).await;
    let kept = bob_room.position();
    let mut bob_ws = edge.connect_as(&app.token("bob", &[])).await;
    for topic in [group(team.id), conv(room.id), "user:bob".to_owned()] {
        let reply = ws_subscribe(&mut bob_ws, &topic).await;
        assert!(reply.get("result").is_some(), "{reply}");
    }
    let mut carol_room = Chatter::of(&app, "carol")
        .await
        .who
        .subscribe(&conv(room.id))
        .await;

    alice.remove(team.id, "bob").await.unwrap();
    alice.send(room.id, "after").await;

    for sub in [&mut bob_group, &mut bob_room] {
        let (events, status) = events_until_end(sub).await;
        assert_eq!(events.len(), 1, "the removal, then nothing: {events:?}");
        assert_eq!(
            member_change_of(&events[0]),
            (ChatMemberChange::Removed, "bob".to_owned())
        );
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(close_code_of(&status), Some(CloseCode::PermissionDenied));
    }
    // The others go on.
    assert_eq!(
        member_change_of(&next_event(&mut carol_room).await).0,
        ChatMemberChange::Removed
    );
    assert_eq!(message_of(&next_event(&mut carol_room).await).text, "after");

    // The socket: each topic's removal event, then its `unsubscribed`; nothing more of them
    // before the re-addition that follows on `user:bob`.
    let mut ended = BTreeSet::new();
    let mut removed = BTreeSet::new();
    while ended.len() < 2 {
        let push = ws_next(&mut bob_ws).await;
        if let Some(end) = push.get("unsubscribed") {
            assert_eq!(end["reason"], "permission_denied", "{push}");
            let topic = end["topic"].as_str().unwrap().to_owned();
            assert!(
                removed.contains(&topic),
                "the end follows the removal: {push}"
            );
            ended.insert(topic);
        } else if push["topic"] != "user:bob" {
            assert_eq!(push["event"]["type"], "chat.member_removed", "{push}");
            removed.insert(push["topic"].as_str().unwrap().to_owned());
        }
    }
    alice.add(team.id, "bob", false).await.unwrap();
    loop {
        let push = ws_next(&mut bob_ws).await;
        assert_eq!(
            push["topic"], "user:bob",
            "nothing more of the ended topics: {push}"
        );
        if push["event"]["type"] == "chat.added" {
            break;
        }
    }

    // Added again, bob subscribes again, and a resume from before the removal goes on past it.
    let mut back = bob.who.subscribe(&conv(room.id)).await;
    let mut resumed = bob.who.resume(&conv(room.id), kept).await;
    let replayed: Vec<String> = [
        next_event(&mut resumed).await,
        next_event(&mut resumed).await,
        next_event(&mut resumed).await,
    ]
    .iter()
    .map(|e| e.r#type.clone())
    .collect();
    assert_eq!(
        replayed,
        [
            "chat.member_removed",
            "chat.message_created",
            "chat.member_joined"
        ]
    );
    let latest = bob.send(room.id, "back").await;
    assert_eq!(message_of(&next_event(&mut back).await).id, latest.id);
    assert_eq!(message_of(&next_event(&mut resumed).await).id, latest.id);
    assert_eq!(before.seq, 1);
}

#[tokio::test]
async fn leaving_ends_the_leavers_streams_and_group_rules_answer_with_their_codes() {
    let app = spawn_app_with(|config| config.chat.max_group_members = 3).await;
    let alice = Chatter::of(&app, "alice").await;
    let bob = Chatter::of(&app, "bob").await;
    let (team, position) = alice.create_group("team", &["bob"]).await;
    assert_eq!(position.offset, 2, "one join per member");
    let mut bob_group = bob.who.subscribe(&group(team.id)).await;

    let not_admin = bob.add(team.id, "carol", false).await.unwrap_err();
    assert_eq!(not_admin.code(), Code::PermissionDenied, "{not_admin:?}");
    let only_admin = alice.leave(team.id).await.unwrap_err();
    assert_eq!(
        only_admin.code(),
        Code::FailedPrecondition,
        "{only_admin:?}"
    );
    assert!(alice.add(team.id, "carol", false).await.unwrap().added);
    let unchanged = alice.add(team.id, "carol", false).await.unwrap();
    assert!(!unchanged.added, "adding twice changes nothing");
    let full = alice.add(team.id, "dave", false).await.unwrap_err();
    assert_eq!(full.code(), Code::FailedPrecondition);
    assert!(
        full.message().contains("chat.max_group_members"),
        "{full:?}"
    );

    bob.leave(team.id).await.unwrap();
    let (events, status) = events_until_end(&mut bob_group).await;
    let changes: Vec<(ChatMemberChange, String)> = events.iter().map(member_change_of).collect();
    assert_eq!(
        changes,
        [
            (ChatMemberChange::Joined, "carol".to_owned()),
            (ChatMemberChange::Left, "bob".to_owned())
        ]
    );
    assert_eq!(status.code(), Code::PermissionDenied);
    let request = alice
        .who
        .request(ChatListMembersRequest { group_id: team.id });
    let members = alice
        .chat
        .clone()
        .list_members(request)
        .await
        .unwrap()
        .into_inner()
        .members;
    let ids: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(ids, ["alice", "carol"]);
    let request = bob.who.request(ChatListMyGroupsRequest {});
    let mine = bob
        .chat
        .clone()
        .list_my_groups(request)
        .await
        .unwrap()
        .into_inner();
    assert!(mine.groups.is_empty());

    let too_long = alice
        .try_send(ChatSendMessageRequest {
            conversation_id: alice.direct("bob").await.0.id,
            text: "x".repeat(4001),
            ..ChatSendMessageRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::InvalidArgument);
    assert!(too_long.message().contains("4000"), "{too_long:?}");
}

/// One step of the unread property test.
#[derive(Debug, Clone)]
enum Step {
    Send(usize),
    /// The author of the n-th message deletes it.
    Delete(usize),
    /// A member reads up to the n-th message from two devices at once, one of them up to an
    /// older message.
    Read(usize, usize),
    Remove(usize),
    Add(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..3).prop_map(Step::Send),
        1 => (0usize..30).prop_map(Step::Delete),
        3 => (0usize..3, 0usize..30).prop_map(|(m, n)| Step::Read(m, n)),
        1 => (1usize..3).prop_map(Step::Remove),
        1 => (1usize..3).prop_map(Step::Add),
    ]
}

/// Every member's unread count and total, as ListMyConversations answers them, equal the
/// counts computed from the rows (ListMessages and the watermarks).
async fn assert_counts_match_rows(members: &[Chatter], room: u64, step: &Step) {
    let rows = members[0].messages(room).await;
    for member in members {
        let list = member.conversations().await;
        let Some(summary) = list
            .conversations
            .iter()
            .find(|c| c.conversation.as_ref().unwrap().id == room)
        else {
            assert_eq!(
                list.total_unread, 0,
                "{} is out: nothing unread",
                member.name
            );
            continue;
        };
        let from_rows = rows
            .iter()
            .filter(|m| !m.deleted && m.author_id != member.name && m.seq > summary.read_seq)
            .count() as u32;
        assert_eq!(summary.unread, from_rows, "{} after {step:?}", member.name);
        assert_eq!(
            list.total_unread, from_rows,
            "{} total after {step:?}",
            member.name
        );
    }
}

#[test]
fn unread_counts_equal_the_rows_after_sends_reads_from_two_devices_deletes_and_removals() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (app, members) = runtime.block_on(async {
        let app = spawn_app().await;
        let mut members = Vec::new();
        for name in ["ann", "ben", "cat"] {
            members.push(Chatter::of(&app, name).await);
        }
        (app, members)
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 8,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(step(), 1..25), |steps| {
        runtime.block_on(async {
            let admin = &members[0];
            let (team, _) = admin.create_group("counts", &["ben", "cat"]).await;
            let room = admin.conversation_in(team.id, "room").await.id;
            let mut inside: BTreeSet<usize> = [0, 1, 2].into();
            let mut sent: Vec<ChatMessage> = Vec::new();
            for step in &steps {
                match *step {
                    Step::Send(m) if inside.contains(&m) => {
                        sent.push(members[m].send(room, &format!("hi @ann from {m}")).await);
                    }
                    Step::Delete(n) if n < sent.len() => {
                        let author = members
                            .iter()
                            .position(|c| c.name == sent[n].author_id)
                            .unwrap();
                        if inside.contains(&author) {
                            let request = members[author].who.request(ChatDeleteMessageRequest {
                                message_id: sent[n].id,
                            });
                            members[author]
                                .chat
                                .clone()
                                .delete_message(request)
                                .await
                                .unwrap();
                        }
                    }
                    Step::Read(m, n) if inside.contains(&m) && n < sent.len() => {
                        let older = sent[n / 2].id;
                        let (phone, laptop) = (&members[m], members[m].device(&app).await);
                        let (a, b) = tokio::join!(
                            phone.mark_read(room, sent[n].id),
                            laptop.mark_read(room, older)
                        );
                        assert!(a.read_seq >= sent[n].seq && b.read_seq >= sent[n / 2].seq);
                    }
                    Step::Remove(m) if inside.remove(&m) => {
                        admin.remove(team.id, &members[m].name).await.unwrap();
                    }
                    Step::Add(m) if inside.insert(m) => {
                        admin.add(team.id, &members[m].name, false).await.unwrap();
                    }
                    _ => continue,
                }
                assert_counts_match_rows(&members, room, step).await;
            }
            // Leave nothing unread behind for the next case's totals.
            for m in inside {
                if let Some(last) = sent.last() {
                    members[m].mark_read(room, last.id).await;
                }
            }
            admin.leave(team.id).await.ok();
            for member in &members[1..] {
                admin.remove(team.id, &member.name).await.ok();
            }
            admin.leave(team.id).await.ok();
        });
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[tokio::test]
async fn reactions_toggle_per_user_and_the_summary_is_exact_under_concurrent_reactors() {
    let app = app().await;
    let alice = Chatter::of(&app, "alice").await;
    let names: Vec<String> = (0..8).map(|i| format!("fan{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (team, _) = alice.create_group("fans", &refs).await;
    let room = alice.conversation_in(team.id, "stage").await;
    let message = alice.send(room.id, "new release!").await;
    let mut at_alice = alice.who.subscribe(&conv(room.id)).await;
    let mut fans = Vec::new();
    for name in &names {
        fans.push(Chatter::of(&app, name).await);
    }

    let added = join_all(fans.iter().map(|fan| fan.react(message.id, "👍"))).await;
    assert!(added.iter().all(|r| r.added));
    let counts: BTreeSet<u32> = added.iter().map(|r| r.reactions[0].count).collect();
    assert_eq!(
        counts,
        (1..=8).collect(),
        "each toggle saw all the ones before it"
    );
    let mut last = None;
    for _ in 0..8 {
        let event = next_event(&mut at_alice).await;
        let Some(Body::ChatReactionsChanged(changed)) = &event.body else {
            panic!("{event:?}");
        };
        last = Some(changed.reactions[0].count);
    }
    assert_eq!(last, Some(8), "the stream's last summary is exact");
    let listed = &fans[0].messages(room.id).await[0];
    assert_eq!(
        (listed.reactions[0].count, listed.reactions[0].reacted),
        (8, true)
    );
    let by_author = &alice.messages(room.id).await[0];
    assert!(!by_author.reactions[0].reacted, "alice did not react");

    let second = fans[0].react(message.id, "🎉").await;
    let summary: Vec<(&str, u32, bool)> = second
        .reactions
        .iter()
        .map(|r| (r.emoji.as_str(), r.count, r.reacted))
        .collect();
    assert_eq!(summary, [("👍", 8, true), ("🎉", 1, true)]);
    let removed = join_all(fans.iter().map(|fan| fan.react(message.id, "👍"))).await;
    assert!(removed.iter().all(|r| !r.added));
    assert_eq!(
        fans[3].messages(room.id).await[0]
            .reactions
            .iter()
            .map(|r| (r.emoji.as_str(), r.count))
            .collect::<Vec<_>>(),
        [("🎉", 1)]
    );
    // The author heard of each first reaction in the inbox.
    assert_eq!(
        alice.notifications(NotificationType::MessageReaction).await,
        9
    );
}

#[tokio::test]
async fn a_conversation_resumes_after_a_disconnect_and_after_a_restart_missing_no_message() {
    let app = app().await;
    let alice = Chatter::of(&app, "alice").await;
    let bob = Chatter::of(&app, "bob").await;
    let (direct, _) = alice.direct("bob").await;
    let topic = conv(direct.id);
    // Snapshot + position: the list's position continues without a gap or a repeat.
    alice.send(direct.id, "one").await;
    let listed = bob.conversations().await;
    let summary = &listed.conversations[0];
    assert_eq!(summary.last_message.as_ref().unwrap().text, "one");
    assert_eq!((summary.unread, listed.total_unread), (1, 1));
    let mut sub = bob
        .who
        .resume(&topic, summary.position.clone().unwrap())
        .await;
    alice.send(direct.id, "two").await;
    let event = next_event(&mut sub).await;
    assert_eq!(message_of(&event).text, "two");
    let mut last = StreamPosition {
        offset: event.offset,
        epoch: event.epoch.clone(),
    };
    drop(sub);

    for text in ["three", "four"] {
        alice.send(direct.id, text).await;
    }
    let mut sub = bob.who.resume(&topic, last.clone()).await;
    for text in ["three", "four"] {
        let event = next_event(&mut sub).await;
        assert_eq!(message_of(&event).text, text);
        last.offset = event.offset;
    }
    drop(sub);
    alice.send(direct.id, "five").await;

    let app = app.restart().await;
    let alice = Chatter::of(&app, "alice").await;
    let bob = Chatter::of(&app, "bob").await;
    alice.send(direct.id, "six").await;
    let mut sub = bob.who.resume(&topic, last).await;
    assert!(sub.subscribed.recovered);
    for text in ["five", "six"] {
        let event = next_event(&mut sub).await;
        assert_eq!(
            message_of(&event).text,
            text,
            "the typed body survived the restart"
        );
    }
    let listed = bob.conversations().await;
    assert_eq!(listed.total_unread, 6);
}

#[tokio::test]
async fn a_conversation_resumes_after_a_herald_serve_is_killed_and_started_again_missing_no_message()
 {
    use herald_e2e::process::spawn_serve_process;
    let data = tempfile::tempdir().unwrap();
    let herald = spawn_serve_process(data.path()).await;
    let alice = Chatter::at(&herald.grpc_url(), "alice").await;
    let bob = Chatter::at(&herald.grpc_url(), "bob").await;
    let (direct, _) = alice.direct("bob").await;
    let topic = conv(direct.id);
    let mut sub = bob.who.subscribe(&topic).await;
    alice.send(direct.id, "before").await;
    let seen = next_event(&mut sub).await;
    let last = StreamPosition {
        offset: seen.offset,
        epoch: seen.epoch.clone(),
    };
    for text in ["acknowledged 1", "acknowledged 2"] {
        alice.send(direct.id, text).await;
    }
    herald.kill9().await;

    let herald = spawn_serve_process(data.path()).await;
    let alice = Chatter::at(&herald.grpc_url(), "alice").await;
    let bob = Chatter::at(&herald.grpc_url(), "bob").await;
    alice.send(direct.id, "after").await;
    let mut sub = bob.who.resume(&topic, last).await;
    assert!(sub.subscribed.recovered);
    for text in ["acknowledged 1", "acknowledged 2", "after"] {
        assert_eq!(message_of(&next_event(&mut sub).await).text, text);
    }
    herald.kill9().await;
}

#[tokio::test]
async fn mentions_notify_through_the_inbox_within_its_rate_limit_and_offline_members_get_new_message()
 {
    let app = app().await;
    let alice = Chatter::of(&app, "alice").await;
    let bob = Chatter::of(&app, "bob").await;
    let carol = Chatter::of(&app, "carol").await;
    let (team, _) = alice.create_group("team", &["bob", "carol"]).await;
    let room = alice.conversation_in(team.id, "general").await;
    let mut bob_inbox = bob.who.subscribe("user:bob").await; // bob is online, carol is not

    let sent = alice.send(room.id, "@bob can you look? cc @nobody").await;
    assert_eq!(sent.mentions, ["bob"]);
    let mentioned = loop {
        let event = next_event(&mut bob_inbox).await;
        if event.r#type == "notification.created" {
            break event;
        }
    };
    let Some(Body::NotificationCreated(created)) = &mentioned.body else {
        panic!("{mentioned:?}");
    };
    let notification = created.notification.as_ref().unwrap();
    assert_eq!(notification.r#type(), NotificationType::UserMentioned);
    assert_eq!(
        notification.context.as_ref().unwrap().message_id,
        sent.id.to_string()
    );
    assert_eq!(carol.notifications(NotificationType::NewMessage).await, 1);
    assert_eq!(
        bob.notifications(NotificationType::NewMessage).await,
        0,
        "bob is online"
    );

    for n in 0..6 {
        alice.send(room.id, &format!("@bob ping {n}")).await;
    }
    assert_eq!(
        bob.notifications(NotificationType::UserMentioned).await,
        5,
        "at most 5 mentions per sender and recipient a minute"
    );
    assert_eq!(carol.notifications(NotificationType::NewMessage).await, 7);
}

#[tokio::test]
async fn the_lists_carry_positions_that_continue_without_a_gap() {
    let app = app().await;
    let alice = Chatter::of(&app, "alice").await;
    let bob = Chatter::of(&app, "bob").await;
    let request = bob.who.request(ChatListMyGroupsRequest {});
    let before = bob
        .chat
        .clone()
        .list_my_groups(request)
        .await
        .unwrap()
        .into_inner();
    let mut mine = bob.who.resume("user:bob", before.position.unwrap()).await;
    let (team, _) = alice.create_group("team", &["bob"]).await;
    let added = next_event(&mut mine).await;
    assert_eq!(added.r#type, "chat.added");
    let Some(Body::ChatMembershipChanged(change)) = &added.body else {
        panic!("{added:?}");
    };
    assert_eq!(change.group.as_ref().unwrap().id, team.id);
    let room = alice.conversation_in(team.id, "general").await;
    assert_eq!(next_event(&mut mine).await.r#type, "chat.added");
    let message = alice.send(room.id, "hello").await;
    let unread = next_event(&mut mine).await;
    let Some(Body::ChatUnreadChanged(counts)) = &unread.body else {
        panic!("{unread:?}");
    };
    assert_eq!((counts.unread, counts.total_unread), (1, 1));
    let read = bob.mark_read(room.id, message.id).await;
    assert!(read.moved);
    assert_eq!((read.unread, read.total_unread), (0, 0));
    let event = next_event(&mut mine).await;
    let Some(Body::ChatUnreadChanged(counts)) = &event.body else {
        panic!("{event:?}");
    };
    assert_eq!((counts.unread, counts.read_seq), (0, message.seq));
    let again = bob.mark_read(room.id, message.id).await;
    assert!(!again.moved, "a watermark never moves back or twice");
    let positions: BTreeMap<u64, u64> = bob
        .conversations()
        .await
        .conversations
        .iter()
        .map(|c| {
            (
                c.conversation.as_ref().unwrap().id,
                c.position.as_ref().unwrap().offset,
            )
        })
        .collect();
    assert_eq!(positions[&room.id], 2, "the message and bob's read receipt");
}

#[tokio::test]
async fn the_chat_demo_runs_against_a_herald_serve() {
    use herald_e2e::process::{herald_binary, spawn_serve_process};
    let data = tempfile::tempdir().unwrap();
    let herald = spawn_serve_process(data.path()).await;
    let output = tokio::process::Command::new(herald_binary())
        .args(["demo", "chat", "--pace", "0s", "--server"])
        .arg(herald.grpc_url())
        .env("HERALD_AUTH_HS256_SECRET", herald_e2e::SECRET)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "ben is typing…",
        "chat.message_created",
        "(mentions ben, ana)",
        "chat.reactions_changed",
        "ben read up to message",
        "chat.message_edited",
        "(deleted; v2)",
        "cleo was removed",
        "ended with PermissionDenied",
        "cleo joined",
        "ana: 2 unread",
    ] {
        assert!(
            stdout.contains(expected),
            "`{expected}` missing from:\n{stdout}"
        );
    }
    herald.kill9().await;
}

/// Two backends on one Redis and one PostgreSQL database: "online" is the cluster's. Bob's
/// only stream is on backend 2; a message sent on backend 1 gives him no `new_message`
/// notification, and alice (on backend 1) sees his `chat.presence` go online and, once that
/// stream ends, offline. Then a message gives him the notification. Always on
/// PostgreSQL: both backends need the same database.
#[tokio::test]
async fn online_is_the_clusters_a_member_online_on_another_backend_gets_no_new_message_notification()
 {
    let redis = herald_e2e::redis::RedisServer::start().expect("start redis-server");
    let database = herald_e2e::postgres::shared().fresh_database().await;
    let start = || {
        let (redis_url, database) = (redis.url(), database.clone());
        spawn_app_with(move |config| {
            config.broker.url = Some(redis_url);
            config.database_url = Some(database);
        })
    };
    let (first, second) = (start().await, start().await);
    let alice = Chatter::of(&first, "alice").await;
    let bob = Chatter::of(&second, "bob").await;
    let (team, _) = alice.create_group("team", &["bob"]).await;
    let room = alice.conversation_in(team.id, "general").await;
    let mut at_alice = alice.who.subscribe(&group(team.id)).await;

    let bob_online = bob.who.subscribe("user:bob").await;
    let online = loop {
        let signal = next_signal(&mut at_alice, "chat.presence").await;
        if data(&signal)["user_id"] == "bob" {
            break data(&signal);
        }
    };
    assert_eq!(online["online"], true, "{online}");

    let sender = Chatter::of(&first, "alice").await;
    sender.send(room.id, "on backend 1").await;
    assert_eq!(
        bob.notifications(NotificationType::NewMessage).await,
        0,
        "bob is online on backend 2"
    );

    drop(bob_online);
    let offline = loop {
        let signal = next_signal(&mut at_alice, "chat.presence").await;
        if data(&signal)["user_id"] == "bob" {
            break data(&signal);
        }
    };
    assert_eq!(offline["online"], false, "{offline}");
    sender.send(room.id, "bob has gone").await;
    assert_eq!(bob.notifications(NotificationType::NewMessage).await, 1);
}
