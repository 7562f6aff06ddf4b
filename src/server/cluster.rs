//! `/healthz` (with cluster mode's `degraded`) and `GET /v1/cluster`, the
//! live nodes of the cluster this node belongs to.

use super::errors::ApiError;
use super::AppState;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

/// `ok`; in cluster mode `degraded` while etcd is unreachable (routing goes
/// on from memory), with how old that snapshot may be.
pub(crate) async fn healthz(State(state): State<AppState>) -> Json<Value> {
    #[cfg(feature = "cluster")]
    if let Some(cluster) = &state.cluster {
        return Json(cluster.health());
    }
    let _ = state;
    Json(json!({"status": "ok"}))
}

/// The live nodes of this node's cluster; `mode: single` and no nodes for
/// a server that is not in cluster mode.
pub(crate) async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    #[cfg(feature = "cluster")]
    if let Some(cluster) = &state.cluster {
        return Ok(Json(cluster.status().await?));
    }
    let _ = state;
    Ok(Json(json!({"mode": "single", "nodes": []})))
}
