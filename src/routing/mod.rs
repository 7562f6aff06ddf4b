//! Routing: which agent serves a call. Knows agents as data (identity,
//! endpoint, state) and never calls one: the transport layer does that.
//!
//! The files depend one way (ARCHITECTURE.md draws it, `tests/layers.rs`
//! checks it): `agent` (with its `Health` state) at the bottom, then `tiers`,
//! `strategy`, `load_index`, `router`, `registration`, `registry_store`, then `registry`,
//! `affinity`, and on top `health_config`, `outlier`, `health`.
//!
//! - `registry`: registrations (persisted under `agents/*`), mirrored into the router;
//! - `registration`: what a registration must be (checks, the record, declared MCP tools);
//! - `registry_store`: the registry's records in the store (`agents/*`: load, writes and their policy contexts);
//! - `router`: per-category pools, snapshots and leases;
//! - `tiers`: priority tiers and panic routing, the rule every strategy picks under;
//! - `strategy`: [`RoutingStrategy`] and the pure picks; `load_index`: least loaded order;
//! - `affinity`: session bindings (bind, keep, rebind);
//! - `shared`: the hooks a store shared by several nodes plugs into (cluster mode);
//! - `outlier`: what results mean: consecutive failures, ejection, re-admission;
//! - `health`: the probe round and the background task (probe injected);
//! - `health_config`: [`HealthCheckConfig`], shared by `health` and `outlier`;
//! - `endpoint`: where an agent lives, endpoint validation;
//! - `metrics`: per-agent counters and latency estimate.

pub(crate) mod affinity;
pub(crate) mod agent;
pub(crate) mod endpoint;
pub(crate) mod health;
pub(crate) mod health_config;
pub(crate) mod load_index;
pub(crate) mod metrics;
pub(crate) mod outlier;
pub(crate) mod registration;
pub(crate) mod registry;
pub(crate) mod registry_store;
pub(crate) mod router;
pub(crate) mod shared;
pub(crate) mod strategy;
pub(crate) mod tiers;

pub use agent::{AgentConfig, DEFAULT_AGENT_TIMEOUT, MAX_AGENT_TIMEOUT};
pub use endpoint::{ENDPOINT_PATTERN, MAX_ENDPOINT_LEN};
pub use health_config::HealthCheckConfig;
pub use metrics::AgentMetrics;
pub use registration::check_agent_config;
pub use registry::AgentRegistry;
pub(crate) use router::ToolRouter;
pub use strategy::RoutingStrategy;
