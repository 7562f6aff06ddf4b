//! What an MCP agent offers besides tools: its prompts, resources and
//! resource templates, listed for discovery, and the requests that use them
//! (`prompts/get`, `resources/read`, `completion/complete`,
//! `resources/subscribe`). Results are kept as the server's JSON, so what a
//! client reads through Switchboard is what the server wrote.

use super::answer::classify_error;
use super::upstream::{every_page, send_traced, with_cursor, ListBounds, Upstream};
use crate::transport::Failure;
use rmcp::model::{
    ClientRequest, CompleteRequestParams, ErrorCode, GetPromptRequest, GetPromptRequestParams,
    ProtocolVersion, ReadResourceRequestParams, ServerNotification, ServerResult,
    SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::{Peer, RoleClient, ServiceError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The JSON-RPC code MCP servers answer an unknown resource with.
const RESOURCE_NOT_FOUND: i32 = -32002;

/// What one listing found: each item as the server listed it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ListedOffers {
    pub(crate) prompts: Vec<serde_json::Value>,
    pub(crate) resources: Vec<serde_json::Value>,
    pub(crate) templates: Vec<serde_json::Value>,
    /// The shortest `ttlMs` of the pages read, if the server gave one.
    pub(crate) ttl: Option<Duration>,
}

fn values<T: serde::Serialize>(items: Vec<T>) -> Vec<serde_json::Value> {
    items
        .into_iter()
        .filter_map(|item| serde_json::to_value(item).ok())
        .collect()
}

/// An error answer to a prompt, read or completion as a failure: the
/// caller's mistake (bad arguments, an unknown name or URI) is not the
/// agent's fault and fails over to no other agent.
fn classify(error: ServiceError, what: &str) -> Failure {
    if let ServiceError::McpError(data) = &error {
        if data.code == ErrorCode::INVALID_PARAMS || data.code.0 == RESOURCE_NOT_FOUND {
            return Failure::Tool(format!(
                "the MCP server refused {what}: MCP error {}: {}",
                data.code.0, data.message
            ));
        }
    }
    classify_error(error, what).0
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Failure> {
    serde_json::from_value(value).map_err(|e| Failure::Tool(format!("invalid request: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, Failure> {
    serde_json::to_value(value)
        .map_err(|e| Failure::Agent(format!("the MCP result does not encode: {e}")))
}

impl Upstream {
    /// The prompts, resources and resource templates the server lists, each
    /// list read only when the server declares its capability. Bounded and
    /// timed like [`list_tools`](Upstream::list_tools).
    pub(crate) async fn list_offers(
        &self,
        max_pages: usize,
        max_items: usize,
        timeout: Duration,
    ) -> Result<ListedOffers, Failure> {
        let (peer, _) = tokio::time::timeout(timeout, self.peer_for(None))
            .await
            .map_err(|_| Failure::Timeout)??;
        let capabilities = peer
            .peer_info()
            .map(|info| info.capabilities.clone())
            .unwrap_or_default();
        let id = self.agent_id();
        let bounds = ListBounds {
            max_pages,
            max_items,
            timeout,
        };
        let mut offers = ListedOffers::default();
        // The shortest TTL of the pages read (u64::MAX: none given).
        let ttl = AtomicU64::new(u64::MAX);
        let keep_ttl = |page_ttl: Option<u64>| {
            if let Some(page_ttl) = page_ttl {
                ttl.fetch_min(page_ttl, Ordering::Relaxed);
            }
        };
        if capabilities.prompts.is_some() {
            offers.prompts = every_page("prompts/list", id, bounds, |cursor| {
                let peer = peer.clone();
                async move {
                    let page = peer.list_prompts(with_cursor(cursor)).await?;
                    keep_ttl(page.ttl_ms);
                    Ok((values(page.prompts), page.next_cursor))
                }
            })
            .await?;
        }
        if capabilities.resources.is_some() {
            offers.resources = every_page("resources/list", id, bounds, |cursor| {
                let peer = peer.clone();
                async move {
                    let page = peer.list_resources(with_cursor(cursor)).await?;
                    keep_ttl(page.ttl_ms);
                    Ok((values(page.resources), page.next_cursor))
                }
            })
            .await?;
            offers.templates = every_page("resources/templates/list", id, bounds, |cursor| {
                let peer = peer.clone();
                async move {
                    let page = peer.list_resource_templates(with_cursor(cursor)).await?;
                    keep_ttl(page.ttl_ms);
                    Ok((values(page.resource_templates), page.next_cursor))
                }
            })
            .await?;
        }
        let ttl = ttl.into_inner();
        offers.ttl = (ttl != u64::MAX).then(|| Duration::from_millis(ttl));
        Ok(offers)
    }

    /// `prompts/get` of prompt `name` with `input` (an object of string
    /// arguments, or null) as its arguments; the result as the server wrote it.
    pub(crate) async fn get_prompt(
        &self,
        name: &str,
        input: &serde_json::Value,
        session: Option<&str>,
    ) -> Result<serde_json::Value, Failure> {
        let arguments = match input {
            serde_json::Value::Null => None,
            serde_json::Value::Object(map) if map.is_empty() => None,
            serde_json::Value::Object(_) => Some(input.clone()),
            _ => {
                return Err(Failure::Tool(
                    "a prompt's arguments are a JSON object of strings".into(),
                ))
            }
        };
        let params: GetPromptRequestParams =
            from_json(serde_json::json!({"name": name, "arguments": arguments}))?;
        let (link, _in_flight) = self.link_for(session).await?;
        let request = ClientRequest::GetPromptRequest(GetPromptRequest::new(params));
        match send_traced(&link, request).await {
            Ok(ServerResult::GetPromptResult(result)) => to_json(&result),
            Ok(_) => Err(classify(
                ServiceError::UnexpectedResponse,
                &format!("prompts/get of {name}"),
            )),
            Err(e) => Err(classify(e, &format!("prompts/get of {name}"))),
        }
    }

    /// `resources/read` of `uri`; the result as the server wrote it.
    pub(crate) async fn read_resource(
        &self,
        uri: &str,
        session: Option<&str>,
    ) -> Result<serde_json::Value, Failure> {
        let params: ReadResourceRequestParams = from_json(serde_json::json!({"uri": uri}))?;
        let (peer, _in_flight) = self.peer_for(session).await?;
        let result = peer
            .read_resource(params)
            .await
            .map_err(|e| classify(e, &format!("resources/read of {uri}")))?;
        to_json(&result)
    }

    /// `completion/complete` with `params` (its reference already in the
    /// server's own names); the result as the server wrote it.
    pub(crate) async fn complete(
        &self,
        params: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, Failure> {
        let params: CompleteRequestParams = from_json(params)?;
        let call = async {
            let (peer, _) = self.peer_for(None).await?;
            let result = peer
                .complete(params)
                .await
                .map_err(|e| classify(e, "completion/complete"))?;
            to_json(&result)
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Failure::Timeout)?
    }

    /// Subscribes to (or, with `on` false, unsubscribes from) updates of
    /// `uri`: on a 2026-07-28 server a `subscriptions/listen` stream of its
    /// own, on the older revisions `resources/subscribe` on the shared
    /// connection, whose notifications reach the handler.
    #[allow(deprecated)] // the 2025 revisions' subscriptions, which those servers speak
    pub(crate) async fn subscribe(
        &self,
        uri: &str,
        on: bool,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let call = async {
            let (peer, _) = self.peer_for(None).await?;
            let modern = peer
                .peer_info()
                .is_some_and(|info| info.protocol_version == ProtocolVersion::V_2026_07_28);
            if modern {
                return self.listen(&peer, uri, on).await;
            }
            let answer = if on {
                peer.subscribe(SubscribeRequestParams::new(uri)).await
            } else {
                let params: UnsubscribeRequestParams = from_json(serde_json::json!({"uri": uri}))?;
                peer.unsubscribe(params).await
            };
            answer.map_err(|e| classify(e, "resources/subscribe"))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Failure::Timeout)?
    }

    /// Opens (or ends) the `subscriptions/listen` stream of `uri`.
    async fn listen(&self, peer: &Peer<RoleClient>, uri: &str, on: bool) -> Result<(), Failure> {
        if !on {
            if let Some(listen) = self.listens.lock().remove(uri) {
                listen.abort();
            }
            return Ok(());
        }
        if self
            .listens
            .lock()
            .get(uri)
            .is_some_and(|l| !l.is_finished())
        {
            return Ok(());
        }
        let filter = SubscriptionFilter::builder()
            .resource_subscription(uri)
            .build();
        let mut subscription = peer
            .listen(filter)
            .await
            .map_err(|e| classify(e, "subscriptions/listen"))?;
        let updates = self.resource_updates().clone();
        let (agent_id, watched) = (self.agent_id().to_string(), uri.to_string());
        let listen = tokio::spawn(async move {
            loop {
                match subscription.next().await {
                    Ok(Some(ServerNotification::ResourceUpdatedNotification(n))) => {
                        let _ = updates.send(n.params.uri);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%agent_id, uri = %watched, error = %e, "an MCP agent's resource subscription ended");
                        break;
                    }
                }
            }
        });
        if let Some(old) = self.listens.lock().insert(uri.to_string(), listen) {
            old.abort();
        }
        Ok(())
    }
}
