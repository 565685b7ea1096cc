import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
import { classifyError, probeDatabase, RECOUNT_EVERY, SCHEMA_VERSION, SqliteStore } from '../lib/store/sqlite'
import { StoreError, type GreylistView } from '../lib/store/types'
import { breakLeafPage, dbFile, makeStore } from './helpers/sqlite-store'

const row = (first: number) => ({ first, last: first, passed: 0, count: 1 })

t.test('creates directory 0700 and file 0600, schema versioned, rows round-trip', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  t.teardown(() => store.close())
  let seen: GreylistView | undefined
  await store.updateGreylist('k1', 'c1', (view) => {
    seen = view
    return { triplet: { row: row(10), expires: 20 }, client: { row: { count: 1, last: 10, lastCounted: 10 }, expires: 30 }, result: 1 }
  })
  t.same(seen, { triplet: null, client: null, tripletCount: 0 })
  const file = path.join(dir, 'db', 'greylist.sqlite')
  t.equal(fs.statSync(path.dirname(file)).mode & 0o777, 0o700)
  t.equal(fs.statSync(file).mode & 0o777, 0o600)
  const result = await store.updateGreylist('k1', 'c1', (view) => {
    seen = view
    return { triplet: { row: { ...view.triplet!, count: 2 }, expires: 20 }, result: 'ok' }
  })
  t.equal(result, 'ok')
  t.same(seen, { triplet: row(10), client: { count: 1, last: 10, lastCounted: 10 }, tripletCount: 1 })
  t.same(await store.counts(), { triplets: 1, clients: 1 })
  const db = new Database(file, { readonly: true })
  t.equal(db.pragma('user_version', { simple: true }), SCHEMA_VERSION)
  t.equal(db.pragma('journal_mode', { simple: true }), 'wal')
  t.equal(db.pragma('page_size', { simple: true }), 1024, 'a new database gets 1 KiB pages')
  db.close()
})

t.test('an existing database keeps its page size', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'db', 'greylist.sqlite')
  fs.mkdirSync(path.dirname(file), { mode: 0o700 })
  const old = new Database(file)
  old.pragma('page_size = 4096')
  old.exec('CREATE TABLE x (y)')
  old.close()
  fs.chmodSync(file, 0o600)
  const { store } = makeStore(dir)
  t.teardown(() => store.close())
  await store.updateGreylist('k', 'c', () => ({ triplet: { row: row(1), expires: 2 }, result: null }))
  const db = new Database(file, { readonly: true })
  t.equal(db.pragma('page_size', { simple: true }), 4096)
  db.close()
})

t.test('purge walks the keys in steps with a saved cursor: live rows first, expired ones after', async (t) => {
  const { store } = makeStore(t.testdir())
  t.teardown(() => store.close())
  // Live keys sort first: a step that started from the first key every
  // time (a cursor never saved) would look at them only and purge nothing.
  const keys = [...Array.from({ length: 10 }, (_, i) => `a${i}`), ...Array.from({ length: 10 }, (_, i) => `z${i}`)]
  for (const key of keys) {
    const expires = key.startsWith('a') ? 1000 : 1
    await store.updateGreylist(key, key, () => ({ triplet: { row: row(0), expires }, client: { row: { count: 1, last: 0, lastCounted: 0 }, expires }, result: null }))
  }
  const steps: number[] = []
  for (let i = 0; i < 6; i++) steps.push(await store.purgeExpired(5, 4))
  // a0-a3, a4-a7, a8 a9 z0 z1, z2-z5, z6-z9, then the end of the keys (a triplet and a client row each).
  t.same(steps, [0, 0, 4, 8, 8, 0], 'each step goes on where the last one stopped')
  t.same(await store.counts(), { triplets: 10, clients: 10 })
  // Past the end the walk starts over: rows expired behind the cursor are found on the next round.
  const expired = (key: string) => store.updateGreylist(key, key, () => ({ triplet: { row: row(0), expires: 1 }, result: null }))
  await expired('a55')
  t.same([await store.purgeExpired(5, 4), await store.purgeExpired(5, 4), await store.purgeExpired(5, 4)], [0, 1, 0], 'a0-a3, a4 a5 a55 a6, a7-a9')
  await expired('a00')
  t.equal(await store.purgeExpired(5, 4), 1, 'a short page was the end: the next step starts over at a0 a00 a1 a2')
  t.same(await store.counts(), { triplets: 10, clients: 10 })
})

t.test('a row is purged only once its expiry time is past', async (t) => {
  const { store } = makeStore(t.testdir())
  t.teardown(() => store.close())
  await store.updateGreylist('k', 'c', () => ({ triplet: { row: row(0), expires: 5 }, result: null }))
  t.equal(await store.purgeExpired(5, 10), 0, 'at its expiry time it stays')
  t.equal(await store.purgeExpired(5.5, 10), 1, 'after it, it goes')
})

t.test('a delete write removes the row and the count follows', async (t) => {
  const { store } = makeStore(t.testdir())
  t.teardown(() => store.close())
  await store.updateGreylist('k', 'c', () => ({ triplet: { row: row(1), expires: 9 }, result: null }))
  await store.updateGreylist('k', 'c', () => ({ triplet: null, result: null }))
  t.same(await store.counts(), { triplets: 0, clients: 0 })
})

t.test('the row counts are recounted once per RECOUNT_EVERY: rows of a process killed before handing its count over count again', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  t.teardown(() => store.close())
  const file = path.join(dir, 'db', 'greylist.sqlite')
  await store.updateGreylist('own', 'c', () => ({ triplet: { row: row(1), expires: 1e12 }, result: null }))
  store.commitPending()
  // As a process killed before its upkeep step leaves them: rows there, not in the counts.
  const killedWriter = (from: number, n: number): void => {
    const db = new Database(file)
    const insert = db.prepare('INSERT INTO triplet (key, first, last, passed, count, expires) VALUES (?, 0, 0, 0, 1, 1e12)')
    db.transaction(() => {
      for (let i = from; i < from + n; i++) insert.run(`killed${i}`)
    })()
    db.close()
  }
  killedWriter(0, 30)
  t.same(await store.counts(), { triplets: 1, clients: 0 }, "counted: this process's own insert only")
  const t0 = 1e9
  await store.purgeExpired(t0, 100)
  t.same(await store.counts(), { triplets: 31, clients: 0 }, 'the first upkeep step ever recounts')
  killedWriter(30, 20)
  await store.purgeExpired(t0 + RECOUNT_EVERY - 1, 100)
  t.same(await store.counts(), { triplets: 31, clients: 0 }, 'not again before RECOUNT_EVERY')
  await store.purgeExpired(t0 + RECOUNT_EVERY, 100)
  t.same(await store.counts(), { triplets: 51, clients: 0 }, 'RECOUNT_EVERY later: exact again')
  killedWriter(50, 5)
  const { store: other } = makeStore(dir)
  t.teardown(() => other.close())
  await other.purgeExpired(t0 + RECOUNT_EVERY + 1, 100)
  t.same(await other.counts(), { triplets: 51, clients: 0 }, 'one recount per period among all processes')
  await other.purgeExpired(t0 + 10, 100)
  t.same(await other.counts(), { triplets: 56, clients: 0 }, 'a clock that went back recounts at once instead of waiting')
})

t.test('a recount keeps what other processes handed over while it counted', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  const { store: other } = makeStore(dir)
  t.teardown(() => (store.close(), other.close()))
  for (let i = 0; i < 3; i++) await store.updateGreylist(`k${i}`, 'c', () => ({ triplet: { row: row(1), expires: 1e12 }, result: null }))
  await store.counts()
  // The two steps of a recount, with another process's upkeep step between them.
  const recounting = store as unknown as { countRows(): unknown; applyRecount(census: unknown): void }
  const census = recounting.countRows()
  for (let i = 0; i < 4; i++) await other.updateGreylist(`o${i}`, 'c', () => ({ triplet: { row: row(1), expires: 1e12 }, result: null }))
  await other.counts()
  recounting.applyRecount(census)
  t.same(await store.counts(), { triplets: 7, clients: 0 }, '3 counted + 4 handed over meanwhile')
})

t.test('a write that fails half-way is rolled back: nothing half-written, even after close and reopen', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  await store.updateGreylist('kept', 'c', () => ({ triplet: { row: row(1), expires: 9 }, result: null }))
  // The triplet row is written, then the client row breaks a NOT NULL constraint.
  const broken = { row: { count: 1, last: 2, lastCounted: 2 }, expires: null as unknown as number }
  await t.rejects(store.updateGreylist('half', 'c', () => ({ triplet: { row: row(2), expires: 9 }, client: broken, result: null })), { failure: 'error' })
  t.same(await store.counts(), { triplets: 1, clients: 0 }, 'the committed insert before it still counts')
  store.close()
  const db = new Database(path.join(dir, 'db', 'greylist.sqlite'), { readonly: true })
  t.teardown(() => db.close())
  t.same(db.prepare('SELECT key FROM triplet').pluck().all(), ['kept'], 'the failed request left no triplet')
  t.same(db.prepare('SELECT key FROM client').pluck().all(), [])
  const { store: reopened } = makeStore(dir)
  t.teardown(() => reopened.close())
  t.same(await reopened.counts(), { triplets: 1, clients: 0 })
})

t.test('refuses a world-writable directory with a clear error', async (t) => {
  const dir = t.testdir()
  const open = path.join(dir, 'open')
  fs.mkdirSync(open)
  fs.chmodSync(open, 0o1777)
  const store = new SqliteStore({ path: path.join(open, 'x.sqlite'), busyTimeoutMs: 100, renameCorrupt: true, log: () => undefined })
  await t.rejects(store.updateGreylist('k', 'c', () => ({ result: null })), { failure: 'unavailable', message: /world-writable directory/ })
  t.notOk(fs.existsSync(path.join(open, 'x.sqlite')), 'no file created there')
})

t.test('a corrupt file is renamed aside and a fresh database used', async (t) => {
  const dir = t.testdir()
  const { store, logs } = makeStore(dir)
  t.teardown(() => store.close())
  const file = path.join(dir, 'db', 'greylist.sqlite')
  fs.mkdirSync(path.dirname(file), { mode: 0o700 })
  fs.writeFileSync(file, 'this is not a database, just some text that is long enough to look like a header '.repeat(100), { mode: 0o600 })
  t.equal(await store.updateGreylist('k', 'c', () => ({ triplet: { row: row(1), expires: 9 }, result: 'fresh' })), 'fresh')
  const aside = fs.readdirSync(path.dirname(file)).filter((f) => f.includes('.corrupt-'))
  t.equal(aside.length, 1, 'one file renamed aside')
  t.match(logs.join('\n'), /corrupt file renamed to/)
})

t.test('with db_corrupt_action=fail the corrupt file stays and every call fails as corrupt', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir, { renameCorrupt: false })
  t.teardown(() => store.close())
  const file = path.join(dir, 'db', 'greylist.sqlite')
  fs.mkdirSync(path.dirname(file), { mode: 0o700 })
  fs.writeFileSync(file, 'garbage'.repeat(1000), { mode: 0o600 })
  await t.rejects(store.updateGreylist('k', 'c', () => ({ result: null })), { failure: 'corrupt' })
  t.ok(fs.existsSync(file))
})

t.test('a lock held longer than the busy timeout is a busy failure, and the store recovers', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  t.teardown(() => store.close())
  await store.updateGreylist('k', 'c', () => ({ result: null }))
  store.commitPending()
  const other = new Database(path.join(dir, 'db', 'greylist.sqlite'), { timeout: 0 })
  other.exec('BEGIN IMMEDIATE')
  const write = (result: string) => () => ({ triplet: { row: row(1), expires: 2 }, result })
  await t.rejects(store.updateGreylist('k', 'c', write('locked')), { failure: 'busy' })
  t.equal(await store.updateGreylist('k', 'c', () => ({ result: 'read only' })), 'read only', 'a request that writes nothing needs no lock')
  other.exec('COMMIT')
  other.close()
  t.equal(await store.updateGreylist('k', 'c', write('again')), 'again')
})

t.test('a newer schema version is refused, not downgraded', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'db', 'greylist.sqlite')
  fs.mkdirSync(path.dirname(file), { mode: 0o700 })
  const db = new Database(file)
  db.pragma(`user_version = ${SCHEMA_VERSION + 1}`)
  db.close()
  const { store } = makeStore(dir)
  await t.rejects(store.updateGreylist('k', 'c', () => ({ result: null })), { failure: 'unavailable', message: /newer than this policyd-ts supports/ })
})

t.test('an unusable path waits before reopening', async (t) => {
  const dir = t.testdir()
  fs.writeFileSync(path.join(dir, 'db'), 'a file where the directory should be')
  let now = 100
  const { store } = makeStore(dir, { now: () => now, reopenDelay: 5 })
  const e1 = await store.updateGreylist('k', 'c', () => ({ result: null })).catch((e: unknown) => e)
  t.ok(e1 instanceof StoreError)
  const e2 = await store.updateGreylist('k', 'c', () => ({ result: null })).catch((e: unknown) => e)
  t.equal(e2, e1, 'same error returned without retrying during the delay')
  fs.rmSync(path.join(dir, 'db'))
  now += 6
  t.equal(await store.updateGreylist('k', 'c', () => ({ result: 'open' })), 'open', 'reopened after the delay')
  store.close()
})

t.test('error classes', async (t) => {
  const cases: Array<[string, string]> = [
    ['SQLITE_BUSY', 'busy'], ['SQLITE_BUSY_SNAPSHOT', 'busy'], ['SQLITE_LOCKED', 'busy'],
    ['SQLITE_CORRUPT', 'corrupt'], ['SQLITE_NOTADB', 'corrupt'],
    ['SQLITE_FULL', 'full'], ['ENOSPC', 'full'],
    ['SQLITE_READONLY', 'readonly'], ['SQLITE_READONLY_DBMOVED', 'readonly'], ['EACCES', 'readonly'],
    ['SQLITE_CANTOPEN', 'unavailable'], ['SQLITE_IOERR_WRITE', 'unavailable'],
    ['SQLITE_MISUSE', 'error'],
    ['EDQUOT', 'full'], ['EPERM', 'readonly'], ['EROFS', 'readonly'], ['SQLITE_PERM', 'readonly'], ['SQLITE_AUTH', 'readonly'],
    ['ENOENT', 'unavailable'], ['ENOTDIR', 'unavailable'],
    // Classes are read from the start of the code only.
    ['X_SQLITE_BUSY', 'error'], ['X_SQLITE_CORRUPT', 'error'], ['X_SQLITE_READONLY', 'error'], ['X_SQLITE_IOERR', 'error'], ['', 'error'],
  ]
  for (const [code, want] of cases) t.equal(classifyError(Object.assign(new Error(code), { code })), want, code)
  t.equal(classifyError(new Error('no code at all')), 'error')
  t.equal(classifyError(new StoreError('full', 'x')), 'full', 'a StoreError keeps its class')
})

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))
const writeRow = (result: string) => () => ({ triplet: { row: row(1), expires: 2 }, result })

/** Rows another connection sees: what is committed. */
function committedKeys(dir: string): string[] {
  const db = new Database(dbFile(dir), { readonly: true })
  try {
    return (db.prepare('SELECT key FROM triplet ORDER BY key').all() as Array<{ key: string }>).map((r) => r.key)
  } finally {
    db.close()
  }
}

t.test('a write is committed right after the reply (the next turn of the event loop), not before', async (t) => {
  const dir = t.testdir()
  const { store, logs } = makeStore(dir)
  t.teardown(() => store.close())
  await store.purgeExpired(0, 10)
  await store.updateGreylist('k1', 'c', writeRow('a'))
  t.same(committedKeys(dir), [], 'not yet committed when the answer is there')
  await tick()
  t.same(committedKeys(dir), ['k1'], 'committed one turn later')
  await store.updateGreylist('k2', 'c', writeRow('b'))
  await tick()
  await store.updateGreylist('k3', 'c', writeRow('c'))
  await tick()
  t.same(committedKeys(dir), ['k1', 'k2', 'k3'])
  t.same(logs.filter((l) => /commit failed/.test(l)), [], 'no COMMIT without a transaction')
})

t.test('after waiting for another writer, writes commit before the reply and changeless requests take no lock', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir, { busyTimeoutMs: 30 })
  t.teardown(() => store.close())
  await store.updateGreylist('k0', 'c', writeRow('first'))
  store.commitPending()
  const other = new Database(dbFile(dir), { timeout: 0 })
  other.exec('BEGIN IMMEDIATE')
  const started = performance.now()
  await t.rejects(store.updateGreylist('k1', 'c', writeRow('locked')), { failure: 'busy', message: /database .*greylist.sqlite: database is locked/ })
  t.ok(performance.now() - started >= 25, 'waited for the busy timeout before giving up')
  t.equal(await store.updateGreylist('k0', 'c', () => ({ result: 'changeless' })), 'changeless', 'answered from a plain read while the lock is held')
  other.exec('COMMIT')
  other.close()
  t.equal(await store.updateGreylist('k2', 'c', writeRow('written')), 'written')
  t.same(committedKeys(dir), ['k0', 'k2'], 'committed before the reply while writers compete')
  t.equal(fs.readdirSync(path.dirname(dbFile(dir))).filter((f) => f.includes('corrupt')).length, 0, 'a busy database is not taken for a corrupt one')
})

t.test("lock waits in 'yield' mode: the event loop runs while waiting; the lock freed in time lets the write through", async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir, { busyTimeoutMs: 2000, lockWaits: 'yield' })
  t.teardown(() => store.close())
  await store.updateGreylist('k0', 'c', writeRow('first'))
  store.commitPending()
  const other = new Database(dbFile(dir), { timeout: 0 })
  other.exec('BEGIN IMMEDIATE')
  setTimeout(() => {
    other.exec('COMMIT')
    other.close()
  }, 50)
  t.equal(await store.updateGreylist('k1', 'c', writeRow('after the wait')), 'after the wait')
  t.equal(await store.purgeExpired(-1, 10), 0)
})

t.test("lock waits in 'yield' mode end after the busy timeout as a busy failure", async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir, { busyTimeoutMs: 60, lockWaits: 'yield' })
  t.teardown(() => store.close())
  await store.updateGreylist('k0', 'c', writeRow('first'))
  store.commitPending()
  const other = new Database(dbFile(dir), { timeout: 0 })
  other.exec('BEGIN IMMEDIATE')
  t.teardown(() => other.close())
  let turns = 0
  const timer = setInterval(() => turns++, 5)
  const started = performance.now()
  await t.rejects(store.updateGreylist('k1', 'c', writeRow('x')), { failure: 'busy', message: /locked by another process for 60 ms/ })
  clearInterval(timer)
  t.ok(performance.now() - started >= 55, 'waited the whole busy timeout')
  t.ok(turns > 0, 'other work ran meanwhile')
  await t.rejects(store.purgeExpired(0, 10), { failure: 'busy' })
  other.exec('ROLLBACK')
})

t.test('a client row can be deleted, and the count follows', async (t) => {
  const { store } = makeStore(t.testdir())
  t.teardown(() => store.close())
  await store.updateGreylist('k', 'c', () => ({ client: { row: { count: 1, last: 1, lastCounted: 1 }, expires: 9 }, result: null }))
  t.same(await store.counts(), { triplets: 0, clients: 1 })
  let seen: GreylistView | undefined
  await store.updateGreylist('k', 'c', (view) => ((seen = view), { client: null, result: null }))
  t.same(seen?.client, { count: 1, last: 1, lastCounted: 1 })
  await store.updateGreylist('k', 'c', () => ({ client: null, result: null }))
  t.same(await store.counts(), { triplets: 0, clients: 0 }, 'deleting a missing row changes no count')
})

t.test("a process's inserts reach the shared counts when it closes; a new process starts from them", async (t) => {
  const dir = t.testdir()
  const a = makeStore(dir).store
  for (let i = 0; i < 3; i++) await a.updateGreylist(`k${i}`, `c${i}`, () => ({ triplet: { row: row(i), expires: 99 }, client: i === 0 ? { row: { count: 1, last: 1, lastCounted: 1 }, expires: 99 } : undefined, result: null }))
  a.close()
  const b = makeStore(dir).store
  t.teardown(() => b.close())
  let seen: GreylistView | undefined
  await b.updateGreylist('new', 'c', (view) => ((seen = view), { result: null }))
  t.equal(seen?.tripletCount, 3, 'the table-full bound counts rows written by other processes')
  t.same(await b.counts(), { triplets: 3, clients: 1 })
})

t.test('a negative shared count (a process lost its share) is reset to 0 and counts on from there', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  t.teardown(() => store.close())
  await store.counts()
  const db = new Database(dbFile(dir))
  db.prepare("UPDATE meta SET value = -5 WHERE name = 'triplet_count'").run()
  db.close()
  t.same(await store.counts(), { triplets: 0, clients: 0 })
  for (let i = 0; i < 3; i++) await store.updateGreylist(`k${i}`, 'c', writeRow('x'))
  t.same(await store.counts(), { triplets: 3, clients: 0 })
})

t.test('the purge cursor: pages go on from where the last stopped, start over after the last key, and reach every key', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  t.teardown(() => store.close())
  // Keys that sort before and after the letters: live rows first, expired ones last.
  const keys = ['0live', '1live', '2live', 'Alive', 'blive', 'x-expired', 'y-expired', 'z-expired']
  for (const k of keys) await store.updateGreylist(k, 'c', () => ({ triplet: { row: row(1), expires: k.endsWith('expired') ? 1 : 99 }, result: null }))
  t.equal(await store.purgeExpired(50, 3), 0, 'keys 1-3: live')
  t.equal(await store.purgeExpired(50, 3), 1, 'keys 4-6')
  t.equal(await store.purgeExpired(50, 3), 2, 'keys 7-8, a short page: the cursor starts over')
  t.same(committedKeys(dir).length, 5)
  // Now expire the first keys: after the wrap they are reached again.
  const db = new Database(dbFile(dir))
  db.prepare("UPDATE triplet SET expires = 1 WHERE key IN ('0live', '1live')").run()
  db.close()
  t.equal(await store.purgeExpired(50, 3), 2, 'the first page again')
  t.same(committedKeys(dir), ['2live', 'Alive', 'blive'])
})

t.test('database directory problems are told apart', async (t) => {
  const dir = t.testdir()
  fs.writeFileSync(path.join(dir, 'file'), 'not a directory')
  const under = new SqliteStore({ path: path.join(dir, 'file', 'sub', 'g.sqlite'), busyTimeoutMs: 10, renameCorrupt: true, log: () => undefined })
  await t.rejects(under.updateGreylist('k', 'c', () => ({ result: null })), { failure: 'unavailable', message: `database directory ${path.join(dir, 'file', 'sub')} cannot be reached: ENOTDIR: not a directory, stat '${path.join(dir, 'file', 'sub')}'` })
  const onFile = new SqliteStore({ path: path.join(dir, 'file', 'g.sqlite'), busyTimeoutMs: 10, renameCorrupt: true, log: () => undefined })
  await t.rejects(onFile.updateGreylist('k', 'c', () => ({ result: null })), { failure: 'unavailable', message: `database directory ${path.join(dir, 'file')} is not a directory` })
  const logs: string[] = []
  const deep = new SqliteStore({ path: path.join(dir, 'a', 'b', 'c', 'g.sqlite'), busyTimeoutMs: 10, renameCorrupt: true, log: (_l, m) => logs.push(m) })
  t.teardown(() => deep.close())
  t.equal(await deep.updateGreylist('k', 'c', () => ({ result: 'made' })), 'made', 'missing directories are made, several levels deep')
  t.equal(fs.statSync(path.join(dir, 'a', 'b', 'c')).mode & 0o777, 0o700)
  t.same(logs, [`database ${path.join(dir, 'a', 'b', 'c', 'g.sqlite')} migrated from schema version 0 to ${SCHEMA_VERSION}`])
})

t.test('the default clock: a failed open is not retried for 2 s', async (t) => {
  const dir = t.testdir()
  fs.writeFileSync(path.join(dir, 'db'), 'a file where the directory should be')
  const store = new SqliteStore({ path: path.join(dir, 'db', 'g.sqlite'), busyTimeoutMs: 10, renameCorrupt: true, log: () => undefined })
  t.teardown(() => store.close())
  await t.rejects(store.updateGreylist('k', 'c', () => ({ result: null })), { failure: 'unavailable' })
  fs.rmSync(path.join(dir, 'db'))
  await t.rejects(store.updateGreylist('k', 'c', () => ({ result: null })), { failure: 'unavailable' }, 'still the old error')
})

t.test('a failed open is retried at the exact end of the delay', async (t) => {
  const dir = t.testdir()
  fs.writeFileSync(path.join(dir, 'db'), 'a file where the directory should be')
  let now = 100
  const { store } = makeStore(dir, { now: () => now, reopenDelay: 5 })
  t.teardown(() => store.close())
  await t.rejects(store.updateGreylist('k', 'c', () => ({ result: null })))
  fs.rmSync(path.join(dir, 'db'))
  now = 105
  t.equal(await store.updateGreylist('k', 'c', () => ({ result: 'open' })), 'open')
})

t.test('a corrupt file goes aside under a name with the time', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  t.teardown(() => store.close())
  const file = dbFile(dir)
  fs.mkdirSync(path.dirname(file), { mode: 0o700 })
  fs.writeFileSync(file, 'not a database '.repeat(200), { mode: 0o600 })
  await store.updateGreylist('k', 'c', writeRow('fresh'))
  const aside = fs.readdirSync(path.dirname(file)).filter((f) => f.includes('.corrupt-'))
  t.match(aside, [/^greylist\.sqlite\.corrupt-\d{4}-\d{2}-\d{2}T\d{9}Z$/])
  t.equal(fs.readFileSync(path.join(path.dirname(file), aside[0]), 'utf8'), 'not a database '.repeat(200))
})

t.test('--test-mode probe: opens, writes and rolls back, leaving the database as it was', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'probe.sqlite')
  t.throws(() => probeDatabase(file, { busyTimeoutMs: 10, create: false }), 'a missing file without create')
  t.notOk(fs.existsSync(file))
  t.same(probeDatabase(file, { busyTimeoutMs: 10, create: true }), { schemaVersion: 0 })
  const db = new Database(file)
  t.equal(db.pragma('journal_mode', { simple: true }), 'wal', 'a new database is made in WAL mode')
  t.same(db.prepare("SELECT name FROM sqlite_master").all(), [], 'the test table was rolled back')
  db.pragma('user_version = 7')
  db.exec('BEGIN IMMEDIATE')
  t.throws(() => probeDatabase(file, { busyTimeoutMs: 10, create: false }), { code: /^SQLITE_BUSY/ }, 'a held write lock is reported')
  db.exec('ROLLBACK')
  t.same(probeDatabase(file, { busyTimeoutMs: 10, create: false }), { schemaVersion: 7 })
  db.close()
})

t.test("lockWaits 'yield' (the daemon): waiting for another process's lock leaves the event loop free; 'block' (spawn) waits in place", async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'db', 'greylist.sqlite')
  const { store: daemon } = makeStore(dir, { lockWaits: 'yield', busyTimeoutMs: 2000 })
  t.teardown(() => daemon.close())
  await daemon.updateGreylist('warm', 'c', () => ({ result: null }))
  await new Promise((r) => setImmediate(r))
  // Another "process": a raw connection holding the write lock for 150 ms.
  const other = new Database(file)
  t.teardown(() => other.close())
  other.exec('BEGIN IMMEDIATE')
  setTimeout(() => other.exec('COMMIT'), 150)
  let ticks = 0
  const ticker = setInterval(() => ticks++, 10)
  const started = Date.now()
  const result = await daemon.updateGreylist('k', 'c', () => ({ triplet: { row: row(1), expires: 99 }, result: 'written' }))
  clearInterval(ticker)
  t.equal(result, 'written', 'done once the lock was free')
  t.ok(Date.now() - started >= 140, 'it did wait for the lock')
  t.ok(ticks >= 5, `timers ran while it waited (${ticks} ticks of 10 ms)`)
})

t.test('of several whitelist entries naming a request, the view holds the one that lasts longest; of equals, the first named', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  t.teardown(() => store.close())
  const [a, b] = ['client\t192.0.2.0/24', 'sender\ta@example.net']
  const cases: Array<[number, number, { key: string; expires: number }]> = [
    [500, 900, { key: b, expires: 900 }],
    [900, 500, { key: a, expires: 900 }],
    [Infinity, 900, { key: a, expires: Infinity }],
    [500, Infinity, { key: b, expires: Infinity }],
    [700, 700, { key: a, expires: 700 }],
  ]
  for (const [expiresA, expiresB, want] of cases) {
    await store.setWhitelist({ key: a, expires: expiresA, note: '', setAt: 1 })
    await store.setWhitelist({ key: b, expires: expiresB, note: '', setAt: 1 })
    const view = await store.updateGreylist('k', 'c', (v) => ({ result: v }), () => [a, '', b, ''])
    t.same(view.whitelisted, want, `${a} until ${expiresA}, ${b} until ${expiresB}`)
  }
})

/**
 * Break the WAL index (-shm) of `file` as the next COMMIT sees it: every
 * slot of its first hash table (bytes 16384-32767 of the first 32 KiB
 * block) taken by frame 1, SQLite finds no free slot for the frames it
 * appends and reports the database corrupt. (A COMMIT that writes the
 * WAL's first frame clears the table first: the WAL must have frames.)
 */
function breakWalIndex(file: string): void {
  const fd = fs.openSync(`${file}-shm`, 'r+')
  const taken = Buffer.alloc(16384)
  for (let i = 0; i < taken.length; i += 2) taken.writeUInt16LE(1, i)
  fs.writeSync(fd, taken, 0, taken.length, 16384)
  fs.closeSync(fd)
}

// With its inserts handed to the shared count first (closing the store has
// nothing to hand over) or not: those of the corrupt file must not be handed
// to the fresh one (that used to move the file a second time and count them).
for (const countedFirst of [true, false]) {
  t.test(`a COMMIT after the reply that finds the database corrupt (inserts ${countedFirst ? 'counted' : 'not yet counted'}): logged, the file goes aside once, the next write commits before its reply`, async (t) => {
    const dir = t.testdir()
    const { store, logs } = makeStore(dir)
    t.teardown(() => store.close())
    const file = dbFile(dir)
    await store.updateGreylist('k0', 'c', writeRow('first'))
    if (countedFirst) await store.counts()
    // One answered whose COMMIT is still to run.
    t.equal(await store.updateGreylist('k1', 'c', writeRow('answered')), 'answered')
    breakWalIndex(file)
    store.commitPending()
    const aside = fs.readdirSync(path.dirname(file)).filter((f) => f.includes('.corrupt-'))
    t.equal(aside.length, 1, 'the file went aside')
    t.same(logs.slice(1), [
      `database ${file}: commit failed (corrupt): database disk image is malformed; the next requests commit before their reply`,
      `database ${file}: database disk image is malformed; corrupt file renamed to ${path.join(path.dirname(file), aside[0])}, starting a fresh database`,
    ])
    await store.updateGreylist('k2', 'c', writeRow('fresh'))
    t.same(committedKeys(dir), ['k2'], 'a fresh database, written before the reply')
    t.same(await store.counts(), { triplets: 1, clients: 0 }, 'it counts its own row only')
    await store.updateGreylist('k3', 'c', writeRow('fresh'))
    t.same(committedKeys(dir), ['k2'], 'once a COMMIT went through, after the reply again')
  })
}

t.test('a COMMIT after the reply that fails otherwise: logged, the database closed (not renamed), the next write fails before its reply', async (t) => {
  const dir = t.testdir()
  const { store, logs } = makeStore(dir)
  t.teardown(() => store.close())
  const file = dbFile(dir)
  await store.counts()
  // A deferred foreign key that the insert breaks: SQLite refuses the
  // COMMIT itself (better-sqlite3 enforces foreign keys). A full disk does
  // the same but needs a mount: test/blackbox/disk-full.test.ts.
  const other = new Database(file)
  other.exec(`CREATE TABLE parent (key TEXT PRIMARY KEY);
    CREATE TABLE child (key TEXT REFERENCES parent (key) DEFERRABLE INITIALLY DEFERRED);
    CREATE TRIGGER triplet_child AFTER INSERT ON triplet BEGIN INSERT INTO child VALUES (NEW.key); END`)
  other.close()
  logs.length = 0
  t.equal(await store.updateGreylist('k1', 'c', writeRow('answered')), 'answered')
  t.ok(fs.existsSync(`${file}-wal`), 'open: its WAL is there')
  store.commitPending()
  t.same(logs, [`database ${file}: commit failed (error): FOREIGN KEY constraint failed; the next requests commit before their reply`])
  t.notOk(fs.existsSync(`${file}-wal`), 'closed: SQLite removed the WAL of its last connection')
  t.same(fs.readdirSync(path.dirname(file)).filter((f) => f.includes('.corrupt-')), [], 'nothing renamed aside')
  await t.rejects(store.updateGreylist('k2', 'c', writeRow('not answered')), { failure: 'error', message: `database ${file}: FOREIGN KEY constraint failed` }, 'committed before the reply: its failure is the reply')
})

t.test('a database without a saved purge cursor is purged from its first key', async (t) => {
  const dir = t.testdir()
  const { store } = makeStore(dir)
  t.teardown(() => store.close())
  for (const k of ['0-expired', 'A-expired', 'z-live']) await store.updateGreylist(k, 'c', () => ({ triplet: { row: row(1), expires: k.endsWith('expired') ? 1 : 99 }, result: null }))
  await store.counts()
  const db = new Database(dbFile(dir))
  db.prepare("DELETE FROM meta WHERE name = 'triplet_cursor'").run()
  db.close()
  t.equal(await store.purgeExpired(50, 10), 2)
  t.same(committedKeys(dir), ['z-live'])
})

t.test('a recount that fails is logged and skipped: the upkeep step stands', async (t) => {
  const dir = t.testdir()
  const file = dbFile(dir)
  const first = makeStore(dir)
  for (let i = 0; i < 200; i++) await first.store.updateGreylist(`key-${String(i).padStart(3, '0')}-${'x'.repeat(40)}`, 'c', writeRow('x'))
  first.store.close()
  // The last leaf page of the triplet table overwritten: a purge step
  // reading the first keys does not reach it, the recount's COUNT(*) does.
  const leaves = breakLeafPage(file, 'triplet', (pages) => pages[pages.length - 1])
  t.ok(leaves > 2, `several leaf pages (${leaves})`)
  const { store, logs } = makeStore(dir)
  t.teardown(() => store.close())
  t.equal(await store.purgeExpired(3, 1), 1, 'the first key purged')
  const aside = fs.readdirSync(path.dirname(file)).filter((f) => f.includes('.corrupt-'))
  t.same(logs, [
    `database ${file}: database disk image is malformed; corrupt file renamed to ${path.join(path.dirname(file), aside[0])}, starting a fresh database`,
    `row recount skipped: database ${file}: database disk image is malformed`,
  ])
})

t.test('the health check of a database it cannot open says why', async (t) => {
  const dir = t.testdir()
  fs.writeFileSync(path.join(dir, 'db'), 'a file where the directory should be')
  const { store } = makeStore(dir)
  t.same(await store.check(), { ok: false, lines: [`database ${dbFile(dir)}: database directory ${path.join(dir, 'db')} is not a directory`] })
})

t.test('a database directory that cannot be made: a dangling symbolic link', async (t) => {
  const dir = t.testdir()
  fs.symlinkSync(path.join(dir, 'gone'), path.join(dir, 'db'))
  const { store } = makeStore(dir)
  const db = path.join(dir, 'db')
  await t.rejects(store.updateGreylist('k', 'c', () => ({ result: null })), {
    failure: 'unavailable',
    message: `database directory ${db} does not exist and cannot be created: ENOENT: no such file or directory, stat '${db}'`,
  })
})

t.test('a corrupt file that cannot be renamed aside (its name would be too long) stays, the failure logged', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, `${'g'.repeat(240)}.sqlite`)
  fs.writeFileSync(file, 'not a database '.repeat(200), { mode: 0o600 })
  const logs: string[] = []
  const store = new SqliteStore({ path: file, busyTimeoutMs: 200, renameCorrupt: true, log: (_l, m) => logs.push(m) })
  t.teardown(() => store.close())
  await t.rejects(store.updateGreylist('k', 'c', () => ({ result: null })), { failure: 'corrupt', message: `database ${file}: file is not a database` })
  const escaped = file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  t.match(logs, [new RegExp(`^database ${escaped}: file is not a database; cannot rename the corrupt file aside: ENAMETOOLONG: name too long, rename '${escaped}' -> '${escaped}\\.corrupt-\\d{4}-\\d\\d-\\d\\dT\\d{9}Z'$`)])
  t.equal(logs.length, 1)
  t.same(fs.readdirSync(dir), [path.basename(file)], 'left where it was')
})

/**
 * A store opening `file` (schema version 0, so that it migrates) while
 * another process moves it aside: `move` runs at the moment between this
 * process's stat of the file and its COMMIT (the migration's, which logs
 * its line before it commits), after the WAL index is broken so that this
 * COMMIT finds the database corrupt.
 */
function openWhileMoved(t: { testdir(): string; teardown(fn: () => void): void }, move: (file: string) => void, extra: Partial<ConstructorParameters<typeof SqliteStore>[0]> = {}) {
  const dir = t.testdir()
  const file = path.join(dir, 'g.sqlite')
  // The other process's connection, its frames in the WAL.
  const other = new Database(file)
  t.teardown(() => other.close())
  other.pragma('journal_mode = WAL')
  other.exec("CREATE TABLE other (x); INSERT INTO other VALUES ('old file')")
  const logs: string[] = []
  const store = new SqliteStore({
    path: file, busyTimeoutMs: 200, renameCorrupt: true,
    log: (_l, m) => {
      if (logs.push(m) > 1) return
      breakWalIndex(file)
      for (const suffix of ['', '-wal', '-shm']) fs.renameSync(file + suffix, `${file}.aside${suffix}`)
      move(file)
    },
    ...extra,
  })
  t.teardown(() => store.close())
  const migrated = `database ${file} migrated from schema version 0 to ${SCHEMA_VERSION}`
  return { dir, file, store, logs, other, migrated }
}

t.test('a corrupt file that another process moved aside, making a fresh one, while this one opened it: the fresh one is used at once', async (t) => {
  const { dir, file, store, logs, other, migrated } = openWhileMoved(t, (file) => fs.writeFileSync(file, '', { mode: 0o600 }))
  t.equal(await store.updateGreylist('k', 'c', writeRow('fresh')), 'fresh')
  store.commitPending()
  t.same(logs, [migrated, migrated], 'the old file found corrupt, not moved again (no log of it), the fresh one migrated')
  const fresh = new Database(file, { readonly: true })
  t.same(fresh.prepare('SELECT key FROM triplet').pluck().all(), ['k'], 'the write went to the fresh file')
  fresh.close()
  t.same(fs.readdirSync(dir).filter((f) => f.includes('corrupt')), [])
  t.same(other.prepare('SELECT x FROM other').pluck().all(), ['old file'], 'the old file kept where the other process put it')
})

t.test('a corrupt file that another process moved aside, no fresh one made yet: the request fails, the next open makes one', async (t) => {
  let now = 100
  const { file, store, logs, migrated } = openWhileMoved(t, () => undefined, { now: () => now, reopenDelay: 5 })
  await t.rejects(store.updateGreylist('k', 'c', writeRow('not answered')), { failure: 'corrupt', message: `database ${file}: database disk image is malformed` })
  t.same(logs, [migrated, `database ${file}: database disk image is malformed; cannot rename the corrupt file aside: ENOENT: no such file or directory, stat '${file}'`])
  t.notOk(fs.existsSync(file), 'no fresh file made at once')
  now += 5
  t.equal(await store.updateGreylist('k', 'c', writeRow('fresh')), 'fresh', 'after the reopen delay')
  t.ok(fs.existsSync(file))
})

t.test('the whitelist keys of a request are made only while the whitelist has entries, as found at each upkeep step', async (t) => {
  const { store } = makeStore(t.testdir())
  t.teardown(() => store.close())
  const key = 'sender\ta@example.net'
  let made = 0
  const request = () => store.updateGreylist('k', 'c', (v) => ({ result: v.whitelisted }), () => {
    made++
    return ['', '', key, '']
  })
  t.equal(await request(), undefined)
  await store.purgeExpired(0, 10)
  t.equal(await request(), undefined)
  t.equal(made, 0, 'an empty whitelist: no keys made, before and after an upkeep step')
  await store.setWhitelist({ key, expires: Infinity, note: '', setAt: 1 })
  t.same(await request(), { key, expires: Infinity })
  t.equal(made, 1, 'made while it has an entry')
  t.equal(await store.deleteWhitelist(key), true)
  await store.purgeExpired(0, 10)
  t.equal(await request(), undefined)
  t.equal(made, 1, 'none made once an upkeep step found it empty again')
})

/** Another process's connection to the store in `dir`, holding the write lock (COMMIT or ROLLBACK on it lets go). */
function holdWriteLock(t: { teardown(fn: () => void): void }, dir: string): Database.Database {
  const other = new Database(dbFile(dir), { timeout: 0 })
  t.teardown(() => other.close())
  other.exec('BEGIN IMMEDIATE')
  return other
}

/** A store in a new directory with one committed row (k0), so that its file and schema exist. */
async function storeWithRow(t: { testdir(): string; teardown(fn: () => void): void }, extra: Partial<ConstructorParameters<typeof SqliteStore>[0]>) {
  const dir = t.testdir()
  const { store } = makeStore(dir, extra)
  t.teardown(() => store.close())
  await store.updateGreylist('k0', 'c', writeRow('first'))
  store.commitPending()
  return { dir, store }
}

const clientRow = (result: string, decided: { n: number }) => () => {
  decided.n++
  return { client: { row: { count: 1, last: 1, lastCounted: 1 }, expires: 9 }, result }
}

t.test('a request reads and decides once; while writers compete, a change of the client row alone still waits for the lock', async (t) => {
  const { dir, store } = await storeWithRow(t, { busyTimeoutMs: 30 })
  const decided = { n: 0 }
  t.equal(await store.updateGreylist('k', 'c1', clientRow('a', decided)), 'a')
  t.equal(decided.n, 1, 'no competition: one read (under the lock), one decision')
  store.commitPending()
  const other = holdWriteLock(t, dir)
  await t.rejects(store.updateGreylist('k0', 'c', writeRow('locked')), { failure: 'busy' })
  decided.n = 0
  await t.rejects(store.updateGreylist('k', 'c2', clientRow('b', decided)), { failure: 'busy' }, 'not answered from the plain read: it has a row to write')
  t.equal(decided.n, 1, 'decided on the plain read, then failed for the lock')
  other.exec('COMMIT')
  decided.n = 0
  t.equal(await store.updateGreylist('k', 'c2', clientRow('c', decided)), 'c')
  t.equal(decided.n, 2, 'decided on the plain read, then again under the lock')
  t.same(other.prepare('SELECT key FROM client ORDER BY key').pluck().all(), ['c1', 'c2'], 'the client row written, before the reply')
})

t.test('competition for the lock is remembered for one second after the last wait, up to that exact moment', async (t) => {
  const { dir, store } = await storeWithRow(t, { busyTimeoutMs: 10 })
  // performance.now() is the clock of that memory: held still here.
  let clock = 5000
  Object.defineProperty(performance, 'now', { value: () => clock, configurable: true, writable: true })
  t.teardown(() => delete (performance as { now?: unknown }).now)
  const other = holdWriteLock(t, dir)
  await t.rejects(store.updateGreylist('k1', 'c', writeRow('locked')), { failure: 'busy' })
  other.exec('COMMIT')
  const cases: Array<[number, string, boolean]> = [[5999.5, 'k2', true], [6000, 'k3', false]]
  for (const [at, key, contended] of cases) {
    clock = at
    const decided = { n: 0 }
    const write = () => {
      decided.n++
      return writeRow(key)()
    }
    t.equal(await store.updateGreylist(key, 'c', write), key)
    t.equal(decided.n, contended ? 2 : 1, `at ${at} ms: ${contended ? 'a plain read first' : 'no plain read'}`)
    t.equal(committedKeys(dir).includes(key), contended, `at ${at} ms: committed ${contended ? 'before' : 'after'} the reply`)
    await tick()
  }
  t.same(committedKeys(dir), ['k0', 'k2', 'k3'])
})

/**
 * Records the sleeps of a lock wait, passing each on to the real timer: in
 * 'yield' mode the store's own setTimeout calls (told from others by the
 * stack), in 'block' mode Atomics.wait (only the store calls it here).
 */
function recordSleeps(mode: 'yield' | 'block'): { sleeps: number[]; restore(): void } {
  const sleeps: number[] = []
  if (mode === 'yield') {
    const real = globalThis.setTimeout
    globalThis.setTimeout = ((fn: () => void, ms: number) => {
      if (new Error().stack?.includes(`store${path.sep}sqlite.ts`)) sleeps.push(ms)
      return real(fn, ms)
    }) as typeof setTimeout
    return { sleeps, restore: () => { globalThis.setTimeout = real } }
  }
  const real = Atomics.wait
  Atomics.wait = ((cell: Int32Array, index: number, value: number, ms?: number) => {
    sleeps.push(ms as number)
    return real(cell, index, value, ms)
  }) as typeof Atomics.wait
  return { sleeps, restore: () => { Atomics.wait = real } }
}

for (const mode of ['yield', 'block'] as const) {
  t.test(`lock waits in '${mode}' mode: sleeps from 20 µs, each twice the last up to 2 ms, the last cut so they add up to the busy timeout`, async (t) => {
    const { dir, store } = await storeWithRow(t, { busyTimeoutMs: 10, lockWaits: mode })
    const other = holdWriteLock(t, dir)
    const { sleeps, restore } = recordSleeps(mode)
    try {
      await t.rejects(store.updateGreylist('k1', 'c', writeRow('x')), { failure: 'busy' })
    } finally {
      restore()
    }
    other.exec('ROLLBACK')
    t.equal(sleeps[0], 0.02, 'the first sleep')
    for (let i = 1; i < sleeps.length - 1; i++) t.equal(sleeps[i], Math.min(sleeps[i - 1] * 2, 2), `sleep ${i + 1}: ${sleeps[i]} ms`)
    const last = sleeps[sleeps.length - 1]
    t.ok(last > 0 && last < Math.min(sleeps[sleeps.length - 2] * 2, 2), `the last sleep cut short: ${last} ms`)
    t.ok(Math.abs(sleeps.reduce((a, b) => a + b, 0) - 10) < 1e-9, `the sleeps add up to the busy timeout (${sleeps.length} of them)`)
  })
}
