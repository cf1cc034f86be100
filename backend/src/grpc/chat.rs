//! `herald.v1.Chat`: principal → the request's fields → the domain
//! ([`crate::domain::chat`]) → errors mapped through [`crate::error`].

use herald_proto::{
    server::chat_server::Chat as ChatRpc,
    v1::{
        ChatAddMemberRequest, ChatAddMemberResponse, ChatCreateConversationRequest,
        ChatCreateConversationResponse, ChatCreateGroupRequest, ChatCreateGroupResponse,
        ChatDeleteMessageRequest, ChatDeleteMessageResponse, ChatEditMessageRequest,
        ChatEditMessageResponse, ChatLeaveRequest, ChatLeaveResponse, ChatListMembersRequest,
        ChatListMembersResponse, ChatListMessagesRequest, ChatListMessagesResponse,
        ChatListMyConversationsRequest, ChatListMyConversationsResponse, ChatListMyGroupsRequest,
        ChatListMyGroupsResponse, ChatMarkReadRequest, ChatMarkReadResponse, ChatReactRequest,
        ChatReactResponse, ChatRemoveMemberRequest, ChatRemoveMemberResponse,
        ChatSendMessageRequest, ChatSendMessageResponse, ChatSetTypingRequest,
        ChatSetTypingResponse, chat_create_conversation_request::With,
    },
};
use tonic::{Request, Response, Status};

use crate::{
    auth::interceptor::principal,
    domain::chat::{Chat, ChatError, rules},
    error::Error,
};

#[derive(Debug, Clone)]
pub struct ChatService {
    chat: Chat,
}

impl ChatService {
    pub fn new(chat: Chat) -> Self {
        Self { chat }
    }
}

fn status(error: ChatError) -> Status {
    Error::from(error).into()
}

#[tonic::async_trait]
impl ChatRpc for ChatService {
    async fn create_group(
        &self,
        request: Request<ChatCreateGroupRequest>,
    ) -> Result<Response<ChatCreateGroupResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let (group, position) = self
            .chat
            .create_group(&who, &request.name, request.member_ids)
            .await
            .map_err(status)?;
        Ok(Response::new(ChatCreateGroupResponse {
            group: Some(group),
            position: Some(position),
        }))
    }

    async fn add_member(
        &self,
        request: Request<ChatAddMemberRequest>,
    ) -> Result<Response<ChatAddMemberResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let (member, added) = self
            .chat
            .add_member(&who, request.group_id, &request.user_id, request.admin)
            .await
            .map_err(status)?;
        Ok(Response::new(ChatAddMemberResponse {
            member: Some(member),
            added,
        }))
    }

    async fn remove_member(
        &self,
        request: Request<ChatRemoveMemberRequest>,
    ) -> Result<Response<ChatRemoveMemberResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        self.chat
            .remove_member(&who, request.group_id, &request.user_id)
            .await
            .map_err(status)?;
        Ok(Response::new(ChatRemoveMemberResponse {}))
    }

    async fn leave(
        &self,
        request: Request<ChatLeaveRequest>,
    ) -> Result<Response<ChatLeaveResponse>, Status> {
        let who = principal(&request)?;
        let group_id = request.get_ref().group_id;
        self.chat.leave(&who, group_id).await.map_err(status)?;
        Ok(Response::new(ChatLeaveResponse {}))
    }

    async fn list_my_groups(
        &self,
        request: Request<ChatListMyGroupsRequest>,
    ) -> Result<Response<ChatListMyGroupsResponse>, Status> {
        let who = principal(&request)?;
        let (groups, position) = self.chat.my_groups(&who).await.map_err(status)?;
        Ok(Response::new(ChatListMyGroupsResponse {
            groups,
            position: Some(position),
        }))
    }

    async fn list_members(
        &self,
        request: Request<ChatListMembersRequest>,
    ) -> Result<Response<ChatListMembersResponse>, Status> {
        let who = principal(&request)?;
        let group_id = request.get_ref().group_id;
        let (members, position) = self.chat.members_of(&who, group_id).await.map_err(status)?;
        Ok(Response::new(ChatListMembersResponse {
            members,
            position: Some(position),
        }))
    }

    async fn create_conversation(
        &self,
        request: Request<ChatCreateConversationRequest>,
    ) -> Result<Response<ChatCreateConversationResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let (conversation, created) = match request.with {
            Some(With::DirectUserId(other)) => self
                .chat
                .create_direct(&who, &other)
                .await
                .map_err(status)?,
            Some(With::GroupId(group_id)) => {
                let conversation = self
                    .chat
                    .create_in_group(&who, group_id, &request.title)
                    .await
                    .map_err(status)?;
                (conversation, true)
            }
            None => {
                return Err(Error::invalid(
                    "name `direct_user_id` (a direct conversation) or `group_id` (a \
                     conversation of a group)",
                )
                .into());
            }
        };
        Ok(Response::new(ChatCreateConversationResponse {
            conversation: Some(conversation),
            created,
        }))
    }

    async fn list_my_conversations(
        &self,
        request: Request<ChatListMyConversationsRequest>,
    ) -> Result<Response<ChatListMyConversationsResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let page = self
            .chat
            .my_conversations(&who, request.page_size, &request.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(ChatListMyConversationsResponse {
            conversations: page.conversations,
            total_unread: rules::count(page.total_unread),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
            position: Some(page.position),
        }))
    }

    async fn mark_read(
        &self,
        request: Request<ChatMarkReadRequest>,
    ) -> Result<Response<ChatMarkReadResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let read = self
            .chat
            .mark_read(&who, request.conversation_id, request.message_id)
            .await
            .map_err(status)?;
        Ok(Response::new(ChatMarkReadResponse {
            moved: read.moved,
            read_seq: u64::try_from(read.read_seq).unwrap_or_default(),
            unread: rules::count(read.unread),
            total_unread: rules::count(read.total_unread),
        }))
    }

    async fn send_message(
        &self,
        request: Request<ChatSendMessageRequest>,
    ) -> Result<Response<ChatSendMessageResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let sent = self
            .chat
            .send(
                &who,
                request.conversation_id,
                &request.text,
                request.reply_to_id,
                &request.client_message_id,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(ChatSendMessageResponse {
            message: Some(sent.message),
            created: sent.created,
            position: Some(sent.position),
        }))
    }

    async fn edit_message(
        &self,
        request: Request<ChatEditMessageRequest>,
    ) -> Result<Response<ChatEditMessageResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let message = self
            .chat
            .edit(&who, request.message_id, &request.text)
            .await
            .map_err(status)?;
        Ok(Response::new(ChatEditMessageResponse {
            message: Some(message),
        }))
    }

    async fn delete_message(
        &self,
        request: Request<ChatDeleteMessageRequest>,
    ) -> Result<Response<ChatDeleteMessageResponse>, Status> {
        let who = principal(&request)?;
        let message_id = request.get_ref().message_id;
        let message = self.chat.delete(&who, message_id).await.map_err(status)?;
        Ok(Response::new(ChatDeleteMessageResponse {
            message: Some(message),
        }))
    }

    async fn react(
        &self,
        request: Request<ChatReactRequest>,
    ) -> Result<Response<ChatReactResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let (added, reactions) = self
            .chat
            .react(&who, request.message_id, &request.emoji)
            .await
            .map_err(status)?;
        Ok(Response::new(ChatReactResponse { added, reactions }))
    }

    async fn list_messages(
        &self,
        request: Request<ChatListMessagesRequest>,
    ) -> Result<Response<ChatListMessagesResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let page = self
            .chat
            .messages(
                &who,
                request.conversation_id,
                request.page_size,
                &request.page_token,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(ChatListMessagesResponse {
            messages: page.messages,
            next_page_token: page.next.map(|seq| seq.to_string()).unwrap_or_default(),
            position: Some(page.position),
        }))
    }

    async fn set_typing(
        &self,
        request: Request<ChatSetTypingRequest>,
    ) -> Result<Response<ChatSetTypingResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let signalled = self
            .chat
            .set_typing(&who, request.conversation_id, request.typing)
            .await
            .map_err(status)?;
        Ok(Response::new(ChatSetTypingResponse { signalled }))
    }
}
