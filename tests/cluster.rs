//! Cluster mode end to end: a real etcd cluster (three members) and three
//! `switchboard serve` processes on 127.0.0.1, each with its own data
//! directory, given the three members' client URLs. Every process is killed
//! when its guard drops, panics included; every wait is bounded. On a
//! failure the tail of each process's log is printed.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::etcd::{log_file, within, Proc};
use common::{free_port, Behaviour, TestAgent};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

struct Node {
    process: Proc,
    base: String,
}

/// One etcd member: its URLs stay the same across restarts.
struct Member {
    name: String,
    client: String,
    peer: String,
    /// `None` while it is killed.
    process: Option<Proc>,
}

/// etcd (three members) and three nodes.
struct Cluster {
    nodes: Vec<Node>,
    etcd: Vec<Member>,
    /// The first member's client URL.
    #[allow(dead_code)]
    etcd_url: String,
    http: reqwest::Client,
    // Dropped last: the processes above are killed first.
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // Kill first, so the logs are complete, then show their tails.
        for node in &mut self.nodes {
            node.process.kill();
        }
        for member in &mut self.etcd {
            member.process.take();
        }
        let Ok(entries) = std::fs::read_dir(self._dir.path()) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            eprintln!("----- {} (last lines)\n{tail}", log.display());
        }
    }
}

fn etcd_binary() -> &'static str {
    let found = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the `etcd` binary is not installed; run scripts/install-deps (Debian's etcd-server)"
    );
    "etcd"
}

impl Cluster {
    /// Three etcd members and three nodes, every node started with `serve`'s
    /// usual flags.
    async fn start() -> Cluster {
        Cluster::start_with(|_| Vec::new()).await
    }

    /// Like [`Cluster::start`], node `i` (1-based) also given `extra(i)` flags.
    async fn start_with(extra: impl Fn(usize) -> Vec<&'static str>) -> Cluster {
        etcd_binary();
        let dir = tempfile::tempdir().unwrap();
        let etcd: Vec<Member> = (1..=3)
            .map(|i| Member {
                name: format!("e{i}"),
                client: format!("http://127.0.0.1:{}", free_port()),
                peer: format!("http://127.0.0.1:{}", free_port()),
                process: None,
            })
            .collect();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            etcd_url: etcd[0].client.clone(),
            etcd,
            http: common::http_client(),
            _dir: dir,
        };
        for m in 0..3 {
            cluster.start_member(m);
        }
        cluster.etcd_healthy(Duration::from_secs(30)).await;
        for i in 1..=3 {
            let node = cluster.spawn_node_with(i, &extra(i));
            cluster.nodes.push(node);
        }
        for i in 0..3 {
            cluster.node_serves(i, Duration::from_secs(20)).await;
        }
        cluster
    }

    /// Starts (or restarts, on its data directory) etcd member `m` (0-based).
    fn start_member(&mut self, m: usize) {
        let initial: Vec<String> = self
            .etcd
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect();
        let token = format!("sb-{}", self._dir.path().display());
        let dir = self._dir.path().to_path_buf();
        let member = &mut self.etcd[m];
        assert!(member.process.is_none(), "member {m} is running");
        member.process = Some(Proc(
            Command::new("etcd")
                .args(["--name", &member.name, "--data-dir"])
                .arg(dir.join(format!("etcd-{}", member.name)))
                .args(["--listen-client-urls", &member.client])
                .args(["--advertise-client-urls", &member.client])
                .args(["--listen-peer-urls", &member.peer])
                .args(["--initial-advertise-peer-urls", &member.peer])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .stdout(Stdio::null())
                .stderr(log_file(&dir, &format!("etcd-{}", member.name)))
                .spawn()
                .unwrap(),
        ));
    }

    /// SIGKILLs etcd member `m` (0-based).
    fn kill_member(&mut self, m: usize) {
        self.etcd[m].process.take().expect("the member runs").kill();
    }

    /// The client URLs of the members running now.
    fn live_members(&self) -> Vec<String> {
        self.etcd
            .iter()
            .filter(|m| m.process.is_some())
            .map(|m| m.client.clone())
            .collect()
    }

    /// Waits until every running member says it is healthy (has a leader).
    async fn etcd_healthy(&self, limit: Duration) {
        for url in self.live_members() {
            let http = self.http.clone();
            within(limit, "an etcd member is healthy", || {
                let request = http.get(format!("{url}/health")).send();
                async move {
                    let response = request.await.ok()?;
                    let body: Value = response.json().await.ok()?;
                    (body["health"] == "true").then_some(())
                }
            })
            .await;
        }
    }

    /// The index of the member that is etcd's leader now, as its own status
    /// says (`leader` equal to its `member_id`).
    async fn etcd_leader(&self) -> usize {
        within(Duration::from_secs(10), "etcd has a leader", || async {
            for (m, member) in self.etcd.iter().enumerate() {
                if member.process.is_none() {
                    continue;
                }
                let url = format!("{}/v3/maintenance/status", member.client);
                let response = self.http.post(url).body("{}").send().await.ok()?;
                let status: Value = response.json().await.ok()?;
                let (id, leader) = (&status["header"]["member_id"], &status["leader"]);
                if id.is_string() && id == leader {
                    return Some(m);
                }
            }
            None
        })
        .await
    }

    /// Starts node `i` (1-based) on its data directory, with the usual flags.
    fn spawn_node(&self, i: usize) -> Node {
        self.spawn_node_with(i, &[])
    }

    /// Starts node `i` (1-based) on its data directory, on a new port, with
    /// the usual flags (all three members' URLs, member `i` first) and
    /// `extra`. Its log goes to `node{i}.log`.
    fn spawn_node_with(&self, i: usize, extra: &[&str]) -> Node {
        let port = free_port();
        // Each node starts with another member first: whichever member
        // dies, some node was talking to it and must move on.
        let mut urls: Vec<String> = self.etcd.iter().map(|m| m.client.clone()).collect();
        let first = (i - 1) % urls.len();
        urls.rotate_left(first);
        let process = Proc(
            Command::new(env!("CARGO_BIN_EXE_switchboard"))
                .env_remove("SWITCHBOARD_TOKEN")
                .env("RUST_LOG", "info")
                .env("RUST_BACKTRACE", "1")
                .arg("serve")
                .arg("--data")
                .arg(self._dir.path().join(format!("node{i}")))
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--cluster-etcd", &urls.join(",")])
                .args(["--node-id", &format!("node{i}")])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(log_file(self._dir.path(), &format!("node{i}")))
                .spawn()
                .unwrap(),
        );
        Node {
            process,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The log node `i` (1-based) has written so far, restarts included.
    fn node_log(&self, i: usize) -> String {
        std::fs::read_to_string(self._dir.path().join(format!("node{i}.log"))).unwrap_or_default()
    }

    /// Waits until node `node` (0-based) answers `/healthz`.
    async fn node_serves(&self, node: usize, limit: Duration) {
        let url = format!("{}/healthz", self.nodes[node].base);
        let http = self.http.clone();
        within(limit, "a node serves", || {
            let request = http.get(&url).send();
            async move { request.await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
    }

    /// `/healthz` of node `node` (0-based).
    async fn health(&self, node: usize) -> Value {
        let url = format!("{}/healthz", self.nodes[node].base);
        self.send(reqwest::Method::GET, url, None).await.1
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body)
    }

    async fn register(&self, node: usize, id: &str, endpoint: &str) -> (u16, Value) {
        let url = format!("{}/v1/agents/{id}", self.nodes[node].base);
        let body = json!({"endpoint": endpoint, "tools": ["code"]});
        self.send(reqwest::Method::PUT, url, Some(body)).await
    }

    async fn invoke(&self, node: usize, session: Option<&str>) -> (u16, Value) {
        let mut body = json!({"tool": "run", "category": "code", "input": {"n": node}});
        if let Some(session) = session {
            body["session_id"] = json!(session);
            body["strategy"] = json!("sticky");
        }
        let url = format!("{}/v1/invoke", self.nodes[node].base);
        self.send(reqwest::Method::POST, url, Some(body)).await
    }

    /// 30 concurrent sticky calls of one session, 10 through each node; the
    /// one agent that served them all.
    async fn hammer(&self, session: &str) -> String {
        let cluster = self;
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..30 {
            let http = cluster.http.clone();
            let url = format!("{}/v1/invoke", cluster.nodes[i % 3].base);
            let session = session.to_string();
            calls.spawn(async move {
                let body = json!({"tool": "run", "category": "code", "input": {},
                "session_id": session, "strategy": "sticky"});
                let response = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let bytes = response.bytes().await.unwrap();
                let body = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
                (status, body)
            });
        }
        let answers = calls.join_all().await;
        let mut served = Vec::new();
        for (status, body) in answers {
            assert_eq!(status, 200, "{body}");
            served.push(body["agent_id"].as_str().unwrap().to_string());
        }
        served.sort();
        served.dedup();
        assert_eq!(served.len(), 1, "one session, several agents: {served:?}");
        served.pop().unwrap()
    }

    /// The values under a prefix of etcd, read straight from etcd (from
    /// the first running member that answers).
    async fn etcd_values(&self, prefix: &str) -> Vec<Value> {
        self.etcd_pairs(prefix)
            .await
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// Writes one key outside `switchboard/`, then compacts etcd's history
    /// up to that write: every earlier revision is gone.
    async fn compact_etcd(&self) {
        let member = self.live_members().pop().unwrap();
        let url = format!("{member}/v3/kv/put");
        let body = json!({"key": B64.encode("test/marker"), "value": B64.encode("x")});
        let (status, answer) = self.send(reqwest::Method::POST, url, Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        let revision = answer["header"]["revision"].as_str().unwrap().to_string();
        let url = format!("{member}/v3/kv/compaction");
        let body = json!({"revision": revision, "physical": true});
        let (status, answer) = self.send(reqwest::Method::POST, url, Some(body)).await;
        assert_eq!(status, 200, "{answer}");
    }

    /// The keys and values under a prefix of etcd, read straight from etcd.
    async fn etcd_pairs(&self, prefix: &str) -> Vec<(String, Value)> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let body = json!({"key": B64.encode(prefix), "range_end": B64.encode(end)});
        let answer = within(Duration::from_secs(10), "etcd answers a range", || {
            let body = body.clone();
            async move {
                for member in self.live_members() {
                    let request = self
                        .http
                        .post(format!("{member}/v3/kv/range"))
                        .body(body.to_string());
                    let Ok(response) = request.send().await else {
                        continue;
                    };
                    if response.status().is_success() {
                        return response.json::<Value>().await.ok();
                    }
                }
                None
            }
        })
        .await;
        answer["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                let key = B64.decode(kv["key"].as_str().unwrap()).unwrap();
                let value = B64.decode(kv["value"].as_str().unwrap()).unwrap();
                (
                    String::from_utf8(key).unwrap(),
                    serde_json::from_slice(&value).unwrap(),
                )
            })
            .collect()
    }

    /// Waits until every node routes calls of `code` (to some agent).
    async fn routed_everywhere(&self, limit: Duration) {
        for node in 0..self.nodes.len() {
            within(limit, "every node routes the agent", || async move {
                let (status, _) = self.invoke(node, None).await;
                (status == 200).then_some(())
            })
            .await;
        }
    }
}

fn cluster_status(base: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env_remove("SWITCHBOARD_TOKEN")
        .args(["cluster", "status", "--json", "--server", base])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn node_ids(status: &Value) -> Vec<String> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registration_through_node_1_is_routed_by_nodes_2_and_3_within_2_s() {
    let cluster = &Cluster::start().await;
    let agent = TestAgent::start("a1", Behaviour::Echo).await;
    let (status, body) = cluster.register(0, "a1", &agent.endpoint).await;
    assert_eq!(status, 200, "{body}");
    for node in [1, 2] {
        let answer = within(
            Duration::from_secs(2),
            "routed by another node",
            || async move {
                let (status, body) = cluster.invoke(node, None).await;
                (status == 200).then_some(body)
            },
        )
        .await;
        assert_eq!(answer["agent_id"], "a1", "{answer}");
    }
    assert_eq!(agent.hits(), 2);
    // A removal through node 3 reaches node 1.
    let url = format!("{}/v1/agents/a1", cluster.nodes[2].base);
    let (status, body) = cluster.send(reqwest::Method::DELETE, url, None).await;
    assert!(status < 300, "{status} {body}");
    within(
        Duration::from_secs(2),
        "the removal reaches node 1",
        || async {
            let (status, _) = cluster.invoke(0, None).await;
            (status == 503).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_session_hammered_through_three_nodes_ends_with_one_binding() {
    let cluster = Cluster::start().await;
    let agents = [
        TestAgent::start("s1", Behaviour::Echo).await,
        TestAgent::start("s2", Behaviour::Echo).await,
        TestAgent::start("s3", Behaviour::Echo).await,
    ];
    for agent in &agents {
        let (status, body) = cluster.register(0, &agent.name, &agent.endpoint).await;
        assert_eq!(status, 200, "{body}");
    }
    within(
        Duration::from_secs(5),
        "every node has the 3 agents",
        || async {
            for node in &cluster.nodes {
                let url = format!("{}/v1/agents", node.base);
                let (_, list) = cluster.send(reqwest::Method::GET, url, None).await;
                if list.as_array().map_or(0, Vec::len) != 3 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let served = cluster.hammer("shared-session").await;
    let bindings = cluster.etcd_values("switchboard/sessions/").await;
    assert_eq!(bindings.len(), 1, "{bindings:?}");
    assert_eq!(bindings[0]["agent_id"], served.as_str(), "{bindings:?}");
    let hits: usize = agents.iter().map(TestAgent::hits).sum();
    assert_eq!(hits, 30);
    let bound = agents.iter().find(|a| a.name == served).unwrap();
    assert_eq!(bound.hits(), 30, "every call reached the bound agent");

    // The bound agent goes away: the nodes race to rebind, one wins.
    let url = format!("{}/v1/agents/{served}", cluster.nodes[0].base);
    let (status, body) = cluster.send(reqwest::Method::DELETE, url, None).await;
    assert!(status < 300, "{status} {body}");
    within(
        Duration::from_secs(5),
        "every node has 2 agents",
        || async {
            for node in &cluster.nodes {
                let url = format!("{}/v1/agents", node.base);
                let (_, list) = cluster.send(reqwest::Method::GET, url, None).await;
                if list.as_array().map_or(0, Vec::len) != 2 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let rebound = cluster.hammer("shared-session").await;
    assert_ne!(rebound, served);
    let bindings = cluster.etcd_values("switchboard/sessions/").await;
    assert_eq!(bindings.len(), 1, "{bindings:?}");
    assert_eq!(bindings[0]["agent_id"], rebound.as_str(), "{bindings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_status_lists_three_nodes_and_drops_a_killed_one_after_its_lease() {
    let mut cluster = Cluster::start().await;
    let base = cluster.nodes[0].base.clone();
    let status = tokio::task::spawn_blocking({
        let base = base.clone();
        move || cluster_status(&base)
    })
    .await
    .unwrap();
    assert_eq!(node_ids(&status), ["node1", "node2", "node3"], "{status}");
    // SIGKILL: no goodbye, the node's key goes with its lease.
    cluster.nodes[1].process.kill();
    let limit = Duration::from_secs(switchboard::cluster::NODE_LEASE_SECS + 5);
    within(limit, "the killed node leaves cluster status", || {
        let base = base.clone();
        async move {
            let status = tokio::task::spawn_blocking(move || cluster_status(&base))
                .await
                .unwrap();
            (node_ids(&status) == ["node1", "node3"]).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_etcd_registration_answers_503_and_calls_still_route() {
    let mut cluster = Cluster::start().await;
    let agent = TestAgent::start("a1", Behaviour::Echo).await;
    let (status, body) = cluster.register(0, "a1", &agent.endpoint).await;
    assert_eq!(status, 200, "{body}");
    cluster.routed_everywhere(Duration::from_secs(2)).await;
    for m in 0..3 {
        cluster.kill_member(m);
    }
    let other = TestAgent::start("a2", Behaviour::Echo).await;
    let body = within(Duration::from_secs(10), "registration refused", || async {
        let (status, body) = cluster.register(1, "a2", &other.endpoint).await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["error"]["code"], "cluster_unavailable", "{body}");
    for node in 0..3 {
        let (status, body) = cluster.invoke(node, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["agent_id"], "a1", "{body}");
        // Each node finds etcd gone at its own next keep-alive.
        within(
            Duration::from_secs(10),
            "the node says degraded",
            || async { (cluster.health(node).await["status"] == "degraded").then_some(()) },
        )
        .await;
    }
    // The refused registration was not kept anywhere.
    let url = format!("{}/v1/agents", cluster.nodes[1].base);
    let (_, list) = cluster.send(reqwest::Method::GET, url, None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(other.hits(), 0);
}

/// The ids `GET /v1/agents` of node `node` (0-based) lists.
async fn listed(cluster: &Cluster, node: usize) -> Vec<String> {
    let url = format!("{}/v1/agents", cluster.nodes[node].base);
    let (_, list) = cluster.send(reqwest::Method::GET, url, None).await;
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["agent_id"].as_str().map(String::from))
        .collect()
}

/// Registers `id` through `node`, retrying (bounded by `limit`) while the
/// cluster answers 503; panics on any other refusal.
async fn register_within(
    cluster: &Cluster,
    limit: Duration,
    node: usize,
    id: &str,
    endpoint: &str,
) {
    within(
        limit,
        &format!("registering {id} through node {}", node + 1),
        || async {
            let (status, body) = cluster.register(node, id, endpoint).await;
            match status {
                200 => Some(()),
                503 => {
                    assert_eq!(body["error"]["code"], "cluster_unavailable", "{body}");
                    None
                }
                _ => panic!("{status} {body}"),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_etcd_leader_loses_no_acknowledged_registration() {
    let mut cluster = Cluster::start().await;
    let agent = TestAgent::start("r", Behaviour::Echo).await;
    let mut acknowledged = Vec::new();
    for i in 0..6 {
        let id = format!("before{i}");
        let (status, body) = cluster.register(i % 3, &id, &agent.endpoint).await;
        assert_eq!(status, 200, "{body}");
        acknowledged.push(id);
    }
    let leader = cluster.etcd_leader().await;
    cluster.kill_member(leader);
    // Registrations work again (the 5 s bound the loop, each try is bounded).
    for i in 0..6 {
        let id = format!("after{i}");
        register_within(
            &cluster,
            Duration::from_secs(5),
            i % 3,
            &id,
            &agent.endpoint,
        )
        .await;
        acknowledged.push(id);
    }
    acknowledged.sort();
    for node in 0..3 {
        let acknowledged = &acknowledged;
        let cluster = &cluster;
        within(
            Duration::from_secs(5),
            "every acknowledged registration on every node",
            || async move {
                let ids = listed(cluster, node).await;
                acknowledged.iter().all(|id| ids.contains(id)).then_some(())
            },
        )
        .await;
    }
    // etcd itself holds them all too.
    let held: Vec<String> = cluster
        .etcd_values("switchboard/agents/")
        .await
        .iter()
        .map(|r| r["agent_id"].as_str().unwrap().to_string())
        .collect();
    for id in &acknowledged {
        assert!(held.contains(id), "{id} not in etcd: {held:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_etcd_quorum_degrades_the_nodes_and_they_resume_when_it_returns() {
    let mut cluster = Cluster::start().await;
    let agent = TestAgent::start("q1", Behaviour::Echo).await;
    let (status, body) = cluster.register(0, "q1", &agent.endpoint).await;
    assert_eq!(status, 200, "{body}");
    cluster.routed_everywhere(Duration::from_secs(5)).await;
    // Two of three members gone: the third has no quorum.
    let leader = cluster.etcd_leader().await;
    let killed = [leader, (leader + 1) % 3];
    for m in killed {
        cluster.kill_member(m);
    }
    let other = TestAgent::start("q2", Behaviour::Echo).await;
    let body = within(Duration::from_secs(20), "registration refused", || async {
        let (status, body) = cluster.register(1, "q2", &other.endpoint).await;
        assert_ne!(status, 200, "registered without quorum: {body}");
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["error"]["code"], "cluster_unavailable", "{body}");
    for node in 0..3 {
        let (status, body) = cluster.invoke(node, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["agent_id"], "q1", "{body}");
        let health = within(
            Duration::from_secs(15),
            "the node says degraded",
            || async {
                let health = cluster.health(node).await;
                (health["status"] == "degraded").then_some(health)
            },
        )
        .await;
        assert_eq!(health["cluster"]["etcd"], "unreachable", "{health}");
    }
    // Node 3 is frozen while the members come back on their data
    // directories, a registration is made and etcd compacts its history:
    // node 3's watch cannot resume from its revision, it lists again.
    // The third member is restarted too, so node 3's watch stream breaks
    // whichever member it was on.
    cluster.nodes[2].process.signal("STOP");
    let survivor = (leader + 2) % 3;
    cluster.kill_member(survivor);
    for m in 0..3 {
        cluster.start_member(m);
    }
    cluster.etcd_healthy(Duration::from_secs(30)).await;
    let third = TestAgent::start("q3", Behaviour::Echo).await;
    register_within(&cluster, Duration::from_secs(10), 0, "q3", &third.endpoint).await;
    cluster.compact_etcd().await;
    cluster.nodes[2].process.signal("CONT");
    for node in 0..3 {
        within(Duration::from_secs(20), "the node is ok again", || async {
            (cluster.health(node).await["status"] == "ok").then_some(())
        })
        .await;
    }
    // A registration made now reaches every node (the mirror resumed).
    register_within(&cluster, Duration::from_secs(10), 2, "q2", &other.endpoint).await;
    for node in 0..3 {
        within(
            Duration::from_secs(5),
            "q2 and q3 reach every node",
            || async {
                let ids = listed(&cluster, node).await;
                (ids.contains(&"q2".to_string()) && ids.contains(&"q3".to_string())).then_some(())
            },
        )
        .await;
    }
    let log = cluster.node_log(3);
    assert!(log.contains("compacted; listing again"), "{log}");
}

/// Through node `node` (0-based): one call of `category`.
async fn invoke_category(cluster: &Cluster, node: usize, category: &str) -> (u16, Value) {
    let body = json!({"tool": "run", "category": category, "input": {}});
    let url = format!("{}/v1/invoke", cluster.nodes[node].base);
    cluster.send(reqwest::Method::POST, url, Some(body)).await
}

/// Node `node`'s items under `prefix` (`GET /v1/scan`).
async fn scan(cluster: &Cluster, node: usize, prefix: &str) -> Vec<Value> {
    let url = format!(
        "{}/v1/scan?prefix={prefix}&limit=1000",
        cluster.nodes[node].base
    );
    let (status, page) = cluster.send(reqwest::Method::GET, url, None).await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_call_leaves_and_recovers_its_audit_on_restart() {
    let mut cluster = Cluster::start().await;
    let quick = TestAgent::start("quick", Behaviour::Echo).await;
    let slow = TestAgent::start("slow", Behaviour::Slow(Duration::from_secs(30))).await;
    for (agent, category) in [(&quick, "fast"), (&slow, "code")] {
        let url = format!("{}/v1/agents/{}", cluster.nodes[0].base, agent.name);
        let body = json!({"endpoint": agent.endpoint, "tools": [category]});
        let (status, body) = cluster.send(reqwest::Method::PUT, url, Some(body)).await;
        assert_eq!(status, 200, "{body}");
    }
    // Three finished calls through node 2.
    for _ in 0..3 {
        let (status, body) = within(Duration::from_secs(5), "node 2 routes fast", || async {
            let answer = invoke_category(&cluster, 1, "fast").await;
            (answer.0 == 200).then_some(answer)
        })
        .await;
        assert_eq!(status, 200, "{body}");
    }
    within(
        Duration::from_secs(5),
        "node 2 has the slow agent",
        || async {
            listed(&cluster, 1)
                .await
                .contains(&"slow".to_string())
                .then_some(())
        },
    )
    .await;
    let finished: Vec<Value> = scan(&cluster, 1, "tools/").await;
    assert_eq!(finished.len(), 3, "{finished:?}");
    // A call in flight through node 2 when it is SIGKILLed.
    let call = {
        let http = cluster.http.clone();
        let url = format!("{}/v1/invoke", cluster.nodes[1].base);
        tokio::spawn(async move {
            let body = json!({"tool": "run", "category": "code", "input": {}});
            http.post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
        })
    };
    within(
        Duration::from_secs(5),
        "the slow agent is called",
        || async { (slow.hits() == 1).then_some(()) },
    )
    .await;
    cluster.nodes[1].process.kill();
    assert!(
        call.await.unwrap().is_err(),
        "the call through the killed node answered"
    );
    let base = cluster.nodes[0].base.clone();
    let limit = Duration::from_secs(switchboard::cluster::NODE_LEASE_SECS + 5);
    within(limit, "the killed node leaves cluster status", || {
        let base = base.clone();
        async move {
            let status = tokio::task::spawn_blocking(move || cluster_status(&base))
                .await
                .unwrap();
            (node_ids(&status) == ["node1", "node3"]).then_some(())
        }
    })
    .await;
    // Restarted on its data directory: its audit is there, the call recovered.
    cluster.nodes[1] = cluster.spawn_node(2);
    cluster.node_serves(1, Duration::from_secs(20)).await;
    let records = scan(&cluster, 1, "tools/").await;
    assert_eq!(records.len(), 4, "{records:?}");
    for before in &finished {
        let now = records.iter().find(|r| r["key"] == before["key"]).unwrap();
        assert_eq!(now["value"]["status"], "succeeded", "{now}");
        assert_eq!(now["value"]["agent_id"], "quick", "{now}");
    }
    let interrupted = records
        .iter()
        .find(|r| r["value"]["agent_id"] == "slow")
        .unwrap_or_else(|| panic!("no record of the interrupted call: {records:?}"));
    assert_eq!(
        interrupted["value"]["status"], "interrupted",
        "{interrupted}"
    );
    assert_eq!(scan(&cluster, 1, "inflight/").await, Vec::<Value>::new());
    within(limit, "the restarted node is listed again", || {
        let base = base.clone();
        async move {
            let status = tokio::task::spawn_blocking(move || cluster_status(&base))
                .await
                .unwrap();
            (node_ids(&status) == ["node1", "node2", "node3"]).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_shutdown_leaves_cluster_status_at_once() {
    let mut cluster = Cluster::start().await;
    let base = cluster.nodes[0].base.clone();
    let status = tokio::task::spawn_blocking({
        let base = base.clone();
        move || cluster_status(&base)
    })
    .await
    .unwrap();
    assert_eq!(node_ids(&status), ["node1", "node2", "node3"], "{status}");
    let exit = cluster.nodes[1].process.terminate(Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}");
    // Right after the exit, well before its 10 s lease could expire.
    let status = tokio::task::spawn_blocking(move || cluster_status(&base))
        .await
        .unwrap();
    assert_eq!(node_ids(&status), ["node1", "node3"], "{status}");
    assert!(cluster.node_log(2).contains("left the cluster"));
}

/// Through node `node` (0-based): one call of session `session`, its first
/// agent chosen by `strategy`; the agent that served it, or the refusal.
async fn session_call(
    cluster: &Cluster,
    node: usize,
    session: &str,
    strategy: &str,
) -> Result<String, (u16, Value)> {
    let body = json!({"tool": "run", "category": "code", "input": {},
        "session_id": session, "strategy": strategy});
    let url = format!("{}/v1/invoke", cluster.nodes[node].base);
    let (status, body) = cluster.send(reqwest::Method::POST, url, Some(body)).await;
    match status {
        200 => Ok(body["agent_id"].as_str().unwrap().to_string()),
        _ => Err((status, body)),
    }
}

/// Node `node`'s own binding of `session` (its agent), from its store.
async fn local_binding(cluster: &Cluster, node: usize, session: &str) -> Option<String> {
    let key = format!("sessions/{session}");
    scan(cluster, node, &key)
        .await
        .into_iter()
        .find(|item| item["key"] == key.as_str())
        .map(|item| item["value"]["agent_id"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_etcd_strict_refuses_new_sessions_and_best_effort_publishes_them_later() {
    // Node 1 strict, nodes 2 and 3 best effort (the default).
    let mut cluster = Cluster::start_with(|i| match i {
        1 => vec!["--cluster-bindings", "strict"],
        _ => Vec::new(),
    })
    .await;
    let agents = [
        TestAgent::start("b1", Behaviour::Echo).await,
        TestAgent::start("b2", Behaviour::Echo).await,
    ];
    for agent in &agents {
        let (status, body) = cluster.register(1, &agent.name, &agent.endpoint).await;
        assert_eq!(status, 200, "{body}");
    }
    for node in 0..3 {
        within(
            Duration::from_secs(5),
            "every node has both agents",
            || async { (listed(&cluster, node).await.len() == 2).then_some(()) },
        )
        .await;
    }
    let kept = session_call(&cluster, 0, "kept", "sticky").await.unwrap();
    for node in 1..3 {
        assert_eq!(
            session_call(&cluster, node, "kept", "sticky").await,
            Ok(kept.clone())
        );
    }
    for m in 0..3 {
        cluster.kill_member(m);
    }
    // Bound sessions keep their agent on every node, strict or not.
    for node in 0..3 {
        assert_eq!(
            session_call(&cluster, node, "kept", "sticky").await,
            Ok(kept.clone())
        );
    }
    // Strict: a new session is refused.
    let (status, body) = session_call(&cluster, 0, "fresh", "sticky")
        .await
        .unwrap_err();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "cluster_unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--cluster-bindings"),
        "{body}"
    );
    // Best effort: nodes 2 and 3 bind new sessions on their own, each
    // choosing at random, so some of them differ.
    let sessions: Vec<String> = (0..16).map(|k| format!("split{k}")).collect();
    let mut chosen = Vec::new();
    for session in &sessions {
        let on2 = session_call(&cluster, 1, session, "random").await.unwrap();
        let on3 = session_call(&cluster, 2, session, "random").await.unwrap();
        chosen.push((on2, on3));
    }
    assert!(
        chosen.iter().any(|(a, b)| a != b),
        "the two nodes chose alike 16 times: {chosen:?}"
    );
    for node in 1..3 {
        let health = cluster.health(node).await;
        assert_eq!(health["cluster"]["unpublished_bindings"], 16, "{health}");
    }
    // etcd comes back: the nodes publish create-if-absent; the loser adopts.
    for m in 0..3 {
        cluster.start_member(m);
    }
    cluster.etcd_healthy(Duration::from_secs(30)).await;
    for node in 0..3 {
        within(
            Duration::from_secs(20),
            "the node published its bindings",
            || async {
                let health = cluster.health(node).await;
                (health["status"] == "ok" && health["cluster"]["unpublished_bindings"] == 0)
                    .then_some(())
            },
        )
        .await;
    }
    let held: std::collections::HashMap<String, String> = cluster
        .etcd_pairs("switchboard/sessions/")
        .await
        .into_iter()
        .map(|(key, value)| {
            let session = key
                .strip_prefix("switchboard/sessions/")
                .unwrap()
                .to_string();
            (session, value["agent_id"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(held.get("kept"), Some(&kept));
    assert!(!held.contains_key("fresh"), "{held:?}");
    for (session, (on2, on3)) in sessions.iter().zip(&chosen) {
        let winner = held
            .get(session)
            .unwrap_or_else(|| panic!("{session} not in etcd"));
        assert!(winner == on2 || winner == on3, "{session}: {winner}");
        for node in 1..3 {
            within(
                Duration::from_secs(5),
                "the node holds etcd's binding",
                || async {
                    (local_binding(&cluster, node, session).await.as_ref() == Some(winner))
                        .then_some(())
                },
            )
            .await;
            assert_eq!(
                session_call(&cluster, node, session, "sticky")
                    .await
                    .as_ref(),
                Ok(winner),
                "{session} through node {}",
                node + 1
            );
        }
    }
    // And the strict node binds new sessions again.
    within(
        Duration::from_secs(10),
        "the strict node binds again",
        || async { session_call(&cluster, 0, "fresh", "sticky").await.ok() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_starts_without_etcd_only_from_its_snapshot_and_joins_later() {
    let mut cluster = Cluster::start().await;
    let agent = TestAgent::start("s1", Behaviour::Echo).await;
    let (status, body) = cluster.register(0, "s1", &agent.endpoint).await;
    assert_eq!(status, 200, "{body}");
    cluster.routed_everywhere(Duration::from_secs(5)).await;
    cluster.nodes[2].process.kill();
    for m in 0..3 {
        cluster.kill_member(m);
    }
    // Without the flag: no start, and the error says what to do.
    let mut refused = cluster.spawn_node(3).process;
    let exit = refused.exit_status(Duration::from_secs(20));
    assert!(!exit.success());
    let log = cluster.node_log(3);
    assert!(log.contains("--cluster-etcd"), "{log}");
    assert!(log.contains("--cluster-start-from-snapshot"), "{log}");
    // With it: serves from its own store, degraded.
    cluster.nodes[2] = cluster.spawn_node_with(3, &["--cluster-start-from-snapshot"]);
    cluster.node_serves(2, Duration::from_secs(20)).await;
    let health = cluster.health(2).await;
    assert_eq!(health["status"], "degraded", "{health}");
    let (status, body) = cluster.invoke(2, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent_id"], "s1", "{body}");
    // etcd is back: the node joins.
    for m in 0..3 {
        cluster.start_member(m);
    }
    cluster.etcd_healthy(Duration::from_secs(30)).await;
    within(Duration::from_secs(20), "the node is ok", || async {
        (cluster.health(2).await["status"] == "ok").then_some(())
    })
    .await;
    let base = cluster.nodes[0].base.clone();
    within(Duration::from_secs(20), "node 3 is listed", || {
        let base = base.clone();
        async move {
            let status = tokio::task::spawn_blocking(move || cluster_status(&base))
                .await
                .unwrap();
            (node_ids(&status) == ["node1", "node2", "node3"]).then_some(())
        }
    })
    .await;
    let other = TestAgent::start("s2", Behaviour::Echo).await;
    register_within(&cluster, Duration::from_secs(10), 0, "s2", &other.endpoint).await;
    within(Duration::from_secs(5), "s2 reaches node 3", || async {
        listed(&cluster, 2)
            .await
            .contains(&"s2".to_string())
            .then_some(())
    })
    .await;
}

/// Every page of `GET /v1/scan` on `base` (`cluster=true` or not), `limit`
/// items at a time: the items, and the last page.
async fn scan_all(cluster: &Cluster, base: &str, query: &str) -> (Vec<Value>, Value) {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let mut url = reqwest::Url::parse(&format!("{base}/v1/scan?{query}")).unwrap();
        if let Some(after) = &after {
            url.query_pairs_mut().append_pair("after", after);
        }
        let (status, page) = cluster
            .send(reqwest::Method::GET, url.to_string(), None)
            .await;
        assert_eq!(status, 200, "{page}");
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return (items, page),
        }
    }
    panic!("a scan of {base} did not end within 100 pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_scan_through_one_node_returns_every_nodes_records_in_id_order() {
    let mut cluster = Cluster::start().await;
    let agent = TestAgent::start("a1", Behaviour::Echo).await;
    let (status, body) = cluster.register(0, "a1", &agent.endpoint).await;
    assert_eq!(status, 200, "{body}");
    cluster.routed_everywhere(Duration::from_secs(5)).await;
    for node in [0, 1, 2, 1, 2, 2] {
        let (status, body) = cluster.invoke(node, None).await;
        assert_eq!(status, 200, "{body}");
    }
    // What each node holds, read from each node alone.
    let mut expected = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let (items, _) = scan_all(&cluster, &node.base, "prefix=tools/code/run/&limit=1000").await;
        assert!(!items.is_empty(), "node{} made records", i + 1);
        for item in items {
            expected.push((
                item["key"].as_str().unwrap().to_string(),
                format!("node{}", i + 1),
            ));
        }
    }
    expected.sort();
    // Pages of 2 through node 2: every record, each once, in key (id) order.
    let base = cluster.nodes[1].base.clone();
    let (items, last) = scan_all(
        &cluster,
        &base,
        "prefix=tools/code/run/&limit=2&cluster=true",
    )
    .await;
    let got: Vec<(String, String)> = items
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap().to_string(),
                i["node_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(last["missing_nodes"], json!([]), "{last}");
    // The CLI pages the same stream.
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env_remove("SWITCHBOARD_TOKEN")
        .args([
            "scan",
            "tools/code/run/",
            "--cluster",
            "--json",
            "--server",
            &base,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let expected_keys: Vec<String> = expected.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, expected_keys);
    // A node that does not answer is named, not silently left out.
    cluster.nodes[2].process.kill();
    let (items, last) = scan_all(
        &cluster,
        &base,
        "prefix=tools/code/run/&limit=1000&cluster=true",
    )
    .await;
    assert_eq!(last["missing_nodes"][0]["node_id"], "node3", "{last}");
    assert!(items.iter().all(|i| i["node_id"] != "node3"));
    assert_eq!(
        items.len(),
        expected.iter().filter(|(_, n)| n != "node3").count()
    );
}

fn policy_revisions(status: &Value) -> Vec<String> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["policy_revision"].as_str().unwrap_or("none").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_stored_through_node_1_only_shows_as_a_disagreement_in_node_2s_status() {
    let cluster = Cluster::start().await;
    let base = cluster.nodes[1].base.clone();
    let status = |base: String| async move {
        tokio::task::spawn_blocking(move || cluster_status(&base))
            .await
            .unwrap()
    };
    let before = within(Duration::from_secs(10), "three nodes agree", || {
        let status = status(base.clone());
        async move {
            let status = status.await;
            let revisions = policy_revisions(&status);
            (revisions.len() == 3 && status["policies_agree"] == true).then_some(revisions)
        }
    })
    .await;
    assert!(
        before.iter().all(|r| r == &before[0] && r != "none"),
        "{before:?}"
    );
    let source = "# scope: agents/**\npackage guard.agents\n\nimport rego.v1\n\n\
                  deny contains \"agent blocked is not allowed here\" if {\n\
                  \tinput.op == \"put\"\n\tinput.key == \"agents/blocked\"\n}\n";
    let url = format!("{}/v1/policies/guard", cluster.nodes[0].base);
    let (code, body) = cluster
        .send(reqwest::Method::PUT, url, Some(json!({"source": source})))
        .await;
    assert_eq!(code, 201, "{body}");
    let limit = Duration::from_secs(switchboard::cluster::KEEP_ALIVE_EVERY.as_secs() * 3 + 5);
    let after = within(limit, "node 1's revision changes", || {
        let status = status(base.clone());
        let first = before[0].clone();
        async move {
            let status = status.await;
            let revisions = policy_revisions(&status);
            (revisions.len() == 3 && revisions[0] != first).then_some(status)
        }
    })
    .await;
    let revisions = policy_revisions(&after);
    assert_eq!(revisions[1], before[1], "{after}");
    assert_eq!(revisions[2], before[2], "{after}");
    assert_eq!(after["policies_agree"], false, "{after}");
    assert_eq!(
        after["nodes"][0]["policies"],
        json!(["guard r1"]),
        "{after}"
    );
    // The table says so in words.
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env_remove("SWITCHBOARD_TOKEN")
        .args(["cluster", "status", "--server", &base])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("the nodes run different policies"),
        "{table}"
    );
    assert!(
        table.contains(&format!("{}: node1", revisions[0])),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_is_shared_by_the_live_nodes_and_grows_when_nodes_leave() {
    let mut cluster = Cluster::start().await;
    // A fourth node with a limit of 8 dispatches a day: 2 each while 4 live.
    let port = free_port();
    let config = cluster._dir.path().join("node4.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\n\n[cluster]\netcd = [{:?}]\n\
             node_id = \"node4\"\n\n[[rate_limits]]\nop = \"dispatch\"\nmax = 8\n\
             window_secs = 86400\n",
            cluster._dir.path().join("node4"),
            cluster.etcd_url
        ),
    )
    .unwrap();
    let _node4 = Proc(
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .env_remove("SWITCHBOARD_TOKEN")
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = cluster.http.clone();
    let shared_by = |n: u64| {
        let url = format!("{base}/v1/cluster");
        let http = http.clone();
        async move {
            within(
                Duration::from_secs(switchboard::cluster::NODE_LEASE_SECS + 10),
                &format!("node4 shares its limits by {n}"),
                || {
                    let request = http.get(url.clone()).send();
                    async move {
                        let response = request.await.ok()?;
                        let status: Value = response.json().await.ok()?;
                        (status["rate_limits_shared_by"] == n).then_some(())
                    }
                },
            )
            .await
        }
    };
    shared_by(4).await;
    let agent = TestAgent::start("a1", Behaviour::Echo).await;
    let (status, body) = cluster.register(0, "a1", &agent.endpoint).await;
    assert_eq!(status, 200, "{body}");
    within(Duration::from_secs(5), "node4 has the agent", || async {
        let url = format!("{base}/v1/agents");
        let (_, list) = cluster.send(reqwest::Method::GET, url, None).await;
        (list.as_array().map_or(0, Vec::len) == 1).then_some(())
    })
    .await;
    let invoke = || async {
        let body = json!({"tool": "run", "category": "code", "input": {}});
        let response = http
            .post(format!("{base}/v1/invoke"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        (status, body)
    };
    // Dispatches until the first refusal: how many this node allowed.
    let allowed = || async {
        let mut n = 0;
        loop {
            let (status, body) = invoke().await;
            if status == 429 {
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                return (n, body);
            }
            assert_eq!(status, 200, "{body}");
            n += 1;
            assert!(n <= 8, "never more than the whole limit");
        }
    };
    let (n, refusal) = allowed().await;
    assert_eq!(n, 2, "8 / 4 live nodes");
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(message.contains("shared by 4 live nodes"), "{message}");
    // Two nodes go: node4's share of the same window grows to 8 / 2.
    cluster.nodes[1].process.kill();
    cluster.nodes[2].process.kill();
    shared_by(2).await;
    let (n, _) = allowed().await;
    assert_eq!(n, 2, "4 in the window, 2 spent while 4 nodes were live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_node_publishes_the_agents_its_own_checks_eject() {
    let cluster = Cluster::start().await;
    let dead = format!("http://127.0.0.1:{}/invoke", free_port());
    let (status, body) = cluster.register(0, "dead", &dead).await;
    assert_eq!(status, 200, "{body}");
    within(
        Duration::from_secs(5),
        "node 2 holds the registration",
        || {
            let cluster = &cluster;
            async move {
                listed(cluster, 1)
                    .await
                    .contains(&"dead".to_string())
                    .then_some(())
            }
        },
    )
    .await;
    // Only node 2 calls it: three failed calls in a row eject it there.
    for _ in 0..3 {
        let (status, body) = cluster.invoke(1, None).await;
        assert!(status >= 500, "{status} {body}");
    }
    let url = format!("{}/v1/cluster", cluster.nodes[0].base);
    let nodes = within(
        Duration::from_secs(10),
        "node 1 sees node 2's ejection",
        || {
            let (cluster, url) = (&cluster, url.clone());
            async move {
                let (_, status) = cluster.send(reqwest::Method::GET, url, None).await;
                let nodes = status["nodes"].as_array()?.clone();
                nodes
                    .iter()
                    .any(|n| n["node_id"] == "node2" && n["unhealthy_agents"] == json!(["dead"]))
                    .then_some(nodes)
            }
        },
    )
    .await;
    for node in nodes.iter().filter(|n| n["node_id"] != "node2") {
        assert_eq!(node["unhealthy_agents"], json!([]), "{node}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_binding_expires_after_its_ttl_and_every_node_follows_the_new_one() {
    let cluster = Cluster::start_with(|_| vec!["--cluster-binding-ttl", "2"]).await;
    let agents = [
        TestAgent::start("a1", Behaviour::Echo).await,
        TestAgent::start("a2", Behaviour::Echo).await,
    ];
    for (id, agent) in ["a1", "a2"].iter().zip(&agents) {
        let (status, body) = cluster.register(0, id, &agent.endpoint).await;
        assert_eq!(status, 200, "{body}");
    }
    cluster.routed_everywhere(Duration::from_secs(5)).await;
    session_call(&cluster, 0, "s", "sticky").await.unwrap();
    let first = cluster.etcd_values("switchboard/sessions/").await;
    assert_eq!(first.len(), 1, "{first:?}");
    let created = first[0]["created_at_ms"].as_u64().unwrap();
    // The key goes with its lease, no later than the TTL plus its reuse window.
    within(
        Duration::from_secs(15),
        "etcd drops the binding",
        || async {
            cluster
                .etcd_values("switchboard/sessions/")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    // Node 2 binds the session anew; node 1, whose cached binding is past its
    // TTL, asks etcd instead of using it, and follows the new binding.
    let rebound = session_call(&cluster, 1, "s", "sticky").await.unwrap();
    let second = cluster.etcd_values("switchboard/sessions/").await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0]["agent_id"], rebound.as_str(), "{second:?}");
    assert!(second[0]["created_at_ms"].as_u64().unwrap() >= created + 2_000);
    for node in [0, 2, 0] {
        let served = session_call(&cluster, node, "s", "sticky").await.unwrap();
        assert_eq!(served, rebound, "node {} follows etcd's binding", node + 1);
    }
    // Node 1 holds the new binding itself now, not its expired one.
    let key = "sessions/s";
    let held = scan(&cluster, 0, key)
        .await
        .into_iter()
        .find(|item| item["key"] == key)
        .expect("node 1 holds the session's binding");
    assert_eq!(held["value"]["created_at_ms"], second[0]["created_at_ms"]);
}
