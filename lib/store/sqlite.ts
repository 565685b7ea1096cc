// The SQLite store: one file shared by every spawned process, WAL mode, a
// busy timeout, versioned schema. Every error leaves this file as a
// StoreError whose `failure` names its class; the caller owns the policy.

import type BetterSqlite3 from 'better-sqlite3'
import {
  StoreError,
  type ClientRow,
  type GreylistStore,
  type GreylistUpdate,
  type GreylistView,
  type StoreFailure,
  type TripletRow,
} from './types'

export interface SqliteStoreOptions {
  path: string
  busyTimeoutMs: number
  /** Rename a corrupt file aside and start afresh (true), or keep failing (false). */
  renameCorrupt: boolean
  log: (level: number, msg: string) => void
  /** Seconds between two attempts to reopen a failed database. */
  reopenDelay?: number
  now?: () => number
}

/** Each entry brings the schema from version i to i + 1. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE triplet (
     key TEXT PRIMARY KEY NOT NULL,
     first REAL NOT NULL, last REAL NOT NULL, passed REAL NOT NULL, count INTEGER NOT NULL,
     expires REAL NOT NULL) WITHOUT ROWID;
   CREATE INDEX triplet_expires ON triplet(expires);
   CREATE TABLE client (
     key TEXT PRIMARY KEY NOT NULL,
     count INTEGER NOT NULL, last REAL NOT NULL, last_counted REAL NOT NULL,
     expires REAL NOT NULL) WITHOUT ROWID;
   CREATE INDEX client_expires ON client(expires);
   CREATE TABLE row_count (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL) WITHOUT ROWID;
   INSERT INTO row_count VALUES ('triplet', 0), ('client', 0);
   CREATE TRIGGER triplet_added AFTER INSERT ON triplet BEGIN UPDATE row_count SET value = value + 1 WHERE name = 'triplet'; END;
   CREATE TRIGGER triplet_removed AFTER DELETE ON triplet BEGIN UPDATE row_count SET value = value - 1 WHERE name = 'triplet'; END;
   CREATE TRIGGER client_added AFTER INSERT ON client BEGIN UPDATE row_count SET value = value + 1 WHERE name = 'client'; END;
   CREATE TRIGGER client_removed AFTER DELETE ON client BEGIN UPDATE row_count SET value = value - 1 WHERE name = 'client'; END;`,
]
export const SCHEMA_VERSION = MIGRATIONS.length

interface Statements {
  getTriplet: BetterSqlite3.Statement
  getClient: BetterSqlite3.Statement
  tripletCount: BetterSqlite3.Statement
  insertTriplet: BetterSqlite3.Statement
  updateTriplet: BetterSqlite3.Statement
  deleteTriplet: BetterSqlite3.Statement
  insertClient: BetterSqlite3.Statement
  updateClient: BetterSqlite3.Statement
  deleteClient: BetterSqlite3.Statement
  purgeTriplets: BetterSqlite3.Statement
  purgeClients: BetterSqlite3.Statement
  counts: BetterSqlite3.Statement
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

export class SqliteStore implements GreylistStore {
  private db: BetterSqlite3.Database | null = null
  private stmts: Statements | null = null
  private inode = 0
  private nextOpenAt = 0
  private lastOpenError: StoreError | null = null

  constructor(private readonly opts: SqliteStoreOptions) {}

  private now(): number {
    return this.opts.now ? this.opts.now() : Date.now() / 1000
  }

  async updateGreylist<T>(tripletKey: string, clientKey: string, decide: (view: GreylistView) => GreylistUpdate<T>): Promise<T> {
    return this.run((db, s) => {
      const txn = db.transaction(() => {
        const triplet = toTriplet(s.getTriplet.get(tripletKey))
        const client = toClient(s.getClient.get(clientKey))
        const tripletCount = (s.tripletCount.get() as { value: number }).value
        const update = decide({ triplet, client, tripletCount })
        if (update.triplet === null) {
          if (triplet) s.deleteTriplet.run(tripletKey)
        } else if (update.triplet) {
          const { row, expires } = update.triplet
          ;(triplet ? s.updateTriplet : s.insertTriplet).run(row.first, row.last, row.passed, row.count, expires, tripletKey)
        }
        if (update.client === null) {
          if (client) s.deleteClient.run(clientKey)
        } else if (update.client) {
          const { row, expires } = update.client
          ;(client ? s.updateClient : s.insertClient).run(row.count, row.last, row.lastCounted, expires, clientKey)
        }
        return update.result
      })
      // IMMEDIATE takes the write lock up front: a read lock upgraded later
      // could fail with SQLITE_BUSY at once, without the busy handler.
      return txn.immediate()
    })
  }

  async purgeExpired(now: number, limit: number): Promise<number> {
    return this.run((db, s) =>
      db.transaction(() => s.purgeTriplets.run(now, limit).changes + s.purgeClients.run(now, limit).changes).immediate(),
    )
  }

  async counts(): Promise<{ triplets: number; clients: number }> {
    return this.run((_db, s) => {
      const rows = s.counts.all() as Array<{ name: string; value: number }>
      const get = (n: string): number => rows.find((r) => r.name === n)?.value ?? 0
      return { triplets: get('triplet'), clients: get('client') }
    })
  }

  close(): void {
    if (this.db) {
      try {
        this.db.close()
      } catch {
        // closing a broken handle: nothing to recover
      }
    }
    this.db = null
    this.stmts = null
  }

  private run<T>(fn: (db: BetterSqlite3.Database, s: Statements) => T): T {
    const { db, stmts } = this.open()
    try {
      return fn(db, stmts)
    } catch (err) {
      const failure = classifyError(err)
      const message = `database ${this.opts.path}: ${(err as Error).message}`
      if (failure === 'corrupt') this.handleCorrupt(message)
      else if (failure !== 'busy') this.close()
      throw new StoreError(failure, message)
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
    let dirStat: import('node:fs').Stats
    try {
      dirStat = fs.statSync(dir)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
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
    this.inode = fs.statSync(file).ino
    const Database = require('better-sqlite3') as typeof BetterSqlite3
    const db = new Database(file, { timeout: this.opts.busyTimeoutMs, fileMustExist: true })
    this.db = db
    db.pragma('journal_mode = WAL')
    db.pragma('synchronous = NORMAL')
    this.migrate(db)
    this.stmts = prepare(db)
    return { db, stmts: this.stmts }
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

function prepare(db: BetterSqlite3.Database): Statements {
  return {
    getTriplet: db.prepare('SELECT first, last, passed, count FROM triplet WHERE key = ?'),
    getClient: db.prepare('SELECT count, last, last_counted FROM client WHERE key = ?'),
    tripletCount: db.prepare("SELECT value FROM row_count WHERE name = 'triplet'"),
    insertTriplet: db.prepare('INSERT INTO triplet (first, last, passed, count, expires, key) VALUES (?, ?, ?, ?, ?, ?)'),
    updateTriplet: db.prepare('UPDATE triplet SET first = ?, last = ?, passed = ?, count = ?, expires = ? WHERE key = ?'),
    deleteTriplet: db.prepare('DELETE FROM triplet WHERE key = ?'),
    insertClient: db.prepare('INSERT INTO client (count, last, last_counted, expires, key) VALUES (?, ?, ?, ?, ?)'),
    updateClient: db.prepare('UPDATE client SET count = ?, last = ?, last_counted = ?, expires = ? WHERE key = ?'),
    deleteClient: db.prepare('DELETE FROM client WHERE key = ?'),
    purgeTriplets: db.prepare('DELETE FROM triplet WHERE key IN (SELECT key FROM triplet WHERE expires < ? ORDER BY expires LIMIT ?)'),
    purgeClients: db.prepare('DELETE FROM client WHERE key IN (SELECT key FROM client WHERE expires < ? ORDER BY expires LIMIT ?)'),
    counts: db.prepare('SELECT name, value FROM row_count'),
  }
}

function toTriplet(r: unknown): TripletRow | null {
  if (!r) return null
  const row = r as { first: number; last: number; passed: number; count: number }
  return { first: row.first, last: row.last, passed: row.passed, count: row.count }
}

function toClient(r: unknown): ClientRow | null {
  if (!r) return null
  const row = r as { count: number; last: number; last_counted: number }
  return { count: row.count, last: row.last, lastCounted: row.last_counted }
}
