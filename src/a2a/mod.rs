//! Switchboard as one A2A agent in front of many: `serve` publishes an
//! Agent Card at `/.well-known/agent-card.json` listing the skills of the
//! A2A agents it routes (per caller, as `/mcp` lists tools) and answers
//! A2A JSON-RPC at `/a2a`, routing each message to an agent that serves
//! its skill with the usual strategies, policies, failover and audit.
//!
//! - `skills`: the skills a caller may see, and what one routes to;
//! - `tasks`: task affinity, `a2a_tasks/{task_id}` → the owning agent
//!   (shared with the other nodes in cluster mode), and each task's
//!   states under `a2a_task_states/{task_id}/{n}`;
//! - `server`: the two routes and the JSON-RPC methods (the streamed ones
//!   relayed as server-sent events).

pub mod server;
mod skills;
mod tasks;
