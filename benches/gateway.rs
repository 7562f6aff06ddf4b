//! Gateway load harness: what does routing a call through
//! `switchboard serve` cost, next to calling the agent directly and next to
//! HAProxy in front of the same agents?
//!
//! One run starts N echo agents (axum, in this process, on 127.0.0.1), HAProxy
//! (`balance leastconn`) over them, and the real `switchboard serve` binary with
//! them registered, then sends the same echo call to each of the three targets,
//! always in the order direct, haproxy, switchboard, each after a 1 s warm-up:
//!
//! - **fixed rate**: 1,000 req/s, open loop, from a small client in this
//!   process. Each request is sent at its scheduled instant and its latency is
//!   counted from that instant, so a stall shows up as latency instead of
//!   slowing the sender (no coordinated omission) → p50, p99, max, errors.
//! - **saturation**: `wrk` with C connections for D seconds → req/s, p50, p99.
//!
//! It ends with a table and the ratios the performance goals are stated in: gateway
//! throughput ≥ 0.5× direct and ≥ HAProxy at saturation, and added p99 (gateway
//! p99 − direct p99) < 0.2 ms at 1,000 req/s.
//!
//! Repeat with `make bench-gateway` (installs wrk and haproxy when missing, then
//! runs `cargo bench --bench gateway`). Settings, from the environment:
//! `GATEWAY_AGENTS` (4), `GATEWAY_SECS` (5, per measurement), `GATEWAY_CONNECTIONS`
//! (32, wrk's connections), `GATEWAY_SWITCHBOARD` (the `switchboard` binary to
//! measure instead of this build's: an A/B of two builds), `GATEWAY_DURABILITY`
//! (`buffered`, or `sync` for a store that fsyncs every commit), `GATEWAY_SERVE_ENV`
//! (`NAME=VALUE` pairs, space-separated, added to serve's environment: e.g. the
//! `OTEL_*` variables of a traced run, docs/benchmarks.md "Traces"),
//! `GATEWAY_TRACES=1` (two more serve targets in the same run, exporting
//! traces to a sink in this process: one sampling no call, one every call,
//! each compared with the untraced serve). Every call
//! through serve presents a bearer token, as in production. Agents, gateways and
//! load generators all share the machine's cores, so compare the ratios of one
//! run, not absolute numbers.

#[path = "support/harness.rs"]
mod harness;

use harness::{
    call, cpu_model, env_number, free_port, ms, start_echo_agent, start_trace_sink, wait_ready,
    KillOnDrop,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

/// The agent wire protocol body (docs/routing.md), as the gateways send it to agents.
const AGENT_BODY: &str = r#"{"invocation_id":"x","tool":"echo","category":"code","input":{"text":"hello"},"session_id":null}"#;
/// The same call as a `POST /v1/invoke` to switchboard.
const INVOKE_BODY: &str =
    r#"{"tool":"echo","category":"code","input":{"text":"hello"},"strategy":"least_loaded"}"#;

/// The token `switchboard serve` is started with: every call authenticates,
/// as in production.
const SWITCHBOARD_TOKEN: &str = "gateway-bench-token";

/// Requests per second of the latency measurement.
const FIXED_RATE: u32 = 1_000;
/// Requests allowed in flight at the fixed rate; one more counts as an error
/// rather than queueing, which would hide the stall.
const MAX_OUTSTANDING: usize = 256;
/// How long after the last scheduled send the fixed-rate phase waits for answers.
const PHASE_GRACE: Duration = Duration::from_secs(10);
/// One request's limit at the fixed rate.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const WARM_UP_SECS: u64 = 1;

/// The goals the harness reports against.
const GOAL_VS_DIRECT: f64 = 0.5;
const GOAL_VS_HAPROXY: f64 = 1.0;
const GOAL_ADDED_P99_MS: f64 = 0.2;
/// Throughput of serve exporting traces but sampling no call, against serve
/// without an exporter.
const GOAL_SAMPLED_OUT: f64 = 0.97;

/// The traced targets of `GATEWAY_TRACES=1`.
const SAMPLED_OUT: &str = "traced, sampled 0";
const SAMPLED_IN: &str = "traced, sampled 1";

fn main() {
    // `run` owns every child process and temp dir, so they are gone by the
    // time the process exits, on an error as well as on success.
    if let Err(e) = run() {
        eprintln!("gateway bench: {e}");
        std::process::exit(1);
    }
}

struct Settings {
    agents: usize,
    secs: u64,
    connections: u32,
}

fn settings() -> Result<Settings, String> {
    Ok(Settings {
        agents: env_number("GATEWAY_AGENTS", 4, 1..=64)?,
        secs: env_number("GATEWAY_SECS", 5, 1..=600)?,
        connections: env_number("GATEWAY_CONNECTIONS", 32, 1..=10_000)?,
    })
}

/// One way to reach the echo agents.
struct Target {
    name: &'static str,
    url: String,
    body: &'static str,
    /// The bearer token every request carries, if the target checks one.
    token: Option<&'static str>,
}

impl Target {
    /// One call of the measured kind, as a request to this target.
    fn request(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        let request = client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .body(self.body);
        match self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

struct Saturation {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

struct FixedRate {
    /// Sorted latencies of the requests that succeeded.
    latencies: Vec<Duration>,
    errors: usize,
}

impl FixedRate {
    /// Nearest-rank percentile, `q` in (0, 1].
    fn percentile(&self, q: f64) -> Option<Duration> {
        let n = self.latencies.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
        self.latencies.get(rank - 1).copied()
    }
}

struct Row {
    name: &'static str,
    saturation: Option<Saturation>,
    fixed: FixedRate,
}

fn run() -> Result<(), String> {
    let settings = settings()?;
    let wrk = find_tool("wrk");
    let haproxy = find_tool("haproxy");
    print_header(&settings, wrk.as_deref(), haproxy.as_deref());

    // The agents get a runtime of their own, as a separate process would; the
    // fixed-rate client gets one worker, which is plenty for 1,000 req/s.
    let agents_rt = runtime(None, "agents")?;
    let client_rt = runtime(Some(1), "client")?;
    let agents = start_agents(&agents_rt, settings.agents)?;
    let setup = setup_client()?;

    // Declared before `children` so the directory outlives the processes using it.
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let mut children = Vec::new();

    let mut targets = vec![Target {
        name: "direct",
        url: format!("http://127.0.0.1:{}/invoke", agents[0]),
        body: AGENT_BODY,
        token: None,
    }];
    // HAProxy is the comparison, not the subject: without it the run goes on.
    if let Some(haproxy) = &haproxy {
        match start_haproxy(
            haproxy,
            dir.path(),
            &agents,
            settings.connections,
            &client_rt,
            &setup,
        ) {
            Ok((url, process)) => {
                children.push(process);
                targets.push(Target {
                    name: "haproxy",
                    url,
                    body: AGENT_BODY,
                    token: None,
                });
            }
            Err(e) => println!("skipping the HAProxy target: {e}\n"),
        }
    }
    let mut serves = vec![("switchboard", Vec::new())];
    let mut exports = None;
    if traced()? {
        let (sink, count) = agents_rt.block_on(start_trace_sink())?;
        exports = Some(count);
        let exporter = |sampler: &str, arg: Option<&str>| {
            let mut env = vec![
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
                    format!("http://127.0.0.1:{sink}"),
                ),
                ("OTEL_TRACES_SAMPLER".to_string(), sampler.to_string()),
            ];
            if let Some(arg) = arg {
                env.push(("OTEL_TRACES_SAMPLER_ARG".to_string(), arg.to_string()));
            }
            env
        };
        serves.push((SAMPLED_OUT, exporter("traceidratio", Some("0"))));
        serves.push((SAMPLED_IN, exporter("always_on", None)));
    }
    for (name, env) in serves {
        let (url, switchboard) =
            start_switchboard(name, &env, dir.path(), &agents, &client_rt, &setup)?;
        children.push(switchboard);
        targets.push(Target {
            name,
            url,
            body: INVOKE_BODY,
            token: Some(SWITCHBOARD_TOKEN),
        });
    }

    let mut rows = Vec::new();
    for target in &targets {
        rows.push(measure(
            target,
            &settings,
            wrk.as_deref(),
            dir.path(),
            &client_rt,
            &setup,
        )?);
    }
    print_table(&settings, &rows);
    print_ratios(&rows);
    if let Some(exports) = exports {
        print_traced_ratios(&rows, exports.load(std::sync::atomic::Ordering::Relaxed));
    }
    drop(children);
    Ok(())
}

/// Warm-up, then the fixed rate (the delicate measurement, so before the
/// saturation run leaves work behind in the gateway), then saturation.
fn measure(
    target: &Target,
    settings: &Settings,
    wrk: Option<&Path>,
    dir: &Path,
    rt: &Runtime,
    setup: &reqwest::Client,
) -> Result<Row, String> {
    probe(rt, setup, target)?;
    println!("measuring {} ({})", target.name, target.url);
    let client = load_client()?;
    if let Some(wrk) = wrk {
        // A failure here shows again, reported, in the saturation run.
        let _ = run_wrk(wrk, dir, target, WARM_UP_SECS, settings.connections);
    }
    // Opens the client's pooled connections at the rate it will be measured at.
    fixed_rate(rt, &client, target, FIXED_RATE as usize / 2);
    let fixed = fixed_rate(
        rt,
        &client,
        target,
        FIXED_RATE as usize * settings.secs as usize,
    );
    let saturation = match wrk {
        Some(wrk) => match run_wrk(wrk, dir, target, settings.secs, settings.connections) {
            Ok(s) => Some(s),
            Err(e) => {
                println!("  {}: wrk failed: {e}", target.name);
                None
            }
        },
        None => None,
    };
    Ok(Row {
        name: target.name,
        saturation,
        fixed,
    })
}

fn runtime(workers: Option<usize>, name: &str) -> Result<Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .thread_name(format!("gateway-{name}"))
        .build()
        .map_err(|e| format!("cannot start the {name} runtime: {e}"))
}

/// `name` on PATH, or in the sbin directories a non-root PATH may lack
/// (Debian puts haproxy in /usr/sbin).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|file| file.is_file())
}

/// The first line a tool prints about its version (`wrk --version` exits 1).
fn tool_version(tool: &Path, arg: &str) -> String {
    match Command::new(tool).arg(arg).stdin(Stdio::null()).output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            let first = text.lines().next().unwrap_or("");
            first
                .split(" Copyright")
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(e) => format!("cannot run {}: {e}", tool.display()),
    }
}

fn print_header(s: &Settings, wrk: Option<&Path>, haproxy: Option<&Path>) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("gateway load harness: direct vs HAProxy vs switchboard serve, one echo workload");
    println!(
        "  machine     {cpus} CPUs ({}), shared by agents, gateways and load generators",
        cpu_model()
    );
    println!(
        "  agents      {} echo agents (axum, in this process) on 127.0.0.1",
        s.agents
    );
    println!(
        "  fixed rate  {FIXED_RATE} req/s open loop for {} s = {} requests per target; latency from each scheduled send; <= {MAX_OUTSTANDING} in flight",
        s.secs,
        FIXED_RATE as u64 * s.secs
    );
    match wrk {
        Some(wrk) => println!(
            "  saturation  wrk -t{} -c{} -d{}s after a {WARM_UP_SECS} s warm-up; {}",
            s.connections.min(2),
            s.connections,
            s.secs,
            tool_version(wrk, "--version")
        ),
        None => println!("  saturation  skipped: wrk not found (run scripts/install-bench-deps)"),
    }
    match haproxy {
        Some(haproxy) => println!(
            "  haproxy     balance leastconn, nbthread 2; {}",
            tool_version(haproxy, "-v")
        ),
        None => println!("  haproxy     skipped: not found (run scripts/install-bench-deps)"),
    }
    println!(
        "  switchboard {} (durability {}, bearer token on every call)",
        switchboard_binary().display(),
        durability().unwrap_or_default()
    );
    println!();
}

// ---------------------------------------------------------------- agents

/// Starts `n` echo agents on the runtime; returns their ports.
fn start_agents(rt: &Runtime, n: usize) -> Result<Vec<u16>, String> {
    (0..n).map(|_| rt.block_on(start_echo_agent())).collect()
}

// ---------------------------------------------------------------- gateways

fn haproxy_config(port: u16, agents: &[u16], connections: u32) -> String {
    // HAProxy refuses to start when maxconn needs more descriptors than the
    // limit allows (about two per connection), so ask for what wrk opens.
    let maxconn = connections.max(1_000) + 256;
    let servers: String = agents
        .iter()
        .enumerate()
        .map(|(i, p)| format!("    server agent_{i} 127.0.0.1:{p}\n"))
        .collect();
    // No `log` lines: logging is off. No `check`: the agents do not fail here,
    // and probes would be traffic switchboard's 30 s probes barely match.
    format!(
        "global\n    nbthread 2\n    maxconn {maxconn}\n\n\
         defaults\n    mode http\n    http-reuse always\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\n\
         frontend gateway\n    bind 127.0.0.1:{port}\n    default_backend agents\n\n\
         backend agents\n    balance leastconn\n{servers}"
    )
}

/// Starts HAProxy in front of the agents; returns its invoke URL and the process.
fn start_haproxy(
    haproxy: &Path,
    dir: &Path,
    agents: &[u16],
    connections: u32,
    rt: &Runtime,
    setup: &reqwest::Client,
) -> Result<(String, KillOnDrop), String> {
    let port = free_port()?;
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(port, agents, connections))
        .map_err(|e| format!("cannot write {}: {e}", cfg.display()))?;
    let mut command = Command::new(haproxy);
    command.arg("-f").arg(&cfg).arg("-db");
    let mut child = KillOnDrop::spawn("haproxy", command, &dir.join("haproxy.log"))?;
    wait_ready(
        rt,
        setup,
        &format!("http://127.0.0.1:{port}/health"),
        &mut child,
    )?;
    Ok((format!("http://127.0.0.1:{port}/invoke"), child))
}

/// The store's durability for serve: `GATEWAY_DURABILITY`, `buffered` (the
/// default) or `sync` (every commit fsynced).
fn durability() -> Result<String, String> {
    match std::env::var("GATEWAY_DURABILITY").as_deref() {
        Err(_) | Ok("buffered") => Ok("buffered".into()),
        Ok("sync") => Ok("sync".into()),
        Ok(other) => Err(format!(
            "GATEWAY_DURABILITY={other:?}: expected buffered or sync"
        )),
    }
}

/// What `GATEWAY_SERVE_ENV` adds to serve's environment: `NAME=VALUE`
/// pairs separated by spaces (none when unset).
fn serve_env() -> Result<Vec<(String, String)>, String> {
    let Ok(pairs) = std::env::var("GATEWAY_SERVE_ENV") else {
        return Ok(Vec::new());
    };
    pairs
        .split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
            _ => Err(format!(
                "GATEWAY_SERVE_ENV has {pair:?}: expected NAME=VALUE pairs separated by spaces, \
                 e.g. OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_TRACES_SAMPLER=always_off"
            )),
        })
        .collect()
}

/// Whether `GATEWAY_TRACES` asks for the two traced serve targets.
fn traced() -> Result<bool, String> {
    match std::env::var("GATEWAY_TRACES").as_deref() {
        Err(_) | Ok("0") | Ok("") => Ok(false),
        Ok("1") => Ok(true),
        Ok(other) => Err(format!(
            "GATEWAY_TRACES={other:?}: expected 1 (or 0 / unset)"
        )),
    }
}

/// The `switchboard` binary to measure: `GATEWAY_SWITCHBOARD` (another build,
/// for an A/B of two builds), or the one this bench was built with.
fn switchboard_binary() -> PathBuf {
    std::env::var_os("GATEWAY_SWITCHBOARD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_switchboard")))
}

/// Starts `switchboard serve` on a fresh database of its own (named after
/// the target), with `env` added to what `GATEWAY_SERVE_ENV` gives it,
/// registers the agents and returns its invoke URL and the process.
fn start_switchboard(
    name: &str,
    env: &[(String, String)],
    dir: &Path,
    agents: &[u16],
    rt: &Runtime,
    setup: &reqwest::Client,
) -> Result<(String, KillOnDrop), String> {
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    // `[storage] durability` as GATEWAY_DURABILITY asks (buffered or sync).
    let slug: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let config = dir.join(format!("{slug}.toml"));
    std::fs::write(
        &config,
        format!("[storage]\ndurability = \"{}\"\n", durability()?),
    )
    .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let mut command = Command::new(switchboard_binary());
    command
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(dir.join(format!("{slug}_data")))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        // A token, which every call presents, and the default log level
        // whatever the caller's environment says: per-request logging would
        // be measured.
        .env("SWITCHBOARD_TOKEN", SWITCHBOARD_TOKEN)
        .env("RUST_LOG", "info")
        .envs(serve_env()?)
        .envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = KillOnDrop::spawn(name, command, &dir.join(format!("{slug}.log")))?;
    wait_ready(rt, setup, &format!("{base}/healthz"), &mut child)?;
    for (i, agent) in agents.iter().enumerate() {
        let body = format!(r#"{{"tools":["code"],"endpoint":"http://127.0.0.1:{agent}/invoke"}}"#);
        let request = setup
            .put(format!("{base}/v1/agents/agent_{i}"))
            .bearer_auth(SWITCHBOARD_TOKEN)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let (status, text) = rt.block_on(call(request))?;
        if !status.is_success() {
            return Err(format!(
                "registering agent_{i} with switchboard: {status} {text}"
            ));
        }
    }
    Ok((format!("{base}/v1/invoke"), child))
}

/// One call through `target` must echo before it is measured: otherwise the
/// numbers would be those of an error path.
fn probe(rt: &Runtime, setup: &reqwest::Client, target: &Target) -> Result<(), String> {
    match rt.block_on(call(target.request(setup))) {
        Ok((status, text)) if status.is_success() && text.contains("hello") => Ok(()),
        Ok((status, text)) => Err(format!(
            "{}: the probe call got {status} {text}",
            target.name
        )),
        Err(e) => Err(format!("{}: the probe call failed: {e}", target.name)),
    }
}

fn setup_client() -> Result<reqwest::Client, String> {
    switchboard::TlsTrust::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// The fixed-rate client: pooled keep-alive connections, Nagle off.
fn load_client() -> Result<reqwest::Client, String> {
    switchboard::TlsTrust::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(MAX_OUTSTANDING)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

// ---------------------------------------------------------------- fixed rate

/// Sends `count` requests at `FIXED_RATE`, each spawned at its scheduled
/// instant by this (non-runtime) thread, and collects their latencies.
fn fixed_rate(rt: &Runtime, client: &reqwest::Client, target: &Target, count: usize) -> FixedRate {
    let period = Duration::from_secs(1) / FIXED_RATE;
    let permits = Arc::new(Semaphore::new(MAX_OUTSTANDING));
    let start = Instant::now() + Duration::from_millis(10);
    let last_send = start + period * count as u32;
    let mut tasks = Vec::with_capacity(count);
    let mut errors = 0;
    for i in 0..count {
        let scheduled = start + period * i as u32;
        wait_until(scheduled);
        // Too many in flight (or the pacer fell far behind): an error, not a
        // queue, so the phase stays bounded and the stall stays visible.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) if Instant::now() < last_send + PHASE_GRACE => p,
            _ => {
                errors += 1;
                continue;
            }
        };
        let request = target.request(client);
        tasks.push(rt.spawn(async move {
            let ok = send(request).await;
            drop(permit);
            ok.then(|| scheduled.elapsed())
        }));
    }
    let deadline = tokio::time::Instant::from_std(last_send + PHASE_GRACE);
    let (mut latencies, failed) = rt.block_on(collect(tasks, deadline));
    latencies.sort_unstable();
    FixedRate {
        latencies,
        errors: errors + failed,
    }
}

/// Sleeps most of the way, then spins: a thread sleep overshoots by tens of
/// µs and tokio's timer ticks in whole ms, either of which would be measured.
fn wait_until(deadline: Instant) {
    const SPIN: Duration = Duration::from_micros(60);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if left > SPIN {
            std::thread::sleep(left - SPIN);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// True when the call answered 2xx with a whole body.
async fn send(request: reqwest::RequestBuilder) -> bool {
    match request.send().await {
        Ok(response) if response.status().is_success() => response.bytes().await.is_ok(),
        _ => false,
    }
}

/// Latencies of the calls that succeeded by `deadline`, and how many did not.
async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Option<Duration>>>,
    deadline: tokio::time::Instant,
) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for mut task in tasks {
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(Some(latency))) => latencies.push(latency),
            Ok(_) => failed += 1,
            Err(_) => {
                task.abort();
                failed += 1;
            }
        }
    }
    (latencies, failed)
}

// ---------------------------------------------------------------- wrk

fn lua_script(target: &Target) -> String {
    let body = target.body;
    let mut script = format!(
        "wrk.method = \"POST\"\nwrk.body = [==[{body}]==]\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
    );
    if let Some(token) = target.token {
        script.push_str(&format!(
            "wrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"
        ));
    }
    script
}

/// Runs wrk against `target` for `secs` and reads its report.
fn run_wrk(
    wrk: &Path,
    dir: &Path,
    target: &Target,
    secs: u64,
    connections: u32,
) -> Result<Saturation, String> {
    let script = dir.join(format!("{}.lua", target.name));
    std::fs::write(&script, lua_script(target))
        .map_err(|e| format!("cannot write {}: {e}", script.display()))?;
    let mut command = Command::new(wrk);
    command
        .arg(format!("-t{}", connections.min(2)))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(&target.url);
    let mut child = KillOnDrop::spawn(
        "wrk",
        command,
        &dir.join(format!("{}.wrk.txt", target.name)),
    )?;
    let status = child.wait(Duration::from_secs(secs + 30))?;
    let output = std::fs::read_to_string(&child.log).unwrap_or_default();
    if !status.success() {
        return Err(format!("wrk exited ({status}):\n{output}"));
    }
    parse_wrk(&output)
}

/// Reads req/s, the 50 % and 99 % latencies and the error counts from
/// `wrk --latency` output.
fn parse_wrk(output: &str) -> Result<Saturation, String> {
    let (mut rps, mut p50, mut p99, mut errors) = (None, None, None, 0);
    for line in output.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = parse_wrk_duration(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = parse_wrk_duration(v.trim());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    match (rps, p50, p99) {
        (Some(rps), Some(p50), Some(p99)) => Ok(Saturation {
            rps,
            p50,
            p99,
            errors,
        }),
        _ => Err(format!("cannot read wrk's report:\n{output}")),
    }
}

/// "812.00us", "1.23ms", "2.01s", "1.00m" as wrk prints them.
fn parse_wrk_duration(text: &str) -> Option<Duration> {
    let (number, seconds_per_unit) = [
        ("us", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ]
    .iter()
    .find_map(|(unit, scale)| Some((text.strip_suffix(unit)?, *scale)))?;
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| Duration::from_secs_f64(value * seconds_per_unit))
}

// ---------------------------------------------------------------- report

fn print_table(s: &Settings, rows: &[Row]) {
    println!();
    let saturation = format!("saturation (wrk -c{}, {} s)", s.connections, s.secs);
    let fixed = format!("fixed {FIXED_RATE} req/s, open loop ({} s)", s.secs);
    println!("{:<17} | {saturation:<34} | {fixed}", "");
    println!(
        "{:<17} | {:>10} {:>7} {:>7} {:>7} | {:>8} {:>8} {:>8} {:>9} {:>7}",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "p50 ms",
        "p99 ms",
        "max ms",
        "completed",
        "errors"
    );
    println!("{}", "-".repeat(103));
    for row in rows {
        let (rps, p50, p99, errs) = match &row.saturation {
            Some(s) => (
                format!("{:.0}", s.rps),
                ms(Some(s.p50)),
                ms(Some(s.p99)),
                s.errors.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let f = &row.fixed;
        let (f50, f99, fmax) = (
            ms(f.percentile(0.50)),
            ms(f.percentile(0.99)),
            ms(f.latencies.last().copied()),
        );
        let (done, ferrs) = (f.latencies.len(), f.errors);
        println!(
            "{:<17} | {rps:>10} {p50:>7} {p99:>7} {errs:>7} | {f50:>8} {f99:>8} {fmax:>8} {done:>9} {ferrs:>7}",
            row.name
        );
    }
    println!();
}

fn verdict(met: bool) -> &'static str {
    if met {
        "goal met"
    } else {
        "not met"
    }
}

fn print_ratios(rows: &[Row]) {
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    let rps = |name: &str| find(name)?.saturation.as_ref().map(|s| s.rps);
    let p99 = |name: &str| find(name)?.fixed.percentile(0.99);

    let throughput_ratio =
        |label: &str, other: &str, goal: f64, missing: &str| match (rps("switchboard"), rps(other))
        {
            (Some(sw), Some(base)) => println!(
                "{label} {:.2}x  (goal >= {goal:.1}x: {})",
                sw / base,
                verdict(sw / base >= goal)
            ),
            _ => println!("{label} n/a ({missing})"),
        };
    throughput_ratio(
        "switchboard / direct throughput: ",
        "direct",
        GOAL_VS_DIRECT,
        "no wrk numbers",
    );
    throughput_ratio(
        "switchboard / haproxy throughput:",
        "haproxy",
        GOAL_VS_HAPROXY,
        "no wrk or haproxy numbers",
    );
    let added =
        |name: &str| Some(p99(name)?.as_secs_f64() * 1e3 - p99("direct")?.as_secs_f64() * 1e3);
    match added("switchboard") {
        Some(a) => println!(
            "added p99 at {FIXED_RATE} req/s:      switchboard {a:+.3} ms  (goal < {GOAL_ADDED_P99_MS} ms: {})",
            verdict(a < GOAL_ADDED_P99_MS)
        ),
        None => println!("added p99 at {FIXED_RATE} req/s:      n/a (no successful calls)"),
    }
    if let Some(a) = added("haproxy") {
        println!("                                  haproxy     {a:+.3} ms  (for comparison)");
    }
    let saturation_errors: u64 = rows
        .iter()
        .filter_map(|r| r.saturation.as_ref())
        .map(|s| s.errors)
        .sum();
    let fixed_errors: usize = rows.iter().map(|r| r.fixed.errors).sum();
    if saturation_errors + fixed_errors as u64 > 0 {
        println!(
            "note: some calls failed (see the errors columns); wrk's req/s counts failed calls too"
        );
    }
}

/// Each traced serve against the untraced one of the same run.
fn print_traced_ratios(rows: &[Row], exports: u64) {
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    let rps = |name: &str| find(name)?.saturation.as_ref().map(|s| s.rps);
    let p99 = |name: &str| Some(find(name)?.fixed.percentile(0.99)?.as_secs_f64() * 1e3);
    for name in [SAMPLED_OUT, SAMPLED_IN] {
        match (rps(name), rps("switchboard")) {
            (Some(traced), Some(plain)) => {
                let ratio = traced / plain;
                let goal = if name == SAMPLED_OUT {
                    format!(
                        "  (goal >= {GOAL_SAMPLED_OUT:.2}x: {})",
                        verdict(ratio >= GOAL_SAMPLED_OUT)
                    )
                } else {
                    "  (the cost of tracing every call)".to_string()
                };
                println!("{name} / untraced throughput: {ratio:.2}x{goal}");
            }
            _ => println!("{name} / untraced throughput: n/a (no wrk numbers)"),
        }
        if let (Some(traced), Some(plain)) = (p99(name), p99("switchboard")) {
            println!(
                "{name}: p99 at {FIXED_RATE} req/s {:+.3} ms against untraced",
                traced - plain
            );
        }
    }
    println!("trace exports received by the sink: {exports}");
}
