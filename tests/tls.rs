//! HTTPS: agents behind TLS are called (and probed) through the dispatcher
//! and through `switchboard serve`, trusting a CA generated at test time; a
//! certificate from an unknown CA is refused and the call fails over; `serve`
//! terminates TLS for clients that trust its CA; the address policy still
//! judges `https://` agents after DNS resolution.

mod common;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::free_port;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use switchboard::{
    DispatchStatus, HealthCheckConfig, RoutingOptions, TlsTrust, ToolCategory, ToolDispatcher,
};

/// A CA and a certificate it signed for `localhost` and `127.0.0.1`, as PEM
/// files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn generate(name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(pki.ca_file(), &pki.ca_pem).unwrap();
        std::fs::write(pki.cert_file(), &pki.cert_pem).unwrap();
        std::fs::write(pki.key_file(), &pki.key_pem).unwrap();
        pki
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    fn cert_file(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
    fn key_file(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        TlsTrust::install_crypto_provider();
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// A client trusting only this CA.
    fn client(&self) -> reqwest::Client {
        common::http_client_builder()
            .no_proxy()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()])
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    }
}

/// The CA every dispatcher of this test process trusts (one trust per process).
static TRUSTED: LazyLock<Pki> = LazyLock::new(|| {
    let pki = Pki::generate("trusted");
    TlsTrust::new()
        .with_ca_file(pki.ca_file())
        .unwrap()
        .install();
    pki
});

/// A CA nobody trusts.
static UNTRUSTED: LazyLock<Pki> = LazyLock::new(|| Pki::generate("untrusted"));

/// Serves `app` over TLS on `listener` until the task is aborted.
fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                    .await;
            });
        }
    })
}

/// An HTTPS agent on 127.0.0.1 presenting `pki`'s certificate: `POST /invoke`
/// echoes, `GET /health` answers 200 and is counted.
struct HttpsAgent {
    port: u16,
    invokes: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsAgent {
    async fn start(pki: &Pki, name: &'static str) -> HttpsAgent {
        let acceptor = pki.acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (invokes, probes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let app = Router::new()
            .route(
                "/invoke",
                post(
                    move |State(n): State<Arc<AtomicUsize>>, Json(body): Json<Value>| async move {
                        n.fetch_add(1, Ordering::SeqCst);
                        Json(json!({"agent": name, "tool": body["tool"], "over": "https"}))
                    },
                ),
            )
            .with_state(invokes.clone())
            .route(
                "/health",
                get(move |State(n): State<Arc<AtomicUsize>>| async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    "ok"
                }),
            )
            .with_state(probes.clone());
        let task = serve_tls(listener, acceptor, app);
        HttpsAgent {
            port,
            invokes,
            probes,
            task,
        }
    }

    /// The endpoint by name, so the call goes through DNS resolution.
    fn endpoint(&self) -> String {
        format!("https://localhost:{}/invoke", self.port)
    }
}

impl Drop for HttpsAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn dispatcher() -> (tempfile::TempDir, ToolDispatcher) {
    LazyLock::force(&TRUSTED);
    let (dir, db) = common::temp_db();
    (dir, ToolDispatcher::try_new(db).unwrap())
}

async fn invoke(
    d: &ToolDispatcher,
    attempts: u32,
) -> switchboard::Result<switchboard::InvocationResult> {
    d.invoke(
        "run",
        ToolCategory::Code,
        json!({}),
        RoutingOptions::new().with_max_attempts(attempts),
    )
    .await
}

#[tokio::test]
async fn an_https_agent_is_called_and_probed_through_the_dispatcher() {
    let (_dir, d) = dispatcher();
    let agent = HttpsAgent::start(&TRUSTED, "secure").await;
    d.register_agent(
        "secure",
        switchboard::AgentConfig::new()
            .with_tools(vec![ToolCategory::Code])
            .with_endpoint(agent.endpoint()),
    )
    .unwrap();
    let r = invoke(&d, 1).await.unwrap();
    assert_eq!(r.agent_id, "secure");
    assert_eq!(r.output["over"], "https");
    assert_eq!(agent.invokes.load(Ordering::SeqCst), 1);

    // The health probe goes over the same client: it reaches /health.
    d.enable_health_checks(
        HealthCheckConfig::new()
            .interval(Duration::from_millis(20))
            .timeout(Duration::from_secs(5)),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.probes.load(Ordering::SeqCst) < 3 {
        assert!(
            Instant::now() < deadline,
            "the https agent was never probed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.disable_health_checks();
    assert_eq!(d.get_metrics()["secure"].total, 1);
    assert!(invoke(&d, 1).await.is_ok(), "probes kept the agent healthy");
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_the_call_fails_over() {
    let (_dir, d) = dispatcher();
    let rogue = HttpsAgent::start(&UNTRUSTED, "rogue").await;
    let good = HttpsAgent::start(&TRUSTED, "good").await;
    // The rogue agent is preferred (a higher tier), so it is tried first.
    d.register_agent(
        "rogue",
        switchboard::AgentConfig::new()
            .with_tools(vec![ToolCategory::Code])
            .with_endpoint(rogue.endpoint())
            .with_priority(10),
    )
    .unwrap();
    d.register_agent(
        "good",
        switchboard::AgentConfig::new()
            .with_tools(vec![ToolCategory::Code])
            .with_endpoint(good.endpoint())
            .with_priority(1),
    )
    .unwrap();
    let r = invoke(&d, 3).await.unwrap();
    assert_eq!(r.agent_id, "good");
    assert_eq!(
        rogue.invokes.load(Ordering::SeqCst),
        0,
        "no request crossed the refused handshake"
    );

    let record = common::records(d.database(), "tools/code/run/")
        .into_iter()
        .find(|rec| rec.status == DispatchStatus::Succeeded)
        .unwrap();
    assert_eq!(record.attempts.len(), 2, "{record:?}");
    assert_eq!(record.attempts[0].agent_id, "rogue");
    let why = record.attempts[0].error.clone().unwrap_or_default();
    assert!(why.contains("certificate"), "the refusal says why: {why}");

    // With the rogue agent alone, the caller gets the reason.
    d.unregister_agent("good").unwrap();
    let err = invoke(&d, 1).await.unwrap_err().to_string();
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn a_ca_file_that_is_not_pem_is_refused_with_the_field_name() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("ca.pem");
    std::fs::write(&bad, "hello").unwrap();
    let err = TlsTrust::new().with_ca_file(&bad).unwrap_err().to_string();
    assert!(err.contains("tls.ca_file"), "{err}");
    assert_eq!(
        TlsTrust::new()
            .with_ca_file(TRUSTED.ca_file())
            .unwrap()
            .extra_certificates(),
        1
    );
}

/// A `switchboard serve` child process over HTTPS; killed on drop.
struct Server {
    child: Child,
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Serves HTTPS with `TRUSTED`'s certificate, trusting `TRUSTED`'s CA
    /// for agents (the CA by flag, the certificate by config), with `extra`
    /// appended to the config.
    async fn start(extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("switchboard.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[health]\nenabled = false\n\
                 [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}\n",
                dir.path().join("data").display(),
                TRUSTED.cert_file().display(),
                TRUSTED.key_file().display(),
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .env_remove("SWITCHBOARD_TOKEN")
            .env("RUST_LOG", "warn")
            .args(["serve", "--config", config.to_str().unwrap()])
            .arg("--ca-file")
            .arg(TRUSTED.ca_file())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let client = TRUSTED.client();
        let base = format!("https://localhost:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
                assert!(r.status().is_success());
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("switchboard serve exited: {status}");
            }
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server {
            child,
            base,
            client,
            _dir: dir,
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn register(&self, id: &str, endpoint: &str) -> (u16, Value) {
        let body = json!({"tools": ["code"], "endpoint": endpoint});
        self.send(reqwest::Method::PUT, &format!("/v1/agents/{id}"), body)
            .await
    }

    async fn invoke(&self) -> (u16, Value) {
        let body = json!({"tool": "run", "category": "code", "max_attempts": 1});
        self.send(reqwest::Method::POST, "/v1/invoke", body).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn serve_terminates_tls_and_calls_https_agents() {
    let server = Server::start("").await;
    let agent = HttpsAgent::start(&TRUSTED, "secure").await;
    let (status, body) = server.register("secure", &agent.endpoint()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.invoke().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent_id"], "secure");
    assert_eq!(body["output"]["over"], "https");

    // A client that does not trust the server's CA cannot talk to it...
    let err = UNTRUSTED
        .client()
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    // ...and plain HTTP on the TLS port gets no HTTP answer.
    let plain = server.base.replace("https://", "http://");
    let answered = common::http_client()
        .get(format!("{plain}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    assert!(!answered);
    // The server's own checks still apply over TLS: a foreign Host is refused.
    let foreign = server
        .client
        .get(format!("{}/healthz", server.base))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status().as_u16(), 421, "{foreign:?}");
}

#[tokio::test]
async fn the_address_policy_still_judges_https_agents() {
    let server = Server::start("[network]\ndeny = [\"127.0.0.0/8\", \"::1/128\"]").await;
    let agent = HttpsAgent::start(&TRUSTED, "secure").await;
    // A literal denied address is refused at registration...
    let (status, body) = server
        .register(
            "literal",
            &format!("https://127.0.0.1:{}/invoke", agent.port),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // ...and a name is judged after DNS resolution, at the call.
    let (status, body) = server.register("named", &agent.endpoint()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.invoke().await;
    assert_ne!(status, 200, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("network policy"), "{body}");
    assert_eq!(agent.invokes.load(Ordering::SeqCst), 0);
}

/// An ES256 signing key with its public JWK (`kid` set).
fn es256_jwk(kid: &str) -> (jsonwebtoken::EncodingKey, Value) {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let mut bytes = [0u8; 32];
    let secret = loop {
        getrandom::fill(&mut bytes).unwrap();
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
            break secret;
        }
    };
    let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let mut jwk = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256).unwrap(),
    )
    .unwrap();
    jwk["kid"] = json!(kid);
    (key, jwk)
}

/// A token for `kid`'s key, valid for five minutes.
fn es256_token(key: &jsonwebtoken::EncodingKey, kid: &str) -> String {
    es256_token_of("https://idp.test", key, kid)
}

/// [`es256_token`] from issuer `iss`.
fn es256_token_of(iss: &str, key: &jsonwebtoken::EncodingKey, kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let claims = json!({"iss": iss, "aud": "switchboard", "sub": "dana", "exp": exp});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// An authorization server's JWKS over HTTPS (`TRUSTED`'s certificate):
/// what it publishes can be changed, and its fetches are counted.
struct JwksServer {
    port: u16,
    keys: Arc<std::sync::Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Value) -> JwksServer {
        let acceptor = TRUSTED.acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let keys = Arc::new(std::sync::Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (published, counted) = (keys.clone(), fetches.clone());
        // Its RFC 8414 metadata, as issuer https://localhost:{port}.
        let metadata = json!({
            "issuer": format!("https://localhost:{port}"),
            "jwks_uri": format!("https://localhost:{port}/jwks.json"),
        });
        let app = Router::new()
            .route(
                "/jwks.json",
                get(move || {
                    let (published, counted) = (published.clone(), counted.clone());
                    async move {
                        counted.fetch_add(1, Ordering::SeqCst);
                        Json(published.lock().unwrap().clone())
                    }
                }),
            )
            .route(
                "/.well-known/oauth-authorization-server",
                get(move || {
                    let metadata = metadata.clone();
                    async move { Json(metadata) }
                }),
            );
        let task = serve_tls(listener, acceptor, app);
        JwksServer {
            port,
            keys,
            fetches,
            task,
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The status of `GET /v1/agents` with `token`.
async fn agents_status(server: &Server, token: &str) -> u16 {
    server
        .client
        .get(format!("{}/v1/agents", server.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Asks with `token` every 50 ms, at most `tries` times, until it is
/// accepted (the keys are fetched in the background); the last status.
async fn until_accepted(server: &Server, token: &str, tries: usize) -> u16 {
    let mut status = 0;
    for _ in 0..tries {
        status = agents_status(server, token).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status
}

#[tokio::test]
async fn jwt_keys_are_fetched_from_the_jwks_url_and_follow_a_rotation() {
    let (first, first_jwk) = es256_jwk("first");
    let (second, second_jwk) = es256_jwk("second");
    let idp = JwksServer::start(json!({"keys": [first_jwk]})).await;
    let server = Server::start(&format!(
        "[auth.jwt]\nissuer = \"https://idp.test\"\naudience = \"switchboard\"\n\
         jwks_url = \"https://localhost:{}/jwks.json\"\n",
        idp.port
    ))
    .await;
    // Accepted once the first fetch has landed (it runs in the background).
    let status = until_accepted(&server, &es256_token(&first, "first"), 200).await;
    assert_eq!(status, 200, "the first key was never accepted");
    let fetched = idp.fetches.load(Ordering::SeqCst);
    assert_eq!(fetched, 1, "one fetch serves every request");

    // The authorization server rotates: the first key is gone, the second
    // appears. A token naming the new kid starts a fetch and is accepted
    // once it lands; a flood of unknown kids costs at most one fetch per
    // interval, not one per request.
    *idp.keys.lock().unwrap() = json!({"keys": [second_jwk]});
    for _ in 0..20 {
        assert_eq!(
            agents_status(&server, &es256_token(&second, "unknown")).await,
            401
        );
    }
    let status = until_accepted(&server, &es256_token(&second, "second"), 400).await;
    assert_eq!(status, 200, "the rotated key was never accepted");
    assert!(
        idp.fetches.load(Ordering::SeqCst) <= fetched + 2,
        "fetches: {}",
        idp.fetches.load(Ordering::SeqCst)
    );
    assert_eq!(
        agents_status(&server, &es256_token(&first, "first")).await,
        401
    );
}

#[tokio::test]
async fn jwt_keys_are_found_through_the_issuers_metadata() {
    let (key, jwk) = es256_jwk("only");
    let idp = JwksServer::start(json!({"keys": [jwk]})).await;
    let issuer = format!("https://localhost:{}", idp.port);
    let server = Server::start(&format!(
        "[auth.jwt]\nissuer = \"{issuer}\"\naudience = \"switchboard\"\ndiscover_jwks = true\n"
    ))
    .await;
    let status = until_accepted(&server, &es256_token_of(&issuer, &key, "only"), 200).await;
    assert_eq!(
        status, 200,
        "the key the metadata points at was never accepted"
    );
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);
    // Another issuer's token is refused, whatever key signed it.
    assert_eq!(
        agents_status(&server, &es256_token(&key, "only")).await,
        401
    );
}
