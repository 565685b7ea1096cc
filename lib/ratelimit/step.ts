// The rate-limit decision of one store step, pure: from the rows a store
// read for the step's identities (StepView) to the result and the rows to
// write (StepWrites). A store runs it inside one atomic step; the Redis
// store repeats the same rules in Lua, so every rule here is plain
// arithmetic with one order of evaluation, and
// test/ratelimit-conformance.test.ts pins it down for every backend.
//
// A limit of unit u passes when used_u + held_u + asked_u <= count, where
// used is what the window counts, held the live holds of every instance on
// the identity (this one's included) and asked what this request adds.

import { NO_AMOUNTS, type Amounts, type Exceeded, type Limit, type RateLimitStep, type RateUnit, type StepIdentity, type StepResult } from './types'
import { add, expiresAt, slotIndex, timeToFree, used, type SlotCounter } from './window'

/** A hit row is kept this long after its last refusal (or its window, when longer), for `policyd-ts ratelimit hits`. */
export const HIT_KEEP = 7 * 86400

export interface HoldRow extends Amounts {
  expires: number
}

export interface HitRow {
  first: number
  last: number
  n: number
}

/** What a store read of one identity, after removing its expired holds. */
export interface IdentityView {
  /** Its counters kept with the step's slots, by usageKey(unit, window); a missing one has counted nothing. */
  usage: ReadonlyMap<string, SlotCounter>
  /** Live holds of every instance on it, this one's included: how many, and their sums. */
  holds: number
  held: Amounts
  /** This instance's live hold. */
  mine: HoldRow | null
  /** Expired holds (of any instance) the store removed from it in this step. */
  expired: number
}

export interface StepView {
  /** In step order. */
  identities: readonly IdentityView[]
  /** The hit row of an identity (its index in the step) and limit text; asked only for the limit found exceeded. */
  hit(identity: number, limit: string): HitRow | null
}

export interface UsageWrite {
  unit: RateUnit
  window: number
  counter: SlotCounter
  expires: number
}

export interface IdentityWrites {
  /** Counters to replace (never empty ones). */
  usage: UsageWrite[]
  /** This instance's hold: undefined keeps it, null deletes it, a row replaces it. */
  hold?: HoldRow | null
}

export interface StepWrites {
  /** In step order. */
  identities: IdentityWrites[]
  /** The hit row to replace, when a limit was found exceeded. */
  hit?: { identity: number; limit: string; row: HitRow; expires: number }
  /** The store-wide time of the last commit step. */
  lastCommit?: number
}

export function usageKey(unit: RateUnit, window: number): string {
  return `${unit}/${window}`
}

/**
 * Amounts come partly from the SMTP client (SIZE=): anything but a
 * finite positive number counts as 0, fractions are cut, and the largest is
 * what a double holds exactly, so that sums stay exact and comparable.
 */
function clean(a: Amounts): Amounts {
  const n = (x: number): number => (Number.isFinite(x) && x > 0 ? Math.min(Math.floor(x), Number.MAX_SAFE_INTEGER) : 0)
  return { rcpt: n(a.rcpt), msg: n(a.msg), bytes: n(a.bytes) }
}

function sum(a: Amounts, b: Amounts): Amounts {
  return { rcpt: a.rcpt + b.rcpt, msg: a.msg + b.msg, bytes: a.bytes + b.bytes }
}

function isZero(a: Amounts): boolean {
  return a.rcpt === 0 && a.msg === 0 && a.bytes === 0
}

export function decideStep(step: RateLimitStep, view: StepView): { result: StepResult; writes: StepWrites } {
  const { now } = step
  const n = step.identities.length
  if (view.identities.length !== n) throw new Error(`rate-limit view of ${view.identities.length} identities for a step of ${n}`)
  // Each identity's rows are read once and written once: one named twice would count twice.
  if (new Set(step.identities.map((i) => i.id)).size !== n) throw new Error('an identity named twice in one rate-limit step')
  const result: StepResult = {
    ok: true,
    added: step.identities.map(() => ({ ...NO_AMOUNTS })),
    hadHold: n > 0 && view.identities[0].mine !== null,
    expiredHolds: view.identities.reduce((total, v) => total + v.expired, 0),
    now,
  }
  const writes: StepWrites = { identities: step.identities.map(() => ({ usage: [] })) }
  if (step.op === 'release') {
    step.identities.forEach((identity, i) => (writes.identities[i].hold = released(identity, view.identities[i].mine, step.whole === true)))
    return { result, writes }
  }

  // What each identity asks for, and whether it is tested as a new message.
  const asks = step.identities.map((identity, i) => {
    const mine = view.identities[i].mine
    if (step.op === 'hold') return { amounts: clean(mine ? identity.more : identity.first), isNew: mine === null, tested: true }
    // A held message counts the recipients its hold has at most: exempt
    // recipients (postmaster@, abuse@) were never held, but recipient_count
    // has them. Fewer (a milter refused some after RCPT) count as fewer.
    const amounts = clean(identity.first)
    if (mine) amounts.rcpt = Math.min(amounts.rcpt, mine.rcpt)
    return { amounts, isNew: true, tested: mine === null }
  })
  let failed = -1
  for (let i = 0; i < n && failed < 0; i++) {
    if (!asks[i].tested) continue
    const exceeded = firstExceeded(step, step.identities[i], view.identities[i], asks[i].amounts, asks[i].isNew)
    if (exceeded) {
      result.exceeded = exceeded
      failed = i
    }
  }
  if (step.op === 'commit') writes.lastCommit = now
  if (result.exceeded) {
    const limit = result.exceeded.limit
    const before = view.hit(failed, limit.text)
    result.exceeded.firstInWindow = !before || before.last < now - limit.window
    writes.hit = {
      identity: failed,
      limit: limit.text,
      row: { first: before ? before.first : now, last: now, n: (before ? before.n : 0) + 1 },
      expires: now + Math.max(HIT_KEEP, limit.window),
    }
    if (!step.force) {
      result.ok = false
      return { result, writes }
    }
  }

  step.identities.forEach((identity, i) => {
    const v = view.identities[i]
    const amounts = asks[i].amounts
    if (step.op === 'hold') {
      writes.identities[i].hold = { ...sum(v.mine ?? NO_AMOUNTS, amounts), expires: now + step.holdTime }
      result.added[i] = amounts
      return
    }
    writes.identities[i].usage = counted(step, identity, v, amounts)
    if (v.mine) writes.identities[i].hold = null
  })
  return { result, writes }
}

/** The first limit of the identity (in its order) the request does not fit, then the bound on holds. */
function firstExceeded(step: RateLimitStep, identity: StepIdentity, v: IdentityView, asked: Amounts, isNew: boolean): Exceeded | undefined {
  for (const limit of identity.limits) {
    const a = asked[limit.unit]
    // A further request of a held message is tested where it adds something;
    // a new one everywhere: a used-up quota refuses it even when it asks 0 of the unit (no SIZE=).
    if (!isNew && a === 0) continue
    const counter = v.usage.get(usageKey(limit.unit, limit.window))
    const cur = slotIndex(step.now, limit.window, step.slots)
    const u = counter ? used(counter, cur, step.slots) : 0
    const h = v.held[limit.unit]
    if (u + h + a <= limit.count && (a > 0 || u + h < limit.count)) continue
    return { id: identity.id, limit, used: u, held: h, asked: a, retryAt: retryAt(step, limit, counter, cur, u, h, a), firstInWindow: true }
  }
  if (step.op === 'hold' && isNew && v.holds >= step.maxHolds) {
    const limit: Limit = { count: step.maxHolds, unit: 'msg', window: step.holdTime, text: `${step.maxHolds} held messages` }
    return { id: identity.id, limit, used: 0, held: v.holds, asked: 1, retryAt: step.now + step.holdTime, firstInWindow: true }
  }
  return undefined
}

/**
 * When the request would fit, if nothing else came meanwhile: the time enough
 * counted slots have left the window, or, when usage alone cannot make room
 * (holds dominate), when today's holds have expired (and the usage still in
 * the way has left); never, when it asks more than the limit allows.
 */
function retryAt(step: RateLimitStep, limit: Limit, counter: SlotCounter | undefined, cur: number, u: number, h: number, a: number): number {
  if (a > limit.count || (a === 0 && limit.count === 0)) return Infinity
  // Asking nothing, the total must fall below the count, not to it.
  const need = u + h + a - limit.count + (a === 0 ? 1 : 0)
  const free = (k: number): number | undefined => (counter && k > 0 ? timeToFree(counter, cur, limit.window, step.slots, k) : undefined)
  return free(need) ?? Math.max(step.now + step.holdTime, free(need - h) ?? -Infinity)
}

/** The counters of a committed message: each limit's, once per unit and window, with what it adds in that unit. */
function counted(step: RateLimitStep, identity: StepIdentity, v: IdentityView, amounts: Amounts): UsageWrite[] {
  const out: UsageWrite[] = []
  const seen = new Set<string>()
  for (const { unit, window } of identity.limits) {
    const key = usageKey(unit, window)
    if (amounts[unit] === 0 || seen.has(key)) continue
    seen.add(key)
    const counter = add(v.usage.get(key) ?? { first: 0, counts: [] }, slotIndex(step.now, window, step.slots), step.slots, amounts[unit])
    out.push({ unit, window, counter, expires: expiresAt(counter, window, step.slots) })
  }
  return out
}

/** The instance's hold after a release: `first` taken back (never below 0), gone when nothing is left or `whole`. */
function released(identity: StepIdentity, mine: HoldRow | null, whole: boolean): HoldRow | null | undefined {
  if (!mine) return undefined
  if (whole) return null
  const back = clean(identity.first)
  const left = { rcpt: Math.max(0, mine.rcpt - back.rcpt), msg: Math.max(0, mine.msg - back.msg), bytes: Math.max(0, mine.bytes - back.bytes) }
  return isZero(left) ? null : { ...left, expires: mine.expires }
}
