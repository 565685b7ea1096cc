// The rate-limit tables of the SQLite store (schema version 3): reading a
// step's view, writing what lib/ratelimit/step.ts decided, the ops
// commands' queries and the purge. The caller (SqliteStore) owns the
// transactions and the error policy; this module is loaded on the first
// rate-limit call, so a process that does not limit never parses it.
//
// The tables are made by MIGRATIONS[2] in ./sqlite.ts.

import type BetterSqlite3 from 'better-sqlite3'
import { decideStep, usageKey, type HitRow, type HoldRow, type IdentityView, type StepWrites } from '../ratelimit/step'
import type { Amounts, HitListing, OverrideEntry, RateLimitStep, RateUnit, StepResult, UsageListing } from '../ratelimit/types'
import { usageListing, type CounterRow } from '../ratelimit/usage-listing'
import { parseCounter, formatCounter, type SlotCounter } from '../ratelimit/window'
import { readTime, storedTime } from './sqlite'

/**
 * Each table with its primary key (the purge walks it with a cursor kept in
 * meta, as for triplets) and whether a row whose expires equals now is gone:
 * a hold or an override lives while expires > now; a counter or a hit row
 * may still be read at its expires.
 */
const PURGED = [
  { table: 'rl_usage', key: ['id', 'unit', 'period', 'slots'], goneAt: '<' },
  { table: 'rl_hold', key: ['id', 'instance'], goneAt: '<=' },
  { table: 'rl_hit', key: ['id', 'lim'], goneAt: '<' },
  { table: 'rl_override', key: ['key'], goneAt: '<=' },
] as const

type Row = unknown[]

export class RateLimitTables {
  private readonly dropExpired: BetterSqlite3.Statement
  private readonly usageOf: BetterSqlite3.Statement
  private readonly holdSums: BetterSqlite3.Statement
  private readonly mineOf: BetterSqlite3.Statement
  private readonly hitOf: BetterSqlite3.Statement
  private readonly putUsage: BetterSqlite3.Statement
  private readonly putHold: BetterSqlite3.Statement
  private readonly dropHold: BetterSqlite3.Statement
  private readonly putHit: BetterSqlite3.Statement
  private readonly setMeta: BetterSqlite3.Statement
  private readonly setLastCommit: BetterSqlite3.Statement

  constructor(private readonly db: BetterSqlite3.Database) {
    this.dropExpired = db.prepare('DELETE FROM rl_hold WHERE id = ? AND expires <= ?')
    this.usageOf = db.prepare('SELECT unit, period, counts FROM rl_usage WHERE id = ? AND slots = ?').raw(true)
    this.holdSums = db.prepare('SELECT count(*), total(rcpt), total(msg), total(bytes) FROM rl_hold WHERE id = ?').raw(true)
    this.mineOf = db.prepare('SELECT rcpt, msg, bytes, expires FROM rl_hold WHERE id = ? AND instance = ?')
    this.hitOf = db.prepare('SELECT first, last, n FROM rl_hit WHERE id = ? AND lim = ?')
    this.putUsage = db.prepare('INSERT OR REPLACE INTO rl_usage (id, unit, period, slots, counts, expires) VALUES (?, ?, ?, ?, ?, ?)')
    this.putHold = db.prepare('INSERT OR REPLACE INTO rl_hold (id, instance, rcpt, msg, bytes, expires) VALUES (?, ?, ?, ?, ?, ?)')
    this.dropHold = db.prepare('DELETE FROM rl_hold WHERE id = ? AND instance = ?')
    this.putHit = db.prepare('INSERT OR REPLACE INTO rl_hit (id, lim, first, last, n, expires) VALUES (?, ?, ?, ?, ?, ?)')
    // The last commit is only asked whether END-OF-MESSAGE requests arrive
    // at all: rewritten once a minute, not with every message (a page less
    // in every commit).
    this.setLastCommit = db.prepare("UPDATE meta SET value = @now WHERE name = 'rl_last_commit' AND (value <= @now - 60 OR value > @now)")
    this.setMeta = db.prepare('UPDATE meta SET value = ? WHERE name = ?')
  }

  /** One step, inside the caller's write transaction: remove expired holds, read, decide, write. */
  step(step: RateLimitStep): StepResult {
    const identities = step.identities.map(({ id }) => this.view(id, step))
    const { result, writes } = decideStep(step, {
      identities,
      hit: (i, limit) => (this.hitOf.get(step.identities[i].id, limit) as HitRow | undefined) ?? null,
    })
    this.write(step, writes)
    return result
  }

  private view(id: string, step: RateLimitStep): IdentityView {
    const expired = this.dropExpired.run(id, step.now).changes
    const usage = new Map<string, SlotCounter>()
    for (const [unit, period, counts] of this.usageOf.all(id, step.slots) as Array<[RateUnit, number, string]>) usage.set(usageKey(unit, period), parseCounter(counts))
    const [holds, rcpt, msg, bytes] = this.holdSums.get(id) as [number, number, number, number]
    const mine = (this.mineOf.get(id, step.instance) as HoldRow | undefined) ?? null
    return { usage, holds, held: { rcpt, msg, bytes }, mine, expired }
  }

  private write(step: RateLimitStep, writes: StepWrites): void {
    writes.identities.forEach((w, i) => {
      const { id } = step.identities[i]
      for (const u of w.usage) this.putUsage.run(id, u.unit, u.window, step.slots, formatCounter(u.counter), u.expires)
      if (w.hold === null) this.dropHold.run(id, step.instance)
      else if (w.hold) this.putHold.run(id, step.instance, w.hold.rcpt, w.hold.msg, w.hold.bytes, w.hold.expires)
    })
    const hit = writes.hit
    if (hit) this.putHit.run(step.identities[hit.identity].id, hit.limit, hit.row.first, hit.row.last, hit.row.n, hit.expires)
    if (writes.lastCommit !== undefined) this.setLastCommit.run({ now: writes.lastCommit })
  }

  lastCommit(): number {
    return Number(this.db.prepare("SELECT value FROM meta WHERE name = 'rl_last_commit'").pluck().get() ?? 0)
  }

  listOverrides(now: number): OverrideEntry[] {
    const rows = this.db.prepare('SELECT key, limits, expires, note, set_at AS setAt FROM rl_override WHERE expires > ? ORDER BY key').all(now) as OverrideEntry[]
    return rows.map((r) => ({ ...r, expires: readTime(r.expires) }))
  }

  setOverride(e: OverrideEntry): void {
    this.db.prepare('INSERT OR REPLACE INTO rl_override (key, limits, expires, note, set_at) VALUES (?, ?, ?, ?, ?)').run(e.key, e.limits, storedTime(e.expires), e.note, e.setAt)
  }

  deleteOverride(key: string): boolean {
    return this.db.prepare('DELETE FROM rl_override WHERE key = ?').run(key).changes > 0
  }

  /**
   * Counters of `slots` slots (those of other slot counts are left from an
   * earlier ratelimit_slots and only wait for their expiry) that count
   * something at `now` or whose identity has live holds; an identity with
   * live holds and no counter yet is listed per unit it holds, window 0.
   */
  listUsage(match: (id: string) => boolean, now: number, slots: number): UsageListing[] {
    const held = new Map<string, Amounts>()
    for (const [id, rcpt, msg, bytes] of this.db.prepare('SELECT id, total(rcpt), total(msg), total(bytes) FROM rl_hold WHERE expires > ? GROUP BY id').raw(true).all(now) as Array<[string, number, number, number]>) {
      if (match(id)) held.set(id, { rcpt, msg, bytes })
    }
    const rows = this.db.prepare('SELECT id, unit, period AS window, counts FROM rl_usage WHERE slots = ?').iterate(slots) as Iterable<CounterRow>
    return usageListing(filterRows(rows, match), held, now, slots)
  }

  /** Inside the caller's write transaction. */
  resetUsage(match: (id: string) => boolean): number {
    const ids = (this.db.prepare('SELECT id FROM rl_usage UNION SELECT id FROM rl_hold UNION SELECT id FROM rl_hit').pluck().all() as string[]).filter(match)
    const drops = ['rl_usage', 'rl_hold', 'rl_hit'].map((table) => this.db.prepare(`DELETE FROM ${table} WHERE id = ?`))
    for (const id of ids) for (const drop of drops) drop.run(id)
    return ids.length
  }

  listHits(since: number): HitListing[] {
    return this.db.prepare('SELECT id, lim AS "limit", first, last, n AS count FROM rl_hit WHERE last >= ? ORDER BY last DESC, id, lim').all(since) as HitListing[]
  }

  /** Every expired row; inside the caller's write transaction. */
  purgeAll(now: number): number {
    return PURGED.reduce((gone, { table, goneAt }) => gone + this.db.prepare(`DELETE FROM ${table} WHERE expires ${goneAt} ?`).run(now).changes, 0)
  }

  /**
   * Expired rows among the next `limit` rows of each table, the walk shared
   * by all processes through a cursor in meta (the JSON of the last key
   * seen, '' to start over); inside the caller's write transaction.
   */
  purgeSome(now: number, limit: number): number {
    let gone = 0
    for (const { table, key, goneAt } of PURGED) {
      const cols = key.join(', ')
      const cursorName = `${table}_cursor`
      const cursor = String(this.db.prepare('SELECT value FROM meta WHERE name = ?').pluck().get(cursorName) ?? '')
      const after = cursor === '' ? '' : `WHERE (${cols}) > (${key.map(() => '?').join(', ')})`
      const rows = this.db.prepare(`SELECT ${cols}, expires FROM ${table} ${after} ORDER BY ${cols} LIMIT ?`).raw(true).all(...(cursor === '' ? [] : (JSON.parse(cursor) as unknown[])), limit) as Row[]
      const remove = this.db.prepare(`DELETE FROM ${table} WHERE ${key.map((k) => `${k} = ?`).join(' AND ')}`)
      for (const row of rows) {
        const expires = row[key.length] as number
        if (goneAt === '<' ? expires < now : expires <= now) gone += remove.run(...row.slice(0, key.length)).changes
      }
      // A short page means the end of the keys: start over next time.
      this.setMeta.run(rows.length < limit ? '' : JSON.stringify(rows[rows.length - 1].slice(0, key.length)), cursorName)
    }
    return gone
  }

  /** Row counts for `policyd-ts store check`. */
  counts(): { usage: number; holds: number; hits: number; overrides: number } {
    const n = (table: string): number => Number(this.db.prepare(`SELECT count(*) FROM ${table}`).pluck().get())
    return { usage: n('rl_usage'), holds: n('rl_hold'), hits: n('rl_hit'), overrides: n('rl_override') }
  }
}

function* filterRows(rows: Iterable<CounterRow>, match: (id: string) => boolean): Iterable<CounterRow> {
  for (const row of rows) if (match(row.id)) yield row
}
