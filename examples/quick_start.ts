// Switchboard's TypeScript quick start, end to end: a real HTTP agent on
// 127.0.0.1 (node:http), a local async agent, a policy hook, health checks,
// a sticky least-loaded call, and the audit scan.
//
// Run after `make node`:  node node/scripts/run-ts.js examples/quick_start.ts
import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import * as path from 'node:path'
import {
  Database,
  PolicyAction,
  PolicyDeniedError,
  PolicyEngine,
  RoutingStrategy,
  ToolCategory,
  ToolDispatcher,
} from 'switchboard'

/** An HTTP agent speaking the wire protocol: POST the call, GET for health. */
function startCodeAgent(): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    let body = ''
    req.on('data', (c) => (body += c))
    req.on('end', () => {
      const reply = req.method === 'POST'
        ? (({ tool, input }) => ({ ran: tool, with: input, by: 'code_agent' }))(JSON.parse(body))
        : { healthy: true }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(reply))
    })
  })
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)))
}

async function main(): Promise<void> {
  const agent = await startCodeAgent()
  const port = (agent.address() as AddressInfo).port
  const dir = mkdtempSync(path.join(tmpdir(), 'switchboard-quick-start-'))
  try {
    const db = await Database.open(path.join(dir, 'agent_data'))
    const dispatcher = new ToolDispatcher(db) // loads persisted registrations

    await dispatcher.registerAgent('code_agent', {
      tools: [ToolCategory.CODE, ToolCategory.SHELL],
      endpoint: `http://127.0.0.1:${port}/invoke`,
      priority: 10,
    })
    await dispatcher.registerLocalAgent(
      'local_search',
      async (tool: string, input: any) => ({ tool, results: [`about ${input.query}`] }),
      { tools: [ToolCategory.SEARCH] },
    )
    dispatcher.enableHealthChecks({ intervalSeconds: 30, timeoutSeconds: 5, unhealthyThreshold: 3 })

    // Only trusted agents may run `sensitive` tools: the hook judges the
    // dispatch record each call writes under tools/sensitive/{tool}/{id}.
    const policy = new PolicyEngine(db)
    policy.beforeWrite('tools/sensitive/*', (_key: string, _value: Buffer, context: any) =>
      ['trusted_agent_1', 'trusted_agent_2'].includes(context.agent_id)
        ? PolicyAction.ALLOW
        : PolicyAction.deny('untrusted agent'))

    const result = await dispatcher.invoke('code_exec', ToolCategory.CODE,
      { code: "print('hello')" },
      { strategy: RoutingStrategy.LEAST_LOADED, sessionId: 'session_abc123' })
    console.log(result.agentId, JSON.stringify(result.output), result.attempts, `${result.latencyMs.toFixed(2)} ms`)

    const found = await dispatcher.invoke('web_search', ToolCategory.SEARCH, { query: 'switchboard' })
    console.log(found.agentId, JSON.stringify(found.output))

    await dispatcher.registerLocalAgent('helper', async () => ({ done: true }),
      { tools: [ToolCategory.custom('sensitive')] })
    try {
      await dispatcher.invoke('delete_records', ToolCategory.custom('sensitive'), {})
    } catch (e) {
      if (!(e instanceof PolicyDeniedError)) throw e
      console.log('refused:', e.code, e.reason)
    }

    for await (const [key, value] of db.scan('tools/code/code_exec/')) { // the audit trail
      console.log(key, JSON.parse(value.toString()).status)
    }
    console.log('metrics:', JSON.stringify((await dispatcher.getMetrics()).code_agent))
    dispatcher.disableHealthChecks()
    await db.close()
  } finally {
    agent.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
