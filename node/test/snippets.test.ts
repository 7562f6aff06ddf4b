// The listing of docs/typescript.md runs as written (its import line is
// already the package's), in a fresh working directory, against HTTP agents
// on 127.0.0.1:8001 and :8002; then the state it left is checked. And
// examples/quick_start.ts runs.
import { strict as assert } from 'node:assert'
import { readdirSync } from 'node:fs'
import * as path from 'node:path'
import { test } from 'node:test'
import { Database, ToolDispatcher } from 'switchboard'
import { REPO, run, startAgent, tempDir } from './helpers'

const GEN = path.join(__dirname, 'gen')

test('every listing of docs/typescript.md runs unchanged', async (t) => {
  const code = await startAgent((c) => ({ ran: c.tool, by: 'code_agent' }), 8001)
  const search = await startAgent((c) => ({ found: c.input, by: 'search_agent' }), 8002)
  t.after(async () => {
    await code.close()
    await search.close()
  })
  const listings = readdirSync(GEN).filter((f) => /^doc_\d+\.mjs$/.test(f))
  assert.ok(listings.length >= 1)
  for (const listing of listings) {
    const cwd = tempDir()
    t.after(cwd.cleanup)
    const r = await run(process.execPath, [path.join(GEN, listing)], {
      cwd: cwd.dir,
      env: { SWITCHBOARD_REGO: path.join(REPO, 'policies', 'shell_guard.rego') },
    })
    assert.equal(r.code, 0, `${listing}: ${r.stderr}`)
    assert.match(r.stdout, /SNIPPET_DONE/)

    // What the listing did, read back from its ./agent_data.
    const db = await Database.open(path.join(cwd.dir, 'agent_data'))
    const agents = await new ToolDispatcher(db).listAgents()
    assert.deepEqual(agents, ['code_agent', 'local_code'])
    const execs = []
    for await (const [, v] of db.scan('tools/code/code_exec/')) execs.push(JSON.parse(v.toString()))
    assert.equal(execs.length, 1)
    assert.equal(execs[0].status, 'succeeded')
    assert.equal(execs[0].agent_id, 'code_agent')
    const chats = []
    for await (const [, v] of db.scan('tools/code/chat/')) chats.push(JSON.parse(v.toString()))
    assert.equal(chats.length, 2)
    assert.equal(chats[0].agent_id, chats[1].agent_id, 'the session stuck to one agent')
    await db.close()
  }
  assert.equal(code.calls.length, 3, 'code_exec and the two chat calls reached the HTTP code agent')
  assert.deepEqual(code.calls[1].input, { message: 'Write a function' })
  assert.equal(code.calls[1].session_id, 'session_abc123')
})

test('examples/quick_start.ts runs', async () => {
  const r = await run(process.execPath, [path.join(GEN, 'quick_start.js')])
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /^code_agent \{.*"ran":"code_exec"/m)
  assert.match(r.stdout, /^local_search /m)
  assert.match(r.stdout, /refused: PolicyDenied .*helper: untrusted agent/)
  assert.match(r.stdout, /tools\/code\/code_exec\/\S+ succeeded/)
})
