//! `/v1/policies`: the loaded Rego modules, and adding one.

use super::errors::ApiResult;
use super::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
/// A loaded policy, as `GET /policies` lists it.
pub struct PolicyInfo {
    /// The policy's name.
    pub name: String,
    /// The key glob it applies to.
    pub scope: String,
}

pub(crate) async fn list_policies(State(s): State<AppState>) -> Json<Vec<PolicyInfo>> {
    Json(
        s.policy
            .rego_modules()
            .into_iter()
            .map(|(name, scope)| PolicyInfo { name, scope })
            .collect(),
    )
}

/// `POST /v1/policies`: a Rego module and its scope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPolicyBody {
    /// The key glob the module applies to.
    pub scope: String,
    /// The Rego source.
    pub source: String,
}

pub(crate) async fn add_policy(
    State(s): State<AppState>,
    body: Result<Json<AddPolicyBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<PolicyInfo>)> {
    let Json(body) = body?;
    s.policy.add_rego(&body.scope, &body.source)?;
    let (name, scope) = s
        .policy
        .rego_modules()
        .pop()
        .expect("the module was just added");
    Ok((StatusCode::CREATED, Json(PolicyInfo { name, scope })))
}
