//! MCP (Model Context Protocol) support, built on the official SDK `rmcp`.
//!
//! This module owns everything MCP so the rest of the crate stays protocol
//! free; `rmcp` is used nowhere else.
//!
//! - [`catalog`]: which MCP tools Switchboard offers, their names and schemas.
//! - [`server`]: the `/mcp` endpoint (streamable HTTP, the session-based
//!   2025-06-18/2025-11-25 revisions and the stateless 2026-07-28 one on the
//!   same path). Every `tools/call` goes through [`crate::ToolDispatcher::invoke`].
//! - [`stdio`]: the same server on stdin/stdout (`switchboard mcp`).
//!
//! `docs/mcp.md` explains the mapping with a worked example.

pub mod catalog;
pub mod server;
pub mod stdio;
