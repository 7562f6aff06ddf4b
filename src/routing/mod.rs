//! Routing: which agent serves a call.
//!
//! [`AgentRegistry`] owns registrations (persisted under `agents/*`),
//! [`ToolRouter`] chooses among healthy agents by [`RoutingStrategy`], `health`
//! keeps the healthy set current, and `metrics` counts what happened.

pub(crate) mod agent;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod registry;
pub(crate) mod router;

pub use agent::AgentConfig;
pub use health::HealthCheckConfig;
pub use metrics::AgentMetrics;
pub use registry::AgentRegistry;
pub use router::{RoutingStrategy, ToolRouter};
