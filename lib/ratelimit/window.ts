// The slotted window (research §2): a limit's period W is kept as S
// counters of W/S seconds each. What is counted in slot s leaves the window
// when slot s + S begins, between W - W/S and W after it happened; the
// window at time `now` is the S most recent slots. State is O(S) per
// counter whatever the traffic, and adding to it is a plain addition, so a
// hold that becomes a count needs no bookkeeping of single events.
//
// Pure arithmetic on plain numbers, written so that another store (Redis,
// in Lua) can repeat it to the last bit: every time comes from slotStart(),
// and slotIndex() is defined as its inverse, so a slot never reads as
// begun before the time retryAt() names for it.

/** Slots of one counter: counts[i] is what was counted in slot first + i. Empty: first is 0 and counts []. */
export interface SlotCounter {
  first: number
  counts: number[]
}

/** When slot `index` begins: index * window / slots (seconds; fractional when the window does not divide). */
export function slotStart(index: number, window: number, slots: number): number {
  return (index * window) / slots
}

/** The slot `now` falls in: the largest index whose slotStart() is at or before `now` (floor(now / (window / slots)), rounding included). */
export function slotIndex(now: number, window: number, slots: number): number {
  const i = Math.floor((now * slots) / window)
  // The division may round across a boundary; slotStart() is the reference.
  if (slotStart(i + 1, window, slots) <= now) return i + 1
  if (slotStart(i, window, slots) > now) return i - 1
  return i
}

function lastIndex(c: SlotCounter): number {
  return c.first + c.counts.length - 1
}

/**
 * Drop the slots that have left the window of slot `cur` (index <= cur - slots),
 * and zeros at the start. Slots after `cur` stay and count: another process's
 * clock, a little ahead, wrote them; counting them early errs on the safe side.
 */
export function prune(c: SlotCounter, cur: number, slots: number): SlotCounter {
  const top = Math.max(cur, lastIndex(c))
  let drop = Math.max(0, top - slots + 1 - c.first)
  while (drop < c.counts.length && c.counts[drop] === 0) drop++
  if (drop >= c.counts.length) return { first: 0, counts: [] }
  return drop === 0 ? c : { first: c.first + drop, counts: c.counts.slice(drop) }
}

/** Counted in the window of slot `cur`. */
export function used(c: SlotCounter, cur: number, slots: number): number {
  return prune(c, cur, slots).counts.reduce((sum, n) => sum + n, 0)
}

/**
 * Count `amount` in slot `cur`, or in the counter's latest slot when that is
 * later (a clock a little behind another's): the array only ever grows at
 * its end, and never beyond `slots` entries.
 */
export function add(c: SlotCounter, cur: number, slots: number, amount: number): SlotCounter {
  if (amount === 0) return c
  const kept = prune(c, cur, slots)
  if (kept.counts.length === 0) return { first: cur, counts: [amount] }
  const counts = kept.counts.slice()
  while (kept.first + counts.length - 1 < cur) counts.push(0)
  counts[counts.length - 1] += amount
  return { first: kept.first, counts }
}

/**
 * When, with nothing else counted meanwhile, `need` (> 0) units will have
 * left the window of slot `cur`: walking the counted slots oldest first,
 * slot s leaves at slotStart(s + slots). Undefined when the window holds
 * less than `need`.
 */
export function timeToFree(c: SlotCounter, cur: number, window: number, slots: number, need: number): number | undefined {
  const kept = prune(c, cur, slots)
  let freed = 0
  for (let i = 0; i < kept.counts.length; i++) {
    freed += kept.counts[i]
    if (freed >= need) return slotStart(kept.first + i + slots, window, slots)
  }
  return undefined
}

/** When the row may be purged: the end of its last slot plus the window (nothing of it counts after that). */
export function expiresAt(c: SlotCounter, window: number, slots: number): number {
  return slotStart(lastIndex(c) + 1 + slots, window, slots)
}

/** Compact text: "first:c1,c2,…" ("1800000:3,0,1"), "" for an empty counter. */
export function formatCounter(c: SlotCounter): string {
  return c.counts.length === 0 ? '' : `${c.first}:${c.counts.join(',')}`
}

const COUNTER = /^(-?\d{1,16}):(\d{1,16}(?:,\d{1,16})*)$/

/** The inverse of formatCounter(); a row that is not one reads as empty (it is rewritten at the next count). */
export function parseCounter(text: string): SlotCounter {
  const m = COUNTER.exec(text)
  if (!m) return { first: 0, counts: [] }
  return { first: Number(m[1]), counts: m[2].split(',').map(Number) }
}
