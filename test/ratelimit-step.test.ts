// Unit tables of the rate-limit arithmetic (lib/ratelimit/window.ts) and the
// pure step decision (lib/ratelimit/step.ts), with explicit times.
import t from 'tap'
import { add, expiresAt, formatCounter, parseCounter, prune, slotIndex, slotStart, timeToFree, used, type SlotCounter } from '../lib/ratelimit/window'

const EMPTY: SlotCounter = { first: 0, counts: [] }

/** A counter with `amount` counted at each of `times`, as the store builds it. */
function counted(times: number[], window: number, slots: number, amount = 1): SlotCounter {
  return times.reduce((c, at) => add(c, slotIndex(at, window, slots), slots, amount), EMPTY)
}

function usedAt(c: SlotCounter, now: number, window: number, slots: number): number {
  return used(c, slotIndex(now, window, slots), slots)
}

t.test('window: slot boundaries', async (t) => {
  t.equal(slotIndex(59.999, 60, 6), 5)
  t.equal(slotIndex(60, 60, 6), 6)
  t.equal(slotIndex(0, 60, 6), 0)
  t.equal(slotStart(6, 60, 6), 60)
  t.equal(slotIndex(100, 100, 60), 60, 'a fractional slot length (100/60 s)')
  t.equal(slotIndex(99.99, 100, 60), 59)
  t.equal(slotStart(61, 100, 60), 6100 / 60)
  // floor(now * slots / window) alone rounds this start into the slot before it.
  const k = 358907884
  const start = slotStart(k, 90, 19)
  t.not(Math.floor((start * 19) / 90), k, 'the plain division is off here')
  t.equal(slotIndex(start, 90, 19), k, 'a slot has begun at its slotStart')
  t.equal(slotIndex(start - 1e-6, 90, 19), k - 1)
  // slotIndex is the inverse of slotStart over a stretch of real times.
  let off = 0
  for (const [window, slots] of [[90, 19], [3600, 37], [86400, 7], [100, 60]]) {
    const k0 = Math.floor((1.7e9 * slots) / window)
    for (let i = k0; i < k0 + 2000; i++) if (slotIndex(slotStart(i, window, slots), window, slots) !== i) off++
  }
  t.equal(off, 0, 'every slot begins at its slotStart')
})

t.test('window: an event leaves between W - W/S and W after it', async (t) => {
  // W 60 s in 6 slots of 10 s; 1000 begins slot 100.
  const atStart = counted([1000], 60, 6)
  t.equal(usedAt(atStart, 1000, 60, 6), 1)
  t.equal(usedAt(atStart, 1059.999, 60, 6), 1, 'counted until W after')
  t.equal(usedAt(atStart, 1060, 60, 6), 0, 'and gone at W after')
  const atEnd = counted([1009.5], 60, 6)
  t.equal(usedAt(atEnd, 1049.999, 60, 6), 1, 'still counted at W - W/S after')
  t.equal(usedAt(atEnd, 1060, 60, 6), 0, 'gone 50.5 s after: between W - W/S and W')
  // A fractional slot: W 100 s in 60 slots; 1000.5 is in slot 600 [1000, 1001.67).
  const frac = counted([1000.5], 100, 60)
  t.equal(usedAt(frac, 1099.999, 100, 60), 1)
  t.equal(usedAt(frac, 1100, 100, 60), 0)
})

t.test('window: used sums the last S slots; old slots are dropped on write; at most S kept', async (t) => {
  const c = counted([1000, 1005, 1012, 1031, 1055], 60, 6)
  t.same(c, { first: 100, counts: [2, 1, 0, 1, 0, 1] })
  t.equal(usedAt(c, 1055, 60, 6), 5)
  t.equal(usedAt(c, 1060, 60, 6), 3, 'slot 100 (2 events) left at 1060')
  t.equal(usedAt(c, 1070, 60, 6), 2)
  t.equal(usedAt(c, 1115, 60, 6), 0)
  const later = add(c, slotIndex(1075, 60, 6), 6, 4)
  t.same(later, { first: 103, counts: [1, 0, 1, 0, 4] }, 'slots 100-102 dropped (the empty 102 with them), 104 padded')
  t.same(add(c, slotIndex(5000, 60, 6), 6, 3), { first: 500, counts: [3] }, 'after a long pause: a fresh counter')
  let busy = EMPTY
  for (let s = 0; s < 30; s++) busy = add(busy, 200 + s, 6, s + 1)
  t.equal(busy.counts.length, 6, 'never more than S slots')
  t.equal(used(busy, 229, 6), 25 + 26 + 27 + 28 + 29 + 30)
  t.same(add(c, 105, 6, 0), c, 'adding nothing changes nothing')
})

t.test('window: a clock behind the counter counts in its latest slot, and slots ahead count', async (t) => {
  const ahead = counted([1031], 60, 6)
  t.equal(usedAt(ahead, 1025, 60, 6), 1, 'a slot after now (another clock a little ahead) counts')
  const behind = add(ahead, slotIndex(1025, 60, 6), 6, 2)
  t.same(behind, { first: 103, counts: [3] }, 'written into slot 103, not before it')
  t.same(prune({ first: 100, counts: [0, 0, 5] }, 100, 6), { first: 102, counts: [5] }, 'leading zeros dropped')
  t.same(prune({ first: 100, counts: [1, 2] }, 107, 6), EMPTY, 'all gone: empty')
})

t.test('window: timeToFree walks the counted slots oldest first', async (t) => {
  const c = counted([1000, 1005, 1012, 1031, 1055], 60, 6)
  const cur = slotIndex(1056, 60, 6)
  t.equal(timeToFree(c, cur, 60, 6, 1), 1060, 'slot 100 leaves at 1060')
  t.equal(timeToFree(c, cur, 60, 6, 2), 1060, 'with both its events')
  t.equal(timeToFree(c, cur, 60, 6, 3), 1070)
  t.equal(timeToFree(c, cur, 60, 6, 4), 1090, 'the empty slot 102 frees nothing')
  t.equal(timeToFree(c, cur, 60, 6, 5), 1110)
  t.equal(timeToFree(c, cur, 60, 6, 6), undefined, 'the window holds 5')
  t.equal(timeToFree(c, slotIndex(1065, 60, 6), 60, 6, 1), 1070, 'what has left already does not count')
  t.equal(timeToFree(counted([1000.5], 100, 60), slotIndex(1001, 100, 60), 100, 60, 1), slotStart(660, 100, 60))
})

t.test('window: expiry and the compact text', async (t) => {
  const c = counted([1000, 1031], 60, 6)
  t.equal(expiresAt(c, 60, 6), 1100, 'end of the last slot (1040) plus the window')
  t.equal(formatCounter(c), '100:1,0,0,1')
  t.same(parseCounter(formatCounter(c)), c)
  t.equal(formatCounter(EMPTY), '')
  t.same(parseCounter(''), EMPTY)
  for (const junk of ['x', '100:', ':1', '100:1,,2', '100:1,a', '1e5:1', '100:-1']) t.same(parseCounter(junk), EMPTY, `${JSON.stringify(junk)} reads as empty`)
  t.same(parseCounter('-3:7'), { first: -3, counts: [7] }, 'slots before 1970 (tests with small times)')
})
