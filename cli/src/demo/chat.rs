//! `herald demo chat`: three simulated users chat in a group conversation at a human pace —
//! typing first, then the message, a reply with mentions, a reaction, a read receipt, an edit,
//! a deletion, a member removed (her stream ends) and added back — while the demo prints the
//! conversation's stream as one of them sees it, signals included.

use std::time::Duration;

use herald_backend::Config;
use herald_proto::v1::{
    ChatAddMemberRequest, ChatCreateConversationRequest, ChatCreateGroupRequest,
    ChatDeleteMessageRequest, ChatEditMessageRequest, ChatListMessagesRequest,
    ChatListMyConversationsRequest, ChatMarkReadRequest, ChatMessage, ChatReactRequest,
    ChatRemoveMemberRequest, ChatSendMessageRequest, ChatSetTypingRequest, StreamPosition,
    chat_client::ChatClient, chat_create_conversation_request::With, presence_change,
};
use tokio::sync::watch;
use tonic::transport::Channel;

use herald_client::Update;

use super::{Actor, Stage, describe, next_update, status_error, subscribe};
use crate::{ChatDemoArgs, CliError};

struct Scene {
    stage: Stage,
    chat: ChatClient<Channel>,
    ana: Actor,
    ben: Actor,
    cleo: Actor,
    conversation: u64,
    /// The offset of the last event the screen printed.
    shown: watch::Receiver<u64>,
}

impl Scene {
    /// Waits until the screen printed everything up to `position`.
    async fn shown(&mut self, position: &StreamPosition) -> Result<(), CliError> {
        let wait = self.shown.wait_for(|shown| *shown >= position.offset);
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .map_err(|_| CliError::new("the conversation's event did not arrive within 10 s"))?
            .map_err(|_| CliError::new("the conversation's stream ended"))?;
        Ok(())
    }

    /// Waits until the screen printed everything the conversation holds now.
    async fn settled(&mut self) -> Result<(), CliError> {
        let request = self.ana.request(ChatListMessagesRequest {
            conversation_id: self.conversation,
            page_size: 1,
            page_token: String::new(),
        })?;
        let position = self
            .chat
            .list_messages(request)
            .await
            .map_err(status_error)?
            .into_inner()
            .position
            .unwrap_or_default();
        self.shown(&position).await
    }

    async fn typing(&mut self, who: &Actor, typing: bool) -> Result<(), CliError> {
        let request = who.request(ChatSetTypingRequest {
            conversation_id: self.conversation,
            typing,
        })?;
        self.chat.set_typing(request).await.map_err(status_error)?;
        Ok(())
    }

    /// Types for a moment, then sends.
    async fn say(
        &mut self,
        who: &Actor,
        text: &str,
        reply_to: Option<&ChatMessage>,
    ) -> Result<ChatMessage, CliError> {
        self.typing(who, true).await?;
        tokio::time::sleep(self.stage.pace).await;
        let request = who.request(ChatSendMessageRequest {
            conversation_id: self.conversation,
            text: text.to_owned(),
            reply_to_id: reply_to.map_or(0, |m| m.id),
            client_message_id: format!("demo-{}-{}", who.name, text.len()),
        })?;
        let sent = self
            .chat
            .send_message(request)
            .await
            .map_err(status_error)?
            .into_inner();
        self.typing(who, false).await?;
        self.shown(&sent.position.unwrap_or_default()).await?;
        sent.message
            .ok_or_else(|| CliError::new("the server answered no message"))
    }
}

/// Subscribes as `who` and returns the subscription once it is live.
async fn open(
    stage: &Stage,
    who: &Actor,
    topic: &str,
) -> Result<herald_client::Subscription, CliError> {
    let mut feed = subscribe(stage, who, topic);
    match next_update(&who.name, &mut feed).await? {
        Update::Subscribed { .. } => Ok(feed),
        other => Err(CliError::new(format!(
            "expected `subscribed`, got {other:?}"
        ))),
    }
}

/// Prints everything of the subscription as `label` sees it: events, typing and presence.
fn screen(label: String, mut feed: herald_client::Subscription) -> watch::Receiver<u64> {
    let (shown, receiver) = watch::channel(0);
    tokio::spawn(async move {
        while let Some(Ok(update)) = feed.next().await {
            match update {
                Update::Event(event) => {
                    println!("   {label} ← #{} {}", event.offset, describe(&event));
                    shown.send_replace(event.offset);
                }
                Update::Signal(signal) => {
                    let data =
                        serde_json::to_value(signal.data.unwrap_or_default()).unwrap_or_default();
                    let line = match signal.r#type.as_str() {
                        "chat.typing" if data["typing"] == true => {
                            format!("{} is typing…", signal.publisher)
                        }
                        "chat.typing" => format!(
                            "{} stopped typing ({})",
                            signal.publisher,
                            data["reason"].as_str().unwrap_or("stopped")
                        ),
                        other => format!("{other} {data}"),
                    };
                    println!("   {label} ~ {line}");
                }
                Update::Presence(change) => {
                    let (joined, left) = match change.kind() {
                        presence_change::Kind::Join => {
                            (change.member.into_iter().collect(), vec![])
                        }
                        presence_change::Kind::Leave => {
                            (vec![], change.member.into_iter().collect())
                        }
                        _ => (change.joins, change.leaves),
                    };
                    for (members, verb) in [(joined, "opened"), (left, "closed")] {
                        for member in members {
                            println!("   {label} ~ {} {verb} the conversation", member.user_id);
                        }
                    }
                }
                Update::Subscribed { resumed: true, .. } => {
                    println!("   {label}: reconnected, nothing missed");
                }
                Update::Subscribed { .. } | Update::Reload { .. } => {}
            }
        }
    });
    receiver
}

pub(crate) async fn run(args: ChatDemoArgs, config: &Config) -> Result<(), CliError> {
    let mut stage = Stage::open(&args.common, config).await?;
    let ana = stage.actor("ana", &[])?;
    let ben = stage.actor("ben", &[])?;
    let cleo = stage.actor("cleo", &[])?;
    let mut chat = ChatClient::new(stage.channel.clone());

    stage
        .step("ana creates a group with ben and cleo, and a conversation in it")
        .await;
    let request = ana.request(ChatCreateGroupRequest {
        name: args.group.clone(),
        member_ids: vec![ben.name.clone(), cleo.name.clone()],
    })?;
    let group = chat
        .create_group(request)
        .await
        .map_err(status_error)?
        .into_inner()
        .group
        .unwrap_or_default();
    let request = ana.request(ChatCreateConversationRequest {
        with: Some(With::GroupId(group.id)),
        title: "general".into(),
    })?;
    let conversation = chat
        .create_conversation(request)
        .await
        .map_err(status_error)?
        .into_inner()
        .conversation
        .unwrap_or_default();
    println!(
        "   group:{} “{}” (admin ana; members ben, cleo), conversation conv:{} “general”",
        group.id, group.name, conversation.id
    );
    println!(
        "   watch it from another terminal: herald watch conv:{}",
        conversation.id
    );
    let topic = format!("conv:{}", conversation.id);
    let ana_stream = open(&stage, &ana, &topic).await?;
    let shown = screen("ana's screen".into(), ana_stream);
    let mut scene = Scene {
        stage,
        chat,
        ana,
        ben,
        cleo,
        conversation: conversation.id,
        shown,
    };

    scene
        .stage
        .step("ben and cleo open the conversation (they are online now)")
        .await;
    let _ben_stream = open(&scene.stage, &scene.ben, &topic).await?;
    let mut cleo_stream = open(&scene.stage, &scene.cleo, &topic).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    scene.stage.step("ben types, then sends").await;
    let ben_says = scene
        .say(
            &scene.ben.clone(),
            "Morning! Is the release still on for today?",
            None,
        )
        .await?;

    scene
        .stage
        .step("cleo replies to ben and mentions ben and ana (their inboxes hear of it)")
        .await;
    let cleo_says = scene
        .say(
            &scene.cleo.clone(),
            "@ben yes, at 3pm. @ana can you confirm?",
            Some(&ben_says),
        )
        .await?;

    scene.stage.step("ana reacts to cleo's message").await;
    let request = scene.ana.request(ChatReactRequest {
        message_id: cleo_says.id,
        emoji: "👍".into(),
    })?;
    scene.chat.react(request).await.map_err(status_error)?;
    scene.settled().await?;

    scene
        .stage
        .step("ben reads up to cleo's message (a read receipt for the others)")
        .await;
    let request = scene.ben.request(ChatMarkReadRequest {
        conversation_id: scene.conversation,
        message_id: cleo_says.id,
    })?;
    scene.chat.mark_read(request).await.map_err(status_error)?;
    scene.settled().await?;

    scene.stage.step("cleo edits her message").await;
    let request = scene.cleo.request(ChatEditMessageRequest {
        message_id: cleo_says.id,
        text: "@ben yes, at 4pm now. @ana can you confirm?".into(),
    })?;
    scene
        .chat
        .edit_message(request)
        .await
        .map_err(status_error)?;
    scene.settled().await?;

    scene
        .stage
        .step("ben posts in the wrong chat and deletes it (a tombstone stays)")
        .await;
    let oops = scene
        .say(&scene.ben.clone(), "lunch at noon?", None)
        .await?;
    let request = scene.ben.request(ChatDeleteMessageRequest {
        message_id: oops.id,
    })?;
    scene
        .chat
        .delete_message(request)
        .await
        .map_err(status_error)?;
    scene.settled().await?;

    scene
        .stage
        .step("ana removes cleo: cleo's stream ends right after the removal")
        .await;
    let request = scene.ana.request(ChatRemoveMemberRequest {
        group_id: group.id,
        user_id: scene.cleo.name.clone(),
    })?;
    scene
        .chat
        .remove_member(request)
        .await
        .map_err(status_error)?;
    scene.settled().await?;
    // Cleo's stream delivers what she had not read yet, the removal last, then ends.
    let mut earlier = 0;
    let mut last = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), cleo_stream.next()).await {
            Ok(Some(Ok(Update::Event(event)))) => {
                earlier += usize::from(last.is_some());
                last = Some(event);
            }
            Ok(Some(Ok(_))) => {}
            Ok(None) => {
                println!("   cleo's screen: the stream finished");
                break;
            }
            Ok(Some(Err(error))) => {
                if let Some(event) = &last {
                    println!(
                        "   cleo's screen ← ({earlier} earlier events) #{} {}",
                        event.offset,
                        describe(event)
                    );
                }
                let reason = match &error {
                    herald_client::Error::Status(status) => {
                        format!("{:?}: {}", status.code(), status.message())
                    }
                    other => other.to_string(),
                };
                println!("   cleo's screen: ended with {reason}");
                break;
            }
            Err(_) => return Err(CliError::new("cleo's stream did not end within 10 s")),
        }
    }

    scene.stage.step("ana adds cleo back").await;
    let request = scene.ana.request(ChatAddMemberRequest {
        group_id: group.id,
        user_id: scene.cleo.name.clone(),
        admin: false,
    })?;
    scene.chat.add_member(request).await.map_err(status_error)?;
    scene.settled().await?;

    scene.stage.step("everyone's unread counts").await;
    for who in [scene.ana.clone(), scene.ben.clone(), scene.cleo.clone()] {
        let request = who.request(ChatListMyConversationsRequest {
            page_size: 10,
            page_token: String::new(),
        })?;
        let list = scene
            .chat
            .list_my_conversations(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let unread = list
            .conversations
            .iter()
            .find(|c| {
                c.conversation
                    .as_ref()
                    .is_some_and(|c| c.id == scene.conversation)
            })
            .map_or(0, |c| c.unread);
        println!(
            "   {}: {unread} unread in “general”, {} in total",
            who.name, list.total_unread
        );
    }
    println!(
        "\nDone. The whole conversation, as stored: herald history conv:{}",
        scene.conversation
    );
    Ok(())
}
