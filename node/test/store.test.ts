// The store from Node: puts, gets, deletes, scans in pages, transactions,
// and a closed handle — against real RocksDB in a temporary directory.
import { strict as assert } from 'node:assert'
import { after, before, test } from 'node:test'
import { Database, InvalidInputError, PolicyDeniedError, PolicyEngine, PolicyAction } from 'switchboard'
import { tempDir } from './helpers'

const tmp = tempDir()
let db: Database

before(async () => {
  db = await Database.open(tmp.dir)
})
after(async () => {
  await db.close()
  tmp.cleanup()
})

test('put, get and delete round-trip strings and bytes', async () => {
  await db.put('notes/a', 'hello')
  await db.put('notes/b', Buffer.from('{"é":1}', 'utf8'))
  await db.put('notes/c', new Uint8Array([0x6f, 0x6b]))
  assert.equal((await db.get('notes/a'))?.toString('utf8'), 'hello')
  assert.deepEqual(JSON.parse((await db.get('notes/b'))!.toString('utf8')), { é: 1 })
  assert.equal((await db.get('notes/c'))?.toString(), 'ok')
  await db.delete('notes/a')
  assert.equal(await db.get('notes/a'), null)
  assert.equal(await db.get('notes/never'), null)
})

test('a value of the wrong type is a TypeError; a bad key or bytes that are not text are InvalidInput', async () => {
  await assert.rejects(db.put('notes/x', 42 as any), TypeError)
  // The store keeps JSON or text (UTF-8).
  await assert.rejects(db.put('notes/x', Buffer.from([0xff, 0xfe])), (e: any) => e instanceof InvalidInputError && /UTF-8/.test(e.message))
  await assert.rejects(db.put('', 'v'), (e: any) => e instanceof InvalidInputError && e.code === 'InvalidInput')
})

test('scan reads every key under a prefix in order, a page at a time', async () => {
  const tx = db.transaction()
  for (let i = 0; i < 600; i++) tx.put(`scan/k${String(i).padStart(4, '0')}`, `v${i}`)
  tx.put('scanx/outside', 'no')
  await tx.commit()
  const keys: string[] = []
  for await (const [key, value] of db.scan('scan/', { pageSize: 100 })) {
    assert.equal(value.toString(), `v${Number(key.slice(6))}`)
    keys.push(key)
  }
  assert.equal(keys.length, 600)
  assert.deepEqual(keys, [...keys].sort())
  const tail: string[] = []
  for await (const [key] of db.scan('scan/', { after: 'scan/k0597' })) tail.push(key)
  assert.deepEqual(tail, ['scan/k0598', 'scan/k0599'])
})

test('a transaction stores all of its writes or none', async () => {
  const policy = new PolicyEngine(db)
  policy.beforeWrite('locked/*', () => PolicyAction.deny('locked'))
  const tx = db.transaction()
  tx.put('open/one', '1')
  tx.put('locked/two', '2')
  assert.equal(tx.size, 2)
  assert.equal((await tx.get('open/one'))?.toString(), '1')
  await assert.rejects(tx.commit(), (e: any) => e instanceof PolicyDeniedError && e.key === 'locked/two' && e.reason === 'locked')
  assert.equal(await db.get('open/one'), null)
  await assert.rejects(tx.commit(), InvalidInputError)

  const ok = db.transaction()
  ok.put('open/one', '1')
  ok.delete('open/one')
  ok.put('open/three', '3')
  await ok.commit()
  assert.equal(await db.get('open/one'), null)
  assert.equal((await db.get('open/three'))?.toString(), '3')
})

test('a closed handle refuses calls', async () => {
  const t = tempDir()
  const other = await Database.open(t.dir)
  await other.put('k/1', 'v')
  await other.close()
  await assert.rejects(other.get('k/1'), (e: any) => e.code === 'InvalidInput' && /closed/.test(e.message))
  // Reopening finds what was written (the lock was released by close).
  const again = await Database.open(t.dir)
  assert.equal((await again.get('k/1'))?.toString(), 'v')
  await again.close()
  t.cleanup()
})
