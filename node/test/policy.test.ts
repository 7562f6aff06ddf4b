// Policy hooks written in JavaScript, Rego and rate limits, judging the
// writes of real dispatches: the tools/sensitive/* policy, hooks that throw
// or answer nonsense (fail closed), rewriting and redaction.
import { strict as assert } from 'node:assert'
import * as path from 'node:path'
import { after, before, test } from 'node:test'
import {
  Database,
  NoAgentAvailableError,
  PolicyAction,
  PolicyDeniedError,
  PolicyEngine,
  PolicyLoadError,
  RateLimitedError,
  ToolCategory,
  ToolDispatcher,
} from 'switchboard'
import { REPO, tempDir } from './helpers'

const tmp = tempDir()
let db: Database
let dispatcher: ToolDispatcher
let policy: PolicyEngine

before(async () => {
  db = await Database.open(tmp.dir)
  dispatcher = new ToolDispatcher(db)
  policy = new PolicyEngine(db)
})
after(async () => {
  await db.close()
  tmp.cleanup()
})

const echo = (name: string) => async (tool: string) => ({ by: name, tool })

test('tools/sensitive/* lets only trusted agents run sensitive tools', async () => {
  const seen: Array<[string, string]> = []
  policy.beforeWrite('tools/sensitive/*', (key: string, _value: Buffer, context: any) => {
    seen.push([key, context.agent_id])
    return ['trusted_agent_1', 'trusted_agent_2'].includes(context.agent_id) ? PolicyAction.ALLOW : PolicyAction.DENY
  })
  const sensitive = ToolCategory.custom('sensitive')
  await dispatcher.registerLocalAgent('rogue_agent', echo('rogue_agent'), { tools: [sensitive], priority: 10 })
  // Only the rogue agent: every candidate is denied, nothing runs.
  await assert.rejects(dispatcher.invoke('wipe', sensitive, {}), PolicyDeniedError)
  await dispatcher.registerLocalAgent('trusted_agent_1', echo('trusted_agent_1'), { tools: [sensitive], priority: 1 })
  for (let i = 0; i < 4; i++) {
    const r = await dispatcher.invoke('wipe', sensitive, { i })
    assert.equal(r.agentId, 'trusted_agent_1')
  }
  // The hook saw the dispatch records: tools/sensitive/{tool}/{id}.
  assert.ok(seen.some(([key, agent]) => /^tools\/sensitive\/wipe\/[0-9A-Z]+$/.test(key) && agent === 'rogue_agent'))
  const metrics = await dispatcher.getMetrics()
  assert.equal(metrics.rogue_agent.total, 0, 'the rogue agent was never called')
  // Other categories are out of the hook's scope.
  await dispatcher.registerLocalAgent('rogue_code', echo('rogue_code'), { tools: [ToolCategory.CODE] })
  assert.equal((await dispatcher.invoke('run', ToolCategory.CODE, {})).agentId, 'rogue_code')
})

test('a hook that throws denies, with the exception in the reason', async () => {
  policy.beforeWrite('notes/throwing/*', function explode() {
    throw new RangeError('hook bug')
  })
  await assert.rejects(db.put('notes/throwing/x', 'v'), (e: any) => {
    assert.ok(e instanceof PolicyDeniedError)
    assert.equal(e.code, 'PolicyDenied')
    assert.equal(e.key, 'notes/throwing/x')
    assert.match(e.reason, /explode threw RangeError: hook bug/)
    return true
  })
  assert.equal(await db.get('notes/throwing/x'), null)
})

test('a hook that throws during a dispatch denies that candidate', async () => {
  policy.beforeWrite('tools/guarded/*', (_k: string, _v: Buffer, ctx: any) => {
    if (ctx.agent_id === 'g_bad') throw new Error('cannot judge')
    return PolicyAction.ALLOW
  })
  await dispatcher.registerLocalAgent('g_bad', echo('g_bad'), { tools: ['guarded'], priority: 9 })
  await dispatcher.registerLocalAgent('g_good', echo('g_good'), { tools: ['guarded'], priority: 1 })
  const r = await dispatcher.invoke('t', 'guarded', {}, { strategy: 'priority' })
  assert.equal(r.agentId, 'g_good')
})

test('a hook answering anything but a PolicyAction denies; a Promise too', async () => {
  policy.beforeWrite('notes/odd/*', (() => 'yes') as any)
  policy.beforeWrite('notes/async/*', (async () => PolicyAction.ALLOW) as any)
  await assert.rejects(db.put('notes/odd/x', 'v'), (e: any) => e instanceof PolicyDeniedError && /not a PolicyAction/.test(e.reason))
  await assert.rejects(db.put('notes/async/x', 'v'), (e: any) => e instanceof PolicyDeniedError && /Promise/.test(e.reason))
})

test('modify rewrites a write; afterRead redacts what a reader gets', async () => {
  policy.beforeWrite('notes/upper/*', (_k: string, value: Buffer) => PolicyAction.modify(value.toString().toUpperCase()))
  policy.afterRead('notes/secret/*', (_k: string, _v: Buffer, ctx: any) =>
    ctx.role === 'admin' ? PolicyAction.ALLOW : PolicyAction.modify('[redacted]'),
  )
  await db.put('notes/upper/x', 'shout')
  assert.equal((await db.get('notes/upper/x'))?.toString(), 'SHOUT')
  await db.put('notes/secret/pw', 'hunter2')
  assert.equal((await db.get('notes/secret/pw'))?.toString(), '[redacted]')
  assert.equal((await db.get('notes/secret/pw', { role: 'admin' }))?.toString(), 'hunter2')
  const scanned = []
  for await (const [, v] of db.scan('notes/secret/')) scanned.push(v.toString())
  assert.deepEqual(scanned, ['[redacted]'])
})

test('Rego: the shipped policies load, and judge dispatches', async () => {
  const names = policy.loadDir(path.join(REPO, 'policies'))
  assert.ok(names.includes('switchboard.shell_guard'))
  assert.ok(policy.regoModules().some(([name, scope]) => name === 'switchboard.shell_guard' && scope === 'tools/shell/**'))
  await dispatcher.registerLocalAgent('sh', echo('sh'), { tools: [ToolCategory.SHELL] })
  assert.equal((await dispatcher.invoke('run', ToolCategory.SHELL, { command: 'ls -la' })).agentId, 'sh')
  await assert.rejects(dispatcher.invoke('run', ToolCategory.SHELL, { command: 'rm -rf /' }), (e: any) => {
    assert.ok(e instanceof PolicyDeniedError || e instanceof NoAgentAvailableError)
    assert.match(e.message, /recursive rm/)
    return true
  })
  assert.throws(() => policy.addRego('notes/**', 'package broken\n allow if {'), (e: any) => e instanceof PolicyLoadError && e.code === 'PolicyLoad')
  policy.addRego('notes/rego/**', 'package notes.rego\nimport rego.v1\ndeny contains "no drafts" if contains(input.key, "draft")\n')
  await db.put('notes/rego/final', 'ok')
  await assert.rejects(db.put('notes/rego/draft1', 'no'), (e: any) => e instanceof PolicyDeniedError && /no drafts/.test(e.reason))
})

test('a rate limit refuses with RateLimited', async () => {
  const t = tempDir()
  const other = await Database.open(t.dir)
  new PolicyEngine(other).addRateLimit('put', 2, { windowSeconds: 60 })
  await other.put('a/1', '1')
  await other.put('a/2', '2')
  await assert.rejects(other.put('a/3', '3'), (e: any) => e instanceof RateLimitedError && e.code === 'RateLimited' && e.retryAfterSeconds > 0)
  await other.close()
  t.cleanup()
})

test('a call that waits on nothing is answered on the JS thread; one a JS hook or a JS agent must wait for starts on the runtime', async () => {
  const native = (dispatcher as any)._native
  await native.registerRustEchoAgent('inline_echo', ['inline'])
  const now = native.invokeNow('echo', 'inline', { n: 1 }, {})
  assert.ok(!(now instanceof Promise), 'a Rust agent and buffered records: answered at once')
  assert.deepEqual(now.output, { n: 1 })
  assert.equal(now.agentId, 'inline_echo')

  // A JS hook in scope would make the JS thread wait for itself: the call
  // must start on the runtime (done inline, this test would hang).
  let judged = 0
  policy.beforeWrite('tools/inline_hooked/*', () => {
    judged += 1
    return PolicyAction.ALLOW
  })
  await native.registerRustEchoAgent('hooked_echo', ['inline_hooked'])
  const hooked = native.invokeNow('echo', 'inline_hooked', { n: 2 }, {})
  assert.ok(hooked instanceof Promise, 'a JS hook covers the records: a Promise')
  assert.deepEqual((await hooked).output, { n: 2 })
  assert.equal(judged, 1, 'the hook judged the intent (the outcome is bookkeeping)')

  // A JS agent answers on a later turn of the event loop.
  await dispatcher.registerLocalAgent('js_inline', async (_tool: string, input: any) => input, { tools: ['inline_js'] })
  const js = native.invokeNow('echo', 'inline_js', { n: 3 }, {})
  assert.ok(js instanceof Promise, 'a JS agent: a Promise')
  assert.deepEqual((await js).output, { n: 3 })
})
