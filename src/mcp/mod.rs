//! MCP (Model Context Protocol) support, built on the official SDK `rmcp`.
//!
//! This module owns the server side of MCP; the client side (agents that
//! are MCP servers) is the transport `transport::mcp`. `rmcp` is used in
//! those two places (and by the demo's sample server and client, and the
//! CLI's relay from stdio to a server's `/mcp`, `switchboard mcp --server`).
//!
//! - [`catalog`]: which MCP tools Switchboard offers, their names and schemas.
//! - `offers`: the prompts, resources and resource templates of MCP agents
//!   one reader may see, and how their requests are routed.
//! - [`server`]: the `/mcp` endpoint (streamable HTTP, the session-based
//!   2025-06-18/2025-11-25 revisions and the stateless 2026-07-28 one on the
//!   same path). Every `tools/call` goes through [`crate::ToolDispatcher::invoke`].
//! - `rounds`: a 2026-07-28 client's call parked while an agent waits for
//!   its input (`input_required`), resumed by the client's retry.
//! - [`stdio`]: the same server on stdin/stdout (`switchboard mcp --data`).
//! - `observed`: each request served (`tools/call`, the listings,
//!   `prompts/get`, `resources/read`), as an OpenTelemetry MCP server span
//!   and in the `mcp.server.operation.duration` histogram.
//!
//! `docs/mcp.md` explains the mapping with a worked example.

pub mod catalog;
mod observed;
mod offers;
mod rounds;
pub mod server;
pub mod stdio;
