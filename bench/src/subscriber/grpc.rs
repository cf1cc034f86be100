//! A `herald.v1.Rooms/Subscribe` stream: open, wait for `subscribed`, count every event,
//! resume with `since` when the server ends the stream with a reconnect close code.

use std::sync::Arc;

use herald_proto::{
    codes::{CLOSE_CODE_TRAILER, OFFSET_TRAILER},
    v1::{CloseCode, StreamPosition, SubscribeRequest, Subscribed},
};
use tokio::sync::watch;
use tonic::{Code, Request, Status, codec::Streaming, transport::Channel};

use super::{MAX_RESUME_FAILURES, Outcome, Shared, Tally, backoff};
use crate::wire::{self, Frame};

/// How a stream ended, read from its status and trailers.
fn classify(status: &Status) -> (String, bool) {
    let close = status
        .metadata()
        .get(CLOSE_CODE_TRAILER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    match close {
        Some(name) => {
            let reconnect =
                CloseCode::from_str_name(&name).is_some_and(CloseCode::should_reconnect);
            (name, reconnect)
        }
        // No close code: a transport failure (connection reset, GOAWAY) is worth a retry.
        None => (
            format!("{:?} (no close code)", status.code()),
            matches!(status.code(), Code::Unavailable | Code::Unknown),
        ),
    }
}

async fn open(
    shared: &Shared,
    channel: &Channel,
    topic: &str,
    since: Option<StreamPosition>,
) -> Result<(Streaming<Frame>, Subscribed), Status> {
    // The semaphore is never closed.
    let _permit = shared
        .opening
        .acquire()
        .await
        .map_err(|_| Status::cancelled("the run is over"))?;
    let mut request = Request::new(SubscribeRequest {
        topic: topic.to_owned(),
        since,
    });
    request
        .metadata_mut()
        .insert("authorization", shared.bearer.clone());
    let mut stream = wire::subscribe(channel.clone(), request).await?;
    match stream.message().await? {
        Some(Frame {
            subscribed: Some(subscribed),
            ..
        }) => Ok((stream, subscribed)),
        Some(_) => Err(Status::internal(
            "contract violation: the first frame of the stream was not `subscribed`",
        )),
        None => Err(Status::unavailable("the stream ended before `subscribed`")),
    }
}

/// Runs subscriber `index` on `topic` until `stop` turns true.
pub(crate) async fn run(
    shared: Arc<Shared>,
    index: usize,
    topic_index: usize,
    topic: String,
    channel: Channel,
    mut stop: watch::Receiver<bool>,
) -> Outcome {
    let mut tally = Tally::new(&shared, index, topic_index);
    let stopped = stop.wait_for(|stop| *stop);
    tokio::pin!(stopped);
    let mut since: Option<StreamPosition> = None;
    let mut failures = 0u32;

    'streams: loop {
        let opened = tokio::select! {
            biased;
            _ = &mut stopped => break,
            opened = open(&shared, &channel, &topic, since.clone()) => opened,
        };
        let mut stream = match opened {
            Ok((stream, subscribed)) => {
                let top = subscribed.position.unwrap_or_default();
                if since.is_none() {
                    tally.subscribed(top.offset, top.epoch);
                } else {
                    tally.resubscribed(subscribed.recovered, top.offset, &top.epoch);
                }
                stream
            }
            Err(status) if since.is_none() => {
                tally.open_failed(describe(&status));
                break;
            }
            Err(status) => {
                let (label, reconnect) = classify(&status);
                tally.close_attempt(label);
                failures += 1;
                if !reconnect || failures >= MAX_RESUME_FAILURES {
                    tally.fail(format!("resume failed: {}", describe(&status)));
                    break;
                }
                if backoff(failures, index, &mut stopped).await {
                    break;
                }
                continue;
            }
        };

        let received_before = tally.received();
        let status = loop {
            let message = tokio::select! {
                biased;
                message = stream.message() => message,
                _ = &mut stopped => break 'streams,
            };
            match message {
                Ok(Some(Frame {
                    event: Some(event), ..
                })) => tally.event(event.offset, event.sent_ns()),
                Ok(Some(_)) => {} // presence, or a frame kind this benchmark does not know
                Ok(None) => {
                    break Status::unavailable("the server ended the stream without a status");
                }
                Err(status) => break status,
            }
        };

        let (label, reconnect) = classify(&status);
        tally.closed(label);
        if let Some(offset) = status
            .metadata()
            .get(OFFSET_TRAILER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<u64>().ok())
            && offset != tally.last()
        {
            tally.trailer_mismatch();
        }
        if !reconnect {
            tally.fail(format!("stream ended: {}", describe(&status)));
            break;
        }
        failures = if tally.received() > received_before {
            0
        } else {
            failures + 1
        };
        if failures >= MAX_RESUME_FAILURES {
            tally.fail(format!("gave up resuming: {}", describe(&status)));
            break;
        }
        if backoff(failures, index, &mut stopped).await {
            break;
        }
        since = Some(StreamPosition {
            offset: tally.last(),
            epoch: tally.epoch().to_owned(),
        });
    }

    tally.finish()
}

fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_decide_whether_to_resume() {
        let slow = {
            let mut status = Status::resource_exhausted("slow consumer");
            status.metadata_mut().insert(
                CLOSE_CODE_TRAILER,
                "CLOSE_CODE_SLOW_CONSUMER".parse().unwrap(),
            );
            status
        };
        assert_eq!(classify(&slow), ("CLOSE_CODE_SLOW_CONSUMER".into(), true));
        let denied = {
            let mut status = Status::permission_denied("no");
            status.metadata_mut().insert(
                CLOSE_CODE_TRAILER,
                "CLOSE_CODE_PERMISSION_DENIED".parse().unwrap(),
            );
            status
        };
        assert!(!classify(&denied).1);
        assert!(classify(&Status::unavailable("reset")).1);
    }
}
