//! The tools `/mcp` lists: one MCP tool per category served by a routable
//! HTTP or local agent, and every tool MCP agents serve by name (under the
//! name callers use: the bare name for replicas, `{agent}_{tool}` for
//! collisions), with the input schema the agent published.
//!
//! A Switchboard HTTP or local agent declares categories, not tool names: a
//! call names its tool freely and the category picks the agents. So the MCP
//! tool for category `code` is named `code` and takes `{"tool": "...",
//! "input": {...}, "session_id": "..."}`; calling it is one
//! `invoke(tool, code, input)`. A category whose name is not a portable MCP
//! tool name (`[A-Za-z0-9_-]{1,64}`, what every client accepts) is not listed.
//!
//! An MCP agent serves named tools only, and each of them is listed by name,
//! so a category whose agents are all MCP agents gets no category tool: it
//! would be a second, vaguer way to call the same tools, which a model calls
//! wrongly. The configuration can turn category tools off altogether
//! ([`Catalog::with_category_tools`]). Calling a category that has no
//! category tool is refused with the reason ([`Lookup::Unlisted`]).
//!
//! Order is by name, so pages are stable; a cursor is the hex of the last
//! name of the previous page (opaque to clients, and still valid when tools
//! come and go between pages).

use crate::dispatch::ToolDispatcher;
use crate::namespace::{agent_key, ToolCategory};
use crate::policy::PolicyContext;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Tools per `tools/list` page.
pub const PAGE_SIZE: usize = 100;

/// Whether `name` is accepted as a tool name by every MCP client.
pub fn is_portable_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One listed tool and the category its calls are routed in.
#[derive(Clone, Debug, PartialEq)]
pub struct CatalogTool {
    /// The MCP tool name (the category's name).
    pub name: String,
    /// The category a call of this tool is routed in.
    pub category: ToolCategory,
    /// What `tools/list` shows about it.
    pub description: String,
    /// The input schema of a tool an MCP agent serves by name; `None` for a
    /// category tool (see [`category_input_schema`]).
    pub input_schema: Option<serde_json::Map<String, serde_json::Value>>,
}

impl CatalogTool {
    /// Whether calls pass their arguments straight to a named tool (rather
    /// than naming the tool inside the arguments, as category tools do).
    pub fn is_named(&self) -> bool {
        self.input_schema.is_some()
    }
}

/// The JSON schema of a category tool's arguments.
pub fn category_input_schema() -> serde_json::Map<String, serde_json::Value> {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "tool": {"type": "string", "description": "The tool to run, [A-Za-z0-9._:-]{1,128}"},
            "input": {"type": "object", "description": "The tool's input, passed to the agent as is"},
            "session_id": {"type": "string", "description": "Binds the call to a session (sticky agent)"}
        },
        "required": ["tool"]
    });
    match schema {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("the schema literal is an object"),
    }
}

/// Why a category a reader may see has no category tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unlisted {
    /// Category tools are turned off (`[mcp] category_tools = false`).
    TurnedOff,
    /// Every agent serving it (that the reader may see) is an MCP agent,
    /// whose tools are listed by name.
    NamedToolsOnly,
}

/// What a tool name means to one reader.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    /// A listed tool.
    Tool(CatalogTool),
    /// A category the reader may see, whose category tool is not listed.
    Unlisted(Unlisted),
    /// Nothing the reader may see.
    Unknown,
}

/// The catalog of one dispatcher, built once per change of its routed tools
/// (registrations, removals, discovered tool lists: what
/// [`ToolDispatcher::tools_changed`] announces) and shared by every `/mcp`
/// session, so `tools/list` and `tools/call` do not rebuild it. Filtering
/// for a reader still happens on every request, against the read policies
/// in force then. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    dispatcher: ToolDispatcher,
    changes: tokio::sync::watch::Receiver<u64>,
    built: Arc<Mutex<Option<Built>>>,
    /// Whether categories served by HTTP or local agents get a category tool.
    category_tools: bool,
}

/// The offers, and the version of the routed tools they were built at.
type Built = (u64, Arc<[Offer]>);

/// A tool as one agent offers it: readers who may not see `agent_id` do not
/// get it from this agent.
struct Offer {
    agent_id: String,
    tool: CatalogTool,
    /// Why this agent's category is not listed as a tool, if it is not:
    /// kept so a call of it is refused with the reason.
    unlisted: Option<Unlisted>,
}

impl Catalog {
    /// The catalog of `dispatcher`'s routed tools, with category tools.
    pub fn new(dispatcher: ToolDispatcher) -> Self {
        Catalog {
            changes: dispatcher.tools_changed(),
            dispatcher,
            built: Arc::new(Mutex::new(None)),
            category_tools: true,
        }
    }

    /// Whether categories served by HTTP or local agents are listed as
    /// category tools (`false`: only the tools MCP agents serve by name).
    pub fn with_category_tools(self, on: bool) -> Self {
        Catalog {
            category_tools: on,
            // Offers built under the other setting must not be served.
            built: Arc::new(Mutex::new(None)),
            ..self
        }
    }

    /// Every offer, in precedence order (a category before a discovered tool
    /// of the same name), as of the current version of the routed tools.
    fn offers(&self) -> Arc<[Offer]> {
        // Read before building: a change during the build bumps past it,
        // and the next request builds again.
        let version = *self.changes.borrow();
        let mut built = self.built.lock();
        if let Some((at, offers)) = built.as_ref() {
            if *at == version {
                return offers.clone();
            }
        }
        let offers: Arc<[Offer]> = build_offers(&self.dispatcher, self.category_tools).into();
        *built = Some((version, offers.clone()));
        offers
    }

    /// The ids of the agents `reader` may see: one scan of `agents/`
    /// through the read policies (a read Deny on `agents/{id}` hides that
    /// agent); `None` (every agent) where no read hook or read limit exists.
    pub(crate) fn visible_agent_ids(
        &self,
        reader: Option<&PolicyContext>,
    ) -> Option<HashSet<String>> {
        let reader = reader?;
        let db = self.dispatcher.database();
        if !db.judges_reads() {
            return None;
        }
        let prefix = agent_key("");
        Some(
            db.scan_from(&prefix)
                .as_reader(reader)
                .iter()
                .filter_map(|kv| kv.ok())
                .map(|(key, _)| key[prefix.len()..].to_string())
                .collect(),
        )
    }

    /// The tools `reader` may see, sorted by name: those served by an agent
    /// the read policies let it see. `None` (the local operator) sees every
    /// tool.
    pub fn tools_for(&self, reader: Option<&PolicyContext>) -> Vec<CatalogTool> {
        let visible = self.visible_agent_ids(reader);
        let mut by_name: BTreeMap<&str, &CatalogTool> = BTreeMap::new();
        let offers = self.offers();
        for offer in offers.iter() {
            if offer.unlisted.is_some()
                || visible
                    .as_ref()
                    .is_some_and(|v| !v.contains(&offer.agent_id))
            {
                continue;
            }
            by_name.entry(&offer.tool.name).or_insert(&offer.tool);
        }
        by_name.into_values().cloned().collect()
    }

    /// What `name` is to `reader` now: a tool it may see (see
    /// [`tools_for`](Self::tools_for)), else a category it may see that has
    /// no category tool, else nothing.
    pub fn find_for(&self, name: &str, reader: Option<&PolicyContext>) -> Lookup {
        let visible = self.visible_agent_ids(reader);
        let offers = self.offers();
        let mut unlisted = None;
        let named = offers
            .iter()
            .filter(|o| o.tool.name == name)
            .filter(|o| visible.as_ref().is_none_or(|v| v.contains(&o.agent_id)));
        for offer in named {
            match offer.unlisted {
                None => return Lookup::Tool(offer.tool.clone()),
                Some(why) => {
                    unlisted.get_or_insert(why);
                }
            }
        }
        unlisted.map_or(Lookup::Unknown, Lookup::Unlisted)
    }
}

/// Every agent's offers: its categories (portable names only; unlisted for
/// MCP agents, and for every agent when `category_tools` is off), then the
/// tools MCP agents serve by name and can be routed to.
fn build_offers(dispatcher: &ToolDispatcher, category_tools: bool) -> Vec<Offer> {
    let mut offers = Vec::new();
    let live = dispatcher.registry().live_agents();
    for agent in &live {
        for category in &agent.categories {
            let name = category.as_str();
            if !is_portable_name(name) {
                tracing::debug!(
                    category = name,
                    "category is not a portable MCP tool name; not listed"
                );
                continue;
            }
            // An agent that serves named tools only (an MCP agent) takes no
            // other tool name in its category, and its tools are listed.
            let unlisted = if !category_tools {
                Some(Unlisted::TurnedOff)
            } else if agent.served().is_some() {
                Some(Unlisted::NamedToolsOnly)
            } else {
                None
            };
            offers.push(Offer {
                agent_id: agent.id.clone(),
                unlisted,
                tool: CatalogTool {
                    name: name.to_string(),
                    category: category.clone(),
                    description: format!(
                        "Runs a tool in Switchboard's `{name}` category on one of the agents serving it \
                         (routed, policy-checked, recorded)."
                    ),
                    input_schema: None,
                },
            });
        }
    }
    // Tools MCP agents serve by name; a listed category of the same name
    // keeps it (categories come first).
    for tool in dispatcher.discovered_tools() {
        if !is_portable_name(&tool.exposed_name) {
            continue;
        }
        let routable = live
            .iter()
            .any(|a| a.id == tool.agent_id && a.serves_tool(&tool.category, &tool.exposed_name));
        let serde_json::Value::Object(schema) = tool.input_schema else {
            continue;
        };
        if !routable {
            continue;
        }
        offers.push(Offer {
            agent_id: tool.agent_id,
            unlisted: None,
            tool: CatalogTool {
                name: tool.exposed_name,
                category: tool.category,
                description: tool.description.unwrap_or_default(),
                input_schema: Some(schema),
            },
        });
    }
    offers
}

/// One page after `cursor` and the cursor of the next page.
pub fn page(
    all: Vec<CatalogTool>,
    cursor: Option<&str>,
) -> Result<(Vec<CatalogTool>, Option<String>), String> {
    page_by(all, |t| &t.name, cursor)
}

/// One page of `all` (sorted by `name`) after `cursor`, and the cursor of
/// the next page.
pub fn page_by<T>(
    all: Vec<T>,
    name: impl Fn(&T) -> &str,
    cursor: Option<&str>,
) -> Result<(Vec<T>, Option<String>), String> {
    let after = match cursor {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| format!("invalid cursor {c:?}"))?),
    };
    let mut rest: Vec<T> = all
        .into_iter()
        .filter(|t| after.as_deref().is_none_or(|a| name(t) > a))
        .collect();
    let next = if rest.len() > PAGE_SIZE {
        rest.truncate(PAGE_SIZE);
        rest.last().map(|t| encode_cursor(name(t)))
    } else {
        None
    };
    Ok((rest, next))
}

fn encode_cursor(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(cursor: &str) -> Option<String> {
    if cursor.is_empty() || !cursor.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> CatalogTool {
        CatalogTool {
            name: name.into(),
            category: ToolCategory::Custom(name.into()),
            description: String::new(),
            input_schema: None,
        }
    }

    #[test]
    fn names_must_be_portable() {
        assert!(is_portable_name("code"));
        assert!(is_portable_name("a_b-C9"));
        assert!(!is_portable_name(""));
        assert!(!is_portable_name("a.b"));
        assert!(!is_portable_name("a:b"));
        assert!(!is_portable_name(&"x".repeat(65)));
    }

    #[test]
    fn pages_follow_the_cursor_and_reject_garbage() {
        let all: Vec<CatalogTool> = (0..250).map(|i| tool(&format!("t{i:03}"))).collect();
        let (first, next) = page(all.clone(), None).unwrap();
        assert_eq!(first.len(), PAGE_SIZE);
        let (second, next) = page(all.clone(), next.as_deref()).unwrap();
        assert_eq!(second[0].name, "t100");
        let (third, next) = page(all.clone(), next.as_deref()).unwrap();
        assert_eq!(third.len(), 50);
        assert!(next.is_none());
        assert!(page(all.clone(), Some("zz")).is_err());
        assert!(page(all, Some("abc")).is_err());
    }
}
