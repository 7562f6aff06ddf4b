//! An HTTP agent for Switchboard in Rust: the agent protocol of
//! docs/routing.md (POST the call to /invoke, the 2xx JSON body is the output;
//! GET /health), answering every call with an echo of it.
//!
//! `cargo build --all-targets` builds it with everything else (the build the
//! tests and the demo use, so nothing compiles twice); start it with
//! `./target/debug/examples/echo_agent` (port 8001) or `… --port 0` (a free
//! port, printed). Replace the handler's body with real work.

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[tokio::main]
async fn main() {
    let port = match port_argument() {
        Ok(port) => port,
        Err(message) => {
            eprintln!("error: {message}\nusage: echo_agent [--port PORT]  (default 8001; 0 = any free port)");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: cannot listen on 127.0.0.1:{port}: {e} (another agent there? try --port 0)"
            );
            std::process::exit(1);
        }
    };
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let app = Router::new()
        .route(
            "/invoke",
            post(|Json(call): Json<Value>| async move {
                Json(json!({
                    "agent": "echo_agent.rs",
                    "tool": call["tool"],
                    "category": call["category"],
                    "echo": call["input"],
                    "invocation_id": call["invocation_id"],
                }))
            }),
        )
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }));
    println!("echo agent listening on http://{addr}/invoke");
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("error: the echo agent stopped: {e}");
        std::process::exit(1);
    }
}

fn port_argument() -> Result<u16, String> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next(), args.next()) {
        (None, _, _) => Ok(8001),
        (Some("--port"), Some(port), None) => port
            .parse()
            .map_err(|_| format!("--port takes a number from 0 to 65535, not {port:?}")),
        (Some(other), _, _) => Err(format!("unexpected argument {other:?}")),
    }
}
