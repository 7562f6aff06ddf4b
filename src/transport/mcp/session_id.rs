//! The MCP session a streamable-HTTP connection to an upstream is in, as
//! its HTTP client sees it: the SDK keeps the `Mcp-Session-Id` inside its
//! transport, and passes it to the client with each request, so a client
//! that notes it (`tap`) lets a call's span name its session.

use std::sync::Arc;

/// One connection's upstream session id, once it has one.
#[derive(Clone, Default)]
pub(crate) struct SessionId(Arc<parking_lot::Mutex<Option<Arc<str>>>>);

impl SessionId {
    /// The session id the connection's last request was sent in.
    pub(crate) fn get(&self) -> Option<Arc<str>> {
        self.0.lock().clone()
    }

    pub(super) fn note(&self, id: Option<&Arc<str>>) {
        if let Some(id) = id {
            let mut noted = self.0.lock();
            if noted.as_ref() != Some(id) {
                *noted = Some(id.clone());
            }
        }
    }
}
