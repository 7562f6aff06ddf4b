//! Cluster mode end to end: a real etcd and three `switchboard serve`
//! processes on 127.0.0.1, each with its own data directory. Every process
//! is killed when its guard drops, panics included; every wait is bounded.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::{free_port, Behaviour, TestAgent};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc(Child);

impl Proc {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Node {
    process: Proc,
    base: String,
}

/// etcd (one member) and three nodes.
struct Cluster {
    nodes: Vec<Node>,
    etcd: Proc,
    etcd_url: String,
    http: reqwest::Client,
    // Dropped last: the processes above are killed first.
    _dir: tempfile::TempDir,
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

/// Polls `check` every 50 ms until it returns `Some`, failing after `limit`.
async fn within<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Cluster {
    async fn start() -> Cluster {
        let etcd_bin = etcd_binary();
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let etcd = Proc(
            Command::new(etcd_bin)
                .args(["--name", "e1", "--data-dir"])
                .arg(dir.path().join("etcd"))
                .args(["--listen-client-urls", &etcd_url])
                .args(["--advertise-client-urls", &etcd_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("e1={peer_url}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let http = common::http_client();
        within(Duration::from_secs(20), "etcd answers", || {
            let request = http.get(format!("{etcd_url}/health")).send();
            async move { request.await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            etcd,
            etcd_url,
            http,
            _dir: dir,
        };
        for i in 1..=3 {
            let node = cluster.spawn_node(i);
            cluster.nodes.push(node);
        }
        for i in 0..3 {
            let url = format!("{}/healthz", cluster.nodes[i].base);
            let http = cluster.http.clone();
            within(Duration::from_secs(20), "a node serves", || {
                let request = http.get(&url).send();
                async move { request.await.ok().filter(|r| r.status().is_success()) }
            })
            .await;
        }
        cluster
    }

    fn spawn_node(&self, i: usize) -> Node {
        let port = free_port();
        let process = Proc(
            Command::new(env!("CARGO_BIN_EXE_switchboard"))
                .env_remove("SWITCHBOARD_TOKEN")
                .env("RUST_LOG", "info")
                .env("RUST_BACKTRACE", "1")
                .arg("serve")
                .arg("--data")
                .arg(self._dir.path().join(format!("node{i}")))
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--cluster-etcd", &self.etcd_url])
                .args(["--node-id", &format!("node{i}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        Node {
            process,
            base: format!("http://127.0.0.1:{port}"),
        }
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

    /// The values under a prefix of etcd, read straight from etcd.
    async fn etcd_values(&self, prefix: &str) -> Vec<Value> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let body = json!({"key": B64.encode(prefix), "range_end": B64.encode(end)});
        let url = format!("{}/v3/kv/range", self.etcd_url);
        let (_, answer) = self.send(reqwest::Method::POST, url, Some(body)).await;
        answer["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                let value = B64.decode(kv["value"].as_str().unwrap()).unwrap();
                serde_json::from_slice(&value).unwrap()
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
    cluster.etcd.kill();
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
        let url = format!("{}/healthz", cluster.nodes[node].base);
        let (_, health) = cluster.send(reqwest::Method::GET, url, None).await;
        assert_eq!(health["status"], "degraded", "{health}");
    }
    // The refused registration was not kept anywhere.
    let url = format!("{}/v1/agents", cluster.nodes[1].base);
    let (_, list) = cluster.send(reqwest::Method::GET, url, None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(other.hits(), 0);
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
