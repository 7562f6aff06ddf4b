//! `/v1/metrics` (per-agent JSON) and `/metrics` (Prometheus exposition).

use super::prometheus;
use super::AppState;
use crate::routing::AgentMetrics;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use std::collections::HashMap;

pub(crate) async fn metrics_json(State(s): State<AppState>) -> Json<HashMap<String, AgentMetrics>> {
    Json(s.dispatcher.get_metrics())
}

pub(crate) async fn metrics_prometheus(State(s): State<AppState>) -> impl IntoResponse {
    let dispatcher = s.dispatcher.clone();
    let body = tokio::task::spawn_blocking(move || prometheus::render(&dispatcher))
        .await
        .unwrap_or_default();
    (
        [(axum::http::header::CONTENT_TYPE, prometheus::CONTENT_TYPE)],
        body,
    )
}
