//! The `switchboard` binary's commands, run as a child process.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn switchboard() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    c.env_remove("SWITCHBOARD_TOKEN").env("RUST_LOG", "warn");
    c
}

fn run_ok(args: &[&str]) -> String {
    let out = switchboard().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

const HIDE_AGENT_POLICY: &str = r#"# scope: agents/**
# ops: get
package switchboard.hide_agents

import rego.v1

deny contains "hidden agents are not listed" if {
	input.key == "agents/hidden"
}
"#;

#[test]
fn demo_runs_to_completion_and_shows_each_part() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // As a user runs it: no RUST_LOG, so the demo's own default log level.
    let run = switchboard()
        .env_remove("RUST_LOG")
        .args(["demo", "--data", data.to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{out}\n{err}");
    // The killed agent's failures are narrated, not logged between the steps.
    assert!(!err.contains("WARN"), "log lines in the demo:\n{err}");
    let line = |start: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?}:\n{out}"))
            .to_string()
    };
    // Strategies are shown on agents of equal priority: all three serve.
    let round_robin = line("round_robin");
    for agent in ["backup_agent ×4", "code_agent ×4", "local_code ×4"] {
        assert!(round_robin.contains(agent), "{round_robin}");
    }
    // Then the tier rule on its own: the higher tier takes every call.
    let tiers = out.split("failover tiers").nth(1).expect("a step on tiers");
    assert!(
        tiers
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("code_agent ×12")),
        "{out}"
    );
    // Every agent that served calls is in the metrics table, unregistered or not.
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("trusted_agent_1")
                && l.contains("unregistered in step 6")),
        "{out}"
    );
    assert!(
        out.contains("scan tools/sensitive/ (4 records, oldest first)"),
        "{out}"
    );
    assert!(
        out.contains("in the decision log (policy_log/), the refused call among them"),
        "{out}"
    );
    for expected in [
        "[1/9]",
        "stored at mcp_tools/weather_mcp/forecast",
        "sees: code, forecast",
        "\"sunny in Oslo\"",
        "recorded at tools/weather/forecast/",
        "agent weather_mcp, succeeded",
        "round_robin",
        "least_loaded",
        "fastest",
        "sessions/demo-session",
        "not trusted to run sensitive tools",
        "with only intern_agent left: policy denied",
        "code_agent is marked unhealthy and skipped",
        "AGENT",
        "Done:",
    ] {
        assert!(
            out.contains(expected),
            "demo output lacks {expected:?}:\n{out}"
        );
    }
    // A second run on the same database works too (registrations are replaced).
    run_ok(&["demo", "--data", data.to_str().unwrap()]);
    let scan = run_ok(&[
        "scan",
        "tools/sensitive/",
        "--json",
        "--data",
        data.to_str().unwrap(),
    ]);
    let lines: Vec<serde_json::Value> = scan
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 8, "{scan}");
    // The table: one row per call, and the refusals from the decision log.
    let table = run_ok(&["scan", "tools/sensitive/", "--data", data.to_str().unwrap()]);
    let mut rows = table.lines();
    let header = rows.next().unwrap();
    for column in ["STATUS", "TOOL", "AGENT", "CALLER", "ms", "ERROR"] {
        assert!(header.contains(column), "{table}");
    }
    let served = table
        .lines()
        .filter(|l| l.contains(" succeeded ") && l.contains("sensitive/rotate_keys"))
        .filter(|l| l.contains("trusted_agent_1"))
        .count();
    let denied: Vec<&str> = table.lines().filter(|l| l.contains(" denied ")).collect();
    assert_eq!(served, lines.len(), "{table}");
    assert!(
        !denied.is_empty()
            && denied
                .iter()
                .all(|l| l.contains("intern_agent") && l.contains("not trusted")),
        "{table}"
    );
    assert!(
        table.contains(&format!(
            "({} records and {} refusals from the decision log (policy_log/))",
            served,
            denied.len()
        )),
        "{table}"
    );
    assert!(!table.contains('{'), "raw JSON in the table:\n{table}");
    assert!(lines
        .iter()
        .all(|l| l["value"]["agent_id"] == "trusted_agent_1"));
}

#[test]
fn agents_scan_and_policy_commands() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    assert!(run_ok(&[
        "agents",
        "register",
        "code_agent",
        "--tools",
        "code,shell",
        "--endpoint",
        "http://127.0.0.1:9/invoke",
        "--priority",
        "3",
        "--data",
        d
    ])
    .contains("registered code_agent"));
    let list = run_ok(&["agents", "list", "--data", d]);
    assert!(
        list.contains("code_agent")
            && list.contains("code,shell")
            && list.contains("http://127.0.0.1:9/invoke"),
        "{list}"
    );
    let json_list = run_ok(&["agents", "list", "--json", "--data", d]);
    let record: serde_json::Value = serde_json::from_str(json_list.trim()).unwrap();
    assert_eq!(record["priority"], 3);
    let scan = run_ok(&["scan", "agents/", "--data", d]);
    assert!(
        scan.contains("agents/code_agent") && scan.contains("(1 record)"),
        "{scan}"
    );

    // Invoking an agent that does not listen fails with a clear error and exit code 1.
    let out = switchboard()
        .args(["invoke", "code_exec", "--category", "code", "--data", d])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent code_agent failed"));
    let out = switchboard()
        .args([
            "invoke",
            "x",
            "--category",
            "code",
            "--input",
            "{nope",
            "--data",
            d,
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--input is not JSON"));

    assert!(run_ok(&["agents", "remove", "code_agent", "--data", d]).contains("removed"));
    let out = switchboard()
        .args(["agents", "remove", "code_agent", "--data", d])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown agent code_agent"));

    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/sensitive_tools.rego");
    let check = run_ok(&["policy", "check", policy]);
    assert!(
        check.contains("scope tools/sensitive/**") && check.contains("5 passed, 0 failed"),
        "{check}"
    );
    let bad = dir.path().join("bad.rego");
    std::fs::write(&bad, "# scope: a/**\npackage bad\nallow if {").unwrap();
    let out = switchboard()
        .args(["policy", "check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be loaded"));
}

#[test]
fn serve_reads_its_config_requires_the_token_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\npolicies_dir = \"{}\"\nshutdown_grace_secs = 2\n[health]\ninterval_ms = 100\n",
            dir.path().join("data").display(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/policies"),
        ),
    )
    .unwrap();
    let mut child = switchboard()
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("SWITCHBOARD_TOKEN", "from-the-env")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = common::http_client();
    let base = format!("http://127.0.0.1:{port}");
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
                assert!(r.status().is_success());
                break;
            }
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = client
            .get(format!("{base}/v1/policies"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = client
            .get(format!("{base}/v1/policies"))
            .bearer_auth("from-the-env")
            .send()
            .await
            .unwrap();
        let policies: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(policies[0]["name"], "switchboard.sensitive_tools");
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(exit.success(), "{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");

    // A config with a typo is refused with the field's name.
    std::fs::write(&config, "listen_adress = \"x\"\n").unwrap();
    let out = switchboard()
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_adress"));
}

#[test]
fn cli_agent_list_and_scan_run_under_the_given_policies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("hide.rego"), HIDE_AGENT_POLICY).unwrap();
    let data = data.to_str().unwrap();
    for id in ["hidden", "shown"] {
        let out = switchboard()
            .args(["agents", "register", id, "--tools", "code"])
            .args(["--endpoint", "http://127.0.0.1:9/invoke", "--data", data])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let policies = policies.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = switchboard().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = run(&[
        "agents",
        "list",
        "--json",
        "--data",
        data,
        "--policies",
        policies,
    ]);
    assert!(listed.contains("\"shown\""), "{listed}");
    assert!(!listed.contains("\"hidden\""), "{listed}");
    let scanned = run(&[
        "scan",
        "agents/",
        "--json",
        "--data",
        data,
        "--policies",
        policies,
    ]);
    assert!(scanned.contains("agents/shown"), "{scanned}");
    assert!(!scanned.contains("agents/hidden"), "{scanned}");
    // --policies imported them into the database: a later command without
    // the flag runs under them too.
    let listed = run(&["agents", "list", "--json", "--data", data]);
    assert!(!listed.contains("\"hidden\""), "{listed}");
    // Deleting the stored policy lifts it: both are there.
    let stored = run(&["policy", "list", "--data", data]);
    let name = stored.split_whitespace().next().unwrap().to_string();
    run(&["policy", "delete", &name, "--data", data]);
    let listed = run(&["agents", "list", "--json", "--data", data]);
    assert!(listed.contains("\"hidden\""), "{listed}");
}

#[test]
fn every_argument_has_help() {
    let mut commands = vec![vec![]];
    let mut i = 0;
    // Breadth first through the command tree, from each help's "Commands:".
    while i < commands.len() {
        let path: Vec<String> = commands[i].clone();
        i += 1;
        let help = run_ok(
            &[
                path.iter().map(String::as_str).collect::<Vec<_>>(),
                vec!["-h"],
            ]
            .concat(),
        );
        let lines: Vec<&str> = help.lines().collect();
        let mut section = "";
        for (n, line) in lines.iter().enumerate() {
            if line.ends_with(':') && !line.starts_with(' ') {
                section = line;
                continue;
            }
            let Some(entry) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) else {
                continue;
            };
            match section {
                "Commands:" => {
                    let name = entry.split_whitespace().next().unwrap();
                    if name != "help" {
                        commands.push([path.clone(), vec![name.to_string()]].concat());
                    }
                }
                "Arguments:" | "Options:" => {
                    // The help follows two spaces on the line, or (when it
                    // does not fit) on the next line, indented further.
                    let same_line = entry.trim_end().contains("  ");
                    let next_line = lines
                        .get(n + 1)
                        .is_some_and(|l| l.starts_with("       ") && !l.trim().is_empty());
                    assert!(
                        same_line || next_line,
                        "`switchboard {}`: {entry:?} has no help",
                        path.join(" ")
                    );
                }
                _ => {}
            }
        }
    }
    assert!(commands.len() > 15, "{commands:?}");
}

#[test]
fn policy_check_reports_input_fields_that_do_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.rego");
    std::fs::write(
        &file,
        "# scope: tools/**\npackage typo\n\nimport rego.v1\n\ndeny contains \"untrusted\" if {\n\tnot input.contxt.agent_id in {\"a\"}\n\tinput.context.agnet_id != \"b\"\n}\n",
    )
    .unwrap();
    let out = switchboard()
        .args(["policy", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a typo must fail the check:\n{stdout}"
    );
    assert!(
        stdout.contains("ERROR line 7: input.contxt is not in the input document")
            && stdout.contains("did you mean input.context?"),
        "{stdout}"
    );
    assert!(
        stdout.contains("WARNING line 8: Switchboard sets no input.context.agnet_id; did you mean input.context.agent_id?"),
        "{stdout}"
    );
    assert!(stderr.contains("1 reference to fields"), "{stderr}");

    // The shipped policies use only fields that exist.
    let shipped = run_ok(&[
        "policy",
        "check",
        concat!(env!("CARGO_MANIFEST_DIR"), "/policies"),
    ]);
    assert!(
        !shipped.contains("ERROR") && !shipped.contains("WARNING"),
        "{shipped}"
    );

    // A module without a scope: the error says how to give one.
    std::fs::write(
        &file,
        "package noscope\n\nimport rego.v1\n\ndeny contains \"x\" if input.op == \"put\"\n",
    )
    .unwrap();
    let out = switchboard()
        .args(["policy", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no scope declared") && stderr.contains("--scope GLOB"),
        "{stderr}"
    );
}
