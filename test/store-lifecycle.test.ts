// The SQLite store's life cycle around its transactions: what close() hands
// over and leaves, which failures close the connection, the lock-wait and
// open-retry policies, the ops commands that write (stats, purge, health
// check). Behaviour seen from outside: row counts as a fresh store reads
// them, the files in the directory, the log lines, the injected clock.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
import { SCHEMA_VERSION } from '../lib/store/sqlite'
import { breakLeafPage, dbFile, makeStore } from './helpers/sqlite-store'

const row = (first: number) => ({ first, last: first, passed: 0, count: 1 })
const client = { row: { count: 1, last: 1, lastCounted: 1 }, expires: 1e12 }
const triplet = { row: row(1), expires: 1e12 }
const escaped = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

/** The counts a store opened afresh on `dir` finds (what other processes see). */
async function countsSeenAfresh(dir: string): Promise<{ triplets: number; clients: number }> {
  const { store } = makeStore(dir)
  try {
    return await store.counts()
  } finally {
    store.close()
  }
}

for (const [rows, write] of [
  ['a triplet row', { triplet }],
  ['a client row', { client }],
  ['a triplet and a client row', { triplet, client }],
] as const) {
  t.test(`close() hands the inserts not yet counted over to the shared counts: ${rows}`, async (t) => {
    const dir = t.testdir()
    const { store } = makeStore(dir)
    await store.updateGreylist('k', 'c', () => ({ ...write, result: null }))
    store.commitPending()
    store.close()
    t.same(await countsSeenAfresh(dir), { triplets: 'triplet' in write ? 1 : 0, clients: 'client' in write ? 1 : 0 })
  })
}

t.test('a store used again after close() hands its new inserts over at its next close() too', async (t) => {
  const dir = t.testdir()
  const { store, logs } = makeStore(dir)
  for (const key of ['k1', 'k2']) {
    await store.updateGreylist(key, 'c', () => ({ triplet, result: null }))
    store.commitPending()
    store.close()
  }
  t.same(await countsSeenAfresh(dir), { triplets: 2, clients: 0 })
  t.same(logs, [`database ${dbFile(dir)} migrated from schema version 0 to ${SCHEMA_VERSION}`])
})

t.test('after close() and a reopen, no COMMIT is tried without a transaction', async (t) => {
  const dir = t.testdir()
  const { store, logs } = makeStore(dir)
  await store.updateGreylist('k', 'c', () => ({ triplet, result: null }))
  store.close()
  logs.length = 0
  t.same(await store.counts(), { triplets: 1, clients: 0 })
  t.same(await store.counts(), { triplets: 1, clients: 0 })
  t.same(logs, [])
  store.close()
})

t.test('close() of a store never used opens nothing', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  store.close()
  t.notOk(fs.existsSync(path.join(dir, 'db')))
})

t.test('a close() whose hand-over met a held lock leaves the store closed: a second close() does not reopen the file', async (t) => {
  const dir = t.testdir()
  let opens = 0
  const { store } = makeStore(dir, { busyTimeoutMs: 5, now: () => (opens++, 100) })
  await store.updateGreylist('k', 'c', () => ({ triplet, result: null }))
  store.commitPending()
  const other = new Database(dbFile(dir), { timeout: 0 })
  other.exec('BEGIN IMMEDIATE')
  store.close()
  other.exec('ROLLBACK')
  other.close()
  store.close()
  t.equal(opens, 1, 'opened once, by the write')
  t.same(await countsSeenAfresh(dir), { triplets: 0, clients: 0 }, 'the share is lost (a recount finds the row)')
})

t.test('a close() whose hand-over fails otherwise tries it once (it does not recurse through run() closing on the failure)', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  await store.updateGreylist('k', 'c', () => ({ triplet, result: null }))
  store.commitPending()
  // Without its count row the hand-over fails as an error, not busy:
  // run() then closes the store, which must not start the hand-over again.
  const other = new Database(dbFile(dir))
  other.prepare("DELETE FROM meta WHERE name = 'triplet_count'").run()
  other.close()
  const spied = store as unknown as { upkeep(now: number, limit: number): number }
  const upkeep = spied.upkeep
  let handOvers = 0
  spied.upkeep = function (this: unknown, now: number, limit: number) {
    handOvers++
    return upkeep.call(this, now, limit)
  }
  store.close()
  t.equal(handOvers, 1)
})

t.test('addStats with nothing to add opens no database', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  await store.addStats('host', new Map())
  t.notOk(fs.existsSync(path.join(dir, 'db')))
  await store.addStats('host', new Map([['accepted', 2]]))
  t.same(await store.stats(), [{ host: 'host', name: 'accepted', value: 2 }])
  store.close()
})

t.test('purgeAll takes the rows it removes off the shared counts', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  t.teardown(() => store.close())
  for (const [key, expires] of [['old', 5], ['new', 50]] as const) {
    await store.updateGreylist(key, key, () => ({ triplet: { row: row(1), expires }, client: { ...client, expires }, result: null }))
  }
  t.same(await store.counts(), { triplets: 2, clients: 2 })
  t.equal(await store.purgeAll(10), 2)
  t.same(await store.counts(), { triplets: 1, clients: 1 })
  t.same(await countsSeenAfresh(dir), { triplets: 1, clients: 1 })
})

t.test('the health check of a database whose integrity check fails is not ok, and says what it found', async (t) => {
  const dir = t.testdir()
  const file = dbFile(dir)
  const { store } = makeStore(dir)
  // Rows in a table the health check does not count: its pages can be broken without the counts failing.
  await store.addStats('host', new Map(Array.from({ length: 300 }, (_, i) => [`metric-${String(i).padStart(3, '0')}-${'x'.repeat(40)}`, i])))
  store.close()
  const leaves = breakLeafPage(file, 'stats', (pages) => pages[1])
  t.ok(leaves > 2, `several leaf pages (${leaves})`)
  const { store: checker } = makeStore(dir)
  t.teardown(() => checker.close())
  const health = await checker.check()
  t.equal(health.ok, false)
  t.match(health.lines[0], new RegExp(`^database ${escaped(file)}: schema version ${SCHEMA_VERSION}, integrity (?!ok$).+`))
  t.same(health.lines.slice(1), ['triplets: 0 (counted for greylist_max_entries: 0), client networks: 0, whitelist entries: 0', 'rate limits: 0 usage counters, 0 held messages, 0 hit rows, 0 overrides'])
})

t.test("run()'s failure policy: a busy failure keeps the connection, any other failure closes it (the next call reopens)", async (t) => {
  const dir = t.testdir()
  let opens = 0
  const { store } = makeStore(dir, { busyTimeoutMs: 5, now: () => (opens++, 100) })
  t.teardown(() => store.close())
  await store.updateGreylist('k0', 'c', () => ({ triplet, result: null }))
  store.commitPending()
  const other = new Database(dbFile(dir), { timeout: 0 })
  other.exec('BEGIN IMMEDIATE')
  await t.rejects(store.updateGreylist('k1', 'c', () => ({ triplet, result: null })), { failure: 'busy' })
  other.exec('ROLLBACK')
  other.close()
  t.equal(await store.updateGreylist('k1', 'c', () => ({ triplet, result: 'written' })), 'written')
  t.equal(opens, 1, 'busy: the same connection')
  const broken = { row: { count: 1, last: 2, lastCounted: 2 }, expires: null as unknown as number }
  await t.rejects(store.updateGreylist('k2', 'c', () => ({ client: broken, result: null })), { failure: 'error', message: /NOT NULL constraint failed/ })
  t.notOk(fs.existsSync(`${dbFile(dir)}-wal`), 'closed: SQLite removed the WAL of its last connection')
  t.equal(await store.updateGreylist('k2', 'c', () => ({ triplet, result: 'written' })), 'written')
  t.equal(opens, 2, 'an error: reopened')
})

t.test("in 'yield' mode a failure other than a held lock is not waited for: it keeps its class", async (t) => {
  const { store } = makeStore(t.testdir(), { busyTimeoutMs: 50, lockWaits: 'yield' })
  t.teardown(() => store.close())
  await t.rejects(store.setWhitelist({ key: 'sender\ta@example.net', expires: 9, note: null as unknown as string, setAt: 1 }), { failure: 'error', message: /NOT NULL constraint failed: whitelist\.note/ })
})

t.test('a rate-limit write that fails is rolled back before the connection closes: the close still hands the counts over', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  t.teardown(() => store.close())
  await store.updateGreylist('k', 'c', () => ({ triplet, result: null }))
  store.commitPending()
  const entry = { key: 'sasl:alice@example.org', limits: 'unlimited', expires: Infinity, note: null as unknown as string, setAt: 1 }
  await t.rejects(store.setOverride(entry), { failure: 'error', message: /NOT NULL constraint failed: rl_override\.note/ })
  t.same(await countsSeenAfresh(dir), { triplets: 1, clients: 0 })
  await store.setOverride({ ...entry, note: 'ok' })
  t.same(await store.listOverrides(0), [{ ...entry, note: 'ok' }])
})

t.test('a fresh file that is corrupt too, right after the rename: the open fails, it is not renamed aside in turn', async (t) => {
  const dir = t.testdir()
  const file = dbFile(dir)
  fs.mkdirSync(path.dirname(file), { mode: 0o700 })
  const garbage = 'not a database '.repeat(200)
  fs.writeFileSync(file, garbage, { mode: 0o600 })
  let now = 100
  const logs: string[] = []
  const { store } = makeStore(dir, {
    now: () => now,
    reopenDelay: 5,
    // Another process puts a broken file in its place at once.
    log: (_l, m) => {
      if (logs.push(m) === 1) fs.writeFileSync(file, garbage, { mode: 0o600 })
    },
  })
  t.teardown(() => store.close())
  await t.rejects(store.updateGreylist('k', 'c', () => ({ triplet, result: null })), { failure: 'corrupt', message: `database ${file}: file is not a database` })
  t.equal(logs.length, 1, 'one file renamed aside')
  t.match(logs[0], /corrupt file renamed to/)
  t.equal(fs.readdirSync(path.dirname(file)).filter((f) => f.includes('.corrupt-')).length, 1)
  t.equal(fs.readFileSync(file, 'utf8'), garbage, 'the second one stays until the next open')
  now += 5
  t.equal(await store.updateGreylist('k', 'c', () => ({ triplet, result: 'fresh' })), 'fresh', 'after the reopen delay it goes aside too')
})
