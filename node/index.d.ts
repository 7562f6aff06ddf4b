// Types of the `switchboard` package (index.js). The native addon's own
// declarations are generated into native.d.ts by scripts/build.js; the
// result and option shapes below are those declarations, re-exported.
import type {
  AgentOptions as NativeAgentOptions,
  HealthCheckOptions,
  InvocationResult as NativeInvocationResult,
} from './native'

export type { HealthCheckOptions }

/** A tool category: a built-in one or any custom name (`[A-Za-z0-9._:-]`, 1-128). */
export type ToolCategory = string
export declare const ToolCategory: {
  readonly CODE: 'code'
  readonly SEARCH: 'search'
  readonly DATABASE: 'database'
  readonly WEB: 'web'
  readonly FILE: 'file'
  readonly GIT: 'git'
  readonly SHELL: 'shell'
  readonly EMBEDDING: 'embedding'
  /** A category of your own. */
  custom(name: string): ToolCategory
}

export type RoutingStrategy = 'round_robin' | 'random' | 'least_loaded' | 'priority' | 'sticky' | 'fastest'
export declare const RoutingStrategy: {
  readonly ROUND_ROBIN: 'round_robin'
  readonly RANDOM: 'random'
  readonly LEAST_LOADED: 'least_loaded'
  readonly PRIORITY: 'priority'
  readonly STICKY: 'sticky'
  readonly FASTEST: 'fastest'
}

/** What a policy hook returns. */
export type PolicyAction =
  | { readonly kind: 'allow' }
  | { readonly kind: 'deny'; readonly reason: string }
  | { readonly kind: 'modify'; readonly value: Buffer }
  | { readonly kind: 'log'; readonly reason: string }
export declare const PolicyAction: {
  readonly ALLOW: PolicyAction
  /** Deny with the reason "denied by policy". */
  readonly DENY: PolicyAction
  deny(reason: string): PolicyAction
  /** Store (before a write), or hand the reader (after a read), this value instead. */
  modify(value: Buffer | Uint8Array | string): PolicyAction
  /** Allow, and keep the note in the decision log. */
  log(note: string): PolicyAction
}

/** The policy context: who is acting (`agent_id`, `tool`, `category`, `session_id`, ...). */
export type PolicyContext = Record<string, string>
export type Hook = (key: string, value: Buffer, context: PolicyContext) => PolicyAction

export type Value = Buffer | Uint8Array | string

export interface ScanOptions {
  /** The context read hooks see. */
  context?: PolicyContext
  /** Start after this key (exclusive). */
  after?: string
  /** Keys read per trip to RocksDB (default 256). */
  pageSize?: number
}

export declare class Database {
  private constructor()
  /** Opens (creating if needed) the store at `path`. */
  static open(path: string): Promise<Database>
  readonly path: string
  put(key: string, value: Value, context?: PolicyContext): Promise<void>
  get(key: string, context?: PolicyContext): Promise<Buffer | null>
  delete(key: string, context?: PolicyContext): Promise<void>
  /** `[key, value]` under `prefix` in key order, read a page at a time. */
  scan(prefix: string, options?: ScanOptions): AsyncGenerator<[string, Buffer], void, undefined>
  transaction(): Transaction
  /** Drops this handle; RocksDB closes once no dispatcher uses it either. */
  close(): Promise<void>
}
export declare const Connection: typeof Database
export type Connection = Database

export declare class Transaction {
  private constructor()
  put(key: string, value: Value, context?: PolicyContext): void
  delete(key: string, context?: PolicyContext): void
  /** The value `key` will have once this commits. */
  get(key: string): Promise<Buffer | null>
  readonly size: number
  /** Stores every staged write, or none (the first refusal is thrown). */
  commit(): Promise<void>
  discard(): void
}

export type AgentOptions = NativeAgentOptions
export type LocalAgentOptions = Omit<AgentOptions, 'endpoint' | 'healthUrl'>

/** An in-process agent: returns the tool's output (JSON), or a Promise of it. */
export type LocalHandler = (tool: string, input: any, call: { signal: AbortSignal }) => unknown

export interface InvokeOptions {
  strategy?: RoutingStrategy
  /** Calls with the same session id go to the same agent while it stays available. */
  sessionId?: string
  /** Agent calls to make at most, failovers included (default 3). */
  maxAttempts?: number
  /** Aborting cancels the call; it is recorded `cancelled`. */
  signal?: AbortSignal
}

export interface InvocationResult extends NativeInvocationResult {}

export interface AgentMetrics {
  total: number
  successes: number
  failures: number
  successRate: number
  avgLatencyMs: number
  p50LatencyMs: number
  p99LatencyMs: number
  activeTasks: number
  healthy: boolean
  cancelled: number
  outcomeWriteFailures: number
  panicCalls: number
}

export declare class ToolDispatcher {
  /** A dispatcher over `db`; loads persisted registrations. */
  constructor(db: Database)
  registerAgent(agentId: string, options: AgentOptions): Promise<void>
  registerLocalAgent(agentId: string, handler: LocalHandler, options: LocalAgentOptions): Promise<void>
  unregisterAgent(agentId: string): Promise<void>
  listAgents(): Promise<string[]>
  getMetrics(): Promise<Record<string, AgentMetrics>>
  enableHealthChecks(options?: HealthCheckOptions): void
  disableHealthChecks(): void
  invoke(tool: string, category: ToolCategory, input?: unknown, options?: InvokeOptions): Promise<InvocationResult>
  selectAgent(category: ToolCategory, options?: Omit<InvokeOptions, 'signal' | 'maxAttempts'>): Promise<string | null>
}

export interface RateLimitOptions {
  windowSeconds?: number
  per?: 'global' | 'agent' | 'session' | 'tool'
}

export declare class PolicyEngine {
  constructor(db: Database)
  beforeWrite<H extends Hook>(scope: string, hook: H): H
  afterWrite<H extends Hook>(scope: string, hook: H): H
  beforeDelete<H extends Hook>(scope: string, hook: H): H
  afterDelete<H extends Hook>(scope: string, hook: H): H
  beforeRead<H extends Hook>(scope: string, hook: H): H
  afterRead<H extends Hook>(scope: string, hook: H): H
  addRego(scope: string, source: string): void
  loadDir(dir: string): string[]
  regoModules(): Array<[name: string, scope: string]>
  addRateLimit(op: 'put' | 'delete' | 'get' | 'dispatch', max: number, options?: RateLimitOptions): void
}

/** Thrown by a local handler: the tool's own failure (no failover). */
export declare class ToolError extends Error {
  constructor(message: string)
}

export type ErrorCode =
  | 'InvalidInput'
  | 'PolicyDenied'
  | 'RateLimited'
  | 'PolicyLoad'
  | 'NoAgentAvailable'
  | 'ToolFailed'
  | 'AgentFailed'
  | 'Timeout'
  | 'UnknownAgent'
  | 'Conflict'
  | 'Storage'
  | 'Unavailable'
  | 'Internal'
  | 'Cancelled'

export declare class SwitchboardError extends Error {
  readonly code: ErrorCode
}
export declare class InvalidInputError extends SwitchboardError {
  readonly code: 'InvalidInput'
}
export declare class PolicyDeniedError extends SwitchboardError {
  readonly code: 'PolicyDenied'
  readonly key: string
  readonly reason: string
}
export declare class RateLimitedError extends SwitchboardError {
  readonly code: 'RateLimited'
  readonly limit: string
  readonly retryAfterSeconds: number
}
export declare class PolicyLoadError extends SwitchboardError {
  readonly code: 'PolicyLoad'
  /** The module's name (`name` is the error class's, as on every Error). */
  readonly policyName: string
  readonly reason: string
}
export declare class NoAgentAvailableError extends SwitchboardError {
  readonly code: 'NoAgentAvailable'
  readonly category: string
  readonly reason: string
}
export declare class ToolFailedError extends SwitchboardError {
  readonly code: 'ToolFailed'
  readonly agentId: string
  readonly toolMessage: string
}
export declare class AgentFailedError extends SwitchboardError {
  readonly code: 'AgentFailed'
  readonly agentId: string
  readonly agentMessage: string
}
export declare class AgentTimeoutError extends SwitchboardError {
  readonly code: 'Timeout'
  readonly agentId: string
  readonly timeoutSeconds: number
}
export declare class UnknownAgentError extends SwitchboardError {
  readonly code: 'UnknownAgent'
  readonly agentId: string
}
export declare class ConflictError extends SwitchboardError {
  readonly code: 'Conflict'
  readonly key: string
}
export declare class StorageError extends SwitchboardError {
  readonly code: 'Storage'
}
export declare class UnavailableError extends SwitchboardError {
  readonly code: 'Unavailable'
}
export declare class InternalError extends SwitchboardError {
  readonly code: 'Internal'
}
export declare class CancelledError extends SwitchboardError {
  readonly code: 'Cancelled'
}

export declare const version: string
