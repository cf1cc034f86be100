//! `herald-bench`: a load generator for `herald.v1.Rooms`.
//!
//! It opens many subscriber streams over a few HTTP/2 connections, publishes events that carry
//! their send time, and reports deliveries per second, publish-to-receive latency, and whether
//! every subscriber saw every acknowledged event exactly once and in order.
//!
//! ```text
//!  cli (options → Plan) ──► run (phases: connect, open, warm up, measure, drain, report)
//!                              ├──► subscriber (one task per stream: resume, count, time)
//!                              ├──► publisher  (rate-paced or saturating publish loops)
//!                              └──► proc_stats (server RSS and CPU from /proc)
//!  wire (lean decoding of Subscribe frames)   histogram (latencies)   auth (bearer token)
//!  report (human summary + one JSON line)
//! ```

// The report's one `serde_json::json!` object has more fields than the default limit expands.
#![recursion_limit = "256"]

mod auth;
mod cli;
mod error;
mod histogram;
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
