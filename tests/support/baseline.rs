//! Back to baseline: after abuse and faults, what the edge holds (connections, WebSocket
//! sessions, topic feeds, backend streams, read from its `/statsz`) and the open file
//! descriptors of Herald child processes return to what they were before, within a generous
//! deadline. Suites take a [`Baseline`] at their start and check it at their end.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;

use crate::{PATIENCE, edge::TestEdge};

/// File descriptors a process may hold beyond its baseline: pooled database connections and
/// lazily opened backend channels come and go on their own schedule.
pub const FD_SLACK: usize = 8;

/// The edge's counters worth returning to.
const EDGE_COUNTS: [&str; 4] = ["connections", "sessions", "feeds", "backend_streams"];

#[derive(Debug, Clone)]
pub struct Baseline {
    edge: Option<Value>,
    processes: Vec<(u32, usize)>,
}

/// `GET /statsz` of an edge, as JSON.
pub async fn edge_stats(addr: SocketAddr) -> Value {
    let text = crate::edge::http_get(addr, "/statsz").await;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|_| panic!("/statsz is JSON: {text}"))
}

/// Open file descriptors of process `pid` (Linux: the entries of /proc/<pid>/fd).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

impl Baseline {
    /// The edge's counters now.
    pub async fn of_edge(edge: &TestEdge) -> Baseline {
        Baseline::of_edge_at(edge.addr).await
    }

    pub async fn of_edge_at(addr: SocketAddr) -> Baseline {
        Baseline {
            edge: Some(edge_stats(addr).await),
            processes: Vec::new(),
        }
    }

    /// Also the open file descriptors of these processes now.
    pub fn with_processes(mut self, pids: &[u32]) -> Baseline {
        self.processes = pids.iter().map(|pid| (*pid, open_fds(*pid))).collect();
        self
    }

    pub async fn assert_edge_returns(&self, edge: &TestEdge) {
        self.assert_returns(Some(edge.addr)).await;
    }

    /// Waits until the edge at `edge` (if any) holds what it held at the baseline and every
    /// process has at most [`FD_SLACK`] more descriptors open; fails after a generous deadline
    /// with what is left over.
    pub async fn assert_returns(&self, edge: Option<SocketAddr>) {
        let deadline = tokio::time::Instant::now() + PATIENCE * 2;
        loop {
            let mut left = Vec::new();
            if let (Some(addr), Some(before)) = (edge, &self.edge) {
                let now = edge_stats(addr).await;
                for count in EDGE_COUNTS {
                    if now[count].as_u64() > before[count].as_u64() {
                        left.push(format!(
                            "edge {count}: {} (baseline {})",
                            now[count], before[count]
                        ));
                    }
                }
            }
            for (pid, before) in &self.processes {
                let now = open_fds(*pid);
                if now > before + FD_SLACK {
                    left.push(format!(
                        "process {pid}: {now} open descriptors (baseline {before})"
                    ));
                }
            }
            if left.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not back to baseline: {}",
                left.join("; ")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
