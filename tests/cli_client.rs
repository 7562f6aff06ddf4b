//! The `switchboard` binary as an operator uses it: the CLI as a client of a
//! running `serve` (`--server`, `SWITCHBOARD_URL`), the demo's data directory,
//! `config check`, and output hygiene. Every server is a real `serve`
//! process on 127.0.0.1, stopped by the test.

mod common;

use common::{fails, free_port, ok, switchboard, text, Behaviour, TestAgent};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `switchboard serve` child, stopped (SIGTERM, then waited for) on drop.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(data: &Path, token: &str) -> Serve {
        Self::start_with(&["--data", data.to_str().unwrap()], token)
    }

    fn start_with(args: &[&str], token: &str) -> Serve {
        let port = free_port();
        let child = switchboard()
            .arg("serve")
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("SWITCHBOARD_TOKEN", token)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let serve = Serve { child, url };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "serve did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_is_a_client_of_a_running_server() {
    let agent = TestAgent::start("echo", Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, "s3cret");
    let url = serve.url.clone();
    // --server and --token as flags …
    let client = |args: &[&str]| {
        let mut c = switchboard();
        c.args(args).args(["--server", &url, "--token", "s3cret"]);
        c
    };
    // … or from the environment.
    let env_client = |args: &[&str]| {
        let mut c = switchboard();
        c.args(args)
            .env("SWITCHBOARD_URL", &url)
            .env("SWITCHBOARD_TOKEN", "s3cret");
        c
    };

    let out = ok(&mut client(&[
        "agents",
        "register",
        "echo_agent",
        "--tools",
        "code,shell",
        "--endpoint",
        &agent.endpoint,
        "--priority",
        "4",
    ]));
    assert!(out.contains("registered echo_agent"), "{out}");
    let list = ok(&mut env_client(&["agents", "list"]));
    assert!(
        list.contains("echo_agent")
            && list.contains("code,shell")
            && list.contains(&agent.endpoint),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(ok(&mut env_client(&["agents", "list", "--json"])).trim()).unwrap();
    assert_eq!(json["priority"], 4);

    // The local database is the server's: opening it directly is refused.
    let err = fails(switchboard().args(["agents", "list", "--data", data.to_str().unwrap()]));
    assert!(err.contains("switchboard serve"), "{err}");

    let out = ok(&mut env_client(&[
        "invoke",
        "code_exec",
        "--category",
        "code",
        "--input",
        r#"{"code":"1+1"}"#,
        "--strategy",
        "least_loaded",
    ]));
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["agent_id"], "echo_agent");
    assert_eq!(result["output"]["input"]["code"], "1+1");
    // No --input: the agent is sent an empty object.
    ok(&mut client(&["invoke", "code_exec", "--category", "code"]));
    assert_eq!(
        agent.requests.lock().unwrap().last().unwrap()["input"],
        serde_json::json!({})
    );
    // The same over HTTP: a body without "input".
    let r = common::http_client()
        .post(format!("{url}/v1/invoke"))
        .bearer_auth("s3cret")
        .header("content-type", "application/json")
        .body(r#"{"tool": "code_exec", "category": "code"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        agent.requests.lock().unwrap().last().unwrap()["input"],
        serde_json::json!({})
    );
    assert_eq!(agent.hits(), 3);

    let scan = ok(&mut client(&["scan", "tools/code/code_exec/", "--json"]));
    let lines: Vec<serde_json::Value> = scan
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{scan}");
    assert!(lines.iter().all(|l| l["value"]["status"] == "succeeded"));
    let table = ok(&mut client(&["scan", "agents/"]));
    assert!(table.contains("agents/echo_agent"), "{table}");
    let one = ok(&mut client(&["scan", "tools/", "--json", "--limit", "1"]));
    assert_eq!(one.lines().count(), 1, "{one}");
    // Audit filters (agent, status, start time) travel to the server.
    let audit = |extra: &[&str]| {
        let mut args = vec!["scan", "tools/", "--json"];
        args.extend_from_slice(extra);
        ok(&mut client(&args)).lines().count()
    };
    assert_eq!(
        audit(&[
            "--agent",
            "echo_agent",
            "--status",
            "succeeded",
            "--since",
            "1h"
        ]),
        3
    );
    assert_eq!(audit(&["--agent", "someone_else"]), 0);
    assert_eq!(audit(&["--status", "failed"]), 0);
    assert_eq!(audit(&["--until", "1h"]), 0);
    let err = fails(&mut client(&["scan", "tools/", "--status", "done"]));
    assert!(
        err.contains("unknown status") && err.contains("succeeded"),
        "{err}"
    );
    let err = fails(&mut client(&["scan", "tools/", "--since", "yesterday"]));
    assert!(err.contains("--since") && err.contains("1h"), "{err}");

    let metrics = ok(&mut client(&["metrics", "--json"]));
    let metrics: serde_json::Value = serde_json::from_str(metrics.trim()).unwrap();
    assert_eq!(metrics["echo_agent"]["total"], 3);
    assert!(ok(&mut client(&["metrics"])).contains("echo_agent"));

    assert!(ok(&mut client(&["policy", "list"])).contains("no policies loaded"));
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/sensitive_tools.rego");
    let out = ok(&mut client(&["policy", "add", policy]));
    assert!(out.contains("tools/sensitive/**"), "{out}");
    assert!(ok(&mut client(&["policy", "list"])).contains("switchboard.sensitive_tools"));

    // The server's own error messages reach the terminal.
    let err = fails(&mut client(&["agents", "remove", "nobody"]));
    assert!(err.contains("unknown agent nobody"), "{err}");
    let err = fails(switchboard().args(["agents", "list", "--server", &url]));
    assert!(err.contains("401") && err.contains("--token"), "{err}");
    let err = fails(&mut client(&[
        "invoke",
        "x",
        "--category",
        "code",
        "--policies",
        "policies",
    ]));
    assert!(err.contains("--policies"), "{err}");

    assert!(ok(&mut client(&["agents", "remove", "echo_agent"])).contains("removed echo_agent"));
    assert!(ok(&mut client(&["agents", "list"])).contains("no agents registered"));
    drop(serve);

    // Nothing listens there any more: the error names the URL and what to do.
    let err = fails(&mut client(&["agents", "list"]));
    assert!(
        err.contains(&url) && err.contains("switchboard serve") && err.contains("--server"),
        "{err}"
    );
    // The same filters on the database itself.
    let d = data.to_str().unwrap();
    let local = ok(switchboard().args([
        "scan",
        "tools/",
        "--json",
        "--data",
        d,
        "--agent",
        "echo_agent",
        "--since",
        "1d",
    ]));
    assert_eq!(local.lines().count(), 3, "{local}");
}

#[test]
fn demo_keeps_nothing_unless_asked_and_leaves_no_dead_agents() {
    let cwd = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(switchboard()
        .arg("demo")
        .current_dir(cwd.path())
        .env("TMPDIR", tmp.path()));
    assert!(
        out.contains("throwaway database in") && out.contains(tmp.path().to_str().unwrap()),
        "{out}"
    );
    assert!(out.contains("Done:") && !out.contains("records)"), "{out}");
    assert!(
        !out.contains("Succeeded") && out.contains("  succeeded  "),
        "{out}"
    );
    // Nothing in the working directory, and the temporary database is gone.
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

    // --data keeps the records, but no registration of an agent that ended
    // with the demo.
    let data = cwd.path().join("kept");
    let d = data.to_str().unwrap();
    let out = ok(switchboard().args(["demo", "--data", d]));
    assert!(out.contains(&format!("kept in {d}")), "{out}");
    let list = ok(switchboard().args(["agents", "list", "--data", d]));
    assert!(list.contains("no agents registered"), "{list}");
    let scan = ok(switchboard().args(["scan", "tools/sensitive/", "--json", "--data", d]));
    assert!(scan.lines().count() >= 4, "{scan}");
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = switchboard()
        .args(["scan", "tools/", "--data", data.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the first line is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0) | Some(141)),
        "{:?}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn config_check_validates_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rego")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/policies/sensitive_tools.rego"),
        dir.path().join("rego/sensitive_tools.rego"),
    )
    .unwrap();
    let file = dir.path().join("switchboard.toml");
    let f = file.to_str().unwrap();
    let check = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let mut c = switchboard();
        c.args(["config", "check", f]);
        c
    };
    // Relative paths are the config file's directory's, not the caller's.
    let out = ok(check(
        "listen = \"127.0.0.1:7700\"\ndata_dir = \"data\"\npolicies_dir = \"rego\"\n",
    )
    .current_dir("/"));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("valid"), "{out}");
    assert!(
        out.contains(dir.path().join("data").to_str().unwrap())
            && out.contains(&format!(
                "1 policy file(s) in {}",
                dir.path().join("rego").display()
            )),
        "{out}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "check must not open the database"
    );

    for (text, expected) in [
        ("listen_adress = \"x\"\n", "listen_adress"),
        ("[limits]\nmax_connections = 0\n", "limits"),
        ("policies_dir = \"missing\"\n", "missing"),
        ("listen = \"not an address\"\n", "listen"),
    ] {
        let err = fails(&mut check(text));
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn config_check_reports_every_problem_serve_would_refuse_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    let f = file.to_str().unwrap();
    // One problem per kind of check: the text, the listen address without a
    // token, a file the config names, two agents (endpoint shape, the
    // default network policy), and the cluster settings.
    std::fs::write(
        &file,
        r#"
listen = "0.0.0.0:7799"
data_dir = "data"
[limits]
max_connections = 0
[tls]
cert_file = "missing.pem"
key_file = "missing-key.pem"
[[agents]]
id = "wrong_scheme"
tools = ["code"]
endpoint = "ftp://127.0.0.1/x"
[[agents]]
id = "metadata"
tools = ["search"]
mcp = "http://169.254.169.254/mcp"
[cluster]
etcd = ["http://127.0.0.1:1"]
node_id = "not a node id"
"#,
    )
    .unwrap();
    let expected = [
        "limits.max_connections: must be at least 1",
        "listen: refusing to serve on 0.0.0.0:7799 without an API token",
        "tls.cert_file",
        "missing.pem",
        "agents[0]: endpoint \"ftp://127.0.0.1/x\"",
        "agents[1]:",
        "169.254.169.254",
        "cluster: node id",
    ];
    let err = fails(
        switchboard()
            .args(["config", "check", f])
            .env_remove("SWITCHBOARD_TOKEN"),
    );
    assert!(err.contains("6 problems"), "{err}");
    for part in expected {
        assert!(err.contains(part), "missing {part:?} in:\n{err}");
    }
    // `serve` refuses the same file for the same problems, before opening
    // the database.
    let out = switchboard()
        .args(["serve", "--config", f])
        .env_remove("SWITCHBOARD_TOKEN")
        .output()
        .unwrap();
    let serve_err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{serve_err}");
    for part in expected {
        assert!(
            serve_err.contains(part),
            "serve: missing {part:?} in:\n{serve_err}"
        );
    }
    assert!(!dir.path().join("data").exists());
}

#[test]
fn the_minimal_config_of_the_docs_passes_the_check() {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let section = docs
        .split("## A minimal file")
        .nth(1)
        .expect("configuration.md has a minimal sample");
    let sample = section
        .split("```toml\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("the minimal sample is a toml block");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchboard.toml");
    std::fs::write(&file, sample).unwrap();
    let out = ok(switchboard().args(["config", "check", file.to_str().unwrap()]));
    assert!(out.contains("valid") && out.contains("token set"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_applies_agents_and_rate_limits_from_its_config() {
    let agent = TestAgent::start("echo", Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[decision_log]\nmax_entries = 50\n\
             [[rate_limits]]\nop = \"dispatch\"\nmax = 1\nwindow_secs = 3600\n\
             [[agents]]\nid = \"from_config\"\ntools = [\"code\"]\nendpoint = \"{}\"\npriority = 7\n",
            agent.endpoint
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    assert!(ok(switchboard().args(["config", "check", c])).contains("valid"));
    let serve = Serve::start_with(&["--config", c], "tok");
    let client = |args: &[&str]| {
        let mut cmd = switchboard();
        cmd.args(args)
            .args(["--server", &serve.url, "--token", "tok"]);
        cmd
    };
    let list = ok(&mut client(&["agents", "list"]));
    assert!(
        list.contains("from_config") && list.contains(&agent.endpoint),
        "{list}"
    );
    ok(&mut client(&["invoke", "t", "--category", "code"]));
    let err = fails(&mut client(&["invoke", "t", "--category", "code"]));
    assert!(err.contains("rate limit"), "{err}");
    assert_eq!(agent.hits(), 1);
    drop(serve);
    // data_dir was the config file's directory's, not the working directory's.
    assert!(dir.path().join("data").is_dir());
}

#[test]
fn local_errors_name_commands_not_rust_methods() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    let err =
        fails(switchboard().args(["agents", "remove", "ghost", "--data", d.to_str().unwrap()]));
    assert!(
        err.contains("unknown agent ghost")
            && err.contains("switchboard agents list")
            && !err.contains("()"),
        "{err}"
    );
}

/// `python3 examples/echo_agent.py`, stopped (killed and waited for) on drop.
struct PythonEchoAgent {
    child: Child,
    /// Its `/invoke` URL, as it printed it.
    endpoint: String,
}

impl PythonEchoAgent {
    fn start() -> PythonEchoAgent {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/echo_agent.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        // The first line names the port; read on a thread so the wait is bounded.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30));
        // Owned before the checks below, so that a failed one still stops python.
        let mut agent = PythonEchoAgent {
            child,
            endpoint: String::new(),
        };
        let line = line.expect("the echo agent printed its address");
        agent.endpoint = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|url| url.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        agent
    }
}

impl Drop for PythonEchoAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_python_example_agent_answers_through_serve() {
    let agent = PythonEchoAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("data"), "s3cret");
    let client = |args: &[&str]| {
        let mut c = switchboard();
        c.args(args)
            .env("SWITCHBOARD_URL", &serve.url)
            .env("SWITCHBOARD_TOKEN", "s3cret");
        c
    };
    ok(&mut client(&[
        "agents",
        "register",
        "py_echo",
        "--tools",
        "code",
        "--endpoint",
        &agent.endpoint,
    ]));
    let out = ok(&mut client(&[
        "invoke",
        "code_exec",
        "--category",
        "code",
        "--input",
        r#"{"code":"1+1"}"#,
    ]));
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["agent_id"], "py_echo", "{out}");
    assert_eq!(result["output"]["tool"], "code_exec", "{out}");
    assert_eq!(result["output"]["category"], "code", "{out}");
    assert_eq!(result["output"]["echo"], serde_json::json!({"code": "1+1"}));
    assert_eq!(result["output"]["invocation_id"], result["invocation_id"]);
    // Health checks read GET /health from the same agent.
    let addr = agent.endpoint["http://".len()..].trim_end_matches("/invoke");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(
        &mut conn,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut conn, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The same agent registered at a path it does not serve: a 404, which
    // the error explains as a wrong URL.
    let wrong = agent.endpoint.replace("/invoke", "/invok");
    ok(&mut client(&[
        "agents",
        "register",
        "py_typo",
        "--tools",
        "search",
        "--endpoint",
        &wrong,
    ]));
    let err = fails(&mut client(&["invoke", "find", "--category", "search"]));
    assert!(
        err.contains("HTTP 404") && err.contains("endpoint URL looks wrong"),
        "{err}"
    );
}

#[test]
fn cli_messages_name_commands_suggest_categories_and_show_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let local = |args: &[&str]| {
        let mut c = switchboard();
        c.args(args).args(["--data", d]);
        c
    };
    // A typo in --category: the nearest served category, and the known ones.
    ok(&mut local(&[
        "agents",
        "register",
        "coder",
        "--tools",
        "code,shell",
        "--endpoint",
        "http://127.0.0.1:9/invoke",
    ]));
    let err = fails(&mut local(&["invoke", "run", "--category", "cdoe"]));
    assert!(
        err.contains("Did you mean --category code?")
            && err.contains("Categories agents serve: code, shell")
            && err.contains("embedding"),
        "{err}"
    );

    // Registering without a transport names all three ways of giving one.
    let out = local(&["agents", "register", "bare", "--tools", "code"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("--endpoint")
            && err.contains("--mcp <MCP>")
            && err.contains("--mcp-command"),
        "{err}"
    );

    // Tokens: the list shows expiry; revoke takes a name.
    ok(&mut local(&[
        "tokens",
        "create",
        "--name",
        "ci",
        "--scopes",
        "invoke",
        "--expires-in",
        "3600",
    ]));
    ok(&mut local(&[
        "tokens", "create", "--name", "ops", "--scopes", "audit",
    ]));
    let list = ok(&mut local(&["tokens", "list"]));
    let row = |name: &str| {
        list.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no token {name}:\n{list}"))
            .to_string()
    };
    assert!(
        row("ci").contains("expires 20") && row("ci").contains(" UTC"),
        "{list}"
    );
    assert!(row("ops").contains("expires never"), "{list}");
    let out = ok(&mut local(&["tokens", "revoke", "ci"]));
    assert!(out.contains("revoked"), "{out}");
    let err = fails(&mut local(&["tokens", "revoke", "nobody"]));
    assert!(err.contains("no token has the id or name"), "{err}");

    // Through a server, its hints are reworded as commands.
    let serve = Serve::start(&dir.path().join("served"), "s3cret");
    let err = fails(
        switchboard()
            .args(["agents", "remove", "ghost", "--server", &serve.url])
            .args(["--token", "s3cret"]),
    );
    assert!(
        err.contains("switchboard agents register ghost") && !err.contains("/v1/"),
        "{err}"
    );
    // An error before any row: no table header above it.
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let out = switchboard()
        .args(["scan", "tools/", "--server", &unreachable])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "", "a header before the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_through_a_server_lists_refused_calls_as_denied() {
    let agent = TestAgent::start("echo", Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("no_shell.rego"),
        "# scope: tools/shell/**\npackage no_shell\n\nimport rego.v1\n\ndeny contains \"no shell today\" if input.op == \"put\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start_with(
        &[
            "--data",
            data.to_str().unwrap(),
            "--policies",
            policies.to_str().unwrap(),
        ],
        "s3cret",
    );
    let client = |args: &[&str]| {
        let mut c = switchboard();
        c.args(args)
            .env("SWITCHBOARD_URL", &serve.url)
            .env("SWITCHBOARD_TOKEN", "s3cret");
        c
    };
    ok(&mut client(&[
        "agents",
        "register",
        "sh",
        "--tools",
        "shell,code",
        "--endpoint",
        &agent.endpoint,
    ]));
    ok(&mut client(&["invoke", "run", "--category", "code"]));
    let err = fails(&mut client(&["invoke", "ls", "--category", "shell"]));
    assert!(err.contains("no shell today"), "{err}");

    let table = ok(&mut client(&["scan", "tools/"]));
    let row = |status: &str| {
        table
            .lines()
            .find(|l| l.contains(&format!(" {status} ")))
            .unwrap_or_else(|| panic!("no {status} row:\n{table}"))
            .to_string()
    };
    let served = row("succeeded");
    assert!(
        served.contains("code/run") && served.contains(" sh "),
        "{table}"
    );
    let denied = row("denied");
    assert!(
        denied.contains("shell/ls") && denied.contains(" sh ") && denied.contains("no shell today"),
        "{table}"
    );
    // Callers are shown: the server's static token acts as static-admin.
    assert!(served.contains("static-admin"), "{table}");
    // --json stays the records under the prefix; --status selects records only.
    let json = ok(&mut client(&["scan", "tools/", "--json"]));
    assert_eq!(json.lines().count(), 1, "{json}");
    let failed_only = ok(&mut client(&["scan", "tools/", "--status", "succeeded"]));
    assert!(!failed_only.contains(" denied "), "{failed_only}");
}
