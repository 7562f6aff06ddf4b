// The `switchboard` package: Switchboard's Rust core in-process. The native
// addon (./switchboard.node, built from src/ by scripts/build.js) holds the
// store, hook chain, router and dispatcher; this file is the JavaScript half
// of the API:
//
// - categories, strategies and policy actions as plain values;
// - `Error` subclasses with a stable `code`, made from the addon's errors;
// - the bridges that run JS handlers and hooks for the addon, written so
//   that nothing thrown in user code reaches the addon;
// - `db.scan` as an async iterator over pages, `AbortSignal` for `invoke`.
'use strict'

const native = loadNative()

function loadNative() {
  try {
    return require('./switchboard.node')
  } catch (e) {
    if (e && e.code === 'MODULE_NOT_FOUND') {
      throw new Error(
        'switchboard: the native addon is not built. From the repository, run `make node` ' +
          '(or `npm install ./node`, which builds it).',
      )
    }
    throw e
  }
}

// ---------------------------------------------------------------- values

/** The built-in tool categories; any other valid name is a custom one. */
const ToolCategory = Object.freeze({
  CODE: 'code',
  SEARCH: 'search',
  DATABASE: 'database',
  WEB: 'web',
  FILE: 'file',
  GIT: 'git',
  SHELL: 'shell',
  EMBEDDING: 'embedding',
  /** A category of your own (`[A-Za-z0-9._:-]`, 1-128 characters). */
  custom(name) {
    if (typeof name !== 'string') throw new TypeError('a category name is a string')
    return name
  },
})

/** How to choose among the healthy agents of a category (default round robin). */
const RoutingStrategy = Object.freeze({
  ROUND_ROBIN: 'round_robin',
  RANDOM: 'random',
  LEAST_LOADED: 'least_loaded',
  PRIORITY: 'priority',
  STICKY: 'sticky',
  FASTEST: 'fastest',
})

const DEFAULT_DENY_REASON = 'denied by policy'

/** What a policy hook decides. */
const PolicyAction = Object.freeze({
  ALLOW: Object.freeze({ kind: 'allow' }),
  DENY: Object.freeze({ kind: 'deny', reason: DEFAULT_DENY_REASON }),
  /** Deny with a reason. */
  deny(reason) {
    return Object.freeze({ kind: 'deny', reason: String(reason) })
  },
  /** Store (before a write) or hand the reader (after a read) this value instead. */
  modify(value) {
    return Object.freeze({ kind: 'modify', value: toBuffer(value, 'PolicyAction.modify') })
  },
  /** Allow, and keep `note` in the decision log. */
  log(note) {
    return Object.freeze({ kind: 'log', reason: String(note) })
  },
})

function toBuffer(value, what) {
  if (Buffer.isBuffer(value)) return value
  if (typeof value === 'string') return Buffer.from(value, 'utf8')
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength)
  throw new TypeError(`${what}: a value is a Buffer, Uint8Array or string, not ${describe(value)}`)
}

function describe(v) {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v
}

// ---------------------------------------------------------------- errors

/** Base class of every error Switchboard raises; `code` says which. */
class SwitchboardError extends Error {
  constructor(message, code, fields) {
    super(message)
    this.name = new.target.name
    this.code = code
    if (fields) Object.assign(this, fields)
  }
}

function errorClass(name, code, doc) {
  const cls = {
    [name]: class extends SwitchboardError {
      constructor(message, fields) {
        super(message, code, fields)
      }
    },
  }[name]
  cls.code = code
  cls.description = doc
  return cls
}

const InvalidInputError = errorClass('InvalidInputError', 'InvalidInput', 'malformed input; nothing was read or written')
const PolicyDeniedError = errorClass('PolicyDeniedError', 'PolicyDenied', 'a hook or Rego module refused (key, reason)')
const RateLimitedError = errorClass('RateLimitedError', 'RateLimited', 'a rate limit is used up (limit, retryAfterSeconds)')
const PolicyLoadError = errorClass('PolicyLoadError', 'PolicyLoad', 'a Rego module could not be loaded (name, reason)')
const NoAgentAvailableError = errorClass('NoAgentAvailableError', 'NoAgentAvailable', 'no healthy agent serves the category, or all were tried (category, reason)')
const ToolFailedError = errorClass('ToolFailedError', 'ToolFailed', "the tool reported its own failure (agentId, toolMessage); not retried")
const AgentFailedError = errorClass('AgentFailedError', 'AgentFailed', 'the agent could not answer (agentId, agentMessage)')
const AgentTimeoutError = errorClass('AgentTimeoutError', 'Timeout', 'the agent did not answer in time (agentId, timeoutSeconds)')
const UnknownAgentError = errorClass('UnknownAgentError', 'UnknownAgent', 'no agent with this id is registered (agentId)')
const ConflictError = errorClass('ConflictError', 'Conflict', 'a transaction lost a race on a key (key); retry it')
const StorageError = errorClass('StorageError', 'Storage', 'RocksDB failed, or a stored value does not decode')
const UnavailableError = errorClass('UnavailableError', 'Unavailable', 'a shared store (cluster mode) cannot be reached')
const InternalError = errorClass('InternalError', 'Internal', 'something outside the caller’s control failed')
const CancelledError = errorClass('CancelledError', 'Cancelled', "the call was cancelled by its AbortSignal; it is recorded 'cancelled'")

const BY_CODE = new Map(
  [
    InvalidInputError, PolicyDeniedError, RateLimitedError, PolicyLoadError, NoAgentAvailableError,
    ToolFailedError, AgentFailedError, AgentTimeoutError, UnknownAgentError, ConflictError,
    StorageError, UnavailableError, InternalError, CancelledError,
  ].map((c) => [c.code, c]),
)

const MARKER = '\u0001switchboard:'

/** The documented error for an error the addon threw. */
function fromNative(e) {
  if (e && typeof e.message === 'string' && e.message.startsWith(MARKER)) {
    let payload
    try {
      payload = JSON.parse(e.message.slice(MARKER.length))
    } catch {
      return new InternalError(e.message.slice(MARKER.length))
    }
    const cls = BY_CODE.get(payload.code) || InternalError
    return new cls(payload.message, payload.fields)
  }
  // napi-rs refusing an argument of the wrong type.
  if (e && (e.code === 'InvalidArg' || e.code === 'NumberExpected' || e.code === 'StringExpected' || e.code === 'ObjectExpected')) {
    const t = new TypeError(e.message)
    t.code = e.code
    return t
  }
  return e
}

/** Calls `fn` and throws its errors as the documented classes. */
function sync(fn) {
  try {
    return fn()
  } catch (e) {
    throw fromNative(e)
  }
}

function rethrowNative(e) {
  throw fromNative(e)
}

async function later(promiseFn) {
  try {
    return await promiseFn()
  } catch (e) {
    throw fromNative(e)
  }
}

/**
 * Thrown by a local handler for the tool's own failure: the call ends with
 * `ToolFailedError` and no other agent is tried. Anything else a handler
 * throws is the agent's failure, and the call fails over.
 */
class ToolError extends Error {
  constructor(message) {
    super(message)
    this.name = 'ToolError'
  }
}

// ---------------------------------------------------------------- database

const CLOSED = () => new InvalidInputError('invalid input: this database has been closed')

function context(ctx) {
  if (ctx == null) return undefined
  const out = {}
  for (const [k, v] of Object.entries(ctx)) out[k] = String(v)
  return out
}

/** An open store; every write passes the database's policy hooks. */
class Database {
  /** @internal */
  constructor(nativeDb) {
    if (!nativeDb || !(nativeDb instanceof native.NativeDatabase)) {
      throw new TypeError('use `await Database.open(path)`')
    }
    this._native = nativeDb
  }

  /** Opens (creating if needed) the store at `path`. */
  static async open(path) {
    if (typeof path !== 'string') throw new TypeError('Database.open(path): path is a string')
    return new Database(await later(() => native.openDatabase(path)))
  }

  /** Where the store lives on disk. */
  get path() {
    return this._native.path
  }

  put(key, value, ctx) {
    return later(() => this._native.put(key, toBuffer(value, 'put'), context(ctx)))
  }

  get(key, ctx) {
    return later(() => this._native.get(key, context(ctx)))
  }

  delete(key, ctx) {
    return later(() => this._native.delete(key, context(ctx)))
  }

  /**
   * Every `[key, value]` under `prefix` in key order, read a page at a time.
   * `options`: `context` (for read hooks), `after` (start after this key),
   * `pageSize` (keys per read, default 256).
   */
  async *scan(prefix, options = {}) {
    const ctx = context(options.context)
    const pageSize = options.pageSize ?? 256
    let after = options.after ?? null
    for (;;) {
      const page = await later(() => this._native.scanPage(prefix, after, pageSize, ctx))
      for (const { key, value } of page) yield [key, value]
      if (page.length < pageSize) return
      after = page[page.length - 1].key
    }
  }

  /** Staged writes that commit together (`await tx.commit()`). */
  transaction() {
    return new Transaction(this)
  }

  /** Drops this handle; RocksDB closes once no dispatcher uses it either. */
  close() {
    return later(() => this._native.close())
  }
}

/** Staged puts and deletes; `commit()` stores all or none (any Deny refuses all). */
class Transaction {
  constructor(db) {
    this._db = db
    this._ops = []
    this._done = false
  }

  _check() {
    if (this._done) throw new InvalidInputError('invalid input: this transaction has already been committed or discarded')
  }

  put(key, value, ctx) {
    this._check()
    this._ops.push({ key: String(key), value: toBuffer(value, 'put'), context: context(ctx) })
  }

  delete(key, ctx) {
    this._check()
    this._ops.push({ key: String(key), context: context(ctx) })
  }

  /** The value `key` will have once this commits. */
  async get(key) {
    this._check()
    for (let i = this._ops.length - 1; i >= 0; i--) {
      if (this._ops[i].key === key) return this._ops[i].value ?? null
    }
    return this._db.get(key)
  }

  get size() {
    return this._done ? 0 : this._ops.length
  }

  async commit() {
    this._check()
    this._done = true
    await later(() => this._db._native.commit(this._ops))
  }

  discard() {
    this._done = true
    this._ops = []
  }
}

// ---------------------------------------------------------------- dispatcher

const METRIC_NAMES = {
  success_rate: 'successRate',
  avg_latency_ms: 'avgLatencyMs',
  p50_latency_ms: 'p50LatencyMs',
  p99_latency_ms: 'p99LatencyMs',
  active_tasks: 'activeTasks',
  outcome_write_failures: 'outcomeWriteFailures',
  panic_calls: 'panicCalls',
}

function camel(metrics) {
  const out = {}
  for (const [agent, m] of Object.entries(metrics)) {
    const o = {}
    for (const [k, v] of Object.entries(m)) o[METRIC_NAMES[k] ?? k.replace(/_([a-z])/g, (_, c) => c.toUpperCase())] = v
    out[agent] = o
  }
  return out
}

function agentOptions(options, what) {
  if (options == null || typeof options !== 'object') throw new TypeError(`${what}: options with \`tools\` are required`)
  if (!Array.isArray(options.tools)) throw new TypeError(`${what}: \`tools\` is an array of categories`)
  return {
    tools: options.tools.map(String),
    endpoint: options.endpoint,
    priority: options.priority,
    healthUrl: options.healthUrl,
    timeoutSeconds: options.timeoutSeconds,
    maxConcurrency: options.maxConcurrency,
  }
}

function handlerMessage(e) {
  if (e instanceof Error) return e.message || e.name
  return String(e)
}

/**
 * The bridge the addon calls for a local agent: `call` runs the handler
 * (its Promise awaited) and settles the Rust side; `cancel` aborts the
 * signal the handler was given. Never throws.
 */
function handlerBridge(handler) {
  const running = new Map()
  return (op, id, tool, input) => {
    if (op === 'cancel') {
      const ac = running.get(id)
      if (ac) {
        running.delete(id)
        ac.abort(new CancelledError('the dispatch stopped waiting for this handler'))
      }
      return
    }
    const ac = new AbortController()
    running.set(id, ac)
    let pending
    try {
      pending = Promise.resolve(handler(tool, input, { signal: ac.signal }))
    } catch (e) {
      pending = Promise.reject(e)
    }
    pending.then(
      (output) => {
        running.delete(id)
        if (ac.signal.aborted) return
        let json
        try {
          // What the handler returned must survive JSON (as the wire does).
          json = output === undefined ? null : JSON.parse(JSON.stringify(output))
        } catch (e) {
          native.settleCall(id, false, null, `the handler returned something that is not JSON: ${handlerMessage(e)}`, false)
          return
        }
        native.settleCall(id, true, json, null, false)
      },
      (e) => {
        running.delete(id)
        if (ac.signal.aborted) return
        native.settleCall(id, false, null, handlerMessage(e), !(e instanceof ToolError))
      },
    )
  }
}

/** Routes tool invocations to agents; registrations persist in the store. */
class ToolDispatcher {
  /** A dispatcher over `db`; loads persisted registrations. */
  constructor(db) {
    if (!(db instanceof Database)) throw new TypeError('new ToolDispatcher(db): db is a Database')
    if (db._native.closed) throw CLOSED()
    this._native = sync(() => new native.NativeDispatcher(db._native))
  }

  /** Registers an HTTP agent (an existing id is replaced). */
  registerAgent(agentId, options) {
    return later(async () => this._native.registerAgent(agentId, agentOptions(options, 'registerAgent')))
  }

  /**
   * Registers an in-process agent: `handler(tool, input, { signal })`
   * returns the output (or a Promise of it). Throwing `ToolError` is the
   * tool's failure; throwing anything else is the agent's (failover).
   */
  registerLocalAgent(agentId, handler, options) {
    if (typeof handler !== 'function') {
      return Promise.reject(new TypeError('registerLocalAgent: handler is a function (tool, input) => output'))
    }
    return later(async () =>
      this._native.registerLocalAgent(agentId, handlerBridge(handler), agentOptions(options, 'registerLocalAgent')),
    )
  }

  unregisterAgent(agentId) {
    return later(() => this._native.unregisterAgent(agentId))
  }

  /** Every registered agent id, sorted. */
  listAgents() {
    return later(() => this._native.listAgents())
  }

  /** `{ [agentId]: { total, successes, failures, successRate, avgLatencyMs, ... } }` */
  async getMetrics() {
    return camel(await later(() => this._native.getMetrics()))
  }

  /** Starts (or reconfigures) background health checks. */
  enableHealthChecks(options = {}) {
    sync(() => this._native.enableHealthChecks(options))
  }

  disableHealthChecks() {
    this._native.disableHealthChecks()
  }

  /**
   * Routes one call: `{ invocationId, agentId, output, attempts, latencyMs }`.
   * `options`: `strategy`, `sessionId`, `maxAttempts`, `signal` (an
   * AbortSignal: aborting cancels the call, recorded `cancelled`).
   */
  invoke(tool, category, input = {}, options = {}) {
    const { signal, strategy, sessionId, maxAttempts } = options ?? {}
    if (signal) return invokeCancellable(this._native, tool, category, input, { strategy, sessionId, maxAttempts }, signal)
    // Without a signal the call starts here and is answered at once when it
    // does not have to wait (see `invokeNow` in src/dispatcher.rs). This
    // path is the one a tight loop of calls takes, so it builds no routing
    // object when there is nothing to route by and no async frame of its own.
    const routing =
      strategy === undefined && sessionId === undefined && maxAttempts === undefined
        ? undefined
        : { strategy, sessionId, maxAttempts }
    let answer
    try {
      answer = this._native.invokeNow(tool, category, input, routing)
    } catch (e) {
      return Promise.reject(fromNative(e))
    }
    return answer instanceof Promise ? answer.catch(rethrowNative) : Promise.resolve(answer)
  }

  /** The agent a call would go to now, without calling it (null if none). */
  selectAgent(category, options = {}) {
    const { strategy, sessionId, maxAttempts } = options ?? {}
    return later(() => this._native.selectAgent(category, { strategy, sessionId, maxAttempts }))
  }
}

// A call an AbortSignal can cancel: it runs on the runtime with a cancel
// token the signal fires.
async function invokeCancellable(dispatcher, tool, category, input, routing, signal) {
  if (signal.aborted) throw cancelled(tool, signal)
  const token = native.cancelToken()
  const onAbort = () => native.cancel(token)
  signal.addEventListener('abort', onAbort, { once: true })
  try {
    return await dispatcher.invoke(tool, category, input, routing, token)
  } catch (e) {
    const err = fromNative(e)
    if (err instanceof CancelledError) err.cause = signal.reason
    throw err
  } finally {
    signal.removeEventListener('abort', onAbort)
    native.releaseCancelToken(token)
  }
}

function cancelled(tool, signal) {
  const e = new CancelledError(`the call of ${tool} was cancelled by its AbortSignal before it started`)
  e.cause = signal.reason
  return e
}

// ---------------------------------------------------------------- policy

function hookName(fn) {
  return fn.name ? fn.name : '<anonymous>'
}

function errorText(e) {
  if (e instanceof Error) return `${e.name}: ${e.message}`
  return String(e)
}

/** The verdict of a hook's return value; anything unreadable denies. */
function verdict(ret, name) {
  if (ret && typeof ret === 'object') {
    switch (ret.kind) {
      case 'allow':
        return { kind: 'allow' }
      case 'deny':
        return { kind: 'deny', reason: ret.reason == null ? DEFAULT_DENY_REASON : String(ret.reason) }
      case 'log':
        return { kind: 'log', reason: String(ret.reason ?? '') }
      case 'modify':
        if (Buffer.isBuffer(ret.value)) return { kind: 'modify', value: ret.value }
        break
    }
  }
  if (ret && typeof ret.then === 'function') {
    // A hook decides synchronously: the write waits on it.
    Promise.resolve(ret).catch(() => {})
    return { kind: 'deny', reason: `policy hook ${name} returned a Promise; hooks are synchronous; denying (fail closed)` }
  }
  return { kind: 'deny', reason: `policy hook ${name} returned ${describe(ret)}, not a PolicyAction; denying (fail closed)` }
}

/** The function the addon calls for a hook: never throws. */
function hookBridge(hook) {
  const name = hookName(hook)
  return (key, value, ctx) => {
    try {
      return verdict(hook(key, value, ctx), name)
    } catch (e) {
      return { kind: 'deny', reason: `policy hook ${name} threw ${errorText(e)}; denying (fail closed)` }
    }
  }
}

/** A handle on a database's hook chain (all engines of a database share it). */
class PolicyEngine {
  constructor(db) {
    if (!(db instanceof Database)) throw new TypeError('new PolicyEngine(db): db is a Database')
    this._native = sync(() => new native.NativePolicyEngine(db._native))
  }

  _hook(point, scope, hook) {
    if (typeof hook !== 'function') throw new TypeError(`${point}(scope, hook): hook is a function`)
    sync(() => this._native.addHook(point, scope, hookName(hook), hookBridge(hook)))
    return hook
  }

  /** Before every put under the glob `scope`: may allow, deny or rewrite. */
  beforeWrite(scope, hook) {
    return this._hook('beforeWrite', scope, hook)
  }

  /** After every committed put under `scope` (cannot undo it). */
  afterWrite(scope, hook) {
    return this._hook('afterWrite', scope, hook)
  }

  /** Before every delete under `scope` (the value is empty). */
  beforeDelete(scope, hook) {
    return this._hook('beforeDelete', scope, hook)
  }

  /** After every committed delete under `scope`. */
  afterDelete(scope, hook) {
    return this._hook('afterDelete', scope, hook)
  }

  /** Before every get (and each key of a scan) under `scope`: a deny refuses the read. */
  beforeRead(scope, hook) {
    return this._hook('beforeRead', scope, hook)
  }

  /** On every value read under `scope`: modify redacts, deny hides. */
  afterRead(scope, hook) {
    return this._hook('afterRead', scope, hook)
  }

  /** Compiles a Rego module judging puts and deletes under `scope`. */
  addRego(scope, source) {
    sync(() => this._native.addRego(scope, source))
  }

  /** Loads every `*.rego` file of `dir` (scopes from `# scope:` comments); returns the names. */
  loadDir(dir) {
    return sync(() => this._native.loadDir(String(dir)))
  }

  /** `[moduleName, scope]` of each loaded Rego module scope. */
  regoModules() {
    return this._native.regoModules().map(([name, scope]) => [name, scope])
  }

  /** At most `max` operations `op` per window, counted `per` global/agent/session/tool. */
  addRateLimit(op, max, options = {}) {
    const { windowSeconds = 60, per = 'global' } = options
    sync(() => this._native.addRateLimit(op, max, windowSeconds, per))
  }
}

/** The documentation's other name for a database handle. */
const Connection = Database

module.exports = {
  Database,
  Connection,
  Transaction,
  ToolDispatcher,
  PolicyEngine,
  ToolCategory,
  RoutingStrategy,
  PolicyAction,
  ToolError,
  SwitchboardError,
  InvalidInputError,
  PolicyDeniedError,
  RateLimitedError,
  PolicyLoadError,
  NoAgentAvailableError,
  ToolFailedError,
  AgentFailedError,
  AgentTimeoutError,
  UnknownAgentError,
  ConflictError,
  StorageError,
  UnavailableError,
  InternalError,
  CancelledError,
  version: native.version(),
  /** @internal for bench/: Rust-side helpers on a dispatcher. */
  _native: native,
}
