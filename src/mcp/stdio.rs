//! `switchboard mcp`: the same MCP server as `/mcp`, on stdin/stdout, so a
//! desktop MCP client can launch Switchboard as one local server that fans
//! out to every registered agent. Logs go to stderr; stdout carries only
//! protocol messages.

use super::server::SwitchboardMcp;
use crate::error::{Error, Result};
use rmcp::ServiceExt;

/// Serves `handler` (built with [`SwitchboardMcp::new`] and its settings)
/// over this process's stdin/stdout until the client closes it.
pub async fn serve_stdio(handler: SwitchboardMcp) -> Result<()> {
    let running = handler
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| Error::invalid(format!("MCP client did not initialize: {e}")))?;
    running
        .waiting()
        .await
        .map_err(|e| Error::storage(format!("MCP stdio server stopped: {e}")))?;
    Ok(())
}
