// A registration made from Node is the Rust CLI's too: a child Node process
// registers an agent and exits; `switchboard agents list` on the same
// database then lists it.
import { strict as assert } from 'node:assert'
import { existsSync } from 'node:fs'
import * as path from 'node:path'
import { test } from 'node:test'
import { run, switchboardBin, tempDir } from './helpers'

test('the CLI lists an agent a finished Node process registered', async (t) => {
  const bin = switchboardBin()
  if (!existsSync(bin)) {
    // make test builds it (cargo test) before this runs; say so plainly elsewhere.
    assert.fail(`${bin} is missing: run cargo build --all-targets first`)
  }
  const tmp = tempDir()
  t.after(tmp.cleanup)
  const data = path.join(tmp.dir, 'db')
  const script = `
    const { Database, ToolDispatcher, ToolCategory } = require('switchboard')
    ;(async () => {
      const db = await Database.open(${JSON.stringify(data)})
      const d = new ToolDispatcher(db)
      await d.registerAgent('node_registered', {
        tools: [ToolCategory.CODE, ToolCategory.custom('reports')],
        endpoint: 'http://127.0.0.1:9/invoke',
        priority: 7,
      })
      await db.close()
      console.log('registered')
    })().catch((e) => { console.error(e); process.exit(1) })`
  // Run inside the package so `require('switchboard')` resolves to it.
  const node = await run(process.execPath, ['-e', script], { cwd: path.resolve(__dirname, '..', '..') })
  assert.equal(node.code, 0, node.stderr)
  assert.match(node.stdout, /registered/)

  const cli = await run(bin, ['agents', 'list', '--data', data, '--json'])
  assert.equal(cli.code, 0, cli.stderr)
  const rows = cli.stdout.trim().split('\n').map((l) => JSON.parse(l))
  const row = rows.find((r) => r.agent_id === 'node_registered' || r.id === 'node_registered')
  assert.ok(row, `agents list printed: ${cli.stdout}`)
  assert.match(JSON.stringify(row), /reports/)
  assert.match(JSON.stringify(row), /127\.0\.0\.1:9/)
})
