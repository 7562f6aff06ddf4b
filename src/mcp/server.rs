//! The `/mcp` endpoint: an `rmcp` streamable-HTTP service over one
//! [`ToolDispatcher`].
//!
//! It is mounted inside the HTTP API's router, so the bearer token, the body
//! limit and the access log apply as to every route; `rmcp` adds the `Host`
//! check (loopback by default: DNS-rebinding protection) and `Origin`
//! validation. The caller's token stays here: upstream agents are called by
//! the dispatcher with their own settings, never with the caller's headers.
//!
//! `tools/call` runs on its own task, like `POST /v1/invoke`: if the client
//! goes away or cancels, the call still finishes and its outcome is recorded;
//! only the answer is dropped.

use super::catalog;
use crate::dispatch::{RoutingOptions, ToolDispatcher};
use crate::error::Error;
use crate::policy::{keys, PolicyContext, Principal};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use std::sync::Arc;

/// The MCP server side of Switchboard: one per MCP session (or stateless
/// request); all share the dispatcher.
#[derive(Clone)]
pub struct SwitchboardMcp {
    dispatcher: ToolDispatcher,
}

impl SwitchboardMcp {
    /// An MCP server whose tool calls go through `dispatcher`.
    pub fn new(dispatcher: ToolDispatcher) -> Self {
        SwitchboardMcp { dispatcher }
    }
}

/// The authenticated caller of an MCP request over HTTP (the API's auth
/// layer puts it in the request's extensions); `None` over stdio or on a
/// server that requires no credential.
fn caller(context: &RequestContext<RoleServer>) -> Option<Principal> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Principal>())
        .cloned()
}

/// The policy context of a caller's reads through `/mcp`.
fn reader_context(caller: &Principal, action: &str) -> PolicyContext {
    let mut ctx = PolicyContext::new()
        .with("source", "mcp")
        .with(keys::ACTION, action);
    caller.apply_to(&mut ctx);
    ctx
}

/// The arguments of a category tool.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryCall {
    tool: String,
    #[serde(default)]
    input: serde_json::Value,
    session_id: Option<String>,
}

/// A dispatch error as an MCP answer: storage faults are the server's
/// (JSON-RPC internal error); everything else is the call's outcome, told to
/// the caller as an `isError` result with the reason.
pub fn error_result(e: Error) -> Result<CallToolResponse, McpError> {
    match e {
        Error::Storage(_) => Err(McpError::internal_error(e.to_string(), None)),
        other => Ok(CallToolResult::error(vec![ContentBlock::text(other.to_string())]).into()),
    }
}

impl ServerHandler for SwitchboardMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "switchboard",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Each tool is a Switchboard category: pass the tool name and its input; \
                 Switchboard routes the call to an agent serving that category.",
            )
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let cursor = request.and_then(|r| r.cursor);
        let reader = caller(&context).map(|p| reader_context(&p, "list_tools"));
        let (tools, next) = catalog::page(
            catalog::tools_for(&self.dispatcher, reader.as_ref()),
            cursor.as_deref(),
        )
        .map_err(|m| McpError::invalid_params(m, None))?;
        let schema = Arc::new(catalog::category_input_schema());
        let tools = tools
            .into_iter()
            .map(|t| Tool::new(t.name, t.description, schema.clone()))
            .collect();
        let mut result = ListToolsResult::with_all_items(tools);
        result.next_cursor = next;
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let principal = caller(&context);
        let reader = principal.as_ref().map(|p| reader_context(p, "call_tool"));
        // A tool the caller may not see answers exactly as one that does not exist.
        let Some(tool) = catalog::find_for(&self.dispatcher, &request.name, reader.as_ref()) else {
            return Err(McpError::invalid_params(
                format!("unknown tool {:?}; see tools/list", request.name),
                None,
            ));
        };
        let arguments = serde_json::Value::Object(request.arguments.unwrap_or_default());
        let call: CategoryCall = match serde_json::from_value(arguments) {
            Ok(call) => call,
            Err(e) => {
                // Bad input is the tool's own failure, so the model can correct it.
                return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "invalid arguments: {e}; expected {{\"tool\": string, \"input\": object, \"session_id\"?: string}}"
                ))])
                .into());
            }
        };
        let mut options = RoutingOptions::new();
        if let Some(principal) = principal {
            options = options.with_caller(principal);
        }
        if let Some(session) = call.session_id {
            options = options.with_session_id(session);
        }
        let dispatcher = self.dispatcher.clone();
        let task = tokio::spawn(async move {
            dispatcher
                .invoke(&call.tool, tool.category, call.input, options)
                .await
        });
        let outcome = tokio::select! {
            joined = task => joined,
            _ = context.ct.cancelled() => {
                return Err(McpError::internal_error("the call was cancelled by the client; it still runs to completion and is recorded", None));
            }
        };
        match outcome {
            Err(e) => Err(McpError::internal_error(
                format!("dispatch task failed: {e}"),
                None,
            )),
            Ok(Err(e)) => error_result(e),
            Ok(Ok(r)) => Ok(CallToolResult::structured(serde_json::json!({
                "agent_id": r.agent_id,
                "invocation_id": r.invocation_id,
                "attempts": r.attempts,
                "output": r.output,
            }))
            .into()),
        }
    }
}

/// The `/mcp` service: nest it with `Router::nest_service("/mcp", ..)`.
/// `max_body_bytes` caps a request body, like the API's body limit.
pub fn service(
    dispatcher: ToolDispatcher,
    max_body_bytes: usize,
) -> StreamableHttpService<SwitchboardMcp, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(max_body_bytes)
        // Browsers send `Origin`: only pages served from this machine may
        // call; DNS rebinding (a foreign name resolving to 127.0.0.1) is refused.
        .with_allowed_origins(["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"])
        .enforce_origin_validation();
    let handler = SwitchboardMcp::new(dispatcher);
    StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_faults_are_internal_errors_and_the_rest_tool_errors() {
        let e = error_result(Error::storage("disk gone")).unwrap_err();
        assert_eq!(e.code, rmcp::model::ErrorCode::INTERNAL_ERROR);
        let denied = Error::PolicyDenied {
            key: "tools/code/x/1".into(),
            reason: "not this agent".into(),
        };
        let CallToolResponse::Complete(result) = error_result(denied).unwrap() else {
            panic!("expected a complete result");
        };
        assert_eq!(result.is_error, Some(true));
        let text = serde_json::to_string(&result.content).unwrap();
        assert!(text.contains("not this agent"), "{text}");
    }
}
