//! The demo's MCP parts: a small MCP server (one tool, `forecast`) on
//! 127.0.0.1 that Switchboard routes to as an MCP agent, and an MCP client
//! that calls it by name through Switchboard's own `/mcp`. (With the `mcp`
//! module and the MCP transport, the only other user of `rmcp`: a sample
//! server and client.)

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, ServiceExt};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::json;
use std::sync::Arc;
use switchboard::{Error, ToolDispatcher};

#[derive(Clone)]
struct Weather;

impl ServerHandler for Weather {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let serde_json::Value::Object(schema) = json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"]
        }) else {
            unreachable!("an object literal")
        };
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "forecast",
            "Tomorrow's weather for a city",
            Arc::new(schema),
        )]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if request.name != "forecast" {
            return Err(McpError::invalid_params("unknown tool", None));
        }
        let city = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("city"))
            .and_then(|c| c.as_str())
            .unwrap_or("nowhere")
            .to_string();
        Ok(CallToolResult::success(vec![ContentBlock::text(format!("sunny in {city}"))]).into())
    }
}

/// The sample MCP server on its own runtime thread; dropping it stops it.
pub struct DemoMcpServer {
    pub url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

fn serve_on(runtime: &tokio::runtime::Handle, app: axum::Router) -> switchboard::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| Error::storage(format!("cannot bind a demo MCP server: {e}")))?;
    let addr = listener.local_addr().map_err(Error::storage)?;
    runtime.spawn(async move {
        if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
            let _ = axum::serve(listener, app).await;
        }
    });
    Ok(format!("http://{addr}/mcp"))
}

impl DemoMcpServer {
    pub fn start() -> switchboard::Result<DemoMcpServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::storage(format!("cannot start the demo MCP server: {e}")))?;
        let service = StreamableHttpService::new(
            || Ok(Weather),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default(),
        );
        let url = serve_on(
            runtime.handle(),
            axum::Router::new().nest_service("/mcp", service),
        )?;
        Ok(DemoMcpServer {
            url,
            runtime: Some(runtime),
        })
    }
}

impl Drop for DemoMcpServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Switchboard's own `/mcp` for `dispatcher`, on 127.0.0.1 (on the current
/// runtime, until the returned handle is aborted).
pub fn serve_switchboard(dispatcher: &ToolDispatcher) -> switchboard::Result<String> {
    let service = switchboard::mcp::server::service(
        switchboard::mcp::server::SwitchboardMcp::new(dispatcher.clone()),
        1 << 20,
    );
    serve_on(
        &tokio::runtime::Handle::current(),
        axum::Router::new().nest_service("/mcp", service),
    )
}

/// An MCP client at `url`: the tools it lists, and the text of
/// `forecast {"city": "Oslo"}`.
pub async fn call_through(url: &str) -> switchboard::Result<(Vec<String>, String)> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::storage(format!("demo MCP client: {what}: {e}"))
    };
    let client =
        ().serve(StreamableHttpClientTransport::from_uri(url))
            .await
            .map_err(|e| fail("connect", &e))?;
    let names = client
        .list_all_tools()
        .await
        .map_err(|e| fail("tools/list", &e))?
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    let mut args = serde_json::Map::new();
    args.insert("city".into(), json!("Oslo"));
    let result = client
        .call_tool(CallToolRequestParams::new("forecast").with_arguments(args))
        .await
        .map_err(|e| fail("tools/call", &e))?;
    let text = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join(" ");
    let _ = client.cancel().await;
    Ok((names, text))
}
