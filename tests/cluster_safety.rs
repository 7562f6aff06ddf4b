//! Cluster-mode faults found by review (issue 24), end to end: a real
//! single-member etcd and `switchboard serve` processes on 127.0.0.1.
//!
//! - a node never publishes an advertise URL the others cannot reach
//!   (`0.0.0.0`), and a cluster scan presents the cluster secret to the
//!   other nodes, never the caller's token.
//!
//! Every process is killed when its guard drops; every wait is bounded, and
//! no assertion is about time.

mod common;

use axum::http::HeaderMap;
use common::etcd::{config_args, read_log, serves, spawn_node, within, Etcd, Node};
use common::{free_port, Behaviour, TestAgent};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "a-cluster-secret-shared-by-every-node";

/// Sends a request to a node as `token` (if any) with `headers`; the
/// status and JSON body (`null` when the body is not JSON).
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn cluster_args(etcd: &Etcd, node_id: &str) -> Vec<String> {
    vec![
        "--cluster-etcd".into(),
        etcd.url.clone(),
        "--node-id".into(),
        node_id.into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listening_on_every_interface_must_be_given_a_routable_advertise_url() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::http_client();
    let etcd = Etcd::start(dir.path(), "http", &[], http.clone()).await;
    let port = free_port();
    let token = [("SWITCHBOARD_TOKEN", "the-static-token-of-node1")];
    let mut args = cluster_args(&etcd, "node1");
    args.extend(["--listen".into(), format!("0.0.0.0:{port}")]);
    let mut refused = spawn_node(dir.path(), "refused", &args, &token);
    let status = refused.process.exit_status(Duration::from_secs(30));
    assert!(
        !status.success(),
        "a node on 0.0.0.0 started without an advertise URL"
    );
    let log = read_log(dir.path(), "refused");
    assert!(
        log.contains("0.0.0.0") && log.contains("advertise_url"),
        "the refusal does not say to set advertise_url:\n{log}"
    );
    assert_eq!(etcd.get("switchboard/nodes/node1").await, None);

    // With an advertise URL it starts, and the others are told that URL.
    let advertised = format!("http://127.0.0.1:{port}");
    let mut args = config_args(
        dir.path(),
        "node1",
        &format!(
            "[cluster]\netcd = [\"{}\"]\nnode_id = \"node1\"\nadvertise_url = \"{advertised}\"\n",
            etcd.url
        ),
    );
    args.extend(["--listen".into(), format!("0.0.0.0:{port}")]);
    let node = spawn_node(dir.path(), "node1", &args, &token);
    serves(&http, &node).await;
    let published = within(Duration::from_secs(20), "node1 publishes itself", || {
        etcd.get("switchboard/nodes/node1")
    })
    .await;
    assert_eq!(published["url"], advertised.as_str(), "{published}");
}

/// A server posing as a node of the cluster: answers every `GET /v1/scan`
/// with an empty last page and keeps the headers it was sent.
async fn spy_node() -> (String, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/v1/scan",
        axum::routing::get(move |headers: HeaderMap| {
            kept.lock().unwrap().push(headers);
            async { axum::Json(json!({"items": [], "next_after": null})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_scan_presents_the_cluster_secret_never_the_callers_token() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::http_client();
    let etcd = Etcd::start(dir.path(), "http", &[], http.clone()).await;
    // Each node has its own admin token; they share only the cluster secret.
    let tokens = ["the-admin-token-of-node-1", "the-admin-token-of-node-2"];
    let nodes: Vec<Node> = (1..=2)
        .map(|i| {
            let env = [
                ("SWITCHBOARD_TOKEN", tokens[i - 1]),
                ("SWITCHBOARD_CLUSTER_SECRET", SECRET),
            ];
            let name = format!("node{i}");
            spawn_node(dir.path(), &name, &cluster_args(&etcd, &name), &env)
        })
        .collect();
    for node in &nodes {
        serves(&http, node).await;
    }
    let agent = TestAgent::start("echo", Behaviour::Echo).await;
    let (status, body) = send(
        &http,
        reqwest::Method::PUT,
        format!("{}/v1/agents/echo", nodes[0].base),
        Some(tokens[0]),
        &[],
        Some(json!({"endpoint": agent.endpoint, "tools": ["code"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A call through node 2 leaves a record in node 2's store only.
    let invoke = json!({"tool": "run", "category": "code", "input": {}});
    within(Duration::from_secs(20), "node 2 routes the agent", || {
        let call = send(
            &http,
            reqwest::Method::POST,
            format!("{}/v1/invoke", nodes[1].base),
            Some(tokens[1]),
            &[],
            Some(invoke.clone()),
        );
        async move { (call.await.0 == 200).then_some(()) }
    })
    .await;
    // Anything under `switchboard/nodes/` is asked: here, a spy.
    let (spy_url, seen) = spy_node().await;
    etcd.put(
        "switchboard/nodes/spy",
        &json!({"node_id": "spy", "listen": "127.0.0.1:1", "url": spy_url}),
    )
    .await;

    let (status, page) = send(
        &http,
        reqwest::Method::GET,
        format!("{}/v1/scan?prefix=tools/&cluster=true", nodes[0].base),
        Some(tokens[0]),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["missing_nodes"], json!([]), "{page}");
    assert_eq!(page["nodes"], json!(["node1", "node2", "spy"]), "{page}");
    let from_node2 = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["node_id"] == "node2")
        .count();
    assert!(from_node2 >= 1, "node 2's records are missing: {page}");

    let asked = seen.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let headers = &asked[0];
    for (name, value) in headers {
        assert!(
            !value.to_str().unwrap_or_default().contains(tokens[0]),
            "the caller's token reached another node in {name}"
        );
    }
    assert_eq!(headers["x-switchboard-cluster-credential"], SECRET);
    let on_behalf_of = headers["x-switchboard-on-behalf-of"].to_str().unwrap();

    // The secret opens node 2's scan route and nothing else.
    let as_a_node = [
        ("x-switchboard-cluster-credential", SECRET),
        ("x-switchboard-on-behalf-of", on_behalf_of),
    ];
    let scan = format!("{}/v1/scan?prefix=tools/", nodes[1].base);
    let (status, body) = send(
        &http,
        reqwest::Method::GET,
        scan.clone(),
        None,
        &as_a_node,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["items"].as_array().unwrap().len(),
        from_node2,
        "{body}"
    );
    let (status, body) = send(
        &http,
        reqwest::Method::PUT,
        format!("{}/v1/agents/other", nodes[1].base),
        None,
        &as_a_node,
        Some(json!({"endpoint": agent.endpoint, "tools": ["code"]})),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("only on GET /v1/scan"), "{body}");
    let (status, _) = send(
        &http,
        reqwest::Method::GET,
        format!("{}/v1/agents", nodes[1].base),
        None,
        &as_a_node,
        None,
    )
    .await;
    assert_eq!(status, 401);
    let wrong = [
        (
            "x-switchboard-cluster-credential",
            "not-the-secret-of-this-cluster",
        ),
        ("x-switchboard-on-behalf-of", on_behalf_of),
    ];
    let (status, body) = send(&http, reqwest::Method::GET, scan, None, &wrong, None).await;
    assert_eq!(status, 401, "{body}");
}

/// Calls `category` `code` through `node` in `session` (sticky): the
/// status and answer.
async fn try_session_call(http: &reqwest::Client, node: &Node, session: &str) -> (u16, Value) {
    let body = json!({"tool": "run", "category": "code", "input": {},
        "session_id": session, "strategy": "sticky"});
    let url = format!("{}/v1/invoke", node.base);
    send(http, reqwest::Method::POST, url, None, &[], Some(body)).await
}

/// Calls `category` `code` through `node` in `session` (sticky); the agent
/// that served it.
async fn session_call(http: &reqwest::Client, node: &Node, session: &str) -> String {
    let (status, body) = try_session_call(http, node, session).await;
    assert_eq!(status, 200, "{body}");
    body["agent_id"].as_str().unwrap().to_string()
}

async fn healthz(http: &reqwest::Client, node: &Node) -> Value {
    let url = format!("{}/healthz", node.base);
    let (status, body) = send(http, reqwest::Method::GET, url, None, &[], None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `node`'s own binding of `session`, from its store.
async fn local_binding(http: &reqwest::Client, node: &Node, session: &str) -> Option<Value> {
    let key = format!("sessions/{session}");
    let url = format!("{}/v1/scan?prefix={key}", node.base);
    let (status, page) = send(http, reqwest::Method::GET, url, None, &[], None).await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["key"] == key.as_str())
        .map(|item| item["value"].clone())
}

/// Registers an echo agent as `id` through `node`.
async fn register_echo(http: &reqwest::Client, node: &Node, id: &str, agent: &TestAgent) {
    let (status, body) = send(
        http,
        reqwest::Method::PUT,
        format!("{}/v1/agents/{id}", node.base),
        None,
        &[],
        Some(json!({"endpoint": agent.endpoint, "tools": ["code"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_binding_still_in_etcd_is_replaced_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::http_client();
    let etcd = Etcd::start(dir.path(), "http", &[], http.clone()).await;
    let mut args = cluster_args(&etcd, "node1");
    args.extend(["--cluster-binding-ttl".into(), "60".into()]);
    let node = spawn_node(dir.path(), "node1", &args, &[]);
    serves(&http, &node).await;
    let agent = TestAgent::start("echo", Behaviour::Echo).await;
    register_echo(&http, &node, "echo", &agent).await;
    session_call(&http, &node, "fresh").await;
    // What etcd holds between a binding's end and its lease's (up to a
    // tenth of the TTL): the binding of another session, made 61 s ago.
    let mut expired = etcd
        .get("switchboard/sessions/fresh")
        .await
        .expect("the binding is in etcd");
    let long_ago = now_ms() - 61_000;
    expired["created_at_ms"] = json!(long_ago);
    expired["last_used_ms"] = json!(long_ago);
    etcd.put("switchboard/sessions/old", &expired).await;

    let before = now_ms();
    session_call(&http, &node, "old").await;
    // The session is bound anew, in etcd and on the node: its next calls
    // use the node's own binding instead of asking etcd each time.
    let in_etcd = etcd.get("switchboard/sessions/old").await.unwrap();
    assert!(
        in_etcd["created_at_ms"].as_u64().unwrap() >= before,
        "etcd still holds the expired binding: {in_etcd}"
    );
    let held = local_binding(&http, &node, "old").await.unwrap();
    assert_eq!(held["created_at_ms"], in_etcd["created_at_ms"], "{held}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublished_bindings_are_capped_while_etcd_is_down_and_published_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::http_client();
    let mut etcd = Etcd::start(dir.path(), "http", &[], http.clone()).await;
    let args = config_args(
        dir.path(),
        "node1",
        &format!(
            "[cluster]\netcd = [\"{}\"]\nnode_id = \"node1\"\nmax_unpublished_bindings = 3\n",
            etcd.url
        ),
    );
    let node = spawn_node(dir.path(), "node1", &args, &[]);
    serves(&http, &node).await;
    let agent = TestAgent::start("echo", Behaviour::Echo).await;
    register_echo(&http, &node, "echo", &agent).await;

    etcd.kill();
    within(
        Duration::from_secs(20),
        "the node sees etcd gone",
        || async { (healthz(&http, &node).await["status"] == "degraded").then_some(()) },
    )
    .await;
    for i in 0..3 {
        session_call(&http, &node, &format!("s{i}")).await;
    }
    // The cap is reached: new sessions are refused, counted and logged.
    for i in 3..5 {
        let (status, body) = try_session_call(&http, &node, &format!("s{i}")).await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body.to_string().contains("max_unpublished_bindings"),
            "{body}"
        );
    }
    // Sessions already bound here keep being served.
    session_call(&http, &node, "s0").await;
    let health = healthz(&http, &node).await;
    assert_eq!(health["cluster"]["unpublished_bindings"], 3, "{health}");
    assert_eq!(health["cluster"]["bindings_refused_at_cap"], 2, "{health}");
    let log = read_log(dir.path(), "node1");
    assert!(log.contains("max_unpublished_bindings"), "{log}");

    etcd.resume().await;
    within(
        Duration::from_secs(30),
        "the node publishes its bindings",
        || async {
            let health = healthz(&http, &node).await;
            (health["status"] == "ok" && health["cluster"]["unpublished_bindings"] == 0)
                .then_some(())
        },
    )
    .await;
    for i in 0..3 {
        let binding = etcd.get(&format!("switchboard/sessions/s{i}")).await;
        assert_eq!(
            binding.as_ref().map(|b| b["agent_id"].clone()),
            Some(json!("echo")),
            "s{i}: {binding:?}"
        );
    }
    session_call(&http, &node, "s3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebind_made_by_one_node_replaces_the_binding_the_others_cache() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::http_client();
    let etcd = Etcd::start(dir.path(), "http", &[], http.clone()).await;
    let nodes: Vec<Node> = (1..=2)
        .map(|i| {
            let name = format!("node{i}");
            spawn_node(dir.path(), &name, &cluster_args(&etcd, &name), &[])
        })
        .collect();
    for node in &nodes {
        serves(&http, node).await;
    }
    let agents = [
        TestAgent::start("a1", Behaviour::Echo).await,
        TestAgent::start("a2", Behaviour::Echo).await,
    ];
    for (id, agent) in ["a1", "a2"].iter().zip(&agents) {
        register_echo(&http, &nodes[0], id, agent).await;
    }
    within(
        Duration::from_secs(20),
        "node 2 holds both agents",
        || async {
            let url = format!("{}/v1/agents", nodes[1].base);
            let (_, agents) = send(&http, reqwest::Method::GET, url, None, &[], None).await;
            (agents.as_array().map_or(0, |a| a.len()) == 2).then_some(())
        },
    )
    .await;
    // Both nodes serve the session with one agent, and cache its binding.
    let bound = session_call(&http, &nodes[0], "s").await;
    assert_eq!(session_call(&http, &nodes[1], "s").await, bound);
    let (index, other) = if bound == "a1" { (0, "a2") } else { (1, "a1") };
    assert_eq!(
        local_binding(&http, &nodes[1], "s").await.unwrap()["agent_id"],
        bound.as_str()
    );

    // The bound agent fails on node 1's calls only: node 1 ejects it and
    // rebinds the session; node 2 never calls it and keeps it healthy.
    agents[index].set(Behaviour::Status(500));
    within(
        Duration::from_secs(20),
        "node 1 rebinds the session",
        || async {
            session_call(&http, &nodes[0], "s").await;
            let binding = local_binding(&http, &nodes[0], "s").await?;
            (binding["agent_id"] == other).then_some(())
        },
    )
    .await;
    agents[index].set(Behaviour::Echo);
    let in_etcd = etcd.get("switchboard/sessions/s").await.unwrap();
    assert_eq!(in_etcd["agent_id"], other, "{in_etcd}");

    // Node 2 follows within a watch round: the session has one agent.
    within(
        Duration::from_secs(10),
        "node 2 follows the rebind",
        || async {
            let binding = local_binding(&http, &nodes[1], "s").await?;
            (binding["agent_id"] == other).then_some(())
        },
    )
    .await;
    assert_eq!(session_call(&http, &nodes[1], "s").await, other);
}

async fn cluster_scan(http: &reqwest::Client, node: &Node) -> (u16, Value) {
    let url = format!("{}/v1/scan?prefix=tools/&cluster=true", node.base);
    send(http, reqwest::Method::GET, url, None, &[], None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_scan_during_an_etcd_outage_asks_the_last_known_nodes_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::http_client();
    let mut etcd = Etcd::start(dir.path(), "http", &[], http.clone()).await;
    let mut nodes: Vec<Node> = (1..=2)
        .map(|i| {
            let name = format!("node{i}");
            spawn_node(dir.path(), &name, &cluster_args(&etcd, &name), &[])
        })
        .collect();
    for node in &nodes {
        serves(&http, node).await;
    }
    let agent = TestAgent::start("echo", Behaviour::Echo).await;
    register_echo(&http, &nodes[0], "echo", &agent).await;
    within(
        Duration::from_secs(20),
        "node 2 routes the agent",
        || async {
            let (status, _) = try_session_call(&http, &nodes[1], "on-node-2").await;
            (status == 200).then_some(())
        },
    )
    .await;
    let (status, page) = cluster_scan(&http, &nodes[0]).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["node_list"]["source"], "etcd", "{page}");
    let records = page["items"].as_array().unwrap().len();
    assert!(records >= 1, "{page}");

    etcd.kill();
    within(Duration::from_secs(20), "node 1 sees etcd gone", || async {
        (healthz(&http, &nodes[0]).await["status"] == "degraded").then_some(())
    })
    .await;
    let (status, page) = cluster_scan(&http, &nodes[0]).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["node_list"]["source"], "last_known", "{page}");
    assert!(page["node_list"]["age_ms"].is_u64(), "{page}");
    assert_eq!(page["nodes"], json!(["node1", "node2"]), "{page}");
    assert_eq!(page["missing_nodes"], json!([]), "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), records, "{page}");

    // A node of that list that does not answer is named.
    drop(nodes.pop());
    let (status, page) = cluster_scan(&http, &nodes[0]).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["missing_nodes"][0]["node_id"], "node2", "{page}");
    assert_eq!(page["nodes"], json!(["node1"]), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_issued_and_revoked_on_one_node_is_accepted_and_refused_by_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::http_client();
    let etcd = Etcd::start(dir.path(), "http", &[], http.clone()).await;
    let admins = ["the-admin-token-of-node-1", "the-admin-token-of-node-2"];
    let nodes: Vec<Node> = (1..=2)
        .map(|i| {
            let name = format!("node{i}");
            let env = [("SWITCHBOARD_TOKEN", admins[i - 1])];
            spawn_node(dir.path(), &name, &cluster_args(&etcd, &name), &env)
        })
        .collect();
    for node in &nodes {
        serves(&http, node).await;
    }
    let (status, created) = send(
        &http,
        reqwest::Method::POST,
        format!("{}/v1/tokens", nodes[0].base),
        Some(admins[0]),
        &[],
        Some(json!({"name": "auditor", "scopes": ["audit"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    let id = created["token"]["token_id"].as_str().unwrap().to_string();
    // etcd holds the token's hash, never its secret.
    let in_etcd = etcd.get(&format!("switchboard/tokens/{id}")).await.unwrap();
    let secret_part = secret.rsplit('_').next().unwrap();
    assert!(in_etcd["secret_sha256"].is_string(), "{in_etcd}");
    assert!(!in_etcd.to_string().contains(secret_part), "{in_etcd}");

    let scan_as = |node: &Node, token: &str| {
        let url = format!("{}/v1/scan?prefix=tools/", node.base);
        let (http, token) = (http.clone(), token.to_string());
        async move {
            send(&http, reqwest::Method::GET, url, Some(&token), &[], None)
                .await
                .0
        }
    };
    within(
        Duration::from_secs(10),
        "node 2 accepts the token",
        || async { (scan_as(&nodes[1], &secret).await == 200).then_some(()) },
    )
    .await;
    assert_eq!(scan_as(&nodes[0], &secret).await, 200);

    // Revoked through node 2: node 1 refuses it too.
    let (status, body) = send(
        &http,
        reqwest::Method::DELETE,
        format!("{}/v1/tokens/{id}", nodes[1].base),
        Some(admins[1]),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(scan_as(&nodes[1], &secret).await, 401);
    within(
        Duration::from_secs(10),
        "node 1 refuses the token",
        || async { (scan_as(&nodes[0], &secret).await == 401).then_some(()) },
    )
    .await;
}
