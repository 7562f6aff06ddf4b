//! The native half of the `switchboard` npm package: napi-rs bindings of
//! the switchboard crate. `index.js` wraps these classes into the documented
//! API (categories, strategies, policy actions, Error subclasses, the scan
//! iterator, AbortSignal) and is the only caller of this module.
//!
//! - `database`: the store (`NativeDatabase`): puts, gets, deletes, scan pages, batches
//! - `dispatcher`: `NativeDispatcher`: registration, metrics, health, `invoke`
//! - `handler`: JavaScript functions as in-process agents
//! - `policy`: JavaScript functions as policy hooks, Rego, rate limits
//! - `errors`: core errors as JS errors with a stable `code`
//! - `runtime`: blocking store work off the runtime's workers, and cancellation

pub mod database;
pub mod dispatcher;
pub mod errors;
pub mod handler;
pub mod policy;
pub mod runtime;

use napi_derive::napi;

/// The version of the bindings (the crate's).
#[napi]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
