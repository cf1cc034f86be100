//! `herald.v1.Deployments`: principal → parse → [`crate::domain::deployments`] → map errors.
//! `Watch` streams a [`DeploymentWatch`]: the node's subscription to `deployment:<id>` seen
//! through the domain's [`WatchFilter`].

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::{Stream, StreamExt};
use herald_proto::{
    server::deployments_server::Deployments as DeploymentsRpc,
    v1::{
        DeploymentEvent, DeploymentsAppendLogBatchRequest, DeploymentsAppendLogBatchResponse,
        DeploymentsAppendLogsResponse, DeploymentsCancelRequest, DeploymentsCancelResponse,
        DeploymentsCreateRequest, DeploymentsCreateResponse, DeploymentsFinishRequest,
        DeploymentsFinishResponse, DeploymentsGetRequest, DeploymentsGetResponse,
        DeploymentsListRequest, DeploymentsListResponse, DeploymentsReportRequest,
        DeploymentsReportResponse, DeploymentsStartRequest, DeploymentsStartResponse, LogChunk,
        SubscribeResponse, WatchDeploymentRequest, subscribe_response::Frame,
    },
};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth::interceptor::principal,
    domain::deployments::{
        AppendOutcome, DeploymentError, Deployments, LineInput, WatchFilter,
        events::ms_of,
        rules::{self, Command, DeploymentId, NewDeployment},
    },
    error::Error,
    subscription::EventStream,
};

#[derive(Debug, Clone)]
pub struct DeploymentsService {
    deployments: Deployments,
}

impl DeploymentsService {
    pub fn new(deployments: Deployments) -> Self {
        Self { deployments }
    }
}

fn status(error: impl Into<DeploymentError>) -> Status {
    Error::from(error.into()).into()
}

fn id(value: u64) -> Result<DeploymentId, Status> {
    DeploymentId::new(value).map_err(status)
}

fn now_ms() -> i64 {
    ms_of(&herald_proto::timestamp(std::time::SystemTime::now()))
}

fn lines(chunk: LogChunk) -> Vec<LineInput> {
    chunk
        .lines
        .into_iter()
        .map(|line| LineInput {
            text: line.text,
            stream: line.stream,
            time_ms: line.time.as_ref().map(ms_of),
        })
        .collect()
}

#[tonic::async_trait]
impl DeploymentsRpc for DeploymentsService {
    type WatchStream = DeploymentWatch;

    async fn create(
        &self,
        request: Request<DeploymentsCreateRequest>,
    ) -> Result<Response<DeploymentsCreateResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let new = NewDeployment::parse(
            &request.application,
            &request.git_ref,
            request.description.as_deref(),
        )
        .map_err(status)?;
        let deployment = self.deployments.create(&who, new).await.map_err(status)?;
        Ok(Response::new(DeploymentsCreateResponse {
            deployment: Some(deployment),
        }))
    }

    async fn get(
        &self,
        request: Request<DeploymentsGetRequest>,
    ) -> Result<Response<DeploymentsGetResponse>, Status> {
        let who = principal(&request)?;
        let id = id(request.get_ref().deployment_id)?;
        let deployment = self.deployments.get(&who, id).await.map_err(status)?;
        Ok(Response::new(DeploymentsGetResponse {
            deployment: Some(deployment),
        }))
    }

    async fn list(
        &self,
        request: Request<DeploymentsListRequest>,
    ) -> Result<Response<DeploymentsListResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let (deployments, next_page_token) = self
            .deployments
            .list(
                &who,
                request.application.as_deref(),
                request.page_size,
                &request.page_token,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(DeploymentsListResponse {
            deployments,
            next_page_token,
        }))
    }

    async fn cancel(
        &self,
        request: Request<DeploymentsCancelRequest>,
    ) -> Result<Response<DeploymentsCancelResponse>, Status> {
        let who = principal(&request)?;
        let id = id(request.get_ref().deployment_id)?;
        let command = Command::Cancel { now_ms: now_ms() };
        let deployment = self
            .deployments
            .command(&who, id, command)
            .await
            .map_err(status)?;
        Ok(Response::new(DeploymentsCancelResponse {
            deployment: Some(deployment),
        }))
    }

    async fn start(
        &self,
        request: Request<DeploymentsStartRequest>,
    ) -> Result<Response<DeploymentsStartResponse>, Status> {
        let who = principal(&request)?;
        let id = id(request.get_ref().deployment_id)?;
        let command = Command::Start { now_ms: now_ms() };
        let deployment = self
            .deployments
            .command(&who, id, command)
            .await
            .map_err(status)?;
        Ok(Response::new(DeploymentsStartResponse {
            deployment: Some(deployment),
        }))
    }

    async fn report(
        &self,
        request: Request<DeploymentsReportRequest>,
    ) -> Result<Response<DeploymentsReportResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let id = id(request.deployment_id)?;
        let command = Command::Report {
            stage: rules::parse_stage(request.stage).map_err(status)?,
            progress: rules::parse_progress(request.progress).map_err(status)?,
            message: rules::parse_message("message", &request.message).map_err(status)?,
        };
        let deployment = self
            .deployments
            .command(&who, id, command)
            .await
            .map_err(status)?;
        Ok(Response::new(DeploymentsReportResponse {
            status: deployment.status,
            position: deployment.position,
        }))
    }

    async fn append_logs(
        &self,
        request: Request<Streaming<LogChunk>>,
    ) -> Result<Response<DeploymentsAppendLogsResponse>, Status> {
        let who = principal(&request)?;
        let mut chunks = request.into_inner();
        let mut deployment: Option<DeploymentId> = None;
        let mut count = 0u64;
        let mut last: Option<AppendOutcome> = None;
        while let Some(chunk) = chunks.message().await? {
            let this = id(chunk.deployment_id)?;
            match deployment {
                None => deployment = Some(this),
                Some(first) if first != this => {
                    return Err(status(rules::RuleError::Invalid(format!(
                        "every chunk of one AppendLogs call names the same deployment: \
                         this call began with {first}, this chunk names {this}"
                    ))));
                }
                Some(_) => {}
            }
            let outcome = self
                .deployments
                .append(&who, this, lines(chunk))
                .await
                .map_err(status)?;
            count += 1;
            last = Some(outcome);
        }
        let last = last.ok_or_else(|| {
            status(rules::RuleError::Invalid(
                "AppendLogs received no chunk: send at least one LogChunk".into(),
            ))
        })?;
        Ok(Response::new(DeploymentsAppendLogsResponse {
            chunks: count,
            last_line: last.last_line,
            log_truncated: last.log_truncated,
            position: Some(last.position),
        }))
    }

    async fn append_log_batch(
        &self,
        request: Request<DeploymentsAppendLogBatchRequest>,
    ) -> Result<Response<DeploymentsAppendLogBatchResponse>, Status> {
        let who = principal(&request)?;
        let chunk = request.into_inner().chunk.unwrap_or_default();
        let this = id(chunk.deployment_id)?;
        let outcome = self
            .deployments
            .append(&who, this, lines(chunk))
            .await
            .map_err(status)?;
        Ok(Response::new(DeploymentsAppendLogBatchResponse {
            last_line: outcome.last_line,
            log_truncated: outcome.log_truncated,
            position: Some(outcome.position),
        }))
    }

    async fn finish(
        &self,
        request: Request<DeploymentsFinishRequest>,
    ) -> Result<Response<DeploymentsFinishResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let id = id(request.deployment_id)?;
        let outcome =
            rules::Outcome::parse(request.result, &request.error_message, request.exit_code)
                .map_err(status)?;
        let message = request
            .message
            .as_deref()
            .map(|m| rules::parse_message("message", m))
            .transpose()
            .map_err(status)?;
        let command = Command::Finish {
            outcome,
            message,
            now_ms: now_ms(),
        };
        let deployment = self
            .deployments
            .command(&who, id, command)
            .await
            .map_err(status)?;
        Ok(Response::new(DeploymentsFinishResponse {
            deployment: Some(deployment),
        }))
    }

    #[tracing::instrument(skip_all, fields(deployment = request.get_ref().deployment_id))]
    async fn watch(
        &self,
        request: Request<WatchDeploymentRequest>,
    ) -> Result<Response<DeploymentWatch>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let id = id(request.deployment_id)?;
        let (events, filter) = self
            .deployments
            .watch(&who, id, request.since, request.tail_lines)
            .await
            .map_err(status)?;
        Ok(Response::new(DeploymentWatch {
            events,
            filter,
            done: false,
        }))
    }
}

/// The stream of `Deployments/Watch`: the topic's subscription through the watch filter. It
/// ends with OK after the terminal status, and with the subscription's status when the
/// subscription ends (shutdown, token expiry: resume with the last position). Dropping it
/// drops the subscription.
#[derive(Debug)]
pub struct DeploymentWatch {
    events: EventStream,
    filter: WatchFilter,
    done: bool,
}

impl Stream for DeploymentWatch {
    type Item = Result<DeploymentEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(event) = this.filter.next_ready() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.filter.is_over() {
                this.done = true;
                return Poll::Ready(None);
            }
            match std::task::ready!(this.events.poll_next_unpin(cx)) {
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Some(Err(status)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Some(Ok(frame)) => {
                    let frame = SubscribeResponse::decode(frame.as_bytes().clone())
                        .map_err(|e| Status::internal(format!("undecodable frame: {e}")))?;
                    if let Some(Frame::Event(event)) = frame.frame {
                        this.filter.accept(event);
                    }
                }
            }
        }
    }
}
