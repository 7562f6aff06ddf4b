// What the tests share: temporary directories, HTTP agents on 127.0.0.1
// written with node:http, and child Node processes.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import * as path from 'node:path'

/** The repository root (tests run from node/test/.build/). */
export const REPO = path.resolve(__dirname, '..', '..', '..')

/** A fresh directory, removed by `cleanup()`. */
export function tempDir(name = 'switchboard-node-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), name))
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) }
}

/** One call an HTTP agent received (the dispatcher's wire format). */
export interface AgentCall {
  invocation_id: string
  tool: string
  category: string
  input: any
  session_id: string | null
}

export interface Agent {
  url: string
  calls: AgentCall[]
  close: () => Promise<void>
}

/**
 * An HTTP agent on 127.0.0.1 (port 0: a free one, unless given): POST
 * answers `respond(call)` as JSON with status 200, or the status and body it
 * returns as `{ status, body }`; GET answers 200 (health).
 */
export function startAgent(
  respond: (call: AgentCall) => unknown | { status: number; body: unknown } = (c) => ({ echo: c.input, tool: c.tool }),
  port = 0,
): Promise<Agent> {
  const calls: AgentCall[] = []
  const server = http.createServer((req, res) => {
    if (req.method !== 'POST') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')
      return
    }
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const call = JSON.parse(Buffer.concat(chunks).toString('utf8')) as AgentCall
      calls.push(call)
      const out = respond(call) as any
      const reply = out && typeof out === 'object' && typeof out.status === 'number' && 'body' in out
      const status = reply ? out.status : 200
      const body = reply ? out.body : out
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body ?? null))
    })
  })
  // Keep-alive connections the dispatcher pools would hold close() open.
  server.keepAliveTimeout = 1000
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo
      resolve({
        url: `http://127.0.0.1:${port}/invoke`,
        calls,
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections()
            server.close(() => done())
          }),
      })
    })
  })
}

/** Runs `node args...` (or another program) and collects its output; bounded by `timeoutMs`. */
export function run(
  command: string,
  args: string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: { ...process.env, ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000)
    child.once('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.once('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

/** The `switchboard` binary `cargo build --all-targets` (or `cargo test`) made. */
export function switchboardBin(): string {
  if (process.env.SWITCHBOARD_BIN) return process.env.SWITCHBOARD_BIN
  const target = process.env.CARGO_TARGET_DIR ? path.resolve(REPO, process.env.CARGO_TARGET_DIR) : path.join(REPO, 'target')
  return path.join(target, 'debug', 'switchboard')
}
