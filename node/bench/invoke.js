#!/usr/bin/env node
// Invoke from Node vs from Rust, in one run on one runtime: N sequential
// invokes of an in-process Rust agent (one that echoes its input) made by
// Rust (a loop inside the addon), by `await dispatcher.invoke` from Node,
// and N to an async JS handler, taking turns in rounds; then N gathered at
// once. Prints per-call
// times and the ratios to Rust's. Usage: node node/bench/invoke.js [N]
// (default 2000; the addon is the dev build unless you built otherwise).
'use strict'
const { mkdtempSync, rmSync } = require('node:fs')
const { tmpdir } = require('node:os')
const path = require('node:path')
const { Database, ToolDispatcher } = require('..')

const N = Number(process.argv[2] ?? 2000)
if (!Number.isInteger(N) || N < 1 || N > 1_000_000) {
  console.error('N is a whole number of calls, 1 to 1,000,000')
  process.exit(2)
}

async function timed(fn) {
  const t = process.hrtime.bigint()
  await fn()
  return Number(process.hrtime.bigint() - t) / 1e9
}

async function main() {
  const dir = mkdtempSync(path.join(tmpdir(), 'switchboard-bench-'))
  const db = await Database.open(dir)
  const d = new ToolDispatcher(db)
  await d._native.registerRustEchoAgent('rust_echo', ['bench_rust'])
  await d.registerLocalAgent('js_echo', async (_tool, input) => input, { tools: ['bench_js'] })

  // Warm-up: connections, caches, the JIT.
  await d._native.benchRustInvokes('echo', 'bench_rust', 200)
  for (let i = 0; i < 200; i++) await d.invoke('echo', 'bench_rust', { i })
  for (let i = 0; i < 200; i++) await d.invoke('echo', 'bench_js', { i })

  // The paths take turns in ROUNDS rounds, so the store growing and the
  // machine's other load weigh on each alike.
  const ROUNDS = 10
  const per = Math.ceil(N / ROUNDS)
  let rust = 0
  let fromNode = 0
  let jsAgent = 0
  for (let r = 0; r < ROUNDS; r++) {
    rust += await d._native.benchRustInvokes('echo', 'bench_rust', per)
    fromNode += await timed(async () => {
      for (let i = 0; i < per; i++) await d.invoke('echo', 'bench_rust', { i })
    })
    jsAgent += await timed(async () => {
      for (let i = 0; i < per; i++) await d.invoke('echo', 'bench_js', { i })
    })
  }
  const calls = per * ROUNDS
  const gathered = await timed(() =>
    Promise.all(Array.from({ length: N }, (_, i) => d.invoke('echo', 'bench_rust', { i }))),
  )

  const us = (s) => ((s / calls) * 1e6).toFixed(0).padStart(6) + ' µs'
  const x = (s) => (s / rust).toFixed(2) + '×'
  console.log(`N = ${calls} sequential invokes each, in ${ROUNDS} interleaved rounds (node ${process.version})`)
  console.log(`Rust invoke, in-process Rust agent       ${us(rust)}  1.00×`)
  console.log(`await invoke from Node, same Rust agent  ${us(fromNode)}  ${x(fromNode)}`)
  console.log(`await invoke to an async JS agent        ${us(jsAgent)}  ${x(jsAgent)}`)
  console.log(`${N} invokes gathered (Promise.all)     ${Math.round(N / gathered)} calls/s`)
  await db.close()
  rmSync(dir, { recursive: true, force: true })
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
