//! Command-line options, parsed once into a [`Plan`] of typed, checked values.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{ArgGroup, Parser, ValueEnum};

use crate::{error::BenchError, net};

/// Streams one HTTP/2 connection carries by default.
const STREAMS_PER_CONNECTION: usize = 500;
/// The server's default `grpc.max_concurrent_streams`; more streams per connection would queue.
const SERVER_MAX_STREAMS_PER_CONNECTION: usize = 10_000;
/// Herald's edge, as `herald serve` starts it.
const DEFAULT_WS_URL: &str = "ws://127.0.0.1:8080/ws";
/// The peer in bench/peers/socketio, started with `node server.js --port 3000`.
const DEFAULT_SOCKETIO_URL: &str = "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket";

/// How subscribers reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Protocol {
    /// `herald.v1.Rooms/Subscribe` streams, many per HTTP/2 connection.
    Grpc,
    /// Herald's browser protocol: one WebSocket per subscriber to an edge (`--ws-url`);
    /// publishing still goes through gRPC `Rooms/Publish` (`--server`).
    Ws,
    /// Socket.IO 4 (bench/peers/socketio): one socket per subscriber joining a room;
    /// publishing is an acknowledged `publish` event.
    Socketio,
}

impl Protocol {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Ws => "ws",
            Protocol::Socketio => "socketio",
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for Herald (gRPC or the browser WebSocket protocol) and, for \
             comparison, Socket.IO: many subscribers, paced or saturating publishers; reports \
             deliveries/s, publish-to-receive latency, loss and memory.",
    long_about = "Load generator for Herald and, for comparison, Socket.IO.\n\n\
        Opens --subscribers subscriptions spread round-robin over --topics topics \
        (`room:bench-0` …): gRPC streams shared by --connections HTTP/2 connections \
        (--protocol grpc), or one WebSocket each to Herald's edge (--protocol ws) or to the \
        Socket.IO peer in bench/peers/socketio (--protocol socketio). It waits until every \
        subscription is answered (the time it takes gives connects+subscribes per second), \
        then publishes (--rate or --saturate) for --warmup + --duration seconds and measures \
        during the last --duration seconds. Every subscriber checks offsets (lost, duplicated, \
        reordered) and resumes with `since` when Herald ends its subscription (slow consumer, \
        shutdown).\n\n\
        Examples:\n  herald serve --data-dir /tmp/benchdata &\n  \
        herald-bench --data-dir /tmp/benchdata --subscribers 10000 --rate 100 --server-pid $!\n  \
        herald-bench --data-dir /tmp/benchdata --protocol ws --source-ips 127.0.0.2-127.0.0.40 \
        --subscribers 10000 --rate 100 --server-pid $!\n  \
        node bench/peers/socketio/server.js --port 3000 &\n  \
        herald-bench --protocol socketio --source-ips 127.0.0.2-127.0.0.40 \
        --subscribers 10000 --rate 100 --server-pid $!\n\n\
        Across two backends sharing a Redis broker (bench/cluster.sh starts them): subscribers \
        on one, publishers on the other, Redis's CPU beside the servers':\n  \
        herald-bench --secret $SECRET --server http://127.0.0.1:50071 \
        --publish-server http://127.0.0.1:50072 --server-pid $A --watch-pid backend-b=$B \
        --watch-pid redis=$R --subscribers 10000 --rate 100\n\n\
        The last line of output is one JSON object with every figure."
)]
#[command(group(ArgGroup::new("mode").required(true).args(["rate", "saturate", "idle"])))]
#[command(group(ArgGroup::new("credentials").args(["token", "secret", "data_dir"])))]
pub(crate) struct Args {
    /// How subscribers connect.
    #[arg(long, value_enum, default_value_t = Protocol::Grpc)]
    protocol: Protocol,

    /// The Herald gRPC server (subscribers with --protocol grpc, publishers with grpc and ws).
    #[arg(long, default_value = "http://127.0.0.1:50051", value_name = "URL")]
    server: String,

    /// Publish to this Herald gRPC server instead of --server: another backend of the same
    /// cluster (a shared --broker), so every event crosses the broker to reach the subscribers.
    #[arg(long, value_name = "URL")]
    publish_server: Option<String>,

    /// WebSocket endpoint(s) for --protocol ws or socketio; repeat it to spread sockets
    /// round-robin over several edges [default: ws://127.0.0.1:8080/ws for ws,
    /// ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket for socketio]
    #[arg(long = "ws-url", value_name = "URL")]
    ws_urls: Vec<String>,

    /// Local addresses WebSockets are opened from, round-robin, e.g. 127.0.0.2-127.0.0.40:
    /// one source address has only ~28,000 ephemeral ports.
    #[arg(long, value_name = "IPS")]
    source_ips: Option<String>,

    /// The Socket.IO peer's publish key (its PUBLISH_KEY).
    #[arg(long, default_value = "bench", value_name = "KEY")]
    publish_key: String,

    /// A token to present; it needs rights to subscribe and publish on the bench topics.
    #[arg(long, value_name = "JWT")]
    token: Option<String>,

    /// Mint a `service` token with this HS256 secret (the server's auth.hs256_secret).
    #[arg(long, value_name = "SECRET")]
    secret: Option<String>,

    /// Mint a `service` token with the development key in DIR/dev-signing-key, like
    /// `herald token` [default: ./herald-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Subscriber streams to open.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    subscribers: usize,

    /// Topics the subscribers are spread over, round-robin.
    #[arg(long, default_value_t = 1, value_name = "T")]
    topics: usize,

    /// HTTP/2 connections the gRPC streams share [default: subscribers / 500, rounded up]
    #[arg(long, value_name = "C")]
    connections: Option<usize>,

    /// Publish R events per second in total, round-robin over the topics.
    #[arg(long, value_name = "R")]
    rate: Option<f64>,

    /// Publish as fast as the server acknowledges, with --publishers publishes in flight.
    #[arg(long)]
    saturate: bool,

    /// Only open the streams, hold them for --duration, and report memory per stream.
    #[arg(long)]
    idle: bool,

    /// Concurrent publish loops: the most publishes in flight.
    #[arg(long, default_value_t = 16, value_name = "P")]
    publishers: usize,

    /// HTTP/2 connections the publishers share.
    #[arg(long, default_value_t = 1, value_name = "C")]
    publish_connections: usize,

    /// Closed loop: hold a topic's publishes while its slowest subscriber is more than this
    /// many events behind the last acknowledged offset [default: open loop]
    #[arg(long, value_name = "EVENTS")]
    max_lag: Option<u64>,

    /// Seconds of measurement (with --idle: seconds the streams are held).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    duration: f64,

    /// Seconds of publishing before measurement starts.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    warmup: f64,

    /// Seconds to wait, after publishing stops, for subscribers to receive every event.
    #[arg(long, default_value_t = 15.0, value_name = "SECS")]
    drain_timeout: f64,

    /// The most streams being opened (or resumed) at once.
    #[arg(long, default_value_t = 500, value_name = "K")]
    open_concurrency: usize,

    /// Seconds allowed for opening every stream.
    #[arg(long, default_value_t = 120.0, value_name = "SECS")]
    open_timeout: f64,

    /// The server's process id: its resident memory (VmRSS) and CPU time are read from /proc.
    /// Repeat it (or give PID,PID) to add up several processes, e.g. an edge and its backend.
    #[arg(long = "server-pid", value_name = "PID", value_delimiter = ',')]
    server_pids: Vec<u32>,

    /// Another process whose CPU during the window is reported beside the server's, under
    /// NAME, e.g. `--watch-pid redis=1234 --watch-pid backend-b=1240` (repeatable).
    #[arg(long = "watch-pid", value_name = "NAME=PID", value_parser = parse_watch_pid)]
    watch_pids: Vec<WatchPid>,

    /// Topic names are PREFIX-0 … PREFIX-{T-1}.
    #[arg(long, default_value = "room:bench", value_name = "PREFIX")]
    topic_prefix: String,

    /// A name for this run in the report [default: derived from the options]
    #[arg(long, value_name = "NAME")]
    scenario: Option<String>,
}

/// A process named by `--watch-pid NAME=PID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WatchPid {
    pub(crate) name: String,
    pub(crate) pid: u32,
}

/// Parses `NAME=PID`: a non-empty name without `=` and a process id > 0.
fn parse_watch_pid(spec: &str) -> Result<WatchPid, String> {
    let Some((name, pid)) = spec.split_once('=') else {
        return Err(format!("`{spec}`: give NAME=PID, e.g. redis=1234"));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{spec}`: the name before `=` is empty"));
    }
    match pid.trim().parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(WatchPid {
            name: name.to_owned(),
            pid,
        }),
        _ => Err(format!(
            "`{spec}`: `{pid}` is not a process id (a number > 0)"
        )),
    }
}

/// Where the bearer token comes from.
#[derive(Debug, Clone)]
pub(crate) enum Credentials {
    Token(String),
    Secret(String),
    DataDir(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    /// Publishes per second, in total.
    Rate(f64),
    Saturate,
    Idle,
}

/// A checked run description.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) protocol: Protocol,
    pub(crate) server: String,
    /// Where publishers send `Rooms/Publish`: `--publish-server`, else `server`.
    pub(crate) publish_server: String,
    pub(crate) ws_urls: Vec<String>,
    pub(crate) source_ips: Vec<IpAddr>,
    pub(crate) publish_key: String,
    pub(crate) credentials: Credentials,
    pub(crate) subscribers: usize,
    pub(crate) topics: Vec<String>,
    pub(crate) connections: usize,
    pub(crate) mode: Mode,
    pub(crate) publishers: usize,
    pub(crate) publish_connections: usize,
    pub(crate) max_lag: Option<u64>,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) open_concurrency: usize,
    pub(crate) open_timeout: Duration,
    pub(crate) server_pids: Vec<u32>,
    pub(crate) watch_pids: Vec<WatchPid>,
    pub(crate) scenario: String,
}

impl Plan {
    /// The topic index of subscriber `index`.
    pub(crate) fn topic_of(&self, index: usize) -> usize {
        index % self.topics.len()
    }
}

fn seconds(flag: &str, value: f64) -> Result<Duration, BenchError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| BenchError::new(format!("--{flag} {value}: give a number of seconds ≥ 0")))
}

fn at_least_one(flag: &str, value: usize) -> Result<usize, BenchError> {
    if value == 0 {
        return Err(BenchError::new(format!("--{flag} must be at least 1")));
    }
    Ok(value)
}

impl Args {
    pub(crate) fn into_plan(self) -> Result<Plan, BenchError> {
        let subscribers = at_least_one("subscribers", self.subscribers)?;
        let topic_count = at_least_one("topics", self.topics)?;
        let publishers = at_least_one("publishers", self.publishers)?;
        let publish_connections = at_least_one("publish-connections", self.publish_connections)?;
        let open_concurrency = at_least_one("open-concurrency", self.open_concurrency)?;
        let connections = match self.connections {
            Some(c) => at_least_one("connections", c)?.min(subscribers),
            None => subscribers.div_ceil(STREAMS_PER_CONNECTION),
        };
        if subscribers.div_ceil(connections) > SERVER_MAX_STREAMS_PER_CONNECTION {
            eprintln!(
                "warning: {} streams per connection exceed the server's default limit of \
                 {SERVER_MAX_STREAMS_PER_CONNECTION} (grpc.max_concurrent_streams); raise --connections",
                subscribers.div_ceil(connections)
            );
        }
        let mode = match (self.rate, self.saturate, self.idle) {
            (Some(rate), false, false) if rate.is_finite() && rate > 0.0 => Mode::Rate(rate),
            (Some(rate), false, false) => {
                return Err(BenchError::new(format!(
                    "--rate {rate}: give a number of publishes per second > 0"
                )));
            }
            (None, true, false) => Mode::Saturate,
            (None, false, true) => Mode::Idle,
            // clap's `mode` group makes exactly one of them present.
            _ => {
                return Err(BenchError::new(
                    "choose one of --rate R, --saturate, --idle",
                ));
            }
        };
        if self.publish_server.is_some() && self.protocol == Protocol::Socketio {
            return Err(BenchError::new(
                "--publish-server is for Herald (grpc, ws); the Socket.IO peer is published to over its sockets",
            ));
        }
        let mut names = std::collections::HashSet::new();
        if let Some(twice) = self.watch_pids.iter().find(|w| !names.insert(&w.name)) {
            return Err(BenchError::new(format!(
                "--watch-pid {}: the name is given twice",
                twice.name
            )));
        }
        if let Some(0) = self.max_lag {
            return Err(BenchError::new("--max-lag must be at least 1"));
        }
        let credentials = match (self.token, self.secret, self.data_dir) {
            (Some(token), _, _) => Credentials::Token(token),
            (None, Some(secret), _) => Credentials::Secret(secret),
            (None, None, Some(dir)) => Credentials::DataDir(dir),
            (None, None, None) => Credentials::DataDir(PathBuf::from("herald-data")),
        };
        let topics: Vec<String> = (0..topic_count)
            .map(|i| format!("{}-{i}", self.topic_prefix))
            .collect();
        let ws_urls = match (self.protocol, self.ws_urls.is_empty()) {
            (Protocol::Grpc, _) | (_, false) => self.ws_urls,
            (Protocol::Ws, true) => vec![DEFAULT_WS_URL.to_owned()],
            (Protocol::Socketio, true) => vec![DEFAULT_SOCKETIO_URL.to_owned()],
        };
        let source_ips = match &self.source_ips {
            Some(spec) => net::parse_source_ips(spec)?,
            None => Vec::new(),
        };
        let protocol = self.protocol;
        let scenario = self.scenario.unwrap_or_else(|| {
            let what = match mode {
                Mode::Rate(rate) => format!("{rate} publishes/s"),
                Mode::Saturate => format!("saturate ({publishers} in flight)"),
                Mode::Idle => "idle".to_owned(),
            };
            format!(
                "{}: {subscribers} {}, {topic_count} topic{}, {what}",
                protocol.name(),
                if protocol == Protocol::Grpc {
                    "streams"
                } else {
                    "sockets"
                },
                if topic_count == 1 { "" } else { "s" }
            )
        });
        Ok(Plan {
            protocol,
            publish_server: self.publish_server.unwrap_or_else(|| self.server.clone()),
            server: self.server,
            ws_urls,
            source_ips,
            publish_key: self.publish_key,
            credentials,
            subscribers,
            topics,
            connections,
            mode,
            publishers,
            publish_connections,
            max_lag: self.max_lag,
            duration: seconds("duration", self.duration)?,
            warmup: seconds("warmup", self.warmup)?,
            drain_timeout: seconds("drain-timeout", self.drain_timeout)?,
            open_concurrency,
            open_timeout: seconds("open-timeout", self.open_timeout)?,
            server_pids: self.server_pids,
            watch_pids: self.watch_pids,
            scenario,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Result<Plan, BenchError> {
        let mut argv = vec!["herald-bench"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv)
            .map_err(BenchError::new)?
            .into_plan()
    }

    #[test]
    fn connections_default_to_one_per_five_hundred_streams() {
        let plan = plan(&["--subscribers", "10001", "--rate", "10"]).unwrap();
        assert_eq!(plan.connections, 21);
        assert_eq!(plan.topics, vec!["room:bench-0".to_owned()]);
    }

    #[test]
    fn subscribers_are_spread_round_robin_over_topics() {
        let plan = plan(&["--subscribers", "10", "--topics", "3", "--saturate"]).unwrap();
        assert_eq!(plan.topic_of(0), 0);
        assert_eq!(plan.topic_of(4), 1);
        assert_eq!(plan.topics[2], "room:bench-2");
    }

    #[test]
    fn a_mode_is_required_and_modes_exclude_each_other() {
        assert!(plan(&["--subscribers", "10"]).is_err());
        assert!(plan(&["--rate", "5", "--saturate"]).is_err());
        assert!(plan(&["--rate", "0"]).is_err());
    }

    #[test]
    fn websocket_protocols_default_to_the_local_edge_or_peer() {
        let ws = plan(&["--protocol", "ws", "--idle"]).unwrap();
        assert_eq!(ws.ws_urls, [DEFAULT_WS_URL]);
        let sio = plan(&["--protocol", "socketio", "--idle"]).unwrap();
        assert_eq!(sio.ws_urls, [DEFAULT_SOCKETIO_URL]);
        let two = plan(&[
            "--protocol",
            "ws",
            "--idle",
            "--ws-url",
            "ws://a:1/ws",
            "--ws-url",
            "ws://b:2/ws",
            "--source-ips",
            "127.0.0.2-127.0.0.3",
            "--server-pid",
            "10,11",
        ])
        .unwrap();
        assert_eq!(two.ws_urls.len(), 2);
        assert_eq!(two.source_ips.len(), 2);
        assert_eq!(two.server_pids, [10, 11]);
        assert!(plan(&["--idle", "--source-ips", "nope"]).is_err());
    }

    #[test]
    fn publishers_use_the_publish_server_when_given() {
        let same = plan(&["--rate", "1", "--server", "http://a:1"]).unwrap();
        assert_eq!(same.publish_server, "http://a:1");
        let other = plan(&[
            "--rate",
            "1",
            "--server",
            "http://a:1",
            "--publish-server",
            "http://b:2",
        ])
        .unwrap();
        assert_eq!(other.server, "http://a:1");
        assert_eq!(other.publish_server, "http://b:2");
        assert!(
            plan(&[
                "--protocol",
                "socketio",
                "--rate",
                "1",
                "--publish-server",
                "http://b:2"
            ])
            .is_err()
        );
    }

    #[test]
    fn watched_processes_are_name_equals_pid() {
        let watched = plan(&[
            "--idle",
            "--watch-pid",
            "redis=1234",
            "--watch-pid",
            " backend-b = 77 ",
        ])
        .unwrap();
        assert_eq!(
            watched.watch_pids,
            [
                WatchPid {
                    name: "redis".into(),
                    pid: 1234
                },
                WatchPid {
                    name: "backend-b".into(),
                    pid: 77
                }
            ]
        );
        for bad in ["redis", "=12", "redis=", "redis=0", "redis=-3", "redis=12x"] {
            assert!(parse_watch_pid(bad).is_err(), "{bad} was accepted");
        }
        assert!(plan(&["--idle", "--watch-pid", "r=1", "--watch-pid", "r=2"]).is_err());
    }

    #[test]
    fn credentials_exclude_each_other() {
        assert!(plan(&["--idle", "--token", "t", "--secret", "s"]).is_err());
        assert!(matches!(
            plan(&["--idle"]).unwrap().credentials,
            Credentials::DataDir(_)
        ));
    }
}
