//! The HTTP API: a thin JSON layer over one [`ToolDispatcher`].
//!
//! One job per file: `errors` (the one error shape and status mapping),
//! `routes` (the route table and its layers), `preflight` (every problem
//! `serve` would refuse a config for, at once), `lifecycle` (bind, serve,
//! graceful shutdown), `limits` (what clients may hold), `auth` (who the
//! caller is, and the scope each route needs), `hosts` (Host-header
//! validation), `oauth` (`/mcp` as an OAuth protected resource: its
//! metadata and challenges), `jwks` (the JWT keys of `jwks_url`, kept
//! current in the background), `tls` (the certificate HTTPS is served with), `prometheus`
//! (the exposition), and one file of handlers per resource (`agents`,
//! `invoke`, `scan_route` (`GET /v1/scan`, over `scan`, this node's page, and
//! `cluster_scan`, the cluster-wide page built on `scan`), `calls` (calls
//! as they complete, read as `scan` reads them), `policies`, `metrics`, `tokens`, `tools`, `cluster`,
//! which also answers `/healthz`).
//! `docs/openapi.json` describes every route of the API. The admin UI
//! (`ui`: its pages, assets and sign-in, under `/ui`) is a client of those
//! routes; `session` is its sign-in cookie and the CSRF check.

mod agents;
mod auth;
mod calls;
mod cluster;
#[cfg(feature = "cluster")]
mod cluster_scan;
mod conn_runtimes;
mod errors;
mod hosts;
mod invoke;
mod jwks;
mod lifecycle;
mod limits;
mod metrics;
mod oauth;
mod policies;
mod preflight;
mod prometheus;
mod routes;
mod scan;
mod scan_route;
mod session;
mod tls;
mod tokens;
mod tools;
mod ui;

pub use agents::{visible_agents, RegisterBody};
pub use auth::Caller;
#[cfg(feature = "cluster")]
pub use cluster_scan::{ClusterScanItem, ClusterScanPage, MissingNode, NodeList, PEER_TIMEOUT};
pub use errors::{ApiError, ERROR_CODES};
pub use invoke::InvokeBody;
pub use lifecycle::{run, run_tls, run_with, serve, shutdown_signal};
pub use limits::ServerLimits;
pub use oauth::ProtectedResource;
pub use policies::{
    AddPolicyBody, CheckPolicyBody, PolicyCheck, PolicyInfo, PolicyView, PutPolicyAnswer,
    PutPolicyBody,
};
pub use preflight::preflight;
pub use routes::router;
pub use scan::{caused_by, scan_page, scan_page_as, ScanItem, ScanPage, ScanQuery, MAX_SCAN_PAGE};
pub use tls::ServerTls;
pub use tokens::{CreateTokenBody, CreatedToken, TokenInfo};

use crate::dispatch::ToolDispatcher;
use crate::identity::{Authenticator, JwtVerifier};
use crate::policy::PolicyEngine;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// What every handler shares: one `Arc`, so the clone each layer and
/// extractor takes of it per request is a reference count, not a copy of
/// every field.
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

/// The fields of [`AppState`], read through it.
#[derive(Clone)]
pub struct SharedState {
    /// The dispatcher requests are served by.
    pub dispatcher: ToolDispatcher,
    /// The policy engine of the dispatcher's database.
    pub policy: PolicyEngine,
    /// The bearer token every route but `/healthz` requires, if any.
    pub token: Option<Arc<str>>,
    /// Host names accepted besides the listen address's own (see `hosts`).
    pub(crate) allowed_hosts: Arc<[String]>,
    /// The names requests must be addressed to, once a listener is known
    /// (`routes::router_for`); without one, any `Host` passes.
    pub(crate) host_check: Option<hosts::AllowedHosts>,
    /// One permit per invoke in flight (sized from [`ServerLimits`]).
    pub(crate) invoke_slots: Arc<Semaphore>,
    /// Whether `/mcp` lists category tools (see [`Self::with_mcp_category_tools`]).
    pub(crate) mcp_category_tools: bool,
    /// Turns bearer credentials into callers (static token, issued tokens, JWTs).
    pub auth: Authenticator,
    /// What `/mcp`'s OAuth metadata says (RFC 9728).
    pub(crate) protected_resource: ProtectedResource,
    /// Whether the API is served over HTTPS (for the URLs it gives out).
    pub(crate) https: bool,
    /// This node's cluster membership (cluster mode), if any.
    #[cfg(feature = "cluster")]
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
    /// What CSRF tokens of sign-in cookies are derived under (see `session`).
    pub(crate) csrf: session::CsrfKey,
    /// Becomes true when the server starts shutting down: open event
    /// streams end then, so they do not hold up the drain.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

impl AppState {
    /// State serving `dispatcher`, requiring `token` if given.
    pub fn new(dispatcher: ToolDispatcher, token: Option<String>) -> Self {
        let policy = PolicyEngine::new(dispatcher.database());
        let auth = Authenticator::new(dispatcher.database(), token.clone(), None);
        AppState(Arc::new(SharedState {
            dispatcher,
            policy,
            auth,
            token: token.map(Arc::from),
            allowed_hosts: Arc::from(Vec::new()),
            host_check: None,
            invoke_slots: ServerLimits::default().invoke_slots(),
            protected_resource: ProtectedResource::default(),
            https: false,
            mcp_category_tools: true,
            #[cfg(feature = "cluster")]
            cluster: None,
            csrf: session::CsrfKey::generate(),
            // Until a server loop takes it over: a sender nobody holds.
            stopping: tokio::sync::watch::channel(false).1,
        }))
    }

    /// The fields, to change while the state is being built (before a
    /// server shares it, this is the only copy).
    fn fields(&mut self) -> &mut SharedState {
        Arc::make_mut(&mut self.0)
    }

    /// Reports `cluster`'s health and nodes (`/healthz`, `/v1/cluster`).
    #[cfg(feature = "cluster")]
    pub fn with_cluster(mut self, cluster: Arc<crate::cluster::Cluster>) -> Self {
        self.fields().cluster = Some(cluster);
        self
    }

    /// Also accept JWTs verified by `jwt`.
    pub fn with_jwt(mut self, jwt: JwtVerifier) -> Self {
        let token = self.token.as_deref().map(str::to_string);
        self.fields().auth = Authenticator::new(self.dispatcher.database(), token, Some(jwt));
        self
    }

    /// Describe `/mcp` as `resource` in its OAuth metadata, served over
    /// HTTPS if `https`.
    pub fn with_protected_resource(mut self, resource: ProtectedResource, https: bool) -> Self {
        self.fields().protected_resource = resource;
        self.fields().https = https;
        self
    }

    /// Also answer to these host names (with or without a port).
    pub fn with_allowed_hosts(mut self, hosts: Vec<String>) -> Self {
        self.fields().allowed_hosts = Arc::from(hosts);
        self
    }

    /// Whether `/mcp` lists a category tool for each category HTTP or local
    /// agents serve (the default); `false` lists only the tools MCP agents
    /// serve by name (`[mcp] category_tools`).
    pub fn with_mcp_category_tools(mut self, on: bool) -> Self {
        self.fields().mcp_category_tools = on;
        self
    }
}
