import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
import { classifyError, probeDatabase, SCHEMA_VERSION, SqliteStore } from '../lib/store/sqlite'
import { StoreError, type GreylistView } from '../lib/store/types'

function makeStore(dir: string, extra: Partial<ConstructorParameters<typeof SqliteStore>[0]> = {}) {
  const logs: string[] = []
  const store = new SqliteStore({
    path: path.join(dir, 'db', 'greylist.sqlite'),
    busyTimeoutMs: 200,
    renameCorrupt: true,
    log: (_l, m) => logs.push(m),
    ...extra,
  })
  return { store, logs }
}

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

t.test('purge walks the keys in steps, removes only expired rows, and keeps the counts', async (t) => {
  const { store } = makeStore(t.testdir())
  t.teardown(() => store.close())
  for (let i = 0; i < 10; i++) {
    await store.updateGreylist(`k${i}`, `c${i}`, () => ({ triplet: { row: row(i), expires: i }, client: { row: { count: 1, last: i, lastCounted: i }, expires: i }, result: null }))
  }
  t.equal(await store.purgeExpired(5, 3), 6, '3 triplets + 3 clients at most')
  t.equal(await store.purgeExpired(5, 100), 4, 'the rest of those before 5')
  t.same(await store.counts(), { triplets: 5, clients: 5 })
  t.equal(await store.purgeExpired(5, 100), 0)
})

t.test('a delete write removes the row and the count follows', async (t) => {
  const { store } = makeStore(t.testdir())
  t.teardown(() => store.close())
  await store.updateGreylist('k', 'c', () => ({ triplet: { row: row(1), expires: 9 }, result: null }))
  await store.updateGreylist('k', 'c', () => ({ triplet: null, result: null }))
  t.same(await store.counts(), { triplets: 0, clients: 0 })
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

const dbFile = (dir: string): string => path.join(dir, 'db', 'greylist.sqlite')
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
