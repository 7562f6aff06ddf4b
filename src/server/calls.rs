//! `GET /v1/calls/stream` (audit scope): each call as it completes, as
//! server-sent events. An event holds the call's dispatch record read the
//! way `GET /v1/scan` reads it for this caller (same read policies, same
//! redactions, same rate limits), so the stream shows no more than a scan
//! would; a record the caller may not read is left out. The stream ends
//! when the server starts shutting down, so it never holds up a drain.

use super::auth::Caller;
use super::scan::{local_page, ScanItem, ScanQuery};
use super::AppState;
use crate::dispatch::CompletedCall;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use futures::Stream;
use std::convert::Infallible;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

/// What one subscriber's stream carries from one event to the next.
struct Subscription {
    state: AppState,
    caller: Caller,
    calls: broadcast::Receiver<CompletedCall>,
    stopping: watch::Receiver<bool>,
}

pub(crate) async fn stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let subscription = Subscription {
        calls: state.dispatcher.completed_calls(),
        stopping: state.stopping.clone(),
        state,
        caller,
    };
    let events = futures::stream::unfold(subscription, |mut sub| async move {
        let event = next_event(&mut sub).await?;
        Some((Ok(event), sub))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// The subscriber's next event; `None` ends the stream.
async fn next_event(sub: &mut Subscription) -> Option<Event> {
    loop {
        let received = tokio::select! {
            received = sub.calls.recv() => received,
            () = stopped(&mut sub.stopping) => return None,
        };
        match received {
            Ok(call) => match read_as_scan(&sub.state, &sub.caller, call.key).await {
                Ok(Some(item)) => return Event::default().event("call").json_data(item).ok(),
                Ok(None) => continue,
                Err(message) => return Some(Event::default().event("unreadable").data(message)),
            },
            Err(RecvError::Lagged(missed)) => {
                return Some(Event::default().event("lagged").data(format!(
                    "{missed} calls completed too fast to be sent; GET /v1/scan has them"
                )))
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

/// The record under `key` as `GET /v1/scan?prefix={key}` gives it to
/// `caller`: `None` when the read policies hide it, the error's message
/// when the read is refused (a read rate limit).
async fn read_as_scan(
    state: &AppState,
    caller: &Caller,
    key: String,
) -> Result<Option<ScanItem>, String> {
    let query = ScanQuery {
        prefix: key.clone(),
        after: None,
        limit: Some(1),
        caller: None,
        agent: None,
        status: None,
        since_ms: None,
        until_ms: None,
        cluster: false,
    };
    match local_page(state, caller, &query, None).await {
        Ok(page) => Ok(page.items.into_iter().find(|item| item.key == key)),
        Err(e) => Err(format!("{key}: {}", e.message())),
    }
}

/// Resolves once the server starts shutting down; never on a server that
/// cannot (the sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}
