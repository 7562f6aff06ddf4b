//! `switchboard invoke`: one tool call, printed as JSON; on the local database
//! or through a server's `POST /v1/invoke`. A category no agent serves is
//! answered with the nearest one that is served.

use super::StoreArgs;
use clap::Args;
use reqwest::Method;
use switchboard::namespace::AgentRecord;
use switchboard::{Error, RoutingOptions, RoutingStrategy, ToolCategory};

#[derive(Args)]
pub struct InvokeArgs {
    /// The tool to call, e.g. code_exec (for an MCP agent, one of the tools
    /// `switchboard tools` lists).
    pub tool: String,
    /// The category to route in: code, search, database, web, file, git,
    /// shell, embedding, or any category an agent registered (HTTP and MCP
    /// agents alike).
    #[arg(long)]
    pub category: String,
    /// The input as JSON (an empty object when left out).
    #[arg(long, default_value = "{}")]
    pub input: String,
    /// round_robin, random, least_loaded, priority, sticky or fastest.
    #[arg(long, default_value = "round_robin")]
    pub strategy: String,
    /// A session id: calls of one session stay on one agent under
    /// `--strategy sticky` (needed there), and the record keeps it.
    #[arg(long)]
    pub session: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn run(args: InvokeArgs) -> switchboard::Result<()> {
    let input: serde_json::Value = serde_json::from_str(&args.input)
        .map_err(|e| Error::invalid(format!("--input is not JSON: {e}")))?;
    let strategy: RoutingStrategy = args.strategy.parse()?;
    let category: ToolCategory = args.category.parse()?;
    if strategy == RoutingStrategy::Sticky && args.session.is_none() {
        return Err(Error::invalid(
            "--strategy sticky needs a session: add --session ID",
        ));
    }
    if let Some(client) = args.store.client()? {
        let body = serde_json::json!({
            "tool": args.tool, "category": category, "input": input,
            "strategy": strategy, "session_id": args.session,
        });
        let result = match client
            .send(Method::POST, client.url("v1/invoke"), Some(&body))
            .await
        {
            Ok(result) => result,
            Err(e) => {
                // Only asked after a failure: a good call costs one request.
                let agents: Vec<AgentRecord> =
                    serde_json::from_value(client.get("v1/agents").await?).unwrap_or_default();
                return Err(unserved(&category, &agents).unwrap_or(e));
            }
        };
        return super::out(serde_json::to_string_pretty(&result).map_err(Error::storage)?);
    }
    let dispatcher = args.store.dispatcher()?;
    let mut options = RoutingOptions::new().with_strategy(strategy);
    if let Some(session) = args.session {
        options = options.with_session_id(session);
    }
    let result = match dispatcher
        .invoke(&args.tool, category.clone(), input, options)
        .await
    {
        Ok(result) => result,
        Err(e) => {
            let agents: Vec<AgentRecord> = dispatcher
                .list_agents()
                .iter()
                .filter_map(|id| dispatcher.registry().get(id))
                .collect();
            return Err(unserved(&category, &agents).unwrap_or(e));
        }
    };
    super::out(serde_json::to_string_pretty(&result).map_err(Error::storage)?)
}

/// When no registered agent serves `category`: an error naming the nearest
/// category that is served (a typo such as `cdoe`) and the ones there are.
fn unserved(category: &ToolCategory, agents: &[AgentRecord]) -> Option<Error> {
    let mut served: Vec<&str> = agents
        .iter()
        .flat_map(|a| a.tools.iter().map(|t| t.as_str()))
        .collect();
    served.sort_unstable();
    served.dedup();
    let asked = category.as_str();
    if served.contains(&asked) {
        return None;
    }
    let built_in = ToolCategory::BUILT_IN.map(|c| c.as_str().to_string());
    let nearest = served
        .iter()
        .copied()
        .chain(built_in.iter().map(String::as_str))
        .map(|known| (strsim::damerau_levenshtein(asked, known), known))
        .filter(|(distance, _)| (1..=2).contains(distance))
        .min();
    let hint = match nearest {
        Some((_, name)) => format!(" Did you mean --category {name}?"),
        None => String::new(),
    };
    let listed = if served.is_empty() {
        "none: register one with `switchboard agents register ID --tools CATEGORY --endpoint URL`"
            .to_string()
    } else {
        served.join(", ")
    };
    Some(Error::invalid(format!(
        "no registered agent serves category {asked:?}.{hint} Categories agents serve: {listed}. \
         Built-in categories: {}.",
        built_in.join(", ")
    )))
}
