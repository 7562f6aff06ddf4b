//! `switchboard invoke`: one tool call, printed as JSON; on the local database
//! or through a server's `POST /v1/invoke`.

use super::StoreArgs;
use clap::Args;
use reqwest::Method;
use switchboard::{Error, RoutingOptions, RoutingStrategy, ToolCategory};

#[derive(Args)]
pub struct InvokeArgs {
    pub tool: String,
    #[arg(long)]
    pub category: String,
    /// The input as JSON (an empty object when left out).
    #[arg(long, default_value = "{}")]
    pub input: String,
    /// round_robin, random, least_loaded, priority, sticky or fastest.
    #[arg(long, default_value = "round_robin")]
    pub strategy: String,
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
        let result = client
            .send(Method::POST, client.url("v1/invoke"), Some(&body))
            .await?;
        return super::out(serde_json::to_string_pretty(&result).map_err(Error::storage)?);
    }
    let dispatcher = args.store.dispatcher()?;
    let mut options = RoutingOptions::new().with_strategy(strategy);
    if let Some(session) = args.session {
        options = options.with_session_id(session);
    }
    let result = dispatcher
        .invoke(&args.tool, category, input, options)
        .await?;
    super::out(serde_json::to_string_pretty(&result).map_err(Error::storage)?)
}
