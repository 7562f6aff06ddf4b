//! `/v1/tokens` and `/v1/tokens/{id}` (admin scope): issuing, listing and
//! revoking API tokens. A secret is returned once, by the create call;
//! listings never carry it or its hash.

use super::auth::Caller;
use super::errors::{ApiError, ApiResult};
use super::AppState;
use crate::identity::NewToken;
use crate::namespace::{now_ms, Scope, TokenRecord};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

/// `POST /v1/tokens`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenBody {
    /// A name for people.
    pub name: String,
    /// `admin`, `invoke`, `audit` (at least one).
    pub scopes: Vec<Scope>,
    /// Roles policies see.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Seconds until it expires; left out, it does not expire.
    pub expires_in_secs: Option<u64>,
}

/// A token as listed: everything but its hash.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its id.
    pub token_id: String,
    /// The caller id records keep for it (`token:{id}`).
    pub caller: String,
    /// Its name.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// Its roles.
    pub roles: Vec<String>,
    /// When it was issued (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When it expires, if ever.
    pub expires_at_ms: Option<u64>,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<u64>,
    /// Who issued it.
    pub created_by: Option<String>,
    /// Whether it authenticates now.
    pub active: bool,
}

impl From<&TokenRecord> for TokenInfo {
    fn from(r: &TokenRecord) -> Self {
        TokenInfo {
            token_id: r.token_id.clone(),
            caller: r.caller_id(),
            name: r.name.clone(),
            scopes: r.scopes.clone(),
            roles: r.roles.clone(),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            revoked_at_ms: r.revoked_at_ms,
            created_by: r.created_by.clone(),
            active: r.is_active(now_ms()),
        }
    }
}

/// What `POST /v1/tokens` answers: the token and its secret (shown once).
#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The token.
    pub token: TokenInfo,
    /// The bearer secret; it is not stored and cannot be shown again.
    pub secret: String,
}

pub(crate) async fn create_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<CreateTokenBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let Json(body) = body?;
    let expires_at_ms = match body.expires_in_secs {
        Some(0) => {
            return Err(crate::Error::invalid("\"expires_in_secs\" must be at least 1").into())
        }
        Some(secs) => Some(now_ms().saturating_add(secs.saturating_mul(1000))),
        None => None,
    };
    let new = NewToken {
        name: body.name,
        scopes: body.scopes,
        roles: body.roles,
        expires_at_ms,
    };
    let auth = s.auth.clone();
    let issued = tokio::task::spawn_blocking(move || auth.tokens().create(new, caller.principal()))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    #[cfg(feature = "cluster")]
    if let Some(cluster) = &s.cluster {
        if let Err(e) = cluster.publish_token(&issued.record).await {
            // Never handed out: revoked, so it works nowhere.
            let (auth, id) = (s.auth.clone(), issued.record.token_id.clone());
            let _ = tokio::task::spawn_blocking(move || auth.tokens().revoke_unconditionally(&id))
                .await;
            return Err(crate::Error::Unavailable(format!(
                "the token could not be published to the cluster, so it was not issued: {e}. \
                 Issue it again when etcd is back"
            ))
            .into());
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: TokenInfo::from(&issued.record),
            secret: issued.secret,
        }),
    ))
}

pub(crate) async fn list_tokens(State(s): State<AppState>) -> ApiResult<Json<Vec<TokenInfo>>> {
    let auth = s.auth.clone();
    let records = tokio::task::spawn_blocking(move || auth.tokens().list())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(records.iter().map(TokenInfo::from).collect()))
}

pub(crate) async fn revoke_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenInfo>> {
    let auth = s.auth.clone();
    let revoked = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || auth.tokens().revoke(&id, caller.principal()))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??
    };
    #[cfg(feature = "cluster")]
    if let (Some(cluster), Some(record)) = (&s.cluster, &revoked) {
        if let Err(e) = cluster.publish_token(record).await {
            return Err(crate::Error::Unavailable(format!(
                "token {id} is revoked on this node, but the revocation could not be published \
                 to the cluster ({e}): the other nodes accept it until this node publishes it, \
                 which it does when etcd is back"
            ))
            .into());
        }
    }
    match revoked {
        Some(record) => Ok(Json(TokenInfo::from(&record))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_token",
            format!("no token {id:?}; GET /v1/tokens lists them"),
        )),
    }
}
