//! `herald demo deploy`: a build worker acting against a running server at human pace; and
//! `herald watch`: typed streams printed for people (a deployment's status line, then its log
//! line by line; other topics one line per event), resuming after disconnects.

use std::{
    fmt::Write as _,
    io::{IsTerminal, Write as _},
    time::Duration,
};

use herald_backend::Config;
use herald_client::Update;
use herald_proto::v1::{
    DeploymentEvent, DeploymentLogs, DeploymentStage, DeploymentState, DeploymentStatus,
    DeploymentsAppendLogsResponse, DeploymentsCreateRequest, DeploymentsFinishRequest,
    DeploymentsGetRequest, DeploymentsReportRequest, DeploymentsStartRequest, Event, LogChunk,
    LogStream, StreamPosition, deployment_event, deployments_client::DeploymentsClient,
    event::Body, log_chunk::Line,
};
use tonic::transport::Channel;

use crate::{
    CliError, DemoDeployArgs, WatchArgs,
    client::{Credentials, channel, parse_position, status_error},
};

/// The user the demo creates deployments as.
const DEMO_USER: &str = "demo";
/// The worker the demo runs as.
const DEMO_WORKER: &str = "demo-worker";

const GREEN: &str = "\u{1b}[32m";
const BOLD_GREEN: &str = "\u{1b}[1;32m";
const YELLOW: &str = "\u{1b}[33m";
const RED: &str = "\u{1b}[31m";
const BOLD_RED: &str = "\u{1b}[1;31m";
const CYAN: &str = "\u{1b}[36m";
const DIM: &str = "\u{1b}[2m";
const RESET: &str = "\u{1b}[0m";

// ---------------------------------------------------------------------------------------------
// herald demo deploy

/// One step of the demo build: a stage report, then its lines.
struct Step {
    stage: DeploymentStage,
    progress: u32,
    message: &'static str,
    lines: Vec<(LogStream, String)>,
}

fn out(text: impl Into<String>) -> (LogStream, String) {
    (LogStream::Stdout, text.into())
}

fn err(text: impl Into<String>) -> (LogStream, String) {
    (LogStream::Stderr, text.into())
}

const CRATES: &[&str] = &[
    "proc-macro2 v1.0.95",
    "unicode-ident v1.0.18",
    "libc v0.2.172",
    "cfg-if v1.0.0",
    "serde v1.0.219",
    "memchr v2.7.4",
    "once_cell v1.21.3",
    "itoa v1.0.15",
    "bytes v1.10.1",
    "pin-project-lite v0.2.16",
    "quote v1.0.40",
    "syn v2.0.101",
    "tokio v1.48.0",
    "futures-core v0.3.31",
    "tracing v0.1.41",
    "http v1.3.1",
    "hyper v1.6.0",
    "tower v0.5.2",
    "axum v0.8.4",
    "serde_json v1.0.140",
    "sqlx-core v0.8.6",
    "uuid v1.17.0",
    "rustls v0.23.27",
    "regex v1.11.1",
    "chrono v0.4.41",
];

/// The demo's build script: clone, a multi-step image build with `lines` lines in all, tests,
/// deploy. With `fail`, a test fails and the build stops there.
fn script(application: &str, git_ref: &str, lines: u32, fail: bool) -> Vec<Step> {
    let clone = vec![
        out(format!(
            "{CYAN}$ git clone --depth 1 --branch {git_ref} https://git.example.com/acme/{application}.git{RESET}"
        )),
        out(format!("Cloning into '{application}'...")),
        err("remote: Enumerating objects: 1284, done."),
        err("remote: Counting objects: 100% (1284/1284), done."),
        err("remote: Compressing objects: 100% (911/911), done."),
        err("Receiving objects: 100% (1284/1284), 2.31 MiB | 18.40 MiB/s, done."),
        err("Resolving deltas: 100% (402/402), done."),
        out("HEAD is now at 3f9a0c2 Checkout: show the delivery estimate"),
    ];
    let image = format!("registry.example.com/acme/{application}:3f9a0c2");
    let build_head = vec![
        out(format!("{CYAN}$ docker build -t {image} .{RESET}")),
        out("#1 [internal] load build definition from Dockerfile"),
        out("#1 transferring dockerfile: 1.02kB done"),
        out("#2 [internal] load metadata for docker.io/library/rust:1.88-slim"),
        out("#3 [builder 1/6] FROM docker.io/library/rust:1.88-slim"),
        out("#4 [builder 2/6] WORKDIR /src"),
        out("#5 [builder 3/6] COPY Cargo.toml Cargo.lock ./"),
        out("#6 [builder 4/6] RUN cargo fetch"),
        out("#7 [builder 5/6] COPY . ."),
        out("#8 [builder 6/6] RUN cargo build --release --locked"),
    ];
    let tests: Vec<&str> = vec![
        "cart::tests::totals_include_tax",
        "cart::tests::empty_cart_has_no_total",
        "checkout::tests::applies_discount_codes",
        "checkout::tests::refuses_expired_cards",
        "catalog::tests::search_is_case_insensitive",
        "orders::tests::cancel_refunds_the_payment",
    ];
    let deploy = vec![
        out(format!("{CYAN}$ docker push {image}{RESET}")),
        out(format!(
            "The push refers to repository [registry.example.com/acme/{application}]"
        )),
        out("3f9a0c2: digest: sha256:9b2c…e41f size: 1573"),
        out(format!(
            "{CYAN}$ kubectl -n production set image deployment/{application} app={image}{RESET}"
        )),
        out(format!("deployment.apps/{application} image updated")),
        out(format!(
            "Waiting for deployment \"{application}\" rollout to finish: 1 of 3 updated replicas are available..."
        )),
        out(format!(
            "Waiting for deployment \"{application}\" rollout to finish: 2 of 3 updated replicas are available..."
        )),
        out(format!(
            "{BOLD_GREEN}deployment \"{application}\" successfully rolled out{RESET}"
        )),
    ];
    // Besides the compile lines: the `Finished` line and six around the tests.
    let fixed = clone.len() + build_head.len() + 1 + tests.len() + 6 + deploy.len();
    let compiles = (lines as usize).saturating_sub(fixed).max(1);
    let mut build = Vec::with_capacity(compiles + 4);
    for n in 0..compiles {
        let krate = CRATES[n % CRATES.len()];
        if n % 37 == 36 {
            build.push(err(format!(
                "{YELLOW}warning{RESET}: unused import: `std::fmt::Write` (in {krate})"
            )));
        } else {
            build.push(out(format!("#8 {BOLD_GREEN}   Compiling{RESET} {krate}")));
        }
    }
    build.push(out(format!(
        "#8 {BOLD_GREEN}    Finished{RESET} `release` profile [optimized] target(s) in 2m 41s"
    )));
    let mut test_lines = vec![
        out(format!("{CYAN}$ cargo test --release --locked{RESET}")),
        out(format!("running {} tests", tests.len())),
    ];
    let mut failed = false;
    for (n, test) in tests.iter().enumerate() {
        if fail && n == 2 {
            test_lines.push(out(format!("test {test} ... {BOLD_RED}FAILED{RESET}")));
            failed = true;
        } else {
            test_lines.push(out(format!("test {test} ... {GREEN}ok{RESET}")));
        }
    }
    if failed {
        test_lines.push(err(format!(
            "{RED}thread 'checkout::tests::applies_discount_codes' panicked at src/checkout.rs:88:9:{RESET}"
        )));
        test_lines.push(err(
            "assertion `left == right` failed: SPRING10 takes 10 % off",
        ));
        test_lines.push(out(format!(
            "test result: {BOLD_RED}FAILED{RESET}. {} passed; 1 failed",
            tests.len() - 1
        )));
        test_lines.push(err(format!(
            "{BOLD_RED}error{RESET}: test failed, to rerun pass `--lib`"
        )));
    } else {
        test_lines.push(out(format!(
            "test result: {GREEN}ok{RESET}. {} passed; 0 failed",
            tests.len()
        )));
        test_lines.push(out(
            "#9 [runtime 1/2] FROM docker.io/library/debian:bookworm-slim",
        ));
        test_lines.push(out("#10 exporting to image"));
        test_lines.push(out(format!("#10 naming to {image} done")));
    }
    let mut steps = vec![
        Step {
            stage: DeploymentStage::Cloning,
            progress: 5,
            message: "cloning the repository",
            lines: clone,
        },
        Step {
            stage: DeploymentStage::Building,
            progress: 15,
            message: "building the image",
            lines: build_head.into_iter().chain(build).collect(),
        },
        Step {
            stage: DeploymentStage::Building,
            progress: 70,
            message: "running the tests",
            lines: test_lines,
        },
    ];
    if !failed {
        steps.push(Step {
            stage: DeploymentStage::Deploying,
            progress: 85,
            message: "rolling out to production",
            lines: deploy,
        });
    }
    steps
}

/// A worker's calls, authorized.
struct Worker {
    client: DeploymentsClient<Channel>,
    credentials: Credentials,
    id: u64,
}

impl Worker {
    async fn report(
        &mut self,
        stage: DeploymentStage,
        progress: u32,
        message: &str,
    ) -> Result<(), CliError> {
        let request = self.credentials.authorize(DeploymentsReportRequest {
            deployment_id: self.id,
            stage: stage as i32,
            progress,
            message: message.to_owned(),
        })?;
        self.client
            .report(request)
            .await
            .map_err(|s| status_error(&s))?;
        Ok(())
    }

    /// Streams `lines` in chunks of `per_chunk` over one AppendLogs call, pausing `pause`
    /// between chunks; answers once every chunk is stored.
    async fn append(
        &mut self,
        lines: Vec<(LogStream, String)>,
        per_chunk: usize,
        pause: Duration,
    ) -> Result<DeploymentsAppendLogsResponse, CliError> {
        let id = self.id;
        let (sender, receiver) = tokio::sync::mpsc::channel::<LogChunk>(2);
        let request = self
            .credentials
            .authorize(tokio_stream::wrappers::ReceiverStream::new(receiver))?;
        let mut client = self.client.clone();
        let call = tokio::spawn(async move { client.append_logs(request).await });
        for chunk in lines.chunks(per_chunk.max(1)) {
            let chunk = LogChunk {
                deployment_id: id,
                lines: chunk
                    .iter()
                    .map(|(stream, text)| Line {
                        text: text.clone(),
                        stream: *stream as i32,
                        time: Some(herald_proto::timestamp(std::time::SystemTime::now())),
                    })
                    .collect(),
            };
            if sender.send(chunk).await.is_err() {
                break; // the call ended early: its answer says why
            }
            tokio::time::sleep(pause).await;
        }
        drop(sender);
        let answer = call
            .await
            .map_err(|e| CliError::new(format!("the log stream failed: {e}")))?
            .map_err(|s| status_error(&s))?;
        Ok(answer.into_inner())
    }

    async fn finish(&mut self, fail: bool) -> Result<(), CliError> {
        let (result, error_message, exit_code, message) = if fail {
            (
                DeploymentState::Failed,
                "cargo test: 1 test failed (checkout::tests::applies_discount_codes)",
                Some(101),
                "the tests failed",
            )
        } else {
            (DeploymentState::Success, "", Some(0), "live in production")
        };
        let request = self.credentials.authorize(DeploymentsFinishRequest {
            deployment_id: self.id,
            result: result as i32,
            error_message: error_message.to_owned(),
            exit_code,
            message: Some(message.to_owned()),
        })?;
        self.client
            .finish(request)
            .await
            .map_err(|s| status_error(&s))?;
        Ok(())
    }
}

pub(crate) async fn demo(args: DemoDeployArgs, config: &Config) -> Result<(), CliError> {
    if args.lines == 0 || args.lines > 1_000_000 {
        return Err(CliError::new("--lines must be between 1 and 1000000"));
    }
    let user = Credentials::as_user(&args.client, config, DEMO_USER, &[])?;
    let channel = channel(&args.client.server).await?;
    let mut client = DeploymentsClient::new(channel);
    let created = client
        .create(user.authorize(DeploymentsCreateRequest {
            application: args.application.clone(),
            git_ref: args.git_ref.clone(),
            description: Some("herald demo deploy".into()),
        })?)
        .await
        .map_err(|s| status_error(&s))?
        .into_inner()
        .deployment
        .ok_or_else(|| CliError::new("the server answered no deployment"))?;
    let id = created.id;
    println!(
        "created deployment {id} ({} @ {}) as `{DEMO_USER}`",
        args.application, args.git_ref
    );
    println!("watch it:  herald watch deployment:{id}");
    println!("(or subscribe to the topic deployment:{id} over the edge's WebSocket)");
    let _ = std::io::stdout().flush();
    tokio::time::sleep(args.start_after).await;

    let credentials = Credentials::as_user(&args.client, config, DEMO_WORKER, &["service"])?;
    let mut worker = Worker {
        client: client.clone(),
        credentials,
        id,
    };
    let request = worker
        .credentials
        .authorize(DeploymentsStartRequest { deployment_id: id })?;
    client.start(request).await.map_err(|s| status_error(&s))?;
    let steps = script(&args.application, &args.git_ref, args.lines, args.fail);
    // A chunk of about 8 lines at a time, spread over the requested duration.
    let per_chunk = 8;
    let chunks: usize = steps
        .iter()
        .map(|s| s.lines.len().div_ceil(per_chunk))
        .sum();
    let pause = args
        .duration
        .checked_div(u32::try_from(chunks.max(1)).unwrap_or(u32::MAX))
        .unwrap_or_default();
    let mut written = 0;
    for step in steps {
        worker
            .report(step.stage, step.progress, step.message)
            .await?;
        let answer = worker.append(step.lines, per_chunk, pause).await?;
        written = answer.last_line;
        eprintln!(
            "{}: {written} lines so far",
            herald_backend::domain::deployments::rules::stage_name(step.stage)
        );
    }
    worker.finish(args.fail).await?;
    let outcome = if args.fail {
        "failed (as asked)"
    } else {
        "succeeded"
    };
    println!("deployment {id} {outcome}: {written} log lines");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// herald watch

/// How `herald watch` prints.
struct Printer {
    color: bool,
    /// The last status printed (to print a line only when it changes).
    last_status: Option<DeploymentStatus>,
    /// The previous line ended without a newline (a split line continues).
    open_line: bool,
}

impl Printer {
    fn paint(&self, color: &str, text: &str) -> String {
        if self.color {
            format!("{color}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    fn text<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if self.color {
            text.into()
        } else {
            strip_ansi(text).into()
        }
    }

    fn close_line(&mut self) {
        if self.open_line {
            println!();
            self.open_line = false;
        }
    }

    fn status(&mut self, status: &DeploymentStatus) {
        let changed = self.last_status.as_ref().is_none_or(|last| {
            (
                last.status,
                last.stage,
                last.progress,
                &last.message,
                last.log_truncated,
            ) != (
                status.status,
                status.stage,
                status.progress,
                &status.message,
                status.log_truncated,
            )
        });
        if !changed {
            return;
        }
        self.close_line();
        println!("{}", self.status_line(status));
        self.last_status = Some(status.clone());
    }

    fn status_line(&self, status: &DeploymentStatus) -> String {
        let state = DeploymentState::try_from(status.status).unwrap_or_default();
        let stage = DeploymentStage::try_from(status.stage).unwrap_or_default();
        let mut line = String::new();
        let (mark, color, name) = match state {
            DeploymentState::Pending => ("○", DIM, "pending"),
            DeploymentState::Running => ("▶", CYAN, "running"),
            DeploymentState::Success => ("✔", BOLD_GREEN, "success"),
            DeploymentState::Failed => ("✖", BOLD_RED, "failed"),
            DeploymentState::Cancelled => ("■", YELLOW, "cancelled"),
            DeploymentState::Unspecified => ("?", DIM, "unknown"),
        };
        let _ = write!(line, "{} ", self.paint(color, &format!("{mark} {name}")));
        let bar: Vec<String> = [
            DeploymentStage::Cloning,
            DeploymentStage::Building,
            DeploymentStage::Deploying,
        ]
        .into_iter()
        .map(|s| {
            let label = herald_backend::domain::deployments::rules::stage_name(s);
            if s == stage && state == DeploymentState::Running {
                self.paint(BOLD_GREEN, &format!("[{label}]"))
            } else if s < stage || state == DeploymentState::Success {
                self.paint(GREEN, label)
            } else {
                self.paint(DIM, label)
            }
        })
        .collect();
        let _ = write!(line, " {}  {:>3}%", bar.join(" → "), status.progress);
        if !status.message.is_empty() {
            let _ = write!(line, "  {}", status.message);
        }
        match state {
            DeploymentState::Failed => {
                let _ = write!(
                    line,
                    "\n  {} {}",
                    self.paint(BOLD_RED, "error:"),
                    status.error_message
                );
                if let Some(code) = status.exit_code {
                    let _ = write!(line, " (exit code {code})");
                }
            }
            DeploymentState::Cancelled => {
                let _ = write!(line, "  (cancelled by {})", status.cancelled_by);
            }
            _ => {}
        }
        if let Some(duration) = &status.duration {
            let _ = write!(
                line,
                "  in {:.1}s",
                duration.seconds as f64 + f64::from(duration.nanos) / 1e9
            );
        }
        if status.log_truncated {
            let _ = write!(line, "  {}", self.paint(YELLOW, "(log truncated)"));
        }
        line
    }

    fn logs(&mut self, logs: &DeploymentLogs) {
        let mut marker = logs.truncated;
        for line in &logs.lines {
            if let Some(m) = marker.filter(|m| line.number > m.last_line) {
                self.marker(&m);
                marker = None;
            }
            let text = self.text(&line.text);
            if self.open_line {
                print!("{text}");
            } else {
                let number = format!("{:>6}", line.number);
                let gutter = if line.stream == LogStream::Stderr as i32 {
                    self.paint(YELLOW, &format!("{number} ┃"))
                } else {
                    self.paint(DIM, &format!("{number} │"))
                };
                print!("{gutter} {text}");
            }
            self.open_line = line.continues;
            if !line.continues {
                println!();
            }
        }
        if let Some(m) = marker {
            self.marker(&m);
        }
        let _ = std::io::stdout().flush();
    }

    fn marker(&mut self, marker: &herald_proto::v1::LogTruncation) {
        self.close_line();
        println!(
            "{}",
            self.paint(
                YELLOW,
                &format!(
                    "       ┆ … lines {}–{} were dropped to keep the log within {} lines …",
                    marker.first_line, marker.last_line, marker.limit
                )
            )
        );
    }
}

/// Removes ANSI escape sequences (CSI `ESC [ … letter`) for plain output.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) async fn watch(args: WatchArgs, config: &Config) -> Result<(), CliError> {
    let topic = if args.topic.chars().all(|c| c.is_ascii_digit()) {
        format!("deployment:{}", args.topic)
    } else {
        args.topic.clone()
    };
    let color =
        !args.no_color && std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal();
    let mut printer = Printer {
        color,
        last_status: None,
        open_line: false,
    };
    let since = args.since.as_deref().map(parse_position).transpose()?;
    match topic.strip_prefix("deployment:") {
        Some(id) => {
            let id = id.parse::<u64>().map_err(|_| {
                CliError::new(format!(
                    "`{topic}`: a deployment topic is deployment:<number>, for example deployment:7"
                ))
            })?;
            watch_deployment(&args, config, id, since, &mut printer).await
        }
        None => watch_topic(&args, config, &topic, since, &mut printer).await,
    }
}

async fn watch_deployment(
    args: &WatchArgs,
    config: &Config,
    id: u64,
    since: Option<StreamPosition>,
    printer: &mut Printer,
) -> Result<(), CliError> {
    let client = Credentials::new(&args.client, config)?.sdk(&args.client.server)?;
    let got = client
        .deployments()
        .get(DeploymentsGetRequest { deployment_id: id })
        .await
        .map_err(|s| status_error(&s))?
        .into_inner()
        .deployment
        .ok_or_else(|| CliError::new("the server answered no deployment"))?;
    println!(
        "{}",
        printer.paint(
            DIM,
            &format!(
                "deployment {id} · {} @ {} · owner {}",
                got.application, got.git_ref, got.owner
            )
        )
    );
    let mut watch = client.watch_deployment(id);
    if let Some(since) = since {
        watch = watch.since(since);
    }
    if let Some(tail) = args.tail {
        watch = watch.tail_lines(tail);
    }
    while let Some(event) = watch.next().await {
        let event = event.map_err(|e| CliError::new(e.to_string()))?;
        show(printer, &event);
    }
    printer.close_line();
    Ok(())
}

fn show(printer: &mut Printer, event: &DeploymentEvent) {
    if !event.recovered {
        printer.close_line();
        eprintln!(
            "(history could not continue from --since: starting over from the current state)"
        );
    }
    match &event.event {
        Some(deployment_event::Event::Status(status)) => printer.status(status),
        Some(deployment_event::Event::Logs(logs)) => printer.logs(logs),
        None => {}
    }
}

/// Any other topic: one line per event (typed deployment bodies printed like `watch`).
async fn watch_topic(
    args: &WatchArgs,
    config: &Config,
    topic: &str,
    since: Option<StreamPosition>,
    printer: &mut Printer,
) -> Result<(), CliError> {
    let client = Credentials::new(&args.client, config)?.sdk(&args.client.server)?;
    let mut feed = client.subscribe(topic);
    if let Some(since) = since {
        feed = feed.since(since);
    }
    while let Some(update) = feed.next().await {
        match update.map_err(|e| CliError::new(e.to_string()))? {
            Update::Reload { .. } => eprintln!("(history could not continue from --since)"),
            Update::Event(event) => print_event(printer, *event),
            Update::Signal(signal) => {
                let text = crate::demo::describe_signal(&signal)
                    .unwrap_or_else(|| serde_json::to_string(&signal.data).unwrap_or_default());
                println!(
                    "{}",
                    printer.paint(DIM, &format!("~ {} {text}", signal.r#type))
                );
            }
            Update::Subscribed { .. } | Update::Presence(_) => {}
        }
    }
    Ok(())
}

fn print_event(printer: &mut Printer, event: Event) {
    match &event.body {
        Some(Body::DeploymentStatus(status)) => printer.status(status),
        Some(Body::DeploymentLogs(logs)) => printer.logs(logs),
        // Other domains' typed bodies (notifications, reviews): one line each.
        Some(_) => println!(
            "{} {}",
            printer.paint(DIM, &format!("#{}", event.offset)),
            crate::demo::describe(&event)
        ),
        None => {
            let data = event
                .data
                .as_ref()
                .and_then(|d| serde_json::to_string(d).ok())
                .unwrap_or_else(|| "{}".into());
            println!(
                "{} {} {} {data}",
                printer.paint(DIM, &format!("#{}", event.offset)),
                printer.paint(CYAN, &event.r#type),
                printer.paint(DIM, &event.publisher),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_script_writes_the_lines_asked_for_in_stages_that_move_forward() {
        for fail in [false, true] {
            let steps = script("web-shop", "main", 300, fail);
            let total: usize = steps.iter().map(|s| s.lines.len()).sum();
            if !fail {
                assert_eq!(total, 300);
            }
            assert!(
                steps
                    .windows(2)
                    .all(|w| w[0].stage <= w[1].stage && w[0].progress < w[1].progress)
            );
            assert_eq!(
                steps.last().unwrap().stage == DeploymentStage::Deploying,
                !fail,
                "a failed build stops before deploying"
            );
            assert!(
                steps
                    .iter()
                    .flat_map(|s| &s.lines)
                    .any(|(_, l)| l.contains("\u{1b}[")),
                "some lines are in colour"
            );
        }
    }

    #[test]
    fn plain_output_strips_colour_codes() {
        assert_eq!(
            strip_ansi("\u{1b}[1;32m   Compiling\u{1b}[0m serde"),
            "   Compiling serde"
        );
        assert_eq!(strip_ansi("no codes"), "no codes");
    }
}
