//! Starting and stopping the server: open what the config names (policies
//! before anything reads or writes), bind, accept connections up to the cap,
//! serve each (over TLS when a certificate is configured) with the
//! header-read timeout, and on SIGINT/SIGTERM stop accepting and give
//! in-flight requests a grace period.

use super::conn_runtimes::ConnRuntimes;
use super::limits::{ServerLimits, RETRY_AFTER};
use super::routes::router_for;
use super::tls::ServerTls;
use super::AppState;
use crate::config::Config;
use crate::dispatch::ToolDispatcher;
use crate::error::Error;
use crate::policy::PolicyEngine;
use crate::storage::Database;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Opens everything `config` names and serves until `shutdown` resolves, then
/// gives in-flight requests `shutdown_grace_secs` to finish.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    crate::config::refuse(&super::preflight::preflight(&config))?;
    let token = super::preflight::api_token(&config);
    let jwt = match &config.auth.jwt {
        Some(settings) => Some(crate::identity::JwtVerifier::new(settings.clone())?),
        None => None,
    };
    if token.is_none() && jwt.is_none() {
        // Preflight refused this on any address but loopback.
        tracing::warn!("no API token configured: anyone on this machine can use the API on {}; set SWITCHBOARD_TOKEN or `token` in the config", config.listen);
    }
    // Before any agent is loaded: registrations are checked against them.
    config.network_policy()?.install();
    config.command_policy()?.install();
    // Before the dispatcher builds its client: `https://` agents are trusted by it.
    config.tls_trust()?.install();
    let tls = ServerTls::from_config(&config)?;
    let db = Database::open_with(&config.data_dir, config.database_options())?;
    // Policies first: recovery and loading the registry write and read
    // through the database, and must do so under the configured policies.
    // The stored policies were installed by the open; compile them again
    // with the configured evaluator, then import `policies_dir` into the store.
    PolicyEngine::new(&db).set_rego_evaluator(config.rego_evaluator);
    if config.rego_evaluator != crate::policy::RegoEvaluator::default() {
        db.reload_stored_policies()?;
    }
    if let Some(dir) = &config.policies_dir {
        let imported = db.import_policies(dir)?;
        let names: Vec<String> = imported
            .iter()
            .map(|(p, change)| format!("{} r{} ({change:?})", p.name, p.revision))
            .collect();
        tracing::info!(policies = ?names, dir = %dir.display(), "imported policies into the store");
    }
    config.apply_policy(&PolicyEngine::new(&db))?;
    let dispatcher = ToolDispatcher::try_new(db)?;
    // Before `[[agents]]`: they are published to the cluster like any registration.
    #[cfg(feature = "cluster")]
    let cluster = join_cluster(&config, &dispatcher, tls.is_some()).await?;
    #[cfg(not(feature = "cluster"))]
    join_cluster(&config, &dispatcher, tls.is_some()).await?;
    #[cfg(feature = "cluster")]
    let leaving = cluster.clone();
    config.register_agents(&dispatcher)?;
    dispatcher.start_discovery();
    if let Some(health) = config.health_checks() {
        dispatcher.enable_health_checks(health);
    }
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| Error::internal(format!("cannot listen on {}", config.listen), e))?;
    tracing::info!(listen = %config.listen, data = %config.data_dir.display(), https = tls.is_some(), "switchboard serving");
    if let Ok(address) = listener.local_addr() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(
            "admin UI: {scheme}://{address}{} (sign in with an API token or a JWT; docs/ui.md)",
            super::ui::HOME
        );
    }
    let protected_resource = super::ProtectedResource {
        resource: config.auth.resource.as_deref().map(Arc::from),
        authorization_servers: config.auth.jwt.iter().map(|j| j.issuer.clone()).collect(),
    };
    let mut state = AppState::new(dispatcher, token)
        .with_allowed_hosts(config.allowed_hosts.clone())
        .with_protected_resource(protected_resource, tls.is_some())
        .with_mcp_category_tools(config.mcp.category_tools);
    #[cfg(feature = "cluster")]
    if let Some(cluster) = cluster {
        state = state.with_cluster(cluster);
    }
    let jwks = match jwt.as_ref().and_then(|j| j.remote_keys()) {
        Some(keys) => Some(super::jwks::spawn(keys)?),
        None => None,
    };
    if let Some(jwt) = jwt {
        tracing::info!(verifier = ?jwt, "accepting JWTs");
        state = state.with_jwt(jwt);
    }
    // Prometheus's own listener: `/metrics` only, no token.
    let metrics = match &config.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                Error::internal(format!("cannot listen on {addr} (metrics_listen)"), e)
            })?;
            tracing::info!(metrics_listen = %addr, "serving /metrics without a token");
            let app = super::routes::metrics_only(state.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!(error = %e, "the metrics listener stopped");
                }
            }))
        }
        None => None,
    };
    let served = serve_connections(
        listener,
        state,
        ServerLimits::from_config(&config),
        tls,
        Duration::from_secs(config.shutdown_grace_secs),
        shutdown,
    )
    .await;
    for task in [metrics, jwks].into_iter().flatten() {
        task.abort();
    }
    // A clean stop leaves the cluster now rather than when the lease expires.
    #[cfg(feature = "cluster")]
    if let Some(cluster) = leaving {
        cluster.leave().await;
    }
    served
}

/// Joins the cluster `[cluster]` names, if any.
#[cfg(feature = "cluster")]
async fn join_cluster(
    config: &Config,
    dispatcher: &ToolDispatcher,
    https: bool,
) -> crate::Result<Option<Arc<crate::cluster::Cluster>>> {
    let Some(section) = &config.cluster else {
        return Ok(None);
    };
    let settings = section.settings(&config.listen, https)?;
    crate::cluster::Cluster::join(dispatcher, settings)
        .await
        .map(Some)
}

#[cfg(not(feature = "cluster"))]
async fn join_cluster(config: &Config, _: &ToolDispatcher, _: bool) -> crate::Result<()> {
    match config.cluster {
        Some(_) => Err(Error::invalid(
            "[cluster] needs a build with the `cluster` feature (on by default)",
        )),
        None => Ok(()),
    }
}

/// Serves `state` on `listener` until `shutdown`, then drains for at most
/// `grace`; the limits other than `max_body_bytes` are the defaults.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    max_body_bytes: usize,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    let limits = ServerLimits {
        max_body_bytes,
        ..ServerLimits::default()
    };
    run_with(listener, state, limits, grace, shutdown).await
}

/// Serves `state` on `listener` under `limits` until `shutdown`, then drains
/// for at most `grace`.
pub async fn run_with(
    listener: TcpListener,
    state: AppState,
    limits: ServerLimits,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    serve_connections(listener, state, limits, None, grace, shutdown).await
}

/// Like [`run_with`], but every connection is HTTPS, terminated with `tls`.
/// The TLS handshake must finish within the header-read timeout.
pub async fn run_tls(
    listener: TcpListener,
    state: AppState,
    limits: ServerLimits,
    tls: ServerTls,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    serve_connections(listener, state, limits, Some(tls), grace, shutdown).await
}

async fn serve_connections(
    listener: TcpListener,
    state: AppState,
    limits: ServerLimits,
    tls: Option<ServerTls>,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    let runtimes = Arc::new(ConnRuntimes::start()?);
    // Accepting on a connection runtime: a client that opens a connection
    // per request is then served where it was accepted, without a wake-up
    // of another thread.
    let listener = listener
        .into_std()
        .map_err(|e| Error::internal("cannot hand the listener to a connection runtime", e))?;
    let accepting = runtimes.clone();
    let served = runtimes
        .spawn_on_first(async move {
            let listener = TcpListener::from_std(listener)
                .map_err(|e| Error::internal("cannot accept on a connection runtime", e))?;
            accept_and_serve(listener, state, limits, tls, grace, shutdown, &accepting).await
        })
        .await;
    // The accept loop's task is over, and with it its handle on the runtimes.
    if let Ok(runtimes) = Arc::try_unwrap(runtimes) {
        runtimes.stop().await;
    }
    served.map_err(|e| Error::internal("the server's accept loop failed", e))?
}

async fn accept_and_serve(
    listener: TcpListener,
    mut state: AppState,
    limits: ServerLimits,
    tls: Option<ServerTls>,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
    runtimes: &ConnRuntimes,
) -> crate::Result<()> {
    let listen = listener
        .local_addr()
        .map_err(|e| Error::internal("cannot read the listen address", e))?;
    let (stopping, stop_streams) = tokio::sync::watch::channel(false);
    state.fields().stopping = stop_streams;
    let app = router_for(state, &limits, listen);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: keep serving the others.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let slot = connections.clone().try_acquire_owned().ok();
        let _ = stream.set_nodelay(true);
        // Re-registered on the connection's thread, with that thread's runtime.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand an accepted connection to its thread");
                continue;
            }
        };
        let (app, http, watcher, tls) =
            (app.clone(), http.clone(), graceful.watcher(), tls.clone());
        let handshake_timeout = limits.header_read_timeout;
        runtimes.serve(move || async move {
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot serve an accepted connection");
                    return;
                }
            };
            let Some(tls) = tls else {
                return serve_http(stream, slot, &http, app, watcher).await;
            };
            // The handshake runs on the connection's own task, bounded like
            // the headers that follow it, so a slow client holds up no other.
            let stream =
                match tokio::time::timeout(handshake_timeout, tls.acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                };
            serve_http(stream, slot, &http, app, watcher).await
        });
    }
    drop(listener);
    stopping.send_replace(true);
    tracing::info!("shutting down: no new requests; letting in-flight ones finish");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("in-flight requests did not finish within the grace period; they will be marked interrupted on the next open");
        }
    }
    Ok(())
}

/// Serves HTTP on one accepted connection (after its TLS handshake, if any)
/// until it closes, holding its `slot` meanwhile; without a slot (the
/// server is at `max_connections`) it is refused.
async fn serve_http<S>(
    stream: S,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    http: &hyper::server::conn::http1::Builder,
    app: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(slot) = slot else {
        return refuse(stream).await;
    };
    let service = TowerToHyperService::new(app);
    if let Err(e) = watcher
        .watch(http.serve_connection(TokioIo::new(stream), service))
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    drop(slot);
}

/// Answers a connection over the cap with 503 and closes it.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let body = r#"{"error":{"code":"overloaded","message":"the server is at its connection limit (limits.max_connections); retry shortly"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        RETRY_AFTER.as_secs(),
        body.len()
    );
    let refusal = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Drain what the client sent, so closing does not reset the
        // connection before it reads the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), refusal).await;
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
