//! Herald as separate processes, for tests that must kill one with SIGKILL.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::{PATIENCE, SECRET};

/// The `herald` binary next to the test executable (target/<profile>/herald).
pub fn herald_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let binary = dir.join(format!("herald{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --bin herald` before the tests (tests/run.sh does)",
        binary.display()
    );
    binary
}

/// A running `herald` process; killed when dropped.
pub struct HeraldProcess {
    child: Child,
    pub addr: SocketAddr,
}

/// Starts `herald edge` in front of `backends` on a free port and waits until it listens.
pub async fn spawn_edge_process(backends: &[SocketAddr]) -> HeraldProcess {
    spawn_edge_process_with(backends, "127.0.0.1:0", &[]).await
}

/// Starts `herald edge` on `http_addr` with extra flags; it signs its own service tokens with
/// the test secret.
pub async fn spawn_edge_process_with(
    backends: &[SocketAddr],
    http_addr: &str,
    flags: &[&str],
) -> HeraldProcess {
    start_edge(backends, http_addr, flags, Some(SECRET)).await
}

/// Starts `herald edge` holding only `--edge-service-token`: no signing secret at all, the way
/// an edge runs in production.
pub async fn spawn_edge_process_with_service_token(
    backends: &[SocketAddr],
    service_token: &str,
) -> HeraldProcess {
    let flags = ["--edge-service-token", service_token];
    start_edge(backends, "127.0.0.1:0", &flags, None).await
}

async fn start_edge(
    backends: &[SocketAddr],
    http_addr: &str,
    flags: &[&str],
    secret: Option<&str>,
) -> HeraldProcess {
    let backends: Vec<String> = backends.iter().map(|a| format!("http://{a}")).collect();
    let mut command = Command::new(herald_binary());
    command
        .args(["--log-format", "json", "edge", "--http-addr", http_addr])
        .args(flags)
        .arg("--backend")
        .arg(backends.join(","))
        .env_remove("HERALD_AUTH_HS256_SECRET");
    if let Some(secret) = secret {
        command.env("HERALD_AUTH_HS256_SECRET", secret);
    }
    let mut child = command
        .env("HERALD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start herald edge");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.expect("read the edge's log") {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"] == "herald edge listening" {
                return entry["fields"]["http_addr"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("http_addr in the listening line");
            }
        }
        panic!("herald edge exited before listening");
    })
    .await
    .expect("herald edge starts in time");
    // Keep draining the log so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    HeraldProcess { child, addr }
}

impl HeraldProcess {
    /// The process id, to count its open file descriptors.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("a running process has an id")
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// SIGKILL: no close frames, no cleanup.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("send SIGKILL");
        let _ = self.child.wait().await;
    }
}

/// A running `herald serve` (backend and edge in one process); killed when dropped.
pub struct ServeProcess {
    child: Child,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The `message` of every log line so far, to wait for a state it announces.
    messages: Arc<Mutex<Vec<String>>>,
}

/// Starts `herald serve` on free ports with its data (and SQLite database) in `data_dir`,
/// and waits until both the backend and the edge listen.
pub async fn spawn_serve_process(data_dir: &std::path::Path) -> ServeProcess {
    spawn_serve_process_at(data_dir, "127.0.0.1:0", "127.0.0.1:0").await
}

/// Starts `herald serve` on given addresses (to restart one where its clients expect it).
pub async fn spawn_serve_process_at(
    data_dir: &std::path::Path,
    grpc_addr: &str,
    http_addr: &str,
) -> ServeProcess {
    spawn_serve_process_with_env(data_dir, grpc_addr, http_addr, &[]).await
}

/// Starts `herald serve` with extra environment variables (`HERALD_BROKER_URL`, …).
pub async fn spawn_serve_process_with_env(
    data_dir: &std::path::Path,
    grpc_addr: &str,
    http_addr: &str,
    env: &[(&str, &str)],
) -> ServeProcess {
    let mut child = Command::new(herald_binary())
        .args(["--log-format", "json", "serve"])
        .args(["--grpc-addr", grpc_addr, "--http-addr", http_addr])
        .arg("--data-dir")
        .arg(data_dir)
        .env("HERALD_AUTH_HS256_SECRET", SECRET)
        .env("HERALD_LOG", "info")
        .env_remove("HERALD_DATABASE_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start herald serve");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let messages = Arc::new(Mutex::new(Vec::new()));
    let (grpc_addr, http_addr) = tokio::time::timeout(PATIENCE, async {
        let (mut grpc, mut http) = (None, None);
        while let Some(line) = lines.next_line().await.expect("read herald's log") {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(message) = entry["fields"]["message"].as_str() {
                messages.lock().expect("log lines").push(message.to_owned());
            }
            let addr = |field: &str| entry["fields"][field].as_str().and_then(|a| a.parse().ok());
            match entry["fields"]["message"].as_str() {
                Some("herald backend listening") => grpc = addr("grpc_addr"),
                Some("herald edge listening") => http = addr("http_addr"),
                _ => {}
            }
            if let (Some(grpc), Some(http)) = (grpc, http) {
                return (grpc, http);
            }
        }
        panic!("herald serve exited before listening");
    })
    .await
    .expect("herald serve starts in time");
    let keep = messages.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(message) = entry["fields"]["message"].as_str()
            {
                keep.lock().expect("log lines").push(message.to_owned());
            }
        }
    });
    ServeProcess {
        child,
        grpc_addr,
        http_addr,
        messages,
    }
}

impl ServeProcess {
    /// The process id, to count its open file descriptors.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("a running process has an id")
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http_addr)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("send SIGKILL");
        let _ = self.child.wait().await;
    }

    /// Whether the process has logged a line with this `message`.
    pub fn logged(&self, message: &str) -> bool {
        self.messages
            .lock()
            .expect("log lines")
            .iter()
            .any(|logged| logged == message)
    }
}
