//! Where binding work runs. Async calls run on napi-rs's tokio runtime (one
//! multi-threaded runtime per process, time and I/O enabled), the one the
//! dispatcher's calls and health checks run on too.
//!
//! Store work that can run policy hooks goes through [`blocking`]: a
//! JavaScript hook makes the committing thread wait for the JS thread, which
//! must not be a runtime worker other calls are queued on.
//!
//! Cancellation: `index.js` asks for a [`cancel_token`] per `invoke` with an
//! `AbortSignal` and calls [`cancel`] when it fires; the call selects on
//! [`cancelled`] and drops the dispatch, which records it `cancelled`.

use crate::errors::{to_js, IntoJs};
use napi_derive::napi;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use tokio::sync::watch;

/// Runs `f`, blocking store work, on tokio's blocking pool.
pub async fn blocking<T, F>(f: F) -> napi::Result<T>
where
    F: FnOnce() -> switchboard::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.js(),
        Err(e) => Err(to_js(switchboard::Error::internal(
            "a store operation stopped",
            e,
        ))),
    }
}

fn tokens() -> &'static Mutex<HashMap<u32, watch::Sender<bool>>> {
    static TOKENS: OnceLock<Mutex<HashMap<u32, watch::Sender<bool>>>> = OnceLock::new();
    TOKENS.get_or_init(Default::default)
}

/// A new cancellation token for one call; `releaseCancelToken` frees it.
#[napi]
pub fn cancel_token() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let (tx, _) = watch::channel(false);
    tokens()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, tx);
    id
}

/// Cancels the call holding token `id` (nothing if it has finished).
#[napi]
pub fn cancel(id: u32) {
    if let Some(tx) = tokens().lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
        tx.send_replace(true);
    }
}

/// Frees token `id` once its call has settled.
#[napi]
pub fn release_cancel_token(id: u32) {
    tokens()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
}

/// Resolves when token `id` is cancelled; never, for no token or an unknown id.
pub async fn cancelled(id: Option<u32>) {
    let rx = id.and_then(|id| {
        tokens()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|tx| tx.subscribe())
    });
    match rx {
        // `wait_for` sees a cancel that came before this call started too.
        Some(mut rx) => {
            if rx.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending::<()>().await,
    }
}
