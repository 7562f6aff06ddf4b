//! `GET /v1/scan`: one page of the records under a key prefix (the audit
//! trail), optionally only the dispatch records an audit filter selects.

use super::errors::{ApiError, ApiResult};
use super::AppState;
use crate::error::Error;
use crate::namespace::{validate_id, AuditFilter};
use crate::storage::Database;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

/// `GET /v1/scan` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanQuery {
    /// The key prefix to scan.
    pub prefix: String,
    /// Resume after this key (the previous page's `next_after`).
    pub after: Option<String>,
    /// At most this many items (bounded by the server).
    pub limit: Option<usize>,
    /// Only dispatch records whose call this agent served.
    pub agent: Option<String>,
    /// Only dispatch records in this status.
    pub status: Option<String>,
    /// Only calls started at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Only calls started at or before this time (ms since the Unix epoch).
    pub until_ms: Option<u64>,
}

impl ScanQuery {
    /// The audit filter the query's optional conditions describe.
    pub fn audit_filter(&self) -> crate::Result<AuditFilter> {
        if let Some(agent) = &self.agent {
            validate_id("agent", agent)?;
        }
        Ok(AuditFilter {
            agent: self.agent.clone(),
            status: self.status.as_deref().map(str::parse).transpose()?,
            since_ms: self.since_ms,
            until_ms: self.until_ms,
        })
    }
}

/// The most entries one scan page returns.
pub const MAX_SCAN_PAGE: usize = 1000;

/// One page of a scan.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScanPage {
    /// The visible items of this page, in key order.
    pub items: Vec<ScanItem>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// One key and its value (JSON if it parses, else a string).
#[derive(Debug, Serialize, Deserialize)]
pub struct ScanItem {
    /// The item's key.
    pub key: String,
    /// Its value, as JSON (or a string when not JSON).
    pub value: serde_json::Value,
}

/// Reads one page of `prefix` from `db`, keeping what `filter` selects.
pub fn scan_page(
    db: &Database,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    filter: &AuditFilter,
) -> crate::Result<ScanPage> {
    if limit == 0 || limit > MAX_SCAN_PAGE {
        return Err(Error::invalid(format!(
            "limit must be between 1 and {MAX_SCAN_PAGE}"
        )));
    }
    // The bounded page: a run of keys the read hooks hide cannot make one
    // request walk the whole prefix; its cursor may then sit on a hidden key.
    let page = db
        .scan_from(prefix)
        .after(after)
        .audit(filter)
        .page(limit)?;
    let items = page
        .items
        .into_iter()
        .map(|(key, value)| {
            let value = serde_json::from_slice(&value).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&value).into_owned())
            });
            ScanItem { key, value }
        })
        .collect();
    Ok(ScanPage {
        items,
        next_after: page.next_after,
    })
}

pub(crate) async fn scan(
    State(s): State<AppState>,
    query: Result<Query<ScanQuery>, QueryRejection>,
) -> ApiResult<Json<ScanPage>> {
    let Query(q) = query?;
    let filter = q.audit_filter()?;
    let db = s.dispatcher.database().clone();
    let page = tokio::task::spawn_blocking(move || {
        scan_page(
            &db,
            &q.prefix,
            q.after.as_deref(),
            q.limit.unwrap_or(100),
            &filter,
        )
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(page))
}
