//! A browser-protocol WebSocket to a Herald edge (docs/protocol.md): `auth`, `subscribe`,
//! count every push; when the edge closes the socket or ends the subscription with a
//! reconnect code (`herald_proto::codes::reconnects`, e.g. 3001 slow consumer), reconnect and
//! subscribe with `since`.

use std::{net::IpAddr, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use herald_proto::v1::CloseCode;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::{MAX_RESUME_FAILURES, Outcome, Shared, Tally, backoff};
use crate::{
    net::{self, Socket, Target},
    wire,
};

/// How long `auth` plus `subscribe` may take to be answered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const AUTH_ID: u64 = 1;
const SUBSCRIBE_ID: u64 = 2;

/// The `subscribe` result.
#[derive(Debug)]
struct Subscribed {
    top: u64,
    epoch: String,
    recovered: bool,
}

/// Why a socket could not be opened.
#[derive(Debug)]
enum OpenError {
    /// The edge answered an error frame or closed with a code.
    Refused { label: String, reconnect: bool },
    /// The connection failed.
    Transport(String),
}

impl OpenError {
    fn describe(&self) -> String {
        match self {
            OpenError::Refused { label, .. } => label.clone(),
            OpenError::Transport(message) => message.clone(),
        }
    }
}

/// `3001` → `3001 CLOSE_CODE_SLOW_CONSUMER`; reconnect when the code's range says so.
fn close_label(code: u16) -> (String, bool) {
    let name = CloseCode::try_from(i32::from(code))
        .map(|code| code.as_str_name().to_owned())
        .unwrap_or_default();
    let reconnect = herald_proto::codes::reconnects(i32::from(code));
    (
        format!("ws close {code} {name}").trim_end().to_owned(),
        reconnect,
    )
}

/// Opens a socket, authenticates, subscribes (with `since` when resuming).
async fn open(
    shared: &Shared,
    target: &Target,
    source: Option<IpAddr>,
    topic: &str,
    since: Option<(u64, &str)>,
) -> Result<(Socket, Subscribed), OpenError> {
    // The semaphore is never closed.
    let _permit = shared
        .opening
        .acquire()
        .await
        .map_err(|_| OpenError::Transport("the run is over".to_owned()))?;
    let mut socket = net::connect(target, source)
        .await
        .map_err(OpenError::Transport)?;
    let auth = json!({"id": AUTH_ID, "method": "auth", "params": {"token": shared.token}});
    let mut params = json!({ "topic": topic });
    if let Some((offset, epoch)) = since {
        params["since"] = json!({"offset": offset.to_string(), "epoch": epoch});
    }
    let subscribe = json!({"id": SUBSCRIBE_ID, "method": "subscribe", "params": params});
    // Both at once: the edge holds requests that arrive while `auth` is being verified.
    let sent = async {
        socket.feed(Message::text(auth.to_string())).await?;
        socket.feed(Message::text(subscribe.to_string())).await?;
        socket.flush().await
    };
    sent.await
        .map_err(|e| OpenError::Transport(format!("send: {e}")))?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, subscribed(&mut socket))
        .await
        .unwrap_or_else(|_| {
            Err(OpenError::Transport(
                "`auth` and `subscribe` were not answered in time".to_owned(),
            ))
        })?;
    Ok((socket, answer))
}

/// Reads until the `subscribe` reply.
async fn subscribed(socket: &mut Socket) -> Result<Subscribed, OpenError> {
    loop {
        let text = match socket.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let (label, reconnect) = frame
                    .map_or(("ws close (no code)".to_owned(), true), |f| {
                        close_label(u16::from(f.code))
                    });
                return Err(OpenError::Refused { label, reconnect });
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(OpenError::Transport(format!("read: {error}"))),
            None => {
                return Err(OpenError::Transport(
                    "the edge closed the connection".into(),
                ));
            }
        };
        let Ok(reply) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        if let Some(error) = reply.get("error") {
            let label = format!(
                "{} error: {} {}",
                if reply["id"] == AUTH_ID {
                    "auth"
                } else {
                    "subscribe"
                },
                error["code"].as_str().unwrap_or("?"),
                error["message"].as_str().unwrap_or(""),
            );
            // Rate limits and an unreachable backend pass; anything else is the client's fault.
            let reconnect = matches!(
                error["code"].as_str(),
                Some("unavailable" | "rate_limited" | "resource_exhausted")
            );
            return Err(OpenError::Refused { label, reconnect });
        }
        if reply["id"] == SUBSCRIBE_ID {
            let result = &reply["result"];
            // proto3 JSON leaves out defaults: no offset is 0, no `recovered` is false.
            let position = &result["position"];
            return Ok(Subscribed {
                top: position["offset"]
                    .as_str()
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0),
                epoch: position["epoch"].as_str().unwrap_or_default().to_owned(),
                recovered: result["recovered"].as_bool().unwrap_or(false),
            });
        }
    }
}

/// Runs subscriber `index` on `topic` until `stop` turns true.
pub(crate) async fn run(
    shared: Arc<Shared>,
    index: usize,
    topic_index: usize,
    topic: String,
    target: Arc<Target>,
    source: Option<IpAddr>,
    mut stop: watch::Receiver<bool>,
) -> Outcome {
    let mut tally = Tally::new(&shared, index, topic_index);
    let stopped = stop.wait_for(|stop| *stop);
    tokio::pin!(stopped);
    let mut resuming = false;
    let mut failures = 0u32;

    'sockets: loop {
        let since = resuming.then(|| (tally.last(), tally.epoch().to_owned()));
        let opened = tokio::select! {
            biased;
            _ = &mut stopped => break,
            opened = open(&shared, &target, source, &topic, since.as_ref().map(|(o, e)| (*o, e.as_str()))) => opened,
        };
        let mut socket = match opened {
            Ok((socket, answer)) => {
                if resuming {
                    tally.resubscribed(answer.recovered, answer.top, &answer.epoch);
                } else {
                    tally.subscribed(answer.top, answer.epoch);
                    resuming = true;
                }
                socket
            }
            Err(error) if !resuming => {
                tally.open_failed(error.describe());
                break;
            }
            Err(error) => {
                let reconnect = match &error {
                    OpenError::Refused { label, reconnect } => {
                        tally.close_attempt(label.clone());
                        *reconnect
                    }
                    OpenError::Transport(_) => {
                        tally.close_attempt("ws reconnect failed".to_owned());
                        true
                    }
                };
                failures += 1;
                if !reconnect || failures >= MAX_RESUME_FAILURES {
                    tally.fail(format!("resume failed: {}", error.describe()));
                    break;
                }
                if backoff(failures, index, &mut stopped).await {
                    break;
                }
                continue;
            }
        };

        let received_before = tally.received();
        let (label, reconnect) = loop {
            let message = tokio::select! {
                biased;
                message = socket.next() => message,
                _ = &mut stopped => break 'sockets,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    if text.starts_with("{\"topic\":") {
                        // Presence pushes carry no offset and are skipped.
                        if let Some((offset, sent)) = wire::json_event(text) {
                            tally.event(offset, sent);
                        }
                    } else if text.starts_with("{\"unsubscribed\":") {
                        let code = wire::json_number(text, "\"code\":")
                            .and_then(|c| c.parse::<u16>().ok())
                            .unwrap_or(0);
                        let (label, reconnect) = close_label(code);
                        break (label.replace("ws close", "unsubscribed"), reconnect);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break frame.map_or(("ws close (no code)".to_owned(), true), |f| {
                        close_label(u16::from(f.code))
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break ("ws connection lost".to_owned(), true),
            }
        };
        tally.closed(label.clone());
        if !reconnect {
            tally.fail(format!("socket ended: {label}"));
            break;
        }
        failures = if tally.received() > received_before {
            0
        } else {
            failures + 1
        };
        if failures >= MAX_RESUME_FAILURES {
            tally.fail(format!("gave up resuming: {label}"));
            break;
        }
        if backoff(failures, index, &mut stopped).await {
            break;
        }
    }

    tally.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_name_themselves_and_decide_whether_to_resume() {
        assert_eq!(
            close_label(3001),
            ("ws close 3001 CLOSE_CODE_SLOW_CONSUMER".to_owned(), true)
        );
        assert!(!close_label(3500).1);
        assert_eq!(close_label(1000), ("ws close 1000".to_owned(), false));
    }
}
