//! Policies as stored configuration: Rego modules under `policies/{name}` in
//! the database, loaded by every open, changed through the library, the HTTP
//! API (a real `serve` process) and the CLI (direct and `--server`).

mod common;

use common::{fails, free_port, ok, switchboard, temp_db, text};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard::{Database, Decision, DecisionKind, Error, PolicyChange};

/// Denies registering (or storing anything under) `agents/{id}`.
fn deny_agent(id: &str) -> String {
    format!(
        "# scope: agents/**\npackage guard.agents\n\nimport rego.v1\n\n\
         deny contains \"agent {id} is not allowed here\" if {{\n\
         \tinput.op == \"put\"\n\tinput.key == \"agents/{id}\"\n}}\n"
    )
}

fn decisions(db: &Database) -> Vec<Decision> {
    db.scan("policy_log/")
        .map(|kv| serde_json::from_slice(&kv.unwrap().1).unwrap())
        .collect()
}

fn register(db: &Database, id: &str) -> switchboard::Result<()> {
    switchboard::ToolDispatcher::new(db.clone()).register_agent(
        id,
        switchboard::AgentConfig::new()
            .with_tools(vec![switchboard::ToolCategory::Code])
            .with_endpoint("http://127.0.0.1:9/invoke"),
    )
}

#[test]
fn put_replace_and_delete_change_the_chain_at_once_with_revisions_and_log_entries() {
    let (_tmp, db) = temp_db();
    let (p, change) = db
        .put_policy("agents", &deny_agent("blocked"), None)
        .unwrap();
    assert_eq!((p.revision, change), (1, PolicyChange::Created));
    assert_eq!(p.scopes, ["agents/**"]);
    assert_eq!(p.package, "guard.agents");
    assert!(matches!(
        register(&db, "blocked"),
        Err(Error::PolicyDenied { .. })
    ));
    // The same content again: nothing changes.
    let (p, change) = db
        .put_policy("agents", &deny_agent("blocked"), None)
        .unwrap();
    assert_eq!((p.revision, change), (1, PolicyChange::Unchanged));
    // A module that does not compile changes nothing.
    let err = db
        .put_policy("agents", "# scope: agents/**\npackage x\nallow if {", None)
        .unwrap_err();
    assert!(matches!(err, Error::PolicyLoad { .. }), "{err}");
    assert_eq!(db.stored_policy("agents").unwrap().unwrap().revision, 1);
    assert!(register(&db, "blocked").is_err());
    // Replacing swaps the rule: the old one no longer denies.
    let (p, change) = db.put_policy("agents", &deny_agent("other"), None).unwrap();
    assert_eq!((p.revision, change), (2, PolicyChange::Replaced));
    register(&db, "blocked").unwrap();
    assert!(register(&db, "other").is_err());
    assert_eq!(db.stored_policies().unwrap().len(), 1);
    // Deleting removes it.
    assert_eq!(db.delete_policy("agents").unwrap().unwrap().revision, 2);
    register(&db, "other").unwrap();
    assert!(db.delete_policy("agents").unwrap().is_none());
    assert!(db.stored_policies().unwrap().is_empty());
    // Each change is in the decision log, with the name and revision.
    let log: Vec<String> = decisions(&db)
        .into_iter()
        .filter(|d| d.by == "policy store")
        .map(|d| {
            assert_eq!(d.decision, DecisionKind::Log);
            assert_eq!(d.context["action"], "policy");
            assert_eq!(d.context["policy"], "agents");
            d.reason
        })
        .collect();
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(log[0].contains("stored: revision 1"), "{log:?}");
    assert!(log[1].contains("replaced: revision 2"), "{log:?}");
    assert!(log[2].contains("deleted (was revision 2)"), "{log:?}");
    // The store is reserved: the generic API cannot write there.
    assert!(db.put("policies/agents", b"{}").is_err());
}

#[test]
fn a_policy_change_is_itself_policy_checked() {
    let (_tmp, db) = temp_db();
    db.put_policy(
        "freeze",
        "# scope: policies/**\npackage freeze\n\nimport rego.v1\n\n\
         deny contains \"policies are frozen\" if input.context.policy != \"freeze\"\n",
        None,
    )
    .unwrap();
    let err = db
        .put_policy("agents", &deny_agent("blocked"), None)
        .unwrap_err();
    assert!(err.to_string().contains("policies are frozen"), "{err}");
    assert!(db.stored_policy("agents").unwrap().is_none());
    register(&db, "blocked").unwrap();
}

#[test]
fn a_policy_stored_by_one_process_constrains_the_next_one_to_open_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = Database::open(&path).unwrap();
        db.put_policy("agents", &deny_agent("blocked"), None)
            .unwrap();
    }
    let db = Database::open(&path).unwrap();
    assert!(matches!(
        register(&db, "blocked"),
        Err(Error::PolicyDenied { .. })
    ));
    assert_eq!(db.stored_policy("agents").unwrap().unwrap().revision, 1);
    drop(db);
    // And another process: the CLI, without --policies.
    let out = switchboard()
        .args(["agents", "register", "blocked", "--tools", "code"])
        .args(["--endpoint", "http://127.0.0.1:9/invoke"])
        .args(["--data", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("agent blocked is not allowed here"));
}

#[test]
fn importing_a_directory_is_idempotent_and_keeps_revisions_of_unchanged_files() {
    let (_tmp, db) = temp_db();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.rego"), deny_agent("blocked")).unwrap();
    let imported = db.import_policies(dir.path()).unwrap();
    assert_eq!(imported[0].0.name, "guard.agents");
    assert_eq!(imported[0].1, PolicyChange::Created);
    let again = db.import_policies(dir.path()).unwrap();
    assert_eq!(
        (again[0].0.revision, again[0].1),
        (1, PolicyChange::Unchanged)
    );
    std::fs::write(dir.path().join("a.rego"), deny_agent("other")).unwrap();
    let changed = db.import_policies(dir.path()).unwrap();
    assert_eq!(
        (changed[0].0.revision, changed[0].1),
        (2, PolicyChange::Replaced)
    );
    // One bad file stores nothing.
    std::fs::write(
        dir.path().join("b.rego"),
        "# scope: x/**\n# ops: put, read\npackage b\nallow := true\n",
    )
    .unwrap();
    let err = db.import_policies(dir.path()).unwrap_err();
    assert!(err.to_string().contains("\"read\""), "{err}");
    assert_eq!(db.stored_policies().unwrap().len(), 1);
}

/// A `switchboard serve` child on `data`, stopped (SIGTERM, waited for) on drop.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(data: &Path) -> Serve {
        let port = free_port();
        let child = switchboard()
            .args(["serve", "--data", data.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "serve did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Serve {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = common::http_client().request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn agent_body() -> Value {
    json!({"tools": ["code"], "endpoint": "http://127.0.0.1:9/invoke"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_replaces_deletes_and_persists_stored_policies() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data);

    let (status, body) = serve
        .send(
            Method::PUT,
            "/v1/policies/agents",
            Some(json!({"source": deny_agent("blocked")})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["revision"], 1);
    assert_eq!(body["change"], "created");
    assert_eq!(body["scopes"], json!(["agents/**"]));
    let (status, _) = serve
        .send(Method::PUT, "/v1/agents/blocked", Some(agent_body()))
        .await;
    assert_eq!(status, 403, "the stored policy applies at once");

    // A bad module is refused and changes nothing.
    let (status, body) = serve
        .send(
            Method::PUT,
            "/v1/policies/agents",
            Some(json!({"source": "package x\nallow if {"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "policy_invalid");
    // Replace: revision 2, the old rule is gone.
    let (status, body) = serve
        .send(
            Method::PUT,
            "/v1/policies/agents",
            Some(json!({"source": deny_agent("other")})),
        )
        .await;
    assert_eq!(
        (status, body["revision"].clone()),
        (200, json!(2)),
        "{body}"
    );
    assert_eq!(body["change"], "replaced");
    let (status, _) = serve
        .send(Method::PUT, "/v1/agents/blocked", Some(agent_body()))
        .await;
    assert_eq!(status, 200);
    let (status, _) = serve
        .send(Method::PUT, "/v1/agents/other", Some(agent_body()))
        .await;
    assert_eq!(status, 403);
    let (status, shown) = serve.send(Method::GET, "/v1/policies/agents", None).await;
    assert_eq!(status, 200);
    assert_eq!(shown["source"], deny_agent("other"));
    assert_eq!(shown["ops"], json!(["put", "delete"]));
    assert_eq!(shown["scope"], "agents/**");

    // POST twice with one package: one policy, named by its package, replaced.
    let post = |id: &str| json!({"source": deny_agent(id).replace("guard.agents", "guard.posted")});
    let (status, body) = serve
        .send(Method::POST, "/v1/policies", Some(post("p1")))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body, json!({"name": "guard.posted", "scope": "agents/**"}));
    let (status, _) = serve
        .send(Method::POST, "/v1/policies", Some(post("p2")))
        .await;
    assert_eq!(status, 200);
    let (_, list) = serve.send(Method::GET, "/v1/policies", None).await;
    let names: Vec<(&str, i64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["revision"].as_i64().unwrap()))
        .collect();
    assert_eq!(names, [("agents", 2), ("guard.posted", 2)]);
    assert_eq!(
        serve
            .send(Method::PUT, "/v1/agents/p1", Some(agent_body()))
            .await
            .0,
        200
    );
    assert_eq!(
        serve
            .send(Method::PUT, "/v1/agents/p2", Some(agent_body()))
            .await
            .0,
        403
    );

    // Delete.
    assert_eq!(
        serve
            .send(Method::DELETE, "/v1/policies/guard.posted", None)
            .await
            .0,
        204
    );
    let (status, body) = serve
        .send(Method::DELETE, "/v1/policies/guard.posted", None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    assert_eq!(
        serve
            .send(Method::GET, "/v1/policies/guard.posted", None)
            .await
            .0,
        404
    );
    assert_eq!(
        serve
            .send(Method::PUT, "/v1/agents/p2", Some(agent_body()))
            .await
            .0,
        200
    );
    // The decision log says which policy changed and its revision.
    let (_, log) = serve
        .send(Method::GET, "/v1/scan?prefix=policy_log/", None)
        .await;
    let log = log.to_string();
    assert!(log.contains("policy agents replaced: revision 2"), "{log}");
    assert!(log.contains("policy guard.posted deleted"), "{log}");

    // A restart keeps them.
    drop(serve);
    let serve = Serve::start(&data);
    let (_, list) = serve.send(Method::GET, "/v1/policies", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["revision"], 2);
    let (status, _) = serve
        .send(Method::PUT, "/v1/agents/other", Some(agent_body()))
        .await;
    assert_eq!(status, 403, "the stored policy applies after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_cli_works_on_the_database_and_on_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let file = dir.path().join("agents.rego");
    std::fs::write(&file, deny_agent("blocked")).unwrap();
    let file = file.to_str().unwrap();

    // Direct.
    let out = ok(switchboard().args(["policy", "put", file, "--name", "agents", "--data", data]));
    assert!(
        out.contains("created: agents  revision 1  scope agents/**"),
        "{out}"
    );
    assert!(
        ok(switchboard().args(["policy", "list", "--data", data])).contains("agents  revision 1")
    );
    let shown = ok(switchboard().args(["policy", "show", "agents", "--data", data]));
    assert!(shown.contains("package guard.agents"), "{shown}");
    let out = ok(switchboard().args(["policy", "put", file, "--name", "agents", "--data", data]));
    assert!(out.starts_with("unchanged"), "{out}");

    // Through a server on the same database.
    let serve = Serve::start(Path::new(data));
    let client = |args: &[&str]| {
        let mut c = switchboard();
        c.args(args).args(["--server", &serve.url]);
        c
    };
    assert!(ok(&mut client(&["policy", "list"])).contains("agents  revision 1"));
    std::fs::write(dir.path().join("agents.rego"), deny_agent("other")).unwrap();
    let out = ok(&mut client(&["policy", "put", file, "--name", "agents"]));
    assert!(out.contains("replaced: agents  revision 2"), "{out}");
    let err = fails(&mut client(&[
        "agents",
        "register",
        "other",
        "--tools",
        "code",
        "--endpoint",
        "http://127.0.0.1:9/invoke",
    ]));
    assert!(err.contains("agent other is not allowed here"), "{err}");
    assert!(ok(&mut client(&["policy", "show", "agents"])).contains("agents/other"));
    assert!(ok(&mut client(&["policy", "delete", "agents"])).contains("deleted agents"));
    let err = fails(&mut client(&["policy", "delete", "agents"]));
    assert!(err.contains("no stored policy agents"), "{err}");
    assert!(ok(&mut client(&["policy", "list"])).contains("no policies loaded"));
    drop(serve);
    assert!(
        ok(switchboard().args(["policy", "list", "--data", data])).contains("no policies loaded")
    );
}

#[test]
fn policy_check_takes_a_directory_shows_expected_and_actual_and_uses_the_serve_parser() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let out = ok(switchboard().args(["policy", "check", shipped]));
    assert!(out.contains("sensitive_tools.rego: compiles"), "{out}");
    assert!(out.contains("shell_guard.rego: compiles"), "{out}");
    assert!(out.contains(" 0 failed"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.rego"), deny_agent("blocked")).unwrap();
    std::fs::write(
        dir.path().join("a_test.rego"),
        "package guard.agents_test\nimport rego.v1\nimport data.guard.agents\n\
         test_wrong := n if {\n n := count(agents.deny) with input as {\"op\": \"put\", \"key\": \"agents/blocked\"}\n}\n",
    )
    .unwrap();
    let out = fails(switchboard().args(["policy", "check", dir.path().to_str().unwrap()]));
    assert!(out.contains("FAIL guard.agents_test.test_wrong"), "{out}");
    assert!(
        out.contains("expected: true") && out.contains("actual:   1"),
        "{out}"
    );

    // A header `serve` refuses, `policy check` refuses too.
    std::fs::write(
        dir.path().join("a.rego"),
        format!("# ops: put, read\n{}", deny_agent("blocked")),
    )
    .unwrap();
    let out = fails(switchboard().args(["policy", "check", dir.path().to_str().unwrap()]));
    assert!(out.contains("unknown op \"read\""), "{out}");
    let out = fails(switchboard().args([
        "serve",
        "--policies",
        dir.path().to_str().unwrap(),
        "--data",
        dir.path().join("data").to_str().unwrap(),
    ]));
    assert!(out.contains("unknown op \"read\""), "{out}");
}
