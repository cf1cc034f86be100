//! The events of a deployment, on its durable topic `deployment:<id>`: their types (the only
//! place these strings live) and their typed bodies.

use herald_proto::v1::{
    DeploymentLogs, DeploymentStatus, Event, LogLine, LogTruncation, event::Body,
};

use super::rules::{Deployment, DeploymentId, NumberedLine};
use crate::topic::Topic;

/// A status change; body [`DeploymentStatus`] (the whole status after the change).
pub const STATUS: &str = "deployment.status";
/// A chunk of log lines; body [`DeploymentLogs`].
pub const LOGS: &str = "deployment.logs";

/// `deployment:<id>`.
pub fn topic(id: DeploymentId) -> Topic {
    Topic::parse(&format!("deployment:{id}")).expect("`deployment:<number>` is a valid topic")
}

/// A protobuf timestamp of Unix milliseconds.
pub fn timestamp_ms(ms: i64) -> herald_proto::wkt::Timestamp {
    herald_proto::wkt::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Milliseconds since the Unix epoch of a protobuf timestamp.
pub fn ms_of(time: &herald_proto::wkt::Timestamp) -> i64 {
    time.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(time.nanos / 1_000_000))
}

/// The status body of `state`.
pub fn status_of(state: &Deployment) -> DeploymentStatus {
    DeploymentStatus {
        deployment_id: state.id.get(),
        status: state.status as i32,
        stage: state.stage as i32,
        progress: state.progress,
        message: state.message.clone(),
        error_message: state.error_message.clone(),
        exit_code: state.exit_code,
        started_at: state.started_at_ms.map(timestamp_ms),
        finished_at: state.finished_at_ms.map(timestamp_ms),
        duration: state.duration_ms().map(|ms| herald_proto::wkt::Duration {
            seconds: ms / 1000,
            nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
        }),
        log_truncated: state.log.dropped.is_some(),
        log_lines: state.log.lines,
        cancelled_by: state.cancelled_by.clone().unwrap_or_default(),
    }
}

/// The marker of a dropped range.
pub fn truncation(dropped: (u64, u64), limit: u64) -> LogTruncation {
    LogTruncation {
        first_line: dropped.0,
        last_line: dropped.1,
        limit,
    }
}

pub fn log_line(line: &NumberedLine) -> LogLine {
    LogLine {
        number: line.number,
        text: line.text.clone(),
        stream: line.stream as i32,
        time: Some(timestamp_ms(line.time_ms)),
        continues: line.continues,
    }
}

/// An `Event` carrying only a typed status body, for `DomainTx::emit_typed`.
pub fn status_event(status: DeploymentStatus) -> Event {
    Event {
        body: Some(Body::DeploymentStatus(status)),
        ..Event::default()
    }
}

/// An `Event` carrying only a typed logs body, for `DomainTx::emit_typed`.
pub fn logs_event(logs: DeploymentLogs) -> Event {
    Event {
        body: Some(Body::DeploymentLogs(logs)),
        ..Event::default()
    }
}
