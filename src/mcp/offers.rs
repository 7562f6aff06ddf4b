//! Prompts and resources through `/mcp`: what one reader may see of the
//! prompts, resources and resource templates MCP agents offer, and the
//! requests that use them.
//!
//! A reader sees an item when it may see an agent offering it and that
//! agent routes it (the same read policies as `tools/list`); a prompt by the
//! name callers use (prefixed on collision), a resource by its URI, a
//! template by its URI template. `prompts/get` and `resources/read` are
//! dispatches of the item's routed name (`prompt:…`, `resource:…`,
//! `template:…`), so they are balanced, judged and recorded like tool calls;
//! a URI that no listed resource has is read through the first template
//! that matches it. Completions go to one agent offering the prompt or
//! template; subscriptions to every agent offering the resource.

use super::catalog::Catalog;
use crate::dispatch::{DiscoveredOffer, ToolDispatcher};
use crate::error::Error;
use crate::namespace::{uri_template_matches, McpOfferKind};
use crate::policy::PolicyContext;
use rmcp::ErrorData as McpError;
use std::collections::BTreeMap;

/// Every item `reader` may see that its agent routes now: offered by an
/// agent the read policies let it see (the same decision as `tools/list`),
/// which serves the item's routed name.
fn routable(
    catalog: &Catalog,
    dispatcher: &ToolDispatcher,
    reader: Option<&PolicyContext>,
) -> Vec<DiscoveredOffer> {
    let seen = catalog.visible_agent_ids(reader);
    let live = dispatcher.registry().live_agents();
    dispatcher
        .discovered_offers()
        .into_iter()
        .filter(|offer| seen.as_ref().is_none_or(|s| s.contains(&offer.agent_id)))
        .filter(|offer| {
            live.iter().any(|a| {
                a.id == offer.agent_id && a.serves_tool(&offer.category, &offer.routed_name)
            })
        })
        .collect()
}

/// The items of `kind` `reader` may see, by the name callers use (one per
/// name: replicas are one item).
pub(super) fn visible(
    catalog: &Catalog,
    dispatcher: &ToolDispatcher,
    reader: Option<&PolicyContext>,
    kind: McpOfferKind,
) -> Vec<DiscoveredOffer> {
    let mut by_name = BTreeMap::new();
    for offer in routable(catalog, dispatcher, reader) {
        if offer.kind == kind {
            by_name.entry(offer.exposed_name.clone()).or_insert(offer);
        }
    }
    by_name.into_values().collect()
}

/// Every agent offering `uri` (a listed resource, or one a template
/// matches) that `reader` may see; listed resources first.
pub(super) fn offering_uri(
    catalog: &Catalog,
    dispatcher: &ToolDispatcher,
    reader: Option<&PolicyContext>,
    uri: &str,
) -> Vec<DiscoveredOffer> {
    let (mut listed, templates): (Vec<_>, Vec<_>) = routable(catalog, dispatcher, reader)
        .into_iter()
        .filter(|offer| match offer.kind {
            McpOfferKind::Resource => offer.name == uri,
            McpOfferKind::ResourceTemplate => uri_template_matches(&offer.name, uri),
            McpOfferKind::Prompt => false,
        })
        .partition(|offer| offer.kind == McpOfferKind::Resource);
    listed.extend(templates);
    listed
}

/// One page of `items` after `cursor`, with each item's listing under the
/// name callers use, and the next page's cursor.
pub(super) fn listing(
    items: Vec<DiscoveredOffer>,
    cursor: Option<&str>,
) -> Result<(Vec<serde_json::Value>, Option<String>), McpError> {
    let (page, next) = super::catalog::page_by(items, |o| &o.exposed_name, cursor)
        .map_err(|m| McpError::invalid_params(m, None))?;
    let listed = page
        .into_iter()
        .map(|offer| {
            let mut listed = offer.listed;
            if offer.kind == McpOfferKind::Prompt {
                listed["name"] = serde_json::Value::String(offer.exposed_name);
            }
            listed
        })
        .collect();
    Ok((listed, next))
}

/// A failed `prompts/get`, `resources/read` or completion as a JSON-RPC
/// error (these requests have no `isError` result): what the caller got
/// wrong is invalid params, the rest an internal error saying why.
pub(super) fn request_error(e: Error) -> McpError {
    match e {
        Error::InvalidInput(_)
        | Error::ToolFailed { .. }
        | Error::UnknownAgent(_)
        | Error::PolicyDenied { .. } => McpError::invalid_params(e.to_string(), None),
        other => McpError::internal_error(other.to_string(), None),
    }
}

/// A result the agent gave, as the type `T` of the answer.
pub(super) fn answer<T: serde::de::DeserializeOwned>(
    output: serde_json::Value,
    what: &str,
) -> Result<T, McpError> {
    serde_json::from_value(output).map_err(|e| {
        McpError::internal_error(
            format!("the agent's {what} result is not valid MCP: {e}"),
            None,
        )
    })
}
