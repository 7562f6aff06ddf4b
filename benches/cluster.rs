//! Cluster mode vs a single node: what does sharing session bindings
//! through etcd add to a sticky call, and what do three nodes serve next to
//! one, in the same run?
//!
//! One run starts two HTTP echo agents (axum, in this process), a one-member
//! etcd (`etcd` on PATH) on a temp data directory, one plain `switchboard
//! serve` (no cluster: the baseline) and three `switchboard serve
//! --cluster-etcd URL --node-id nodeN`, all on 127.0.0.1 with temp data
//! directories; the agents are registered on the single node and, through
//! node 1, on the cluster. Every call is `POST /v1/invoke` with
//! `"strategy": "sticky"` and a session id, in a closed loop, and these
//! cases alternate for R rounds (the first case of a round rotates), each
//! bounded by a number of calls and by a time, whichever ends first:
//!
//! - **first call of a session** (a new session id per call): on the single
//!   node the binding is committed with the call's record; on a cluster node
//!   it is first created in etcd (a create-if-absent transaction);
//! - **repeated call of a bound session**: served from the node's binding
//!   cache on both;
//! - **throughput**: C concurrent clients, each on its own bound session,
//!   on the single node, on cluster node 1 alone, and spread over the three
//!   cluster nodes (client i on node i mod 3); and C clients opening new
//!   sessions on the single node and on node 1.
//!
//! Ratios are taken within each round and their median reported.
//!
//! `cargo bench --bench cluster`. Settings, from the environment:
//! `CLUSTER_CONCURRENCY` (16), `CLUSTER_ROUNDS` (5), `CLUSTER_CALLS` (20000,
//! per round and case), `CLUSTER_ROUND_SECS` (2, per round and case).

#[path = "support/harness.rs"]
mod harness;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{Budget, Case, KillOnDrop};
use reqwest::header::CONTENT_TYPE;
use serde_json::json;
use tokio::runtime::Runtime;

/// How long the cluster nodes get to route an agent registered through node 1.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(20);

fn main() {
    // `run` owns every process and the temp dir: all are gone by the time
    // the process exits, on an error as well as on success.
    if let Err(e) = run() {
        eprintln!("cluster bench: {e}");
        std::process::exit(1);
    }
}

struct Settings {
    concurrency: usize,
    rounds: usize,
    budget: Budget,
}

fn settings() -> Result<Settings, String> {
    Ok(Settings {
        concurrency: harness::env_number("CLUSTER_CONCURRENCY", 16, 1..=256)?,
        rounds: harness::env_number("CLUSTER_ROUNDS", 5, 1..=100)?,
        budget: Budget {
            calls: harness::env_number("CLUSTER_CALLS", 20_000, 1..=10_000_000)?,
            time: Duration::from_secs(harness::env_number("CLUSTER_ROUND_SECS", 2, 1..=600)?),
        },
    })
}

// ---------------------------------------------------------------- processes

/// `etcd` on PATH, or the Debian location.
fn etcd_binary() -> Result<String, String> {
    for candidate in ["etcd", "/usr/bin/etcd"] {
        let found = Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return Ok(candidate.to_string());
        }
    }
    Err(
        "the `etcd` binary is not installed; run scripts/install-deps (Debian's etcd-server)"
            .into(),
    )
}

/// A one-member etcd on free ports; returns its client URL and the process.
fn start_etcd(
    dir: &Path,
    rt: &Runtime,
    http: &reqwest::Client,
) -> Result<(String, KillOnDrop), String> {
    let etcd = etcd_binary()?;
    let (client, peer) = (harness::free_port()?, harness::free_port()?);
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut command = Command::new(&etcd);
    command
        .args(["--name", "e1", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &url])
        .args(["--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("e1={peer_url}")])
        .current_dir(dir);
    let mut child = KillOnDrop::spawn("etcd", command, &dir.join("etcd.log"))?;
    harness::wait_ready(rt, http, &format!("{url}/health"), &mut child)?;
    Ok((url, child))
}

/// A `switchboard serve`, in cluster mode when `cluster` is (etcd URL, node id).
fn start_node(
    dir: &Path,
    name: &str,
    cluster: Option<(&str, &str)>,
    rt: &Runtime,
    http: &reqwest::Client,
) -> Result<(String, KillOnDrop), String> {
    let port = harness::free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut command = harness::serve_command(&dir.join(name), port);
    command.current_dir(dir);
    if let Some((etcd, node_id)) = cluster {
        command
            .args(["--cluster-etcd", etcd])
            .args(["--node-id", node_id]);
    }
    let mut child = KillOnDrop::spawn(name, command, &dir.join(format!("{name}.log")))?;
    harness::wait_ready(rt, http, &format!("{base}/healthz"), &mut child)?;
    Ok((base, child))
}

fn register(
    rt: &Runtime,
    http: &reqwest::Client,
    base: &str,
    agents: &[u16],
) -> Result<(), String> {
    for (i, port) in agents.iter().enumerate() {
        let body =
            json!({"tools": ["code"], "endpoint": format!("http://127.0.0.1:{port}/invoke")});
        let request = http
            .put(format!("{base}/v1/agents/agent_{i}"))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let (status, text) = rt.block_on(harness::call(request))?;
        if !status.is_success() {
            return Err(format!("registering agent_{i} on {base}: {status} {text}"));
        }
    }
    Ok(())
}

/// One sticky call; true when it answered 200 with the agent that served it.
async fn sticky_call(http: &reqwest::Client, url: &str, session: &str) -> bool {
    let body = json!({"tool": "run", "category": "code", "input": {"text": "hello"},
        "session_id": session, "strategy": "sticky"});
    let request = http
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string());
    matches!(harness::call(request).await, Ok((s, text)) if s.is_success() && text.contains("\"agent_id\""))
}

/// Waits until `base` routes a call of `code` (an agent registered on
/// another node has reached it).
fn wait_routed(rt: &Runtime, http: &reqwest::Client, base: &str) -> Result<(), String> {
    let deadline = Instant::now() + PROPAGATION_TIMEOUT;
    let url = format!("{base}/v1/invoke");
    while !rt.block_on(sticky_call(http, &url, "propagation-probe")) {
        if Instant::now() > deadline {
            return Err(format!(
                "{base} did not route the agents registered through node 1 within {PROPAGATION_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

// ---------------------------------------------------------------- cases

#[derive(Clone, Copy, PartialEq)]
enum Sessions {
    /// A new session id for every call.
    New,
    /// Each client keeps its own session, bound before the rounds.
    Bound,
}

struct Spec {
    name: String,
    /// The nodes' `/v1/invoke` URLs; client i uses `urls[i % len]`.
    urls: Vec<String>,
    sessions: Sessions,
    concurrency: usize,
}

/// A unique session id for each new-session call of the run.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(0);

async fn load(spec: &Spec, index: usize, http: &reqwest::Client, budget: Budget) -> harness::Run {
    let callers = (0..spec.concurrency)
        .map(|i| {
            let http = http.clone();
            let url = Arc::new(spec.urls[i % spec.urls.len()].clone());
            let bound = Arc::new(format!("bound-{index}-{i}"));
            let sessions = spec.sessions;
            move || {
                let (http, url, bound) = (http.clone(), url.clone(), bound.clone());
                async move {
                    let session = match sessions {
                        Sessions::Bound => bound.to_string(),
                        Sessions::New => {
                            format!("new-{}", NEXT_SESSION.fetch_add(1, Ordering::Relaxed))
                        }
                    };
                    sticky_call(&http, &url, &session).await
                }
            }
        })
        .collect();
    harness::closed_loop(callers, budget).await
}

// ---------------------------------------------------------------- run

fn run() -> Result<(), String> {
    let settings = settings()?;
    let c = settings.concurrency;
    println!("cluster bench: sticky calls on a single node vs cluster nodes sharing bindings through etcd");
    harness::print_machine();
    println!(
        "  load        closed loop; {} rounds, each case per round <= {} calls or <= {:?}; the first case of a round rotates",
        settings.rounds, settings.budget.calls, settings.budget.time
    );
    println!("  switchboard {}", env!("CARGO_BIN_EXE_switchboard"));

    // The agents get a runtime of their own, as separate processes would.
    let agents_rt = harness::runtime(2, "agents")?;
    let client_rt = harness::runtime(2, "client")?;
    let http = harness::http_client()?;
    let agents = (0..2)
        .map(|_| agents_rt.block_on(harness::start_echo_agent()))
        .collect::<Result<Vec<u16>, String>>()?;

    // Declared before the processes so the directory outlives them; the
    // processes drop in reverse order: the nodes, then etcd.
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let (etcd_url, etcd) = start_etcd(dir.path(), &client_rt, &http)?;
    let etcd_version = Command::new(etcd_binary()?)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    println!("  etcd        one member, default settings (fsync on); {etcd_version}");
    println!();
    let (single, single_process) = start_node(dir.path(), "single", None, &client_rt, &http)?;
    register(&client_rt, &http, &single, &agents)?;
    let mut nodes = Vec::new();
    let mut node_processes = Vec::new();
    for i in 1..=3 {
        let id = format!("node{i}");
        let (base, process) =
            start_node(dir.path(), &id, Some((&etcd_url, &id)), &client_rt, &http)?;
        nodes.push(base);
        node_processes.push(process);
    }
    register(&client_rt, &http, &nodes[0], &agents)?;
    for base in &nodes {
        wait_routed(&client_rt, &http, base)?;
    }
    wait_routed(&client_rt, &http, &single)?;

    let invoke = |base: &String| format!("{base}/v1/invoke");
    let spec = |name: String, urls: Vec<String>, sessions, concurrency| Spec {
        name,
        urls,
        sessions,
        concurrency,
    };
    let specs = vec![
        spec(
            "single node, first call of a session, 1 client".into(),
            vec![invoke(&single)],
            Sessions::New,
            1,
        ),
        spec(
            "cluster node, first call of a session, 1 client".into(),
            vec![invoke(&nodes[0])],
            Sessions::New,
            1,
        ),
        spec(
            "single node, bound session, 1 client".into(),
            vec![invoke(&single)],
            Sessions::Bound,
            1,
        ),
        spec(
            "cluster node, bound session, 1 client".into(),
            vec![invoke(&nodes[0])],
            Sessions::Bound,
            1,
        ),
        spec(
            format!("single node, bound sessions, {c} clients"),
            vec![invoke(&single)],
            Sessions::Bound,
            c,
        ),
        spec(
            format!("cluster, 1 node, bound sessions, {c} clients"),
            vec![invoke(&nodes[0])],
            Sessions::Bound,
            c,
        ),
        spec(
            format!("cluster, 3 nodes, bound sessions, {c} clients"),
            nodes.iter().map(invoke).collect(),
            Sessions::Bound,
            c,
        ),
        spec(
            format!("single node, first calls, {c} clients"),
            vec![invoke(&single)],
            Sessions::New,
            c,
        ),
        spec(
            format!("cluster node, first calls, {c} clients"),
            vec![invoke(&nodes[0])],
            Sessions::New,
            c,
        ),
    ];

    let cases = client_rt.block_on(async {
        // Warm-up: binds every client's session and opens the connections.
        for (index, spec) in specs.iter().enumerate() {
            let warm_up = Budget {
                calls: 10 * spec.concurrency,
                time: Duration::from_secs(2),
            };
            let run = load(spec, index, &http, warm_up).await;
            if run.latencies.is_empty() {
                return Err(format!("{}: every warm-up call failed", spec.name));
            }
        }
        let mut cases: Vec<Case> = specs.iter().map(|s| Case::new(s.name.clone())).collect();
        for round in 0..settings.rounds {
            for k in 0..specs.len() {
                let index = (round + k) % specs.len();
                let run = load(&specs[index], index, &http, settings.budget).await;
                cases[index].add(run);
            }
            println!(
                "  round {} done (load average {})",
                round + 1,
                harness::load_average()
            );
        }
        Ok(cases)
    })?;
    drop(node_processes);
    drop(single_process);
    drop(etcd);
    drop(agents_rt);

    println!();
    harness::print_table_header();
    for case in &cases {
        harness::print_case(case);
    }
    println!();
    let latency = |label: &str, cluster: &Case, single: &Case| {
        println!(
            "  {label:<38} cluster / single throughput {:.2}x; added p50 {:+.3} ms, added p99 {:+.3} ms",
            cluster.ratio_to(single),
            cluster.added_p50_ms(single).unwrap_or(f64::NAN),
            cluster.added_p99_ms(single).unwrap_or(f64::NAN),
        )
    };
    latency("first call of a session, 1 client:", &cases[1], &cases[0]);
    latency("bound session, 1 client:", &cases[3], &cases[2]);
    latency(
        &format!("bound sessions, {c} clients:"),
        &cases[5],
        &cases[4],
    );
    latency(&format!("first calls, {c} clients:"), &cases[8], &cases[7]);
    println!(
        "  {:<38} 3 nodes / 1 node throughput {:.2}x; 3 nodes / single node {:.2}x",
        format!("bound sessions, {c} clients:"),
        cases[6].ratio_to(&cases[5]),
        cases[6].ratio_to(&cases[4]),
    );
    if cases.iter().any(|c| c.errors > 0) {
        println!("  note: some calls failed or timed out (errors column)");
    }
    println!("  load average at the end {}", harness::load_average());
    Ok(())
}
