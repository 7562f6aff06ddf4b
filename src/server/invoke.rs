//! `POST /v1/invoke`: one tool call routed through the dispatcher. A W3C
//! `traceparent` header (with `tracestate` and `baggage`) is passed on to
//! the agent and its trace id kept in the dispatch record.

use super::auth::Caller;
use super::errors::{ApiError, ApiResult};
use super::limits::RETRY_AFTER;
use super::AppState;
use crate::dispatch::{InvocationResult, RoutingOptions};
use crate::error::Error;
use crate::namespace::ToolCategory;
use crate::routing::RoutingStrategy;
use crate::transport::TraceContext;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::{Extension, Json};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// `POST /v1/invoke`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeBody {
    /// The tool to call.
    pub tool: String,
    /// Its category.
    pub category: ToolCategory,
    /// The tool's input. Left out, the agent is sent `{}`, as from the CLI
    /// and the library's usual callers.
    #[serde(default = "empty_object")]
    pub input: serde_json::Value,
    /// How to choose the agent (default: the dispatcher's default strategy).
    pub strategy: Option<RoutingStrategy>,
    /// A session id for agent affinity.
    pub session_id: Option<String>,
    /// How many agents to try at most.
    pub max_attempts: Option<u32>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl InvokeBody {
    /// The routing options the body asks for, checked in the API's own terms.
    fn options(&self) -> Result<RoutingOptions, Error> {
        let strategy = self.strategy.unwrap_or_default();
        if strategy == RoutingStrategy::Sticky && self.session_id.is_none() {
            return Err(Error::invalid(
                "the sticky strategy needs a session: add \"session_id\" to the body",
            ));
        }
        if self.max_attempts == Some(0) {
            return Err(Error::invalid("\"max_attempts\" must be at least 1"));
        }
        let mut options = RoutingOptions::new().with_strategy(strategy);
        if let Some(session) = &self.session_id {
            options = options.with_session_id(session.clone());
        }
        if let Some(n) = self.max_attempts {
            options = options.with_max_attempts(n);
        }
        Ok(options)
    }
}

/// The trace context of a request's headers, if it has a well-formed
/// `traceparent` (a malformed one starts no trace, as W3C Trace Context
/// says: it is ignored). Read in place: the headers are not copied.
pub(crate) struct Trace(Option<TraceContext>);

impl<S: Send + Sync> FromRequestParts<S> for Trace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let text = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let Some(traceparent) = text("traceparent") else {
            return Ok(Trace(None));
        };
        let trace = TraceContext {
            traceparent,
            tracestate: text("tracestate"),
            baggage: text("baggage"),
        };
        Ok(Trace(trace.trace_id().is_some().then_some(trace)))
    }
}

/// A JSON body, read as [`Json`] reads it and refused with the same
/// rejections, but parsed straight into `T` first: `Json` tracks the path
/// of every field it parses (for its error messages), which costs on every
/// call. Only a body that fails goes through `Json` again, for its message.
pub(crate) struct JsonBody<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = JsonRejection;

    async fn from_request(request: Request, state: &S) -> Result<Self, JsonRejection> {
        let plain_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("application/json"));
        if !plain_json {
            // Parameters, another JSON type (`application/x+json`), or no
            // type at all: `Json` judges it.
            let Json(value) = Json::from_request(request, state).await?;
            return Ok(JsonBody(value));
        }
        let bytes = Bytes::from_request(request, state).await?;
        match serde_json::from_slice(&bytes) {
            Ok(value) => Ok(JsonBody(value)),
            Err(_) => Json::from_bytes(&bytes).map(|Json(value)| JsonBody(value)),
        }
    }
}

pub(crate) async fn invoke(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Trace(trace): Trace,
    body: Result<JsonBody<InvokeBody>, JsonRejection>,
) -> ApiResult<Json<InvocationResult>> {
    let JsonBody(body) = body?;
    let mut options = body.options()?;
    if let Some(principal) = caller.0 {
        options = options.with_caller(principal);
    }
    if let Some(trace) = trace {
        options = options.with_trace(trace);
    }
    let slot = s.invoke_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::overloaded(
            "too many invokes in flight (limits.max_inflight_invokes); retry shortly",
            RETRY_AFTER,
        )
    })?;
    let dispatcher = s.dispatcher.clone();
    let result = FinishIfDropped::new(async move {
        let result = dispatcher
            .invoke(&body.tool, body.category, body.input, options)
            .await;
        drop(slot);
        result
    })
    .await;
    Ok(Json(result?))
}

/// Runs a dispatch on the request's own task (a task of its own would cost
/// a wake-up of another worker on every call); if the request is dropped
/// first (the client went away), the rest of the dispatch moves to a task of
/// its own, so the call still finishes, its outcome is still recorded, and
/// it keeps its invoke slot until then.
struct FinishIfDropped<F: Future<Output: Send + 'static> + Send + 'static> {
    dispatch: Option<Pin<Box<F>>>,
}

impl<F: Future<Output: Send + 'static> + Send + 'static> FinishIfDropped<F> {
    fn new(dispatch: F) -> Self {
        FinishIfDropped {
            dispatch: Some(Box::pin(dispatch)),
        }
    }
}

impl<F: Future<Output: Send + 'static> + Send + 'static> Future for FinishIfDropped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let dispatch = self
            .dispatch
            .as_mut()
            .expect("FinishIfDropped polled after it finished");
        let output = std::task::ready!(dispatch.as_mut().poll(cx));
        self.dispatch = None;
        Poll::Ready(output)
    }
}

impl<F: Future<Output: Send + 'static> + Send + 'static> Drop for FinishIfDropped<F> {
    fn drop(&mut self) {
        let Some(rest) = self.dispatch.take() else {
            return;
        };
        // Outside a runtime (it is shutting down) the dispatch is dropped,
        // and records itself cancelled.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(rest);
        }
    }
}
