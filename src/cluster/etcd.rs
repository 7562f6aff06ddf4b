//! A small etcd v3 client over etcd's JSON gateway (`/v3/kv/*`,
//! `/v3/lease/*`, `/v3/watch`), on the HTTP client the crate already has:
//! ranges, puts, deletes, create-if-absent transactions, leases and a watch
//! stream. Keys and values travel base64-encoded, revisions as strings.
//!
//! etcd's own protections ([`EtcdAccess`]): a user name and password
//! (`/v3/auth/authenticate` gives a token, sent in the `Authorization`
//! header of every request and fetched again when etcd says it is invalid or
//! has expired), and TLS to `https://` members: a CA to verify them against
//! and a client certificate for `--client-cert-auth`.

use crate::error::{Error, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An etcd user and its password (etcd's `auth enable`).
#[derive(Clone)]
pub struct EtcdCredentials {
    /// The etcd user name.
    pub username: String,
    /// Its password, as read from the variable or file the config names.
    pub password: String,
}

impl std::fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How a node signs in to etcd and checks it: etcd's user authentication,
/// and TLS (a CA for `https://` members, a client certificate).
#[derive(Clone, Debug, Default)]
pub struct EtcdAccess {
    /// Sign in as this user (`None`: etcd without authentication).
    pub credentials: Option<EtcdCredentials>,
    /// A PEM file of CA certificates `https://` members are verified
    /// against, besides the built-in webpki roots.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate chain and its key, presented to members
    /// that require one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The rustls configuration for `https://` members: the webpki roots plus
/// `ca_file`, and the client certificate if given.
fn tls_config(access: &EtcdAccess) -> Result<rustls::ClientConfig> {
    crate::transport::TlsTrust::install_crypto_provider();
    let read = |field: &str, path: &Path| {
        std::fs::read(path).map_err(|e| {
            Error::invalid(format!(
                "cluster.{field} {}: cannot read it ({e})",
                path.display()
            ))
        })
    };
    let certificates = |field: &str, path: &Path| -> Result<Vec<CertificateDer<'static>>> {
        let pem = read(field, path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                Error::invalid(format!(
                    "cluster.{field} {}: not PEM certificates ({e})",
                    path.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(Error::invalid(format!(
                "cluster.{field} {}: holds no `-----BEGIN CERTIFICATE-----` block",
                path.display()
            )));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &access.ca_file {
        for cert in certificates("ca_file", ca)? {
            roots.add(cert).map_err(|e| {
                Error::invalid(format!(
                    "cluster.ca_file {}: a certificate cannot be used as a CA ({e})",
                    ca.display()
                ))
            })?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::internal("cannot configure TLS", e))?
    .with_root_certificates(roots);
    let mut config = match &access.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates("cert_file", cert)?;
            let key_der = PrivateKeyDer::from_pem_slice(&read("key_file", key)?).map_err(|e| {
                Error::invalid(format!(
                    "cluster.key_file {}: no PEM private key found ({e})",
                    key.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                Error::invalid(format!(
                    "cluster.cert_file {} and cluster.key_file {} do not make a usable pair ({e})",
                    cert.display(),
                    key.display()
                ))
            })?
        }
    };
    // The gateway speaks HTTP/1.1 (this client has no HTTP/2).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What an answer of etcd says about this node's sign-in, if anything.
#[derive(Debug, PartialEq, Eq)]
enum AuthProblem {
    /// The token is invalid or expired, or none was sent: sign in again.
    SignInAgain,
    /// etcd refused the user name and password.
    BadCredentials,
    /// The user may not do this (etcd's roles).
    Denied,
}

fn auth_problem(answer: &str) -> Option<AuthProblem> {
    if answer.contains("invalid auth token") || answer.contains("user name is empty") {
        Some(AuthProblem::SignInAgain)
    } else if answer.contains("authentication failed") {
        Some(AuthProblem::BadCredentials)
    } else if answer.contains("permission denied") {
        Some(AuthProblem::Denied)
    } else {
        None
    }
}

/// How long one request to one etcd member may take before the next member
/// is tried (a member cut off from its leader answers linearizable requests
/// only after its own, longer, timeout).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take over all members before etcd counts as
/// unreachable.
pub(crate) const DEADLINE: Duration = Duration::from_secs(4);

/// One key-value pair as etcd returns it.
#[derive(Clone, Debug)]
pub(crate) struct Kv {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
}

/// A change seen by a watch.
#[derive(Debug)]
pub(crate) enum Event {
    Put(Kv),
    Delete(String),
}

/// What one watch message says.
pub(crate) enum WatchMessage {
    /// Changes, and the revision of the last of them (0 when there are none).
    Events { revision: i64, events: Vec<Event> },
    /// The start revision was compacted away: list again.
    Compacted,
}

/// The members' client URLs; requests go to the one that last answered.
pub(crate) struct Etcd {
    endpoints: Vec<String>,
    current: AtomicUsize,
    http: reqwest::Client,
    credentials: Option<EtcdCredentials>,
    /// The token of the last sign-in (etcd's auth), shared by every request.
    token: parking_lot::Mutex<Option<String>>,
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// The key just past every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    b64(&end)
}

fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv(v: &Value) -> Option<Kv> {
    let key = B64.decode(v["key"].as_str()?).ok()?;
    let value = match v["value"].as_str() {
        Some(s) => B64.decode(s).ok()?,
        None => Vec::new(),
    };
    Some(Kv {
        key: String::from_utf8(key).ok()?,
        value,
    })
}

fn unavailable(what: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!(
        "{what}; check that etcd is running at the URLs given to --cluster-etcd"
    ))
}

impl Etcd {
    pub(crate) fn new(endpoints: Vec<String>, access: &EtcdAccess) -> Result<Etcd> {
        if endpoints.is_empty() {
            return Err(Error::invalid(
                "--cluster-etcd needs at least one etcd client URL, e.g. http://127.0.0.1:2379",
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(REQUEST_TIMEOUT)
            .tls_backend_preconfigured(tls_config(access)?)
            .build()
            .map_err(|e| Error::internal("cannot build the etcd HTTP client", e))?;
        Ok(Etcd {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            current: AtomicUsize::new(0),
            http,
            credentials: access.credentials.clone(),
            token: parking_lot::Mutex::new(None),
        })
    }

    /// The token to send to `base` (a member's URL): the last one, or a new
    /// one from signing in; `None` without credentials.
    async fn token(&self, base: &str) -> std::result::Result<Option<String>, String> {
        let Some(credentials) = &self.credentials else {
            return Ok(None);
        };
        if let Some(token) = self.token.lock().clone() {
            return Ok(Some(token));
        }
        let body = json!({"name": credentials.username, "password": credentials.password});
        let response = self
            .http
            .post(format!("{base}/v3/auth/authenticate"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("signing in to etcd: {e}"))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            let hint = match auth_problem(&text) {
                Some(AuthProblem::BadCredentials) => format!(
                    "; etcd refused user {:?} and its password: check username and \
                     password_env / password_file under [cluster]",
                    credentials.username
                ),
                _ => String::new(),
            };
            return Err(format!(
                "signing in to etcd answered {status}: {text}{hint}"
            ));
        }
        let token = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_string))
            .ok_or_else(|| format!("signing in to etcd gave no token: {text}"))?;
        *self.token.lock() = Some(token.clone());
        Ok(Some(token))
    }

    /// Forgets `used`, the token etcd just refused, so the next request
    /// signs in again (unless another request already did).
    fn forget_token(&self, used: &Option<String>) {
        let mut token = self.token.lock();
        if *token == *used {
            *token = None;
        }
    }

    /// Adds the `Authorization` header when there is a token.
    fn authorized(
        request: reqwest::RequestBuilder,
        token: &Option<String>,
    ) -> reqwest::RequestBuilder {
        match token {
            Some(token) => request.header("authorization", token),
            None => request,
        }
    }

    /// One request to one member: signs in first if need be, and once more
    /// when etcd says the token is invalid or has expired.
    async fn exchange(
        &self,
        base: &str,
        path: &str,
        body: &Value,
    ) -> std::result::Result<Value, String> {
        let mut signed_in_again = false;
        loop {
            let token = self.token(base).await?;
            let response = Self::authorized(self.http.post(format!("{base}{path}")), &token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                return serde_json::from_slice::<Value>(&bytes)
                    .map_err(|e| format!("answered with bad JSON: {e}"));
            }
            let text = String::from_utf8_lossy(&bytes);
            match auth_problem(&text) {
                Some(AuthProblem::SignInAgain)
                    if self.credentials.is_some() && !signed_in_again =>
                {
                    tracing::debug!("etcd refused this node's token; signing in again");
                    self.forget_token(&token);
                    signed_in_again = true;
                    continue;
                }
                Some(AuthProblem::SignInAgain) if self.credentials.is_none() => {
                    return Err(format!(
                        "answered {status}: {text}; this etcd requires authentication: set \
                         username and password_env (or password_file) under [cluster]"
                    ))
                }
                Some(AuthProblem::Denied) => {
                    return Err(format!(
                        "answered {status}: {text}; the etcd user needs read and write \
                         permission on the prefix switchboard/ (etcdctl role grant-permission \
                         --prefix=true ROLE readwrite switchboard/)"
                    ))
                }
                _ => return Err(format!("answered {status}: {text}")),
            }
        }
    }

    /// POSTs `body` to `path`, trying each member once, starting with the
    /// one that answered last, each for at most [`REQUEST_TIMEOUT`] and all
    /// of them for at most [`DEADLINE`]. A member that is down, cut off from
    /// its leader (etcd answers an error) or too slow makes the next one
    /// tried; writes sent to a follower are forwarded by etcd to the leader.
    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let began = tokio::time::Instant::now();
        let mut last = String::new();
        for i in 0..n {
            let left = DEADLINE.saturating_sub(began.elapsed());
            if left.is_zero() {
                break;
            }
            let index = (start + i) % n;
            let url = format!("{}{path}", self.endpoints[index]);
            let exchange = self.exchange(&self.endpoints[index], path, body);
            match tokio::time::timeout(left.min(REQUEST_TIMEOUT), exchange).await {
                Ok(Ok(answer)) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                Ok(Err(e)) => last = format!("{url} {e}"),
                Err(_) => last = format!("{url} did not answer in time"),
            }
            tracing::debug!(error = %last, "etcd member failed; trying the next");
        }
        // Start with the next member next time.
        self.current.store((start + 1) % n, Ordering::Relaxed);
        Err(unavailable(format!("no etcd member answered ({last})")))
    }

    /// Every pair under `prefix`, and the store's revision they were read at.
    pub(crate) async fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64)> {
        let answer = self
            .post(
                "/v3/kv/range",
                &json!({"key": b64(prefix.as_bytes()), "range_end": prefix_end(prefix)}),
            )
            .await?;
        let revision = num(&answer["header"]["revision"]);
        let kvs = answer["kvs"]
            .as_array()
            .map(|a| a.iter().filter_map(kv).collect())
            .unwrap_or_default();
        Ok((kvs, revision))
    }

    /// Writes `value` under `key`, attached to `lease` if given.
    pub(crate) async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<()> {
        let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if let Some(lease) = lease {
            body["lease"] = json!(lease.to_string());
        }
        self.post("/v3/kv/put", &body).await.map(|_| ())
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        self.post("/v3/kv/deleterange", &json!({"key": b64(key.as_bytes())}))
            .await
            .map(|_| ())
    }

    /// Writes `value` under `key` (attached to `lease`) only if the key does
    /// not exist; returns the value that holds afterwards (`value`, or the
    /// earlier one).
    pub(crate) async fn create_if_absent(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<Vec<u8>> {
        let k = b64(key.as_bytes());
        let compare =
            json!({"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0"});
        match self.put_if(&k, compare, value, lease).await? {
            Written::Put => Ok(value.to_vec()),
            Written::Held(Some(held)) => Ok(held),
            Written::Held(None) => Err(unavailable(format!(
                "etcd did not create {key} nor return it"
            ))),
        }
    }

    /// Creates every `(key, value)` of `entries` on `lease` in one
    /// transaction if none of the keys exists. `None`: all were written;
    /// otherwise nothing was, and each key's value now (`None`: absent).
    pub(crate) async fn create_all_if_absent(
        &self,
        entries: &[(String, Vec<u8>)],
        lease: Option<i64>,
    ) -> Result<Option<Vec<Option<Vec<u8>>>>> {
        let mut compare = Vec::with_capacity(entries.len());
        let mut success = Vec::with_capacity(entries.len());
        let mut failure = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let k = b64(key.as_bytes());
            compare.push(
                json!({"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}),
            );
            let mut put = json!({"key": k, "value": b64(value)});
            if let Some(lease) = lease {
                put["lease"] = json!(lease.to_string());
            }
            success.push(json!({"request_put": put}));
            failure.push(json!({"request_range": {"key": k}}));
        }
        let answer = self
            .post(
                "/v3/kv/txn",
                &json!({"compare": compare, "success": success, "failure": failure}),
            )
            .await?;
        if answer["succeeded"].as_bool() == Some(true) {
            return Ok(None);
        }
        Ok(Some(
            (0..entries.len())
                .map(|i| kv(&answer["responses"][i]["response_range"]["kvs"][0]).map(|kv| kv.value))
                .collect(),
        ))
    }

    /// The value under `key` and the revision it was last changed at.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
        let answer = self
            .post("/v3/kv/range", &json!({"key": b64(key.as_bytes())}))
            .await?;
        let first = &answer["kvs"][0];
        Ok(kv(first).map(|kv| (kv.value, num(&first["mod_revision"]))))
    }

    /// Writes `value` under `key` only if the key was last changed at
    /// `mod_revision`; returns the value that holds afterwards.
    pub(crate) async fn put_if_unchanged(
        &self,
        key: &str,
        value: &[u8],
        mod_revision: i64,
        lease: Option<i64>,
    ) -> Result<Vec<u8>> {
        let k = b64(key.as_bytes());
        let compare = json!({"key": k, "result": "EQUAL", "target": "MOD",
                             "mod_revision": mod_revision.to_string()});
        match self.put_if(&k, compare, value, lease).await? {
            Written::Put => Ok(value.to_vec()),
            Written::Held(Some(held)) => Ok(held),
            // Deleted meanwhile: create it.
            Written::Held(None) => self.create_if_absent(key, value, lease).await,
        }
    }

    /// One transaction: puts `value` under the base64 key `k` (on `lease`)
    /// if `compare` holds, else reads what the key holds.
    async fn put_if(
        &self,
        k: &str,
        compare: Value,
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<Written> {
        let mut put = json!({"key": k, "value": b64(value)});
        if let Some(lease) = lease {
            put["lease"] = json!(lease.to_string());
        }
        let answer = self
            .post(
                "/v3/kv/txn",
                &json!({
                    "compare": [compare],
                    "success": [{"request_put": put}],
                    "failure": [{"request_range": {"key": k}}],
                }),
            )
            .await?;
        if answer["succeeded"].as_bool() == Some(true) {
            return Ok(Written::Put);
        }
        Ok(Written::Held(
            kv(&answer["responses"][0]["response_range"]["kvs"][0]).map(|kv| kv.value),
        ))
    }

    /// A new lease of `ttl_secs`; its id.
    pub(crate) async fn grant(&self, ttl_secs: u64) -> Result<i64> {
        let answer = self
            .post("/v3/lease/grant", &json!({"TTL": ttl_secs.to_string()}))
            .await?;
        match num(&answer["ID"]) {
            0 => Err(unavailable("etcd granted no lease")),
            id => Ok(id),
        }
    }

    /// Renews `lease`; `false` if it expired (and must be granted again).
    pub(crate) async fn keep_alive(&self, lease: i64) -> Result<bool> {
        let answer = self
            .post("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))
            .await?;
        Ok(num(&answer["result"]["TTL"]) > 0)
    }

    /// Revokes `lease`: the keys attached to it are deleted at once.
    pub(crate) async fn revoke(&self, lease: i64) -> Result<()> {
        self.post("/v3/lease/revoke", &json!({"ID": lease.to_string()}))
            .await
            .map(|_| ())
    }

    /// Watches `prefix` from `start_revision`, calling `on` with each
    /// message until the stream ends (an error) or `on` returns `false`.
    pub(crate) async fn watch(
        &self,
        prefix: &str,
        start_revision: i64,
        mut on: impl FnMut(WatchMessage) -> bool,
    ) -> Result<()> {
        let index = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        let url = format!("{}/v3/watch", self.endpoints[index]);
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": prefix_end(prefix),
            "start_revision": start_revision.to_string(),
        }});
        // `hasleader`: the member ends the watch when it loses its leader,
        // rather than keeping a stream no change can reach.
        let base = &self.endpoints[index];
        let sent = async {
            let token = self.token(base).await?;
            Self::authorized(self.http.post(&url), &token)
                .header("content-type", "application/json")
                .header("grpc-metadata-hasleader", "true")
                .body(body.to_string())
                .send()
                .await
                .map(|response| (response, token))
                .map_err(|e| e.to_string())
        };
        let (mut response, token) = match tokio::time::timeout(REQUEST_TIMEOUT, sent).await {
            Ok(Ok(response)) => response,
            failed => {
                // The next attempt starts with the next member.
                self.current.store(index + 1, Ordering::Relaxed);
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => "no answer in time".to_string(),
                };
                return Err(unavailable(format!("{url}: {why}")));
            }
        };
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if auth_problem(&text) == Some(AuthProblem::SignInAgain) {
                // The watch is resumed shortly; it signs in again then.
                self.forget_token(&token);
            } else {
                self.current.store(index + 1, Ordering::Relaxed);
            }
            return Err(unavailable(format!("{url} answered {status}: {text}")));
        }
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|e| unavailable(format!("the watch on {url} broke: {e}")))?;
            let Some(chunk) = chunk else {
                return Err(unavailable(format!("the watch on {url} ended")));
            };
            buffer.extend_from_slice(&chunk);
            let mut consumed = 0;
            let mut stream = serde_json::Deserializer::from_slice(&buffer).into_iter::<Value>();
            while let Some(Ok(message)) = stream.next() {
                consumed = stream.byte_offset();
                let result = &message["result"];
                if message.get("error").is_some() {
                    if auth_problem(&message.to_string()) == Some(AuthProblem::SignInAgain) {
                        self.forget_token(&token);
                    }
                    return Err(unavailable(format!("the watch on {url} failed: {message}")));
                }
                if result["canceled"].as_bool() == Some(true)
                    && num(&result["compact_revision"]) == 0
                {
                    // etcd cancels a watch whose token expired (or was
                    // missing) in the stream: sign in again on the retry.
                    if auth_problem(&message.to_string()) == Some(AuthProblem::SignInAgain) {
                        self.forget_token(&token);
                    }
                    return Err(unavailable(format!(
                        "etcd ended the watch on {url}: {message}"
                    )));
                }
                if num(&result["compact_revision"]) > 0 {
                    on(WatchMessage::Compacted);
                    return Ok(());
                }
                let mut revision = 0;
                let events: Vec<Event> = result["events"]
                    .as_array()
                    .map(|events| {
                        events
                            .iter()
                            .filter_map(|e| {
                                revision = revision.max(num(&e["kv"]["mod_revision"]));
                                let kv = kv(&e["kv"])?;
                                Some(if e["type"].as_str() == Some("DELETE") {
                                    Event::Delete(kv.key)
                                } else {
                                    Event::Put(kv)
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if !on(WatchMessage::Events { revision, events }) {
                    return Ok(());
                }
            }
            buffer.drain(..consumed);
        }
    }
}

/// What a conditional put did.
enum Written {
    /// The condition held: the value was written.
    Put,
    /// It did not: what the key holds (`None`: nothing).
    Held(Option<Vec<u8>>),
}
