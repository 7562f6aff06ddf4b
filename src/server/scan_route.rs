//! `GET /v1/scan`: the handler. It decides whose records a page holds:
//! this node's own (`scan.rs`), or with `cluster=true` every live node's
//! (`cluster_scan.rs`, which itself builds on `scan.rs`).

use super::auth::Caller;
#[cfg(feature = "cluster")]
use super::cluster_scan;
use super::errors::ApiResult;
use super::scan::{local_page, ScanQuery};
use super::AppState;
use crate::error::Error;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::{Extension, Json};

pub(crate) async fn scan(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ScanQuery>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(q) = query?;
    if q.cluster {
        return cluster_page(s, caller, q).await;
    }
    let after = q.after.clone();
    let page = local_page(&s, &caller, &q, after).await?;
    Ok(Json(serde_json::to_value(page).map_err(Error::storage)?))
}

#[cfg(feature = "cluster")]
async fn cluster_page(
    s: AppState,
    caller: Caller,
    q: ScanQuery,
) -> ApiResult<Json<serde_json::Value>> {
    let Some(cluster) = s.cluster.clone() else {
        return Err(not_in_cluster().into());
    };
    let page = cluster_scan::page(&s, &cluster, &caller, &q).await?;
    Ok(Json(serde_json::to_value(page).map_err(Error::storage)?))
}

#[cfg(not(feature = "cluster"))]
async fn cluster_page(_: AppState, _: Caller, _: ScanQuery) -> ApiResult<Json<serde_json::Value>> {
    Err(not_in_cluster().into())
}

fn not_in_cluster() -> Error {
    Error::invalid(
        "cluster=true: this node is not in a cluster (it was started without --cluster-etcd); \
         drop cluster=true to scan this node's records",
    )
}
