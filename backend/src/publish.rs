//! The one publish entry point of the transports: an event goes to its topic's lane. A
//! durable topic's event is committed to the database, whose transaction gives it its offset
//! (the relay then hands it to the broker); a memory topic's event goes to the broker, which
//! gives it one. Validation and authorization are the node's, the same for both.

use std::sync::Arc;

use herald_proto::wkt::Struct;

use crate::{
    auth::Principal, broker::Published, error::Error, node::Node, store::Store, topic::Topic,
};

#[derive(Debug, Clone)]
pub struct Publisher {
    node: Arc<Node>,
    store: Store,
}

/// One publish as a transport received it.
#[derive(Debug)]
pub struct PublishCommand {
    pub topic: Topic,
    pub event_type: String,
    pub data: Option<Struct>,
    pub idempotency_key: Option<String>,
    /// The client asked for a durable publish (kept for clients written before lanes).
    pub durable: bool,
}

impl Publisher {
    pub fn new(node: Arc<Node>, store: Store) -> Publisher {
        Publisher { node, store }
    }

    pub async fn publish(
        &self,
        who: &Principal,
        command: PublishCommand,
    ) -> Result<Published, Error> {
        let topic = command.topic;
        if !self.node.lanes().is_durable(&topic) {
            if command.durable {
                return Err(Error::invalid(format!(
                    "`{topic}` is a memory topic; durable publishes need a durable kind: add `{}` \
                     to topics.durable, or publish without `durable`",
                    topic.kind()
                )));
            }
            return self
                .node
                .publish(
                    who,
                    topic,
                    command.event_type,
                    command.data,
                    command.idempotency_key,
                )
                .await;
        }
        let (event_type, key) = self
            .node
            .check_publish(
                who,
                &topic,
                &command.event_type,
                &command.data,
                command.idempotency_key,
            )
            .await?;
        let published = self
            .store
            .publish(
                &who.user_id,
                &topic,
                &event_type,
                command.data,
                key.as_ref(),
            )
            .await?;
        if !published.duplicate {
            self.node.metrics().published(1);
        }
        Ok(published)
    }
}
