// What `policyd-ts ratelimit show/list/top` list, from any store's rows:
// the counters of the asked slot count that count something at `now` or
// whose identity has live holds, then the live holds of identities with no
// such counter (window 0), sorted by id, unit, window. Shared by the SQLite
// and Redis stores so that both list alike.

import type { Amounts, RateUnit, UsageListing } from './types'
import { parseCounter, slotIndex, used } from './window'

export interface CounterRow {
  id: string
  unit: RateUnit
  window: number
  /** formatCounter()'s text. */
  counts: string
}

export function usageListing(counters: Iterable<CounterRow>, held: ReadonlyMap<string, Amounts>, now: number, slots: number): UsageListing[] {
  const out: UsageListing[] = []
  const listed = new Set<string>()
  for (const { id, unit, window, counts } of counters) {
    const usedNow = used(parseCounter(counts), slotIndex(now, window, slots), slots)
    const heldNow = held.get(id)?.[unit] ?? 0
    if (usedNow === 0 && heldNow === 0) continue
    out.push({ id, unit, window, used: usedNow, held: heldNow })
    listed.add(id)
  }
  for (const [id, sums] of held) {
    if (listed.has(id)) continue
    for (const unit of ['rcpt', 'msg', 'bytes'] as const) if (sums[unit] > 0) out.push({ id, unit, window: 0, used: 0, held: sums[unit] })
  }
  const cmp = (a: string | number, b: string | number): number => (a < b ? -1 : a > b ? 1 : 0)
  return out.sort((a, b) => cmp(a.id, b.id) || cmp(a.unit, b.unit) || cmp(a.window, b.window))
}
