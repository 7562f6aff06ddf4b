//! Caller identity end to end, against a real `switchboard serve`: issued
//! tokens of three roles, a JWT signed by an ES256 key made for this run,
//! the shipped role policy, per-caller views (agents, scan, MCP tools/list),
//! scopes per route, revocation and expiry, and the caller in records and
//! the decision log — never a secret.

mod common;

use common::{Behaviour, TestAgent};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ADMIN: &str = "static-admin-secret-for-tests";
const ISSUER: &str = "https://idp.example.test";
const AUDIENCE: &str = "switchboard-tests";

fn switchboard() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    c.env_remove("SWITCHBOARD_TOKEN")
        .env_remove("SWITCHBOARD_URL")
        .env("RUST_LOG", "debug");
    c
}

/// Interns may not see the payments agent (so neither its tool).
const HIDE_PAYMENTS: &str = r#"# scope: agents/**
# ops: get
package test.visibility

import rego.v1

deny contains "interns do not see the payments agent" if {
	input.key == "agents/payments_agent"
	"intern" in object.get(input.context, "roles", [])
}
"#;

/// An ES256 key pair: (private key PKCS#8 PEM, public key PEM).
fn es256_key_pair() -> (String, String) {
    let mut bytes = [0u8; 32];
    loop {
        getrandom::fill(&mut bytes).unwrap();
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
            let private = secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
            let public = secret
                .public_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap();
            return (private, public);
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(private_pem: &str, claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .unwrap()
}

struct Server {
    child: Child,
    base: String,
    metrics_base: String,
    client: reqwest::Client,
    dir: tempfile::TempDir,
    log: PathBuf,
    private_pem: String,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (private_pem, public_pem) = es256_key_pair();
        let key_file = dir.path().join("idp.pub.pem");
        std::fs::write(&key_file, public_pem).unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples/roles.rego"),
            policies.join("roles.rego"),
        )
        .unwrap();
        std::fs::write(policies.join("visibility.rego"), HIDE_PAYMENTS).unwrap();
        let port = common::free_port();
        let metrics_port = common::free_port();
        let config = dir.path().join("switchboard.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\npolicies_dir = \"{}\"\n\
                 token = \"{ADMIN}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
                 [auth.jwt]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n\
                 public_key_files = [\"{}\"]\nclaims = [\"email\"]\n",
                dir.path().join("data").display(),
                policies.display(),
                key_file.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("server.log");
        let child = switchboard()
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap();
        let client = common::http_client_builder()
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .unwrap();
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            metrics_base: format!("http://127.0.0.1:{metrics_port}"),
            client,
            dir,
            log,
            private_pem,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = server
                .client
                .get(format!("{}/healthz", server.base))
                .send()
                .await
            {
                if r.status().is_success() {
                    break;
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "switchboard serve exited: {status}\n{}",
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    async fn send(
        &self,
        bearer: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(bearer) = bearer {
            r = r.bearer_auth(bearer);
        }
        if let Some(body) = body {
            r = r
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, bearer: &str, path: &str) -> (u16, Value) {
        self.send(Some(bearer), reqwest::Method::GET, path, None)
            .await
    }

    async fn invoke(&self, bearer: &str, tool: &str, category: &str) -> (u16, Value) {
        self.send(
            Some(bearer),
            reqwest::Method::POST,
            "/v1/invoke",
            Some(json!({"tool": tool, "category": category, "input": {"n": 1}, "max_attempts": 1})),
        )
        .await
    }

    /// Issues a token as the static admin; returns (caller id, secret).
    async fn token(&self, name: &str, scopes: &[&str], roles: &[&str]) -> (String, String) {
        let (status, body) = self
            .send(
                Some(ADMIN),
                reqwest::Method::POST,
                "/v1/tokens",
                Some(json!({"name": name, "scopes": scopes, "roles": roles})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["token"]["caller"].as_str().unwrap().to_string(),
            body["secret"].as_str().unwrap().to_string(),
        )
    }

    fn jwt(&self, sub: &str, roles: &[&str], exp: u64) -> String {
        jwt(
            &self.private_pem,
            json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": exp,
                   "nbf": now_secs() - 5, "roles": roles, "scope": "invoke audit",
                   "email": format!("{sub}@example.com")}),
        )
    }

    /// One JSON-RPC request to `/mcp` (legacy sessions: initialize first).
    async fn mcp(&self, bearer: &str, method: &str, params: Value) -> Value {
        let post = |body: Value, session: Option<String>| {
            let mut r = self
                .client
                .post(format!("{}/mcp", self.base))
                .bearer_auth(bearer)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(body.to_string());
            if let Some(s) = session {
                r = r
                    .header("mcp-session-id", s)
                    .header("mcp-protocol-version", "2025-11-25");
            }
            r.send()
        };
        let init = post(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "identity-test", "version": "0"}}}),
            None,
        )
        .await
        .unwrap();
        assert!(init.status().is_success(), "initialize: {}", init.status());
        let session = init
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_string());
        let _ = init.text().await;
        let _ = post(
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            session.clone(),
        )
        .await
        .unwrap()
        .text()
        .await;
        let answer = post(
            json!({"jsonrpc": "2.0", "id": 2, "method": method, "params": params}),
            session,
        )
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        // JSON, or an SSE stream whose data lines carry the answer.
        if let Ok(v) = serde_json::from_str::<Value>(&answer) {
            return v;
        }
        answer
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v["id"] == 2)
            .unwrap_or_else(|| panic!("no answer in {answer}"))
    }

    /// Every item under `prefix`, read as the static admin.
    async fn scan_all(&self, prefix: &str, caller: Option<&str>) -> Vec<Value> {
        let mut path = format!("/v1/scan?prefix={prefix}&limit=1000");
        if let Some(caller) = caller {
            path.push_str(&format!("&caller={caller}"));
        }
        let (status, page) = self.get(ADMIN, &path).await;
        assert_eq!(status, 200, "{page}");
        page["items"].as_array().unwrap().clone()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tool_names(list: &Value) -> Vec<String> {
    list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("not a tools/list answer: {list}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

fn agent_ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap().to_string())
        .collect()
}

/// Every file under `dir`, as bytes.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_caller_sees_and_calls_only_what_its_roles_allow() {
    let payments_agent = TestAgent::start("payments_agent", Behaviour::Echo).await;
    let shell_agent = TestAgent::start("shell_agent", Behaviour::Echo).await;
    let mut server = Server::start().await;

    // The static token is an admin: it registers agents and issues tokens.
    for (id, category, agent) in [
        ("payments_agent", "payments", &payments_agent),
        ("shell_agent", "shell", &shell_agent),
    ] {
        let (status, body) = server
            .send(
                Some(ADMIN),
                reqwest::Method::PUT,
                &format!("/v1/agents/{id}"),
                Some(json!({"tools": [category], "endpoint": agent.endpoint})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["registered_by"], "static-admin");
    }
    let (payments_id, payments) = server
        .token("payments-svc", &["invoke"], &["payments"])
        .await;
    let (intern_id, intern) = server.token("intern", &["invoke"], &["intern"]).await;
    let (_, auditor) = server.token("auditor", &["audit"], &[]).await;
    let alice = server.jwt("alice", &["payments", "intern"], now_secs() + 600);

    // payments: sees both agents, may refund.
    let (status, list) = server.get(&payments, "/v1/agents").await;
    assert_eq!(status, 200);
    assert_eq!(agent_ids(&list), ["payments_agent", "shell_agent"]);
    let (status, body) = server.invoke(&payments, "refund", "payments").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.invoke(&payments, "ls", "shell").await;
    assert_eq!(status, 200);

    // intern: sees only the shell agent, may call neither refund nor shell tools.
    let (status, list) = server.get(&intern, "/v1/agents").await;
    assert_eq!(status, 200);
    assert_eq!(agent_ids(&list), ["shell_agent"]);
    let (status, body) = server.invoke(&intern, "refund", "payments").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "policy_denied");
    let (status, body) = server.invoke(&intern, "ls", "shell").await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("interns may not call shell tools"));
    // ... and its MCP tools/list hides the payments tool; calling the hidden
    // tool answers exactly as a tool that does not exist.
    let listed = server.mcp(&intern, "tools/list", json!({})).await;
    assert_eq!(tool_names(&listed), ["shell"]);
    let listed = server.mcp(&payments, "tools/list", json!({})).await;
    assert_eq!(tool_names(&listed), ["payments", "shell"]);
    let hidden = server
        .mcp(
            &intern,
            "tools/call",
            json!({"name": "payments", "arguments": {"tool": "refund"}}),
        )
        .await;
    let missing = server
        .mcp(
            &intern,
            "tools/call",
            json!({"name": "nowhere", "arguments": {"tool": "refund"}}),
        )
        .await;
    assert_eq!(
        hidden["error"]["code"], missing["error"]["code"],
        "{hidden} {missing}"
    );
    assert_eq!(
        hidden["error"]["message"]
            .as_str()
            .unwrap()
            .replace("payments", "X"),
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .replace("nowhere", "X"),
    );
    assert_eq!(
        payments_agent.hits(),
        1,
        "the intern never reached the agent"
    );

    // auditor: reads the audit trail, may not call or manage.
    let (status, body) = server.invoke(&auditor, "ls", "shell").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_scope");
    let (status, _) = server.get(&auditor, "/v1/scan?prefix=tools/").await;
    assert_eq!(status, 200);
    // Scans read as the caller: an auditing intern does not see the payments agent.
    let (_, intern_auditor) = server
        .token("intern-auditor", &["audit"], &["intern"])
        .await;
    let (status, page) = server.get(&intern_auditor, "/v1/scan?prefix=agents/").await;
    assert_eq!(status, 200);
    let keys: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["agents/shell_agent"]);
    let (_, page) = server.get(&auditor, "/v1/scan?prefix=agents/").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let (status, _) = server.get(&auditor, "/v1/scan?prefix=tokens/").await;
    assert_eq!(status, 403, "token records are the admin's");
    let (status, _) = server.get(&intern, "/v1/scan?prefix=tools/").await;
    assert_eq!(status, 403, "invoke does not grant audit");
    let (status, _) = server
        .send(
            Some(&auditor),
            reqwest::Method::DELETE,
            "/v1/agents/shell_agent",
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = server.get(&payments, "/v1/tokens").await;
    assert_eq!(status, 403, "tokens need admin");

    // The JWT caller: refund allowed (role payments), shell denied (role intern).
    let (status, body) = server.invoke(&alice, "refund", "payments").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.invoke(&alice, "ls", "shell").await;
    assert_eq!(status, 403);

    // Records say who caused them; `caller=` answers "what did this token do".
    let by_payments = server.scan_all("tools/", Some(&payments_id)).await;
    assert_eq!(by_payments.len(), 2, "{by_payments:?}");
    assert!(by_payments
        .iter()
        .all(|i| i["value"]["caller"] == payments_id.as_str()));
    let by_alice = server.scan_all("tools/", Some("jwt:alice")).await;
    assert_eq!(by_alice.len(), 1, "{by_alice:?}");
    assert_eq!(by_alice[0]["value"]["tool"], "refund");
    assert_eq!(by_alice[0]["value"]["status"], "succeeded");
    // The decision log keeps the caller, its roles and its claims.
    let denials = server.scan_all("policy_log/", Some("jwt:alice")).await;
    assert!(!denials.is_empty());
    let ctx = &denials[0]["value"]["context"];
    assert_eq!(ctx["claim.email"], "alice@example.com", "{ctx}");
    assert_eq!(ctx["roles"], "payments,intern");
    let intern_denials = server.scan_all("policy_log/", Some(&intern_id)).await;
    assert!(intern_denials.len() >= 2, "{intern_denials:?}");

    // The CLI answers the same question.
    let out = switchboard()
        .args([
            "scan",
            "tools/",
            "--json",
            "--caller",
            "jwt:alice",
            "--server",
            &server.base,
            "--token",
            ADMIN,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["value"]["caller"], "jwt:alice");

    // Metrics: on their own listener without a token; on the API only with audit.
    let r = server
        .client
        .get(format!("{}/metrics", server.metrics_base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("switchboard_agent_invocations_total"));
    let (status, _) = server
        .send(None, reqwest::Method::GET, "/metrics", None)
        .await;
    assert_eq!(status, 401);
    let (status, _) = server.get(&intern, "/metrics").await;
    assert_eq!(status, 403);
    let (status, _) = server.get(&auditor, "/metrics").await;
    assert_eq!(status, 200);

    // No secret is stored or logged: not in any record, not in the data
    // directory's files, not in the server's log.
    let everything = serde_json::to_string(&server.scan_all("", None).await).unwrap();
    let secrets = [
        payments.clone(),
        intern.clone(),
        auditor.clone(),
        alice.clone(),
    ];
    // The longest run between separators: the random part of a token (which
    // may itself hold `_`, base64url being what it is, so its last piece
    // can be a letter or two, found anywhere), a JWT's payload or signature.
    let secret_part = |secret: &str| {
        secret
            .split(['_', '.'])
            .max_by_key(|p| p.len())
            .unwrap()
            .to_string()
    };
    for secret in &secrets {
        assert!(
            !everything.contains(&secret_part(secret)),
            "a secret is in a record"
        );
    }
    server.stop();
    let files = all_bytes(&server.dir.path().join("data"));
    let log = std::fs::read(&server.log).unwrap();
    assert!(
        contains(&log, "authenticated"),
        "the log was captured at debug"
    );
    for secret in &secrets {
        let secret_part = secret_part(secret);
        let secret_part = secret_part.as_str();
        assert!(
            !contains(&files, secret_part),
            "a secret is in the data directory"
        );
        assert!(!contains(&log, secret_part), "a secret is in the log");
    }
    assert!(!contains(&log, ADMIN));
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_expired_and_forged_credentials_are_refused_at_once() {
    let agent = TestAgent::start("shell_agent", Behaviour::Echo).await;
    let server = Server::start().await;
    let (status, _) = server
        .send(
            Some(ADMIN),
            reqwest::Method::PUT,
            "/v1/agents/shell_agent",
            Some(json!({"tools": ["code"], "endpoint": agent.endpoint})),
        )
        .await;
    assert_eq!(status, 200);
    let (caller, secret) = server.token("ops", &["invoke"], &["ops"]).await;
    let (status, _) = server.invoke(&secret, "run", "code").await;
    assert_eq!(status, 200);

    // Revoked: refused on the very next request.
    let id = caller.strip_prefix("token:").unwrap();
    let (status, body) = server
        .send(
            Some(ADMIN),
            reqwest::Method::DELETE,
            &format!("/v1/tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], false);
    let (status, body) = server.invoke(&secret, "run", "code").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        !body.to_string().contains(&secret),
        "the refusal repeats no secret"
    );
    let (status, list) = server.get(ADMIN, "/v1/tokens").await;
    assert_eq!(status, 200);
    assert!(list[0]["revoked_at_ms"].is_u64());
    assert!(
        !list.to_string().contains("sha256"),
        "listings carry no hash"
    );
    let (status, _) = server
        .send(
            Some(ADMIN),
            reqwest::Method::DELETE,
            "/v1/tokens/nosuch",
            None,
        )
        .await;
    assert_eq!(status, 404);

    // The CLI in client mode issues and revokes over /v1/tokens.
    let cli = |args: &[&str]| {
        let out = switchboard()
            .env("RUST_LOG", "warn")
            .args(args)
            .args(["--server", &server.base, "--token", ADMIN])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let created: Value = serde_json::from_str(
        cli(&[
            "tokens", "create", "--name", "from-cli", "--scopes", "invoke", "--json",
        ])
        .trim(),
    )
    .unwrap();
    let cli_secret = created["secret"].as_str().unwrap().to_string();
    assert_eq!(server.invoke(&cli_secret, "run", "code").await.0, 200);
    assert!(cli(&["tokens", "list"]).contains("from-cli"));
    cli(&["tokens", "revoke", created["token_id"].as_str().unwrap()]);
    assert_eq!(server.invoke(&cli_secret, "run", "code").await.0, 401);

    // Expired: a token with a one-second lifetime, once that second is over.
    let (status, body) = server
        .send(
            Some(ADMIN),
            reqwest::Method::POST,
            "/v1/tokens",
            Some(json!({"name": "brief", "scopes": ["invoke"], "expires_in_secs": 1})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let brief = body["secret"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = server.invoke(&brief, "run", "code").await;
    assert_eq!(status, 401);

    // JWTs: expired (beyond the skew), not yet valid, wrong audience,
    // signed by another key, and a tampered one are refused; a good one works.
    let good = server.jwt("bob", &["ops"], now_secs() + 600);
    let (status, body) = server.invoke(&good, "run", "code").await;
    assert_eq!(status, 200, "{body}");
    let expired = server.jwt("bob", &["ops"], now_secs() - 3600);
    let (status, body) = server.invoke(&expired, "run", "code").await;
    assert_eq!(status, 401, "{body}");
    let early = jwt(
        &server.private_pem,
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "bob", "exp": now_secs() + 7200,
               "nbf": now_secs() + 3600}),
    );
    assert_eq!(server.invoke(&early, "run", "code").await.0, 401);
    let wrong_aud = jwt(
        &server.private_pem,
        json!({"iss": ISSUER, "aud": "someone-else", "sub": "bob", "exp": now_secs() + 600}),
    );
    assert_eq!(server.invoke(&wrong_aud, "run", "code").await.0, 401);
    let (other_key, _) = es256_key_pair();
    let forged = jwt(
        &other_key,
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "bob", "exp": now_secs() + 600}),
    );
    assert_eq!(server.invoke(&forged, "run", "code").await.0, 401);
    let mut tampered = good.clone();
    tampered.insert(tampered.find('.').unwrap() + 2, 'A');
    assert_eq!(server.invoke(&tampered, "run", "code").await.0, 401);
    // Without a credential, nothing but /healthz.
    let (status, _) = server
        .send(None, reqwest::Method::GET, "/v1/agents", None)
        .await;
    assert_eq!(status, 401);
}

#[test]
fn the_cli_issues_lists_and_revokes_tokens_in_a_local_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |args: &[&str]| {
        let out = switchboard()
            .env("RUST_LOG", "warn")
            .args(args)
            .args(["--data", data.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let created: Value = serde_json::from_str(
        run(&[
            "tokens",
            "create",
            "--name",
            "ci",
            "--scopes",
            "invoke,audit",
            "--roles",
            "payments",
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("sbt_"));
    let id = created["token_id"].as_str().unwrap();
    let listed = run(&["tokens", "list"]);
    assert!(listed.contains(id) && listed.contains("active"), "{listed}");
    assert!(!listed.contains(secret.rsplit('_').next().unwrap()));
    run(&["tokens", "revoke", id]);
    let listed = run(&["tokens", "list", "--json"]);
    let info: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(info["active"], false);
    // The generic write API cannot forge a token record.
    let db = switchboard::Database::open(&data).unwrap();
    assert!(db.put(&format!("tokens/{id}"), b"{}").is_err());
}

#[test]
fn the_shipped_role_policy_passes_its_rego_tests() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples/roles.rego");
    let results = switchboard::policy::rego::run_tests(&path).unwrap();
    assert!(results.len() >= 5);
    for r in &results {
        assert!(r.passed, "{}: {:?}", r.name, r.detail);
    }
}

#[test]
fn rego_sees_roles_and_scopes_as_lists_and_claims_as_an_object() {
    use switchboard::{PolicyEngine, Principal, Scope};
    let (_dir, db) = common::temp_db();
    PolicyEngine::new(&db)
        .add_rego(
            "notes/**",
            r#"package t
import rego.v1
deny contains "not payments" if { not "payments" in input.context.roles }
deny contains "no invoke" if { not "invoke" in input.context.scopes }
deny contains "wrong email" if { input.context.claims.email != "a@example.com" }
"#,
        )
        .unwrap();
    let caller = |roles: &[&str], email: &str| {
        Principal::new("token:t", vec![Scope::Invoke])
            .with_roles(roles.iter().map(|r| r.to_string()).collect())
            .with_claim("email", email)
            .context()
    };
    db.put_with(
        "notes/a",
        b"1",
        &caller(&["ops", "payments"], "a@example.com"),
    )
    .unwrap();
    let err = db
        .put_with("notes/a", b"1", &caller(&["ops"], "a@example.com"))
        .unwrap_err();
    assert!(err.to_string().contains("not payments"), "{err}");
    let err = db
        .put_with("notes/a", b"1", &caller(&["payments"], "b@example.com"))
        .unwrap_err();
    assert!(err.to_string().contains("wrong email"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_library_caller_reaches_the_policies_and_the_record() {
    use switchboard::{PolicyAction, PolicyEngine, Principal, RoutingOptions, Scope, ToolCategory};
    let (_dir, db) = common::temp_db();
    let dispatcher = switchboard::ToolDispatcher::new(db.clone());
    dispatcher
        .register_local_agent("local", vec![ToolCategory::Code], |_t, input| async move {
            Ok::<_, switchboard::ToolError>(input)
        })
        .unwrap();
    PolicyEngine::new(&db)
        .before_write("tools/**", |_k, _v, ctx| match ctx.get("caller") {
            Some("svc:denied") => PolicyAction::Deny("this caller may not".into()),
            _ => PolicyAction::Allow,
        })
        .unwrap();
    let as_caller =
        |id: &str| RoutingOptions::new().with_caller(Principal::new(id, vec![Scope::Invoke]));
    let ok = dispatcher
        .invoke("t", ToolCategory::Code, json!({}), as_caller("svc:ok"))
        .await
        .unwrap();
    assert!(dispatcher
        .invoke("t", ToolCategory::Code, json!({}), as_caller("svc:denied"))
        .await
        .is_err());
    // No caller: as before, nothing about a caller in the record.
    dispatcher
        .invoke("t", ToolCategory::Code, json!({}), RoutingOptions::new())
        .await
        .unwrap();
    let records = common::records(&db, "tools/code/t/");
    assert_eq!(records.len(), 2);
    let mine = records
        .iter()
        .find(|r| r.invocation_id == ok.invocation_id)
        .unwrap();
    assert_eq!(mine.caller.as_deref(), Some("svc:ok"));
    assert!(records.iter().any(|r| r.caller.is_none()));
    let raw: Vec<String> = db
        .scan("tools/code/t/")
        .map(|kv| String::from_utf8(kv.unwrap().1).unwrap())
        .collect();
    assert!(
        raw.iter().any(|r| !r.contains("\"caller\"")),
        "absent, not null"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_policies_are_changed_by_admins_only_and_the_log_names_who() {
    let server = Server::start().await;
    let (admin_id, admin) = server.token("ops", &["admin"], &[]).await;
    let (_, invoker) = server.token("app", &["invoke", "audit"], &[]).await;
    let module = json!({
        "source": "package switchboard.audit_only\nimport rego.v1\ndeny contains \"never\" if { false }\n",
        "scope": "tools/**"
    });
    let put = |bearer: String| {
        let body = module.clone();
        let server = &server;
        async move {
            server
                .send(
                    Some(&bearer),
                    reqwest::Method::PUT,
                    "/v1/policies/audit_only",
                    Some(body),
                )
                .await
        }
    };
    for path in ["/v1/policies", "/v1/policies/audit_only"] {
        let (status, body) = server.get(&invoker, path).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, body) = put(invoker.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_scope");
    let (status, body) = put(admin.clone()).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = server
        .send(
            Some(&invoker),
            reqwest::Method::DELETE,
            "/v1/policies/audit_only",
            None,
        )
        .await;
    assert_eq!(status, 403);

    let log = server.scan_all("policy_log/", Some(&admin_id)).await;
    assert!(
        log.iter()
            .any(|d| d["value"]["context"]["policy"] == "audit_only"),
        "the change is logged with its author: {log:?}"
    );
}

/// `/mcp` as an OAuth protected resource: the metadata a client discovers
/// without a token, the challenge on a 401 (a missing, expired or
/// wrong-audience JWT) and on a 403 (a token without the invoke scope), and
/// a token for this resource let through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_is_an_oauth_protected_resource_with_its_metadata_and_challenges() {
    const RESOURCE: &str = "https://switchboard.example.test/mcp";
    const METADATA: &str =
        "https://switchboard.example.test/.well-known/oauth-protected-resource/mcp";
    let (private_pem, public_pem) = es256_key_pair();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("idp.pub.pem");
    std::fs::write(&key_file, public_pem).unwrap();
    let client = common::http_client();
    let serve = common::ServeProcess::start(
        &format!(
            "token = \"{ADMIN}\"\n[auth]\nresource = \"{RESOURCE}\"\n[auth.jwt]\n\
             issuer = \"{ISSUER}\"\naudience = \"{RESOURCE}\"\npublic_key_files = [\"{}\"]\n",
            key_file.display()
        ),
        &[],
        &client,
    )
    .await;

    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let answer = client
            .get(format!("{}{path}", serve.base))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        let metadata: Value = answer.json().await.unwrap();
        assert_eq!(metadata["resource"], RESOURCE);
        assert_eq!(metadata["authorization_servers"], json!([ISSUER]));
        assert_eq!(metadata["bearer_methods_supported"], json!(["header"]));
        assert!(metadata["scopes_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("invoke")));
    }

    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "oauth-test", "version": "1"}}
    });
    let mcp = |bearer: Option<String>| {
        let mut request = client
            .post(format!("{}/mcp", serve.base))
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        request.send()
    };
    let challenge = |answer: &reqwest::Response| {
        answer
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let claims = |aud: &str, exp: u64, scope: &str| json!({"iss": ISSUER, "aud": aud, "sub": "alice", "exp": exp, "scope": scope});
    let now = now_secs();
    let refused_401 = [
        None,
        Some(jwt(
            &private_pem,
            claims("another-resource", now + 300, "invoke"),
        )),
        Some(jwt(&private_pem, claims(RESOURCE, now - 3600, "invoke"))),
    ];
    for bearer in refused_401 {
        let answer = mcp(bearer.clone()).await.unwrap();
        assert_eq!(answer.status(), 401, "{bearer:?}");
        // A token that was presented and is not good is `invalid_token`
        // (RFC 6750 §3.1); a request without one gets the bare challenge.
        let error = if bearer.is_some() {
            "error=\"invalid_token\", "
        } else {
            ""
        };
        assert_eq!(
            challenge(&answer),
            format!("Bearer {error}resource_metadata=\"{METADATA}\", scope=\"invoke\""),
        );
    }
    let audit_only = jwt(&private_pem, claims(RESOURCE, now + 300, "audit"));
    let answer = mcp(Some(audit_only)).await.unwrap();
    assert_eq!(answer.status(), 403);
    assert_eq!(
        challenge(&answer),
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"invoke\", resource_metadata=\"{METADATA}\""
        ),
    );
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_scope");

    let invoker = jwt(&private_pem, claims(RESOURCE, now + 300, "invoke"));
    let answer = mcp(Some(invoker)).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(challenge(&answer).is_empty());
    // Other routes refuse as before, without the MCP challenge.
    let answer = client
        .get(format!("{}/v1/scan", serve.base))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    assert!(challenge(&answer).is_empty());
}

#[tokio::test]
async fn a_jwt_signs_in_to_the_admin_ui_as_its_subject_and_roles() {
    let payments_agent = TestAgent::start("payments_agent", Behaviour::Echo).await;
    let server = Server::start().await;
    let (status, body) = server
        .send(
            Some(ADMIN),
            reqwest::Method::PUT,
            "/v1/agents/payments_agent",
            Some(json!({"tools": ["payments"], "endpoint": payments_agent.endpoint})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sign_in = |credential: String| {
        server
            .client
            .post(format!("{}/ui/session", server.base))
            .bearer_auth(credential)
            .header("origin", &server.base)
            .send()
    };
    let r = sign_in(server.jwt("carol", &["intern"], now_secs() + 600))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let server = &server;
    let agents_seen_by = |session: String| async move {
        let agents: Value = server
            .client
            .get(format!("{}/v1/agents", server.base))
            .header("cookie", session)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        agents
    };
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["caller"], "jwt:carol", "{body}");
    let mut scopes: Vec<&str> = body["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    scopes.sort_unstable();
    assert_eq!(scopes, ["audit", "invoke"], "{body}");

    // The cookie alone carries the JWT's caller and roles: HIDE_PAYMENTS
    // hides the payments agent from an intern on the UI's reads as on the
    // API's.
    let agents = agents_seen_by(session).await;
    assert_eq!(agent_ids(&agents), Vec::<String>::new(), "{agents}");
    let r = sign_in(server.jwt("carol", &["payments"], now_secs() + 600))
        .await
        .unwrap();
    let session = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let agents = agents_seen_by(session).await;
    assert_eq!(agent_ids(&agents), ["payments_agent"], "{agents}");

    // An expired JWT signs nobody in.
    let r = sign_in(server.jwt("carol", &["payments"], now_secs() - 3600))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
