//! `herald.v1.Deployments`: principal → parse → [`crate::domain::deployments`] → map errors.
//! `Watch` streams a [`DeploymentWatch`]: the node's subscription to `deployment:<id>` seen
//! through the domain's [`WatchFilter`].

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::{Stream, StreamExt};
use herald_proto::encoded::Encoded;
use herald_proto::{
    server::deployments_server::Deployments as DeploymentsRpc,
    v1::{
        DeploymentsAppendLogBatchRequest, DeploymentsAppendLogBatchResponse,
        DeploymentsAppendLogsResponse, DeploymentsCancelRequest, DeploymentsCancelResponse,
        DeploymentsCreateRequest, DeploymentsCreateResponse, DeploymentsFinishRequest,
        DeploymentsFinishResponse, DeploymentsGetRequest, DeploymentsGetResponse,
        DeploymentsListRequest, DeploymentsListResponse, DeploymentsReportRequest,
        DeploymentsReportResponse, DeploymentsStartRequest, DeploymentsStartResponse, LogChunk,
        StreamPosition, SubscribeResponse, WatchDeploymentRequest, subscribe_response::Frame,
    },
};
use prost::{
    Message,
    bytes::{Buf, BufMut, Bytes, BytesMut},
    encoding::{self, WireType},
};
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
    /// Encoded `DeploymentEvent`s: a live chunk of lines is spliced from the topic's shared
    /// encoding instead of being decoded and encoded again for every watcher.
    type Item = Result<Encoded, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(event) = this.filter.next_ready() {
                return Poll::Ready(Some(Ok(Encoded::new(&event))));
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
                    if let Some(live) = LiveLogs::find(frame.as_bytes()) {
                        if !live.has_lines {
                            continue; // nothing a watcher would be shown
                        }
                        if let Some((position, recovered)) = this.filter.pass_live_logs(live.offset)
                        {
                            return Poll::Ready(Some(Ok(live.message(&position, recovered))));
                        }
                    }
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

/// A chunk of log lines inside an encoded `SubscribeResponse { event }`, found by walking the
/// wire format's top-level fields (nothing is decoded or copied but the field headers).
#[derive(Debug)]
struct LiveLogs {
    offset: u64,
    /// The encoded `DeploymentLogs`.
    logs: Bytes,
    /// Lines or a truncation marker are present (what the filter would pass on).
    has_lines: bool,
}

/// Field numbers this splice relies on (herald.v1: SubscribeResponse, Event, DeploymentLogs,
/// DeploymentEvent); `the_spliced_message_decodes_as_the_filtered_one` checks them.
const RESPONSE_EVENT: u32 = 2;
const EVENT_OFFSET: u32 = 2;
const EVENT_DEPLOYMENT_LOGS: u32 = 21;
const LOGS_LINES: u32 = 2;
const LOGS_TRUNCATED: u32 = 3;
const WATCH_LOGS: u32 = 2;
const WATCH_POSITION: u32 = 3;
const WATCH_RECOVERED: u32 = 4;

impl LiveLogs {
    /// The chunk in `frame`, or `None` for any other frame (or one this walk does not read).
    fn find(frame: &Bytes) -> Option<LiveLogs> {
        let event = length_delimited_field(frame.clone(), RESPONSE_EVENT)?;
        let mut offset = 0;
        let mut logs = None;
        let mut buf = event;
        while buf.has_remaining() {
            let (tag, wire_type) = encoding::decode_key(&mut buf).ok()?;
            match (tag, wire_type) {
                (EVENT_OFFSET, WireType::Varint) => {
                    offset = encoding::decode_varint(&mut buf).ok()?
                }
                (EVENT_DEPLOYMENT_LOGS, WireType::LengthDelimited) => {
                    let len = usize::try_from(encoding::decode_varint(&mut buf).ok()?).ok()?;
                    if len > buf.remaining() {
                        return None;
                    }
                    logs = Some(buf.split_to(len));
                }
                _ => skip(wire_type, tag, &mut buf)?,
            }
        }
        let logs = logs?;
        let has_lines = has_field(logs.clone(), &[LOGS_LINES, LOGS_TRUNCATED])?;
        Some(LiveLogs {
            offset,
            logs,
            has_lines,
        })
    }

    /// `DeploymentEvent { logs, position, recovered }`, encoded.
    fn message(&self, position: &StreamPosition, recovered: bool) -> Encoded {
        let mut buf = BytesMut::with_capacity(self.logs.len() + 64);
        encoding::encode_key(WATCH_LOGS, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(self.logs.len() as u64, &mut buf);
        buf.put_slice(&self.logs);
        encoding::message::encode(WATCH_POSITION, position, &mut buf);
        if recovered {
            encoding::bool::encode(WATCH_RECOVERED, &recovered, &mut buf);
        }
        Encoded::from_bytes(buf.freeze())
    }
}

/// The last occurrence of length-delimited field `number` of a message (last wins, as in
/// protobuf's merge), without decoding the rest.
fn length_delimited_field(mut buf: Bytes, number: u32) -> Option<Bytes> {
    let mut found = None;
    while buf.has_remaining() {
        let (tag, wire_type) = encoding::decode_key(&mut buf).ok()?;
        if tag == number && wire_type == WireType::LengthDelimited {
            let len = usize::try_from(encoding::decode_varint(&mut buf).ok()?).ok()?;
            if len > buf.remaining() {
                return None;
            }
            found = Some(buf.split_to(len));
        } else {
            skip(wire_type, tag, &mut buf)?;
        }
    }
    found
}

/// Whether any of the fields `numbers` occurs in the message.
fn has_field(mut buf: Bytes, numbers: &[u32]) -> Option<bool> {
    while buf.has_remaining() {
        let (tag, wire_type) = encoding::decode_key(&mut buf).ok()?;
        if numbers.contains(&tag) {
            return Some(true);
        }
        skip(wire_type, tag, &mut buf)?;
    }
    Some(false)
}

fn skip(wire_type: WireType, tag: u32, buf: &mut Bytes) -> Option<()> {
    encoding::skip_field(wire_type, tag, buf, encoding::DecodeContext::default()).ok()
}

#[cfg(test)]
mod tests {
    use herald_proto::v1::{
        DeploymentEvent, DeploymentLogs, Event, LogLine, LogTruncation, deployment_event,
        event::Body,
    };

    use super::*;
    use crate::event::SharedEvent;

    fn chunk(lines: std::ops::RangeInclusive<u64>, truncated: bool) -> DeploymentLogs {
        DeploymentLogs {
            deployment_id: 7,
            lines: lines
                .map(|number| LogLine {
                    number,
                    text: format!("step {number}: ok"),
                    ..LogLine::default()
                })
                .collect(),
            truncated: truncated.then(|| LogTruncation {
                first_line: 3,
                last_line: 9,
                ..LogTruncation::default()
            }),
        }
    }

    fn shared(offset: u64, logs: DeploymentLogs) -> SharedEvent {
        SharedEvent::new(Event {
            topic: "deployment:7".into(),
            offset,
            epoch: "e1".into(),
            id: "id".into(),
            r#type: "deployment.logs".into(),
            publisher: "worker".into(),
            time: Some(herald_proto::timestamp(std::time::SystemTime::now())),
            body: Some(Body::DeploymentLogs(logs)),
            ..Event::default()
        })
    }

    #[test]
    fn the_spliced_message_decodes_as_the_filtered_one() {
        for (logs, recovered) in [
            (chunk(1..=3, false), true),
            (chunk(10..=10, true), false),
            (chunk(1..=500, false), true),
        ] {
            let event = shared(42, logs.clone());
            let live = LiveLogs::find(event.subscribe_frame().as_bytes()).expect("a chunk");
            assert_eq!(live.offset, 42);
            assert!(live.has_lines);
            let position = StreamPosition {
                offset: 42,
                epoch: "e1".into(),
            };
            let spliced = live.message(&position, recovered);
            let decoded = DeploymentEvent::decode(spliced.as_bytes().clone()).unwrap();
            let filtered = DeploymentEvent {
                event: Some(deployment_event::Event::Logs(logs)),
                position: Some(position),
                recovered,
            };
            assert_eq!(decoded, filtered);
        }
    }

    #[test]
    fn frames_without_a_chunk_are_left_to_the_filter() {
        let status = SharedEvent::new(Event {
            offset: 3,
            body: Some(Body::DeploymentStatus(Default::default())),
            ..Event::default()
        });
        assert!(LiveLogs::find(status.subscribe_frame().as_bytes()).is_none());
        let json = SharedEvent::new(Event {
            offset: 4,
            r#type: "app.note".into(),
            ..Event::default()
        });
        assert!(LiveLogs::find(json.subscribe_frame().as_bytes()).is_none());
        let empty = shared(
            5,
            DeploymentLogs {
                deployment_id: 7,
                ..DeploymentLogs::default()
            },
        );
        let live = LiveLogs::find(empty.subscribe_frame().as_bytes()).expect("a chunk");
        assert!(!live.has_lines, "no lines and no marker: nothing to show");
        assert!(LiveLogs::find(&Bytes::from_static(&[0x12, 0x05, 0x10])).is_none());
    }
}
