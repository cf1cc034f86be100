//! Real Redis for tests: a throwaway `redis-server` on a free 127.0.0.1 port, without
//! persistence of its own (`--save "" --appendonly no`; a test may `SAVE`), in its own
//! temporary directory. Dropping
//! [`RedisServer`] stops it. [`RedisServer::pause`] / [`RedisServer::resume`] (SIGSTOP /
//! SIGCONT) and [`RedisServer::restart`] are the fault injections of the cluster tests.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running `redis-server` owned by this test.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`.
    pub fn start() -> Result<RedisServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("herald-redis-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let free = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = free.local_addr().map_err(|e| e.to_string())?.port();
        drop(free);
        let child = spawn(port, dir.path())?;
        let server = RedisServer { child, port, dir };
        server.wait_ready()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Runs one command (inline protocol) and returns the first line of the reply.
    pub fn command(&self, command: &str) -> Result<String, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut reply = [0u8; 512];
        let read = stream.read(&mut reply).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&reply[..read]);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    /// SIGSTOP: the server stops answering (connections stay open).
    pub fn pause(&self) -> Result<(), String> {
        signal(self.child.id(), "STOP")
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) -> Result<(), String> {
        signal(self.child.id(), "CONT")
    }

    /// Kills the server and starts a new one on the same port and directory: it loads the
    /// snapshot a test saved there (`SAVE`), and starts empty otherwise.
    pub fn restart(&mut self) -> Result<(), String> {
        self.child.kill().ok();
        self.child.wait().ok();
        self.child = spawn(self.port, self.dir.path())?;
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.command("PING").is_ok_and(|reply| reply == "+PONG") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {} did not answer", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn spawn(port: u16, dir: &std::path::Path) -> Result<Child, String> {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server: {e} (tests/run.sh installs it)"))
}

fn signal(pid: u32, name: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .map_err(|e| e.to_string())?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("kill -{name} {pid} failed"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
