//! `herald.v1.Rooms`: subscribe, publish, history and presence on any topic.

use std::sync::Arc;

use herald_proto::server::rooms_server::Rooms;
use herald_proto::v1::{
    HistoryRequest, HistoryResponse, PresenceRequest, PresenceResponse, PublishRequest,
    PublishResponse, SubscribeRequest,
};
use tonic::{Request, Response, Status};

use crate::{
    auth::interceptor::principal, error::Error, node::Node, store::Store,
    subscription::EventStream, topic::Topic,
};

#[derive(Debug, Clone)]
pub struct RoomsService {
    node: Arc<Node>,
    store: Option<Store>,
}

impl RoomsService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node, store: None }
    }

    /// Enables durable publishes (`PublishRequest.durable`) through this store's outbox.
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }
}

fn parse_topic(topic: &str) -> Result<Topic, Status> {
    Topic::parse(topic).map_err(|e| Error::from(e).into())
}

impl RoomsService {
    async fn publish_durable(
        &self,
        who: &crate::auth::Principal,
        topic: Topic,
        request: PublishRequest,
    ) -> Result<Response<PublishResponse>, Status> {
        let Some(store) = &self.store else {
            return Err(Error::Unavailable("durable publishing is not enabled".into()).into());
        };
        if request
            .idempotency_key
            .as_ref()
            .is_some_and(|k| !k.is_empty())
        {
            return Err(Error::invalid(
                "durable publishes are idempotent by themselves; drop idempotency_key",
            )
            .into());
        }
        let published = self
            .node
            .publish_durable(
                store,
                who,
                topic,
                request.r#type,
                request.data,
                store.config().durable_publish_wait,
            )
            .await?;
        Ok(Response::new(PublishResponse {
            position: Some(published.position),
            id: published.id,
        }))
    }
}

#[tonic::async_trait]
impl Rooms for RoomsService {
    type SubscribeStream = EventStream;

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().topic))]
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
        let request = request.into_inner();
        let topic = parse_topic(&request.topic)?;
        if request.durable {
            return self.publish_durable(&who, topic, request).await;
        }
        let published = self
            .node
            .publish(
                &who,
                topic,
                request.r#type,
                request.data,
                request.idempotency_key,
            )
            .await?;
        Ok(Response::new(PublishResponse {
            position: Some(published.position),
            id: published.id,
        }))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let topic = parse_topic(&request.topic)?;
        let page = self
            .node
            .history(&who, topic, request.since, request.limit)
            .await?;
        Ok(Response::new(HistoryResponse {
            events: page.events.iter().map(|e| e.event().clone()).collect(),
            position: Some(page.top),
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
}
