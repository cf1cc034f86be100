//! A deployment's status and log across reconnects: `Deployments/Watch` resumed from the last
//! event taken, the way [`crate::Subscription`] resumes a topic.

use herald_proto::v1::{
    DeploymentEvent, StreamPosition, WatchDeploymentRequest, deployments_client::DeploymentsClient,
};
use tonic::Streaming;

use crate::{Authorized, Backoff, Error, subscription::wait_to_retry};

/// One deployment's typed stream: its status now, its log so far (or the last `tail_lines`),
/// then every change live. It reconnects by the close-code table and resumes after the last
/// event yielded, so no line is missed or repeated; it ends when the server ends the stream
/// (the deployment finished and everything was sent) or refuses it for good.
#[derive(Debug)]
pub struct DeploymentWatch {
    deployments: DeploymentsClient<Authorized>,
    id: u64,
    since: Option<StreamPosition>,
    tail_lines: Option<u32>,
    backoff: Backoff,
    stream: Option<Streaming<DeploymentEvent>>,
    ended: bool,
}

impl DeploymentWatch {
    pub(crate) fn new(deployments: DeploymentsClient<Authorized>, id: u64) -> DeploymentWatch {
        DeploymentWatch {
            deployments,
            id,
            since: None,
            tail_lines: None,
            backoff: Backoff::default(),
            stream: None,
            ended: false,
        }
    }

    /// Resume after `position` (from `Get`, or the last event of an earlier watch).
    pub fn since(mut self, position: StreamPosition) -> DeploymentWatch {
        self.since = Some(position);
        self
    }

    /// Without `since`: start with only the last `lines` of the log so far.
    pub fn tail_lines(mut self, lines: u32) -> DeploymentWatch {
        self.tail_lines = Some(lines);
        self
    }

    /// Replace the reconnect policy (the default waits up to 100 ms · 2ⁿ, at most 10 s).
    pub fn with_backoff(mut self, backoff: Backoff) -> DeploymentWatch {
        self.backoff = backoff;
        self
    }

    /// The position of the last event yielded.
    pub fn position(&self) -> Option<&StreamPosition> {
        self.since.as_ref()
    }

    /// The next event; `None` once the stream finished (after yielding its error, if any).
    pub async fn next(&mut self) -> Option<Result<DeploymentEvent, Error>> {
        loop {
            if self.ended {
                return None;
            }
            let received = match &mut self.stream {
                Some(stream) => stream.message().await,
                None => {
                    let request = WatchDeploymentRequest {
                        deployment_id: self.id,
                        since: self.since.clone(),
                        tail_lines: self.tail_lines,
                    };
                    match self.deployments.watch(request).await {
                        Ok(response) => {
                            self.stream = Some(response.into_inner());
                            continue;
                        }
                        Err(status) => Err(status),
                    }
                }
            };
            match received {
                Ok(Some(event)) => {
                    if event.position.is_some() {
                        self.since.clone_from(&event.position);
                        // A resume continues after the last event, whatever the tail was.
                        self.tail_lines = None;
                    }
                    self.backoff.reset();
                    return Some(Ok(event));
                }
                Ok(None) => {
                    self.ended = true;
                    return None;
                }
                Err(status) => {
                    self.stream = None;
                    let what = format!("deployment:{}", self.id);
                    if let Err(error) = wait_to_retry(&mut self.backoff, status, &what).await {
                        self.ended = true;
                        return Some(Err(error));
                    }
                }
            }
        }
    }
}
