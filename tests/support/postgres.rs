//! Real PostgreSQL for tests: a throwaway cluster (`initdb` + `pg_ctl`) in a temporary
//! directory, listening on 127.0.0.1 on a free port, with a fresh database per test.
//!
//! One shared cluster per test process ([`shared`]); tests that stop the server on purpose
//! start their own ([`PgCluster::start`]). Clusters stop by themselves: a dropped
//! [`PgCluster`] stops its server, and a small watchdog process stops it (and removes its
//! directory) once the test process is gone, since statics are never dropped.
//! As root, `initdb` and `postgres` run as the `postgres` user, which owns the directory.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use sea_orm::{ConnectionTrait, Database};

/// A running PostgreSQL server owned by this test process.
#[derive(Debug)]
pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    run_as_postgres: bool,
}

static SHARED: OnceLock<PgCluster> = OnceLock::new();
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(1);

/// The cluster shared by every test of this process, started on first use.
pub fn shared() -> &'static PgCluster {
    SHARED.get_or_init(|| PgCluster::start().unwrap_or_else(|e| panic!("start PostgreSQL: {e}")))
}

impl PgCluster {
    /// initdb + pg_ctl start in a new temporary directory.
    pub fn start() -> Result<PgCluster, String> {
        let bin = bin_dir().ok_or(
            "PostgreSQL binaries not found (pg_config --bindir, /usr/lib/postgresql/*/bin); \
             tests/run.sh installs them",
        )?;
        let run_as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("herald-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        if run_as_postgres {
            chown_to_postgres(&dir)?;
        }
        let free = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = free.local_addr().map_err(|e| e.to_string())?.port();
        drop(free);
        let cluster = PgCluster {
            bin,
            dir,
            port,
            run_as_postgres,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data_dir(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        cluster.start_server()?;
        cluster.watch_parent();
        Ok(cluster)
    }

    fn data_dir(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn start_server(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        )
    }

    /// Stops the server (fast shutdown: open connections are ended).
    pub fn stop_server(&self) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &["-D", &self.data_dir(), "-m", "fast", "-w", "stop"],
        )
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates an empty database with a unique name and returns its URL.
    pub async fn fresh_database(&self) -> String {
        let name = format!(
            "herald_test_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        let admin = Database::connect(self.url("postgres"))
            .await
            .expect("connect to the test cluster");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        admin.close().await.expect("close the admin connection");
        self.url(&name)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let output = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// A watchdog that stops the server and removes the directory when this process exits.
    fn watch_parent(&self) {
        let stop = format!(
            "{} -D {} -m immediate -w stop",
            self.bin.join("pg_ctl").display(),
            self.data_dir()
        );
        let stop = if self.run_as_postgres {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        let spawned = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(error) = spawned {
            eprintln!("warning: no PostgreSQL watchdog ({error}); stop it by hand");
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", &self.data_dir(), "-m", "immediate", "-w", "stop"],
        );
    }
}

fn bin_dir() -> Option<PathBuf> {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let candidates = from_pg_config.into_iter().chain(
        std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("bin")),
    );
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn chown_to_postgres(dir: &Path) -> Result<(), String> {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .map_err(|e| e.to_string())?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("chown postgres {} failed", dir.display()))
}
