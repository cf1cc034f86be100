//! The few Engine.IO v4 / Socket.IO v5 packets this benchmark speaks, over WebSocket only
//! (`/socket.io/?EIO=4&transport=websocket`), spoken directly rather than through a client
//! library so that the load generator costs the same per frame for Socket.IO as for Herald.
//!
//! ```text
//!  server → `0{"sid",…,"pingInterval"}`   Engine.IO open
//!  client → `40` or `40{auth}`           Socket.IO connect to the main namespace
//!  server → `40{"sid"}`                  connected (`44{…}`: refused)
//!  client → `42N["join","room"]`         an event with ack id N
//!  server → `43N[{"offset":…}]`          its ack
//!  server → `42["event",{…}]`            a broadcast
//!  server → `2`  client → `3`            Engine.IO ping / pong (the server pings)
//!  server → `41` or `1`                  disconnect / close
//! ```

use std::{net::IpAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    net::{self, Socket, Target},
    wire,
};

/// How long the handshake, a join or a publish acknowledgement may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a received text packet means to the benchmark.
#[derive(Debug, PartialEq)]
pub(crate) enum Packet<'a> {
    /// Engine.IO ping: answer [`PONG`].
    Ping,
    /// A broadcast `event` with its offset and send time.
    Event(u64, Option<u64>),
    /// The acknowledgement of our event `id`, with the `offset` it carries.
    Ack(u64, Option<u64>),
    /// The server disconnected us (Socket.IO `41`, Engine.IO `1`).
    Disconnect,
    /// Anything else (open, connect, other events).
    Other(&'a str),
}

pub(crate) const PONG: &str = "3";

pub(crate) fn parse(text: &str) -> Packet<'_> {
    match text.as_bytes() {
        b"2" => Packet::Ping,
        b"41" | b"1" => Packet::Disconnect,
        [b'4', b'2', b'[', ..] => match wire::json_event(text) {
            Some((offset, sent)) if text.starts_with("42[\"event\"") => Packet::Event(offset, sent),
            _ => Packet::Other(text),
        },
        [b'4', b'3', ..] => {
            let digits = text[2..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len() - 2);
            match text[2..2 + digits].parse() {
                Ok(id) => Packet::Ack(
                    id,
                    wire::json_number(text, wire::OFFSET_FIELD).and_then(|n| n.parse().ok()),
                ),
                Err(_) => Packet::Other(text),
            }
        }
        _ => Packet::Other(text),
    }
}

/// `42N["name",payload]`: an event with acknowledgement id `ack`.
pub(crate) fn emit(ack: u64, name: &str, payload: &str) -> String {
    format!("42{ack}[\"{name}\",{payload}]")
}

/// Opens a socket and connects to the main namespace, with `auth` as the CONNECT payload.
pub(crate) async fn connect(
    target: &Target,
    source: Option<IpAddr>,
    auth: Option<&str>,
) -> Result<Socket, String> {
    let mut socket = net::connect(target, source).await?;
    let opened = async {
        let open = next_text(&mut socket).await?;
        if !open.starts_with('0') {
            return Err(format!("expected the Engine.IO open packet, got `{open}`"));
        }
        let connect = match auth {
            Some(auth) => format!("40{auth}"),
            None => "40".to_owned(),
        };
        socket
            .send(Message::text(connect))
            .await
            .map_err(|e| format!("send: {e}"))?;
        loop {
            let answer = next_text(&mut socket).await?;
            match answer.as_bytes() {
                [b'4', b'0', ..] => return Ok(()),
                [b'4', b'4', ..] => return Err(format!("connect refused: {answer}")),
                b"2" => socket
                    .send(Message::text(PONG))
                    .await
                    .map_err(|e| format!("send: {e}"))?,
                _ => {}
            }
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, opened)
        .await
        .unwrap_or_else(|_| Err("no Socket.IO connect answer in time".to_owned()))?;
    Ok(socket)
}

/// Emits `name` with ack id `ack` and waits for its acknowledgement, answering pings and
/// passing any broadcast to `on_event`. Returns the `offset` the ack carries.
pub(crate) async fn call(
    socket: &mut Socket,
    ack: u64,
    name: &str,
    payload: &str,
    mut on_event: impl FnMut(u64, Option<u64>),
) -> Result<u64, String> {
    socket
        .send(Message::text(emit(ack, name, payload)))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let answered = async {
        loop {
            let text = next_text(socket).await?;
            match parse(&text) {
                Packet::Ack(id, offset) if id == ack => {
                    return offset.ok_or_else(|| format!("ack without an offset: {text}"));
                }
                Packet::Ping => socket
                    .send(Message::text(PONG))
                    .await
                    .map_err(|e| format!("send: {e}"))?,
                Packet::Event(offset, sent) => on_event(offset, sent),
                Packet::Disconnect => return Err("the server disconnected".to_owned()),
                Packet::Ack(..) | Packet::Other(_) => {}
            }
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, answered)
        .await
        .unwrap_or_else(|_| Err(format!("no ack to `{name}` in time")))
}

/// The next text frame; pings at the WebSocket level are answered by tungstenite.
async fn next_text(socket: &mut Socket) -> Result<String, String> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("closed by the server: {frame:?}"));
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(format!("read: {error}")),
            None => return Err("the connection ended".to_owned()),
        }
    }
}

/// A publishing connection: connects with the publish key and emits `publish` with an ack.
#[derive(Debug)]
pub(crate) struct Publisher {
    target: Target,
    auth: String,
    socket: Option<Socket>,
    next_ack: u64,
}

impl Publisher {
    pub(crate) fn new(target: Target, publish_key: &str) -> Publisher {
        Publisher {
            target,
            auth: serde_json::json!({ "key": publish_key }).to_string(),
            socket: None,
            next_ack: 0,
        }
    }

    /// Publishes `data` to `topic`; returns the room offset the server gave it. A failed
    /// publish drops the connection; the next one reconnects.
    pub(crate) async fn publish(
        &mut self,
        topic: &str,
        event_type: &str,
        data: &serde_json::Value,
    ) -> Result<u64, String> {
        if self.socket.is_none() {
            self.socket = Some(connect(&self.target, None, Some(&self.auth)).await?);
        }
        let Some(socket) = self.socket.as_mut() else {
            return Err("not connected".to_owned());
        };
        self.next_ack += 1;
        let payload = serde_json::json!({ "topic": topic, "type": event_type, "data": data });
        let result = call(
            socket,
            self.next_ack,
            "publish",
            &payload.to_string(),
            |_, _| {},
        )
        .await;
        if result.is_err() {
            self.socket = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_recognised() {
        assert_eq!(parse("2"), Packet::Ping);
        assert_eq!(parse("41"), Packet::Disconnect);
        assert_eq!(parse("4312[{\"offset\":40}]"), Packet::Ack(12, Some(40)));
        assert_eq!(
            parse(r#"42["event",{"topic":"room:a","offset":5,"data":{"sent_ns":1000}}]"#),
            Packet::Event(5, Some(1000))
        );
        assert!(matches!(
            parse(r#"42["other",{"offset":5}]"#),
            Packet::Other(_)
        ));
        assert!(matches!(parse("0{\"sid\":\"x\"}"), Packet::Other(_)));
        assert_eq!(emit(3, "join", "\"room:a\""), "423[\"join\",\"room:a\"]");
    }
}
