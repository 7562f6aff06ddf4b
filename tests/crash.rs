//! SIGKILL under load: the real binary is killed at random points while
//! clients dispatch through it; every reopen must find everything that was
//! acknowledged, and nothing left in flight once recovery has run.

mod common;

use common::{free_port, Behaviour, TestAgent};
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard::namespace::{DispatchRecord, DispatchStatus};
use switchboard::{Database, ToolDispatcher};

const ROUNDS: usize = 3;
const CLIENTS: usize = 6;

/// What the clients saw acknowledged in one round.
#[derive(Default)]
struct Acknowledged {
    invocations: Vec<String>,
    sessions: HashSet<String>,
}

#[test]
fn sigkill_under_dispatch_load_loses_nothing_acknowledged() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fast = rt.block_on(TestAgent::start("fast", Behaviour::Echo));
    let slow = rt.block_on(TestAgent::start(
        "slow",
        Behaviour::Slow(Duration::from_millis(20)),
    ));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let client = common::http_client();
    let mut registered: Vec<String> = Vec::new();

    for round in 0..ROUNDS {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut server = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args([
                "serve",
                "--data",
                data.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env_remove("SWITCHBOARD_TOKEN")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            while client.get(format!("{base}/healthz")).send().await.is_err() {
                assert!(Instant::now() < deadline, "round {round}: the server did not come up");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for (name, agent) in [("fast", &fast), ("slow", &slow)] {
                let id = format!("{name}_{round}");
                let body = format!(r#"{{"tools": ["code"], "endpoint": "{}"}}"#, agent.endpoint);
                let r = client
                    .put(format!("{base}/v1/agents/{id}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "round {round}: registering {id}");
                registered.push(id);
            }
            let clients: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    let (client, base, acknowledged) = (client.clone(), base.clone(), acknowledged.clone());
                    tokio::spawn(async move {
                        let session = format!("s{round}-{c}");
                        let stop = Instant::now() + Duration::from_secs(10);
                        for i in 0..10_000 {
                            if Instant::now() > stop {
                                break;
                            }
                            let strategy = ["round_robin", "least_loaded", "sticky"][i % 3];
                            let body = format!(
                                r#"{{"tool": "run", "category": "code", "input": {{"i": {i}}}, "strategy": "{strategy}", "session_id": "{session}"}}"#
                            );
                            let sent = client
                                .post(format!("{base}/v1/invoke"))
                                .header("content-type", "application/json")
                                .body(body)
                                .send()
                                .await;
                            let Ok(response) = sent else { break };
                            if !response.status().is_success() {
                                continue;
                            }
                            let Ok(text) = response.text().await else { break };
                            let result: serde_json::Value = serde_json::from_str(&text).unwrap();
                            let mut ack = acknowledged.lock().unwrap();
                            ack.invocations.push(result["invocation_id"].as_str().unwrap().to_string());
                            ack.sessions.insert(session.clone());
                        }
                    })
                })
                .collect();
            // Kill at a random point once the load is running.
            tokio::time::sleep(Duration::from_millis(300 + fastrand::u64(..700))).await;
            server.kill().unwrap();
            server.wait().unwrap();
            for c in clients {
                c.await.unwrap();
            }
        });

        let acknowledged = acknowledged.lock().unwrap();
        assert!(
            !acknowledged.invocations.is_empty(),
            "round {round}: no call completed before the kill"
        );
        let db =
            Database::open(&data).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let _recovered = ToolDispatcher::try_new(db.clone()).unwrap();
        for id in &registered {
            assert!(
                db.get(&format!("agents/{id}")).unwrap().is_some(),
                "round {round}: registration {id} lost"
            );
        }
        for session in &acknowledged.sessions {
            assert!(
                db.get(&format!("sessions/{session}")).unwrap().is_some(),
                "round {round}: binding {session} lost"
            );
        }
        for id in &acknowledged.invocations {
            let bytes = db
                .get(&format!("tools/code/run/{id}"))
                .unwrap()
                .unwrap_or_else(|| {
                    panic!("round {round}: acknowledged dispatch {id} has no record")
                });
            let record: DispatchRecord = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                record.status,
                DispatchStatus::Succeeded,
                "round {round}: {id}"
            );
        }
        let records: Vec<DispatchRecord> = db
            .scan("tools/code/run/")
            .map(|kv| serde_json::from_slice(&kv.unwrap().1).unwrap())
            .collect();
        assert!(
            records.iter().all(|r| r.status != DispatchStatus::InFlight),
            "round {round}: a record is still in flight"
        );
        assert_eq!(
            db.scan("inflight/").count(),
            0,
            "round {round}: the in-flight index is not empty"
        );
        let interrupted = records
            .iter()
            .filter(|r| r.status == DispatchStatus::Interrupted)
            .count();
        eprintln!(
            "round {round}: {} acknowledged, {} records, {interrupted} marked interrupted",
            acknowledged.invocations.len(),
            records.len()
        );
    }
}
