//! `/v1/policies`: the policies stored in the database (`policies/{name}`):
//! list, show, store or replace (`PUT`, or `POST` naming the module by its
//! package), delete. Each change is a policy-checked write, recorded in the
//! decision log, and applies to the next request. `POST
//! /v1/policies/{name}/check` compiles a module as `PUT` would store it,
//! and runs a test module against it, without storing anything.

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

/// `POST /v1/policies/{name}/check`: a module as `PUT` would take it, and
/// optionally a Rego test module to run against it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckPolicyBody {
    /// The Rego source; its `# scope:` and `# ops:` header lines apply.
    pub source: String,
    /// Key globs, instead of the header's.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// A Rego module of `test_*` rules to run against `source`.
    #[serde(default)]
    pub tests: Option<String>,
}

/// What `POST /v1/policies/{name}/check` answers for a module that compiles.
#[derive(Debug, Serialize)]
pub struct PolicyCheck {
    /// The module's package.
    pub package: String,
    /// The key globs it would guard.
    pub scopes: Vec<String>,
    /// The operations it would judge.
    pub ops: Vec<crate::policy::Op>,
    /// Each test rule's result (empty without `tests`).
    pub tests: Vec<crate::policy::rego::RegoTestResult>,
    /// Whether every test passed (true without tests).
    pub passed: bool,
}

pub(crate) async fn check_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<CheckPolicyBody>, JsonRejection>,
) -> ApiResult<Json<PolicyCheck>> {
    let Json(body) = body?;
    crate::namespace::validate_id("policy name", &name)?;
    let engine = crate::policy::PolicyEngine::new(s.dispatcher.database());
    let check = tokio::task::spawn_blocking(move || {
        // The parse `PUT` stores with: what passes here, `PUT` accepts.
        let parsed = engine.parse_stored(&name, &body.source, body.scopes.as_deref())?;
        let tests = match &body.tests {
            Some(tests) if !tests.trim().is_empty() => crate::policy::rego::run_test_module(
                (&name, &body.source),
                (&format!("{name} tests"), tests),
            )?,
            _ => Vec::new(),
        };
        Ok::<_, Error>(PolicyCheck {
            package: parsed.module.name().to_string(),
            scopes: parsed.scopes.iter().map(|g| g.to_string()).collect(),
            ops: parsed.ops.clone(),
            passed: tests.iter().all(|t| t.passed),
            tests,
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(check))
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
