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

use common::etcd::{config_args, listed, read_log, serves, spawn_node, within, Etcd, Node};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
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
