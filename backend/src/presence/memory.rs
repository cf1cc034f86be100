//! In-memory presence for a single node.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::SystemTime,
};

use async_trait::async_trait;
use herald_proto::v1::PresenceMember;

use super::{ConnectionId, Presence};
use crate::{broker::BrokerError, topic::Topic};

#[derive(Debug)]
struct Member {
    connections: HashSet<ConnectionId>,
    since: SystemTime,
}

#[derive(Debug, Default)]
pub struct MemoryPresence {
    topics: Mutex<HashMap<Topic, HashMap<String, Member>>>,
}

impl MemoryPresence {
    pub fn new() -> MemoryPresence {
        MemoryPresence::default()
    }

    /// Each critical section is a single map update (see [`herald_proto::support::lock`]).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, HashMap<String, Member>>> {
        herald_proto::support::lock(&self.topics)
    }
}

fn describe(user_id: &str, member: &Member) -> PresenceMember {
    PresenceMember {
        user_id: user_id.to_owned(),
        connections: u32::try_from(member.connections.len()).unwrap_or(u32::MAX),
        since: Some(herald_proto::timestamp(member.since)),
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn join(
        &self,
        topic: &Topic,
        user_id: &str,
        connection: ConnectionId,
    ) -> Result<Option<PresenceMember>, BrokerError> {
        let mut topics = self.lock();
        let members = topics.entry(topic.clone()).or_default();
        let member = members.entry(user_id.to_owned()).or_insert_with(|| Member {
            connections: HashSet::new(),
            since: SystemTime::now(),
        });
        member.connections.insert(connection);
        Ok((member.connections.len() == 1).then(|| describe(user_id, member)))
    }

    async fn leave(
        &self,
        topic: &Topic,
        user_id: &str,
        connection: ConnectionId,
    ) -> Result<Option<PresenceMember>, BrokerError> {
        let mut topics = self.lock();
        let Some(members) = topics.get_mut(topic) else {
            return Ok(None);
        };
        let Some(member) = members.get_mut(user_id) else {
            return Ok(None);
        };
        if !member.connections.remove(&connection) || !member.connections.is_empty() {
            return Ok(None);
        }
        let left = describe(user_id, member);
        members.remove(user_id);
        if members.is_empty() {
            topics.remove(topic);
        }
        Ok(Some(left))
    }

    async fn members(&self, topic: &Topic) -> Result<Vec<PresenceMember>, BrokerError> {
        let topics = self.lock();
        let mut members: Vec<PresenceMember> = topics
            .get(topic)
            .map(|members| members.iter().map(|(id, m)| describe(id, m)).collect())
            .unwrap_or_default();
        members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(members)
    }
}
