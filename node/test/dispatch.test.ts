// Dispatch from Node: HTTP agents (node:http on 127.0.0.1) and JS handlers,
// failover, timeouts, cancellation by AbortSignal, 1,000 concurrent invokes.
import { strict as assert } from 'node:assert'
import { after, before, test } from 'node:test'
import {
  AgentFailedError,
  AgentTimeoutError,
  CancelledError,
  Database,
  NoAgentAvailableError,
  RoutingStrategy,
  SwitchboardError,
  ToolCategory,
  ToolDispatcher,
  ToolError,
  ToolFailedError,
  UnknownAgentError,
} from 'switchboard'
import { startAgent, tempDir, type Agent } from './helpers'

const tmp = tempDir()
let db: Database
let dispatcher: ToolDispatcher
const agents: Agent[] = []

before(async () => {
  db = await Database.open(tmp.dir)
  dispatcher = new ToolDispatcher(db)
})
after(async () => {
  dispatcher.disableHealthChecks()
  for (const a of agents) await a.close()
  await db.close()
  tmp.cleanup()
})

async function records(category: string, tool: string): Promise<any[]> {
  const out: any[] = []
  for await (const [, value] of db.scan(`tools/${category}/${tool}/`)) out.push(JSON.parse(value.toString()))
  return out
}

test('an HTTP agent gets the call and its answer is the output', async () => {
  const agent = await startAgent((c) => ({ ran: c.tool, got: c.input }))
  agents.push(agent)
  await dispatcher.registerAgent('http_agent', { tools: [ToolCategory.custom('httpcat')], endpoint: agent.url })
  const r = await dispatcher.invoke('echo', 'httpcat', { n: 1 }, { sessionId: 's1' })
  assert.equal(r.agentId, 'http_agent')
  assert.deepEqual(r.output, { ran: 'echo', got: { n: 1 } })
  assert.equal(r.attempts, 1)
  assert.ok(r.latencyMs > 0)
  assert.equal(agent.calls.length, 1)
  assert.equal(agent.calls[0].invocation_id, r.invocationId)
  assert.equal(agent.calls[0].session_id, 's1')
  const [rec] = await records('httpcat', 'echo')
  assert.equal(rec.status, 'succeeded')
})

test('a JS handler that throws is its agent failing: the call fails over', async () => {
  await dispatcher.registerLocalAgent('flaky', () => { throw new Error('flaky is down') }, { tools: ['failover'], priority: 10 })
  await dispatcher.registerLocalAgent('steady', async (tool: string) => ({ by: 'steady', tool }), { tools: ['failover'], priority: 1 })
  const r = await dispatcher.invoke('job', 'failover', {}, { strategy: RoutingStrategy.PRIORITY })
  assert.equal(r.agentId, 'steady')
  assert.equal(r.attempts, 2)
  const metrics = await dispatcher.getMetrics()
  assert.equal(metrics.flaky.failures, 1)
  assert.equal(metrics.steady.successes, 1)
})

test('an async handler that rejects is an AgentFailed once no agent is left', async () => {
  await dispatcher.registerLocalAgent('broken', async () => { throw new Error('no luck') }, { tools: ['alone'] })
  await assert.rejects(dispatcher.invoke('job', 'alone', {}, { maxAttempts: 1 }), (e: any) => {
    assert.ok(e instanceof AgentFailedError && e instanceof SwitchboardError)
    assert.equal(e.code, 'AgentFailed')
    assert.equal(e.agentId, 'broken')
    assert.match(e.agentMessage, /no luck/)
    return true
  })
})

test('ToolError is the tool failing: final, no failover', async () => {
  await dispatcher.registerLocalAgent('strict', () => { throw new ToolError('bad input') }, { tools: ['final'], priority: 5 })
  await dispatcher.registerLocalAgent('spare', () => ({}), { tools: ['final'], priority: 1 })
  await assert.rejects(dispatcher.invoke('job', 'final', {}, { strategy: RoutingStrategy.PRIORITY }), (e: any) => {
    assert.ok(e instanceof ToolFailedError)
    assert.equal(e.code, 'ToolFailed')
    assert.equal(e.toolMessage, 'bad input')
    return true
  })
  assert.equal((await dispatcher.getMetrics()).spare.total, 0)
})

test('no agent, and an unknown agent, have their codes', async () => {
  await assert.rejects(dispatcher.invoke('job', 'nobody', {}), (e: any) => e instanceof NoAgentAvailableError && e.code === 'NoAgentAvailable' && e.category === 'nobody')
  await assert.rejects(dispatcher.unregisterAgent('ghost'), (e: any) => e instanceof UnknownAgentError && e.agentId === 'ghost')
})

test('a handler slower than its timeout is a Timeout, and its signal is aborted', async () => {
  let aborted = false
  await dispatcher.registerLocalAgent(
    'sleepy',
    (_tool: string, _input: any, { signal }: { signal: AbortSignal }) =>
      new Promise((resolve) => {
        const t = setTimeout(() => resolve({ late: true }), 5_000)
        signal.addEventListener('abort', () => {
          aborted = true
          clearTimeout(t)
          resolve(null)
        })
      }),
    { tools: ['slow'], timeoutSeconds: 0.2 },
  )
  await assert.rejects(dispatcher.invoke('nap', 'slow', {}, { maxAttempts: 1 }), (e: any) => {
    assert.ok(e instanceof AgentTimeoutError)
    assert.equal(e.code, 'Timeout')
    assert.equal(e.timeoutSeconds, 0.2)
    return true
  })
  for (let i = 0; i < 50 && !aborted; i++) await new Promise((r) => setTimeout(r, 20))
  assert.ok(aborted, 'the handler saw its signal abort')
})

test('an AbortSignal cancels the call, which is recorded cancelled', async () => {
  let started!: () => void
  const running = new Promise<void>((r) => (started = r))
  let handlerAborted = false
  await dispatcher.registerLocalAgent(
    'patient',
    (_tool: string, _input: any, { signal }: { signal: AbortSignal }) =>
      new Promise((resolve) => {
        started()
        const t = setTimeout(() => resolve({ done: true }), 10_000)
        signal.addEventListener('abort', () => {
          handlerAborted = true
          clearTimeout(t)
          resolve(null)
        })
      }),
    { tools: ['cancellable'] },
  )
  const ac = new AbortController()
  const call = dispatcher.invoke('wait', 'cancellable', {}, { signal: ac.signal })
  await running
  ac.abort(new Error('user pressed stop'))
  await assert.rejects(call, (e: any) => {
    assert.ok(e instanceof CancelledError)
    assert.equal(e.code, 'Cancelled')
    assert.equal((e.cause as Error).message, 'user pressed stop')
    return true
  })
  const recs = await records('cancellable', 'wait')
  assert.equal(recs.length, 1)
  assert.equal(recs[0].status, 'cancelled')
  const m = (await dispatcher.getMetrics()).patient
  assert.equal(m.cancelled, 1)
  assert.equal(m.activeTasks, 0)
  for (let i = 0; i < 50 && !handlerAborted; i++) await new Promise((r) => setTimeout(r, 20))
  assert.ok(handlerAborted)

  // Already aborted: nothing is called, nothing recorded.
  await assert.rejects(dispatcher.invoke('never', 'cancellable', {}, { signal: AbortSignal.abort() }), CancelledError)
  assert.equal((await records('cancellable', 'never')).length, 0)
})

test('1,000 concurrent invokes from one event loop all succeed', async () => {
  let inFlight = 0
  let peak = 0
  await dispatcher.registerLocalAgent(
    'many_a',
    async (_tool: string, input: any) => {
      inFlight++
      peak = Math.max(peak, inFlight)
      await new Promise((r) => setImmediate(r))
      inFlight--
      return { i: input.i, by: 'a' }
    },
    { tools: ['bulk'] },
  )
  const http = await startAgent((c) => ({ i: c.input.i, by: 'http' }))
  agents.push(http)
  await dispatcher.registerAgent('many_http', { tools: ['bulk'], endpoint: http.url })
  const results = await Promise.all(
    Array.from({ length: 1000 }, (_, i) => dispatcher.invoke('bulk_job', 'bulk', { i })),
  )
  assert.equal(results.length, 1000)
  results.forEach((r, i) => assert.equal((r.output as any).i, i))
  assert.equal(new Set(results.map((r) => r.invocationId)).size, 1000)
  const by = new Set(results.map((r) => r.agentId))
  assert.deepEqual([...by].sort(), ['many_a', 'many_http'])
  assert.ok(peak > 1, 'the JS handler ran calls concurrently')
  assert.equal((await records('bulk', 'bulk_job')).filter((r) => r.status === 'succeeded').length, 1000)
})

test('registrations persist: a new dispatcher on the same database lists them', async () => {
  const ids = await new ToolDispatcher(db).listAgents()
  assert.ok(ids.includes('http_agent'))
  assert.deepEqual(ids, [...ids].sort())
  await dispatcher.unregisterAgent('http_agent')
  assert.ok(!(await dispatcher.listAgents()).includes('http_agent'))
})
