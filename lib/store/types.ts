// The storage seam. A store keeps two kinds of rows, each behind an opaque
// key, and offers one atomic read-modify-write over a triplet row and its
// client row. SQLite implements it now; a shared store (Redis) can later
// implement the same contract with a server-side script or WATCH/MULTI.

export interface TripletRow {
  /** First attempt of the current greylisting round (epoch seconds). */
  first: number
  /** Last time the triplet was seen. */
  last: number
  /** Time of the first accepted retry, 0 while still greylisted. */
  passed: number
  /** Attempts seen until it passed, then one per TOUCH_INTERVAL in which it was seen again. */
  count: number
}

export interface ClientRow {
  /** Greylisting rounds passed, counted at most once an hour. */
  count: number
  last: number
  lastCounted: number
}

/** A row to write with the time after which it may be purged, or null to delete it, or undefined to keep it. */
export interface RowWrite<R> {
  row: R
  expires: number
}

export interface GreylistUpdate<T> {
  triplet?: RowWrite<TripletRow> | null
  client?: RowWrite<ClientRow> | null
  result: T
}

export interface GreylistView {
  triplet: TripletRow | null
  client: ClientRow | null
  /**
   * Rows in the triplet table, for the max-entries bound. A store may count
   * them approximately, as long as the count comes back to the real one by
   * itself (SQLite: an exact recount every RECOUNT_EVERY seconds).
   */
  tripletCount: number
  /** A whitelist entry set by the admin (`policyd-ts greylist whitelist`) that names this request, expired or not. */
  whitelisted?: { key: string; expires: number }
  /**
   * The store's own clock (epoch seconds), when it has one: a shared store
   * gives its server's time, so that hosts with skewed clocks cannot shorten
   * a delay; decide() uses it instead of the caller's. Absent: the caller's
   * clock rules (SQLite, or a store made with a test clock).
   */
  now?: number
}

export type StoreFailure = 'busy' | 'corrupt' | 'full' | 'readonly' | 'unavailable' | 'error'

/**
 * Marks a StoreError of any copy of this module: the start-up bundle holds
 * one, and the Redis store, loaded by path from the modules (task HC),
 * throws those of another; `instanceof StoreError` must hold for both.
 */
const STORE_ERROR = Symbol.for('policyd-ts.StoreError')

/** Every store error reaching the caller is one of these, so the failure policy has one place to look. */
export class StoreError extends Error {
  constructor(
    readonly failure: StoreFailure,
    message: string,
  ) {
    super(message)
    ;(this as unknown as Record<symbol, boolean>)[STORE_ERROR] = true
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    // A subclass (SQLite's LockHeld) keeps the plain prototype test.
    if (this !== StoreError) return Function.prototype[Symbol.hasInstance].call(this, value)
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[STORE_ERROR] === true
  }
}

export interface GreylistStore {
  /**
   * Read the triplet and client rows, let `decide` compute what to write,
   * and write it, all as one atomic step against concurrent processes.
   * `decide` is pure and may be called twice: a store may first try it on
   * rows read without a lock, and take the lock only when it wants to write.
   */
  updateGreylist<T>(tripletKey: string, clientKey: string, decide: (view: GreylistView) => GreylistUpdate<T>, whitelistKeys?: () => readonly string[]): Promise<T>
  /** Delete at most `limit` rows whose expiry time is before `now`; returns how many went. */
  purgeExpired(now: number, limit: number): Promise<number>
  counts(): Promise<{ triplets: number; clients: number }>
  close(): void
}

/** A triplet row as the ops commands show it. */
export interface TripletListing {
  key: string
  first: number
  last: number
  passed: number
  count: number
  expires: number
}

/** An entry of `policyd-ts greylist whitelist`: key "kind<TAB>value". */
export interface WhitelistEntry {
  key: string
  /** Epoch seconds; Infinity for an entry without --ttl. */
  expires: number
  note: string
  setAt: number
}

export interface StoreHealth {
  ok: boolean
  /** One line each: what was checked and what was found. */
  lines: string[]
}

/**
 * What the ops commands do to a store (root or the store's owner, never on
 * the request path). Every backend implements it; the conformance table
 * (test/store-conformance.test.ts) runs against each.
 */
export interface StoreAdmin {
  /** Triplet rows whose key `match` accepts, at most `limit`, in key order. */
  listTriplets(match: (key: string) => boolean, limit: number): Promise<TripletListing[]>
  /** Delete the triplet rows whose key `match` accepts; returns how many went. */
  deleteTriplets(match: (key: string) => boolean): Promise<number>
  setWhitelist(entry: WhitelistEntry): Promise<void>
  /** Returns whether there was such an entry. */
  deleteWhitelist(key: string): Promise<boolean>
  listWhitelist(): Promise<WhitelistEntry[]>
  /** Add counter deltas of one host (`name` is a Prometheus series, labels included). */
  addStats(host: string, deltas: ReadonlyMap<string, number>): Promise<void>
  stats(): Promise<Array<{ host: string; name: string; value: number }>>
  /** Delete every expired row (triplets, clients, whitelist entries); returns how many went. */
  purgeAll(now: number): Promise<number>
  check(): Promise<StoreHealth>
}
