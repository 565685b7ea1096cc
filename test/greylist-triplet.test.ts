import t from 'tap'
import { evaluateTriplet, AWL_COUNT_INTERVAL, TOUCH_INTERVAL, type GreylistOutcome, type GreylistParams } from '../lib/greylist/triplet'
import type { ClientRow, GreylistView, TripletRow } from '../lib/store/types'

const p: GreylistParams = { delay: 300, maxAge: 35 * 86400, retryWindow: 2 * 86400, autoWhitelist: 5, maxEntries: 1000 }

/** A tiny in-memory stand-in for one triplet and one client row, applying writes as the store would. */
function life(params = p) {
  let triplet: TripletRow | null = null
  let client: ClientRow | null = null
  let tripletCount = 0
  return {
    at(now: number): GreylistOutcome {
      const view: GreylistView = { triplet, client, tripletCount }
      const u = evaluateTriplet(view, now, params)
      if (u.triplet === null) triplet = null
      else if (u.triplet) {
        if (!triplet) tripletCount++
        triplet = u.triplet.row
      }
      if (u.client === null) client = null
      else if (u.client) client = u.client.row
      return u.result
    },
    get triplet() {
      return triplet
    },
    get client() {
      return client
    },
    setCount(n: number) {
      tripletCount = n
    },
    newTriplet() {
      triplet = null
    },
  }
}

t.test('new, too early, pass, known', async (t) => {
  const l = life()
  t.same(l.at(1000), { kind: 'new', secondsLeft: 300 })
  t.same(l.at(1100), { kind: 'early', secondsLeft: 200 })
  t.same(l.at(1299), { kind: 'early', secondsLeft: 1 })
  t.same(l.at(1300), { kind: 'first-pass', delayed: 300, clientWhitelisted: false })
  t.same(l.at(1400), { kind: 'known' })
  t.equal(l.triplet!.count, 4, 'a known triplet seen again within TOUCH_INTERVAL is not written')
  t.equal(l.triplet!.last, 1300)
  t.same(l.at(1300 + TOUCH_INTERVAL), { kind: 'known' })
  t.equal(l.triplet!.count, 5, 'after TOUCH_INTERVAL it is')
  t.equal(l.triplet!.last, 1300 + TOUCH_INTERVAL)
  t.equal(l.triplet!.passed, 1300)
})

t.test('a first retry after the retry window starts over', async (t) => {
  const l = life()
  l.at(0)
  t.same(l.at(p.retryWindow), { kind: 'first-pass', delayed: p.retryWindow, clientWhitelisted: false }, 'at the window edge')
  const m = life()
  m.at(0)
  t.same(m.at(p.retryWindow + 1), { kind: 'new', secondsLeft: 300 }, 'one second past it')
  t.equal(m.triplet!.first, p.retryWindow + 1)
})

t.test('a passed triplet unseen for max age is forgotten; seeing it slides the age', async (t) => {
  const l = life({ ...p, autoWhitelist: 0 })
  l.at(0)
  l.at(300)
  t.same(l.at(300 + p.maxAge), { kind: 'known' }, 'exactly max age after the last sighting')
  t.same(l.at(300 + 2 * p.maxAge), { kind: 'known' }, 'sliding')
  t.same(l.at(300 + 3 * p.maxAge + 1), { kind: 'new', secondsLeft: 300 })
})

t.test('auto-whitelist after N passes, counted at most once an hour, expires after max age', async (t) => {
  const l = life()
  let now = 0
  for (let pass = 1; pass <= 5; pass++) {
    l.newTriplet()
    t.equal(l.at(now).kind, 'new', `round ${pass}: new triplet`)
    const r = l.at(now + 300)
    t.same(r, { kind: 'first-pass', delayed: 300, clientWhitelisted: pass === 5 }, `round ${pass}: pass`)
    t.equal(l.client!.count, pass)
    // A second pass within the hour does not count.
    l.newTriplet()
    l.at(now + 400)
    l.at(now + 700)
    t.equal(l.client!.count, pass, 'second pass in the same hour not counted')
    now += AWL_COUNT_INTERVAL
  }
  l.newTriplet()
  t.same(l.at(now), { kind: 'auto-whitelisted', passes: 5 })
  t.equal(l.triplet, null, 'no triplet recorded for a whitelisted client')
  t.same(l.at(now + p.maxAge), { kind: 'auto-whitelisted', passes: 5 }, 'still whitelisted at max age, sliding')
  t.same(l.at(now + 2 * p.maxAge + 1), { kind: 'new', secondsLeft: 300 }, 'unseen for longer than max age: greylisted again')
})

t.test('a known triplet seen again refreshes its client row, so the passes counted do not expire while the client sends', async (t) => {
  const l = life()
  l.at(0)
  l.at(300)
  t.same(l.client, { count: 1, last: 300, lastCounted: 300 })
  const again = 300 + TOUCH_INTERVAL
  const u = evaluateTriplet({ triplet: l.triplet, client: l.client, tripletCount: 1 }, again, p)
  t.same(u.client, { row: { count: 1, last: again, lastCounted: 300 }, expires: again + p.maxAge }, 'after TOUCH_INTERVAL the client row is written with the triplet')
  t.equal(evaluateTriplet({ triplet: l.triplet, client: l.client, tripletCount: 1 }, again - 1, p).client, undefined, 'not before')
  // The same known triplet every 20 days for 100 days (max age 35): the client's pass still counts.
  let now = 300
  for (let day = 20; day <= 100; day += 20) {
    now = 300 + day * 86400
    t.same(l.at(now), { kind: 'known' }, `day ${day}: known`)
  }
  t.equal(l.client!.last, now, 'the client row was kept fresh')
  l.newTriplet()
  l.at(now + 1)
  t.same(l.at(now + 301), { kind: 'first-pass', delayed: 300, clientWhitelisted: false })
  t.equal(l.client!.count, 2, 'a new triplet of that client adds to its earlier pass instead of starting over')
})

t.test('auto-whitelist 0 disables client rows', async (t) => {
  const l = life({ ...p, autoWhitelist: 0 })
  l.at(0)
  l.at(300)
  t.equal(l.client, null)
})

t.test('a full table lets new triplets pass unrecorded, known ones still work', async (t) => {
  const l = life({ ...p, maxEntries: 10 })
  l.at(0)
  l.setCount(10)
  t.same(l.at(300), { kind: 'first-pass', delayed: 300, clientWhitelisted: false }, 'a recorded triplet goes on')
  l.newTriplet()
  t.same(l.at(400), { kind: 'table-full', entries: 10 })
  t.equal(l.triplet, null)
})

t.test('expiry times written with the rows', async (t) => {
  const u = evaluateTriplet({ triplet: null, client: null, tripletCount: 0 }, 1000, p)
  t.equal(u.triplet!.expires, 1000 + p.retryWindow, 'unpassed: first + retry window')
  const v = evaluateTriplet({ triplet: u.triplet!.row, client: null, tripletCount: 1 }, 1300, p)
  t.equal(v.triplet!.expires, 1300 + p.maxAge, 'passed: last + max age')
  t.equal(v.client!.expires, 1300 + p.maxAge)
})

t.test('an admin whitelist entry from the store: passes and records nothing while it lasts; at its end, greylisting as usual', async (t) => {
  const empty: GreylistView = { triplet: null, client: null, tripletCount: 0 }
  const entry = { key: 'sender\ta@example.net', expires: 1000 }
  t.same(evaluateTriplet({ ...empty, whitelisted: entry }, 999, p), { result: { kind: 'store-whitelisted', entry: 'sender\ta@example.net' } }, 'no write')
  t.same(evaluateTriplet({ ...empty, whitelisted: entry }, 1000, p).result, { kind: 'new', secondsLeft: 300 }, 'the entry ends at its expiry time')
  const full: GreylistView = { triplet: null, client: null, tripletCount: p.maxEntries, whitelisted: entry }
  t.equal(evaluateTriplet(full, 10, p).result.kind, 'store-whitelisted', 'before the table-full check')
})

t.test("a known triplet seen again refreshes its client network's row (once per TOUCH_INTERVAL), so the auto-whitelist count does not expire while the client sends", async (t) => {
  const passed: TripletRow = { first: 0, last: 300, passed: 300, count: 2 }
  const client: ClientRow = { count: 2, last: 1000, lastCounted: 300 }
  const at = (now: number) => evaluateTriplet({ triplet: passed, client, tripletCount: 1 }, now, p)
  t.equal(at(1000 + TOUCH_INTERVAL - 1).client, undefined, 'within TOUCH_INTERVAL: not written')
  const u = at(1000 + TOUCH_INTERVAL)
  t.same(u.result, { kind: 'known' })
  t.same(u.client, { row: { count: 2, last: 1000 + TOUCH_INTERVAL, lastCounted: 300 }, expires: 1000 + TOUCH_INTERVAL + p.maxAge })
})

t.test('an auto-whitelisted client is written back once per TOUCH_INTERVAL, its expiry sliding', async (t) => {
  const client: ClientRow = { count: 5, last: 1000, lastCounted: 900 }
  const at = (now: number) => evaluateTriplet({ triplet: null, client, tripletCount: 0 }, now, p)
  const early = at(1000 + TOUCH_INTERVAL - 1)
  t.same(early.result, { kind: 'auto-whitelisted', passes: 5 })
  t.equal(early.client, undefined)
  t.same(at(1000 + TOUCH_INTERVAL).client, { row: { count: 5, last: 1000 + TOUCH_INTERVAL, lastCounted: 900 }, expires: 1000 + TOUCH_INTERVAL + p.maxAge })
})

t.test('auto-whitelist 0: a client row left from before does not whitelist, and no pass claims to', async (t) => {
  const off = { ...p, autoWhitelist: 0 }
  const client: ClientRow = { count: 9, last: 1000, lastCounted: 1000 }
  t.same(evaluateTriplet({ triplet: null, client, tripletCount: 0 }, 1100, off).result, { kind: 'new', secondsLeft: 300 })
  const waiting: TripletRow = { first: 1000, last: 1000, passed: 0, count: 1 }
  const u = evaluateTriplet({ triplet: waiting, client: null, tripletCount: 1 }, 1300, off)
  t.same(u.result, { kind: 'first-pass', delayed: 300, clientWhitelisted: false })
  t.equal(u.client, undefined)
})
