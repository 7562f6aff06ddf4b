//! Shared by the process benches (`gateway`, `mcp`, `cluster`): child processes that die
//! with the harness, free ports, readiness polls, an echo agent, and a
//! closed-loop load generator bounded in calls and in time, with the
//! interleaved rounds and the latency summary every report is built from.
//!
//! Included with `#[path = "support/harness.rs"] mod harness;`.
#![allow(dead_code)]

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{http::StatusCode, Json, Router};
use serde_json::Value;
use tokio::runtime::Runtime;

/// How long a started process gets to answer its first request.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// One call's limit under load: a call that takes longer counts as an error.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads `name` from the environment as a number in `range`, or `default`.
pub fn env_number<T>(
    name: &str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + fmt::Display,
{
    let Ok(text) = std::env::var(name) else {
        return Ok(default);
    };
    match text.trim().parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(format!(
            "{name}={text:?}: expected a whole number from {} to {}",
            range.start(),
            range.end()
        )),
    }
}

/// A comma-separated list of numbers in `range` from the environment, or `default`.
pub fn env_list(
    name: &str,
    default: &[usize],
    range: std::ops::RangeInclusive<usize>,
) -> Result<Vec<usize>, String> {
    let Ok(text) = std::env::var(name) else {
        return Ok(default.to_vec());
    };
    let list: Option<Vec<usize>> = text
        .split(',')
        .map(|v| v.trim().parse::<usize>().ok().filter(|v| range.contains(v)))
        .collect();
    match list {
        Some(list) if !list.is_empty() => Ok(list),
        _ => Err(format!(
            "{name}={text:?}: expected comma-separated whole numbers from {} to {}",
            range.start(),
            range.end()
        )),
    }
}

/// A child process killed and reaped when dropped, so an error or a panic
/// anywhere in the run leaves nothing running.
pub struct KillOnDrop {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl KillOnDrop {
    /// Starts `command` with stdout and stderr going to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self, String> {
        let out = File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(KillOnDrop {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The end of the child's output, for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits for the child to exit, killing it after `limit`.
    pub fn wait(&mut self, limit: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    return Err(format!(
                        "{} still running after {limit:?}; killed",
                        self.name
                    ))
                }
                Err(e) => return Err(format!("waiting for {}: {e}", self.name)),
            }
        }
    }
}

pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

pub fn runtime(workers: usize, name: &str) -> Result<Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name(format!("bench-{name}"))
        .build()
        .map_err(|e| format!("cannot start the {name} runtime: {e}"))
}

/// The HTTP client of setup requests and of the load (keep-alive, Nagle off).
pub fn http_client() -> Result<reqwest::Client, String> {
    switchboard::TlsTrust::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .timeout(CALL_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// Sends one request; returns the status and body.
pub async fn call(request: reqwest::RequestBuilder) -> Result<(StatusCode, String), String> {
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    Ok((status, text))
}

/// Polls `url` until it answers 2xx; fails if the child exits or time runs out.
pub fn wait_ready(
    rt: &Runtime,
    http: &reqwest::Client,
    url: &str,
    child: &mut KillOnDrop,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.child.try_wait() {
            return Err(format!(
                "{} exited ({status}) before it answered:\n{}",
                child.name,
                child.log_tail()
            ));
        }
        if matches!(rt.block_on(call(http.get(url))), Ok((s, _)) if s.is_success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not answer {url} within {READY_TIMEOUT:?}:\n{}",
                child.name,
                child.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `switchboard serve` command on `data`, listening on 127.0.0.1:`port`,
/// with no token and the default log level whatever the caller's
/// environment says (per-request logging would be measured).
pub fn serve_command(data: &Path, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .arg("serve")
        .arg("--data")
        .arg(data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env_remove("SWITCHBOARD_TOKEN")
        .env("RUST_LOG", "info");
    command
}

pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, model)| model.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The 1-minute load average, as `uptime` prints it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

pub fn print_machine() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "  machine     {cpus} CPUs ({}), load average {} at start; servers, agents and clients share them",
        cpu_model(),
        load_average()
    );
}

// ---------------------------------------------------------------- agent

/// Starts an HTTP agent on the current runtime: `POST /invoke` answers the
/// call's `input`, `GET /health` 200. Returns its port.
pub async fn start_echo_agent() -> Result<u16, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind an agent: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let app = Router::new()
        .route("/invoke", post(echo))
        .route("/health", get(|| async { StatusCode::OK }));
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("agent on port {port} stopped: {e}");
        }
    });
    Ok(port)
}

async fn echo(Json(mut call): Json<Value>) -> Json<Value> {
    Json(
        call.get_mut("input")
            .map(Value::take)
            .unwrap_or(Value::Null),
    )
}

/// An OTLP/HTTP trace endpoint (`POST /v1/traces`) that takes every export
/// and only counts it: the collector of a traced run, costing the machine as
/// little as a collector can. Returns its port and the count.
pub async fn start_trace_sink() -> Result<(u16, Arc<AtomicU64>), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind the trace sink: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let exports = Arc::new(AtomicU64::new(0));
    let counted = exports.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |_export: axum::body::Bytes| {
            counted.fetch_add(1, Ordering::Relaxed);
            // An empty ExportTraceServiceResponse: everything accepted.
            async { StatusCode::OK }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("trace sink on port {port} stopped: {e}");
        }
    });
    Ok((port, exports))
}

// ---------------------------------------------------------------- load

/// How much one measurement may do: whichever ends first.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub calls: usize,
    pub time: Duration,
}

/// One closed-loop measurement.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// Sorted latencies of the calls that succeeded.
    pub latencies: Vec<Duration>,
    pub errors: usize,
    pub elapsed: Duration,
}

impl Run {
    /// Successful calls per second.
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Nearest-rank percentile of sorted `latencies`, `q` in (0, 1].
pub fn percentile(latencies: &[Duration], q: f64) -> Option<Duration> {
    let n = latencies.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
    latencies.get(rank - 1).copied()
}

pub fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3))
}

/// Runs one worker per element of `callers`, each calling its closure in a
/// loop, until `budget.calls` calls have started or `budget.time` has
/// passed. A call is timed from its start to its answer; one that fails or
/// takes longer than [`CALL_TIMEOUT`] counts as an error.
pub async fn closed_loop<F, Fut>(callers: Vec<F>, budget: Budget) -> Run
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + budget.time;
    let tickets = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for mut caller in callers {
        let (tickets, errors) = (tickets.clone(), errors.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while tickets.fetch_add(1, Ordering::Relaxed) < budget.calls
                && Instant::now() < deadline
            {
                let t = Instant::now();
                match tokio::time::timeout(CALL_TIMEOUT, caller()).await {
                    Ok(true) => latencies.push(t.elapsed()),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(mut l) => latencies.append(&mut l),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Run {
        latencies,
        errors: errors.load(Ordering::Relaxed) as usize,
        elapsed,
    }
}

/// Every round of one case, merged.
#[derive(Clone, Debug, Default)]
pub struct Case {
    pub name: String,
    /// Calls per second of each round.
    pub rates: Vec<f64>,
    /// Sorted latencies of every round.
    pub latencies: Vec<Duration>,
    pub errors: usize,
}

impl Case {
    pub fn new(name: impl Into<String>) -> Case {
        Case {
            name: name.into(),
            ..Case::default()
        }
    }

    pub fn add(&mut self, run: Run) {
        self.rates.push(run.rate());
        self.latencies.extend(run.latencies);
        self.latencies.sort_unstable();
        self.errors += run.errors;
    }

    pub fn median_rate(&self) -> f64 {
        median(self.rates.clone())
    }

    pub fn p(&self, q: f64) -> Option<Duration> {
        percentile(&self.latencies, q)
    }

    /// The median over rounds of this case's rate divided by `base`'s in the
    /// same round.
    pub fn ratio_to(&self, base: &Case) -> f64 {
        median(
            self.rates
                .iter()
                .zip(&base.rates)
                .map(|(r, b)| r / b.max(1e-9))
                .collect(),
        )
    }

    /// p99 minus `base`'s p99, in ms.
    pub fn added_p99_ms(&self, base: &Case) -> Option<f64> {
        Some((self.p(0.99)?.as_secs_f64() - base.p(0.99)?.as_secs_f64()) * 1e3)
    }

    /// p50 minus `base`'s p50, in ms.
    pub fn added_p50_ms(&self, base: &Case) -> Option<f64> {
        Some((self.p(0.50)?.as_secs_f64() - base.p(0.50)?.as_secs_f64()) * 1e3)
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn print_table_header() {
    println!(
        "  {:<44} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "case", "calls/s", "p50 ms", "p99 ms", "max ms", "calls", "errors"
    );
}

pub fn print_case(case: &Case) {
    println!(
        "  {:<44} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>7}",
        case.name,
        case.median_rate(),
        ms(case.p(0.50)),
        ms(case.p(0.99)),
        ms(case.latencies.last().copied()),
        case.latencies.len(),
        case.errors
    );
}
