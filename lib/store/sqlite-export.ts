// Reads the greylisting rows of a SQLite database for `policyd-ts store
// migrate`: the unexpired triplet and client rows, page by page in key
// order, through a read-only connection of its own. Each page is one short
// read (no transaction held across pages), so the policy processes writing
// the same file meanwhile are never held up; a row they change between
// pages is copied as it is when its page is read, and a second run of the
// migration brings over what changed since the first.

import type BetterSqlite3 from 'better-sqlite3'
import { SCHEMA_VERSION, classifyError } from './sqlite'
import { StoreError, type ClientRow, type TripletRow } from './types'

export type RowKind = 'triplet' | 'client'

/** A row with its key and the time after which it may be purged. */
export type ExportedRow<R> = { key: string; expires: number } & R

export interface ExportedRows {
  triplet: ExportedRow<TripletRow>
  client: ExportedRow<ClientRow>
}

const PAGE_QUERIES: Record<RowKind, string> = {
  triplet: 'SELECT key, first, last, passed, count, expires FROM triplet WHERE key > ? AND expires >= ? ORDER BY key LIMIT ?',
  client: 'SELECT key, count, last, last_counted AS lastCounted, expires FROM client WHERE key > ? AND expires >= ? ORDER BY key LIMIT ?',
}

export class SqliteExport {
  private readonly db: BetterSqlite3.Database

  /** Opens `path` read-only; refuses a file that is no policyd-ts database of a schema this program knows. */
  constructor(private readonly path: string) {
    const Database = require('better-sqlite3') as typeof BetterSqlite3
    try {
      this.db = new Database(path, { readonly: true, fileMustExist: true })
    } catch (err) {
      throw this.error(err)
    }
    const version = this.read(() => this.db.pragma('user_version', { simple: true }) as number)
    if (version < 1 || version > SCHEMA_VERSION) {
      this.db.close()
      throw new StoreError('unavailable', `database ${path} has schema version ${version}: ${version < 1 ? 'not a policyd-ts database' : `newer than this policyd-ts supports (${SCHEMA_VERSION})`}`)
    }
  }

  /**
   * The rows of `kind` whose expiry is at or after `now` (SQLite's store
   * keeps a row until its expiry has passed), `pageSize` at a time.
   */
  *pages<K extends RowKind>(kind: K, now: number, pageSize: number): Generator<Array<ExportedRows[K]>> {
    const page = this.read(() => this.db.prepare(PAGE_QUERIES[kind]))
    let after = ''
    for (;;) {
      const rows = this.read(() => page.all(after, now, pageSize) as Array<ExportedRows[K]>)
      if (rows.length > 0) yield rows
      // A short page is the end of the keys; keys only grow, so this ends.
      if (rows.length < pageSize) return
      after = rows[rows.length - 1].key
    }
  }

  close(): void {
    this.db.close()
  }

  private read<T>(step: () => T): T {
    try {
      return step()
    } catch (err) {
      throw this.error(err)
    }
  }

  private error(err: unknown): StoreError {
    if (err instanceof StoreError) return err
    return new StoreError(classifyError(err), `database ${this.path}: ${(err as Error).message}`)
  }
}
