//! A single etcd member and `switchboard serve` nodes on 127.0.0.1, for the
//! cluster tests: every process is killed when its guard drops, and every
//! wait is bounded.

use super::free_port;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Proc {
    /// Kills (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Sends the signal named `name` (`TERM`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// Sends SIGTERM and waits (at most `limit`) for the process to exit.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        self.exit_status(limit)
    }

    /// Waits (at most `limit`) for the process to exit on its own.
    pub fn exit_status(&mut self, limit: Duration) -> std::process::ExitStatus {
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

pub fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap()
}

pub fn read_log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `limit`.
pub async fn within<T, F: std::future::Future<Output = Option<T>>>(
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

pub fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

/// One etcd member on loopback, and a client for its JSON gateway.
pub struct Etcd {
    pub url: String,
    pub http: reqwest::Client,
    /// The root user's name and password, once auth is enabled: every call
    /// then signs in first (tokens may live only seconds here).
    root: Option<(String, String)>,
    /// How it was started, to start it again on its data directory.
    command: Vec<String>,
    dir: std::path::PathBuf,
    process: Option<Proc>,
}

impl Etcd {
    /// Starts one member in `dir` with `extra` flags; `scheme` is that of
    /// its client URL. Waits until it answers (through `http`).
    pub async fn start(dir: &Path, scheme: &str, extra: &[String], http: reqwest::Client) -> Etcd {
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
        let mut command: Vec<String> = [
            "--name",
            "e1",
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("e1={peer}"),
            "--data-dir",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        command.push(dir.join("etcd").display().to_string());
        command.extend(extra.iter().cloned());
        let mut etcd = Etcd {
            url,
            http,
            root: None,
            command,
            dir: dir.to_path_buf(),
            process: None,
        };
        etcd.resume().await;
        etcd
    }

    /// Kills the member (SIGKILL): nothing answers at its URL until
    /// [`Etcd::resume`].
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Starts the member (again) on its data directory and waits until it
    /// answers.
    pub async fn resume(&mut self) {
        self.process = Some(Proc(
            Command::new("etcd")
                .args(&self.command)
                .stdout(Stdio::null())
                .stderr(log_file(&self.dir, "etcd"))
                .spawn()
                .unwrap(),
        ));
        let start = Instant::now();
        loop {
            if self.call("/v3/maintenance/status", json!({})).await.is_ok() {
                return;
            }
            let exited = self
                .process
                .as_mut()
                .is_some_and(|p| p.0.try_wait().ok().flatten().is_some());
            assert!(
                !exited,
                "etcd exited before it answered:\n{}",
                read_log(&self.dir, "etcd")
            );
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "not within 30s: etcd answers; its log:\n{}",
                read_log(&self.dir, "etcd")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs `body` to the gateway's `path`; the answer, or its status and text.
    pub async fn call(&self, path: &str, body: Value) -> Result<Value, String> {
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

    pub async fn put(&self, key: &str, value: &Value) {
        self.call(
            "/v3/kv/put",
            json!({"key": b64(key), "value": b64(&value.to_string())}),
        )
        .await
        .unwrap();
    }

    pub async fn get(&self, key: &str) -> Option<Value> {
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
    pub async fn enable_auth(&mut self, user: &str, password: &str) {
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
pub struct Node {
    pub process: Proc,
    pub base: String,
    pub name: String,
}

/// Starts `switchboard serve` in `dir` as `name`, with `args` and the
/// environment `env` (on a free 127.0.0.1 port unless `args` has
/// `--listen`); its log goes to `{name}.log`.
pub fn spawn_node(dir: &Path, name: &str, args: &[String], env: &[(&str, &str)]) -> Node {
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .map(|at| args[at + 1].clone());
    let port = match &listen {
        Some(listen) => listen.rsplit(':').next().unwrap().parse().unwrap(),
        None => free_port(),
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .env_remove("SWITCHBOARD_TOKEN")
        .env_remove("SWITCHBOARD_CLUSTER_SECRET")
        .env("RUST_LOG", "info")
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(log_file(dir, name));
    if listen.is_none() {
        command.args(["--listen", &format!("127.0.0.1:{port}")]);
    }
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
pub fn config_args(dir: &Path, name: &str, text: &str) -> Vec<String> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    vec!["--config".into(), path.display().to_string()]
}

pub async fn serves(http: &reqwest::Client, node: &Node) {
    let url = format!("{}/healthz", node.base);
    within(Duration::from_secs(30), "a node serves", || {
        let request = http.get(&url).send();
        async move { request.await.ok().filter(|r| r.status().is_success()) }
    })
    .await;
}

pub async fn listed(http: &reqwest::Client, node: &Node) -> Vec<String> {
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
