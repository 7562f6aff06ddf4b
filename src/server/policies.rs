//! `/v1/policies`: the policies stored in the database (`policies/{name}`):
//! list, show, store or replace (`PUT`, or `POST` naming the module by its
//! package), delete. Each change is a policy-checked write, recorded in the
//! decision log, and applies to the next request.

use super::auth::Caller;
use super::errors::{ApiError, ApiResult};
use super::AppState;
use crate::error::Error;
use crate::policy::PolicyContext;
use crate::storage::{Database, PolicyChange, StoredPolicy};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
/// A stored policy as `POST /v1/policies` answers it.
pub struct PolicyInfo {
    /// The policy's name.
    pub name: String,
    /// The key glob it applies to (the first, if it has several).
    pub scope: String,
}

/// A stored policy as `GET` and `PUT` show it.
#[derive(Debug, Serialize)]
pub struct PolicyView {
    /// Everything stored.
    #[serde(flatten)]
    pub policy: StoredPolicy,
    /// Its first scope (`scopes` lists them all).
    pub scope: String,
}

impl From<StoredPolicy> for PolicyView {
    fn from(policy: StoredPolicy) -> Self {
        PolicyView {
            scope: policy.scopes.first().cloned().unwrap_or_default(),
            policy,
        }
    }
}

/// `PUT /v1/policies/{name}` answers the stored policy and what changed.
#[derive(Debug, Serialize)]
pub struct PutPolicyAnswer {
    /// The policy as now stored.
    #[serde(flatten)]
    pub policy: PolicyView,
    /// `created`, `replaced` or `unchanged`.
    pub change: &'static str,
}

fn change_name(change: PolicyChange) -> &'static str {
    match change {
        PolicyChange::Created => "created",
        PolicyChange::Replaced => "replaced",
        PolicyChange::Unchanged => "unchanged",
    }
}

fn unknown(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "no stored policy {name}; GET /v1/policies lists them"
    ))
}

pub(crate) async fn list_policies(State(s): State<AppState>) -> ApiResult<Json<Vec<PolicyView>>> {
    let db = s.dispatcher.database();
    Ok(Json(
        db.stored_policies()?
            .into_iter()
            .map(PolicyView::from)
            .collect(),
    ))
}

pub(crate) async fn get_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PolicyView>> {
    match s.dispatcher.database().stored_policy(&name)? {
        Some(policy) => Ok(Json(policy.into())),
        None => Err(unknown(&name)),
    }
}

/// `POST /v1/policies`: a Rego module and its scope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPolicyBody {
    /// The key glob the module applies to (default: its `# scope:` lines).
    #[serde(default)]
    pub scope: Option<String>,
    /// The Rego source.
    pub source: String,
}

/// `PUT /v1/policies/{name}`: the module's source, and optionally its scopes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutPolicyBody {
    /// The Rego source; its `# scope:` and `# ops:` header lines apply.
    pub source: String,
    /// One key glob, instead of the header's.
    #[serde(default)]
    pub scope: Option<String>,
    /// Several key globs, instead of the header's.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

/// Stores the module under its package name: posting the same package
/// again replaces it.
pub(crate) async fn add_policy(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<AddPolicyBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<PolicyInfo>)> {
    let Json(body) = body?;
    let db = s.dispatcher.database();
    let scopes = body.scope.map(|scope| vec![scope]);
    // The name is the module's package: compile once to learn it.
    let package = crate::policy::rego::RegoModule::compile(
        Some("source"),
        &body.source,
        crate::policy::RegoEvaluator::Interpreter,
    )?
    .name()
    .to_string();
    let (policy, _, status) = store(db, &package, &body.source, scopes.as_deref(), &caller)?;
    Ok((
        status,
        Json(PolicyInfo {
            scope: policy.scopes.first().cloned().unwrap_or_default(),
            name: policy.name,
        }),
    ))
}

pub(crate) async fn put_policy(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Json<PutPolicyBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<PutPolicyAnswer>)> {
    let Json(body) = body?;
    let scopes = match (body.scope, body.scopes) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid("give either scope or scopes, not both").into())
        }
        (Some(one), None) => Some(vec![one]),
        (None, many) => many,
    };
    let db = s.dispatcher.database();
    let (policy, change, status) = store(db, &name, &body.source, scopes.as_deref(), &caller)?;
    Ok((
        status,
        Json(PutPolicyAnswer {
            policy: policy.into(),
            change: change_name(change),
        }),
    ))
}

pub(crate) async fn delete_policy(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    match s
        .dispatcher
        .database()
        .delete_policy_with(&name, &change_context(&caller))?
    {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(unknown(&name)),
    }
}

/// Stores `source` as the policy `name` on behalf of `caller`; the status
/// says whether it was created (201) or replaced or left unchanged (200).
fn store(
    db: &Database,
    name: &str,
    source: &str,
    scopes: Option<&[String]>,
    caller: &Caller,
) -> crate::Result<(StoredPolicy, PolicyChange, StatusCode)> {
    let (policy, change) = db.put_policy_with(name, source, scopes, &change_context(caller))?;
    let status = match change {
        PolicyChange::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((policy, change, status))
}

/// The context of a policy change made over the API: who made it.
fn change_context(caller: &Caller) -> PolicyContext {
    caller.context(PolicyContext::new().with("source", "api"))
}
