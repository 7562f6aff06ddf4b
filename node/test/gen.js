// Writes the TypeScript the tests take from outside node/test/ into gen/,
// for tsc to check and compile with the tests: every ```ts block of
// docs/typescript.md (gen/doc_N.mts, ES modules: the listings use top-level
// await) and examples/quick_start.ts. A block is kept as written; only what
// it leaves to the reader is defined before it (`regoSource`), and a line
// after it says it ran to the end.
'use strict'
const fs = require('node:fs')
const path = require('node:path')

const repo = path.resolve(__dirname, '..', '..')
const gen = path.join(__dirname, 'gen')
fs.rmSync(gen, { recursive: true, force: true })
fs.mkdirSync(gen)

const doc = fs.readFileSync(path.join(repo, 'docs', 'typescript.md'), 'utf8')
const blocks = [...doc.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1])
if (blocks.length === 0) throw new Error('docs/typescript.md has no ```ts block')
blocks.forEach((block, i) => {
  // The import statement ends at the first line ending in `;` after `import`.
  const lines = block.split('\n')
  const end = lines.findIndex((l) => /from '[^']+';?\s*$/.test(l))
  if (end < 0) throw new Error(`docs/typescript.md block ${i} imports nothing`)
  const prelude = [
    "import { readFileSync as __read } from 'node:fs';",
    "const regoSource: string = __read(process.env.SWITCHBOARD_REGO ?? '/dev/null', 'utf8');",
  ]
  const body = [...lines.slice(0, end + 1), ...prelude, ...lines.slice(end + 1)]
  // Names a listing leaves unused are fine: it shows them.
  body.push("console.log('SNIPPET_DONE');", 'export {};')
  fs.writeFileSync(path.join(gen, `doc_${i}.mts`), body.join('\n'))
})
fs.copyFileSync(path.join(repo, 'examples', 'quick_start.ts'), path.join(gen, 'quick_start.ts'))
console.log(`node tests: ${blocks.length} listing(s) from docs/typescript.md and examples/quick_start.ts into test/gen/`)
