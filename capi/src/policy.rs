//! `SbPolicy`: a handle on one database's hook chain. Foreign functions
//! are added as hooks, judged synchronously on the thread that commits (the
//! engine is told they may block, so the core commits off its runtime
//! workers); Rego modules are compiled here.
//!
//! Fail closed: a hook that answers with an unknown action, or a modify
//! without a value, denies; so does one that panics inside the library.

use crate::errors::{Failure, Result};
use crate::ffi::{object, panic_message, put, run, text, SbBytes};
use crate::handler::{Foreign, SbReleaseFn};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;
use switchboard::{PolicyAction, PolicyContext, RateLimitOp, RateLimitScope};

/// Hook verdicts, the return value of an `SbHookFn`.
pub const SB_ALLOW: i32 = 0;
/// Deny; the reply (if set) is the reason.
pub const SB_DENY: i32 = 1;
/// Store (before a write) or hand the reader (after a read) the reply instead.
pub const SB_MODIFY: i32 = 2;
/// Allow, and keep the reply as a note in the decision log.
pub const SB_LOG: i32 = 3;

/// Hook points, for `sb_policy_add_hook`.
pub const SB_BEFORE_WRITE: i32 = 0;
pub const SB_AFTER_WRITE: i32 = 1;
pub const SB_BEFORE_DELETE: i32 = 2;
pub const SB_AFTER_DELETE: i32 = 3;
pub const SB_BEFORE_READ: i32 = 4;
pub const SB_AFTER_READ: i32 = 5;

/// Judges one operation: `key`, `value` and `context_json` (a JSON object
/// of strings: `agent_id`, `tool`, `action`, ...) are borrowed for the
/// callback. Returns an `SB_ALLOW`/`SB_DENY`/`SB_MODIFY`/`SB_LOG` verdict
/// and may set its reason, note or new value with `sb_hook_reply_set`.
/// The commit waits for it, on whichever thread commits.
pub type SbHookFn = Option<
    unsafe extern "C" fn(
        user_data: usize,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
        context_json: *const u8,
        context_len: usize,
        reply: *mut SbHookReply,
    ) -> i32,
>;

/// Where a hook puts its reason, note or new value (opaque; valid during
/// the hook's callback only).
pub struct SbHookReply {
    data: Option<Vec<u8>>,
}

/// Sets the reply of the hook running now to a copy of `data`.
#[no_mangle]
pub unsafe extern "C" fn sb_hook_reply_set(reply: *mut SbHookReply, data: *const u8, len: usize) {
    // SAFETY: `reply` is the live reply handed to the running hook.
    if let Some(reply) = unsafe { reply.as_mut() } {
        // SAFETY: the header's contract for borrowed bytes.
        if let Ok(data) = unsafe { crate::ffi::bytes(data, len) } {
            reply.data = Some(data.to_vec());
        }
    }
}

/// A handle on a database's hook chain (opaque).
pub struct SbPolicy {
    engine: switchboard::PolicyEngine,
}

/// A handle on `db`'s hook chain. `*out` is owned by the caller, freed with
/// `sb_policy_free`; hooks stay on the database until it closes.
#[no_mangle]
pub unsafe extern "C" fn sb_policy_new(
    db: *const crate::SbDatabase,
    out: *mut *mut SbPolicy,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let db = &object("database", db)?.db;
        // Foreign hooks call into another runtime and may wait on it.
        let engine = switchboard::PolicyEngine::new(db).with_blocking_hooks();
        put("out", out, Box::into_raw(Box::new(SbPolicy { engine })))
    })
}

/// Frees a handle from `sb_policy_new` (NULL is a no-op). Its hooks stay on
/// the database; their `release` runs when the database closes.
#[no_mangle]
pub unsafe extern "C" fn sb_policy_free(policy: *mut SbPolicy) {
    if !policy.is_null() {
        // SAFETY: a handle from `sb_policy_new`, freed once.
        crate::ffi::quietly(|| drop(unsafe { Box::from_raw(policy) }));
    }
}

/// Adds `hook` at `point` (an `SB_BEFORE_*`/`SB_AFTER_*` constant) for keys
/// matching the glob `scope`; `name` appears in denial reasons. From this
/// call on, `user_data` belongs to the library: `release(user_data)` runs
/// once the hook can no longer be called (the database closed), or before
/// this returns if it fails.
#[no_mangle]
pub unsafe extern "C" fn sb_policy_add_hook(
    policy: *const SbPolicy,
    point: i32,
    scope: *const u8,
    scope_len: usize,
    name: *const u8,
    name_len: usize,
    hook: SbHookFn,
    user_data: usize,
    release: SbReleaseFn,
    err: *mut SbBytes,
) -> i32 {
    let foreign = Foreign { user_data, release };
    run(err, move || {
        let engine = &object("policy engine", policy)?.engine;
        // SAFETY: the header's contract for borrowed text.
        let (scope, name) = unsafe {
            (
                text("scope", scope, scope_len)?,
                text("name", name, name_len)?,
            )
        };
        let hook = hook.ok_or_else(|| Failure::invalid("the hook function is NULL"))?;
        let f = foreign_hook(name.to_string(), hook, foreign);
        let added = match point {
            SB_BEFORE_WRITE => engine.before_write(scope, f),
            SB_AFTER_WRITE => engine.after_write(scope, f),
            SB_BEFORE_DELETE => engine.before_delete(scope, f),
            SB_AFTER_DELETE => engine.after_delete(scope, f),
            SB_BEFORE_READ => engine.before_read(scope, f),
            SB_AFTER_READ => engine.after_read(scope, f),
            other => return Err(Failure::invalid(format!("unknown hook point {other}"))),
        };
        Ok(added?)
    })
}

type HookPtr = unsafe extern "C" fn(
    usize,
    *const u8,
    usize,
    *const u8,
    usize,
    *const u8,
    usize,
    *mut SbHookReply,
) -> i32;

/// A foreign hook and its callbacks' `user_data`, released when the hook
/// chain drops it.
struct ForeignHook {
    name: String,
    hook: HookPtr,
    foreign: Foreign,
}

impl ForeignHook {
    fn judge(&self, key: &str, value: &[u8], ctx: &PolicyContext) -> PolicyAction {
        let judged = catch_unwind(AssertUnwindSafe(|| {
            let context: serde_json::Map<String, serde_json::Value> =
                ctx.iter().map(|(k, v)| (k.to_string(), v.into())).collect();
            let context = serde_json::Value::Object(context).to_string();
            let mut reply = SbHookReply { data: None };
            // SAFETY: the caller's function with borrowed arguments.
            let verdict = unsafe {
                (self.hook)(
                    self.foreign.user_data,
                    key.as_ptr(),
                    key.len(),
                    value.as_ptr(),
                    value.len(),
                    context.as_ptr(),
                    context.len(),
                    &mut reply,
                )
            };
            action(&self.name, verdict, reply.data)
        }));
        judged.unwrap_or_else(|panic| {
            PolicyAction::Deny(format!(
                "policy hook {} panicked ({}); denying (fail closed)",
                self.name,
                panic_message(&*panic)
            ))
        })
    }
}

fn foreign_hook(
    name: String,
    hook: HookPtr,
    foreign: Foreign,
) -> impl Fn(&str, &[u8], &PolicyContext) -> PolicyAction + Send + Sync + 'static {
    // The closure must own the whole `ForeignHook` (a closure naming only
    // a field would capture just that field, and `foreign` would be
    // released at once): it calls a method on it.
    let hook = ForeignHook {
        name,
        hook,
        foreign,
    };
    move |key: &str, value: &[u8], ctx: &PolicyContext| hook.judge(key, value, ctx)
}

fn action(name: &str, verdict: i32, data: Option<Vec<u8>>) -> PolicyAction {
    let text = |d: Option<Vec<u8>>| d.map(|d| String::from_utf8_lossy(&d).into_owned());
    match verdict {
        SB_ALLOW => PolicyAction::Allow,
        SB_DENY => PolicyAction::Deny(text(data).unwrap_or_else(|| "denied by policy".into())),
        SB_MODIFY => match data {
            Some(value) => PolicyAction::Modify(value),
            None => PolicyAction::Deny(format!(
                "policy hook {name} returned a modify without a value; denying (fail closed)"
            )),
        },
        SB_LOG => PolicyAction::Log(text(data).unwrap_or_default()),
        other => PolicyAction::Deny(format!(
            "policy hook {name} returned {other}, not a verdict; denying (fail closed)"
        )),
    }
}

/// Compiles the Rego module `source` judging puts and deletes under `scope`.
#[no_mangle]
pub unsafe extern "C" fn sb_policy_add_rego(
    policy: *const SbPolicy,
    scope: *const u8,
    scope_len: usize,
    source: *const u8,
    source_len: usize,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let engine = &object("policy engine", policy)?.engine;
        // SAFETY: the header's contract for borrowed text.
        let (scope, source) = unsafe {
            (
                text("scope", scope, scope_len)?,
                text("source", source, source_len)?,
            )
        };
        Ok(engine.add_rego(scope, source)?)
    })
}

/// Loads every `*.rego` file of the directory `path` (scopes from their
/// `# scope:` comments). `*names` receives the module names as a JSON array
/// of strings, which the caller frees with `sb_bytes_free`.
#[no_mangle]
pub unsafe extern "C" fn sb_policy_load_dir(
    policy: *const SbPolicy,
    path: *const u8,
    path_len: usize,
    names: *mut SbBytes,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let engine = &object("policy engine", policy)?.engine;
        // SAFETY: the header's contract for borrowed text.
        let path = unsafe { text("path", path, path_len) }?;
        let loaded = engine.load_dir(std::path::Path::new(path))?;
        put("names", names, SbBytes::from_vec(json_bytes(&loaded)?))
    })
}

pub(crate) fn json_bytes<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Failure::from(switchboard::Error::storage(e)))
}

/// Rate-limited operations, for `sb_policy_add_rate_limit`.
pub const SB_LIMIT_PUT: i32 = 0;
pub const SB_LIMIT_DELETE: i32 = 1;
pub const SB_LIMIT_GET: i32 = 2;
pub const SB_LIMIT_DISPATCH: i32 = 3;

/// What a rate limit counts per, for `sb_policy_add_rate_limit`.
pub const SB_PER_GLOBAL: i32 = 0;
pub const SB_PER_AGENT: i32 = 1;
pub const SB_PER_SESSION: i32 = 2;
pub const SB_PER_TOOL: i32 = 3;

/// Allows at most `max` operations `op` (an `SB_LIMIT_*` constant) per
/// `window_seconds`, counted `per` (an `SB_PER_*` constant); past it they
/// fail with `SB_RATE_LIMITED`.
#[no_mangle]
pub unsafe extern "C" fn sb_policy_add_rate_limit(
    policy: *const SbPolicy,
    op: i32,
    max: u32,
    window_seconds: f64,
    per: i32,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let engine = &object("policy engine", policy)?.engine;
        let op = match op {
            SB_LIMIT_PUT => RateLimitOp::Put,
            SB_LIMIT_DELETE => RateLimitOp::Delete,
            SB_LIMIT_GET => RateLimitOp::Get,
            SB_LIMIT_DISPATCH => RateLimitOp::Dispatch,
            other => {
                return Err(Failure::invalid(format!(
                    "unknown rate-limited operation {other}"
                )))
            }
        };
        let scope = match per {
            SB_PER_GLOBAL => RateLimitScope::Global,
            SB_PER_AGENT => RateLimitScope::PerAgent,
            SB_PER_SESSION => RateLimitScope::PerSession,
            SB_PER_TOOL => RateLimitScope::PerTool,
            other => {
                return Err(Failure::invalid(format!(
                    "unknown rate-limit scope {other}"
                )))
            }
        };
        if !(window_seconds.is_finite() && window_seconds > 0.0) {
            return Err(Failure::invalid(format!(
                "a rate limit's window must be a positive number of seconds, not {window_seconds}"
            )));
        }
        Ok(engine.add_rate_limit_per(op, max, Duration::from_secs_f64(window_seconds), scope)?)
    })
}
