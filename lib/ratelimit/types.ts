// The rate-limit seam: what a limit is, what one atomic store step over a
// request's identities takes and returns, and what the ops commands do to
// the rate-limit state. The decision itself is pure (./step.ts); each store
// runs it inside one atomic step (SQLite: one BEGIN IMMEDIATE; Redis: one
// Lua script doing the same arithmetic), and one conformance table
// (test/ratelimit-conformance.test.ts) runs against every backend.

export type RateUnit = 'rcpt' | 'msg' | 'bytes'

/** One limit, e.g. 30msg/1m: at most `count` units in any `window` seconds (within 1/slots of it). */
export interface Limit {
  count: number
  unit: RateUnit
  /** Seconds. */
  window: number
  /** As the admin wrote it, normalised (`30msg/1m`, `1GB/1d`), for replies, logs and hits. */
  text: string
}

/** An identity's limits: a list (every one must pass) or none at all (`unlimited`). */
export type LimitSet = readonly Limit[] | 'unlimited'

export interface Amounts {
  rcpt: number
  msg: number
  bytes: number
}

export const NO_AMOUNTS: Readonly<Amounts> = Object.freeze({ rcpt: 0, msg: 0, bytes: 0 })

/**
 * Identities are "class:id": `sasl:alice@example.org`, `sender:bob@example.com`,
 * `sender:<>@192.0.2.7` (null sender: one counter per client, never one for
 * every bounce), `client:192.0.2.7`, `client:2001:db8:1:2::/64`, `global:*`.
 * With greylist_privacy the part after the class is a SHA-256 hex digest.
 */
export type RateClass = 'sasl' | 'sender' | 'client' | 'global'
export const RATE_CLASSES: readonly RateClass[] = ['sasl', 'sender', 'client', 'global']

export interface StepIdentity {
  id: string
  /** The limits in effect, overrides resolved; never empty (an `unlimited` identity is left out of the step). */
  limits: readonly Limit[]
  /**
   * hold: what this request adds to the instance's hold when the instance
   * has no hold on this identity yet (`first`) and when it has one (`more`):
   * at RCPT first = {rcpt 1, msg 1, bytes SIZE}, more = {rcpt 1, msg 0, bytes 0};
   * at DATA first = {rcpt recipient_count, msg 1, bytes SIZE}, more = NO_AMOUNTS.
   * commit: `first` is the message's final amounts (recipient_count minus
   * exempt recipients, 1, size); `more` is unused.
   * release: `first` is what to take back from the hold (what a hold step
   * returned as `added`); all zero with `whole` drops the hold.
   */
  first: Amounts
  more: Amounts
}

export type StepOp = 'hold' | 'commit' | 'release'

export interface RateLimitStep {
  op: StepOp
  /** Postfix's `instance` attribute: one message. */
  instance: string
  identities: readonly StepIdentity[]
  /**
   * Epoch seconds. SQLite takes it as given (the caller's injected clock);
   * Redis uses the server's TIME unless the store was made with a test
   * clock, so several hosts share one clock.
   */
  now: number
  /** ratelimit_slots: each window is kept as this many counters. */
  slots: number
  /** ratelimit_hold_time in seconds: a hold not committed or released by then no longer counts. */
  holdTime: number
  /** ratelimit_max_holds: more live holds than this on one identity counts as exceeded. */
  maxHolds: number
  /** Take the hold (and, at commit, count) even when a limit is exceeded (ratelimit_learn_only). Hits are still recorded. */
  force: boolean
  /** release only: drop the instance's whole hold on each identity, whatever `first` says. */
  whole?: boolean
}

/** Why a step refused (or, forced, would have refused): the first limit found exceeded. */
export interface Exceeded {
  id: string
  limit: Limit
  /** Counted in the window at `now` (committed usage). */
  used: number
  /** Live holds of every instance on this identity, this one's included, before this request. */
  held: number
  /** What this request asked for in the limit's unit. */
  asked: number
  /** Epoch seconds at which enough of the window has slid out for the request to fit (Infinity: it never can, asked > count). */
  retryAt: number
  /** True when this is the first hit of this identity and limit in the current window (log it); false for repeats. */
  firstInWindow: boolean
}

export interface StepResult {
  /** The step was taken (hold added, usage counted, hold released). False only when a limit refused and `force` was off. */
  ok: boolean
  exceeded?: Exceeded
  /** hold: per identity (in step order), what was added to the hold, for a later release; NO_AMOUNTS where nothing was. */
  added: Amounts[]
  /** Whether the instance had a live hold on the first identity before the step (commit: no hold, the commit was tested first). */
  hadHold: boolean
  /** Holds found expired (not committed or released within holdTime) and removed in this step. */
  expiredHolds: number
  /** The clock the step used (the Redis server's when it has one). */
  now: number
}

/** A usage counter of one identity, unit and window, as the ops commands show it. */
export interface UsageListing {
  id: string
  unit: RateUnit
  /** Seconds; 0 for the live holds of an identity that has no counter yet (nothing committed in any window). */
  window: number
  /** Counted in the window at the time asked. */
  used: number
  /** Live holds in this unit. */
  held: number
}

export interface OverrideEntry {
  /** An identity ("sasl:alice@example.org") or a pattern of the override file ("sender:@example.com", "client:192.0.2.0/24"). */
  key: string
  /** As written: `5000rcpt/1d, 100msg/1h` or `unlimited`. */
  limits: string
  /** Epoch seconds; Infinity without --ttl. */
  expires: number
  note: string
  setAt: number
}

export interface HitListing {
  id: string
  /** The limit's text. */
  limit: string
  first: number
  last: number
  /** Requests refused (or, learn-only, that would have been). */
  count: number
}

/** The request path's side of a store. */
export interface RateLimitStore {
  rateLimit(step: RateLimitStep): Promise<StepResult>
  /** Overrides set by `policyd-ts ratelimit set`, read at start and at each upkeep step (they take effect within ten seconds). */
  listOverrides(now: number): Promise<OverrideEntry[]>
  /** The time of the last commit of any process (0: none ever), for the missing END-OF-MESSAGE warning. */
  lastCommit(): Promise<number>
}

/** The ops commands' side (`policyd-ts ratelimit …`). */
export interface RateLimitAdmin {
  /** Usage and holds of identities `match` accepts, at `now`, sorted by id then unit then window. */
  listUsage(match: (id: string) => boolean, now: number, slots: number): Promise<UsageListing[]>
  /** Forget usage, holds and hits of identities `match` accepts; returns how many identities had any. */
  resetUsage(match: (id: string) => boolean): Promise<number>
  setOverride(entry: OverrideEntry): Promise<void>
  deleteOverride(key: string): Promise<boolean>
  /** Hits whose last refusal is at or after `since`, most recent first. */
  listHits(since: number): Promise<HitListing[]>
}
