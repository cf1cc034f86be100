//! `herald-bench`: a load generator for Herald, and for a Socket.IO peer to compare it with.
//!
//! It opens many subscribers — gRPC streams over a few HTTP/2 connections, or one WebSocket
//! each to Herald's edge or to Socket.IO — publishes events that carry their send time, and
//! reports deliveries per second, publish-to-receive latency, connects per second, server
//! memory per subscriber, and whether every subscriber saw every acknowledged event exactly
//! once and in order.
//!
//! Publishers may use another backend than the subscribers (`--publish-server`), so that every
//! event crosses a shared broker (Redis) to reach them; `--watch-pid NAME=PID` reports the CPU
//! of other processes (Redis, the other backend) beside the server's. bench/cluster.sh starts
//! Redis and two backends for that.
//!
//! ```text
//!  cli (options → Plan) ──► run (phases: connect, open, warm up, measure, drain, report)
//!                              ├──► subscriber (one task per subscriber: resume, count, time)
//!                              │      grpc │ ws (Herald's browser protocol) │ socketio
//!                              ├──► publisher  (rate-paced or saturating publish loops:
//!                              │                Rooms/Publish, or Socket.IO `publish`)
//!                              └──► proc_stats (server RSS and CPU, watched processes' CPU,
//!                                               from /proc)
//!  net (WebSockets from many source addresses)   engineio (Socket.IO packets)
//!  wire (lean decoding of event frames)   histogram (latencies)   auth (token)
//!  report (human summary + one JSON line)
//! ```

// The report's one `serde_json::json!` object has more fields than the default limit expands.
#![recursion_limit = "256"]

mod auth;
mod cli;
mod engineio;
mod error;
mod histogram;
mod net;
mod proc_stats;
mod publisher;
mod report;
mod run;
mod subscriber;
mod wire;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let plan = match cli::Args::parse().into_plan() {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match run::run(plan).await {
        Ok(report) => {
            report.print();
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
