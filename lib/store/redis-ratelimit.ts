// The rate-limit side of the Redis store (RateLimitStore, RateLimitAdmin):
// the key names, what a step sends to its script (./redis-ratelimit.lua.ts)
// and reads back, and the ops commands' bounded scans. RedisStore owns the
// connection, the deadlines and the error policy, and calls these with its
// client; like it, this module is loaded only when store = redis.

import type { Redis as RedisClient } from 'ioredis'
import type { Amounts, HitListing, Limit, OverrideEntry, RateLimitStep, RateUnit, StepResult, UsageListing } from '../ratelimit/types'
import { usageListing, type CounterRow } from '../ratelimit/usage-listing'
import { KEYS_PER_IDENTITY } from './redis-ratelimit.lua'
import { StoreError } from './types'

export interface RateLimitScripts {
  rlHold(numKeys: number, ...args: string[]): Promise<StepReply>
  rlCommit(numKeys: number, ...args: string[]): Promise<StepReply>
  rlRelease(numKeys: number, ...args: string[]): Promise<StepReply>
  rlPurge(numKeys: number, ...args: string[]): Promise<number>
  wlPurge(...args: string[]): Promise<number>
}
type Client = RedisClient & RateLimitScripts

/** [ok, now, hadHold, expired holds, added, exceeded]: see redis-ratelimit.lua.ts. */
type StepReply = [string, string, string, string, string[], string[]]

/** Identities per purge script (each brings KEYS_PER_IDENTITY keys). */
const PURGE_BATCH = 100

export class RateLimitKeys {
  readonly meta: string
  readonly usage: string
  readonly holds: string
  readonly amounts: string
  readonly hits: string
  readonly overrides: string

  constructor(prefix: string) {
    const base = `${prefix}{r}:`
    this.meta = `${base}m`
    this.usage = `${base}u:`
    this.holds = `${base}h:`
    this.amounts = `${base}a:`
    this.hits = `${base}x:`
    this.overrides = `${base}o`
  }

  /** An identity's keys in the scripts' order. */
  of(id: string): string[] {
    return [this.usage + id, this.holds + id, this.amounts + id, this.hits + id]
  }
}

/** One step through its script; `clock` is the test clock's text ('' for the server's TIME). */
export async function runStep(c: Client, k: RateLimitKeys, step: RateLimitStep, meta: [string, string], clock: string): Promise<StepResult> {
  const keys = [k.meta, ...step.identities.flatMap(({ id }) => k.of(id))]
  const params = JSON.stringify({
    instance: step.instance,
    slots: step.slots,
    holdTime: step.holdTime,
    maxHolds: step.maxHolds,
    holdsText: holdsLimit(step).text,
    force: step.force,
    whole: step.whole === true,
    ids: step.identities.map((i) => ({ limits: i.limits.map(({ count, unit, window, text }) => ({ count, unit, window, text })), first: i.first, more: i.more })),
  })
  const script = step.op === 'hold' ? c.rlHold : step.op === 'commit' ? c.rlCommit : c.rlRelease
  const reply = await script.call(c, keys.length, ...keys, ...meta, clock, params)
  return stepResult(step, reply)
}

/** The limit a step reports when an identity has too many live holds (as lib/ratelimit/step.ts names it). */
function holdsLimit(step: RateLimitStep): Limit {
  return { count: step.maxHolds, unit: 'msg', window: step.holdTime, text: `${step.maxHolds} held messages` }
}

function stepResult(step: RateLimitStep, [ok, now, hadHold, expired, added, exc]: StepReply): StepResult {
  const result: StepResult = {
    ok: ok === '1',
    added: step.identities.map((_, i) => ({ rcpt: Number(added[3 * i]), msg: Number(added[3 * i + 1]), bytes: Number(added[3 * i + 2]) })),
    hadHold: hadHold === '1',
    expiredHolds: Number(expired),
    now: Number(now),
  }
  if (exc.length > 0) {
    const identity = step.identities[Number(exc[0]) - 1]
    const j = Number(exc[1])
    result.exceeded = {
      id: identity.id,
      limit: j === 0 ? holdsLimit(step) : identity.limits[j - 1],
      used: Number(exc[2]),
      held: Number(exc[3]),
      asked: Number(exc[4]),
      retryAt: Number(exc[5]),
      firstInWindow: exc[6] === '1',
    }
  }
  return result
}

export async function lastCommit(c: Client, k: RateLimitKeys): Promise<number> {
  return Number((await c.hget(k.meta, 'lc')) ?? 0)
}

// ---- overrides: one hash, key -> END<TAB>SET-AT<TAB>LIMITS<TAB>NOTE

export async function listOverrides(c: Client, k: RateLimitKeys, now: number): Promise<OverrideEntry[]> {
  const all = await c.hgetall(k.overrides)
  return Object.keys(all)
    .sort(byteOrder)
    .map((key) => {
      const [expires, setAt, limits] = all[key].split('\t', 3)
      const note = all[key].slice(expires.length + setAt.length + limits.length + 3)
      return { key, limits, expires: expires === 'inf' ? Infinity : Number(expires), note, setAt: Number(setAt) }
    })
    .filter((o) => o.expires > now)
}

export async function setOverride(c: Client, k: RateLimitKeys, e: OverrideEntry): Promise<void> {
  await c.hset(k.overrides, e.key, `${e.expires === Infinity ? 'inf' : String(e.expires)}\t${e.setAt}\t${e.limits}\t${e.note}`)
}

export async function deleteOverride(c: Client, k: RateLimitKeys, key: string): Promise<boolean> {
  return (await c.hdel(k.overrides, key)) > 0
}

// ---- the ops commands: bounded scans of the identities' keys

/** Every key name after a prefix, once each. */
export type Scan = (prefix: string) => Promise<string[]>

/** As SqliteStore's listUsage: counters of `slots` slots counting something at `now`, and live holds. */
export async function listUsage(c: Client, k: RateLimitKeys, scan: Scan, match: (id: string) => boolean, now: number, slots: number): Promise<UsageListing[]> {
  const held = await heldSums(c, k, (await scan(k.holds)).filter(match), now)
  const ids = (await scan(k.usage)).filter(match)
  const counters = (await pipelined(c, ids.map((id) => ['hgetall', k.usage + id]))) as Array<Record<string, string>>
  const rows: CounterRow[] = []
  ids.forEach((id, i) => {
    for (const [field, counts] of Object.entries(counters[i])) {
      const [unit, window, slotsText] = field.split('/')
      if (Number(slotsText) === slots) rows.push({ id, unit: unit as RateUnit, window: Number(window), counts })
    }
  })
  return usageListing(rows, held, now, slots)
}

/** The sums of each identity's holds live at `now` (expiry after it); identities without any are left out. */
async function heldSums(c: Client, k: RateLimitKeys, ids: readonly string[], now: number): Promise<Map<string, Amounts>> {
  const members = (await pipelined(c, ids.map((id) => ['zrangebyscore', k.holds + id, `(${now}`, '+inf']))) as string[][]
  const live = ids.map((id, i) => ({ id, members: members[i] })).filter((x) => x.members.length > 0)
  const amounts = (await pipelined(c, live.map(({ id, members }) => ['hmget', k.amounts + id, ...members]))) as Array<Array<string | null>>
  const out = new Map<string, Amounts>()
  live.forEach(({ id }, i) => {
    const sums = { rcpt: 0, msg: 0, bytes: 0 }
    for (const text of amounts[i]) {
      const [rcpt, msg, bytes] = (text ?? '0 0 0').split(' ').map(Number)
      sums.rcpt += rcpt
      sums.msg += msg
      sums.bytes += bytes
    }
    out.set(id, sums)
  })
  return out
}

/** Every identity with any rate-limit key. */
async function allIds(k: RateLimitKeys, scan: Scan): Promise<string[]> {
  const ids = new Set<string>()
  for (const prefix of [k.usage, k.holds, k.amounts, k.hits]) for (const id of await scan(prefix)) ids.add(id)
  return [...ids]
}

export async function resetUsage(c: Client, k: RateLimitKeys, scan: Scan, match: (id: string) => boolean): Promise<number> {
  const ids = (await allIds(k, scan)).filter(match)
  for (let i = 0; i < ids.length; i += PURGE_BATCH) await pipelined(c, ids.slice(i, i + PURGE_BATCH).map((id) => ['del', ...k.of(id)]))
  return ids.length
}

export async function listHits(c: Client, k: RateLimitKeys, scan: Scan, since: number): Promise<HitListing[]> {
  const ids = await scan(k.hits)
  const rows = (await pipelined(c, ids.map((id) => ['hgetall', k.hits + id]))) as Array<Record<string, string>>
  const out: HitListing[] = []
  ids.forEach((id, i) => {
    for (const [limit, text] of Object.entries(rows[i])) {
      const [first, last, count] = text.split(' ').map(Number)
      if (last >= since) out.push({ id, limit, first, last, count })
    }
  })
  return out.sort((a, b) => b.last - a.last || byteOrder(a.id, b.id) || byteOrder(a.limit, b.limit))
}

/** Every expired counter, hold, hit row and override (SqliteStore's purgeAll of the rate-limit tables). */
export async function purgeRateLimits(c: Client, k: RateLimitKeys, scan: Scan, now: number): Promise<number> {
  const ids = await allIds(k, scan)
  let gone = 0
  for (let i = 0; i < ids.length; i += PURGE_BATCH) {
    const keys = ids.slice(i, i + PURGE_BATCH).flatMap((id) => k.of(id))
    gone += await c.rlPurge(keys.length, ...keys, String(now))
  }
  // An override lives while its end is after now: WL_PURGE's rule, on the same END<TAB>… values.
  return gone + (await c.wlPurge(k.overrides, String(now)))
}

/** The replies of commands sent in one pipeline. */
async function pipelined(c: Client, commands: string[][]): Promise<unknown[]> {
  return commands.length === 0 ? [] : execPipeline(c.pipeline(commands))
}

/** The replies of a pipeline or transaction; an error of any command rejects. */
export async function execPipeline(p: { exec(): Promise<Array<[Error | null, unknown]> | null> }): Promise<unknown[]> {
  const results = await p.exec()
  if (results === null) throw new StoreError('error', 'transaction discarded')
  return results.map(([err, value]) => {
    if (err) throw err
    return value
  })
}

/** SQLite's key order (bytes of UTF-8) rather than UTF-16 units. */
export function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b))
}
