//! The skills Switchboard answers for as an A2A agent: every skill an A2A
//! agent serves (discovered from its card, under the name calls use), that
//! the caller may see: served by an agent the read policies on
//! `agents/{id}` let it see, as `/mcp` filters its tool list.

use crate::dispatch::ToolDispatcher;
use crate::mcp::catalog::Catalog;
use crate::namespace::{AgentTransport, ToolCategory};
use crate::policy::PolicyContext;
use std::collections::BTreeMap;

/// One routed skill as the card lists it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Skill {
    /// The name calls use (the skill id on Switchboard's card).
    pub(crate) id: String,
    /// The category its calls are routed in.
    pub(crate) category: ToolCategory,
    /// What the agent's card says of it.
    pub(crate) description: String,
}

/// The skills `reader` may see, by name (`None`: the local operator, who
/// sees all).
pub(crate) fn visible(
    dispatcher: &ToolDispatcher,
    catalog: &Catalog,
    reader: Option<&PolicyContext>,
) -> BTreeMap<String, Skill> {
    let visible = catalog.visible_agent_ids(reader);
    let registry = dispatcher.registry();
    let mut skills = BTreeMap::new();
    for tool in dispatcher.discovered_tools() {
        let is_a2a = registry
            .get(&tool.agent_id)
            .is_some_and(|r| matches!(r.transport, AgentTransport::A2a(_)));
        if !is_a2a
            || visible
                .as_ref()
                .is_some_and(|v| !v.contains(&tool.agent_id))
        {
            continue;
        }
        skills.entry(tool.exposed_name.clone()).or_insert(Skill {
            id: tool.exposed_name,
            category: tool.category,
            description: tool.description.unwrap_or_default(),
        });
    }
    skills
}
