//! The demo's HTTP agents: each on its own runtime thread on 127.0.0.1, so
//! "killing" one (dropping its runtime) really closes its sockets.

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::time::Duration;
use switchboard::Error;

/// An HTTP agent on its own runtime thread; dropping the runtime kills it.
pub struct DemoAgent {
    pub endpoint: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl DemoAgent {
    pub fn start(name: &'static str, delay: Duration) -> switchboard::Result<DemoAgent> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::storage(format!("cannot start a demo agent: {e}")))?;
        // Bound synchronously: we are inside the caller's runtime and may not block on this one.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::storage(format!("cannot bind a demo agent: {e}")))?;
        let addr = listener.local_addr().map_err(Error::storage)?;
        let app = Router::new()
            .route(
                "/invoke",
                post(move |Json(body): Json<Value>| async move {
                    tokio::time::sleep(delay).await;
                    Json(json!({"agent": name, "tool": body["tool"], "result": format!("{} done", body["tool"])}))
                }),
            )
            .route("/health", get(|| async { "ok" }));
        runtime.spawn(async move {
            if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                let _ = axum::serve(listener, app).await;
            }
        });
        Ok(DemoAgent {
            endpoint: format!("http://{addr}/invoke"),
            runtime: Some(runtime),
        })
    }

    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for DemoAgent {
    fn drop(&mut self) {
        self.kill();
    }
}
