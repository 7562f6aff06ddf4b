//! The admin UI's server side on a real `switchboard serve`: where it says
//! the UI is, the pages and their Content-Security-Policy, sign-in (the
//! cookie's flags, and that it holds the credential the API checks), CSRF
//! refusals of cookie-authenticated writes, scopes for cookie callers, the
//! stream of completed calls (read policies, trace ids, shutdown), the
//! policy check, and why an agent was ejected. The pages themselves are
//! driven in a real browser by scripts/ui-test.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::BufRead;
use std::time::Duration;

const TOKEN: &str = "ui-test-admin-token";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

struct Server {
    process: ServeProcess,
    client: reqwest::Client,
}

/// An issued token: its secret and its caller id.
struct Issued {
    secret: String,
    caller: String,
    id: String,
}

impl Server {
    async fn start() -> Server {
        let client = http_client();
        let process = ServeProcess::start("", &[("SWITCHBOARD_TOKEN", TOKEN)], &client).await;
        Server { process, client }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.process.base)
    }

    fn origin(&self) -> String {
        self.process.base.clone()
    }

    /// A request with the server's admin token.
    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(TOKEN)
    }

    /// A request carrying `credential` in the session cookie only.
    fn cookie(
        &self,
        method: reqwest::Method,
        path: &str,
        credential: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("cookie", format!("switchboard_session={credential}"))
    }

    async fn issue(&self, name: &str, scopes: &[&str]) -> Issued {
        self.issue_with_roles(name, scopes, &[]).await
    }

    async fn issue_with_roles(&self, name: &str, scopes: &[&str], roles: &[&str]) -> Issued {
        let r = self
            .admin(reqwest::Method::POST, "/v1/tokens")
            .json(&json!({"name": name, "scopes": scopes, "roles": roles}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        Issued {
            secret: body["secret"].as_str().unwrap().into(),
            caller: body["token"]["caller"].as_str().unwrap().into(),
            id: body["token"]["token_id"].as_str().unwrap().into(),
        }
    }

    /// Signs in with `credential`: the session's CSRF token.
    async fn sign_in(&self, credential: &str) -> String {
        let r = self
            .client
            .post(self.url("/ui/session"))
            .bearer_auth(credential)
            .header("origin", self.origin())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["csrf_token"].as_str().unwrap().to_string()
    }

    async fn token_names(&self) -> Vec<String> {
        let tokens: Value = self
            .admin(reqwest::Method::GET, "/v1/tokens")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    }

    async fn register(&self, id: &str, endpoint: &str) {
        let r = self
            .admin(reqwest::Method::PUT, &format!("/v1/agents/{id}"))
            .json(&json!({"tools": ["code"], "endpoint": endpoint}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
}

async fn error_code(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test]
async fn serve_prints_the_ui_address() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = switchboard()
        .env("RUST_LOG", "info")
        .env("SWITCHBOARD_TOKEN", TOKEN)
        .args(["serve", "--data"])
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    // The address follows the line that says the server is serving.
    let serving = lines
        .by_ref()
        .map(|l| l.unwrap())
        .find(|l| l.contains("switchboard serving"));
    let next = lines.next().map(|l| l.unwrap());
    let _ = child.kill();
    let _ = child.wait();
    assert!(serving.is_some(), "serve never said it was serving");
    let next = next.unwrap_or_default();
    assert!(
        next.contains(&format!("admin UI: http://127.0.0.1:{port}/ui/")),
        "{next}"
    );
}

#[tokio::test]
async fn the_pages_come_from_the_binary_under_a_strict_content_security_policy() {
    let server = Server::start().await;
    for path in [
        "/ui/",
        "/ui/tools",
        "/ui/policies/shell_guard",
        "/ui/record",
    ] {
        let r = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path} needs no credential");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let page = r.text().await.unwrap();
        // Everything the page loads is one of the UI's own files.
        let loads: Vec<&str> = page
            .split(['"', '\''])
            .filter(|s| s.starts_with('/') || s.contains("://"))
            .collect();
        assert!(!loads.is_empty());
        for load in loads {
            assert!(load.starts_with("/ui/"), "{path} loads {load}");
            let r = server.client.get(server.url(load)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{load}");
        }
    }
    let r = server
        .client
        .get(server.url("/ui/assets/app.js"))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(r.headers().contains_key("content-security-policy"));
    let r = server
        .client
        .get(server.url("/ui/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The API's data still needs a credential.
    let r = server
        .client
        .get(server.url("/v1/agents"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = server
        .client
        .get(server.url("/ui/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn signing_in_puts_the_credential_in_an_httponly_strict_cookie_the_api_accepts() {
    let server = Server::start().await;
    let auditor = server.issue("auditor", &["audit"]).await;
    let r = server
        .client
        .post(server.url("/ui/session"))
        .bearer_auth(&auditor.secret)
        .header("origin", server.origin())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let attributes: Vec<&str> = cookie.split("; ").collect();
    assert_eq!(
        attributes[0],
        format!("switchboard_session={}", auditor.secret)
    );
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(&flag), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP: a Secure cookie would never be sent"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["caller"], auditor.caller.as_str());
    assert_eq!(body["scopes"], json!(["audit"]));
    let csrf = body["csrf_token"].as_str().unwrap().to_string();

    // The cookie alone is the caller, as the bearer header would be.
    let r = server
        .cookie(reqwest::Method::GET, "/ui/session", &auditor.secret)
        .send()
        .await
        .unwrap();
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["caller"], auditor.caller.as_str());
    assert_eq!(again["csrf_token"], csrf.as_str());
    let r = server
        .cookie(
            reqwest::Method::GET,
            "/v1/scan?prefix=tools/",
            &auditor.secret,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A credential the API refuses signs nobody in.
    let r = server
        .client
        .post(server.url("/ui/session"))
        .bearer_auth("sbt_nope_0000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| c.to_str().unwrap().contains("Max-Age=0")),
        "a refused sign-in sets no session"
    );
    // Signing out clears the cookie, with or without a valid one.
    let r = server
        .client
        .delete(server.url("/ui/session"))
        .header("origin", server.origin())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
}

#[tokio::test]
async fn a_cookie_authenticated_write_needs_the_csrf_token_and_this_origin() {
    let server = Server::start().await;
    let admin = server.issue("admin", &["admin"]).await;
    let csrf = server.sign_in(&admin.secret).await;
    let create = |name: &str| {
        server
            .cookie(reqwest::Method::POST, "/v1/tokens", &admin.secret)
            .json(&json!({"name": name, "scopes": ["invoke"]}))
    };
    let refusals = [
        ("no token", create("no-token")),
        (
            "a wrong token",
            create("wrong").header("x-csrf-token", "0".repeat(64)),
        ),
        (
            "another site",
            create("cross-site")
                .header("x-csrf-token", &csrf)
                .header("sec-fetch-site", "cross-site"),
        ),
        (
            "another origin",
            create("other-origin")
                .header("x-csrf-token", &csrf)
                .header("origin", "http://attacker.example"),
        ),
    ];
    for (what, request) in refusals {
        let (status, code) = error_code(request.send().await.unwrap()).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "csrf_refused"),
            "{what}"
        );
    }
    assert_eq!(
        server.token_names().await,
        vec!["admin"],
        "no refused write took effect"
    );
    let r = create("from-the-ui")
        .header("x-csrf-token", &csrf)
        .header("origin", server.origin())
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // A revocation is a write too.
    let victim = server.issue("victim", &["invoke"]).await;
    let r = server
        .cookie(
            reqwest::Method::DELETE,
            &format!("/v1/tokens/{}", victim.id),
            &admin.secret,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.1, "csrf_refused");
    // Bearer callers are unchanged: no CSRF token, no cookie.
    let r = server
        .client
        .post(server.url("/v1/tokens"))
        .bearer_auth(&admin.secret)
        .json(&json!({"name": "by-bearer", "scopes": ["invoke"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        server.token_names().await,
        vec!["admin", "from-the-ui", "victim", "by-bearer"]
    );
}

#[tokio::test]
async fn a_revoked_sign_in_is_refused_and_its_cookie_cleared() {
    let server = Server::start().await;
    let reader = server.issue("reader", &["audit"]).await;
    server.sign_in(&reader.secret).await;
    let r = server
        .admin(
            reqwest::Method::DELETE,
            &format!("/v1/tokens/{}", reader.id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = server
        .cookie(reqwest::Method::GET, "/v1/agents", &reader.secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let cleared = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("switchboard_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

#[tokio::test]
async fn a_cookie_caller_has_its_scopes_and_no_more() {
    let server = Server::start().await;
    let invoker = server.issue("invoker", &["invoke"]).await;
    let csrf = server.sign_in(&invoker.secret).await;
    let r = server
        .cookie(reqwest::Method::GET, "/ui/session", &invoker.secret)
        .send()
        .await
        .unwrap();
    let session: Value = r.json().await.unwrap();
    assert_eq!(session["scopes"], json!(["invoke"]));
    for (method, path) in [
        (reqwest::Method::GET, "/v1/tokens"),
        (reqwest::Method::GET, "/v1/policies"),
        (reqwest::Method::GET, "/v1/policies/guard"),
        (reqwest::Method::POST, "/v1/policies/guard/check"),
        (reqwest::Method::GET, "/v1/calls/stream"),
        (reqwest::Method::GET, "/v1/scan?prefix=tools/"),
        (reqwest::Method::GET, "/v1/metrics"),
    ] {
        let r = server
            .cookie(method.clone(), path, &invoker.secret)
            .header("x-csrf-token", &csrf)
            .json(&json!({"source": "package x"}))
            .send()
            .await
            .unwrap();
        let (status, code) = error_code(r).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "insufficient_scope"),
            "{method} {path}"
        );
    }
    let r = server
        .cookie(reqwest::Method::GET, "/v1/agents", &invoker.secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// The next `call` event of an event stream, skipping keep-alive comments.
async fn next_call(stream: &mut reqwest::Response, buffer: &mut String) -> Value {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(data) = event
                .lines()
                .any(|l| l == "event: call")
                .then(|| event.lines().find_map(|l| l.strip_prefix("data: ")))
                .flatten()
            {
                return serde_json::from_str(data).unwrap();
            }
            continue;
        }
        let chunk = stream.chunk().await.unwrap().expect("the stream ended");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn the_call_stream_sends_each_completed_call_as_a_scan_reads_it() {
    let server = Server::start().await;
    let agent = TestAgent::start("a", Behaviour::Echo).await;
    server.register("a", &agent.endpoint).await;
    // Records of `hidden` calls may not be read by outsiders.
    let hide = "# scope: tools/code/hidden/**\n# ops: get\npackage switchboard.hide\n\nimport rego.v1\n\ndeny contains \"hidden from outsiders\" if {\n\tinput.op == \"get\"\n\t\"outsider\" in input.context.roles\n}\n";
    let r = server
        .admin(reqwest::Method::PUT, "/v1/policies/hide")
        .json(&json!({"source": hide}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let insider = server.issue("insider", &["audit"]).await;
    let outsider = server
        .issue_with_roles("outsider", &["audit"], &["outsider"])
        .await;
    let invoker = server.issue("invoker", &["invoke"]).await;
    let subscribe = |who: &Issued| {
        server
            .client
            .get(server.url("/v1/calls/stream"))
            .bearer_auth(&who.secret)
            .send()
    };
    let mut insiders = subscribe(&insider).await.unwrap();
    let mut outsiders = subscribe(&outsider).await.unwrap();
    assert_eq!(outsiders.status(), StatusCode::OK);
    assert_eq!(outsiders.headers()["content-type"], "text/event-stream");
    for tool in ["hidden", "shown"] {
        let r = server
            .client
            .post(server.url("/v1/invoke"))
            .bearer_auth(&invoker.secret)
            .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
            .json(&json!({"tool": tool, "category": "code", "input": {"n": 1}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }
    let seen = next_call(&mut insiders, &mut String::new()).await;
    assert!(
        seen["key"]
            .as_str()
            .unwrap()
            .starts_with("tools/code/hidden/"),
        "{seen}"
    );
    let event = next_call(&mut outsiders, &mut String::new()).await;
    let key = event["key"].as_str().unwrap();
    assert!(
        key.starts_with("tools/code/shown/"),
        "the hidden call's record is left out: {event}"
    );
    let call = &event["value"];
    assert_eq!(call["status"], "succeeded");
    assert_eq!(call["caller"], invoker.caller.as_str());
    assert_eq!(call["agent_id"], "a");
    assert_eq!(call["trace_id"], TRACE_ID);
    assert_eq!(call["attempts"][0]["outcome"], "succeeded");
    // The very item a scan gives this caller.
    let page: Value = server
        .client
        .get(server.url(&format!("/v1/scan?prefix={key}")))
        .bearer_auth(&outsider.secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"][0], event);
}

#[tokio::test]
async fn an_open_stream_does_not_hold_up_shutdown() {
    let client = http_client();
    // A drain this long would outlast the test if the stream held it up.
    let mut server = ServeProcess::start(
        "shutdown_grace_secs = 3600",
        &[("SWITCHBOARD_TOKEN", TOKEN)],
        &client,
    )
    .await;
    let mut stream = client
        .get(format!("{}/v1/calls/stream", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let term = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream stayed open after SIGTERM");
    let status = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_policy_check_compiles_and_runs_tests_without_storing_anything() {
    let server = Server::start().await;
    let source = "# scope: tools/shell/**\npackage switchboard.guard\n\nimport rego.v1\n\ndeny contains \"no shell\" if input.context.caller == \"token:x\"\n";
    let tests = "package switchboard.guard_test\n\nimport rego.v1\n\nimport data.switchboard.guard\n\ntest_denies_x if {\n\tcount(guard.deny) == 1 with input as {\"context\": {\"caller\": \"token:x\"}}\n}\n\ntest_denies_y if {\n\tcount(guard.deny) == 1 with input as {\"context\": {\"caller\": \"token:y\"}}\n}\n";
    let r = server
        .admin(reqwest::Method::POST, "/v1/policies/guard/check")
        .json(&json!({"source": source, "tests": tests}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let check: Value = r.json().await.unwrap();
    assert_eq!(check["package"], "switchboard.guard");
    assert_eq!(check["scopes"], json!(["tools/shell/**"]));
    assert_eq!(check["passed"], false);
    let results: Vec<(String, bool)> = check["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["passed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        results,
        vec![
            ("switchboard.guard_test.test_denies_x".to_string(), true),
            ("switchboard.guard_test.test_denies_y".to_string(), false),
        ]
    );
    let r = server
        .admin(reqwest::Method::POST, "/v1/policies/guard/check")
        .json(&json!({"source": "package switchboard.broken\n\ndeny contains x if {"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "policy_invalid".into())
    );
    let r = server
        .admin(reqwest::Method::GET, "/v1/policies/guard")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a check stores nothing");
}

#[tokio::test]
async fn an_ejected_agent_says_which_check_ejected_it() {
    let (_dir, db) = temp_db();
    let dispatcher = switchboard::ToolDispatcher::new(db);
    let agent = TestAgent::start("flaky", Behaviour::Status(500)).await;
    agent
        .healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    dispatcher
        .register_agent(
            "flaky",
            switchboard::AgentConfig::new()
                .with_tools(vec![switchboard::ToolCategory::Code])
                .with_endpoint(&agent.endpoint),
        )
        .unwrap();
    assert_eq!(
        dispatcher.registry().get("flaky").unwrap().status_reason,
        None
    );
    dispatcher.enable_health_checks(
        switchboard::HealthCheckConfig::new()
            .interval(Duration::from_secs(3600))
            .unhealthy_threshold(1),
    );
    let _ = call(&dispatcher, switchboard::RoutingStrategy::RoundRobin).await;
    let record = dispatcher.registry().get("flaky").unwrap();
    assert_eq!(
        record.status,
        switchboard::namespace::AgentStatus::Unhealthy
    );
    // A probe or the failed call, whichever came first, ejected it.
    let reason = record.status_reason.unwrap_or_default();
    assert!(
        reason == "1 probes in a row failed" || reason == "1 invocations in a row failed",
        "{reason}"
    );
}
