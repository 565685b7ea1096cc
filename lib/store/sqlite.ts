// The SQLite store: one file shared by every spawned process, WAL mode, a
// busy timeout, versioned schema. Every error leaves this file as a
// StoreError whose `failure` names its class; the caller owns the policy.

import type BetterSqlite3 from 'better-sqlite3'
import type { HitListing, OverrideEntry, RateLimitAdmin, RateLimitStep, RateLimitStore, StepResult, UsageListing } from '../ratelimit/types'
import type { RateLimitTables } from './sqlite-ratelimit'
import {
  StoreError,
  type StoreAdmin,
  type StoreHealth,
  type TripletListing,
  type WhitelistEntry,
  type GreylistStore,
  type GreylistUpdate,
  type GreylistView,
  type StoreFailure,
} from './types'

export interface SqliteStoreOptions {
  path: string
  busyTimeoutMs: number
  /** Rename a corrupt file aside and start afresh (true), or keep failing (false). */
  renameCorrupt: boolean
  /**
   * Open only a database that exists (the ops commands): run as root, they
   * would otherwise create a directory and file the policy user cannot write.
   */
  mustExist?: boolean
  log: (level: number, msg: string) => void
  /** Seconds between two attempts to reopen a failed database. */
  reopenDelay?: number
  now?: () => number
  /**
   * How another process's write lock is waited for. 'block' (spawn mode:
   * the process has one connection and nothing else to do) sleeps in
   * place; 'yield' (the daemon) returns to the event loop between tries,
   * so that one waiting request does not stall every other connection.
   */
  lockWaits?: 'block' | 'yield'
}

/**
 * Each entry brings the schema from version i to i + 1. A commit writes as
 * few pages as possible: no secondary index and no trigger; the purge walks
 * the primary key with a shared cursor, and the triplet count is kept
 * approximately (each process adds its own inserts at its next upkeep step,
 * and one process recounts every RECOUNT_EVERY seconds). A meta row added
 * later (recount_at) is created on first use, so an older version can
 * still open the file.
 */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE triplet (
     key TEXT PRIMARY KEY NOT NULL,
     first REAL NOT NULL, last REAL NOT NULL, passed REAL NOT NULL, count INTEGER NOT NULL,
     expires REAL NOT NULL) WITHOUT ROWID;
   CREATE TABLE client (
     key TEXT PRIMARY KEY NOT NULL,
     count INTEGER NOT NULL, last REAL NOT NULL, last_counted REAL NOT NULL,
     expires REAL NOT NULL) WITHOUT ROWID;
   CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID;
   INSERT INTO meta VALUES ('triplet_count', 0), ('client_count', 0), ('triplet_cursor', ''), ('client_cursor', '');`,
  // 2: whitelist entries the admin sets with \`policyd-ts greylist whitelist\`
  // (key "kind<TAB>value"), and the counters processes add up for
  // \`policyd-ts stats\` (one row per host and metric).
  `CREATE TABLE whitelist (
     key TEXT PRIMARY KEY NOT NULL, expires REAL NOT NULL, note TEXT NOT NULL, set_at REAL NOT NULL) WITHOUT ROWID;
   CREATE TABLE stats (
     host TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (host, name)) WITHOUT ROWID;`,
  // 3: rate limits (./sqlite-ratelimit.ts): rl_usage, one counter per
  // identity, unit, period and slot count ("first:c1,c2,…",
  // lib/ratelimit/window.ts); rl_hold, one hold per identity and instance
  // (message), live while expires > now; rl_hit, one row per identity and
  // limit text (first and last refusal, how many); rl_override, limits set
  // by \`policyd-ts ratelimit set\`. Each is read by its primary key's
  // leading identity; the purge walks each key with a cursor in meta.
  `CREATE TABLE rl_usage (
     id TEXT NOT NULL, unit TEXT NOT NULL, period REAL NOT NULL, slots INTEGER NOT NULL,
     counts TEXT NOT NULL, expires REAL NOT NULL,
     PRIMARY KEY (id, unit, period, slots)) WITHOUT ROWID;
   CREATE TABLE rl_hold (
     id TEXT NOT NULL, instance TEXT NOT NULL, rcpt INTEGER NOT NULL, msg INTEGER NOT NULL, bytes INTEGER NOT NULL,
     expires REAL NOT NULL, PRIMARY KEY (id, instance)) WITHOUT ROWID;
   CREATE TABLE rl_hit (
     id TEXT NOT NULL, lim TEXT NOT NULL, first REAL NOT NULL, last REAL NOT NULL, n INTEGER NOT NULL,
     expires REAL NOT NULL, PRIMARY KEY (id, lim)) WITHOUT ROWID;
   CREATE TABLE rl_override (
     key TEXT PRIMARY KEY NOT NULL, limits TEXT NOT NULL, expires REAL NOT NULL, note TEXT NOT NULL, set_at REAL NOT NULL) WITHOUT ROWID;
   INSERT INTO meta VALUES ('rl_last_commit', 0), ('rl_usage_cursor', ''), ('rl_hold_cursor', ''), ('rl_hit_cursor', ''), ('rl_override_cursor', '');`,
]
export const SCHEMA_VERSION = MIGRATIONS.length

/** Whitelist keys one request looks up (client address, client network, sender, recipient); unused places get ''. */
const WHITELIST_KEYS_READ = [0, 1, 2, 3] as const

const TABLES = ['triplet', 'client'] as const
type Table = (typeof TABLES)[number]
/** Per table (in TABLES order): rows counted, and the kept count at that moment. */
type RowCensus = Array<{ rows: number; counted: number }>

/**
 * Seconds between two exact recounts of the row counts. The approximate
 * counts miss the inserts of a process killed before its upkeep step
 * (and each process adds its own only every ten seconds), so they drift low
 * and greylist_max_entries would stop holding. A recount reads the whole
 * table (COUNT(*) of a WITHOUT ROWID table: ~110 ms per million triplets
 * here, 1 KiB pages, warm page cache) in a read transaction that blocks
 * no other process; the upkeep step of one process per period does it,
 * after its reply, so it delays at most that process's next request.
 */
export const RECOUNT_EVERY = 600

/**
 * Claims the next recount (changes one row) when RECOUNT_EVERY has passed
 * since the last, or the clock went back. Prepared when used, every ten
 * seconds at most, not at each cold start.
 */
const ELECT_RECOUNT = `INSERT INTO meta (name, value) VALUES ('recount_at', @now)
  ON CONFLICT (name) DO UPDATE SET value = excluded.value WHERE meta.value <= @now - @period OR meta.value > @now`

interface Statements {
  begin: BetterSqlite3.Statement
  commit: BetterSqlite3.Statement
  rollback: BetterSqlite3.Statement
  /** Both rows of a request in one statement, so in one read transaction: [kind 0 triplet | 1 client, ...columns]. */
  getRows: BetterSqlite3.Statement
  /** The same with the request's whitelist entries (kind 2), used while the whitelist table has any. */
  getRowsWhitelist: BetterSqlite3.Statement
  whitelistInUse: BetterSqlite3.Statement
  insertTriplet: BetterSqlite3.Statement
  updateTriplet: BetterSqlite3.Statement
  deleteTriplet: BetterSqlite3.Statement
  insertClient: BetterSqlite3.Statement
  updateClient: BetterSqlite3.Statement
  deleteClient: BetterSqlite3.Statement
  getMeta: BetterSqlite3.Statement
  setMeta: BetterSqlite3.Statement
  addMeta: BetterSqlite3.Statement
  scan: Record<Table, BetterSqlite3.Statement>
  remove: Record<Table, BetterSqlite3.Statement>
}

/** Map a better-sqlite3 or file-system error to its failure class. */
export function classifyError(err: unknown): StoreFailure {
  if (err instanceof StoreError) return err.failure
  const code = String((err as { code?: unknown }).code ?? '')
  if (/^SQLITE_(BUSY|LOCKED)/.test(code)) return 'busy'
  if (/^SQLITE_(CORRUPT|NOTADB)/.test(code)) return 'corrupt'
  if (code === 'SQLITE_FULL' || code === 'ENOSPC' || code === 'EDQUOT') return 'full'
  if (/^SQLITE_(READONLY|PERM|AUTH)/.test(code) || code === 'EACCES' || code === 'EPERM' || code === 'EROFS') return 'readonly'
  if (/^SQLITE_(CANTOPEN|IOERR)/.test(code) || code === 'ENOENT' || code === 'ENOTDIR') return 'unavailable'
  return 'error'
}

export class SqliteStore implements GreylistStore, StoreAdmin, RateLimitStore, RateLimitAdmin {
  private db: BetterSqlite3.Database | null = null
  private stmts: Statements | null = null
  /** The rate-limit statements, prepared on first use (most processes never limit). */
  private rlTables: RateLimitTables | null = null
  private inode = 0
  private nextOpenAt = 0
  private lastOpenError: StoreError | null = null
  private inTransaction = false
  /** A deferred COMMIT failed: commit before replying until one succeeds. */
  private commitBeforeReply = false
  /** Until when (performance.now() ms) other writers were seen: then the lock is not held across the reply. */
  private contendedUntil = 0
  /** Rows this process added (minus removed) in committed transactions since its last upkeep step. */
  private pendingDelta: Record<Table, number> = { triplet: 0, client: 0 }
  /** The same for the open transaction: added to pendingDelta when it commits, dropped when it rolls back. */
  private txDelta: Record<Table, number> = { triplet: 0, client: 0 }
  private knownCount: Record<Table, number> = { triplet: 0, client: 0 }
  private closing = false
  /**
   * Whether the whitelist table has entries, as found at open and at each
   * upkeep step (every ten seconds of activity): while it is empty, as it
   * mostly is, requests read their rows without looking it up. An entry
   * the ops command adds takes effect within those ten seconds.
   */
  private whitelistInUse = false

  constructor(private readonly opts: SqliteStoreOptions) {}

  private now(): number {
    return this.opts.now ? this.opts.now() : Date.now() / 1000
  }

  /**
   * The read-decide-write step runs in an IMMEDIATE transaction (the write
   * lock is taken up front: a read lock upgraded later could fail with
   * SQLITE_BUSY at once, without the busy handler). Its COMMIT is deferred
   * to just after the reply has been written, so the reply does not wait
   * for the WAL write; the next store call commits first in any case. A
   * COMMIT that fails is logged; the answer already given was decided on
   * consistent data, and the next attempt of that triplet simply repeats.
   * But a failure that lasts (a full disk, a read-only file) would then
   * defer every new triplet forever without recording one: after a failed
   * COMMIT the next ones run before the reply, so their failure becomes
   * fail_action, until one succeeds again. And while other processes
   * compete for the lock (a wait was needed in the last second), holding
   * it across the reply and an event-loop turn costs them more than the
   * early COMMIT costs this one: then COMMIT runs before the reply too.
   */
  async updateGreylist<T>(tripletKey: string, clientKey: string, decide: (view: GreylistView) => GreylistUpdate<T>, whitelistKeys: () => readonly string[] = () => []): Promise<T> {
    return this.withLockWaits(() => this.updateGreylistNow(tripletKey, clientKey, decide, whitelistKeys))
  }

  private updateGreylistNow<T>(tripletKey: string, clientKey: string, decide: (view: GreylistView) => GreylistUpdate<T>, whitelistKeys: () => readonly string[]): T {
    // Made only while the whitelist table has entries: most requests need none.
    let wl: string[] | undefined
    return this.run((_db, s) => {
      const read = (): GreylistView => {
        const view: GreylistView = { triplet: null, client: null, tripletCount: this.knownCount.triplet + this.pendingDelta.triplet }
        if (this.whitelistInUse) {
          const keys = whitelistKeys()
          wl ??= WHITELIST_KEYS_READ.map((i) => keys[i] ?? '')
        }
        const rows = this.whitelistInUse ? s.getRowsWhitelist.all(tripletKey, clientKey, ...wl!) : s.getRows.all(tripletKey, clientKey)
        for (const r of rows as Array<[number, number, number, number, number, string | null]>) {
          if (r[0] === 0) view.triplet = { first: r[1], last: r[2], passed: r[3], count: r[4] }
          else if (r[0] === 1) view.client = { count: r[4], last: r[2], lastCounted: r[1] }
          // Of several entries, the one that lasts longest.
          else if (!view.whitelisted || readTime(r[1]) > view.whitelisted.expires) view.whitelisted = { key: r[5]!, expires: readTime(r[1]) }
        }
        return view
      }
      // Most requests of a busy server change nothing (a known triplet seen
      // again). While other processes compete for the lock, such a request
      // is answered from a plain read and takes no write lock at all; with
      // no competition the lock costs nothing and the read is not doubled.
      if (performance.now() < this.contendedUntil) {
        const unlocked = decide(read())
        if (unlocked.triplet === undefined && unlocked.client === undefined) return unlocked.result
      }
      this.whenUnlocked(() => s.begin.run())
      this.inTransaction = true
      try {
        const view = read()
        const { triplet, client } = view
        const update = decide(view)
        if (update.triplet === null) {
          if (triplet) this.change(s.deleteTriplet.run(tripletKey).changes, 'triplet', -1)
        } else if (update.triplet) {
          const { row, expires } = update.triplet
          if (triplet) s.updateTriplet.run(row.first, row.last, row.passed, row.count, expires, tripletKey)
          else this.change(s.insertTriplet.run(row.first, row.last, row.passed, row.count, expires, tripletKey).changes, 'triplet', 1)
        }
        if (update.client === null) {
          if (client) this.change(s.deleteClient.run(clientKey).changes, 'client', -1)
        } else if (update.client) {
          const { row, expires } = update.client
          if (client) s.updateClient.run(row.count, row.last, row.lastCounted, expires, clientKey)
          else this.change(s.insertClient.run(row.count, row.last, row.lastCounted, expires, clientKey).changes, 'client', 1)
        }
        if (this.commitBeforeReply || performance.now() < this.contendedUntil) {
          s.commit.run()
          this.committed()
          this.commitBeforeReply = false
        } else this.scheduleCommit()
        return update.result
      } catch (err) {
        this.rollback(s)
        throw err
      }
    })
  }

  private change(changes: number, table: Table, sign: number): void {
    this.txDelta[table] += changes * sign
  }

  private committed(): void {
    this.inTransaction = false
    for (const table of TABLES) this.pendingDelta[table] += this.txDelta[table]
    this.txDelta = { triplet: 0, client: 0 }
  }

  /** The transaction of a request whose reply goes out now, committed right after it (by then another request may have). */
  private scheduleCommit(): void {
    setImmediate(() => this.commitPending())
  }

  private rollback(s: Statements): void {
    this.inTransaction = false
    this.txDelta = { triplet: 0, client: 0 }
    try {
      s.rollback.run()
    } catch {
      // no transaction left to roll back
    }
  }

  /** Commit the transaction of the last answered request, if any. */
  commitPending(): void {
    if (!this.inTransaction || !this.stmts) return
    try {
      this.stmts.commit.run()
      this.committed()
    } catch (err) {
      const failure = classifyError(err)
      this.opts.log(0, `database ${this.opts.path}: commit failed (${failure}): ${(err as Error).message}; the next requests commit before their reply`)
      this.commitBeforeReply = true
      this.rollback(this.stmts)
      if (failure === 'corrupt') this.handleCorrupt(`database ${this.opts.path}: ${(err as Error).message}`)
      else if (failure !== 'busy') this.close()
    }
  }

  /**
   * One upkeep step: delete expired rows among the next `limit` rows of
   * each table (a cursor shared by all processes walks the keys), add this
   * process's inserts to the shared row counts, and, once per RECOUNT_EVERY
   * seconds of `now` among all processes, recount the rows exactly.
   */
  async purgeExpired(now: number, limit: number): Promise<number> {
    return this.withLockWaits(() => this.upkeep(now, limit))
  }

  /**
   * Run a store step; in 'yield' mode a lock held by another process is
   * waited for here, between whole attempts (each attempt either takes the
   * lock and finishes without yielding, or stops before changing anything).
   */
  private async withLockWaits<T>(attempt: () => T): Promise<T> {
    if (this.opts.lockWaits !== 'yield') return attempt()
    let waited = 0
    let step = 0.02
    for (;;) {
      try {
        return attempt()
      } catch (err) {
        if (!(err instanceof LockHeld) || waited >= this.opts.busyTimeoutMs) {
          throw err instanceof LockHeld ? new StoreError('busy', `database ${this.opts.path}: locked by another process for ${this.opts.busyTimeoutMs} ms`) : err
        }
        const ms = Math.min(step, this.opts.busyTimeoutMs - waited)
        await new Promise((resolve) => setTimeout(resolve, ms))
        waited += ms
        step = Math.min(step * 2, 2)
      }
    }
  }

  private upkeep(now: number, limit: number): number {
    let flushed = { triplet: 0, client: 0 }
    const counts = { ...this.knownCount }
    let recount = false
    const removed = this.run((db, s) =>
      this.whenUnlocked(() => db.transaction(() => {
        // Read here: run() has just committed this process's last transaction.
        flushed = { ...this.pendingDelta }
        let removed = 0
        for (const table of TABLES) {
          let gone = 0
          if (limit > 0) {
            const cursor = String((s.getMeta.get(`${table}_cursor`) as { value: unknown } | undefined)?.value ?? '')
            const rows = s.scan[table].all(cursor, limit) as Array<{ key: string; expires: number }>
            for (const r of rows) if (r.expires < now) gone += s.remove[table].run(r.key).changes
            // A short page means the end of the keys: start over next time.
            s.setMeta.run(rows.length < limit ? '' : rows[rows.length - 1].key, `${table}_cursor`)
          }
          s.addMeta.run(flushed[table] - gone, `${table}_count`)
          const count = metaCount(s, table)
          if (count < 0) s.setMeta.run(0, `${table}_count`)
          counts[table] = Math.max(0, count)
          removed += gone
        }
        if (limit > 0) removed += this.rateLimitTables(db).purgeSome(now, limit)
        recount = limit > 0 && db.prepare(ELECT_RECOUNT).run({ now, period: RECOUNT_EVERY }).changes > 0
        this.whitelistInUse = s.whitelistInUse.get() === 1
        return removed
      }).immediate()),
    )
    // Only a committed step has handed these over (inserts made since stay pending).
    for (const table of TABLES) this.pendingDelta[table] -= flushed[table]
    this.knownCount = counts
    if (recount) {
      try {
        this.recount()
      } catch (err) {
        this.opts.log(2, `row recount skipped: ${(err as Error).message}`)
      }
    }
    return removed
  }

  /**
   * Replace the approximate counts with exact ones: COUNT(*) in a read
   * transaction, then what other processes added to the counts meanwhile
   * is kept on top. Inserts a live process had not yet handed over are
   * counted twice until the next recount (high by at most what each
   * process inserted since its last upkeep step); those of a process
   * killed before handing them over are counted again.
   */
  private recount(): void {
    this.applyRecount(this.countRows())
  }

  /** Each table's rows and its kept count, from one read snapshot. */
  private countRows(): RowCensus {
    return this.run((db, s) =>
      db.transaction(() => TABLES.map((table) => ({
        counted: metaCount(s, table),
        rows: Number(db.prepare(`SELECT count(*) FROM ${table}`).pluck().get()),
      }))).deferred(),
    )
  }

  private applyRecount(census: RowCensus): void {
    this.run((db, s) =>
      this.whenUnlocked(() => db.transaction(() => {
        TABLES.forEach((table, i) => {
          const exact = Math.max(0, census[i].rows + metaCount(s, table) - census[i].counted)
          s.setMeta.run(exact, `${table}_count`)
          this.knownCount[table] = exact
        })
      }).immediate()),
    )
  }

  /**
   * Run `begin` (a BEGIN IMMEDIATE, or a transaction starting with one),
   * waiting for another process's write lock for up to db_busy_timeout.
   * SQLite's own busy handler sleeps 1, 2, 5, 10 ... 100 ms between tries,
   * while a lock is held for tens of microseconds: with many processes on
   * few cores those sleeps dominated (p99 35 ms with 8 processes). Here the
   * waits start at 20 us and double up to 2 ms.
   */
  private whenUnlocked<T>(begin: () => T): T {
    let waited = 0
    let step = 0.02
    for (;;) {
      try {
        return begin()
      } catch (err) {
        if (classifyError(err) !== 'busy') throw err
        this.contendedUntil = performance.now() + CONTENTION_MEMORY_MS
        if (this.opts.lockWaits === 'yield') throw new LockHeld()
        if (waited >= this.opts.busyTimeoutMs) throw err
        const ms = Math.min(step, this.opts.busyTimeoutMs - waited)
        Atomics.wait(lockWait(), 0, 0, ms)
        waited += ms
        step = Math.min(step * 2, 2)
      }
    }
  }

  // ---- StoreAdmin: the ops commands (lib/ops.ts), never on the request path.

  async listTriplets(match: (key: string) => boolean, limit: number): Promise<TripletListing[]> {
    return this.run((db) => {
      const out: TripletListing[] = []
      for (const row of db.prepare('SELECT key, first, last, passed, count, expires FROM triplet ORDER BY key').iterate() as Iterable<TripletListing>) {
        if (out.length >= limit) break
        if (match(row.key)) out.push({ ...row })
      }
      return out
    })
  }

  async deleteTriplets(match: (key: string) => boolean): Promise<number> {
    const keys = (await this.listTriplets(match, Infinity)).map((r) => r.key)
    return this.withLockWaits(() => this.run((db, s) =>
      this.whenUnlocked(() => db.transaction(() => {
        let gone = 0
        for (const key of keys) gone += s.deleteTriplet.run(key).changes
        s.addMeta.run(-gone, 'triplet_count')
        return gone
      }).immediate()),
    ))
  }

  async setWhitelist(entry: WhitelistEntry): Promise<void> {
    await this.withLockWaits(() => this.run((db) => this.whenUnlocked(() => {
      db.prepare('INSERT INTO whitelist (key, expires, note, set_at) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET expires = excluded.expires, note = excluded.note, set_at = excluded.set_at')
        .run(entry.key, storedTime(entry.expires), entry.note, entry.setAt)
    })))
    this.whitelistInUse = true
  }

  async deleteWhitelist(key: string): Promise<boolean> {
    return this.withLockWaits(() => this.run((db) => this.whenUnlocked(() => db.prepare('DELETE FROM whitelist WHERE key = ?').run(key).changes > 0)))
  }

  async listWhitelist(): Promise<WhitelistEntry[]> {
    return this.run((db) =>
      (db.prepare('SELECT key, expires, note, set_at AS setAt FROM whitelist ORDER BY key').all() as WhitelistEntry[]).map((e) => ({ ...e, expires: readTime(e.expires) })),
    )
  }

  async addStats(host: string, deltas: ReadonlyMap<string, number>): Promise<void> {
    if (deltas.size === 0) return
    await this.withLockWaits(() => this.run((db) =>
      this.whenUnlocked(() => db.transaction(() => {
        const add = db.prepare('INSERT INTO stats (host, name, value) VALUES (?, ?, ?) ON CONFLICT (host, name) DO UPDATE SET value = value + excluded.value')
        for (const [name, value] of deltas) add.run(host, name, value)
      }).immediate()),
    ))
  }

  async stats(): Promise<Array<{ host: string; name: string; value: number }>> {
    return this.run((db) => db.prepare('SELECT host, name, value FROM stats ORDER BY name, host').all() as Array<{ host: string; name: string; value: number }>)
  }

  async purgeAll(now: number): Promise<number> {
    const removed = await this.withLockWaits(() => this.run((db, s) =>
      this.whenUnlocked(() => db.transaction(() => {
        let gone = 0
        for (const table of TABLES) {
          const n = db.prepare(`DELETE FROM ${table} WHERE expires < ?`).run(now).changes
          s.addMeta.run(-n, `${table}_count`)
          gone += n
        }
        gone += this.rateLimitTables(db).purgeAll(now)
        return gone + db.prepare('DELETE FROM whitelist WHERE expires <= ?').run(now).changes
      }).immediate()),
    ))
    return removed
  }

  async check(): Promise<StoreHealth> {
    const lines: string[] = []
    let ok = true
    try {
      const result = this.run((db, s) => {
        const integrity = db.pragma('quick_check', { simple: true }) as string
        const version = db.pragma('user_version', { simple: true }) as number
        const rows = (table: string): number => (db.prepare(`SELECT COUNT(*) AS n FROM ${table}`).get() as { n: number }).n
        return { integrity, version, triplets: rows('triplet'), clients: rows('client'), whitelist: rows('whitelist'), counted: metaCount(s, 'triplet'), rl: this.rateLimitTables(db).counts() }
      })
      ok = result.integrity === 'ok'
      lines.push(
        `database ${this.opts.path}: schema version ${result.version}, integrity ${result.integrity}`,
        `triplets: ${result.triplets} (counted for greylist_max_entries: ${result.counted}), client networks: ${result.clients}, whitelist entries: ${result.whitelist}`,
        `rate limits: ${result.rl.usage} usage counters, ${result.rl.holds} held messages, ${result.rl.hits} hit rows, ${result.rl.overrides} overrides`,
      )
    } catch (err) {
      ok = false
      lines.push(`database ${this.opts.path}: ${(err as Error).message}`)
    }
    return { ok, lines }
  }

  // ---- Rate limits (./sqlite-ratelimit.ts): RateLimitStore and RateLimitAdmin.

  /**
   * One rate-limit step in one IMMEDIATE transaction, committed before
   * the result is returned: a hold must be seen at once by the process
   * that gets the message's END-OF-MESSAGE, and by every competitor for
   * the same limit (no deferred COMMIT as for greylisting).
   */
  async rateLimit(step: RateLimitStep): Promise<StepResult> {
    return this.writeTransaction((db) => this.rateLimitTables(db).step(step))
  }

  /**
   * Reads of the request path outside a write transaction. busy_timeout is
   * 0 after open, and a WAL read can still meet SQLITE_BUSY (another
   * process recovering the WAL index at a cold start, a checkpoint
   * restarting the log): waited for like a lock, not a failure.
   */
  private read<T>(fn: (db: BetterSqlite3.Database) => T): Promise<T> {
    return this.withLockWaits(() => this.run((db) => this.whenUnlocked(() => fn(db))))
  }

  async listOverrides(now: number): Promise<OverrideEntry[]> {
    return this.read((db) => this.rateLimitTables(db).listOverrides(now))
  }

  async lastCommit(): Promise<number> {
    return this.read((db) => this.rateLimitTables(db).lastCommit())
  }

  async listUsage(match: (id: string) => boolean, now: number, slots: number): Promise<UsageListing[]> {
    return this.run((db) => this.rateLimitTables(db).listUsage(match, now, slots))
  }

  async resetUsage(match: (id: string) => boolean): Promise<number> {
    return this.writeTransaction((db) => this.rateLimitTables(db).resetUsage(match))
  }

  async setOverride(entry: OverrideEntry): Promise<void> {
    await this.writeTransaction((db) => this.rateLimitTables(db).setOverride(entry))
  }

  async deleteOverride(key: string): Promise<boolean> {
    return this.writeTransaction((db) => this.rateLimitTables(db).deleteOverride(key))
  }

  async listHits(since: number): Promise<HitListing[]> {
    return this.run((db) => this.rateLimitTables(db).listHits(since))
  }

  private rateLimitTables(db: BetterSqlite3.Database): RateLimitTables {
    if (!this.rlTables) {
      const { RateLimitTables } = require('./sqlite-ratelimit') as typeof import('./sqlite-ratelimit')
      this.rlTables = new RateLimitTables(db)
    }
    return this.rlTables
  }

  /** `fn` in one IMMEDIATE transaction, committed before returning; lock waits as the mode says, failures as StoreError. */
  /**
   * `fn` in one IMMEDIATE transaction, committed before it returns. With
   * the prepared BEGIN and COMMIT of the request path rather than
   * better-sqlite3's transaction(), whose wrapper made per call cost a
   * fifth of a rate-limit step.
   */
  private writeTransaction<T>(fn: (db: BetterSqlite3.Database) => T): Promise<T> {
    return this.withLockWaits(() => this.run((db, s) => {
      this.whenUnlocked(() => s.begin.run())
      try {
        const result = fn(db)
        s.commit.run()
        return result
      } catch (err) {
        try {
          s.rollback.run()
        } catch {
          // no transaction left to roll back
        }
        throw err
      }
    }))
  }

  /** Row counts as kept in the database (approximate while processes hold uncounted inserts). */
  async counts(): Promise<{ triplets: number; clients: number }> {
    await this.purgeExpired(-Infinity, 0)
    return { triplets: this.knownCount.triplet, clients: this.knownCount.client }
  }

  close(): void {
    this.commitPending()
    if (this.db && !this.closing && (this.pendingDelta.triplet !== 0 || this.pendingDelta.client !== 0)) {
      // Hand this process's inserts to the shared counts before leaving.
      this.closing = true
      try {
        this.upkeep(-Infinity, 0)
      } catch {
        // Losing this process's share is harmless: the next recount finds its rows.
      } finally {
        this.closing = false
      }
    }
    if (this.db) {
      try {
        this.db.close()
      } catch {
        // closing a broken handle: nothing to recover
      }
    }
    this.db = null
    this.stmts = null
    this.rlTables = null
    this.inTransaction = false
    this.txDelta = { triplet: 0, client: 0 }
  }

  private run<T>(fn: (db: BetterSqlite3.Database, s: Statements) => T): T {
    this.commitPending()
    const { db, stmts } = this.open()
    try {
      return fn(db, stmts)
    } catch (err) {
      const failure = classifyError(err)
      const message = `database ${this.opts.path}: ${(err as Error).message}`
      if (failure === 'corrupt') this.handleCorrupt(message)
      else if (failure !== 'busy') this.close()
      throw err instanceof StoreError ? err : new StoreError(failure, message)
    }
  }

  private open(retryAfterRename = true): { db: BetterSqlite3.Database; stmts: Statements } {
    if (this.db && this.stmts) return { db: this.db, stmts: this.stmts }
    const now = this.now()
    if (this.lastOpenError && now < this.nextOpenAt) throw this.lastOpenError
    try {
      const opened = this.openNow()
      this.lastOpenError = null
      return opened
    } catch (err) {
      this.close()
      const failure = classifyError(err)
      const error = err instanceof StoreError ? err : new StoreError(failure, `database ${this.opts.path}: ${(err as Error).message}`)
      if (failure === 'corrupt' && retryAfterRename && this.handleCorrupt(error.message)) return this.open(false)
      this.lastOpenError = error
      this.nextOpenAt = now + (this.opts.reopenDelay ?? 2)
      throw error
    }
  }

  private openNow(): { db: BetterSqlite3.Database; stmts: Statements } {
    const fs = require('node:fs') as typeof import('node:fs')
    const path = require('node:path') as typeof import('node:path')
    const file = this.opts.path
    const dir = path.dirname(path.resolve(file))
    if (this.opts.mustExist && !fs.existsSync(file)) {
      throw new StoreError('unavailable', `database ${file} does not exist: no policyd-ts process has written it yet (it is made by the user Postfix runs policyd-ts as)`)
    }
    let dirStat: import('node:fs').Stats
    try {
      dirStat = fs.statSync(dir)
    } catch (err) {
      // A directory that is missing or out of reach is not a read-only database.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new StoreError('unavailable', `database directory ${dir} cannot be reached: ${(err as Error).message}`)
      const { makeDirs } = require('../make-dirs') as typeof import('../make-dirs')
      try {
        makeDirs(dir, 0o700)
      } catch (mkdirErr) {
        throw new StoreError('unavailable', `database directory ${dir} does not exist and cannot be created: ${(mkdirErr as Error).message}`)
      }
      dirStat = fs.statSync(dir)
    }
    if (!dirStat.isDirectory()) throw new StoreError('unavailable', `database directory ${dir} is not a directory`)
    if (dirStat.mode & 0o002) {
      throw new StoreError('unavailable', `refusing database in world-writable directory ${dir}: anyone could replace it; use a directory writable only by the policy user`)
    }
    try {
      fs.closeSync(fs.openSync(file, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_RDWR, 0o600))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    const st = fs.statSync(file)
    this.inode = st.ino
    const Database = require('better-sqlite3') as typeof BetterSqlite3
    // SQLite takes whole milliseconds; db_busy_timeout * 1000 may be 1000.9999999999999.
    const db = new Database(file, { timeout: Math.round(this.opts.busyTimeoutMs), fileMustExist: true, nativeBinding: nativeBinding() })
    this.db = db
    // Rows are ~100 bytes and every commit writes whole pages to the WAL:
    // 1 KiB pages make a new database's commits ~25% cheaper. (Only an empty
    // file takes it; an existing one keeps its page size.)
    if (st.size === 0) db.pragma('page_size = 1024')
    db.pragma('journal_mode = WAL')
    db.pragma('synchronous = NORMAL')
    // Checkpoints copy the WAL into the database and fsync: rarer, larger
    // ones cost less per request than the default every 1000 pages.
    db.pragma('wal_autocheckpoint = 10000')
    // A request touches a few pages and the kernel caches the file for all
    // processes: 512 KiB per process instead of SQLite's 2 MiB default
    // (up to 100 processes).
    db.pragma('cache_size = -512')
    this.migrate(db)
    // From here on a locked database is waited for by whenUnlocked().
    db.pragma('busy_timeout = 0')
    const stmts = prepare(db)
    for (const table of TABLES) this.knownCount[table] = metaCount(stmts, table)
    this.stmts = stmts
    this.whitelistInUse = stmts.whitelistInUse.get() === 1
    return { db, stmts }
  }

  private migrate(db: BetterSqlite3.Database): void {
    const version = (): number => db.pragma('user_version', { simple: true }) as number
    if (version() === SCHEMA_VERSION) return
    db.transaction(() => {
      const from = version()
      if (from > SCHEMA_VERSION) {
        throw new StoreError('unavailable', `database ${this.opts.path} has schema version ${from}, newer than this policyd-ts supports (${SCHEMA_VERSION})`)
      }
      for (let v = from; v < SCHEMA_VERSION; v++) db.exec(MIGRATIONS[v])
      db.pragma(`user_version = ${SCHEMA_VERSION}`)
      if (from < SCHEMA_VERSION) this.opts.log(2, `database ${this.opts.path} migrated from schema version ${from} to ${SCHEMA_VERSION}`)
    }).immediate()
  }

  /** Returns true when a fresh database may be tried at once. */
  private handleCorrupt(message: string): boolean {
    // The inserts not yet handed to the shared counts lived in the corrupt
    // file: close() must not try to hand them over (that would meet the
    // corruption again, move the file from under this call, and give the
    // fresh database the old file's count).
    this.pendingDelta = { triplet: 0, client: 0 }
    this.close()
    if (!this.opts.renameCorrupt) return false
    const fs = require('node:fs') as typeof import('node:fs')
    const file = this.opts.path
    try {
      // Another process may have renamed it already and created a fresh
      // file: only the file that was found corrupt is moved.
      if (this.inode !== 0 && fs.statSync(file).ino !== this.inode) return true
      const aside = `${file}.corrupt-${new Date().toISOString().replace(/[:.]/g, '')}`
      fs.renameSync(file, aside)
      for (const suffix of ['-wal', '-shm']) {
        try {
          fs.renameSync(file + suffix, aside + suffix)
        } catch {
          // absent: nothing to move
        }
      }
      this.inode = 0
      this.opts.log(0, `${message}; corrupt file renamed to ${aside}, starting a fresh database`)
      return true
    } catch (err) {
      this.opts.log(0, `${message}; cannot rename the corrupt file aside: ${(err as Error).message}`)
      return false
    }
  }
}

/** SQLite keeps REAL, not Infinity: an entry without an end is stored as this. */
const FOREVER = 1e300
export function storedTime(t: number): number {
  return t === Infinity ? FOREVER : t
}
export function readTime(t: number): number {
  return t >= FOREVER ? Infinity : t
}

/** Another process holds the write lock; thrown before anything changed, so the step can be retried. */
class LockHeld extends StoreError {
  constructor() {
    super('busy', 'database locked by another process')
  }
}

/**
 * For --test-mode: open `file` as the store does (creating it, in WAL mode,
 * when `create`), take the write lock, write, and roll back, so that the
 * database is left as it was. Throws what SQLite or the file system says
 * (classifyError names its class); returns the schema version found.
 */
export function probeDatabase(file: string, opts: { busyTimeoutMs: number; create: boolean }): { schemaVersion: number } {
  const Database = require('better-sqlite3') as typeof BetterSqlite3
  const db = new Database(file, { timeout: Math.round(opts.busyTimeoutMs), fileMustExist: !opts.create, nativeBinding: nativeBinding() })
  try {
    // A new database gets its -wal and -shm files beside it, as the store's does.
    if (opts.create) db.pragma('journal_mode = WAL')
    const schemaVersion = db.pragma('user_version', { simple: true }) as number
    db.exec('BEGIN IMMEDIATE')
    try {
      db.exec('CREATE TABLE policyd_ts_test_mode (x); INSERT INTO policyd_ts_test_mode VALUES (1)')
    } finally {
      db.exec('ROLLBACK')
    }
    return { schemaVersion }
  } finally {
    db.close()
  }
}

/** How long one wait for the lock keeps a process committing before its replies. */
const CONTENTION_MEMORY_MS = 1000

let lockWaitCell: Int32Array | undefined
/** A cell nobody notifies: Atomics.wait on it is a sleep with sub-millisecond resolution. */
function lockWait(): Int32Array {
  lockWaitCell ??= new Int32Array(new SharedArrayBuffer(4))
  return lockWaitCell
}

/**
 * The compiled addon's path, found once: better-sqlite3's own lookup (the
 * `bindings` package) probes a dozen paths and costs milliseconds of every
 * cold start. Falls back to that lookup when the build is elsewhere.
 */
function nativeBinding(): string | undefined {
  const path = require('node:path') as typeof import('node:path')
  const fs = require('node:fs') as typeof import('node:fs')
  // The package root holds node_modules in a checkout and in a global
  // install; this code runs from dist/lib/store, or from the start-up
  // bundle in dist/lib.
  let dir = __dirname
  for (let i = 0; i < 4; i++) {
    const addon = path.join(dir, 'node_modules', 'better-sqlite3', 'build', 'Release', 'better_sqlite3.node')
    if (fs.existsSync(addon)) return addon
    dir = path.dirname(dir)
  }
  return undefined
}

function metaCount(s: Statements, table: Table): number {
  return Number((s.getMeta.get(`${table}_count`) as { value: number }).value)
}

/** The triplet and client rows of a request (the client row's key is the last parameter). */
const ROWS = 'SELECT 0, first, last, passed, count, NULL FROM triplet WHERE key = ? UNION ALL SELECT 1, last_counted, last, 0, count, NULL FROM client'

function prepare(db: BetterSqlite3.Database): Statements {
  const scan = (t: Table): BetterSqlite3.Statement => db.prepare(`SELECT key, expires FROM ${t} WHERE key > ? ORDER BY key LIMIT ?`)
  const remove = (t: Table): BetterSqlite3.Statement => db.prepare(`DELETE FROM ${t} WHERE key = ?`)
  return {
    begin: db.prepare('BEGIN IMMEDIATE'),
    commit: db.prepare('COMMIT'),
    rollback: db.prepare('ROLLBACK'),
    getRows: db.prepare(`${ROWS} WHERE key = ?`).raw(true),
    getRowsWhitelist: db
      .prepare(`${ROWS} WHERE key = ? UNION ALL SELECT 2, expires, 0, 0, 0, key FROM whitelist WHERE key IN (${WHITELIST_KEYS_READ.map(() => '?').join(', ')})`)
      .raw(true),
    whitelistInUse: db.prepare('SELECT EXISTS (SELECT 1 FROM whitelist)').pluck(),
    insertTriplet: db.prepare('INSERT INTO triplet (first, last, passed, count, expires, key) VALUES (?, ?, ?, ?, ?, ?)'),
    updateTriplet: db.prepare('UPDATE triplet SET first = ?, last = ?, passed = ?, count = ?, expires = ? WHERE key = ?'),
    deleteTriplet: remove('triplet'),
    insertClient: db.prepare('INSERT INTO client (count, last, last_counted, expires, key) VALUES (?, ?, ?, ?, ?)'),
    updateClient: db.prepare('UPDATE client SET count = ?, last = ?, last_counted = ?, expires = ? WHERE key = ?'),
    deleteClient: remove('client'),
    getMeta: db.prepare('SELECT value FROM meta WHERE name = ?'),
    setMeta: db.prepare('UPDATE meta SET value = ? WHERE name = ?'),
    addMeta: db.prepare('UPDATE meta SET value = value + ? WHERE name = ?'),
    scan: { triplet: scan('triplet'), client: scan('client') },
    remove: { triplet: remove('triplet'), client: remove('client') },
  }
}
