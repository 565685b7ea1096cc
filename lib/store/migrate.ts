// `policyd-ts store migrate --from sqlite --to redis` (issue 12): copy the
// live greylisting state of db_path into the configured Redis store, so
// that a site switching stores does not greylist every sender again.
//
// Copied: every unexpired triplet and client (auto-whitelist) row with its
// expiry, the whitelist entries of `policyd-ts greylist whitelist`, and the
// rate-limit overrides of `policyd-ts ratelimit set` when both stores keep
// them. Not copied: rate-limit usage, holds and hits (short-lived: counters
// start afresh) and the stats counters (they belong to the hosts that
// counted them). Running it twice gives the same state: a row, entry or
// override the target already has from as late or later is kept.

import type { LoadedConfig } from '../config'
import type { OverrideEntry } from '../ratelimit/types'
import type { ImportCounts } from './redis-import'
import type { ExportedRows, RowKind } from './sqlite-export'
import { StoreError, type StoreAdmin, type WhitelistEntry } from './types'

export const EX_USAGE = 64
export const EX_UNAVAILABLE = 69
export const EX_CONFIG = 78

/** Rows read from SQLite and handed to the target at once (the target batches them further). */
export const PAGE_ROWS = 2000
/** A progress line on stderr after each this many rows of a kind. */
export const PROGRESS_EVERY = 10_000

/** What is never copied, and why: said in every summary. */
export const NOT_COPIED = [
  'rate-limit usage, holds and hits (short-lived: the counters start afresh)',
  'stats counters (each host keeps counting its own)',
] as const

export interface MigrateIo {
  out(text: string): void
  err(text: string): void
  /** Epoch seconds. */
  now(): number
}

/** The overrides side of a rate-limit store, when it keeps overrides at all. */
interface OverrideSide {
  listOverrides(now: number): Promise<OverrideEntry[]>
  setOverride(entry: OverrideEntry): Promise<void>
}

export interface MigrationSource {
  /** The rows of `kind` unexpired at `now`, in pages of at most `pageSize`. */
  pages<K extends RowKind>(kind: K, now: number, pageSize: number): Iterable<Array<ExportedRows[K]>>
  admin: StoreAdmin & Partial<OverrideSide>
}

export interface MigrationTarget {
  /** Why this configuration may not write to the target (its recorded key format differs), or null. */
  formatProblem(): Promise<string | null>
  importRows<K extends RowKind>(kind: K, rows: ReadonlyArray<ExportedRows[K]>, dryRun: boolean): Promise<ImportCounts>
  admin: StoreAdmin & Partial<OverrideSide>
}

export interface EntryCounts {
  written: number
  /** The target had the entry, set as late or later. */
  kept: number
}

export interface MigrationSummary {
  from: string
  to: string
  dryRun: boolean
  triplets: ImportCounts
  clients: ImportCounts
  whitelist: EntryCounts
  /** Counts, or why overrides were not copied. */
  overrides: EntryCounts | { notCopied: string }
  notCopied: string[]
}

/** The target's recorded key format is not this configuration's: nothing was copied. */
export class MigrationRefused extends Error {
  override name = 'MigrationRefused'
}

/** Copy everything the migration copies from `source` to `target` (or, dry, count it). */
export async function migrate(source: MigrationSource, target: MigrationTarget, opts: { dryRun: boolean; from: string; to: string }, io: MigrateIo): Promise<MigrationSummary> {
  // Asked before anything is read: the import script refuses such a store too, but only once there are rows.
  const problem = await target.formatProblem()
  if (problem !== null) throw new MigrationRefused(problem)
  const now = io.now()
  const rows = async <K extends RowKind>(kind: K, label: string): Promise<ImportCounts> => {
    const total: ImportCounts = { written: 0, kept: 0, expired: 0 }
    let done = 0
    for (const page of source.pages(kind, now, PAGE_ROWS)) {
      const got = await target.importRows(kind, page, opts.dryRun)
      total.written += got.written
      total.kept += got.kept
      total.expired += got.expired
      const before = done
      done += page.length
      if (Math.floor(done / PROGRESS_EVERY) > Math.floor(before / PROGRESS_EVERY)) {
        io.err(`policyd-ts store migrate: ${done} ${label} read, ${total.written} ${opts.dryRun ? 'to copy' : 'copied'}\n`)
      }
    }
    return total
  }
  const triplets = await rows('triplet', 'triplets')
  const clients = await rows('client', 'client networks')
  const whitelist = await copyEntries(
    (await source.admin.listWhitelist()).filter((e) => e.expires > now),
    await target.admin.listWhitelist(),
    opts.dryRun ? null : (e: WhitelistEntry) => target.admin.setWhitelist(e),
  )
  const overrides = await copyOverrides(source.admin, target.admin, now, opts)
  return { from: opts.from, to: opts.to, dryRun: opts.dryRun, triplets, clients, whitelist, overrides, notCopied: [...NOT_COPIED] }
}

/** Overrides go across only when both stores keep them; otherwise the summary says which does not. */
async function copyOverrides(from: Partial<OverrideSide>, to: Partial<OverrideSide>, now: number, opts: { dryRun: boolean; from: string; to: string }): Promise<MigrationSummary['overrides']> {
  if (!hasOverrides(from) || !hasOverrides(to)) return { notCopied: `the ${hasOverrides(from) ? opts.to : opts.from} store keeps no rate-limit overrides in this version` }
  return copyEntries(await from.listOverrides(now), await to.listOverrides(now), opts.dryRun ? null : (e: OverrideEntry) => to.setOverride(e))
}

function hasOverrides(side: Partial<OverrideSide>): side is OverrideSide {
  return typeof side.listOverrides === 'function' && typeof side.setOverride === 'function'
}

/**
 * Write each entry the target lacks or has from earlier (setAt), in key
 * order; `write` null counts without writing. Entries are few (set by hand).
 */
async function copyEntries<E extends { key: string; setAt: number }>(entries: readonly E[], existing: readonly E[], write: ((e: E) => Promise<void>) | null): Promise<EntryCounts> {
  const have = new Map(existing.map((e) => [e.key, e.setAt]))
  const counts: EntryCounts = { written: 0, kept: 0 }
  for (const e of entries) {
    const setAt = have.get(e.key)
    if (setAt !== undefined && setAt >= e.setAt) {
      counts.kept++
      continue
    }
    if (write) await write(e)
    counts.written++
  }
  return counts
}

/** The summary for people: one line per kind, what was not copied, and what a dry run would do. */
export function describeSummary(s: MigrationSummary): string {
  const verb = s.dryRun ? 'to copy' : 'copied'
  const rows = (label: string, c: ImportCounts): string => `${label}: ${c.written} ${verb}, ${c.kept} kept (as recent or newer on ${s.to}), ${c.expired} expired on the way`
  const entries = (label: string, c: EntryCounts): string => `${label}: ${c.written} ${verb}, ${c.kept} kept (as recent or newer on ${s.to})`
  const lines = [
    `${s.dryRun ? 'dry run, nothing written: ' : ''}${s.from} -> ${s.to}`,
    rows('triplets', s.triplets),
    rows('client networks', s.clients),
    entries('whitelist entries', s.whitelist),
    'notCopied' in s.overrides ? `rate-limit overrides: not copied (${s.overrides.notCopied})` : entries('rate-limit overrides', s.overrides),
    ...s.notCopied.map((what) => `not copied: ${what}`),
  ]
  return `${lines.join('\n')}\n`
}

export interface StoreMigrateArgs {
  from?: string
  to?: string
  dryRun: boolean
  json: boolean
}

/** The command: checks its arguments, opens both stores from the configuration, copies, prints the summary. */
export async function runStoreMigrate(loaded: LoadedConfig, args: StoreMigrateArgs, io: MigrateIo): Promise<number> {
  if (args.from === undefined || args.to === undefined) {
    io.err('policyd-ts store migrate: give --from sqlite --to redis\n')
    return EX_USAGE
  }
  if (args.from === 'redis' && args.to === 'sqlite') {
    io.err('policyd-ts store migrate: --from redis --to sqlite is not supported: on the way back, set store = sqlite and let greylisting start afresh (senders retry once), or keep a copy of the SQLite file from before the switch\n')
    return EX_USAGE
  }
  if (args.from !== 'sqlite' || args.to !== 'redis') {
    io.err(`policyd-ts store migrate: --from ${args.from} --to ${args.to}: the one migration is --from sqlite --to redis\n`)
    return EX_USAGE
  }
  const config = loaded.config
  const { SqliteStore } = require('./sqlite') as typeof import('./sqlite')
  const { SqliteExport } = require('./sqlite-export') as typeof import('./sqlite-export')
  const { RedisImporter } = require('./redis-import') as typeof import('./redis-import')
  const { redisStoreOptions } = require('./redis') as typeof import('./redis')
  // The store opens (and, from an older policyd-ts, upgrades) the file first; the reader then finds the current schema.
  const sqlite = new SqliteStore({ path: config.db_path, busyTimeoutMs: config.db_busy_timeout * 1000, renameCorrupt: false, mustExist: true, log: () => undefined })
  const redis = new RedisImporter(redisStoreOptions(config, () => undefined))
  let reader: import('./sqlite-export').SqliteExport | null = null
  try {
    await sqlite.listWhitelist()
    const rows = (reader = new SqliteExport(config.db_path))
    const source: MigrationSource = { pages: (kind, now, size) => rows.pages(kind, now, size), admin: sqlite }
    const target: MigrationTarget = { formatProblem: () => redis.formatProblem(), importRows: (kind, r, dry) => redis.importRows(kind, r, dry), admin: redis }
    const summary = await migrate(source, target, { dryRun: args.dryRun, from: 'sqlite', to: 'redis' }, io)
    io.out(args.json ? `${JSON.stringify(summary)}\n` : describeSummary(summary))
    return 0
  } catch (err) {
    if (err instanceof MigrationRefused) {
      io.err(`policyd-ts store migrate: refusing redis as the target: ${err.message}\n`)
      return EX_CONFIG
    }
    if (!(err instanceof StoreError)) throw err
    io.err(`policyd-ts store migrate: ${err.message}\n`)
    return EX_UNAVAILABLE
  } finally {
    reader?.close()
    sqlite.close()
    redis.close()
  }
}
