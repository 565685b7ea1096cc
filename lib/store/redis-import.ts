// The writing side of `policyd-ts store migrate --to redis`: greylisting rows
// copied into the Redis store's layout (redis.ts) by one small script per
// batch. The script checks the format record as every writer does, keeps a
// row already on Redis that was seen as late or later (`last`), leaves out a
// row expired by the server's clock, and writes the others as the store's own
// compare-and-set does: fields, expiry, count bucket, version and TTL. So a
// second run changes nothing, and a host that greylisted on Redis while the
// copy ran keeps what it wrote.

import type { Redis as RedisClient } from 'ioredis'
import { RedisStore } from './redis'
import { PRELUDE } from './redis-scripts'
import type { ExportedRows, RowKind } from './sqlite-export'

/**
 * Rows per script call: a script blocks the server while it runs, so each is
 * short (measured: ~3 ms of server time per 200 rows, Redis 7, 2 shared cores).
 */
export const IMPORT_BATCH = 200

export interface ImportCounts {
  /** Written (or, in a dry run, that would be). */
  written: number
  /** Left as they were: the row on Redis was seen as late or later. */
  kept: number
  /** Expired by the server's clock before they got there. */
  expired: number
}

/**
 * gl_import: copy rows of one kind. KEYS: meta, counters, then one key per row.
 * ARGV: format, privacy, test clock, kind ('t' or 'c'), dry ('1' counts without writing),
 *   then per row its fields (triplet: f, l, p, n; client: n, l, lc; `l`, last seen, second in both) and its expiry.
 * Returns [written, kept, expired].
 */
const GL_IMPORT = `${PRELUDE}
local dry = ARGV[5] == '1'
local err = meta(KEYS[1], ARGV[1], ARGV[2], not dry)
if err then return err end
local now = clock(ARGV[3])
local kind = ARGV[4]
local names = {'n', 'l', 'lc'}
if kind == 't' then names = {'f', 'l', 'p', 'n'} end
local stride = #names + 1
if not dry then
  drain(KEYS[2], 't', math.floor(now / W))
  drain(KEYS[2], 'c', math.floor(now / W))
end
local written, kept, expired = 0, 0, 0
for i = 3, #KEYS do
  local base = 5 + (i - 3) * stride
  local expires = ARGV[base + stride]
  local have = tonumber(redis.call('HGET', KEYS[i], 'l'))
  if tonumber(expires) < now then
    expired = expired + 1
  elseif have and have >= tonumber(ARGV[base + 2]) then
    kept = kept + 1
  else
    written = written + 1
    if not dry then
      local fields = {}
      for j = 1, #names do
        fields[#fields + 1] = names[j]
        fields[#fields + 1] = ARGV[base + j]
      end
      apply(KEYS[2], kind, KEYS[i], 'put', fields, expires, now)
    end
  end
end
return {written, kept, expired}
`

type ImportClient = RedisClient & { glImport(...args: string[]): Promise<[number, number, number]> }

/** The Redis store with the import step: it connects, classifies errors and refuses a differing format as the store does. */
export class RedisImporter extends RedisStore {
  private readonly defined = new WeakSet<RedisClient>()

  /**
   * Copy `rows` (any number: they go in batches of IMPORT_BATCH, all
   * batches in one pipeline). With no rows it only checks the format
   * record (and, writing, records it on a store that has none yet).
   */
  async importRows<K extends RowKind>(kind: K, rows: ReadonlyArray<ExportedRows[K]>, dryRun: boolean): Promise<ImportCounts> {
    return this.admin(async (client: RedisClient) => {
      const c = this.withScript(client)
      const prefix = kind === 'triplet' ? this.k.triplet : this.k.client
      const head = [...this.metaArgs(), this.testClock(), kind === 'triplet' ? 't' : 'c', dryRun ? '1' : '']
      const pipe = c.pipeline() as unknown as { glImport(...args: string[]): void; exec(): Promise<Array<[Error | null, unknown]> | null> }
      const calls = Math.max(1, Math.ceil(rows.length / IMPORT_BATCH))
      for (let i = 0; i < calls; i++) {
        const batch = rows.slice(i * IMPORT_BATCH, (i + 1) * IMPORT_BATCH)
        const keys = batch.map((r) => prefix + r.key)
        const values = batch.flatMap((r) => [...rowValues(kind, r), String(r.expires)])
        pipe.glImport(String(keys.length + 2), this.k.meta, this.k.counters, ...keys, ...head, ...values)
      }
      const counts: ImportCounts = { written: 0, kept: 0, expired: 0 }
      for (const [err, reply] of (await pipe.exec()) ?? []) {
        if (err) throw err
        const [written, kept, expired] = reply as [number, number, number]
        counts.written += written
        counts.kept += kept
        counts.expired += expired
      }
      return counts
    })
  }

  /**
   * Why this host may not write to the store (its format record names
   * another key format or greylist_privacy), or null: none recorded yet, or
   * the same. The import script refuses such a store too; asking first lets
   * the command say so before it reads anything.
   */
  async formatProblem(): Promise<string | null> {
    const meta = await this.admin((c: RedisClient) => c.hgetall(this.k.meta))
    if (meta.format === undefined) return null
    const [format, privacy] = this.metaArgs()
    if (meta.format === format && meta.privacy === privacy) return null
    return `its greylisting keys (${this.k.meta}) have format ${meta.format} and greylist_privacy ${meta.privacy}, this configuration format ${format} and greylist_privacy ${privacy}: ` +
      'copying would make keys no host reads; set greylist_privacy as the hosts sharing the store do, or use another redis_prefix'
  }

  private withScript(c: RedisClient): ImportClient {
    if (!this.defined.has(c)) {
      // Sent as EVALSHA, with EVAL when the server does not know it yet.
      c.defineCommand('glImport', { lua: GL_IMPORT })
      this.defined.add(c)
    }
    return c as ImportClient
  }
}

/** A row's field values in the order the script takes them. */
function rowValues<K extends RowKind>(kind: K, row: ExportedRows[K]): string[] {
  if (kind === 'triplet') {
    const r = row as ExportedRows['triplet']
    return [r.first, r.last, r.passed, r.count].map(String)
  }
  const r = row as ExportedRows['client']
  return [r.count, r.last, r.lastCounted].map(String)
}
