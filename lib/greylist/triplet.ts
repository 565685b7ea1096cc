// The greylisting state machine of one (client, sender, recipient) triplet
// and its client network, as a pure function of the stored rows and the
// time. The store runs it inside one transaction.

import type { ClientRow, GreylistUpdate, GreylistView, TripletRow } from '../store/types'

export interface GreylistParams {
  delay: number
  maxAge: number
  retryWindow: number
  /** Passes after which a client network skips greylisting; 0 disables. */
  autoWhitelist: number
  maxEntries: number
}

export type GreylistOutcome =
  /** First attempt of the triplet (or first after its record expired). */
  | { kind: 'new'; secondsLeft: number }
  /** Retried before the delay was over. */
  | { kind: 'early'; secondsLeft: number }
  /** First retry after the delay: let through, the message may get a header. */
  | { kind: 'first-pass'; delayed: number; clientWhitelisted: boolean }
  /** A triplet that passed before. */
  | { kind: 'known' }
  /** The client network is auto-whitelisted. */
  | { kind: 'auto-whitelisted'; passes: number }
  /** The triplet table is full: a new triplet passes unrecorded. */
  | { kind: 'table-full'; entries: number }
  /** An entry the admin set in the store (`policyd-ts greylist whitelist`) names the client, sender or recipient. */
  | { kind: 'store-whitelisted'; entry: string }

/** Passes of one client are counted at most once per this many seconds, as postgrey does. */
export const AWL_COUNT_INTERVAL = 3600

/**
 * A passed triplet or an auto-whitelisted client is written back (last
 * seen, count) at most once per this many seconds: most requests of a
 * busy server are such repeats, and without a write they take no lock and
 * no commit. Their expiry (greylist_max_age, days) moves in these steps.
 */
export const TOUCH_INTERVAL = 600

function isExpired(t: TripletRow, now: number, p: GreylistParams): boolean {
  return t.passed > 0 ? now - t.last > p.maxAge : now - t.first > p.retryWindow
}

function tripletExpiry(t: TripletRow, p: GreylistParams): number {
  return t.passed > 0 ? t.last + p.maxAge : t.first + p.retryWindow
}

export function evaluateTriplet(view: GreylistView, now: number, p: GreylistParams): GreylistUpdate<GreylistOutcome> {
  // Nothing is recorded for whitelisted mail, as for the whitelist files.
  if (view.whitelisted && now < view.whitelisted.expires) return { result: { kind: 'store-whitelisted', entry: view.whitelisted.key } }
  const client = view.client && now - view.client.last <= p.maxAge ? view.client : null
  if (p.autoWhitelist > 0 && client && client.count >= p.autoWhitelist) {
    const update: GreylistUpdate<GreylistOutcome> = { result: { kind: 'auto-whitelisted', passes: client.count } }
    if (now - client.last >= TOUCH_INTERVAL) update.client = { row: { ...client, last: now }, expires: now + p.maxAge }
    return update
  }

  const triplet = view.triplet && !isExpired(view.triplet, now, p) ? view.triplet : null
  if (!triplet) {
    if (!view.triplet && view.tripletCount >= p.maxEntries) {
      return { result: { kind: 'table-full', entries: view.tripletCount } }
    }
    const row: TripletRow = { first: now, last: now, passed: 0, count: 1 }
    return { triplet: { row, expires: tripletExpiry(row, p) }, result: { kind: 'new', secondsLeft: p.delay } }
  }

  if (triplet.passed > 0) {
    const update: GreylistUpdate<GreylistOutcome> = { result: { kind: 'known' } }
    if (now - triplet.last >= TOUCH_INTERVAL) {
      const row: TripletRow = { ...triplet, last: now, count: triplet.count + 1 }
      update.triplet = { row, expires: tripletExpiry(row, p) }
    }
    if (client && now - client.last >= TOUCH_INTERVAL) update.client = { row: { ...client, last: now }, expires: now + p.maxAge }
    return update
  }

  const elapsed = now - triplet.first
  if (elapsed < p.delay) {
    const row: TripletRow = { ...triplet, last: now, count: triplet.count + 1 }
    return { triplet: { row, expires: tripletExpiry(row, p) }, result: { kind: 'early', secondsLeft: p.delay - elapsed } }
  }

  const row: TripletRow = { ...triplet, last: now, passed: now, count: triplet.count + 1 }
  const update: GreylistUpdate<GreylistOutcome> = {
    triplet: { row, expires: tripletExpiry(row, p) },
    result: { kind: 'first-pass', delayed: elapsed, clientWhitelisted: false },
  }
  if (p.autoWhitelist > 0) {
    const counts = !client || now - client.lastCounted >= AWL_COUNT_INTERVAL
    const next: ClientRow = client
      ? { count: client.count + (counts ? 1 : 0), last: now, lastCounted: counts ? now : client.lastCounted }
      : { count: 1, last: now, lastCounted: now }
    update.client = { row: next, expires: now + p.maxAge }
    update.result = { kind: 'first-pass', delayed: elapsed, clientWhitelisted: counts && next.count === p.autoWhitelist }
  }
  return update
}
