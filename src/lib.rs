//! Switchboard routes tool invocations across AI agents, and keeps everything it
//! knows in one policy-checked, transactional RocksDB key space.
//!
//! Data flows one way: [`ToolDispatcher`] (API) → [`routing`] (which agent) →
//! [`storage`] writes checked by [`policy`] → [`transport`] (call the agent) →
//! outcome write. See `docs/` for the key namespace and the policy model.
//!
//! ```no_run
//! # async fn demo() -> switchboard::Result<()> {
//! use switchboard::{Database, ToolDispatcher, ToolCategory, RoutingOptions, ToolError};
//! let db = Database::open("./agent_data")?;
//! let dispatcher = ToolDispatcher::new(db.clone());
//! dispatcher.register_local_agent("local_code", vec![ToolCategory::Code],
//!     |tool: String, input: serde_json::Value| async move {
//!         Ok::<_, ToolError>(serde_json::json!({ "tool": tool, "echo": input }))
//!     })?;
//! let r = dispatcher.invoke("code_exec", ToolCategory::Code,
//!     serde_json::json!({ "code": "print('hello')" }), RoutingOptions::new()).await?;
//! assert_eq!(r.agent_id, "local_code");
//! # Ok(()) }
//! ```

pub mod config;
pub mod dispatch;
pub mod error;
// MCP integration point: the protocol module (uses dispatch; mounted by server).
pub mod mcp;
pub mod namespace;
pub mod policy;
pub mod routing;
pub mod server;
pub mod storage;
pub mod transport;

pub use dispatch::{recover_interrupted, InvocationResult, RoutingOptions, ToolDispatcher};
pub use error::{Error, Result};
pub use namespace::ToolCategory;
pub use policy::{
    PolicyAction, PolicyContext, PolicyEngine, RateLimitOp, RateLimitScope, RegoEvaluator,
};
pub use routing::{
    AgentConfig, AgentMetrics, AgentRegistry, HealthCheckConfig, RoutingStrategy, ToolRouter,
};
pub use storage::{Connection, Database, DatabaseOptions, Durability, Scan, Transaction};
pub use transport::ToolError;
