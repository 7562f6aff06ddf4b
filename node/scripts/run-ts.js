#!/usr/bin/env node
// Runs a TypeScript file against this package: `node node/scripts/run-ts.js
// FILE.ts [args...]`. The file is transpiled (types are not checked: `tsc`
// does that in the tests) to an ES module inside the package, where
// `import ... from 'switchboard'` resolves to it, and run with this Node in
// the caller's working directory. Node 20 cannot run .ts files itself.
'use strict'
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const [file, ...args] = process.argv.slice(2)
if (!file) {
  console.error('usage: node node/scripts/run-ts.js FILE.ts [args...]')
  process.exit(2)
}
let ts
try {
  ts = require('typescript')
} catch {
  console.error('typescript is not installed: run `make node` first (it installs node/node_modules)')
  process.exit(2)
}
const source = fs.readFileSync(file, 'utf8')
const { outputText } = ts.transpileModule(source, {
  compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
  fileName: path.basename(file),
})
const outDir = path.resolve(__dirname, '..', '.run')
fs.mkdirSync(outDir, { recursive: true })
const out = path.join(outDir, path.basename(file).replace(/\.m?ts$/, '') + '.mjs')
fs.writeFileSync(out, outputText)
const r = spawnSync(process.execPath, [out, ...args], { stdio: 'inherit' })
process.exit(r.status ?? 1)
