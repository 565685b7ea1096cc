// store migrate --from sqlite --to redis: the copying logic over in-memory
// stores, the SQLite reader, and the whole copy from a SqliteStore into a real
// private redis-server, read back through the RedisStore with a test clock.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { loadConfig } from '../lib/config'
import { evaluateTriplet } from '../lib/greylist/triplet'
import { greylistParams } from '../lib/greylist/check'
import Database from 'better-sqlite3'
import { SCHEMA_VERSION, SqliteStore, probeDatabase } from '../lib/store/sqlite'
import { SqliteExport, type ExportedRows, type RowKind } from '../lib/store/sqlite-export'
import { RedisStore } from '../lib/store/redis'
import { RedisImporter, IMPORT_BATCH, type ImportCounts } from '../lib/store/redis-import'
import { parseRedisUrl, type RedisEndpoint } from '../lib/store/redis-url'
import {
  MigrationRefused,
  NOT_COPIED,
  PROGRESS_EVERY,
  describeSummary,
  migrate,
  runStoreMigrate,
  type MigrateIo,
  type MigrationSource,
  type MigrationSummary,
  type MigrationTarget,
} from '../lib/store/migrate'
import type { StoreAdmin, WhitelistEntry } from '../lib/store/types'
import type { OverrideEntry } from '../lib/ratelimit/types'
import { startRedisServer, type RedisServer } from './helpers/redis-server'

const configOf = (cli: Record<string, string>) => loadConfig({ cli, configPath: '/dev/null', env: {}, readFile: () => '' })
const config = configOf({}).config
const params = greylistParams(config)

function io(now: number): MigrateIo & { outText: string; errText: string } {
  const r = {
    outText: '',
    errText: '',
    out: (text: string) => void (r.outText += text),
    err: (text: string) => void (r.errText += text),
    now: () => now,
  }
  return r
}

/** Whitelist entries and (optionally) overrides in memory, with the StoreAdmin methods the migration uses. */
function memoryAdmin(entries: WhitelistEntry[] = [], overrides?: OverrideEntry[]): StoreAdmin & { wl: Map<string, WhitelistEntry>; ov?: Map<string, OverrideEntry> } {
  const wl = new Map(entries.map((e) => [e.key, e]))
  const unused = async (): Promise<never> => {
    throw new Error('not used by the migration')
  }
  const admin = {
    wl,
    listTriplets: unused,
    deleteTriplets: unused,
    deleteWhitelist: unused,
    addStats: unused,
    stats: unused,
    purgeAll: unused,
    check: unused,
    setWhitelist: async (e: WhitelistEntry) => void wl.set(e.key, { ...e }),
    listWhitelist: async () => [...wl.values()].sort((a, b) => (a.key < b.key ? -1 : 1)),
  }
  if (!overrides) return admin
  const ov = new Map(overrides.map((e) => [e.key, e]))
  return Object.assign(admin, {
    ov,
    setOverride: async (e: OverrideEntry) => void ov.set(e.key, { ...e }),
    listOverrides: async (now: number) => [...ov.values()].filter((e) => e.expires > now),
  })
}

const triplet = (key: string, last: number, expires: number): ExportedRows['triplet'] => ({ key, first: last - 10, last, passed: 0, count: 1, expires })

/**
 * A target keeping rows in a map with the import script's rule (newer or same `last` kept, expired by the
 * target's own clock `serverNow` skipped).
 */
function memoryTarget(admin: StoreAdmin, problem: string | null = null, serverNow = -Infinity): MigrationTarget & { rows: Map<string, { last: number }>; calls: number } {
  const rows = new Map<string, { last: number }>()
  const target = {
    rows,
    calls: 0,
    admin,
    formatProblem: async () => problem,
    importRows: async <K extends RowKind>(kind: K, batch: ReadonlyArray<ExportedRows[K]>, dryRun: boolean): Promise<ImportCounts> => {
      target.calls++
      const c = { written: 0, kept: 0, expired: 0 }
      for (const r of batch) {
        const have = rows.get(`${kind}:${r.key}`)
        if (r.expires < serverNow) c.expired++
        else if (have && have.last >= r.last) c.kept++
        else {
          c.written++
          if (!dryRun) rows.set(`${kind}:${r.key}`, { last: r.last })
        }
      }
      return c
    },
  }
  return target
}

function memorySource(triplets: ExportedRows['triplet'][], admin: StoreAdmin, pageSizes: number[] = [], clients: ExportedRows['client'][] = []): MigrationSource {
  return {
    admin,
    *pages<K extends RowKind>(kind: K, now: number, size: number): Generator<Array<ExportedRows[K]>> {
      pageSizes.push(size)
      const all = (kind === 'triplet' ? triplets : clients).filter((r) => r.expires >= now)
      for (let i = 0; i < all.length; i += size) yield all.slice(i, i + size) as Array<ExportedRows[K]>
    },
  }
}

const entry = (key: string, setAt: number, expires = Infinity): WhitelistEntry => ({ key, expires, note: `n${setAt}`, setAt })
const override = (key: string, setAt: number, expires = Infinity): OverrideEntry => ({ key, limits: '10msg/1h', expires, note: '', setAt })

t.test('migrate: rows, whitelist entries and overrides; the newer side wins; expired entries stay behind', async (t) => {
  const source = memorySource([triplet('a', 100, 500), triplet('b', 100, 500), triplet('gone', 50, 90)], memoryAdmin(
    [entry('sender\tnew@x', 20), entry('sender\told@x', 20), entry('sender\tended@x', 20, 99)],
    [override('sasl:alice', 30), override('sasl:bob', 30)],
  ))
  const targetAdmin = memoryAdmin([entry('sender\told@x', 25)], [override('sasl:bob', 40)])
  const target = memoryTarget(targetAdmin)
  target.rows.set('triplet:b', { last: 200 })
  const summary = await migrate(source, target, { dryRun: false, from: 'sqlite', to: 'redis' }, io(100))
  t.same(summary, {
    from: 'sqlite',
    to: 'redis',
    dryRun: false,
    triplets: { written: 1, kept: 1, expired: 0 },
    clients: { written: 0, kept: 0, expired: 0 },
    whitelist: { written: 1, kept: 1 },
    overrides: { written: 1, kept: 1 },
    notCopied: [...NOT_COPIED],
  })
  t.same([...target.rows], [['triplet:b', { last: 200 }], ['triplet:a', { last: 100 }]], 'the row expired before now is not offered at all')
  t.same([...targetAdmin.wl.keys()].sort(), ['sender\tnew@x', 'sender\told@x'])
  t.equal(targetAdmin.wl.get('sender\told@x')!.setAt, 25, 'the entry set later on the target is kept')
  t.same(targetAdmin.wl.get('sender\tnew@x'), entry('sender\tnew@x', 20), 'copied whole (expiry, note, set time)')
  t.equal(targetAdmin.ov!.get('sasl:bob')!.setAt, 40)
  t.same(targetAdmin.ov!.get('sasl:alice'), override('sasl:alice', 30))

  const again = await migrate(source, target, { dryRun: false, from: 'sqlite', to: 'redis' }, io(100))
  t.same([again.triplets, again.whitelist, again.overrides], [{ written: 0, kept: 2, expired: 0 }, { written: 0, kept: 2 }, { written: 0, kept: 2 }], 'a second run copies nothing')
})

t.test('migrate --dry-run counts what a run would copy and writes nothing', async (t) => {
  const targetAdmin = memoryAdmin([], [])
  const target = memoryTarget(targetAdmin)
  const source = memorySource([triplet('a', 100, 500)], memoryAdmin([entry('sender\tx@y', 1)], [override('global:*', 1)]))
  const summary = await migrate(source, target, { dryRun: true, from: 'sqlite', to: 'redis' }, io(100))
  t.same([summary.dryRun, summary.triplets.written, summary.whitelist.written, summary.overrides], [true, 1, 1, { written: 1, kept: 0 }])
  t.same([target.rows.size, targetAdmin.wl.size, targetAdmin.ov!.size], [0, 0, 0])
  t.match(describeSummary(summary), /^dry run, nothing written: sqlite -> redis\ntriplets: 1 to copy, 0 kept/)
})

t.test('overrides are copied only when both stores keep them; the summary says which does not', async (t) => {
  const withOverrides = memoryAdmin([], [override('sasl:alice', 1)])
  const summary = await migrate(memorySource([], withOverrides), memoryTarget(memoryAdmin()), { dryRun: false, from: 'sqlite', to: 'redis' }, io(100))
  t.same(summary.overrides, { notCopied: 'the redis store keeps no rate-limit overrides in this version' })
  const back = await migrate(memorySource([], memoryAdmin()), memoryTarget(withOverrides), { dryRun: false, from: 'sqlite', to: 'redis' }, io(100))
  t.same(back.overrides, { notCopied: 'the sqlite store keeps no rate-limit overrides in this version' })
  const text = describeSummary(summary)
  t.match(text, /^rate-limit overrides: not copied \(the redis store keeps/m)
  for (const what of NOT_COPIED) t.ok(text.includes(`not copied: ${what}\n`), what)
})

t.test('a progress line on stderr after each PROGRESS_EVERY rows, none for fewer', async (t) => {
  const rows = Array.from({ length: PROGRESS_EVERY * 2 + 5 }, (_, i) => triplet(`k${String(i).padStart(6, '0')}`, 100, 500))
  const out = io(100)
  const target = memoryTarget(memoryAdmin())
  await migrate(memorySource(rows, memoryAdmin()), target, { dryRun: false, from: 'sqlite', to: 'redis' }, out)
  t.same(out.errText.split('\n').filter(Boolean), [
    `policyd-ts store migrate: ${PROGRESS_EVERY} triplets read, ${PROGRESS_EVERY} copied`,
    `policyd-ts store migrate: ${PROGRESS_EVERY * 2} triplets read, ${PROGRESS_EVERY * 2} copied`,
  ])
  t.equal(target.calls, Math.ceil(rows.length / 2000) + 0, 'one target call per page of rows read (no client rows here)')
  const few = io(100)
  await migrate(memorySource(rows.slice(0, 10), memoryAdmin()), memoryTarget(memoryAdmin()), { dryRun: false, from: 'sqlite', to: 'redis' }, few)
  t.equal(few.errText, '')
})

t.test('a target whose format record differs is refused before anything is read', async (t) => {
  let read = false
  const source: MigrationSource = { admin: memoryAdmin(), pages: () => ((read = true), []) }
  await t.rejects(migrate(source, memoryTarget(memoryAdmin(), 'format 1 and greylist_privacy yes'), { dryRun: false, from: 'sqlite', to: 'redis' }, io(100)), { name: 'MigrationRefused' })
  t.notOk(read)
})

t.test('migrate: rows the target finds expired are counted; an entry set earlier on the target is replaced, one set as late kept; one ending now stays behind', async (t) => {
  const now = 100
  const clients: ExportedRows['client'][] = [
    { key: '192.0.2', count: 1, last: 90, lastCounted: 90, expires: 150 },
    { key: '198.51.100', count: 1, last: 90, lastCounted: 90, expires: 900 },
  ]
  const source = memorySource(
    [triplet('a', 90, 500), triplet('soon', 90, 150), triplet('later', 90, 300)],
    memoryAdmin(
      [entry('sender\tolder@x', 20), entry('sender\tsame@x', 20), entry('sender\tends-now@x', 20, now), entry('sender\tends-after@x', 20, now + 1)],
      [override('sasl:older', 30), override('sasl:same', 30)],
    ),
    [],
    clients,
  )
  const targetAdmin = memoryAdmin([entry('sender\tolder@x', 19), entry('sender\tsame@x', 20)], [override('sasl:older', 29), override('sasl:same', 30)])
  // The target's clock is ahead of the reader's: what expires before 200 by it arrives expired.
  const summary = await migrate(source, memoryTarget(targetAdmin, null, 200), { dryRun: false, from: 'sqlite', to: 'redis' }, io(now))
  t.same([summary.triplets, summary.clients, summary.whitelist, summary.overrides], [
    { written: 2, kept: 0, expired: 1 },
    { written: 1, kept: 0, expired: 1 },
    { written: 2, kept: 1 },
    { written: 1, kept: 1 },
  ])
  t.same([...targetAdmin.wl.values()].map((e) => [e.key, e.setAt]).sort(), [['sender\tends-after@x', 20], ['sender\tolder@x', 20], ['sender\tsame@x', 20]], 'an entry whose expiry is now no longer applies (greylisting takes it while now < expires): not copied')
  t.same([...targetAdmin.ov!.values()].map((e) => [e.key, e.setAt]), [['sasl:older', 30], ['sasl:same', 30]])
})

t.test('a progress line names the kind of rows and, in a dry run, says "to copy"', async (t) => {
  const clients = Array.from({ length: PROGRESS_EVERY }, (_, i) => ({ key: `n${i}`, count: 1, last: 100, lastCounted: 100, expires: 500 }))
  const out = io(100)
  await migrate(memorySource([], memoryAdmin(), [], clients), memoryTarget(memoryAdmin()), { dryRun: true, from: 'sqlite', to: 'redis' }, out)
  t.equal(out.errText, `policyd-ts store migrate: ${PROGRESS_EVERY} client networks read, ${PROGRESS_EVERY} to copy\n`)
})

t.test('a side with only one of listOverrides and setOverride keeps no overrides', async (t) => {
  const full = (): StoreAdmin => memoryAdmin([], [override('sasl:alice', 1)])
  const only = (method: 'listOverrides' | 'setOverride'): StoreAdmin => {
    const admin = memoryAdmin([], [override('sasl:bob', 2)]) as unknown as Record<string, unknown>
    delete admin[method === 'listOverrides' ? 'setOverride' : 'listOverrides']
    return admin as unknown as StoreAdmin
  }
  const cases: Array<[string, StoreAdmin, StoreAdmin, string]> = [
    ['the target lists only', full(), only('listOverrides'), 'redis'],
    ['the target sets only', full(), only('setOverride'), 'redis'],
    ['the source lists only', only('listOverrides'), full(), 'sqlite'],
    ['the source sets only', only('setOverride'), full(), 'sqlite'],
  ]
  for (const [name, from, to, lacking] of cases) {
    const summary = await migrate(memorySource([], from), memoryTarget(to), { dryRun: false, from: 'sqlite', to: 'redis' }, io(100))
    t.same(summary.overrides, { notCopied: `the ${lacking} store keeps no rate-limit overrides in this version` }, name)
  }
})

t.test('describeSummary: one line per kind with its counts, then what is never copied', async (t) => {
  const summary: MigrationSummary = {
    from: 'sqlite', to: 'redis', dryRun: false,
    triplets: { written: 3, kept: 2, expired: 1 },
    clients: { written: 6, kept: 5, expired: 4 },
    whitelist: { written: 8, kept: 7 },
    overrides: { written: 10, kept: 9 },
    notCopied: ['what stays'],
  }
  t.equal(describeSummary(summary), [
    'sqlite -> redis',
    'triplets: 3 copied, 2 kept (as recent or newer on redis), 1 expired on the way',
    'client networks: 6 copied, 5 kept (as recent or newer on redis), 4 expired on the way',
    'whitelist entries: 8 copied, 7 kept (as recent or newer on redis)',
    'rate-limit overrides: 10 copied, 9 kept (as recent or newer on redis)',
    'not copied: what stays',
    '',
  ].join('\n'))
})

t.test('runStoreMigrate: usage errors exit 64 with a message, before any store is opened', async (t) => {
  const loaded = configOf({ db_path: '/nonexistent/never-opened.sqlite' })
  const cases: Array<[{ from?: string; to?: string }, RegExp]> = [
    [{}, /give --from sqlite --to redis/],
    [{ from: 'sqlite' }, /give --from sqlite --to redis/],
    [{ from: 'redis', to: 'sqlite' }, /--from redis --to sqlite is not supported: on the way back, set store = sqlite/],
    [{ from: 'sqlite', to: 'sqlite' }, /the one migration is --from sqlite --to redis/],
    [{ to: 'redis' }, /give --from sqlite --to redis/],
    [{ from: 'redis', to: 'redis' }, /--from redis --to redis: the one migration is --from sqlite --to redis/],
  ]
  for (const [args, message] of cases) {
    const out = io(100)
    t.equal(await runStoreMigrate(loaded, { ...args, dryRun: false, json: false }, out), 64, JSON.stringify(args))
    t.match(out.errText, message)
    t.equal(out.outText, '')
  }
})

t.test('runStoreMigrate: a missing database or an unreachable Redis exits 69 and says which', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'db', 'store.sqlite')
  const cli = { db_path: file, redis_url: 'redis://127.0.0.1:1/0', redis_timeout: '200ms' }
  const missing = io(100)
  t.equal(await runStoreMigrate(configOf(cli), { from: 'sqlite', to: 'redis', dryRun: false, json: false }, missing), 69)
  t.match(missing.errText, /^policyd-ts store migrate: database .*store\.sqlite does not exist/)
  const s = sqlite(t, file)
  await request(s, 'k', 'c', 100)
  s.close()
  const down = io(100)
  t.equal(await runStoreMigrate(configOf(cli), { from: 'sqlite', to: 'redis', dryRun: false, json: false }, down), 69)
  t.match(down.errText, /^policyd-ts store migrate: redis redis:\/\/127\.0\.0\.1:1\/0: .*ECONNREFUSED/)
  t.equal(down.outText, '')
})

t.test('runStoreMigrate: waits db_busy_timeout (in seconds) for a lock on the database; never renames a corrupt one', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'db', 'store.sqlite')
  await sqlite(t, file).listWhitelist()
  // An older schema version: opening upgrades it, which needs the write lock this connection holds.
  const holder = new Database(file)
  holder.pragma(`user_version = ${SCHEMA_VERSION - 1}`)
  holder.exec('BEGIN IMMEDIATE')
  t.teardown(() => holder.close())
  const cli = { db_path: file, redis_url: 'redis://127.0.0.1:1/0', redis_timeout: '200ms', db_busy_timeout: '200ms' }
  const busy = io(100)
  const started = performance.now()
  t.equal(await runStoreMigrate(configOf(cli), { from: 'sqlite', to: 'redis', dryRun: false, json: false }, busy), 69)
  t.ok(performance.now() - started >= 150, 'waited about db_busy_timeout')
  t.match(busy.errText, /^policyd-ts store migrate: database .*: .*locked/)
  holder.exec('ROLLBACK')

  const corrupt = path.join(dir, 'corrupt.sqlite')
  const garbage = Buffer.alloc(8192, 'not a database ')
  fs.writeFileSync(corrupt, garbage)
  const bad = io(100)
  t.equal(await runStoreMigrate(configOf({ ...cli, db_path: corrupt }), { from: 'sqlite', to: 'redis', dryRun: false, json: false }, bad), 69)
  t.match(bad.errText, /^policyd-ts store migrate: database .*corrupt\.sqlite/)
  t.same(fs.readFileSync(corrupt), garbage, 'left where it is, as it was')
  t.same(fs.readdirSync(dir).filter((f) => f.startsWith('corrupt')), ['corrupt.sqlite'], 'nothing renamed aside')
})

function sqlite(t: Tap.Test, file: string): SqliteStore {
  const s = new SqliteStore({ path: file, busyTimeoutMs: 500, renameCorrupt: false, log: () => undefined })
  t.teardown(() => s.close())
  return s
}

/** A request of greylisting at `now` through the real state machine, as the policy path runs it. */
const request = (s: { updateGreylist: SqliteStore['updateGreylist'] }, key: string, client: string, now: number) =>
  s.updateGreylist(key, client, (view) => evaluateTriplet(view, now, params))

t.test('SqliteExport: unexpired rows of each kind in key order, across pages; refuses what is no policyd-ts database', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'db', 'store.sqlite')
  const s = sqlite(t, file)
  for (let i = 0; i < 7; i++) {
    await s.updateGreylist(`t${i}`, `c${i}`, () => ({ triplet: { row: { first: 1, last: 2 + i, passed: 0, count: 1 }, expires: 100 + i }, client: { row: { count: i, last: 3, lastCounted: 4 }, expires: 100 - i }, result: null }))
  }
  s.close()
  const reader = new SqliteExport(file)
  t.teardown(() => reader.close())
  const pages = [...reader.pages('triplet', 103, 2)]
  t.same(pages.map((p) => p.map((r) => r.key)), [['t3', 't4'], ['t5', 't6']], 'expires 103 is still live at 103, as the store keeps it')
  t.same(pages[0][0], { key: 't3', first: 1, last: 5, passed: 0, count: 1, expires: 103 })
  t.same([...reader.pages('client', 97, 10)], [[
    { key: 'c0', count: 0, last: 3, lastCounted: 4, expires: 100 },
    { key: 'c1', count: 1, last: 3, lastCounted: 4, expires: 99 },
    { key: 'c2', count: 2, last: 3, lastCounted: 4, expires: 98 },
    { key: 'c3', count: 3, last: 3, lastCounted: 4, expires: 97 },
  ]])
  t.same([...reader.pages('triplet', 1000, 2)], [], 'nothing left')
  const other = path.join(dir, 'other.sqlite')
  fs.writeFileSync(other, '')
  t.throws(() => new SqliteExport(other), { message: /schema version 0: not a policyd-ts database/ })
  t.throws(() => new SqliteExport(path.join(dir, 'missing.sqlite')), { failure: 'unavailable', message: /missing\.sqlite/ })
})

t.test('SqliteExport: every key (also those sorting before letters), older and newer schema versions, files left as they were', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'db', 'store.sqlite')
  const s = sqlite(t, file)
  const keys = ['!', '192.0.2.1/a@x/b@y', 'B', 'z']
  for (const key of keys) await s.updateGreylist(key, `c-${key}`, () => ({ triplet: { row: { first: 1, last: 2, passed: 0, count: 1 }, expires: 100 }, result: null }))
  s.close()
  const reader = new SqliteExport(file)
  t.same([...reader.pages('triplet', 100, 10)].flat().map((r) => r.key), keys)
  // A write while the reader is open stays in the WAL; the store closes first, so the reader's connection is the file's last one.
  const writer = sqlite(t, file)
  await writer.setWhitelist({ key: 'sender\tx@y', expires: Infinity, note: '', setAt: 1 })
  writer.close()
  const before = fs.readFileSync(file)
  t.ok(fs.existsSync(`${file}-wal`), 'the store left its write in the WAL (another connection was open)')
  reader.close()
  t.same(fs.readFileSync(file), before, 'a read-only reader never checkpoints the WAL into the file')
  t.ok(fs.existsSync(`${file}-wal`))
  t.throws(() => [...reader.pages('triplet', 100, 10)], { message: /database connection is not open/ }, 'closed: nothing more is read')

  const raw = new Database(file)
  raw.pragma(`user_version = ${SCHEMA_VERSION + 1}`)
  raw.close()
  t.throws(() => new SqliteExport(file), {
    failure: 'unavailable',
    message: `database ${file} has schema version ${SCHEMA_VERSION + 1}: newer than this policyd-ts supports (${SCHEMA_VERSION})`,
  })
  const old = new Database(file)
  old.pragma('user_version = 1')
  old.close()
  const first = new SqliteExport(file)
  t.same([...first.pages('triplet', 100, 10)].flat().map((r) => r.key), keys, 'version 1 has the same triplet and client tables')
  first.close()

  const missing = path.join(dir, 'missing.sqlite')
  t.throws(() => new SqliteExport(missing), { failure: 'unavailable', message: /missing\.sqlite/ })
  t.notOk(fs.existsSync(missing), 'a missing file is not created')
})

// ---- against a real redis-server

function importer(t: Tap.Test, server: RedisServer, now: number, privacy = false): RedisImporter {
  const s = new RedisImporter({ endpoint: parseRedisUrl(server.url) as RedisEndpoint, prefix: 'mig:', timeoutMs: 2000, privacy, log: () => undefined, clock: () => now })
  t.teardown(() => s.close())
  return s
}

function redisStore(t: Tap.Test, server: RedisServer, now: number): RedisStore {
  const s = new RedisStore({ endpoint: parseRedisUrl(server.url) as RedisEndpoint, prefix: 'mig:', timeoutMs: 2000, privacy: false, log: () => undefined, clock: () => now })
  t.teardown(() => s.close())
  return s
}

async function sqliteToRedis(file: string, target: RedisImporter, now: number, dryRun = false) {
  const store = new SqliteStore({ path: file, busyTimeoutMs: 500, renameCorrupt: false, mustExist: true, log: () => undefined })
  const reader = new SqliteExport(file)
  try {
    const source: MigrationSource = { admin: store, pages: (kind, at, size) => reader.pages(kind, at, size) }
    const sink: MigrationTarget = { admin: target, formatProblem: () => target.formatProblem(), importRows: (kind, rows, dry) => target.importRows(kind, rows, dry) }
    return await migrate(source, sink, { dryRun, from: 'sqlite', to: 'redis' }, io(now))
  } finally {
    reader.close()
    store.close()
  }
}

const T0 = 1_000_000
const DAY = 86400

t.test('redis: migrated triplets decide on Redis exactly as on SQLite; TTLs follow the expiry; idempotent; newer rows kept', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const file = path.join(t.testdir(), 'db', 'store.sqlite')
  const s = sqlite(t, file)
  // A triplet waiting out its delay, one that passed (and counted its client), and one whose round expired.
  t.match(await request(s, 'waiting', 'net-a', T0), { kind: 'new' })
  t.match(await request(s, 'passed', 'net-b', T0 - 1000), { kind: 'new' })
  t.match(await request(s, 'passed', 'net-b', T0 - 500), { kind: 'first-pass' })
  t.match(await request(s, 'stale', 'net-c', T0 - 3 * DAY), { kind: 'new' })
  await s.setWhitelist({ key: 'sender\tnews@partner.example', expires: Infinity, note: 'newsletter', setAt: T0 - 5 })
  s.close()

  const now = T0 + 10
  const summary = await sqliteToRedis(file, importer(t, server, now), now)
  t.same([summary.triplets, summary.clients, summary.whitelist], [{ written: 2, kept: 0, expired: 0 }, { written: 1, kept: 0, expired: 0 }, { written: 1, kept: 0 }])

  const r = redisStore(t, server, now)
  const listed = await r.listTriplets(() => true, 10)
  const onSqlite = await s.listTriplets(() => true, 10)
  t.same(listed, onSqlite.filter((row) => row.key !== 'stale'), 'fields and expiry as they were (the expired round stays behind)')
  t.same(await r.listWhitelist(), await s.listWhitelist())
  t.same(await r.counts(), { triplets: 2, clients: 1 }, 'counted for greylist_max_entries')
  for (const row of listed) {
    const ttl = Number(await server.command('PTTL', `mig:{g}:t:${row.key}`))
    const expected = (row.expires - now) * 1000 + 1000
    t.ok(Math.abs(ttl - expected) < 5000, `TTL of ${row.key}: ${ttl} ms, expiry ${row.expires} - now ${now}`)
  }

  // The same requests after the copy, on both stores: the same outcomes and the same rows written.
  const later = T0 + params.delay + 1
  for (const [key, client] of [['waiting', 'net-a'], ['passed', 'net-b'], ['fresh', 'net-d']]) {
    t.same(await request(r, key, client, later), await request(s, key, client, later), `${key} at delay + 1`)
  }
  t.same(await r.listTriplets((k) => k !== 'stale', 10), (await s.listTriplets((k) => k !== 'stale', 10)))
  t.match(await request(r, 'waiting', 'net-a', later + 1), { kind: 'known' })

  // Again: the same requests moved both stores on alike, so every row on Redis is as recent: all kept.
  const versions = await server.command('HGET', 'mig:{g}:t:passed', 'v')
  const again = await sqliteToRedis(file, importer(t, server, later), later)
  t.same([again.triplets, again.clients, again.whitelist], [{ written: 0, kept: 3, expired: 0 }, { written: 0, kept: 2, expired: 0 }, { written: 0, kept: 1 }])
  t.equal(await server.command('HGET', 'mig:{g}:t:passed', 'v'), versions, 'not rewritten')
  t.same(await r.counts(), { triplets: 3, clients: 2 }, 'the counts are not added twice')
})

t.test('redis: a row older on Redis is replaced by the SQLite one; rows expired by the server clock are left out', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const file = path.join(t.testdir(), 'db', 'store.sqlite')
  const s = sqlite(t, file)
  const put = (store: { updateGreylist: SqliteStore['updateGreylist'] }, key: string, last: number, expires: number) =>
    store.updateGreylist(key, `c-${key}`, () => ({ triplet: { row: { first: 1, last, passed: 0, count: last }, expires }, result: null }))
  await put(s, 'old-on-redis', 50, 1000)
  await put(s, 'new-on-redis', 50, 1000)
  await put(s, 'ends-soon', 50, 150)
  s.close()
  const r = redisStore(t, server, 40)
  await put(r, 'old-on-redis', 40, 1000)
  await put(r, 'new-on-redis', 60, 1000)
  // The reader's clock says live, the server's (the importer's test clock here) says expired.
  const reader = new SqliteExport(file)
  const rows = [...reader.pages('triplet', 100, 100)].flat()
  reader.close()
  const counts = await importer(t, server, 200).importRows('triplet', rows, false)
  t.same(counts, { written: 1, kept: 1, expired: 1 })
  t.same((await r.listTriplets(() => true, 10)).map((row) => [row.key, row.last]), [['new-on-redis', 60], ['old-on-redis', 50]])
})

t.test('redis: many rows go in batches; the summary counts them all', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const rows = Array.from({ length: IMPORT_BATCH * 3 + 7 }, (_, i) => triplet(`k${i}`, 100, 5000))
  const target = importer(t, server, 100)
  t.same(await target.importRows('triplet', rows, false), { written: rows.length, kept: 0, expired: 0 })
  t.equal(Number(await server.command('HGET', 'mig:{g}:n', 't')), rows.length)
  t.same(await target.importRows('triplet', rows, false), { written: 0, kept: rows.length, expired: 0 })
  const stats = await server.command('INFO', 'commandstats')
  const calls = (command: string): number => Number(new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(stats)?.[1] ?? 0)
  const batches = Math.ceil(rows.length / IMPORT_BATCH)
  t.same([calls('eval'), calls('evalsha')], [1, 2 * batches - 1], 'one script call per batch; its text sent once on the connection, then only its SHA')
})

t.test('redis: a store keyed with another greylist_privacy is refused, by the command and by the script', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const file = path.join(t.testdir(), 'db', 'store.sqlite')
  const s = sqlite(t, file)
  await request(s, 'k', 'c', T0)
  s.close()
  await server.command('HSET', 'mig:{g}:meta', 'format', '1', 'privacy', 'yes')
  const target = importer(t, server, T0)
  t.match(await target.formatProblem(), /format 1 and greylist_privacy yes, this configuration format 1 and greylist_privacy no/)
  await t.rejects(sqliteToRedis(file, target, T0), { name: 'MigrationRefused' })
  await t.rejects(target.importRows('triplet', [triplet('k', 1, T0 + 100)], false), { message: /every host sharing the store must agree/ })
  t.equal(await server.command('EXISTS', 'mig:{g}:t:k'), '0', 'nothing written')
  t.equal(await importer(t, server, T0, true).formatProblem(), null, 'a host with the same privacy may')
})

t.test('redis: --dry-run counts against what Redis holds and writes nothing, not even the format record', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const file = path.join(t.testdir(), 'db', 'store.sqlite')
  const s = sqlite(t, file)
  await request(s, 'a', 'c', T0)
  await request(s, 'b', 'c', T0)
  await s.setWhitelist({ key: 'client\t192.0.2.0/24', expires: T0 + DAY, note: '', setAt: T0 })
  s.close()
  const dry = await sqliteToRedis(file, importer(t, server, T0), T0, true)
  t.same([dry.dryRun, dry.triplets, dry.whitelist], [true, { written: 2, kept: 0, expired: 0 }, { written: 1, kept: 0 }])
  t.equal(await server.command('DBSIZE'), '0')
  const real = await sqliteToRedis(file, importer(t, server, T0), T0)
  t.same([real.triplets, real.whitelist], [dry.triplets, dry.whitelist], 'the run does what the dry run said')
})

t.test('redis: runStoreMigrate copies db_path into redis_url and prints the summary as text or JSON; a differing format record exits 78', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const file = path.join(t.testdir(), 'db', 'store.sqlite')
  const s = sqlite(t, file)
  await s.setWhitelist({ key: 'sender\tnews@partner.example', expires: Infinity, note: 'newsletter', setAt: T0 })
  s.close()
  const cli = { db_path: file, redis_url: server.url, redis_prefix: 'cmd:' }
  const args = { from: 'sqlite', to: 'redis', dryRun: false, json: false }
  const dry = io(T0)
  t.equal(await runStoreMigrate(configOf(cli), { ...args, dryRun: true }, dry), 0)
  t.match(dry.outText, /^dry run, nothing written: sqlite -> redis\n(.*\n)*whitelist entries: 1 to copy, 0 kept/)
  const json = io(T0)
  t.equal(await runStoreMigrate(configOf(cli), { ...args, json: true }, json), 0)
  t.ok(json.outText.endsWith('}\n'), 'one line')
  t.match(JSON.parse(json.outText), { from: 'sqlite', to: 'redis', dryRun: false, whitelist: { written: 1, kept: 0 }, notCopied: [...NOT_COPIED] })
  const text = io(T0)
  t.equal(await runStoreMigrate(configOf(cli), args, text), 0)
  t.equal(text.outText.split('\n')[0], 'sqlite -> redis')
  t.match(text.outText, /^whitelist entries: 0 copied, 1 kept/m)

  // A store written by a later key format, with the same greylist_privacy.
  await server.command('HSET', 'cmd:{g}:meta', 'format', '2', 'privacy', 'no')
  const refused = io(T0)
  t.equal(await runStoreMigrate(configOf(cli), args, refused), 78)
  t.equal(refused.errText, 'policyd-ts store migrate: refusing redis as the target: its greylisting keys (cmd:{g}:meta) have format 2 and greylist_privacy no, ' +
    'this configuration format 1 and greylist_privacy no: copying would make keys no host reads; set greylist_privacy as the hosts sharing the store do, or use another redis_prefix\n')
  t.equal(refused.outText, '')
})

// ---- the SQLite store's own schema migration, its open and its corrupt-file handling, and the --test-mode probe

/** A raw connection, closed at the end of the test. */
function rawDb(t: Tap.Test, file: string): Database.Database {
  const db = new Database(file)
  t.teardown(() => db.isOpen && db.close())
  return db
}

/** What a request sees through the store, with `keys` as its whitelist keys. */
const viewOf = (s: SqliteStore, keys: string[]) => s.updateGreylist('k', 'c', (view) => ({ result: view }), () => keys)

t.test('sqlite open: an up-to-date database needs no write lock to open, and its whitelist entries apply from the first request', async (t) => {
  const file = path.join(t.testdir(), 'db', 'store.sqlite')
  const first = sqlite(t, file)
  await first.setWhitelist({ key: 'sender\tnews@x', expires: Infinity, note: '', setAt: 1 })
  first.close()
  const holder = rawDb(t, file)
  holder.exec('BEGIN IMMEDIATE')
  const log: string[] = []
  const s = new SqliteStore({ path: file, busyTimeoutMs: 50, renameCorrupt: false, log: (_level, msg) => void log.push(msg) })
  t.teardown(() => s.close())
  t.same((await s.listWhitelist()).map((e) => e.key), ['sender\tnews@x'], 'opened and read while another connection holds the write lock')
  holder.exec('ROLLBACK')
  const view = await viewOf(s, ['', '', 'sender\tnews@x', ''])
  t.same(view.whitelisted, { key: 'sender\tnews@x', expires: Infinity })
  t.same(log, [], 'nothing migrated')
})

/** A store's database at `file`, one schema version older than this one's (opening it migrates, taking the write lock). */
async function olderDatabase(t: Tap.Test, file: string): Promise<void> {
  const made = sqlite(t, file)
  await made.counts()
  made.close()
  const older = rawDb(t, file)
  older.pragma(`user_version = ${SCHEMA_VERSION - 1}`)
  older.close()
}

/**
 * Another process's connection, in a thread of its own so that it goes on
 * while this one waits in SQLite: takes the write lock (and sets
 * user_version to `version` in that transaction, if given), and after
 * release() or `holdMs` commits (rolls back without `version`).
 */
async function lockElsewhere(t: Tap.Test, file: string, holdMs: number, version?: number): Promise<{ release: () => void; exited: Promise<unknown> }> {
  const cell = new Int32Array(new SharedArrayBuffer(4))
  const { Worker } = await import('node:worker_threads')
  const worker = new Worker(`
    const { parentPort, workerData } = require('node:worker_threads')
    const db = new (require(workerData.sqlite))(workerData.file)
    db.exec('BEGIN IMMEDIATE')
    if (workerData.version !== undefined) db.pragma('user_version = ' + workerData.version)
    parentPort.postMessage('locked')
    Atomics.wait(workerData.cell, 0, 0, workerData.holdMs)
    db.exec(workerData.version === undefined ? 'ROLLBACK' : 'COMMIT')
    db.close()
  `, { eval: true, workerData: { sqlite: require.resolve('better-sqlite3'), file, cell, holdMs, version } })
  const exited = new Promise((resolve) => worker.once('exit', resolve))
  t.teardown(() => worker.terminate())
  await new Promise((resolve, reject) => (worker.once('message', resolve), worker.once('error', reject)))
  return { release: () => void Atomics.notify(cell, 0), exited }
}

t.test('sqlite open: another process that migrated the schema while this one waited for the lock is not migrated again', async (t) => {
  const file = path.join(t.testdir(), 'db', 'store.sqlite')
  await olderDatabase(t, file)
  // The other process: holds the write lock with the migration done but not
  // yet committed (this one reads the older version), and commits a little later.
  const { exited } = await lockElsewhere(t, file, 200, SCHEMA_VERSION)
  const log: string[] = []
  const s = new SqliteStore({ path: file, busyTimeoutMs: 5000, renameCorrupt: false, log: (_level, msg) => void log.push(msg) })
  t.teardown(() => s.close())
  t.same(await s.counts(), { triplets: 0, clients: 0 }, 'opened after the other commit, at the current version')
  t.same(log, [], 'no migration logged: there was none to do')
  await exited
  const version = rawDb(t, file).pragma('user_version', { simple: true })
  t.equal(version, SCHEMA_VERSION)
})

t.test('sqlite: a corrupt file goes aside with its -wal and -shm files, under the same new name', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'store.sqlite')
  // Another process's connection keeps its frames in the WAL (closing the
  // last connection would fold them into the file and remove both files).
  const other = rawDb(t, file)
  other.pragma('journal_mode = WAL')
  other.pragma('wal_autocheckpoint = 0')
  other.exec('CREATE TABLE other (x)')
  other.pragma('wal_checkpoint(TRUNCATE)')
  other.exec("INSERT INTO other VALUES ('in the WAL')")
  // The file's first page (the WAL holds only the table's) overwritten.
  fs.writeFileSync(file, 'not a database '.repeat(300))
  const wal = fs.readFileSync(`${file}-wal`)
  const shmSize = fs.statSync(`${file}-shm`).size
  const log: string[] = []
  const s = new SqliteStore({ path: file, busyTimeoutMs: 50, renameCorrupt: true, log: (_level, msg) => void log.push(msg) })
  t.teardown(() => s.close())
  t.same(await s.counts(), { triplets: 0, clients: 0 }, 'a fresh database')
  const aside = /corrupt file renamed to (\S+),/.exec(log.join('\n'))?.[1]
  t.ok(aside, 'logged')
  t.equal(fs.readFileSync(`${aside}`, 'utf8'), 'not a database '.repeat(300))
  t.same(fs.readFileSync(`${aside}-wal`), wal, 'its WAL moved along')
  t.equal(fs.statSync(`${aside}-shm`).size, shmSize, 'its WAL index moved along (the store\'s read marks changed its bytes)')
})

t.test('sqlite: an entry without an end is stored as a large finite time, and read back as one without an end', async (t) => {
  const file = path.join(t.testdir(), 'db', 'store.sqlite')
  const s = sqlite(t, file)
  await s.setWhitelist({ key: 'sender\tnews@x', expires: Infinity, note: '', setAt: 1 })
  await s.setWhitelist({ key: 'sender\tsoon@x', expires: 500, note: '', setAt: 1 })
  t.same((await s.listWhitelist()).map((e) => [e.key, e.expires]), [['sender\tnews@x', Infinity], ['sender\tsoon@x', 500]])
  s.close()
  const stored = rawDb(t, file).prepare('SELECT key, expires FROM whitelist ORDER BY key').raw().all() as Array<[string, number]>
  t.equal(stored[1][1], 500)
  t.ok(Number.isFinite(stored[0][1]) && stored[0][1] >= 1e300, `stored as ${stored[0][1]}: a plain REAL every SQLite reader and writer of the file keeps`)
})

t.test('sqlite open: a file that cannot be made is reported as the open that failed', async (t) => {
  const file = path.join(t.testdir(), `${'n'.repeat(300)}.sqlite`)
  const s = sqlite(t, file)
  await t.rejects(s.counts(), { failure: 'error', message: `database ${file}: ENAMETOOLONG: name too long, open '${file}'` })
})

t.test('probeDatabase (--test-mode): a new file is made in WAL mode, an existing one keeps its journal; the write is real and rolled back; the connection closed', async (t) => {
  const dir = t.testdir()
  const fresh = path.join(dir, 'new.sqlite')
  t.same(probeDatabase(fresh, { busyTimeoutMs: 50, create: true }), { schemaVersion: 0 })
  t.same(fs.readdirSync(dir), ['new.sqlite'], 'closed: the last connection removed its -wal and -shm')
  const made = rawDb(t, fresh)
  t.equal(made.pragma('journal_mode', { simple: true }), 'wal')
  t.same(made.prepare("SELECT name FROM sqlite_master").pluck().all(), [], 'nothing left by the write')
  made.close()

  const existing = path.join(dir, 'existing.sqlite')
  const old = rawDb(t, existing)
  old.pragma('user_version = 2')
  old.exec('CREATE TABLE kept (x)')
  old.close()
  t.same(probeDatabase(existing, { busyTimeoutMs: 50, create: false }), { schemaVersion: 2 })
  const after = rawDb(t, existing)
  t.equal(after.pragma('journal_mode', { simple: true }), 'delete', 'not switched to WAL by a probe')
  // The probe's write fails where a write would: here its own table is there already.
  after.exec('CREATE TABLE policyd_ts_test_mode (x)')
  after.close()
  t.throws(() => probeDatabase(existing, { busyTimeoutMs: 50, create: false }), { message: 'table policyd_ts_test_mode already exists' })
  t.throws(() => probeDatabase(path.join(dir, 'missing.sqlite'), { busyTimeoutMs: 50, create: false }), { code: 'SQLITE_CANTOPEN' })
})

t.test('sqlite open: the migration waits db_busy_timeout for another process\'s write lock, not SQLite\'s default 5 s', async (t) => {
  const file = path.join(t.testdir(), 'db', 'store.sqlite')
  await olderDatabase(t, file)
  // The other process holds the lock until told to let go, or for 2 s at most
  // (well within SQLite's default timeout, far beyond the 100 ms set here).
  const { release, exited } = await lockElsewhere(t, file, 2000)
  const s = new SqliteStore({ path: file, busyTimeoutMs: 100, renameCorrupt: false, log: () => undefined })
  t.teardown(() => s.close())
  await t.rejects(s.counts(), { failure: 'busy' }, 'given up while the other process still held the lock')
  release()
  await exited
})

t.test('sqlite open: a file moved away between its check and its open is not made again by SQLite', async (t) => {
  const file = path.join(t.testdir(), 'db', 'store.sqlite')
  const made = sqlite(t, file)
  await made.counts()
  made.close()
  // Another process moves the file aside just after this one looked at it.
  const statSync = fs.statSync
  t.teardown(() => void (fs.statSync = statSync))
  fs.statSync = ((p: string, ...rest: []) => {
    const st = statSync(p, ...rest)
    if (p === file) {
      fs.statSync = statSync
      fs.renameSync(file, `${file}.moved`)
    }
    return st
  }) as typeof fs.statSync
  const s = sqlite(t, file)
  await t.rejects(s.counts(), { failure: 'unavailable', message: `database ${file}: unable to open database file` })
  t.equal(fs.statSync, statSync, 'the move happened')
  t.notOk(fs.existsSync(file), 'no empty database made in its place')
})

t.test('sqlite: with db_corrupt_action=fail a corrupt file fails at once, not tried a second time', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'store.sqlite')
  fs.writeFileSync(file, 'not a database '.repeat(300))
  const good = path.join(dir, 'good.sqlite')
  const made = sqlite(t, good)
  await made.counts()
  made.close()
  // Another process puts a good file in its place just after this one's first look.
  const existsSync = fs.existsSync
  t.teardown(() => void (fs.existsSync = existsSync))
  let looks = 0
  fs.existsSync = ((p: string) => {
    if (p === file && ++looks === 2) fs.renameSync(good, file)
    return existsSync(p)
  }) as typeof fs.existsSync
  const s = new SqliteStore({ path: file, busyTimeoutMs: 50, renameCorrupt: false, mustExist: true, log: () => undefined })
  t.teardown(() => s.close())
  await t.rejects(s.counts(), { failure: 'corrupt', message: `database ${file}: file is not a database` })
  t.equal(looks, 1)
})

t.test('sqlite (daemon): a recount that finds the lock taken after its count is skipped, and the log says why', async (t) => {
  const file = path.join(t.testdir(), 'db', 'store.sqlite')
  const log: string[] = []
  const s = new SqliteStore({ path: file, busyTimeoutMs: 50, renameCorrupt: false, lockWaits: 'yield', log: (_level, msg) => void log.push(msg) })
  t.teardown(() => s.close())
  await request(s, 'k', 'c', 100)
  s.commitPending()
  const holder = rawDb(t, file)
  // Another process takes the write lock while this one counts the rows.
  const prepare = Database.prototype.prepare
  t.teardown(() => void (Database.prototype.prepare = prepare))
  Database.prototype.prepare = function (this: Database.Database, sql: string) {
    if (sql === 'SELECT count(*) FROM client') {
      Database.prototype.prepare = prepare
      holder.exec('BEGIN IMMEDIATE')
    }
    return prepare.call(this, sql)
  } as typeof prepare
  t.equal(await s.purgeExpired(100, 10), 0)
  t.ok(holder.inTransaction, 'the lock was taken during the count')
  holder.exec('ROLLBACK')
  t.same(log.slice(1), ['row recount skipped: database locked by another process'], 'after the line of the first open\'s migration')
})

/** Opens a SqliteStore of the module at `sqliteTs` in a process of its own: its counts, and the addon's modules it loaded. */
async function openInChild(t: Tap.Test, sqliteTs: string): Promise<{ counts: unknown; loaded: string[] }> {
  const { execFileSync } = await import('node:child_process')
  const file = path.join(t.testdir(), 'store.sqlite')
  const script = `
    const { SqliteStore } = require(${JSON.stringify(sqliteTs)})
    const s = new SqliteStore({ path: ${JSON.stringify(file)}, busyTimeoutMs: 50, renameCorrupt: false, log: () => undefined })
    s.counts().then((counts) => {
      s.close()
      const loaded = Object.keys(require.cache).filter((k) => /[\\\\/]node_modules[\\\\/](bindings|better-sqlite3[\\\\/]build)[\\\\/]/.test(k))
      process.stdout.write(JSON.stringify({ counts, loaded }))
    })
  `
  // The project's esbuild loader (as `npm run mutate` uses): ~0.1 s a start where tap's takes ~1.5 s.
  const loader = path.join(__dirname, '..', 'scripts', 'stryker-ts-hook.cjs')
  return JSON.parse(execFileSync(process.execPath, ['-r', loader, '-e', script], { encoding: 'utf8', timeout: 20000 }))
}

const addon = path.join(path.dirname(require.resolve('better-sqlite3/package.json')), 'build', 'Release', 'better_sqlite3.node')

t.test('sqlite open: the addon is loaded from its known place, without better-sqlite3\'s own lookup (the `bindings` package, milliseconds of every cold start)', async (t) => {
  // A process of its own: this one has loaded `bindings` already (raw connections).
  const out = await openInChild(t, path.join(__dirname, '..', 'lib', 'store', 'sqlite.ts'))
  t.same(out, { counts: { triplets: 0, clients: 0 }, loaded: [addon] })
})

t.test('sqlite open: beyond its four places up from the code, the addon is left to better-sqlite3\'s own lookup', async (t) => {
  // The code four directories below a node_modules: its fifth place up.
  const root = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'policyd-ts-addon-'))
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }))
  const store = path.join(root, 'a', 'b', 'lib', 'store')
  fs.mkdirSync(store, { recursive: true })
  for (const name of ['sqlite.ts', 'types.ts']) fs.copyFileSync(path.join(__dirname, '..', 'lib', 'store', name), path.join(store, name))
  fs.symlinkSync(path.dirname(path.dirname(require.resolve('better-sqlite3/package.json'))), path.join(root, 'node_modules'))
  const out = await openInChild(t, path.join(store, 'sqlite.ts'))
  t.same(out.counts, { triplets: 0, clients: 0 })
  t.ok(out.loaded.some((k) => /[\\/]node_modules[\\/]bindings[\\/]/.test(k)), `found by the bindings package: ${out.loaded.join(', ')}`)
})
