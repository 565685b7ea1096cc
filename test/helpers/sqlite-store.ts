// A SQLite store in a test's temp dir (db/greylist.sqlite, created on first
// use) whose log lines are kept for the test to read.
import fs from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
import { SqliteStore, type SqliteStoreOptions } from '../../lib/store/sqlite'

export const dbFile = (dir: string): string => path.join(dir, 'db', 'greylist.sqlite')

export function makeStore(dir: string, extra: Partial<SqliteStoreOptions> = {}): { store: SqliteStore; logs: string[] } {
  const logs: string[] = []
  const store = new SqliteStore({
    path: dbFile(dir),
    busyTimeoutMs: 200,
    renameCorrupt: true,
    log: (_l, m) => logs.push(m),
    ...extra,
  })
  return { store, logs }
}

/**
 * Overwrite one leaf page of `table` in the closed database `file` with
 * garbage (`pick` chooses among the leaf pages in key order); returns how
 * many leaf pages the table has, for the test to check that one was left.
 */
export function breakLeafPage(file: string, table: string, pick: (leaves: number[]) => number): number {
  const db = new Database(file, { readonly: true })
  const leaves = db.prepare("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY path").pluck().all(table) as number[]
  const pageSize = db.pragma('page_size', { simple: true }) as number
  db.close()
  const fd = fs.openSync(file, 'r+')
  fs.writeSync(fd, Buffer.alloc(pageSize, 0xa5), 0, pageSize, (pick(leaves) - 1) * pageSize)
  fs.closeSync(fd)
  return leaves.length
}
