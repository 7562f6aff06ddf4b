//! What an MCP agent's answer to `tools/call` means for the dispatcher:
//! a result is the output (as the whole MCP result, so `content` and
//! `structuredContent` survive); `isError: true` is the tool's own error (no
//! failover); transport failures, HTTP 5xx and JSON-RPC internal errors are
//! agent failures (failover); an unknown tool (-32602) is an agent failure
//! that also asks for the tool list to be read again.

use crate::transport::{error_chain, Failure};
use rmcp::model::{CallToolResult, ErrorCode};
use rmcp::ServiceError;

/// The longest error text kept from a tool's error content.
const MAX_ERROR_TEXT: usize = 4096;

/// A result as output, or the tool's own error when `isError` is set.
pub(crate) fn output_of(result: CallToolResult) -> Result<serde_json::Value, Failure> {
    if result.is_error == Some(true) {
        let mut text: String = result
            .content
            .iter()
            .filter_map(|block| block.as_text().map(|t| t.text.as_str()))
            .collect::<Vec<_>>()
            .join("\n");
        if text.is_empty() {
            text = serde_json::to_string(&result.content).unwrap_or_default();
        }
        if text.len() > MAX_ERROR_TEXT {
            let mut cut = MAX_ERROR_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        return Err(Failure::Tool(text));
    }
    serde_json::to_value(&result)
        .map_err(|e| Failure::Agent(format!("the MCP result does not encode: {e}")))
}

/// An error from a call as a failure, and whether the server did not know
/// the tool.
pub(crate) fn classify_error(error: ServiceError, tool: &str) -> (Failure, bool) {
    match error {
        ServiceError::McpError(data) => {
            let code = data.code;
            let message = format!("MCP error {}: {}", code.0, data.message);
            if code == ErrorCode::INVALID_PARAMS {
                (
                    Failure::Agent(format!(
                        "the MCP server refused the call of {tool} (unknown tool or malformed request): {message}"
                    )),
                    true,
                )
            } else if code == ErrorCode::INTERNAL_ERROR
                || code == ErrorCode::METHOD_NOT_FOUND
                || code == ErrorCode::INVALID_REQUEST
                || code == ErrorCode::PARSE_ERROR
            {
                (Failure::Agent(message), false)
            } else {
                (Failure::Tool(message), false)
            }
        }
        ServiceError::Timeout { .. } => (Failure::Timeout, false),
        other => (
            Failure::Agent(format!("MCP call failed: {}", error_chain(&other))),
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{ContentBlock, ErrorData};

    #[test]
    fn is_error_is_the_tools_own_failure() {
        let failed = CallToolResult::error(vec![ContentBlock::text("bad input")]);
        assert_eq!(output_of(failed), Err(Failure::Tool("bad input".into())));
        let ok = CallToolResult::success(vec![ContentBlock::text("fine")]);
        let output = output_of(ok).unwrap();
        assert_eq!(output["content"][0]["text"], "fine");
    }

    #[test]
    fn errors_fail_over_or_not() {
        let (f, unknown) = classify_error(
            ServiceError::McpError(ErrorData::invalid_params("no such tool", None)),
            "t",
        );
        assert!(f.is_retryable() && unknown);
        let (f, unknown) = classify_error(
            ServiceError::McpError(ErrorData::internal_error("boom", None)),
            "t",
        );
        assert!(f.is_retryable() && !unknown);
        let (f, _) = classify_error(
            ServiceError::McpError(ErrorData::new(ErrorCode(-32000), "app error", None)),
            "t",
        );
        assert!(!f.is_retryable());
        let (f, _) = classify_error(ServiceError::TransportClosed, "t");
        assert!(f.is_retryable());
    }
}
