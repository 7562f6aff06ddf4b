//! What one client, or all of them, may hold of the server: body size,
//! time to send headers, time to answer, connections, invokes in flight.

use crate::config::Config;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The server's limits; [`Default`] matches the config file's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerLimits {
    /// The largest request body (413 beyond).
    pub max_body_bytes: usize,
    /// A connection must finish sending a request's headers within this.
    pub header_read_timeout: Duration,
    /// A request not answered within this gets 504.
    pub request_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Invokes in flight at once, `POST /v1/invoke` and `/mcp` `tools/call`
    /// together; more are answered 503 (a tool error on `/mcp`).
    pub max_inflight_invokes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

impl ServerLimits {
    /// The limits a configuration file sets.
    pub fn from_config(config: &Config) -> Self {
        let l = &config.limits;
        ServerLimits {
            max_body_bytes: config.max_body_bytes,
            header_read_timeout: Duration::from_millis(l.header_read_timeout_ms),
            request_timeout: Duration::from_millis(l.request_timeout_ms),
            max_connections: l.max_connections,
            max_inflight_invokes: l.max_inflight_invokes,
        }
    }

    pub(crate) fn invoke_slots(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.max_inflight_invokes))
    }
}

/// How long a client refused for capacity is asked to wait.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);
