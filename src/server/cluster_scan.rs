//! `GET /v1/scan?cluster=true`: one page of the records of every live node
//! of the cluster, merged into one stream in key order (under one tool's
//! prefix, `tools/{category}/{tool}/`, that is record-id, so time, order).
//!
//! The node asked reads the live nodes from etcd, reads its own page
//! locally and asks each other node for a page with the same filters at the
//! URL it published, then merges them. A node never forwards its caller's
//! credential: it presents the cluster secret (which the others accept on
//! this route only) and names the caller the page is for, whose scope and
//! read policies each node applies to its own records. Its
//! cursor is opaque: base64url of a JSON object holding each node's own
//! cursor and the nodes already read to the end. A node that does not
//! answer within [`PEER_TIMEOUT`] is listed in `missing_nodes` and keeps
//! its place in the cursor, so the next page asks it again from there.
//! While etcd is unreachable the nodes asked are those of the last list
//! this node read, and the page says so (`node_list`).

use super::auth::Caller;
use super::errors::ApiResult;
use super::scan::{local_page, ScanItem, ScanPage, ScanQuery, MAX_SCAN_PAGE};
use super::AppState;
use crate::cluster::Cluster;
use crate::error::Error;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a peer has to answer its part of a cluster scan page.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a cluster scan stands on each node.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cursor {
    /// Each node's own `next_after` (nodes not named start at the beginning).
    #[serde(default)]
    after: BTreeMap<String, String>,
    /// The nodes read to the end.
    #[serde(default)]
    done: BTreeSet<String>,
}

impl Cursor {
    fn decode(text: &str) -> crate::Result<Cursor> {
        B64.decode(text)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| {
                Error::invalid(
                    "after: not the cursor of a cluster scan; with cluster=true pass the \
                     next_after of the previous cluster=true page",
                )
            })
    }

    fn encode(&self) -> String {
        B64.encode(serde_json::to_vec(self).expect("a cursor encodes"))
    }
}

/// One page of a cluster scan.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterScanPage {
    /// The items of every node that answered, in key order.
    pub items: Vec<ClusterScanItem>,
    /// Pass as `after` (with `cluster=true`) for the next page; absent when
    /// every node that answered has been read to the end.
    pub next_after: Option<String>,
    /// The nodes whose records this page covers.
    pub nodes: Vec<String>,
    /// The nodes that did not answer (or are no longer live) and why: the
    /// scan is incomplete while this is not empty.
    pub missing_nodes: Vec<MissingNode>,
    /// Where the list of nodes asked came from.
    pub node_list: NodeList,
}

/// Where a cluster scan page's list of nodes came from.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeList {
    /// `etcd` (listed for this page) or `last_known`: etcd is unreachable
    /// and the nodes asked are those of the last list this node read, so a
    /// node that joined since is not asked and one that left is reported
    /// missing.
    pub source: String,
    /// How long ago that list was read from etcd, in ms (0 when listed now).
    pub age_ms: u64,
}

/// One item of a cluster scan: a node's record.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterScanItem {
    /// The node whose store holds it.
    pub node_id: String,
    /// The item's key.
    pub key: String,
    /// Its value, as JSON (or a string when not JSON).
    pub value: serde_json::Value,
}

/// A node left out of a page.
#[derive(Debug, Serialize, Deserialize)]
pub struct MissingNode {
    /// The node's id.
    pub node_id: String,
    /// What went wrong asking it.
    pub error: String,
}

/// One node's page, being merged.
struct Source {
    node_id: String,
    items: VecDeque<ScanItem>,
    /// The node's cursor past its whole page (`None`: its last page).
    next_after: Option<String>,
    /// The node's cursor this page started from.
    started_after: Option<String>,
    /// The key of the last item merged from it.
    taken: Option<String>,
}

/// Merges the nodes' pages into at most `limit` items in key order: an item
/// is taken only while every node that has more to read still has items
/// in hand, so nothing a node has not sent yet could sort before it.
fn merge(sources: &mut [Source], limit: usize) -> Vec<ClusterScanItem> {
    let mut out = Vec::new();
    while out.len() < limit {
        if sources
            .iter()
            .any(|s| s.items.is_empty() && s.next_after.is_some())
        {
            break;
        }
        let next = sources
            .iter_mut()
            .filter(|s| !s.items.is_empty())
            .min_by(|a, b| (&a.items[0].key, &a.node_id).cmp(&(&b.items[0].key, &b.node_id)));
        let Some(source) = next else { break };
        let item = source.items.pop_front().expect("not empty");
        source.taken = Some(item.key.clone());
        out.push(ClusterScanItem {
            node_id: source.node_id.clone(),
            key: item.key,
            value: item.value,
        });
    }
    out
}

fn peer_client() -> crate::Result<&'static reqwest::Client> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(crate::transport::TlsTrust::current().client_config()?)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(PEER_TIMEOUT)
        .build()
        .map_err(|e| Error::internal("cannot build the HTTP client for the other nodes", e))?;
    Ok(CLIENT.get_or_init(|| client))
}

/// How a node proves itself to another: the cluster secret, and the caller
/// the page is for.
#[derive(Clone)]
struct NodeCredential {
    secret: Option<String>,
    on_behalf_of: Option<String>,
}

/// Asks the node at `url` for its own page of `q` after `after`.
async fn peer_page(
    url: &str,
    credential: &NodeCredential,
    q: &ScanQuery,
    after: Option<&str>,
) -> Result<ScanPage, String> {
    let client = peer_client().map_err(|e| e.to_string())?;
    let mut url = reqwest::Url::parse(&format!("{url}/v1/scan"))
        .map_err(|e| format!("its url {url:?} does not parse: {e}"))?;
    {
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("prefix", &q.prefix);
        pairs.append_pair("limit", &q.limit.unwrap_or(100).to_string());
        if let Some(after) = after {
            pairs.append_pair("after", after);
        }
        let optional = [
            ("agent", q.agent.clone()),
            ("status", q.status.clone()),
            ("since_ms", q.since_ms.map(|v| v.to_string())),
            ("until_ms", q.until_ms.map(|v| v.to_string())),
            ("caller", q.caller.clone()),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                pairs.append_pair(name, &value);
            }
        }
    }
    let mut request = client.get(url.clone());
    if let Some(secret) = &credential.secret {
        request = request.header(crate::cluster::CREDENTIAL_HEADER, secret);
        if let Some(principal) = &credential.on_behalf_of {
            request = request.header(crate::cluster::ON_BEHALF_OF_HEADER, principal);
        }
    }
    let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() {
        let body: String = String::from_utf8_lossy(&bytes)
            .trim()
            .chars()
            .take(300)
            .collect();
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED && credential.secret.is_none() {
            " (this node has no cluster secret to present: set secret_env or secret_file under \
             [cluster], or SWITCHBOARD_CLUSTER_SECRET, to the same secret on every node)"
        } else {
            ""
        };
        return Err(format!("{url} answered {status}: {body}{hint}"));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{url} answered a page that does not decode: {e}"))
}

/// One page of the cluster's records for `q`.
pub(crate) async fn page(
    s: &AppState,
    cluster: &Cluster,
    caller: &Caller,
    q: &ScanQuery,
) -> ApiResult<ClusterScanPage> {
    let limit = q.limit.unwrap_or(100);
    // Checked here too: this node may be read to the end and not asked.
    if limit == 0 || limit > MAX_SCAN_PAGE {
        return Err(
            Error::invalid(format!("limit must be between 1 and {}", MAX_SCAN_PAGE)).into(),
        );
    }
    crate::namespace::validate_prefix(&q.prefix)?;
    q.audit_filter()?;
    let mut cursor = match &q.after {
        Some(text) => Cursor::decode(text)?,
        None => Cursor::default(),
    };
    // Routing goes on from memory while etcd is unreachable, and so does
    // the scan: from the last list of nodes, saying so.
    let (mut live, stale_ms) = cluster.nodes_or_last_known().await?;
    if let Some(age_ms) = stale_ms {
        tracing::warn!(
            age_ms,
            "etcd unreachable: the cluster scan asks the nodes of the last list read"
        );
    }
    let me = cluster.node_id().to_string();
    // This node reads its own records even while its key is missing from
    // etcd (its lease lapsed and is being granted again).
    if !live.iter().any(|n| n["node_id"] == me.as_str()) {
        live.push(serde_json::json!({"node_id": me}));
    }
    let mut missing = Vec::new();
    let live_ids: BTreeSet<String> = live
        .iter()
        .filter_map(|n| n["node_id"].as_str().map(str::to_string))
        .collect();
    // Nodes this scan was reading that have left the cluster since.
    for node_id in cursor.after.keys() {
        if !live_ids.contains(node_id) && !cursor.done.contains(node_id) {
            missing.push(MissingNode {
                node_id: node_id.clone(),
                error: "no longer live in the cluster (its lease expired)".into(),
            });
        }
    }
    let credential = NodeCredential {
        secret: cluster.secret().map(str::to_string),
        on_behalf_of: caller
            .principal()
            .map(|p| B64.encode(serde_json::to_vec(p).expect("a principal encodes"))),
    };
    let mut asks = tokio::task::JoinSet::new();
    for node in &live {
        let node_id = node["node_id"].as_str().unwrap_or_default().to_string();
        if cursor.done.contains(&node_id) {
            continue;
        }
        let after = cursor.after.get(&node_id).cloned();
        let url = node["url"].as_str().unwrap_or_default().to_string();
        let is_me = node_id == me;
        let (s, caller, q, credential) = (s.clone(), caller.clone(), q.clone(), credential.clone());
        asks.spawn(async move {
            let answer = if is_me {
                Ok(local_page(&s, &caller, &q, after.clone()).await)
            } else {
                peer_page(&url, &credential, &q, after.as_deref())
                    .await
                    .map(Ok)
            };
            (node_id, after, answer)
        });
    }
    let mut answers = asks.join_all().await;
    answers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut sources = Vec::new();
    for (node_id, started_after, answer) in answers {
        match answer {
            // This node's own failure (a bad filter, a denied prefix) is the answer.
            Ok(local) => {
                let page = local?;
                sources.push(Source {
                    node_id,
                    items: page.items.into(),
                    next_after: page.next_after,
                    started_after,
                    taken: None,
                });
            }
            Err(error) => {
                tracing::warn!(node_id = %node_id, %error, "a node did not answer its part of a cluster scan");
                missing.push(MissingNode { node_id, error });
            }
        }
    }
    let items = merge(&mut sources, limit);
    let mut more = false;
    for source in &sources {
        let at = if source.items.is_empty() {
            match &source.next_after {
                Some(next) => Some(next.clone()),
                None => {
                    cursor.after.remove(&source.node_id);
                    cursor.done.insert(source.node_id.clone());
                    continue;
                }
            }
        } else {
            source
                .taken
                .clone()
                .or_else(|| source.started_after.clone())
        };
        more = true;
        match at {
            Some(at) => cursor.after.insert(source.node_id.clone(), at),
            None => cursor.after.remove(&source.node_id),
        };
    }
    missing.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(ClusterScanPage {
        items,
        next_after: more.then(|| cursor.encode()),
        nodes: sources.iter().map(|s| s.node_id.clone()).collect(),
        missing_nodes: missing,
        node_list: NodeList {
            source: if stale_ms.is_some() {
                "last_known"
            } else {
                "etcd"
            }
            .into(),
            age_ms: stale_ms.unwrap_or(0),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(node: &str, keys: &[&str], next: Option<&str>) -> Source {
        Source {
            node_id: node.into(),
            items: keys
                .iter()
                .map(|k| ScanItem {
                    key: k.to_string(),
                    value: serde_json::Value::Null,
                })
                .collect(),
            next_after: next.map(str::to_string),
            started_after: None,
            taken: None,
        }
    }

    #[test]
    fn merging_stops_where_a_node_with_more_to_read_runs_out() {
        let mut sources = [
            source("a", &["k1", "k4"], Some("k4")),
            source("b", &["k2", "k3", "k5", "k6"], None),
        ];
        let keys: Vec<String> = merge(&mut sources, 10).into_iter().map(|i| i.key).collect();
        // k5 could sort after what node a has not sent yet.
        assert_eq!(keys, ["k1", "k2", "k3", "k4"]);
        assert_eq!(sources[1].taken.as_deref(), Some("k3"));
        let mut sources = [source("a", &["k1"], None), source("b", &["k0", "k2"], None)];
        let keys: Vec<String> = merge(&mut sources, 2).into_iter().map(|i| i.key).collect();
        assert_eq!(keys, ["k0", "k1"]);
    }

    #[test]
    fn a_cursor_round_trips_and_a_foreign_one_is_refused() {
        let mut cursor = Cursor::default();
        cursor.after.insert("n1".into(), "tools/a/b/1".into());
        cursor.done.insert("n2".into());
        let back = Cursor::decode(&cursor.encode()).unwrap();
        assert_eq!(back.after, cursor.after);
        assert_eq!(back.done, cursor.done);
        assert!(Cursor::decode("tools/a/b/1").is_err());
    }
}
