//! The native half of `PolicyEngine`: JavaScript functions as policy hooks,
//! Rego modules, rate limits.
//!
//! A hook runs on whichever thread commits the write. Off the JS thread it
//! calls the JS function through a threadsafe function and waits for its
//! verdict (the engine is told its hooks block, so the core commits off the
//! runtime's workers). On the JS thread itself — a synchronous binding call
//! that commits, such as the dispatcher's constructor marking a dead
//! process's dispatches interrupted — it calls the function directly, since
//! waiting for the JS thread there would wait forever.
//!
//! `index.js` wraps each user hook so that it never throws and always
//! returns `{ kind, reason?, value? }`; a verdict that cannot be read, or a
//! hook that cannot be reached, denies (fail closed).

use crate::database::NativeDatabase;
use crate::errors::{invalid, IntoJs};
use napi::bindgen_prelude::{Buffer, FnArgs, Function, FunctionRef};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status};
use napi_derive::napi;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;
use switchboard::{PolicyAction, PolicyContext, RateLimitOp, RateLimitScope};

// Spread into three arguments (a bare tuple would arrive as one array).
type HookArgs = FnArgs<(String, Buffer, HashMap<String, String>)>;
type HookBridge = ThreadsafeFunction<HookArgs, HookVerdict, HookArgs, Status, false, true>;

/// A hook's decision, as the JS wrapper returns it.
#[napi(object)]
pub struct HookVerdict {
    /// `allow`, `deny`, `modify` or `log`.
    pub kind: String,
    /// The reason of a deny, the note of a log.
    pub reason: Option<String>,
    /// The new value of a modify.
    pub value: Option<Buffer>,
}

thread_local! {
    /// The env of the synchronous binding call running on this thread, if
    /// any: hooks reached from inside it call JavaScript directly.
    static SYNC_ENV: Cell<Option<napi::sys::napi_env>> = const { Cell::new(None) };
}

/// Runs `f` as a synchronous binding call on the JS thread of `env`.
pub fn on_js_thread<T>(env: &Env, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<napi::sys::napi_env>);
    impl Drop for Reset {
        fn drop(&mut self) {
            SYNC_ENV.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(SYNC_ENV.with(|c| c.replace(Some(env.raw()))));
    f()
}

fn action_of(verdict: napi::Result<HookVerdict>, name: &str) -> PolicyAction {
    match verdict {
        Ok(v) => match v.kind.as_str() {
            "allow" => PolicyAction::Allow,
            "deny" => PolicyAction::Deny(v.reason.unwrap_or_else(|| "denied by policy".into())),
            "modify" => match v.value {
                Some(value) => PolicyAction::Modify(value.to_vec()),
                None => PolicyAction::Deny(format!(
                    "policy hook {name} returned a modify without a value; denying (fail closed)"
                )),
            },
            "log" => PolicyAction::Log(v.reason.unwrap_or_default()),
            other => PolicyAction::Deny(format!(
                "policy hook {name} returned {other:?}, not a PolicyAction; denying (fail closed)"
            )),
        },
        Err(e) => PolicyAction::Deny(format!(
            "policy hook {name} could not be read ({e}); denying (fail closed)"
        )),
    }
}

/// A Rust hook calling the JS function `f(key, value, context)`.
fn js_hook(
    name: String,
    bridge: HookBridge,
    direct: FunctionRef<HookArgs, HookVerdict>,
) -> impl Fn(&str, &[u8], &PolicyContext) -> PolicyAction + Send + Sync + 'static {
    // The JS thread this hook belongs to: reached there outside a known
    // synchronous call, waiting for a verdict would never end.
    let js_thread = std::thread::current().id();
    move |key: &str, value: &[u8], ctx: &PolicyContext| {
        let context: HashMap<String, String> = ctx
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args: HookArgs = (key.to_string(), Buffer::from(value.to_vec()), context).into();
        if let Some(raw) = SYNC_ENV.with(|c| c.get()) {
            let env = Env::from_raw(raw);
            let verdict = direct.borrow_back(&env).and_then(|f| f.call(args));
            return action_of(verdict, &name);
        }
        if std::thread::current().id() == js_thread {
            return PolicyAction::Deny(format!(
                "policy hook {name} was reached inside a synchronous call on the JS thread; \
                 denying (fail closed)"
            ));
        }
        let (tx, rx) = mpsc::sync_channel::<PolicyAction>(1);
        let hook_name = name.clone();
        let status = bridge.call_with_return_value(
            args,
            ThreadsafeFunctionCallMode::Blocking,
            move |verdict: napi::Result<HookVerdict>, _env| {
                let _ = tx.send(action_of(verdict, &hook_name));
                Ok(())
            },
        );
        if status != Status::Ok {
            return PolicyAction::Deny(format!(
                "policy hook {name} cannot be called ({status}); denying (fail closed)"
            ));
        }
        rx.recv().unwrap_or_else(|_| {
            PolicyAction::Deny(format!(
                "policy hook {name} gave no verdict; denying (fail closed)"
            ))
        })
    }
}

/// A handle on one database's hook chain.
#[napi]
pub struct NativePolicyEngine {
    engine: switchboard::PolicyEngine,
}

#[napi]
impl NativePolicyEngine {
    #[napi(constructor)]
    pub fn new(db: &NativeDatabase) -> napi::Result<Self> {
        Ok(NativePolicyEngine {
            // A JS hook waits for the JS thread: its commits run off the workers.
            engine: switchboard::PolicyEngine::new(&db.handle()?).with_blocking_hooks(),
        })
    }

    /// Adds `hook(key, value, context)` at `point` (`beforeWrite`,
    /// `afterWrite`, `beforeDelete`, `afterDelete`, `beforeRead`,
    /// `afterRead`) for keys matching the glob `scope`. `name` is for
    /// denial reasons.
    #[napi]
    pub fn add_hook(
        &self,
        point: String,
        scope: String,
        name: String,
        #[napi(
            ts_arg_type = "(key: string, value: Buffer, context: Record<string, string>) => HookVerdict"
        )]
        hook: Function<HookArgs, HookVerdict>,
    ) -> napi::Result<()> {
        let bridge: HookBridge = hook
            .build_threadsafe_function()
            .weak::<true>()
            .callee_handled::<false>()
            .build()?;
        let f = js_hook(name, bridge, hook.create_ref()?);
        let e = &self.engine;
        match point.as_str() {
            "beforeWrite" => e.before_write(&scope, f),
            "afterWrite" => e.after_write(&scope, f),
            "beforeDelete" => e.before_delete(&scope, f),
            "afterDelete" => e.after_delete(&scope, f),
            "beforeRead" => e.before_read(&scope, f),
            "afterRead" => e.after_read(&scope, f),
            other => return Err(invalid(format!("unknown hook point {other:?}"))),
        }
        .js()
    }

    /// Compiles a Rego module judging puts and deletes under `scope`.
    /// Synchronous: compiling touches neither the store nor an agent, and
    /// the module judges the very next write.
    #[napi]
    pub fn add_rego(&self, scope: String, source: String) -> napi::Result<()> {
        self.engine.add_rego(&scope, &source).js()
    }

    /// Loads every `*.rego` file of `path` (scopes from `# scope:` comments);
    /// returns the module names.
    #[napi]
    pub fn load_dir(&self, path: String) -> napi::Result<Vec<String>> {
        self.engine.load_dir(std::path::Path::new(&path)).js()
    }

    /// `[module name, scope]` of each loaded Rego module scope.
    #[napi]
    pub fn rego_modules(&self) -> Vec<Vec<String>> {
        self.engine
            .rego_modules()
            .into_iter()
            .map(|(name, scope)| vec![name, scope])
            .collect()
    }

    /// At most `max` operations `op` (`put`, `delete`, `get`, `dispatch`)
    /// per `window_seconds`, counted `per` `global`, `agent`, `session` or `tool`.
    #[napi]
    pub fn add_rate_limit(
        &self,
        op: String,
        max: u32,
        window_seconds: f64,
        per: String,
    ) -> napi::Result<()> {
        let op = match op.as_str() {
            "put" => RateLimitOp::Put,
            "delete" => RateLimitOp::Delete,
            "get" => RateLimitOp::Get,
            "dispatch" => RateLimitOp::Dispatch,
            other => {
                return Err(invalid(format!(
                    "unknown operation {other:?}: put, delete, get or dispatch"
                )))
            }
        };
        let scope = match per.as_str() {
            "global" => RateLimitScope::Global,
            "agent" => RateLimitScope::PerAgent,
            "session" => RateLimitScope::PerSession,
            "tool" => RateLimitScope::PerTool,
            other => {
                return Err(invalid(format!(
                    "unknown scope {other:?}: global, agent, session or tool"
                )))
            }
        };
        if !(window_seconds.is_finite() && window_seconds > 0.0) {
            return Err(invalid("windowSeconds must be a positive number"));
        }
        self.engine
            .add_rate_limit_per(op, max, Duration::from_secs_f64(window_seconds), scope)
            .js()
    }
}
