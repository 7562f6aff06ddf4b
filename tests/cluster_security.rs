//! Cluster mode against a hostile or protected etcd, end to end: a real
//! single-member etcd and `switchboard serve` processes on 127.0.0.1.
//!
//! - a stdio MCP registration written straight into etcd runs on no node,
//!   and a registration the node's policy chain refuses is not applied;
//! - a stored command registration is not started without the allow-list;
//! - an etcd with user authentication is joined with the configured
//!   credentials (the token signed in again when it expires) and refused
//!   without them;
//! - an etcd served over TLS that requires client certificates is joined
//!   with the configured CA, certificate and key, and refused without them;
//! - a stdio command's literal `env` values (secrets) are read back
//!   redacted everywhere (the API, scans, the CLI) and kept out of etcd,
//!   while the node starts the command with them and with `${VAR}` /
//!   `file:` references resolved.
//!
//! etcd is driven through its JSON gateway (no `etcdctl` needed). Every
//! process is killed when its guard drops; every wait is bounded, and no
//! assertion is about time.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::free_port;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Waits (at most `limit`) for the process to exit on its own.
    fn exit_status(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "the process did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap()
}

fn read_log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
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

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

/// One etcd member on loopback, and a client for its JSON gateway.
struct Etcd {
    url: String,
    http: reqwest::Client,
    /// The root user's name and password, once auth is enabled: every call
    /// then signs in first (tokens may live only seconds here).
    root: Option<(String, String)>,
    _process: Proc,
}

impl Etcd {
    /// Starts one member in `dir` with `extra` flags; `scheme` is that of
    /// its client URL. Waits until it answers (through `http`).
    async fn start(dir: &Path, scheme: &str, extra: &[String], http: reqwest::Client) -> Etcd {
        assert!(
            Command::new("etcd")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "the `etcd` binary is not installed; run scripts/install-deps"
        );
        let url = format!("{scheme}://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let process = Proc(
            Command::new("etcd")
                .args(["--name", "e1", "--data-dir"])
                .arg(dir.join("etcd"))
                .args(["--listen-client-urls", &url])
                .args(["--advertise-client-urls", &url])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("e1={peer}")])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(log_file(dir, "etcd"))
                .spawn()
                .unwrap(),
        );
        let etcd = Etcd {
            url,
            http,
            root: None,
            _process: process,
        };
        within(Duration::from_secs(30), "etcd answers", || async {
            etcd.call("/v3/maintenance/status", json!({})).await.ok()
        })
        .await;
        etcd
    }

    /// POSTs `body` to the gateway's `path`; the answer, or its status and text.
    async fn call(&self, path: &str, body: Value) -> Result<Value, String> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.url))
            .body(body.to_string());
        if let Some((name, password)) = &self.root {
            let signed_in: Value = self
                .http
                .post(format!("{}/v3/auth/authenticate", self.url))
                .body(json!({"name": name, "password": password}).to_string())
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let token = signed_in["token"].as_str().ok_or("no token")?;
            request = request.header("authorization", token);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| e.to_string())
    }

    async fn put(&self, key: &str, value: &Value) {
        self.call(
            "/v3/kv/put",
            json!({"key": b64(key), "value": b64(&value.to_string())}),
        )
        .await
        .unwrap();
    }

    async fn get(&self, key: &str) -> Option<Value> {
        let answer = self
            .call("/v3/kv/range", json!({"key": b64(key)}))
            .await
            .unwrap();
        let value = answer["kvs"][0]["value"].as_str()?;
        serde_json::from_slice(&B64.decode(value).unwrap()).ok()
    }

    /// Turns on etcd's authentication: a root user, and `user`/`password`
    /// with read and write on `switchboard/` only. Later calls of this
    /// client sign in as root.
    async fn enable_auth(&mut self, user: &str, password: &str) {
        let steps = [
            (
                "/v3/auth/user/add",
                json!({"name": "root", "password": "root-pw"}),
            ),
            (
                "/v3/auth/user/grant",
                json!({"user": "root", "role": "root"}),
            ),
            ("/v3/auth/role/add", json!({"name": "switchboard"})),
            (
                "/v3/auth/role/grant",
                json!({"name": "switchboard", "perm": {"permType": "READWRITE",
                       "key": b64("switchboard/"), "range_end": b64("switchboard0")}}),
            ),
            (
                "/v3/auth/user/add",
                json!({"name": user, "password": password}),
            ),
            (
                "/v3/auth/user/grant",
                json!({"user": user, "role": "switchboard"}),
            ),
            ("/v3/auth/enable", json!({})),
        ];
        for (path, body) in steps {
            self.call(path, body).await.unwrap();
        }
        // Refused now without a token.
        let refused = self
            .call("/v3/kv/range", json!({"key": b64("switchboard/")}))
            .await;
        assert!(refused.is_err(), "{refused:?}");
        self.root = Some(("root".into(), "root-pw".into()));
    }
}

/// A `switchboard serve` node: its process, API base URL and log name.
struct Node {
    process: Proc,
    base: String,
    name: String,
}

/// Starts `switchboard serve` in `dir` as `name`, with `args` and the
/// environment `env`; its log goes to `{name}.log`.
fn spawn_node(dir: &Path, name: &str, args: &[String], env: &[(&str, &str)]) -> Node {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .env_remove("SWITCHBOARD_TOKEN")
        .env("RUST_LOG", "info")
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdout(Stdio::null())
        .stderr(log_file(dir, name));
    if !args.iter().any(|a| a == "--data") {
        command.arg("--data").arg(dir.join(format!("{name}-data")));
    }
    for (key, value) in env {
        command.env(key, value);
    }
    Node {
        process: Proc(command.spawn().unwrap()),
        base: format!("http://127.0.0.1:{port}"),
        name: name.to_string(),
    }
}

/// Writes a config file for node `name` with `text` and returns the
/// `serve` arguments naming it.
fn config_args(dir: &Path, name: &str, text: &str) -> Vec<String> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    vec!["--config".into(), path.display().to_string()]
}

async fn serves(http: &reqwest::Client, node: &Node) {
    let url = format!("{}/healthz", node.base);
    within(Duration::from_secs(30), "a node serves", || {
        let request = http.get(&url).send();
        async move { request.await.ok().filter(|r| r.status().is_success()) }
    })
    .await;
}

async fn listed(http: &reqwest::Client, node: &Node) -> Vec<String> {
    let agents: Vec<Value> = http
        .get(format!("{}/v1/agents", node.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    agents
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap().to_string())
        .collect()
}

async fn register(http: &reqwest::Client, node: &Node, id: &str) -> u16 {
    http.put(format!("{}/v1/agents/{id}", node.base))
        .json(&json!({"endpoint": "http://127.0.0.1:9/invoke", "tools": ["code"]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A stored agent record as a node writes it, with `transport`.
fn record(id: &str, transport: Value) -> Value {
    json!({
        "agent_id": id, "tools": ["code"], "transport": transport, "priority": 0,
        "timeout_ms": 30000, "max_concurrency": null, "status": "healthy",
        "registered_at_ms": 1, "updated_at_ms": 1,
    })
}

fn http_transport() -> Value {
    json!({"kind": "http", "endpoint": "http://127.0.0.1:9/invoke",
           "health_url": "http://127.0.0.1:9/health"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_registration_put_into_etcd_runs_on_no_node() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::http_client();
    let etcd = Etcd::start(dir.path(), "http", &[], http.clone()).await;
    // Both nodes refuse `agents/blocked` by policy: records from etcd meet
    // the same chain as local registrations.
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("agents.rego"),
        "# scope: agents/**\npackage cluster.agents\nimport rego.v1\n\
         deny contains \"blocked agents are refused\" if input.key == \"agents/blocked\"\n",
    )
    .unwrap();
    let nodes: Vec<Node> = (1..=2)
        .map(|i| {
            let args = [
                "--cluster-etcd".to_string(),
                etcd.url.clone(),
                "--node-id".into(),
                format!("node{i}"),
                "--policies".into(),
                policies.display().to_string(),
            ];
            spawn_node(dir.path(), &format!("node{i}"), &args, &[])
        })
        .collect();
    for node in &nodes {
        serves(&http, node).await;
    }
    // What an attacker able to write etcd would put: a stdio MCP server
    // that runs a shell command on every node.
    let marker = dir.path().join("pwned");
    let script = format!("touch '{}'; sleep 30", marker.display());
    let evil = record(
        "evil",
        json!({"kind": "mcp", "command": {"program": "/bin/sh", "args": ["-c", script]}}),
    );
    etcd.put("switchboard/agents/evil", &evil).await;
    etcd.put(
        "switchboard/agents/blocked",
        &record("blocked", http_transport()),
    )
    .await;
    // Applied in order after the two above: once every node lists it, they
    // have been dealt with.
    etcd.put("switchboard/agents/good", &record("good", http_transport()))
        .await;
    for node in &nodes {
        let agents = within(Duration::from_secs(20), "the node applies `good`", || {
            let listing = listed(&http, node);
            async move {
                let agents = listing.await;
                agents.contains(&"good".to_string()).then_some(agents)
            }
        })
        .await;
        assert!(
            !agents.contains(&"evil".to_string()),
            "{}: the command registration from etcd was applied: {agents:?}",
            node.name
        );
        assert!(
            !agents.contains(&"blocked".to_string()),
            "{}: a registration the policy chain refuses was applied: {agents:?}",
            node.name
        );
        let log = read_log(dir.path(), &node.name);
        assert!(
            log.contains("allow_commands") && log.contains("blocked agents are refused"),
            "{}: the refusals are not logged:\n{log}",
            node.name
        );
    }
    assert!(!marker.exists(), "a command put into etcd ran on a node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_command_registration_is_not_started_without_the_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::http_client();
    let data = dir.path().join("stored-data");
    let marker = dir.path().join("started");
    let script = dir.path().join("start.sh");
    std::fs::write(&script, format!("touch '{}'\n", marker.display())).unwrap();
    let command = format!("/bin/sh {}", script.display());
    // Without the flag the CLI refuses it and says which key to set.
    let refused = common::fails(
        common::switchboard()
            .args(["agents", "register", "files", "--tools", "code", "--data"])
            .arg(&data)
            .args(["--mcp-command", &command]),
    );
    assert!(
        refused.contains("allow_commands") && refused.contains("[mcp]"),
        "{refused}"
    );
    assert!(!marker.exists());
    // Allowed on the command line, it is stored and started (its listing
    // fails: the script is no MCP server).
    let _ = common::switchboard()
        .args(["agents", "register", "files", "--tools", "code", "--data"])
        .arg(&data)
        .args(["--mcp-command", &command, "--allow-command", "/bin/sh"])
        .output()
        .unwrap();
    std::fs::remove_file(&marker).expect("the allowed command was started");
    // `serve` on that store, without the program in its allow-list, lists
    // the agent and never starts it.
    let node = spawn_node(
        dir.path(),
        "stored",
        &["--data".to_string(), data.display().to_string()],
        &[],
    );
    serves(&http, &node).await;
    within(Duration::from_secs(20), "the start is refused", || async {
        read_log(dir.path(), "stored")
            .contains("refused to start a stdio MCP server")
            .then_some(())
    })
    .await;
    assert!(listed(&http, &node).await.contains(&"files".to_string()));
    assert!(!marker.exists(), "the stored command was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etcd_with_auth_is_joined_with_the_configured_credentials_and_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::http_client();
    // Tokens live 2 s, shorter than the nodes' keep-alive: every round
    // finds its token expired and must sign in again.
    let mut etcd = Etcd::start(
        dir.path(),
        "http",
        &["--auth-token-ttl".into(), "2".into()],
        http.clone(),
    )
    .await;
    etcd.enable_auth("sb-node", "s3cret-pw").await;
    let section = |name: &str| {
        format!(
            "[cluster]\netcd = [\"{}\"]\nnode_id = \"{name}\"\nusername = \"sb-node\"\n\
             password_env = \"SB_TEST_ETCD_PASSWORD\"\n",
            etcd.url
        )
    };
    let args = config_args(dir.path(), "authed", &section("authed"));
    let node = spawn_node(
        dir.path(),
        "authed",
        &args,
        &[("SB_TEST_ETCD_PASSWORD", "s3cret-pw")],
    );
    serves(&http, &node).await;
    assert_eq!(register(&http, &node, "first").await, 200);
    assert_eq!(
        etcd.get("switchboard/agents/first").await.unwrap()["agent_id"],
        "first"
    );
    // Past the token's life: the node signs in again and goes on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(register(&http, &node, "second").await, 200);
    assert_eq!(
        etcd.get("switchboard/agents/second").await.unwrap()["agent_id"],
        "second"
    );
    let health: Value = http
        .get(format!("{}/healthz", node.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["cluster"]["etcd"], "connected", "{health}");

    // Without credentials, and with a wrong password, a node does not join.
    let bare = format!("[cluster]\netcd = [\"{}\"]\nnode_id = \"bare\"\n", etcd.url);
    let args = config_args(dir.path(), "bare", &bare);
    let mut refused = spawn_node(dir.path(), "bare", &args, &[]);
    assert!(!refused
        .process
        .exit_status(Duration::from_secs(30))
        .success());
    let log = read_log(dir.path(), "bare");
    assert!(log.contains("requires authentication"), "{log}");
    let args = config_args(dir.path(), "wrong", &section("wrong"));
    let mut wrong = spawn_node(
        dir.path(),
        "wrong",
        &args,
        &[("SB_TEST_ETCD_PASSWORD", "not-the-password")],
    );
    assert!(!wrong.process.exit_status(Duration::from_secs(30)).success());
    let log = read_log(dir.path(), "wrong");
    assert!(log.contains("refused user"), "{log}");
    assert!(
        !log.contains("not-the-password"),
        "the password reached the log"
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "etcd test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key_pem) = leaf(vec!["127.0.0.1".into(), "localhost".into()], "etcd");
    let (client_pem, client_key_pem) = leaf(vec!["switchboard-node".into()], "switchboard-node");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca_cert.pem()),
        server_cert: write("etcd.pem", &server_pem),
        server_key: write("etcd-key.pem", &server_key_pem),
        client_cert: write("node.pem", &client_pem),
        client_key: write("node-key.pem", &client_key_pem),
    }
}

/// A rustls client trusting only the test CA and presenting the client
/// certificate.
fn client_tls(pki: &Pki) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.client_cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.client_key).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etcd_over_tls_with_client_certificates_is_joined_with_the_configured_ca_cert_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    // The test's own client presents the node's certificate too.
    let http = common::http_client_builder()
        .tls_backend_preconfigured(client_tls(&pki))
        .build()
        .unwrap();
    let path = |p: &PathBuf| p.display().to_string();
    let etcd = Etcd::start(
        dir.path(),
        "https",
        &[
            "--cert-file".into(),
            path(&pki.server_cert),
            "--key-file".into(),
            path(&pki.server_key),
            "--trusted-ca-file".into(),
            path(&pki.ca),
            "--client-cert-auth".into(),
        ],
        http,
    )
    .await;
    let plain = common::http_client();
    let section = format!(
        "[cluster]\netcd = [\"{}\"]\nnode_id = \"tls\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        etcd.url,
        path(&pki.ca),
        path(&pki.client_cert),
        path(&pki.client_key)
    );
    let args = config_args(dir.path(), "tls", &section);
    let node = spawn_node(dir.path(), "tls", &args, &[]);
    serves(&plain, &node).await;
    assert_eq!(register(&plain, &node, "over-tls").await, 200);
    assert_eq!(
        etcd.get("switchboard/agents/over-tls").await.unwrap()["agent_id"],
        "over-tls"
    );
    // Trusting the CA without a client certificate is not enough.
    let section = format!(
        "[cluster]\netcd = [\"{}\"]\nnode_id = \"nocert\"\nca_file = \"{}\"\n",
        etcd.url,
        path(&pki.ca)
    );
    let args = config_args(dir.path(), "nocert", &section);
    let mut refused = spawn_node(dir.path(), "nocert", &args, &[]);
    assert!(!refused
        .process
        .exit_status(Duration::from_secs(30))
        .success());
    assert!(read_log(dir.path(), "nocert").contains("cannot join the cluster"));
}

/// Runs the `switchboard` CLI with `args` and returns its stdout.
fn cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env_remove("SWITCHBOARD_TOKEN")
        .env_remove("SWITCHBOARD_URL")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "switchboard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stdio_env_secrets_are_write_only_on_every_read_path() {
    const SECRET: &str = "sk-live-7f3a9c0e5b";
    let dir = tempfile::tempdir().unwrap();
    let http = common::http_client();
    let etcd = Etcd::start(dir.path(), "http", &[], http.clone()).await;
    let key_file = dir.path().join("api_key");
    std::fs::write(&key_file, "from-a-file\n").unwrap();
    // The command is no MCP server: it writes the environment it was
    // started with and exits, which is all this test needs of it.
    let started_with = dir.path().join("env.txt");
    let config = format!(
        "[cluster]\netcd = [\"{}\"]\nnode_id = \"keeper\"\n\n\
         [mcp]\nallow_commands = [\"/bin/sh\"]\n\n\
         [[agents]]\nid = \"keyed\"\ntools = [\"code\"]\n\
         mcp = {{ command = {{ program = \"/bin/sh\", args = [\"-c\", \"env > '{}'\"], \
         env = {{ API_KEY = \"{SECRET}\", FROM_VAR = \"${{SB_TEST_API_KEY}}\", \
         FROM_FILE = \"file:{}\" }} }} }}\n",
        etcd.url,
        started_with.display(),
        key_file.display()
    );
    let args = config_args(dir.path(), "keeper", &config);
    let node = spawn_node(
        dir.path(),
        "keeper",
        &args,
        &[("SB_TEST_API_KEY", "from-the-node-env")],
    );
    serves(&http, &node).await;
    let shown = json!({
        "API_KEY": "<redacted>",
        "FROM_VAR": "${SB_TEST_API_KEY}",
        "FROM_FILE": format!("file:{}", key_file.display()),
    });

    // The node started the command with the secret and the references
    // resolved on it.
    let env = within(Duration::from_secs(30), "the command is started", || {
        let text = std::fs::read_to_string(&started_with).ok();
        async move { text.filter(|t| t.contains("FROM_FILE=")) }
    })
    .await;
    for line in [
        format!("API_KEY={SECRET}"),
        "FROM_VAR=from-the-node-env".to_string(),
        "FROM_FILE=from-a-file".to_string(),
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in:\n{env}");
    }

    let get = |path: String| {
        let request = http.get(format!("{}{path}", node.base)).send();
        async move {
            let answer = request.await.unwrap();
            assert!(answer.status().is_success(), "{}", answer.status());
            answer.text().await.unwrap()
        }
    };
    let listing = get("/v1/agents".into()).await;
    let one = get("/v1/agents/keyed".into()).await;
    let scan = get("/v1/scan?prefix=agents/".into()).await;
    let cluster_scan = get("/v1/scan?prefix=agents/&cluster=true".into()).await;
    for (path, text) in [
        ("GET /v1/agents", &listing),
        ("GET /v1/agents/keyed", &one),
        ("GET /v1/scan", &scan),
        ("GET /v1/scan?cluster=true", &cluster_scan),
    ] {
        assert!(!text.contains(SECRET), "{path} shows the secret: {text}");
    }
    let listing: Value = serde_json::from_str(&listing).unwrap();
    let keyed = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == "keyed")
        .unwrap_or_else(|| panic!("keyed is listed: {listing}"));
    assert_eq!(keyed["transport"]["command"]["env"], shown);
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["transport"]["command"]["env"], shown);
    let scan: Value = serde_json::from_str(&scan).unwrap();
    assert_eq!(
        scan["items"][0]["value"]["transport"]["command"]["env"],
        shown
    );

    // What the cluster shares: the record in etcd.
    let shared = within(Duration::from_secs(20), "keyed is in etcd", || {
        etcd.get("switchboard/agents/keyed")
    })
    .await;
    assert!(
        !shared.to_string().contains(SECRET),
        "etcd holds the secret: {shared}"
    );
    assert_eq!(shared["transport"]["command"]["env"], shown);
    // The node's own record coming back from etcd redacted does not replace
    // what it holds (the program is allowed by path, so the allow-list would
    // not refuse the redacted copy): the command, started again (its
    // listing failed, so it is retried), still gets the secret.
    std::fs::remove_file(&started_with).unwrap();
    let env = within(
        Duration::from_secs(30),
        "the command is started again",
        || {
            let text = std::fs::read_to_string(&started_with).ok();
            async move { text.filter(|t| t.contains("FROM_FILE=")) }
        },
    )
    .await;
    assert!(
        env.lines().any(|l| l == format!("API_KEY={SECRET}")),
        "restarted without the secret:\n{env}"
    );

    // The CLI, through the server and then on the data directory.
    let server = node.base.as_str();
    let remote: [&[&str]; 2] = [
        &["agents", "list", "--json", "--server", server],
        &["scan", "agents/", "--json", "--server", server],
    ];
    for args in remote {
        let out = cli(args);
        assert!(out.contains("keyed"), "{args:?}: {out}");
        assert!(!out.contains(SECRET), "{args:?} shows the secret: {out}");
    }
    drop(node);
    let data = dir.path().join("keeper-data");
    let data = data.to_str().unwrap();
    let local: [&[&str]; 3] = [
        &["agents", "list", "--json", "--data", data],
        &["scan", "agents/", "--json", "--data", data],
        &["scan", "agents/", "--data", data],
    ];
    for args in local {
        let out = cli(args);
        assert!(out.contains("keyed"), "{args:?}: {out}");
        assert!(!out.contains(SECRET), "{args:?} shows the secret: {out}");
    }
}
