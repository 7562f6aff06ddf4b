//! `GET /v1/tools`: the tools MCP agents serve by name (agent, name, the
//! name callers use, category, description, input schema, schema hash),
//! limited to the agents the caller may see.

use super::agents::{api_context, visible_agents};
use super::auth::Caller;
use super::errors::{ApiError, ApiResult};
use super::AppState;
use crate::dispatch::DiscoveredTool;
use axum::extract::State;
use axum::{Extension, Json};
use std::collections::HashSet;

pub(crate) async fn list_tools(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<DiscoveredTool>>> {
    let dispatcher = s.dispatcher.clone();
    let tools = tokio::task::spawn_blocking(move || {
        let visible: HashSet<String> =
            visible_agents(&dispatcher, &caller.context(api_context("list_tools")))?
                .into_iter()
                .map(|r| r.agent_id)
                .collect();
        Ok::<_, crate::Error>(
            dispatcher
                .discovered_tools()
                .into_iter()
                .filter(|t| visible.contains(&t.agent_id))
                .collect::<Vec<_>>(),
        )
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(tools))
}
