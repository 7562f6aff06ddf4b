//! `switchboard._native`: the Python bindings of the switchboard crate. The
//! `switchboard` Python package re-exports these classes and adds the
//! pure-Python pieces (categories, strategies, policy actions, decorators).
//!
//! - `database`: `Database`, `Transaction`, `Scan`
//! - `dispatcher`: `ToolDispatcher`, `InvocationResult` (`invoke` is async)
//! - `handler`: Python functions as in-process agents
//! - `policy`: Python callables as policy hooks, Rego, rate limits
//! - `errors`: the exception hierarchy
//! - `runtime`: the tokio runtime and the future → asyncio bridge

mod database;
mod dispatcher;
mod errors;
mod handler;
mod policy;
mod runtime;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<database::Database>()?;
    m.add_class::<database::Transaction>()?;
    m.add_class::<database::Scan>()?;
    m.add_class::<dispatcher::ToolDispatcher>()?;
    m.add_class::<dispatcher::InvocationResult>()?;
    m.add_class::<policy::NativePolicyEngine>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
