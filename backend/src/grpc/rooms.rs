//! `herald.v1.Rooms`, the generic topic service: subscribe, publish, history, presence and
//! signals on any topic.

use std::sync::Arc;

use herald_proto::server::rooms_server::Rooms;
use herald_proto::v1::{
    HistoryRequest, HistoryResponse, PresenceRequest, PresenceResponse, PublishBatchRequest,
    PublishBatchResponse, PublishOutcome, PublishRefusal, PublishRequest, PublishResponse,
    SignalRequest, SignalResponse, SubscribeRequest, publish_outcome::Outcome,
};
use tonic::{Request, Response, Status};

use crate::{
    auth::interceptor::principal,
    error::Error,
    node::Node,
    publish::{PublishCommand, Publisher},
    subscription::EventStream,
    topic::Topic,
};

/// The most publishes one `PublishBatch` carries.
pub const MAX_PUBLISH_BATCH: usize = 100;

#[derive(Debug, Clone)]
pub struct RoomsService {
    node: Arc<Node>,
    publisher: Publisher,
}

impl RoomsService {
    pub fn new(node: Arc<Node>, publisher: Publisher) -> Self {
        Self { node, publisher }
    }
}

fn parse_topic(topic: &str) -> Result<Topic, Status> {
    Topic::parse(topic).map_err(|e| Error::from(e).into())
}

impl RoomsService {
    /// One publish, as `Publish` answers it.
    async fn publish_one(
        &self,
        who: &crate::auth::Principal,
        request: PublishRequest,
    ) -> Result<PublishResponse, Status> {
        let command = PublishCommand {
            topic: parse_topic(&request.topic)?,
            event_type: request.r#type,
            data: request.data,
            idempotency_key: request.idempotency_key,
            durable: request.durable,
        };
        let published = self.publisher.publish(who, command).await?;
        Ok(PublishResponse {
            position: Some(published.position),
            id: published.id,
        })
    }
}

#[tonic::async_trait]
impl Rooms for RoomsService {
    type SubscribeStream = EventStream;

    // The topic's kind only: a topic name can carry a user id (`user:…`).
    #[tracing::instrument(skip_all, fields(kind = herald_proto::metrics::kind_label(&request.get_ref().topic)))]
    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let topic = parse_topic(&request.topic)?;
        let stream = self.node.subscribe(&who, topic, request.since).await?;
        Ok(Response::new(stream))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let who = principal(&request)?;
        let answer = self.publish_one(&who, request.into_inner()).await?;
        Ok(Response::new(answer))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let who = principal(&request)?;
        let publishes = request.into_inner().publishes;
        if publishes.is_empty() || publishes.len() > MAX_PUBLISH_BATCH {
            return Err(Status::invalid_argument(format!(
                "a batch holds 1 to {MAX_PUBLISH_BATCH} publishes, not {}; split it",
                publishes.len()
            )));
        }
        let mut outcomes = Vec::with_capacity(publishes.len());
        // One after the other: each publish has its offset before the next one asks.
        for publish in publishes {
            let outcome = match self.publish_one(&who, publish).await {
                Ok(published) => Outcome::Published(published),
                Err(status) => Outcome::Refused(PublishRefusal {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                }),
            };
            outcomes.push(PublishOutcome {
                outcome: Some(outcome),
            });
        }
        Ok(Response::new(PublishBatchResponse { outcomes }))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let topic = parse_topic(&request.topic)?;
        let (events, top) = self
            .node
            .history(&who, topic, request.since, request.limit)
            .await?;
        Ok(Response::new(HistoryResponse {
            events: events.iter().map(|e| e.event().clone()).collect(),
            position: Some(top),
        }))
    }

    async fn presence(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<PresenceResponse>, Status> {
        let who = principal(&request)?;
        let topic = parse_topic(&request.get_ref().topic)?;
        let members = self.node.presence(&who, topic).await?;
        Ok(Response::new(PresenceResponse { members }))
    }

    async fn signal(
        &self,
        request: Request<SignalRequest>,
    ) -> Result<Response<SignalResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let topic = parse_topic(&request.topic)?;
        let time = self
            .node
            .signal(&who, topic, &request.r#type, request.key, request.data)
            .await?;
        Ok(Response::new(SignalResponse { time: Some(time) }))
    }
}
