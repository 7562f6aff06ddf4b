//! One connection's calls in flight ([`AskRoutes`]), by the JSON-RPC id
//! of their `tools/call`: what a server sends on a call's response stream
//! (a request for input, a log message, a progress report) is routed by it
//! to that call's caller, and only to it.

use crate::transport::{InputRelay, LogSink, ProgressSink};
use rmcp::model::{ProgressToken, RequestId};
use rmcp::service::InboundStreamOrigin;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a request (or log message) the server sends during a call waits
/// for that call to be routed: the request id is the SDK's, known only once
/// the call is on its way, so a quick server can send before the call is
/// registered.
const ASK_ROUTE_WAIT: Duration = Duration::from_secs(1);

/// One connection's `tools/call` requests in flight, by their JSON-RPC id
/// (ids are per connection, so each connection has its own), with who
/// answers what the server asks during each and where its log messages go:
/// a 2025 server sends `sampling/createMessage`, `elicitation/create` or
/// `roots/list` on the response stream of the call it belongs to, and the
/// transport marks the request with that call's id; log messages and
/// progress reports on that stream are the call's too (see `call_stream`).
#[derive(Default)]
pub(crate) struct AskRoutes {
    calls: parking_lot::Mutex<HashMap<RequestId, CallRoute>>,
    added: tokio::sync::Notify,
}

/// Where what a server sends about one call goes.
pub(super) struct CallRoute {
    /// Who answers its requests; `None`: the call's caller cannot be asked.
    pub(super) relay: Option<InputRelay>,
    /// Where its log messages go; `None`: nobody wants them.
    pub(super) log: Option<LogSink>,
    /// The token its request asked for progress under.
    pub(super) progress_token: ProgressToken,
    /// Where its progress reports go; `None`: nobody wants them.
    pub(super) progress: Option<ProgressSink>,
}

impl AskRoutes {
    pub(super) fn add(self: &Arc<Self>, id: RequestId, route: CallRoute) -> AskRoute {
        self.calls.lock().insert(id.clone(), route);
        self.added.notify_waiters();
        AskRoute {
            routes: self.clone(),
            id,
        }
    }

    /// The route of call `id`, waiting (briefly) for it to be added: the
    /// request id is the SDK's, known only once the call is on its way, so
    /// a quick server can send something before the call is registered.
    async fn route<T>(&self, id: &RequestId, pick: impl Fn(&CallRoute) -> T) -> Option<T> {
        let wait = async {
            loop {
                let added = self.added.notified();
                tokio::pin!(added);
                added.as_mut().enable();
                if let Some(route) = self.calls.lock().get(id) {
                    return pick(route);
                }
                added.await;
            }
        };
        tokio::time::timeout(ASK_ROUTE_WAIT, wait).await.ok()
    }

    /// Where the log messages of call `id` go, if anywhere.
    pub(super) async fn log_for(&self, id: &RequestId) -> Option<LogSink> {
        self.route(id, |route| route.log.clone()).await.flatten()
    }

    /// Where the progress reports of call `id` under `token` go: `None`
    /// if `id` is no call of this connection or asked under another token,
    /// else its sink, if anyone wants them.
    pub(super) async fn progress_for(
        &self,
        id: &RequestId,
        token: &ProgressToken,
    ) -> Option<Option<ProgressSink>> {
        self.route(id, |route| {
            (route.progress_token == *token).then(|| route.progress.clone())
        })
        .await
        .flatten()
    }

    /// Who answers a request the server made on `origin`'s stream. A
    /// request on a call's response stream belongs to that call. One that
    /// names no call (some SDKs send them on the session's standalone
    /// stream; on a stdio server's pipe no request names a call) belongs to
    /// the one call this connection has in flight, if there is exactly one:
    /// with several it could be any caller's, and is refused.
    pub(super) async fn relay_for(
        &self,
        origin: Option<&InboundStreamOrigin>,
    ) -> Result<Option<InputRelay>, Unroutable> {
        let Some(InboundStreamOrigin::OutboundRequest(id)) = origin else {
            let calls = self.calls.lock();
            let mut routes = calls.values();
            return match (routes.next(), routes.next()) {
                (Some(route), None) => Ok(route.relay.clone()),
                (None, _) => Err(Unroutable::NoCall),
                (Some(_), Some(_)) => Err(Unroutable::Several(calls.len())),
            };
        };
        self.route(id, |route| route.relay.clone())
            .await
            .ok_or(Unroutable::NoCall)
    }
}

/// Why a request a server made cannot be tied to a call.
pub(super) enum Unroutable {
    /// No call of this connection is in flight (or the one it names is over).
    NoCall,
    /// It names no call, and this many are in flight.
    Several(usize),
}

/// Keeps a call routed for the server's requests while it runs.
pub(super) struct AskRoute {
    routes: Arc<AskRoutes>,
    id: RequestId,
}

impl Drop for AskRoute {
    fn drop(&mut self) {
        self.routes.calls.lock().remove(&self.id);
    }
}
