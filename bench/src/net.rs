//! Client WebSockets, many of them: each TCP connection is bound to one of several loopback
//! source addresses, because one source address has only ~28,000 ephemeral ports
//! (`ip_local_port_range`) and tens of thousands of sockets would exhaust them.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{client::IntoClientRequest, http::Uri, protocol::WebSocketConfig},
};

use crate::error::BenchError;

/// A client WebSocket.
pub(crate) type Socket = WebSocketStream<TcpStream>;

/// How long a TCP connect plus the HTTP upgrade may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Read buffer per socket: frames are a few hundred bytes; tungstenite's default (128 KiB,
/// allocated eagerly) would cost gigabytes across tens of thousands of sockets.
const READ_BUFFER: usize = 8 * 1024;

/// A WebSocket server to connect to: its URL and the address it resolved to once.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
}

impl Target {
    /// Parses `ws://HOST:PORT/PATH` and resolves HOST now, so opening thousands of sockets
    /// asks the resolver nothing.
    pub(crate) async fn resolve(url: &str) -> Result<Target, BenchError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| BenchError::new(format!("`{url}` is not a URL: {e}")))?;
        if uri.scheme_str() != Some("ws") {
            return Err(BenchError::new(format!(
                "`{url}`: only ws:// URLs are supported"
            )));
        }
        let host = uri
            .host()
            .ok_or_else(|| BenchError::new(format!("`{url}` has no host")))?;
        let port = uri.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| BenchError::new(format!("cannot resolve `{host}`: {e}")))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| BenchError::new(format!("`{host}` has no IPv4 address")))?;
        Ok(Target {
            url: url.to_owned(),
            addr,
        })
    }
}

/// Parses `127.0.0.2-127.0.0.40` (an inclusive range) or `127.0.0.2,127.0.0.3` (a list), or
/// a mix: `127.0.0.2-127.0.0.9,127.0.0.20`.
pub(crate) fn parse_source_ips(spec: &str) -> Result<Vec<IpAddr>, BenchError> {
    let address = |text: &str| {
        text.trim().parse::<Ipv4Addr>().map_err(|_| {
            BenchError::new(format!(
                "--source-ips: `{text}` is not an IPv4 address (give e.g. 127.0.0.2-127.0.0.40)"
            ))
        })
    };
    let mut ips = Vec::new();
    for part in spec.split(',').filter(|p| !p.trim().is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (u32::from(address(first)?), u32::from(address(last)?));
                if first > last {
                    return Err(BenchError::new(format!(
                        "--source-ips: the range `{part}` is empty"
                    )));
                }
                ips.extend((first..=last).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))));
            }
            None => ips.push(IpAddr::V4(address(part)?)),
        }
    }
    if ips.is_empty() {
        return Err(BenchError::new("--source-ips: no address given"));
    }
    Ok(ips)
}

/// Opens a WebSocket to `target` from `source` (any local address when `None`).
pub(crate) async fn connect(target: &Target, source: Option<IpAddr>) -> Result<Socket, String> {
    let opening = async {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = socket
            .connect(target.addr)
            .await
            .map_err(|e| format!("connect {} from {source:?}: {e}", target.addr))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("nodelay: {e}"))?;
        let request = target
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("request: {e}"))?;
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0);
        let (socket, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|e| format!("upgrade {}: {e}", target.url))?;
        Ok(socket)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, opening)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no WebSocket to {} within {CONNECT_TIMEOUT:?}",
                target.url
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ips_are_ranges_or_lists() {
        let ips = parse_source_ips("127.0.0.2-127.0.0.4,127.0.0.9").unwrap();
        let text: Vec<String> = ips.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]);
        assert!(parse_source_ips("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_source_ips("localhost").is_err());
        assert!(parse_source_ips("").is_err());
    }
}
