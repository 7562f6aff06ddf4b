#!/usr/bin/env node
// Builds the native addon from this repository: `cargo build -p
// switchboard-node` in the dev profile into the workspace's target directory
// (CARGO_TARGET_DIR if set), so it links the RocksDB `cargo test` compiled,
// then copies the library to ./switchboard.node and writes ./native.d.ts from
// the type definitions napi-derive emitted while compiling.
//
// Not `napi build`: @napi-rs/cli always passes `--target <triple>`, which
// puts the build in target/<triple>/ and compiles RocksDB a second time.
'use strict'
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const nodeDir = path.resolve(__dirname, '..')
const repo = path.resolve(nodeDir, '..')
const targetDir = path.resolve(repo, process.env.CARGO_TARGET_DIR || 'target')
const typedefs = path.join(targetDir, 'napi-rs', 'switchboard-node-typedef')
const libName = { linux: 'libswitchboard_node.so', darwin: 'libswitchboard_node.dylib', win32: 'switchboard_node.dll' }[process.platform]

async function main() {
  fs.mkdirSync(typedefs, { recursive: true })
  // napi-derive writes the type definitions only while it expands the
  // crate: force that when they are missing (one more compile of the
  // bindings, not of the core).
  const env = { ...process.env, NAPI_TYPE_DEF_TMP_FOLDER: typedefs }
  if (!fs.existsSync(path.join(typedefs, 'switchboard-node'))) {
    env.NAPI_FORCE_BUILD_SWITCHBOARD_NODE = String(Date.now())
  }
  const cargo = spawnSync('cargo', ['build', '-p', 'switchboard-node', '--target-dir', targetDir], {
    cwd: repo,
    env,
    stdio: 'inherit',
  })
  if (cargo.status !== 0) process.exit(cargo.status ?? 1)

  const built = path.join(targetDir, 'debug', libName)
  const addon = path.join(nodeDir, 'switchboard.node')
  // Copy to a fresh file, then rename: a process that has the old addon
  // loaded keeps its mapping.
  fs.copyFileSync(built, addon + '.tmp')
  fs.renameSync(addon + '.tmp', addon)

  const { generateTypeDef } = require('@napi-rs/cli')
  const { dts } = await generateTypeDef({ typeDefDir: typedefs, cwd: nodeDir, constEnum: false })
  fs.writeFileSync(path.join(nodeDir, 'native.d.ts'), dts)
  console.log(`node: built ${path.relative(repo, addon)} and native.d.ts`)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
