//! One page of this node's records under a key prefix (the audit trail),
//! optionally only the dispatch records an audit filter selects, or only
//! what one caller caused: the query, the page types and the local read
//! behind `GET /v1/scan`. The handler (`scan_route.rs`) and the cluster-wide
//! page (`cluster_scan.rs`) build on this file; it imports neither.

use super::auth::Caller;
use super::errors::{ApiError, ApiResult};
use super::AppState;
use crate::error::Error;
use crate::namespace::{redact_agent_json, validate_id, AuditFilter, Scope, TOKENS};
use crate::policy::{keys, PolicyContext};
use crate::storage::Database;
use serde::{Deserialize, Serialize};

/// `GET /v1/scan` query.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanQuery {
    /// The key prefix to scan.
    pub prefix: String,
    /// Resume after this key (the previous page's `next_after`).
    pub after: Option<String>,
    /// At most this many items (bounded by the server).
    pub limit: Option<usize>,
    /// Only records this caller caused (`token:{id}`, `jwt:{sub}`, …).
    pub caller: Option<String>,
    /// Only dispatch records whose call this agent served.
    pub agent: Option<String>,
    /// Only dispatch records in this status.
    pub status: Option<String>,
    /// Only calls started at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Only calls started at or before this time (ms since the Unix epoch).
    pub until_ms: Option<u64>,
    /// Cluster mode: every live node's records merged into one stream by
    /// key, `after` then being the previous merged page's cursor.
    #[serde(default)]
    pub cluster: bool,
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

/// Reads one page of `prefix` from `db`.
pub fn scan_page(
    db: &Database,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    filter: &AuditFilter,
) -> crate::Result<ScanPage> {
    scan_page_as(
        db,
        prefix,
        after,
        limit,
        &PolicyContext::new(),
        None,
        filter,
    )
}

/// Whether a stored value was caused by `caller`: a dispatch record's
/// `caller`, a registration's `registered_by`, a decision's `context.caller`.
pub fn caused_by(value: &serde_json::Value, caller: &str) -> bool {
    let is = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()) == Some(caller);
    is(value.get("caller"))
        || is(value.get("registered_by"))
        || is(value.get("context").and_then(|c| c.get("caller")))
}

/// Pages examined at most for one `caller`-filtered page before it is
/// returned short (with `next_after` set).
const CALLER_FILTER_PAGES: usize = 16;

/// [`scan_page`] read as `reader` (the read policies judge each key with
/// it), keeping only what `caller` caused when given.
pub fn scan_page_as(
    db: &Database,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    reader: &PolicyContext,
    caller: Option<&str>,
    filter: &AuditFilter,
) -> crate::Result<ScanPage> {
    let Some(caller) = caller else {
        return one_page(db, prefix, after, limit, reader, filter);
    };
    let mut items = Vec::new();
    let mut after = after.map(str::to_string);
    for _ in 0..CALLER_FILTER_PAGES {
        let page = one_page(db, prefix, after.as_deref(), limit, reader, filter)?;
        items.extend(
            page.items
                .into_iter()
                .filter(|item| caused_by(&item.value, caller)),
        );
        after = page.next_after;
        if after.is_none() || items.len() >= limit {
            break;
        }
    }
    // A filtered page may end past `limit` items; the cursor then resumes
    // after the last one returned.
    if items.len() > limit {
        items.truncate(limit);
        after = items.last().map(|i| i.key.clone());
    }
    Ok(ScanPage {
        items,
        next_after: after,
    })
}

fn one_page(
    db: &Database,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    reader: &PolicyContext,
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
        .as_reader(reader)
        .audit(filter)
        .page(limit)?;
    let items = page
        .items
        .into_iter()
        .map(|(key, value)| {
            let mut value = serde_json::from_slice(&value).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&value).into_owned())
            });
            // Secrets are write-only, in scans as in GET /v1/agents.
            redact_agent_json(&key, &mut value);
            ScanItem { key, value }
        })
        .collect();
    Ok(ScanPage {
        items,
        next_after: page.next_after,
    })
}

/// One page of this node's own records for `q`'s prefix and filters,
/// resuming after `after`, read as `caller`.
pub(crate) async fn local_page(
    s: &AppState,
    caller: &Caller,
    q: &ScanQuery,
    after: Option<String>,
) -> ApiResult<ScanPage> {
    let filter = q.audit_filter()?;
    // Token records are the admin's: other readers may not scan them.
    if q.prefix.starts_with(TOKENS) && !caller.has_scope(Scope::Admin) {
        return Err(Error::PolicyDenied {
            key: q.prefix.clone(),
            reason: "token records need the admin scope; GET /v1/tokens lists them".into(),
        }
        .into());
    }
    let db = s.dispatcher.database().clone();
    let reader = caller.context(
        PolicyContext::new()
            .with("source", "api")
            .with(keys::ACTION, "scan"),
    );
    let caller = caller.clone();
    let prefix = q.prefix.clone();
    let limit = q.limit.unwrap_or(100);
    let caller_filter = q.caller.clone();
    let page = tokio::task::spawn_blocking(move || {
        let mut page = scan_page_as(
            &db,
            &prefix,
            after.as_deref(),
            limit,
            &reader,
            caller_filter.as_deref(),
            &filter,
        )?;
        if !caller.has_scope(Scope::Admin) {
            page.items.retain(|item| !item.key.starts_with(TOKENS));
        }
        Ok::<_, Error>(page)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(page)
}
