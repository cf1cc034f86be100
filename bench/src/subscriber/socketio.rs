//! A Socket.IO client socket: connect, `join` the room (its ack carries the room's offset),
//! count every `event`. Socket.IO keeps no history, so a socket the server drops reconnects
//! and re-joins at the current offset; what it missed is counted as lost.

use std::{net::IpAddr, sync::Arc};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::{MAX_RESUME_FAILURES, Outcome, Shared, Tally, backoff};
use crate::{
    engineio::{self, Packet},
    net::{Socket, Target},
};

/// Ack id of the `join`.
const JOIN_ACK: u64 = 0;

async fn open(
    shared: &Shared,
    target: &Target,
    source: Option<IpAddr>,
    topic: &str,
) -> Result<(Socket, u64), String> {
    // The semaphore is never closed.
    let _permit = shared
        .opening
        .acquire()
        .await
        .map_err(|_| "the run is over".to_owned())?;
    let mut socket = engineio::connect(target, source, None).await?;
    let room = serde_json::Value::from(topic).to_string();
    let offset = engineio::call(&mut socket, JOIN_ACK, "join", &room, |_, _| {}).await?;
    Ok((socket, offset))
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
    let mut first = true;
    let mut failures = 0u32;

    'sockets: loop {
        let opened = tokio::select! {
            biased;
            _ = &mut stopped => break,
            opened = open(&shared, &target, source, &topic) => opened,
        };
        let mut socket = match opened {
            Ok((socket, offset)) if first => {
                first = false;
                tally.subscribed(offset, String::new());
                socket
            }
            Ok((socket, offset)) => {
                tally.resubscribed(false, offset, "");
                socket
            }
            Err(error) if first => {
                tally.open_failed(error);
                break;
            }
            Err(error) => {
                tally.close_attempt(format!("socket.io reconnect failed: {error}"));
                failures += 1;
                if failures >= MAX_RESUME_FAILURES {
                    tally.fail(format!("gave up reconnecting: {error}"));
                    break;
                }
                if backoff(failures, index, &mut stopped).await {
                    break;
                }
                continue;
            }
        };

        let received_before = tally.received();
        let ended = loop {
            let message = tokio::select! {
                biased;
                message = socket.next() => message,
                _ = &mut stopped => break 'sockets,
            };
            match message {
                Some(Ok(Message::Text(text))) => match engineio::parse(text.as_str()) {
                    Packet::Event(offset, sent) => tally.event(offset, sent),
                    Packet::Ping => {
                        if socket.send(Message::text(engineio::PONG)).await.is_err() {
                            break "socket.io connection lost".to_owned();
                        }
                    }
                    Packet::Disconnect => break "socket.io disconnect".to_owned(),
                    Packet::Ack(..) | Packet::Other(_) => {}
                },
                Some(Ok(Message::Close(frame))) => {
                    break format!(
                        "websocket close {}",
                        frame.map_or("(no code)".to_owned(), |f| u16::from(f.code).to_string())
                    );
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break "socket.io connection lost".to_owned(),
            }
        };
        tally.closed(ended);
        failures = if tally.received() > received_before {
            0
        } else {
            failures + 1
        };
        if failures >= MAX_RESUME_FAILURES {
            tally.fail("gave up reconnecting".to_owned());
            break;
        }
        if backoff(failures, index, &mut stopped).await {
            break;
        }
    }

    tally.finish()
}
