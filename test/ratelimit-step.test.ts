// Unit tables of the rate-limit arithmetic (lib/ratelimit/window.ts) and the
// pure step decision (lib/ratelimit/step.ts), with explicit times.
import t from 'tap'
import { add, expiresAt, formatCounter, parseCounter, prune, slotIndex, slotStart, timeToFree, used, type SlotCounter } from '../lib/ratelimit/window'
import { decideStep, HIT_KEEP, usageKey, type HitRow, type HoldRow, type IdentityView, type StepWrites } from '../lib/ratelimit/step'
import { NO_AMOUNTS, type RateLimitStep, type RateUnit, type StepIdentity, type StepResult } from '../lib/ratelimit/types'
import { amounts, HOLD_TIME, ident, limit as L, mk, RCPT_FIRST, RCPT_MORE, SLOTS } from './helpers/ratelimit'

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

/** The largest double below x (x > 0). */
function justBelow(x: number): number {
  const v = new DataView(new ArrayBuffer(8))
  v.setFloat64(0, x)
  v.setBigUint64(0, v.getBigUint64(0) - 1n)
  return v.getFloat64(0)
}

t.test('window: a time just before a slot begins is in the slot before, where the division rounds up', async (t) => {
  // 86400 s in 7 slots: slot k begins at k * 86400 / 7, a fraction.
  const k = 198845
  const now = justBelow(slotStart(k, 86400, 7))
  t.ok(now < slotStart(k, 86400, 7))
  t.equal(Math.floor((now * 7) / 86400), k, 'the plain division rounds into slot k')
  t.equal(slotIndex(now, 86400, 7), k - 1, 'slot k has not begun')
  t.equal(slotIndex(slotStart(k, 86400, 7), 86400, 7), k)
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
  t.same(add(c, 108, 6, 0), c, 'not even the padding up to a later slot')
  t.same(add(EMPTY, 5, 6, 0), EMPTY, 'nor makes an empty counter one of a zero')
})

t.test('window: add leaves the counter it was given as it was', async (t) => {
  const c: SlotCounter = { first: 100, counts: [1, 0, 2] }
  t.same(add(c, 102, 6, 5), { first: 100, counts: [1, 0, 7] }, 'counted in the latest slot')
  t.same(add(c, 104, 6, 1), { first: 100, counts: [1, 0, 2, 0, 1] }, 'padded up to a later slot')
  t.same(c, { first: 100, counts: [1, 0, 2] }, 'the stored row is not changed behind the store\'s back')
  t.same(parseCounter(formatCounter({ first: 7, counts: [12, 0, 345, 6789] })), { first: 7, counts: [12, 0, 345, 6789] }, 'later slots of several digits read back')
})

t.test('window: a clock behind the counter counts in its latest slot, and slots ahead count', async (t) => {
  const ahead = counted([1031], 60, 6)
  t.equal(usedAt(ahead, 1025, 60, 6), 1, 'a slot after now (another clock a little ahead) counts')
  const behind = add(ahead, slotIndex(1025, 60, 6), 6, 2)
  t.same(behind, { first: 103, counts: [3] }, 'written into slot 103, not before it')
  t.same(prune({ first: 100, counts: [0, 0, 5] }, 100, 6), { first: 102, counts: [5] }, 'leading zeros dropped')
  t.same(prune({ first: 100, counts: [1, 2] }, 107, 6), EMPTY, 'all gone: empty')
  t.same(prune({ first: 100, counts: [1, 1, 1, 1, 1, 1, 1, 1] }, 100, 6), { first: 102, counts: [1, 1, 1, 1, 1, 1] }, 'a row of more than S slots (not one this code wrote) keeps its last S')
  t.equal(used({ first: 100, counts: [1, 1, 1, 1, 1, 1, 1, 1] }, 104, 6), 6)
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
  t.same(parseCounter('1234567890123456:1234567890123456,7'), { first: 1234567890123456, counts: [1234567890123456, 7] }, '16 digits')
  for (const long of ['12345678901234567:1', '1:12345678901234567', '1:2,12345678901234567']) t.same(parseCounter(long), EMPTY, `${long}: more than 16 digits reads as empty`)
})

// ---- the step decision ----

/** A tiny in-memory store: reads a view as a store does, applies the writes. */
class Memory {
  usage = new Map<string, Map<string, SlotCounter>>()
  holds = new Map<string, Map<string, HoldRow>>()
  hits = new Map<string, HitRow>()
  lastCommit = 0
  lastWrites: StepWrites | undefined

  step(s: RateLimitStep): StepResult {
    const identities: IdentityView[] = s.identities.map(({ id }) => {
      const holds = this.holds.get(id) ?? new Map<string, HoldRow>()
      let expired = 0
      for (const [instance, h] of holds) if (h.expires <= s.now) (holds.delete(instance), expired++)
      const held = { rcpt: 0, msg: 0, bytes: 0 }
      for (const h of holds.values()) (held.rcpt += h.rcpt, held.msg += h.msg, held.bytes += h.bytes)
      return { usage: new Map(this.usage.get(id) ?? []), holds: holds.size, held, mine: holds.get(s.instance) ?? null, expired }
    })
    const { result, writes } = decideStep(s, { identities, hit: (i, limit) => this.hits.get(`${s.identities[i].id} ${limit}`) ?? null })
    this.lastWrites = writes
    writes.identities.forEach((w, i) => {
      const id = s.identities[i].id
      for (const u of w.usage) this.usage.set(id, new Map(this.usage.get(id) ?? []).set(usageKey(u.unit, u.window), u.counter))
      const holds = this.holds.get(id) ?? new Map<string, HoldRow>()
      this.holds.set(id, holds)
      if (w.hold === null) holds.delete(s.instance)
      else if (w.hold) holds.set(s.instance, w.hold)
    })
    if (writes.hit) this.hits.set(`${s.identities[writes.hit.identity].id} ${writes.hit.limit}`, writes.hit.row)
    if (writes.lastCommit !== undefined) this.lastCommit = writes.lastCommit
    return result
  }

  hold(id: string, instance: string): HoldRow | undefined {
    return this.holds.get(id)?.get(instance)
  }

  usedAt(id: string, unit: RateUnit, window: number, now: number, slots = SLOTS): number {
    const c = this.usage.get(id)?.get(usageKey(unit, window))
    return c ? usedAt(c, now, window, slots) : 0
  }
}

/** A message through RCPT (one hold request per recipient) and END-OF-MESSAGE, as the caller drives it. */
function message(m: Memory, instance: string, now: number, id: string, limits: string[], rcpts: number, size = 0): StepResult[] {
  const out: StepResult[] = []
  for (let r = 0; r < rcpts; r++) out.push(m.step(mk('hold', instance, now, [ident(id, limits, RCPT_FIRST(size), RCPT_MORE)])))
  out.push(m.step(mk('commit', instance, now, [ident(id, limits, amounts(rcpts, 1, size))])))
  return out
}

t.test('step hold: a new message is tested on every limit; the first one exceeded is reported', async (t) => {
  const m = new Memory()
  const limits = ['3msg/1m', '5rcpt/1h']
  for (let i = 0; i < 3; i++) t.equal(message(m, `i${i}`, 1000 + i, 'sasl:a', limits, 1).every((r) => r.ok), true, `message ${i + 1} of 3`)
  const refused = m.step(mk('hold', 'i3', 1003, [ident('sasl:a', limits, RCPT_FIRST(), RCPT_MORE)]))
  t.same(refused, {
    ok: false,
    exceeded: { id: 'sasl:a', limit: L('3msg/1m'), used: 3, held: 0, asked: 1, retryAt: 1060, firstInWindow: true },
    added: [NO_AMOUNTS],
    hadHold: false,
    expiredHolds: 0,
    now: 1003,
  })
  t.equal(m.hold('sasl:a', 'i3'), undefined, 'no hold taken')
  t.same(m.lastWrites!.identities, [{ usage: [] }], 'nothing written but the hit')
  const later = m.step(mk('hold', 'i3', 1060, [ident('sasl:a', limits, RCPT_FIRST(), RCPT_MORE)]))
  t.equal(later.ok, true, 'fits at retryAt: the minute has slid by')
  t.same(later.added, [RCPT_FIRST()])
  // Two recipients more fill 5rcpt/1h: the second limit refuses the next.
  t.equal(m.step(mk('hold', 'i3', 1061, [ident('sasl:a', limits, RCPT_FIRST(), RCPT_MORE)])).ok, true)
  const r = m.step(mk('hold', 'i3', 1062, [ident('sasl:a', limits, RCPT_FIRST(), RCPT_MORE)]))
  t.same(r.exceeded && [r.exceeded.limit.text, r.exceeded.used, r.exceeded.held, r.exceeded.asked], ['5rcpt/1h', 3, 2, 1], 'used 3, held 2 (this instance\'s own hold), asked 1')
  t.equal(r.exceeded?.retryAt, slotStart(slotIndex(1000, 3600, SLOTS) + SLOTS, 3600, SLOTS), 'when the first recipient leaves the hour')
})

t.test('step hold: the count itself fits, one more does not', async (t) => {
  const m = new Memory()
  const limits = ['2rcpt/1h']
  t.equal(m.step(mk('hold', 'a', 100, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)])).ok, true)
  t.equal(m.step(mk('hold', 'a', 101, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)])).ok, true, '2 of 2')
  const third = m.step(mk('hold', 'a', 102, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)]))
  t.equal(third.ok, false, '3 of 2')
  t.same(m.hold('c:x', 'a'), { rcpt: 2, msg: 1, bytes: 0, expires: 101 + HOLD_TIME }, 'the hold as it was')
})

t.test('step hold: more vs first; a held message is tested only where it adds', async (t) => {
  const m = new Memory()
  const limits = ['1msg/1h', '3rcpt/1h']
  const first = m.step(mk('hold', 'a', 100, [ident('s:x', limits, RCPT_FIRST(500), RCPT_MORE)]))
  t.same(first.added, [RCPT_FIRST(500)], 'no hold yet: first')
  t.same(m.hold('s:x', 'a'), { rcpt: 1, msg: 1, bytes: 500, expires: 100 + HOLD_TIME })
  const second = m.step(mk('hold', 'a', 200, [ident('s:x', limits, RCPT_FIRST(500), RCPT_MORE)]))
  t.equal(second.ok, true, '1msg/1h is full with this very message: not tested, it adds no msg')
  t.same(second.added, [RCPT_MORE], 'held: more')
  t.same(m.hold('s:x', 'a'), { rcpt: 2, msg: 1, bytes: 500, expires: 200 + HOLD_TIME }, 'added up, expiry refreshed')
  const other = m.step(mk('hold', 'b', 200, [ident('s:x', limits, RCPT_FIRST(), RCPT_MORE)]))
  t.same(other.exceeded && [other.exceeded.limit.text, other.exceeded.held, other.exceeded.asked], ['1msg/1h', 1, 1], 'another instance is a new message: the first instance\'s hold counts')
  t.equal(m.step(mk('hold', 'a', 201, [ident('s:x', limits, RCPT_FIRST(), RCPT_MORE)])).ok, true, '3 of 3 recipients')
  const fourth = m.step(mk('hold', 'a', 202, [ident('s:x', limits, RCPT_FIRST(), RCPT_MORE)]))
  t.same(fourth.exceeded && [fourth.exceeded.limit.text, fourth.exceeded.held, fourth.exceeded.asked], ['3rcpt/1h', 3, 1], 'the rcpt limit still applies to a held message')
  // At DATA a held message adds nothing more: no test at all, the expiry is refreshed.
  const data = m.step(mk('hold', 'a', 300, [ident('s:x', limits, amounts(3, 1, 500), NO_AMOUNTS)]))
  t.same([data.ok, data.added], [true, [NO_AMOUNTS]])
  t.equal(m.hold('s:x', 'a')?.expires, 300 + HOLD_TIME)
})

t.test('step hold: a used-up quota refuses a new message that asks nothing of its unit', async (t) => {
  const m = new Memory()
  const limits = ['1KB/1h']
  message(m, 'a', 100, 'sasl:u', limits, 1, 1024)
  const noSize = m.step(mk('hold', 'b', 200, [ident('sasl:u', limits, RCPT_FIRST(0), RCPT_MORE)]))
  t.same(noSize.exceeded && [noSize.exceeded.used, noSize.exceeded.held, noSize.exceeded.asked], [1024, 0, 0], 'no SIZE=: asked 0, refused all the same')
  t.equal(noSize.exceeded?.retryAt, 3600, 'when the one slot that counted leaves (slot 0: 0-600, out at 3600)')
  const m2 = new Memory()
  message(m2, 'a', 100, 'sasl:u', limits, 1, 1000)
  t.equal(m2.step(mk('hold', 'b', 200, [ident('sasl:u', limits, RCPT_FIRST(0), RCPT_MORE)])).ok, true, 'below the count, asking 0 fits')
  t.equal(m2.step(mk('hold', 'c', 200, [ident('sasl:u', limits, RCPT_FIRST(24), RCPT_MORE)])).ok, true, 'exactly up to the count fits')
  const zero = m2.step(mk('hold', 'd', 200, [ident('sasl:u', ['0msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
  t.equal(zero.exceeded?.retryAt, Infinity, 'a zero limit never fits')
  const zeroBytes = m2.step(mk('hold', 'd', 200, [ident('sasl:u', ['0B/1h'], RCPT_FIRST(0), RCPT_MORE)]))
  t.equal(zeroBytes.exceeded?.retryAt, Infinity, 'not even asking 0 of it')
})

t.test('step hold: byte limits count SIZE=; more than the limit can ever allow retries never', async (t) => {
  const m = new Memory()
  const limits = ['10MB/1d']
  const big = m.step(mk('hold', 'a', 100, [ident('sasl:u', limits, RCPT_FIRST(11 * 1024 ** 2), RCPT_MORE)]))
  t.same(big.exceeded && [big.exceeded.asked, big.exceeded.retryAt], [11 * 1024 ** 2, Infinity])
  t.equal(m.step(mk('hold', 'a', 100, [ident('sasl:u', limits, RCPT_FIRST(6 * 1024 ** 2), RCPT_MORE)])).ok, true)
  const second = m.step(mk('hold', 'b', 100, [ident('sasl:u', limits, RCPT_FIRST(6 * 1024 ** 2), RCPT_MORE)]))
  t.same(second.exceeded && [second.exceeded.used, second.exceeded.held, second.exceeded.asked], [0, 6 * 1024 ** 2, 6 * 1024 ** 2], 'held bytes count')
  t.equal(second.exceeded?.retryAt, 100 + HOLD_TIME, 'nothing counted yet: when the hold is gone')
})

t.test('step hold: retryAt when holds and usage both stand in the way', async (t) => {
  const m = new Memory()
  const limits = ['10rcpt/1d']
  message(m, 'old', 0, 'c:x', limits, 6) // 6 counted in slot 0 (0-14400), out at 86400
  m.step(mk('hold', 'h', 50000, [ident('c:x', limits, amounts(4, 1), RCPT_MORE)])) // 4 held
  const r = m.step(mk('hold', 'n', 50000, [ident('c:x', limits, amounts(6, 1), RCPT_MORE)]))
  // need 6 + 4 + 6 - 10 = 6 <= 6 counted: the usage alone makes room.
  t.equal(r.exceeded?.retryAt, 86400)
  const r2 = m.step(mk('hold', 'n', 50000, [ident('c:x', limits, amounts(9, 1), RCPT_MORE)]))
  // need 9 > 6 counted; without the holds 6 + 9 - 10 = 5 must leave too: the later of the two.
  t.equal(r2.exceeded?.retryAt, 86400, 'usage after the holds have gone')
  const r3 = m.step(mk('hold', 'n', 50000, [ident('c:x', limits, amounts(3, 1), RCPT_MORE)]))
  t.equal(r3.exceeded?.retryAt, 86400, 'need 3 of the 6 counted')
  m.step(mk('hold', 'h2', 85000, [ident('c:x', limits, amounts(4, 1), RCPT_MORE)]))
  const r4 = m.step(mk('hold', 'n', 85000, [ident('c:x', limits, amounts(9, 1), RCPT_MORE)]))
  t.same(r4.exceeded && [r4.exceeded.held, r4.exceeded.retryAt], [4, 85000 + HOLD_TIME], 'the holds outlast the usage')
  const m2 = new Memory()
  m2.step(mk('hold', 'h', 100, [ident('c:x', limits, amounts(8, 1), RCPT_MORE)]))
  t.equal(m2.step(mk('hold', 'n', 200, [ident('c:x', limits, amounts(3, 1), RCPT_MORE)])).exceeded?.retryAt, 200 + HOLD_TIME, 'holds alone: when they have expired')
})

t.test('step hold: more than maxHolds held messages is exceeded; further requests of a held one are not', async (t) => {
  const m = new Memory()
  const limits = ['100msg/1h']
  for (const inst of ['a', 'b']) t.equal(m.step(mk('hold', inst, 100, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)], { maxHolds: 2 })).ok, true)
  const third = m.step(mk('hold', 'c', 101, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)], { maxHolds: 2 }))
  t.same(third.exceeded, { id: 'c:x', limit: { count: 2, unit: 'msg', window: HOLD_TIME, text: '2 held messages' }, used: 0, held: 2, asked: 1, retryAt: 101 + HOLD_TIME, firstInWindow: true })
  t.equal(m.step(mk('hold', 'a', 102, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)], { maxHolds: 2 })).ok, true, 'a held message may add recipients')
  t.equal(m.step(mk('commit', 'c', 103, [ident('c:x', limits, amounts(1, 1))], { maxHolds: 2 })).ok, true, 'a commit without a hold takes no hold: not bounded by maxHolds')
  const limitsFirst = m.step(mk('hold', 'd', 104, [ident('c:x', ['1msg/1h'], RCPT_FIRST(), RCPT_MORE)], { maxHolds: 2 }))
  t.equal(limitsFirst.exceeded?.limit.text, '1msg/1h', 'the real limits are reported before the bound on holds')
})

t.test('step: several identities; the first failing one in step order; all or nothing', async (t) => {
  const m = new Memory()
  const ids = (): StepIdentity[] => [ident('sasl:a', ['5msg/1h'], RCPT_FIRST(), RCPT_MORE), ident('client:192.0.2.1', ['2msg/1h'], RCPT_FIRST(), RCPT_MORE), ident('global:*', ['1msg/1h'], RCPT_FIRST(), RCPT_MORE)]
  const first = m.step(mk('hold', 'a', 100, ids()))
  t.same(first.added, [RCPT_FIRST(), RCPT_FIRST(), RCPT_FIRST()])
  const second = m.step(mk('hold', 'b', 100, ids()))
  t.same(second.exceeded && [second.exceeded.id, second.exceeded.limit.text], ['global:*', '1msg/1h'])
  t.same(second.added, [NO_AMOUNTS, NO_AMOUNTS, NO_AMOUNTS])
  t.equal(m.hold('sasl:a', 'b'), undefined, 'the identities that passed took no hold either')
  m.step(mk('commit', 'a', 100, ids().map((i) => ({ ...i, first: amounts(1, 1) }))))
  const both = m.step(mk('hold', 'c', 100, [ident('client:192.0.2.1', ['1msg/1h'], RCPT_FIRST(), RCPT_MORE), ident('global:*', ['1msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
  t.equal(both.exceeded?.id, 'client:192.0.2.1', 'both exceeded: the first in step order')
  t.same(mk('hold', 'x', 1, []).identities, [])
  t.same(m.step(mk('hold', 'x', 100, [])), { ok: true, added: [], hadHold: false, expiredHolds: 0, now: 100 }, 'no identity: nothing to refuse')
})

t.test('step: force (learn-only) takes the hold and counts, and still records the hit', async (t) => {
  const m = new Memory()
  const limits = ['1msg/1h']
  message(m, 'a', 100, 'c:x', limits, 1)
  const forced = m.step(mk('hold', 'b', 200, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)], { force: true }))
  t.same([forced.ok, forced.exceeded?.limit.text, forced.added], [true, '1msg/1h', [RCPT_FIRST()]])
  t.same(m.hits.get('c:x 1msg/1h'), { first: 200, last: 200, n: 1 })
  const commit = m.step(mk('commit', 'c', 300, [ident('c:x', limits, amounts(1, 1))], { force: true }))
  t.same([commit.ok, commit.exceeded?.held], [true, 1], 'a forced commit without hold counts over the limit')
  t.equal(m.usedAt('c:x', 'msg', 3600, 300), 2)
  t.equal(m.hits.get('c:x 1msg/1h')?.n, 2)
})

t.test('step commit: with a hold, counted without a test; the hold goes', async (t) => {
  const m = new Memory()
  const limits = ['2rcpt/1h', '1KB/1h']
  m.step(mk('hold', 'a', 100, [ident('sasl:u', limits, RCPT_FIRST(100), RCPT_MORE)]))
  m.step(mk('hold', 'b', 100, [ident('sasl:u', limits, RCPT_FIRST(100), RCPT_MORE)]))
  const r = m.step(mk('commit', 'a', 110, [ident('sasl:u', limits, amounts(5, 1, 4096))]))
  t.same(r, { ok: true, added: [NO_AMOUNTS], hadHold: true, expiredHolds: 0, now: 110 }, 'the final amounts are over the limits: counted all the same')
  t.equal(m.hold('sasl:u', 'a'), undefined, 'hold dropped')
  t.ok(m.hold('sasl:u', 'b'), 'another instance\'s hold stays')
  t.equal(m.usedAt('sasl:u', 'rcpt', 3600, 110), 1, 'recipients: at most what the hold has (recipient_count also has the exempt ones, never held)')
  t.equal(m.usedAt('sasl:u', 'bytes', 3600, 110), 4096)
  t.equal(m.usage.get('sasl:u')?.has(usageKey('msg', 3600)), false, 'no msg limit: no msg counter')
  t.equal(m.lastCommit, 110)
  t.same(m.lastWrites!.identities[0].usage.map((u) => [u.unit, u.window, u.expires]), [['rcpt', 3600, 3600 + 600], ['bytes', 3600, 3600 + 600]], 'rows expire at the end of their last slot plus the window')
})

t.test('step commit: fewer recipients than held (a milter refused some after RCPT) count as fewer', async (t) => {
  const m = new Memory()
  for (const _ of [1, 2, 3]) m.step(mk('hold', 'a', 100, [ident('sasl:u', ['9rcpt/1h'], RCPT_FIRST(), RCPT_MORE)]))
  m.step(mk('commit', 'a', 101, [ident('sasl:u', ['9rcpt/1h'], amounts(2, 1))]))
  t.equal(m.usedAt('sasl:u', 'rcpt', 3600, 101), 2)
})

t.test('step commit: without a hold, tested as a new message first', async (t) => {
  const m = new Memory()
  const limits = ['2msg/1h']
  const r = m.step(mk('commit', 'a', 100, [ident('c:x', limits, amounts(3, 1))]))
  t.same([r.ok, r.hadHold], [true, false])
  t.equal(m.usedAt('c:x', 'msg', 3600, 100), 1)
  m.step(mk('hold', 'b', 100, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)]))
  const refused = m.step(mk('commit', 'c', 120, [ident('c:x', limits, amounts(3, 1))]))
  t.same(refused.exceeded && [refused.ok, refused.exceeded.used, refused.exceeded.held, refused.exceeded.asked], [false, 1, 1, 1], 'the other instance\'s hold counts')
  t.equal(m.usedAt('c:x', 'msg', 3600, 120), 1, 'nothing counted')
  t.equal(m.lastCommit, 120, 'the commit step is recorded all the same (END-OF-MESSAGE requests do arrive)')
  // One identity held, the other not and full: nothing is written, the hold stays.
  const m2 = new Memory()
  m2.step(mk('hold', 'a', 100, [ident('sasl:u', ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
  m2.step(mk('commit', 'z', 100, [ident('global:*', ['1msg/1h'], amounts(1, 1))]))
  const mixed = m2.step(mk('commit', 'a', 101, [ident('sasl:u', ['9msg/1h'], amounts(1, 1)), ident('global:*', ['1msg/1h'], amounts(1, 1))]))
  t.same([mixed.ok, mixed.hadHold, mixed.exceeded?.id], [false, true, 'global:*'])
  t.ok(m2.hold('sasl:u', 'a'), 'the hold of the passing identity stays')
  t.equal(m2.usedAt('sasl:u', 'msg', 3600, 101), 0)
})

t.test('step release: take back what was added, clamped; whole; a missing hold is no error', async (t) => {
  const m = new Memory()
  const limits = ['9msg/1h']
  m.step(mk('hold', 'a', 100, [ident('c:x', limits, RCPT_FIRST(300), RCPT_MORE)]))
  m.step(mk('hold', 'a', 101, [ident('c:x', limits, RCPT_FIRST(300), RCPT_MORE)]))
  const back = m.step(mk('release', 'a', 102, [ident('c:x', limits, RCPT_MORE)]))
  t.same(back, { ok: true, added: [NO_AMOUNTS], hadHold: true, expiredHolds: 0, now: 102 })
  t.same(m.hold('c:x', 'a'), { rcpt: 1, msg: 1, bytes: 300, expires: 101 + HOLD_TIME }, 'one recipient taken back, expiry kept')
  m.step(mk('release', 'a', 103, [ident('c:x', limits, amounts(5, 0, 100))]))
  t.same(m.hold('c:x', 'a'), { rcpt: 0, msg: 1, bytes: 200, expires: 101 + HOLD_TIME }, 'clamped at 0')
  m.step(mk('release', 'a', 104, [ident('c:x', limits, amounts(0, 1, 200))]))
  t.equal(m.hold('c:x', 'a'), undefined, 'all zero: gone')
  m.step(mk('hold', 'b', 105, [ident('c:x', limits, RCPT_FIRST(300), RCPT_MORE)]))
  m.step(mk('release', 'b', 106, [ident('c:x', limits, NO_AMOUNTS)], { whole: true }))
  t.equal(m.hold('c:x', 'b'), undefined, 'whole: gone whatever first says')
  t.same(m.step(mk('release', 'nope', 107, [ident('c:x', limits, RCPT_MORE)])), { ok: true, added: [NO_AMOUNTS], hadHold: false, expiredHolds: 0, now: 107 })
  const m2 = new Memory()
  message(m2, 'f', 100, 'c:x', ['1msg/1h'], 1)
  t.equal(m2.step(mk('release', 'f', 101, [ident('c:x', ['1msg/1h'], RCPT_FIRST())])).ok, true, 'always ok, over a limit or not')
})

t.test('step: expired holds no longer count, are removed and counted; an expired own hold makes a new message', async (t) => {
  const m = new Memory()
  const limits = ['1msg/1h']
  m.step(mk('hold', 'a', 100, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)]))
  t.equal(m.step(mk('hold', 'b', 100 + HOLD_TIME - 1, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)])).ok, false, 'live one second before its end')
  const after = m.step(mk('hold', 'b', 100 + HOLD_TIME, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)]))
  t.same([after.ok, after.expiredHolds], [true, 1], 'at its end it is gone, and counted as expired')
  t.equal(m.hold('c:x', 'a'), undefined)
  const own = m.step(mk('hold', 'b', 100 + 3 * HOLD_TIME, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)]))
  t.same([own.ok, own.added, own.expiredHolds, own.hadHold], [true, [RCPT_FIRST()], 1, false], 'its own expired hold: first again')
  const commit = m.step(mk('commit', 'b', 100 + 5 * HOLD_TIME, [ident('c:x', limits, amounts(1, 1))]))
  t.same([commit.ok, commit.hadHold, commit.expiredHolds], [true, false, 1], 'a commit after the hold expired is tested as new')
})

t.test('step: hits count refusals; the first in a window is flagged for the log', async (t) => {
  const m = new Memory()
  const limits = ['1msg/10m']
  m.step(mk('hold', 'h', 0, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)])) // held until 3600
  const at = (now: number): StepResult => m.step(mk('hold', 'n', now, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)]))
  t.equal(at(10).exceeded?.firstInWindow, true, 'first refusal')
  t.equal(at(500).exceeded?.firstInWindow, false, 'repeat')
  t.equal(at(1050).exceeded?.firstInWindow, false, 'a window after the first but within a window of the last: quiet still')
  t.same(m.hits.get('c:x 1msg/10m'), { first: 10, last: 1050, n: 3 })
  t.equal(at(1700).exceeded?.firstInWindow, true, 'more than a window after the last: logged again')
  t.same(m.lastWrites!.hit, { identity: 0, limit: '1msg/10m', row: { first: 10, last: 1700, n: 4 }, expires: 1700 + HIT_KEEP })
  const long = new Memory()
  message(long, 'a', 0, 'c:x', ['1msg/30d'], 1)
  long.step(mk('hold', 'n', 10, [ident('c:x', ['1msg/30d'], RCPT_FIRST(), RCPT_MORE)]))
  t.equal(long.lastWrites!.hit?.expires, 10 + 30 * 86400, 'kept a window when the window is longer than a week')
  t.equal(long.step(mk('hold', 'n', 20, [ident('c:x', ['1msg/30d'], RCPT_FIRST(), RCPT_MORE)], { force: true })).exceeded?.firstInWindow, false)
  t.equal(long.hits.get('c:x 1msg/30d')?.n, 2, 'forced steps over the limit count as hits')
})

t.test('step: amounts that are not counts count as 0; a view of the wrong size, or an identity twice, is refused', async (t) => {
  const m = new Memory()
  const r = m.step(mk('hold', 'a', 100, [ident('c:x', ['1KB/1h'], { rcpt: -3, msg: NaN, bytes: 10.7 }, RCPT_MORE)]))
  t.same(r.added, [{ rcpt: 0, msg: 0, bytes: 10 }])
  m.step(mk('commit', 'a', 100, [ident('c:x', ['1KB/1h', '5rcpt/1h'], { rcpt: Infinity, msg: 1, bytes: -5 })]))
  t.equal(m.usedAt('c:x', 'rcpt', 3600, 100), 0)
  t.same(m.lastWrites!.identities[0], { usage: [], hold: null }, 'nothing counted, no counter written; the hold dropped')
  t.throws(() => decideStep(mk('hold', 'a', 1, [ident('c:x', ['1msg/1h'], RCPT_FIRST())]), { identities: [], hit: () => null }), /view of 0 identities for a step of 1/)
  t.throws(() => m.step(mk('hold', 'a', 1, [ident('c:x', ['1msg/1h'], RCPT_FIRST()), ident('c:x', ['2msg/1h'], RCPT_FIRST())])), /an identity named twice/)
})

t.test('step: counters of every limit, at the step\'s own slots', async (t) => {
  const m = new Memory()
  const limits = ['10msg/1m', '100msg/1h', '1000rcpt/1d']
  message(m, 'a', 1000, 'c:x', limits, 2)
  message(m, 'b', 1050, 'c:x', limits, 3)
  t.equal(m.usedAt('c:x', 'msg', 60, 1059), 2)
  t.equal(m.usedAt('c:x', 'msg', 60, 1060), 1, 'the minute forgets the first message (slot 1000-1010)')
  t.equal(m.usedAt('c:x', 'msg', 3600, 1060), 2)
  t.equal(m.usedAt('c:x', 'rcpt', 86400, 1060), 5)
  t.same(m.lastWrites!.identities[0].usage.map((u) => formatCounter(u.counter)), ['100:1,0,0,0,0,1', '1:2', '0:5'], 'one counter per limit: slots 100 and 105 of the minute, slot 1 of the hour, slot 0 of the day')
})

t.test('step: edges of hits, retryAt, duplicate counters and huge amounts', async (t) => {
  const m = new Memory()
  m.step(mk('hold', 'h', 0, [ident('c:x', ['1msg/10m'], RCPT_FIRST(), RCPT_MORE)]))
  const at = (now: number): StepResult => m.step(mk('hold', 'n', now, [ident('c:x', ['1msg/10m'], RCPT_FIRST(), RCPT_MORE)]))
  t.equal(at(10).exceeded?.firstInWindow, true)
  t.equal(at(610).exceeded?.firstInWindow, false, 'exactly a window after the last: still quiet')
  t.equal(at(1211).exceeded?.firstInWindow, true, 'more than a window after it: logged again')

  // 1 counted (slot 0 leaves at 86400), 3 held elsewhere, 9 asked of 10: without the holds it fits exactly.
  const r = new Memory()
  r.step(mk('commit', 'old', 0, [ident('c:x', ['10rcpt/1d'], amounts(1, 1))]))
  r.step(mk('hold', 'h', 100, [ident('c:x', ['10rcpt/1d'], amounts(3, 1), RCPT_MORE)]))
  const refused = r.step(mk('hold', 'n', 200, [ident('c:x', ['10rcpt/1d'], amounts(9, 1), RCPT_MORE)]))
  t.same(refused.exceeded && [refused.exceeded.used, refused.exceeded.held, refused.exceeded.asked, refused.exceeded.retryAt], [1, 3, 9, 200 + HOLD_TIME], 'the holds gone is enough: the usage need not leave')

  const d = new Memory()
  d.step(mk('commit', 'a', 100, [ident('c:x', ['1msg/1h', '5msg/1h'], amounts(1, 1))]))
  t.same(d.lastWrites!.identities[0].usage.map((u) => formatCounter(u.counter)), ['0:1'], 'two limits on one counter count once')
  t.equal(d.usedAt('c:x', 'msg', 3600, 100), 1)

  const big = new Memory()
  t.same(big.step(mk('hold', 'a', 100, [ident('c:x', ['1msg/1h'], { rcpt: 1, msg: 1, bytes: 2 ** 60 }, RCPT_MORE)])).added, [{ rcpt: 1, msg: 1, bytes: Number.MAX_SAFE_INTEGER }], 'cut to the largest exact integer')
})

t.test('step release: a hold is gone only when every unit is back at 0', async (t) => {
  const limits = ['9msg/1h']
  // What is left after the release: each unit alone above 0 keeps the hold.
  const cases: Array<[string, ReturnType<typeof amounts>, ReturnType<typeof amounts>]> = [
    ['recipients left', amounts(3, 1, 0), amounts(0, 1, 0)],
    ['the message left', amounts(2, 1, 0), amounts(2, 0, 0)],
    ['bytes left', amounts(1, 1, 500), amounts(1, 1, 0)],
  ]
  for (const [name, held, back] of cases) {
    const m = new Memory()
    m.step(mk('hold', 'a', 100, [ident('c:x', limits, held, RCPT_MORE)]))
    m.step(mk('release', 'a', 101, [ident('c:x', limits, back)]))
    t.same(m.hold('c:x', 'a'), { rcpt: held.rcpt - back.rcpt, msg: held.msg - back.msg, bytes: held.bytes - back.bytes, expires: 100 + HOLD_TIME }, name)
  }
})

t.test('step: a quota used up by holds alone refuses a new message that asks 0 of its unit', async (t) => {
  const m = new Memory()
  const limits = ['100B/1h']
  t.equal(m.step(mk('hold', 'a', 100, [ident('sasl:u', limits, RCPT_FIRST(100), RCPT_MORE)])).ok, true)
  const noSize = m.step(mk('hold', 'b', 101, [ident('sasl:u', limits, RCPT_FIRST(0), RCPT_MORE)]))
  t.same(noSize.exceeded && [noSize.exceeded.used, noSize.exceeded.held, noSize.exceeded.asked], [0, 100, 0], 'held 100 of 100: no room, not even for 0')
})

t.test('step commit without a hold: a used-up quota refuses it even when it asks 0 of the unit', async (t) => {
  const m = new Memory()
  const limits = ['1KB/1h', '10rcpt/1h']
  message(m, 'a', 100, 'sasl:u', limits, 1, 1024)
  const r = m.step(mk('commit', 'b', 200, [ident('sasl:u', limits, amounts(1, 1, 0))]))
  t.same([r.ok, r.exceeded?.limit.text, r.exceeded?.asked], [false, '1KB/1h', 0])
  t.equal(m.usedAt('sasl:u', 'rcpt', 3600, 200), 1, 'nothing more counted')
})

t.test('step writes: only a commit sets the last commit time; only a message with a hold deletes one', async (t) => {
  const m = new Memory()
  const limits = ['9msg/1h']
  m.step(mk('hold', 'a', 100, [ident('c:x', limits, RCPT_FIRST(), RCPT_MORE)]))
  t.equal(m.lastWrites!.lastCommit, undefined, 'a hold')
  m.step(mk('release', 'a', 101, [ident('c:x', limits, RCPT_MORE)]))
  t.equal(m.lastWrites!.lastCommit, undefined, 'a release')
  m.step(mk('commit', 'b', 102, [ident('c:x', limits, amounts(1, 1))]))
  t.equal(m.lastWrites!.lastCommit, 102, 'a commit')
  t.equal(m.lastWrites!.identities[0].hold, undefined, 'no hold of b: none to delete')
  m.step(mk('commit', 'a', 103, [ident('c:x', limits, amounts(1, 1))]))
  t.equal(m.lastWrites!.identities[0].hold, null, 'a\'s hold is deleted')
  t.equal(m.lastCommit, 103)
})
