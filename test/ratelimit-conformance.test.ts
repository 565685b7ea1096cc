// One table of rate-limit store behaviour (RateLimitStore, RateLimitAdmin
// and the rate-limit part of purgeAll), run against every backend in
// BACKENDS: SQLite and Redis (skipped where redis-server is missing); each
// must pass the table unchanged. Each case gets a fresh store and passes every time
// explicitly (a backend must take each step's `now` as given: Redis with
// its test clock). After the table, what only SQLite does.
import t from 'tap'
import Database from 'better-sqlite3'
import { SqliteStore } from '../lib/store/sqlite'
import { StoreError, type GreylistStore, type StoreAdmin } from '../lib/store/types'
import { NO_AMOUNTS, type RateLimitAdmin, type RateLimitStore, type StepResult, type UsageListing } from '../lib/ratelimit/types'
import { amounts, ident, limit, mk, RCPT_FIRST, RCPT_MORE } from './helpers/ratelimit'
import { slotIndex, slotStart } from '../lib/ratelimit/window'
import { sqliteStorePath, STORE_BACKENDS } from './helpers/store-backends'

export type RateLimitBackendStore = RateLimitStore & RateLimitAdmin & Pick<StoreAdmin, 'purgeAll'> & Pick<GreylistStore, 'close'>

export interface Backend {
  name: string
  /** Whatever the backend needs for the whole table (a server): a maker of fresh stores, or null when it cannot run here (the test says why). */
  open(t: tap.Test): Promise<((dir: string) => RateLimitBackendStore) | null>
}

const sqlitePath = sqliteStorePath

/** Every backend: each must be a rate-limit store too. */
export const BACKENDS: Backend[] = STORE_BACKENDS

type Case = [string, (t: tap.Test, s: RateLimitBackendStore) => Promise<void>]

const all = (): boolean => true
const usage = (id: string, unit: UsageListing['unit'], window: number, used: number, held: number): UsageListing => ({ id, unit, window, used, held })

export const CASES: Case[] = [
  ['a hold counts against other messages at once; a commit turns it into usage; listUsage shows both', async (t, s) => {
    const lim = ['2msg/1h', '10rcpt/1h']
    const hold = (inst: string, now: number): Promise<StepResult> => s.rateLimit(mk('hold', inst, now, [ident('sasl:a', lim, RCPT_FIRST(), RCPT_MORE)]))
    t.same(await hold('m1', 1000), { ok: true, added: [RCPT_FIRST()], hadHold: false, expiredHolds: 0, now: 1000 })
    t.same(await hold('m1', 1001), { ok: true, added: [RCPT_MORE], hadHold: true, expiredHolds: 0, now: 1001 })
    t.same(await s.listUsage(all, 1001, 6), [usage('sasl:a', 'msg', 0, 0, 1), usage('sasl:a', 'rcpt', 0, 0, 2)], 'held only: listed with window 0')
    t.equal((await hold('m2', 1002)).ok, true)
    t.same(await hold('m3', 1003), {
      ok: false,
      exceeded: { id: 'sasl:a', limit: limit('2msg/1h'), used: 0, held: 2, asked: 1, retryAt: 1003 + 3600, firstInWindow: true },
      added: [NO_AMOUNTS],
      hadHold: false,
      expiredHolds: 0,
      now: 1003,
    })
    t.same(await s.rateLimit(mk('commit', 'm1', 1010, [ident('sasl:a', lim, amounts(2, 1))])), { ok: true, added: [NO_AMOUNTS], hadHold: true, expiredHolds: 0, now: 1010 })
    t.same(await s.listUsage(all, 1010, 6), [usage('sasl:a', 'msg', 3600, 1, 1), usage('sasl:a', 'rcpt', 3600, 2, 1)])
    const again = await hold('m3', 1020)
    t.same(again.exceeded && [again.exceeded.used, again.exceeded.held, again.exceeded.retryAt, again.exceeded.firstInWindow], [1, 1, 4200, false], 'm1\'s slot (600-1200) leaves at 4200; a repeat in the window')
  }],
  ['a held message adds recipients without a msg or byte test; a used-up byte quota refuses a new message without SIZE=', async (t, s) => {
    const lim = ['1KB/1h', '5rcpt/1h']
    t.equal((await s.rateLimit(mk('hold', 'i4', 50, [ident('sender:b@x', lim, RCPT_FIRST(0), RCPT_MORE)]))).ok, true)
    t.equal((await s.rateLimit(mk('commit', 'ix', 100, [ident('sender:b@x', lim, amounts(1, 1, 1024))]))).ok, true, '1024 of 1024 bytes')
    t.same(await s.rateLimit(mk('hold', 'i4', 200, [ident('sender:b@x', lim, RCPT_FIRST(0), RCPT_MORE)])), { ok: true, added: [RCPT_MORE], hadHold: true, expiredHolds: 0, now: 200 })
    const refused = await s.rateLimit(mk('hold', 'i3', 200, [ident('sender:b@x', lim, RCPT_FIRST(0), RCPT_MORE)]))
    t.same(refused.exceeded, { id: 'sender:b@x', limit: limit('1KB/1h'), used: 1024, held: 0, asked: 0, retryAt: 3600, firstInWindow: true })
  }],
  ['release: a part (clamped at 0), or whole; a missing hold is no error', async (t, s) => {
    const id = 'client:192.0.2.1'
    const lim = ['5rcpt/1h']
    await s.rateLimit(mk('hold', 'a', 100, [ident(id, lim, amounts(3, 1))]))
    await s.rateLimit(mk('hold', 'b', 100, [ident(id, lim, amounts(2, 1))]))
    const c = await s.rateLimit(mk('hold', 'c', 101, [ident(id, lim, amounts(1, 1))]))
    t.same(c.exceeded && [c.exceeded.used, c.exceeded.held, c.exceeded.asked, c.exceeded.retryAt], [0, 5, 1, 3701])
    t.same(await s.rateLimit(mk('release', 'a', 102, [ident(id, lim, amounts(1, 0))])), { ok: true, added: [NO_AMOUNTS], hadHold: true, expiredHolds: 0, now: 102 })
    t.same(await s.listUsage(all, 102, 6), [usage(id, 'msg', 0, 0, 2), usage(id, 'rcpt', 0, 0, 4)])
    t.equal((await s.rateLimit(mk('hold', 'c', 103, [ident(id, lim, amounts(1, 1))]))).ok, true, 'room again')
    await s.rateLimit(mk('release', 'b', 104, [ident(id, lim, NO_AMOUNTS)], { whole: true }))
    t.same(await s.listUsage(all, 104, 6), [usage(id, 'msg', 0, 0, 2), usage(id, 'rcpt', 0, 0, 3)], 'b gone whole')
    await s.rateLimit(mk('release', 'a', 105, [ident(id, lim, amounts(9, 9, 9))]))
    t.same(await s.listUsage(all, 105, 6), [usage(id, 'msg', 0, 0, 1), usage(id, 'rcpt', 0, 0, 1)], 'a clamped to nothing: gone')
    t.same(await s.rateLimit(mk('release', 'zzz', 106, [ident(id, lim, RCPT_MORE)])), { ok: true, added: [NO_AMOUNTS], hadHold: false, expiredHolds: 0, now: 106 })
  }],
  ['more live holds than maxHolds on one identity is exceeded', async (t, s) => {
    const step = (inst: string, now: number): Promise<StepResult> => s.rateLimit(mk('hold', inst, now, [ident('client:x', ['100msg/1h'], RCPT_FIRST(), RCPT_MORE)], { maxHolds: 2 }))
    await step('a', 100)
    await step('b', 100)
    t.same((await step('c', 101)).exceeded, { id: 'client:x', limit: { count: 2, unit: 'msg', window: 3600, text: '2 held messages' }, used: 0, held: 2, asked: 1, retryAt: 3701, firstInWindow: true })
    t.equal((await step('a', 102)).ok, true, 'a held message goes on')
    t.same(await s.listHits(0), [{ id: 'client:x', limit: '2 held messages', first: 101, last: 101, count: 1 }])
  }],
  ['commit without a hold: tested first; refused, it writes nothing but the hit; the last commit time is kept', async (t, s) => {
    const lim = ['1msg/1h']
    t.equal(await s.lastCommit(), 0, 'none yet')
    t.same(await s.rateLimit(mk('commit', 'x', 100, [ident('sasl:c', lim, amounts(4, 1))])), { ok: true, added: [NO_AMOUNTS], hadHold: false, expiredHolds: 0, now: 100 })
    t.equal(await s.lastCommit(), 100)
    const refused = await s.rateLimit(mk('commit', 'y', 200, [ident('sasl:c', lim, amounts(4, 1))]))
    t.same([refused.ok, refused.exceeded], [false, { id: 'sasl:c', limit: limit('1msg/1h'), used: 1, held: 0, asked: 1, retryAt: 3600, firstInWindow: true }])
    t.equal(await s.lastCommit(), 200, 'a refused commit step is recorded too')
    t.same(await s.listUsage(all, 200, 6), [usage('sasl:c', 'msg', 3600, 1, 0)], 'nothing counted')
    t.same(await s.listHits(0), [{ id: 'sasl:c', limit: '1msg/1h', first: 200, last: 200, count: 1 }])
  }],
  ['several identities: the first failing in step order; all or nothing', async (t, s) => {
    const ids = (first = RCPT_FIRST()) => [ident('sasl:a', ['5msg/1h'], first, RCPT_MORE), ident('client:192.0.2.1', ['2msg/1h'], first, RCPT_MORE), ident('global:*', ['1msg/1h'], first, RCPT_MORE)]
    t.same((await s.rateLimit(mk('hold', 'a', 100, ids()))).added, [RCPT_FIRST(), RCPT_FIRST(), RCPT_FIRST()])
    const second = await s.rateLimit(mk('hold', 'b', 100, ids()))
    t.same([second.ok, second.exceeded?.id, second.added], [false, 'global:*', [NO_AMOUNTS, NO_AMOUNTS, NO_AMOUNTS]])
    t.same((await s.listUsage(all, 100, 6)).filter((u) => u.unit === 'msg').map((u) => [u.id, u.held]), [['client:192.0.2.1', 1], ['global:*', 1], ['sasl:a', 1]], 'no hold taken by b anywhere')
    // The instance holds on the first identity only; the global one is full: nothing is counted, the hold stays.
    await s.rateLimit(mk('release', 'a', 101, [ident('global:*', ['1msg/1h'], NO_AMOUNTS)], { whole: true }))
    await s.rateLimit(mk('commit', 'z', 101, [ident('global:*', ['1msg/1h'], amounts(1, 1))]))
    const mixed = await s.rateLimit(mk('commit', 'a', 102, [ident('sasl:a', ['5msg/1h'], amounts(1, 1)), ident('global:*', ['1msg/1h'], amounts(1, 1))]))
    t.same([mixed.ok, mixed.hadHold, mixed.exceeded?.id], [false, true, 'global:*'])
    t.same((await s.listUsage((id) => id === 'sasl:a', 102, 6)).map((u) => [u.unit, u.window, u.used, u.held]), [['msg', 0, 0, 1], ['rcpt', 0, 0, 1]], 'sasl:a: still held, nothing counted')
  }],
  ['force (learn-only) holds and counts over the limits and records the hits', async (t, s) => {
    const lim = ['1msg/1h']
    await s.rateLimit(mk('commit', 'a', 100, [ident('c:x', lim, amounts(1, 1))]))
    const held = await s.rateLimit(mk('hold', 'b', 200, [ident('c:x', lim, RCPT_FIRST(), RCPT_MORE)], { force: true }))
    t.same(held, { ok: true, exceeded: { id: 'c:x', limit: limit('1msg/1h'), used: 1, held: 0, asked: 1, retryAt: 3600, firstInWindow: true }, added: [RCPT_FIRST()], hadHold: false, expiredHolds: 0, now: 200 })
    t.same(await s.rateLimit(mk('commit', 'b', 300, [ident('c:x', lim, amounts(1, 1))], { force: true })), { ok: true, added: [NO_AMOUNTS], hadHold: true, expiredHolds: 0, now: 300 }, 'held: no test')
    const over = await s.rateLimit(mk('commit', 'c', 400, [ident('c:x', lim, amounts(1, 1))], { force: true }))
    t.same([over.ok, over.exceeded?.used, over.exceeded?.firstInWindow], [true, 2, false])
    t.same(await s.listUsage(all, 400, 6), [usage('c:x', 'msg', 3600, 3, 0)])
    t.same(await s.listHits(0), [{ id: 'c:x', limit: '1msg/1h', first: 200, last: 400, count: 2 }])
  }],
  ['expired holds no longer count; a step removes those of its identities and counts them', async (t, s) => {
    const lim = ['1msg/1h']
    const hold = (inst: string, now: number): Promise<StepResult> => s.rateLimit(mk('hold', inst, now, [ident('c:x', lim, RCPT_FIRST(), RCPT_MORE)]))
    await hold('a', 100)
    await s.rateLimit(mk('hold', 'other', 100, [ident('c:y', lim, RCPT_FIRST(), RCPT_MORE)]))
    t.equal((await hold('b', 3699)).ok, false, 'live until 3700')
    t.same(await hold('b', 3700), { ok: true, added: [RCPT_FIRST()], hadHold: false, expiredHolds: 1, now: 3700 })
    t.same(await s.listUsage(all, 3700, 6), [usage('c:x', 'msg', 0, 0, 1), usage('c:x', 'rcpt', 0, 0, 1)], 'b alone; c:y\'s hold expired too')
    const late = await s.rateLimit(mk('commit', 'a', 3800, [ident('c:x', lim, amounts(1, 1))]))
    t.same([late.ok, late.hadHold, late.exceeded?.held], [false, false, 1], 'a commit after its hold expired is tested as new')
    t.equal((await s.rateLimit(mk('hold', 'n', 3800, [ident('c:y', lim, RCPT_FIRST(), RCPT_MORE)]))).expiredHolds, 1, 'c:y\'s expired hold is removed when a step touches it')
  }],
  ['usage slides out of the window slot by slot', async (t, s) => {
    const lim = ['2msg/1m']
    const commit = (inst: string, now: number): Promise<StepResult> => s.rateLimit(mk('commit', inst, now, [ident('client:x', lim, amounts(1, 1))]))
    await commit('a', 1000)
    await commit('b', 1005)
    t.equal((await commit('c', 1012)).exceeded?.retryAt, 1060)
    t.same(await s.listUsage(all, 1059.9, 6), [usage('client:x', 'msg', 60, 2, 0)])
    t.equal((await s.rateLimit(mk('hold', 'd', 1059.9, [ident('client:x', lim, RCPT_FIRST(), RCPT_MORE)]))).ok, false)
    t.same(await s.listUsage(all, 1060, 6), [], 'slot 1000-1010 has left at 1060')
    t.equal((await s.rateLimit(mk('hold', 'd', 1060, [ident('client:x', lim, RCPT_FIRST(), RCPT_MORE)]))).ok, true)
  }],
  ['a step whose clock is behind the last write counts in the latest slot', async (t, s) => {
    const lim = ['5msg/1m']
    await s.rateLimit(mk('commit', 'a', 1031, [ident('client:x', lim, amounts(1, 1))]))
    await s.rateLimit(mk('commit', 'b', 1025, [ident('client:x', lim, amounts(1, 1))]))
    t.same(await s.listUsage(all, 1025, 6), [usage('client:x', 'msg', 60, 2, 0)], 'the later slot counts at the earlier time')
    t.same(await s.listUsage(all, 1089, 6), [usage('client:x', 'msg', 60, 2, 0)], 'both in slot 1030-1040')
    t.same(await s.listUsage(all, 1090, 6), [])
  }],
  ['counters belong to their slot count: another ratelimit_slots starts afresh', async (t, s) => {
    await s.rateLimit(mk('commit', 'a', 100, [ident('c:x', ['1msg/1h'], amounts(1, 1))]))
    t.same(await s.listUsage(all, 101, 12), [])
    t.equal((await s.rateLimit(mk('commit', 'b', 101, [ident('c:x', ['1msg/1h'], amounts(1, 1))], { slots: 12 }))).ok, true)
    t.same(await s.listUsage(all, 101, 6), [usage('c:x', 'msg', 3600, 1, 0)])
    t.same(await s.listUsage(all, 101, 12), [usage('c:x', 'msg', 3600, 1, 0)])
  }],
  ['hits: since a time, most recent first, counted', async (t, s) => {
    for (const id of ['a:1', 'b:2']) await s.rateLimit(mk('commit', 'x', 0, [ident(id, ['1msg/1h'], amounts(1, 1))]))
    const refuse = (id: string, now: number): Promise<StepResult> => s.rateLimit(mk('hold', 'y', now, [ident(id, ['1msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
    await refuse('a:1', 10)
    await refuse('b:2', 15)
    await refuse('a:1', 20)
    t.same(await s.listHits(0), [{ id: 'a:1', limit: '1msg/1h', first: 10, last: 20, count: 2 }, { id: 'b:2', limit: '1msg/1h', first: 15, last: 15, count: 1 }])
    t.same((await s.listHits(15)).map((h) => h.id), ['a:1', 'b:2'], 'at or after')
    t.same((await s.listHits(16)).map((h) => h.id), ['a:1'])
    t.same(await s.listHits(21), [])
  }],
  ['hits: most recent first, then by identity, then by limit (bytes of UTF-8)', async (t, s) => {
    const refuse = (id: string, lim: string, now: number): Promise<StepResult> => s.rateLimit(mk('hold', 'y', now, [ident(id, [lim], RCPT_FIRST(), RCPT_MORE)]))
    for (const [id, lim, now] of [['a:1', '0msg/1m', 10], ['b:2', '0msg/1d', 20], ['b:2', '0msg/1h', 30], ['a:1', '0msg/1h', 30], ['a:1', '0msg/1d', 30], ['c:3', '0msg/1h', 40], ['A:1', '0msg/1h', 30], ['é:1', '0msg/1h', 30]] as const) {
      t.equal((await refuse(id, lim, now)).ok, false, `${id} ${lim} at ${now}: refused`)
    }
    t.same((await s.listHits(0)).map((h) => [h.last, h.id, h.limit]), [
      [40, 'c:3', '0msg/1h'],
      [30, 'A:1', '0msg/1h'],
      [30, 'a:1', '0msg/1d'],
      [30, 'a:1', '0msg/1h'],
      [30, 'b:2', '0msg/1h'],
      [30, 'é:1', '0msg/1h'],
      [20, 'b:2', '0msg/1d'],
      [10, 'a:1', '0msg/1m'],
    ])
  }],
  ['held bytes are listed: beside a byte counter, and alone (window 0)', async (t, s) => {
    await s.rateLimit(mk('commit', 'a', 100, [ident('c:b', ['1GB/1d'], amounts(1, 1, 500))]))
    t.equal((await s.rateLimit(mk('hold', 'b', 100, [ident('c:b', ['1GB/1d'], RCPT_FIRST(2000), RCPT_MORE)]))).ok, true)
    t.equal((await s.rateLimit(mk('hold', 'c', 100, [ident('c:h', ['9msg/1h'], RCPT_FIRST(300), RCPT_MORE)]))).ok, true)
    t.equal((await s.rateLimit(mk('hold', 'd', 100, [ident('c:h', ['9msg/1h'], RCPT_FIRST(40), RCPT_MORE)]))).ok, true)
    t.same(await s.listUsage(all, 100, 6), [usage('c:b', 'bytes', 86400, 500, 2000), usage('c:h', 'bytes', 0, 0, 340), usage('c:h', 'msg', 0, 0, 2), usage('c:h', 'rcpt', 0, 0, 2)])
  }],
  ['overrides: set, replaced, listed while live, deleted', async (t, s) => {
    await s.setOverride({ key: 'sasl:alice@example.org', limits: '5000rcpt/1d', expires: Infinity, note: 'vip', setAt: 1 })
    await s.setOverride({ key: 'client:192.0.2.0/24', limits: 'unlimited', expires: 500, note: '', setAt: 2 })
    t.same(await s.listOverrides(100), [
      { key: 'client:192.0.2.0/24', limits: 'unlimited', expires: 500, note: '', setAt: 2 },
      { key: 'sasl:alice@example.org', limits: '5000rcpt/1d', expires: Infinity, note: 'vip', setAt: 1 },
    ])
    t.same((await s.listOverrides(500)).map((o) => o.key), ['sasl:alice@example.org'], 'an override ends at its expiry')
    await s.setOverride({ key: 'sasl:alice@example.org', limits: '100msg/1h', expires: 9000, note: 'cut', setAt: 3 })
    t.same(await s.listOverrides(600), [{ key: 'sasl:alice@example.org', limits: '100msg/1h', expires: 9000, note: 'cut', setAt: 3 }], 'set again: replaced')
    t.equal(await s.deleteOverride('sasl:alice@example.org'), true)
    t.equal(await s.deleteOverride('sasl:alice@example.org'), false)
    t.same(await s.listOverrides(0), [{ key: 'client:192.0.2.0/24', limits: 'unlimited', expires: 500, note: '', setAt: 2 }])
  }],
  ['resetUsage: usage, holds and hits of the matching identities; how many had any', async (t, s) => {
    await s.rateLimit(mk('commit', 'x', 100, [ident('sasl:a', ['1msg/1h'], amounts(1, 1))]))
    await s.rateLimit(mk('hold', 'x', 100, [ident('sasl:b', ['1msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
    await s.rateLimit(mk('commit', 'x', 100, [ident('client:c', ['1msg/1h'], amounts(1, 1))]))
    await s.rateLimit(mk('commit', 'y', 100, [ident('client:c', ['1msg/1h'], amounts(1, 1))]))
    await s.rateLimit(mk('commit', 'x', 100, [ident('sasl:d', ['1msg/1h'], amounts(1, 1))]))
    await s.rateLimit(mk('commit', 'y', 100, [ident('sasl:d', ['1msg/1h'], amounts(1, 1))]))
    t.equal(await s.resetUsage((id) => id.startsWith('sasl:')), 3)
    t.same((await s.listUsage(all, 100, 6)).map((u) => u.id), ['client:c'])
    t.same((await s.listHits(0)).map((h) => h.id), ['client:c'])
    t.equal((await s.rateLimit(mk('commit', 'z', 100, [ident('sasl:d', ['1msg/1h'], amounts(1, 1))]))).ok, true, 'a reset identity starts afresh')
    t.equal(await s.resetUsage((id) => id === 'nobody'), 0)
    t.equal(await s.resetUsage(all), 2)
    t.same([await s.listUsage(all, 100, 6), await s.listHits(0)], [[], []])
  }],
  ['purgeAll: every expired counter, hold, hit row and override, nothing live', async (t, s) => {
    const D = 8 * 86400
    await s.rateLimit(mk('commit', 'a', 0, [ident('u:old', ['1msg/1m'], amounts(1, 1))])) // expires 70
    await s.rateLimit(mk('commit', 'a', 0, [ident('x:old', ['1msg/1h'], amounts(1, 1))])) // expires 4200
    await s.rateLimit(mk('hold', 'b', 10, [ident('x:old', ['1msg/1h'], RCPT_FIRST(), RCPT_MORE)])) // a hit, kept a week
    await s.rateLimit(mk('hold', 'a', 0, [ident('h:old', ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)])) // expires 3600
    await s.setOverride({ key: 'o:old', limits: 'unlimited', expires: 500, note: '', setAt: 0 })
    await s.rateLimit(mk('commit', 'a', D - 10, [ident('u:live', ['1msg/1h'], amounts(1, 1))]))
    await s.rateLimit(mk('hold', 'a', D - 10, [ident('h:live', ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
    await s.rateLimit(mk('commit', 'a', D - 10, [ident('x:live', ['1msg/1h'], amounts(1, 1))]))
    await s.rateLimit(mk('hold', 'b', D - 5, [ident('x:live', ['1msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
    await s.setOverride({ key: 'o:live', limits: 'unlimited', expires: Infinity, note: '', setAt: 0 })
    await s.rateLimit(mk('hold', 'a', D - 3600, [ident('h:edge', ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)])) // expires at D: not live at D
    const old = (id: string): boolean => id.endsWith(':old')
    t.same((await s.listUsage(old, 5, 6)).map((u) => [u.id, u.unit]), [['h:old', 'msg'], ['h:old', 'rcpt'], ['u:old', 'msg'], ['x:old', 'msg']], 'before: the old rows read at an old time')
    t.equal(await s.purgeAll(D), 6, 'two counters, two holds, a hit row, an override')
    t.same(await s.listUsage(old, 5, 6), [], 'after: gone')
    t.same(await s.listUsage((id) => id === 'h:edge', D - 1, 6), [], 'a hold that ends at the purge time is gone too')
    t.same((await s.listHits(0)).map((h) => h.id), ['x:live'])
    t.same((await s.listOverrides(0)).map((o) => o.key), ['o:live'])
    t.same((await s.listUsage(all, D, 6)).map((u) => [u.id, u.unit, u.window]), [['h:live', 'msg', 0], ['h:live', 'rcpt', 0], ['u:live', 'msg', 3600], ['x:live', 'msg', 3600]])
    t.equal(await s.purgeAll(D), 0, 'nothing left to purge')
  }],
  ['slot boundaries where the slots do not divide the window: a step at a slot\'s exact start counts in it, one just before in the slot before', async (t, s) => {
    const lim = ['1msg/90s']
    const k = slotIndex(1_800_000_000, 90, 19) + 1
    const start = slotStart(k, 90, 19)
    const before = start - 1e-6
    t.ok(slotIndex(before, 90, 19) === k - 1 && before < start, 'the reference: a time just before the slot')
    const commit = (id: string, now: number): Promise<StepResult> => s.rateLimit(mk('commit', 'a', now, [ident(id, lim, amounts(1, 1))], { slots: 19 }))
    await commit('c:at', start)
    await commit('c:before', before)
    const at = (id: string, now: number): Promise<number[]> => s.listUsage((x) => x === id, now, 19).then((u) => u.map((x) => x.used))
    t.same([await at('c:at', slotStart(k + 19, 90, 19) - 1e-6), await at('c:at', slotStart(k + 19, 90, 19))], [[1], []], 'slot k leaves when slot k + 19 begins')
    t.same([await at('c:before', slotStart(k + 18, 90, 19) - 1e-6), await at('c:before', slotStart(k + 18, 90, 19))], [[1], []], 'slot k - 1 leaves a slot earlier')
    const refused = await commit('c:at', start + 1)
    t.equal(refused.exceeded?.retryAt, slotStart(k + 19, 90, 19), 'retryAt is that slot start, to the bit')
    t.equal((await commit('c:at', refused.exceeded!.retryAt)).ok, true, 'and at retryAt the message fits')
  }],
  ['a limit of 0 refuses every message and it can never retry; hits are first in their window again once a window has passed without one', async (t, s) => {
    const refuse = (now: number): Promise<StepResult> => s.rateLimit(mk('hold', 'm', now, [ident('c:z', ['0msg/1m'], RCPT_FIRST(), RCPT_MORE)]))
    const first = await refuse(100)
    t.same(first.exceeded && [first.exceeded.retryAt, first.exceeded.firstInWindow], [Infinity, true])
    t.equal((await refuse(160)).exceeded?.firstInWindow, false, 'the last hit exactly a window ago: a repeat')
    t.equal((await refuse(220)).exceeded?.firstInWindow, false)
    t.equal((await refuse(280.5)).exceeded?.firstInWindow, true, 'more than a window since the last')
    t.same(await s.listHits(0), [{ id: 'c:z', limit: '0msg/1m', first: 100, last: 280.5, count: 4 }])
  }],
  ['commit of a held message counts at most the held recipients, fewer when fewer', async (t, s) => {
    const lim = ['99rcpt/1h']
    const hold = (inst: string): Promise<StepResult> => s.rateLimit(mk('hold', inst, 100, [ident('sasl:m', lim, RCPT_FIRST(), RCPT_MORE)]))
    for (const inst of ['a', 'a', 'a', 'b', 'b']) await hold(inst)
    t.same((await s.listUsage(all, 100, 6)).map((u) => [u.unit, u.held]), [['msg', 2], ['rcpt', 5]])
    await s.rateLimit(mk('commit', 'a', 101, [ident('sasl:m', lim, amounts(5, 1))]))
    t.same(await s.listUsage(all, 101, 6), [usage('sasl:m', 'rcpt', 3600, 3, 2)], '5 in recipient_count, 3 held: 3 counted')
    await s.rateLimit(mk('commit', 'b', 102, [ident('sasl:m', lim, amounts(1, 1))]))
    t.same(await s.listUsage(all, 102, 6), [usage('sasl:m', 'rcpt', 3600, 4, 0)], '1 of 2 held: 1 counted')
  }],
  ['amounts from the client are cleaned: fractions cut; NaN, negative and infinite sizes count 0', async (t, s) => {
    const lim = ['10b/1h']
    const added = async (inst: string, size: number): Promise<number> => (await s.rateLimit(mk('hold', inst, 100, [ident('sender:s', lim, RCPT_FIRST(size), RCPT_MORE)]))).added[0].bytes
    t.same([await added('a', 2.7), await added('b', NaN), await added('c', -5), await added('d', Infinity), await added('e', 8)], [2, 0, 0, 0, 8])
    t.equal((await s.rateLimit(mk('hold', 'f', 100, [ident('sender:s', lim, RCPT_FIRST(1), RCPT_MORE)]))).exceeded?.held, 10)
  }],
  ['a partial release keeps the hold\'s expiry; a later hold step removes it then', async (t, s) => {
    const lim = ['9msg/1h']
    await s.rateLimit(mk('hold', 'a', 100, [ident('c:r', lim, amounts(3, 1))]))
    await s.rateLimit(mk('release', 'a', 200, [ident('c:r', lim, amounts(1, 0))]))
    t.same(await s.listUsage(all, 3699, 6), [usage('c:r', 'msg', 0, 0, 1), usage('c:r', 'rcpt', 0, 0, 2)])
    t.same(await s.listUsage(all, 3700, 6), [])
    t.equal((await s.rateLimit(mk('hold', 'b', 3700, [ident('c:r', lim, amounts(1, 1))]))).expiredHolds, 1)
  }],
  ['retryAt when holds and usage both stand in the way: the later of the two', async (t, s) => {
    const lim = ['10rcpt/1d']
    await s.rateLimit(mk('commit', 'old', 0, [ident('c:x', lim, amounts(6, 1))]))
    await s.rateLimit(mk('hold', 'h', 50000, [ident('c:x', lim, amounts(4, 1), RCPT_MORE)]))
    const retry = async (inst: string, now: number, rcpt: number): Promise<number | undefined> => (await s.rateLimit(mk('hold', inst, now, [ident('c:x', lim, amounts(rcpt, 1), RCPT_MORE)]))).exceeded?.retryAt
    t.same([await retry('n', 50000, 6), await retry('n', 50000, 9), await retry('n', 50000, 3)], [86400, 86400, 86400])
    await s.rateLimit(mk('hold', 'h2', 85000, [ident('c:x', lim, amounts(4, 1), RCPT_MORE)]))
    t.equal(await retry('n', 85000, 9), 85000 + 3600, 'the holds outlast the usage')
    t.equal(await retry('n', 85000, 11), Infinity, 'more than the limit allows: never')
  }],
  ['byte counts of gigabytes stay exact', async (t, s) => {
    const lim = ['1GB/1d']
    await s.rateLimit(mk('commit', 'a', 0, [ident('sasl:big', lim, amounts(1, 1, 700 * 1024 ** 2))]))
    t.equal((await s.rateLimit(mk('hold', 'b', 1, [ident('sasl:big', lim, RCPT_FIRST(1024 ** 3 - 700 * 1024 ** 2), RCPT_MORE)]))).ok, true, 'to the last byte')
    const over = await s.rateLimit(mk('hold', 'c', 2, [ident('sasl:big', lim, RCPT_FIRST(1), RCPT_MORE)]))
    t.same(over.exceeded && [over.exceeded.used, over.exceeded.held, over.exceeded.asked], [700 * 1024 ** 2, 1024 ** 3 - 700 * 1024 ** 2, 1])
  }],
]

for (const backend of BACKENDS) {
  t.test(backend.name, async (t) => {
    const make = await backend.open(t)
    if (!make) return
    for (const [name, run] of CASES) {
      await t.test(name, async (t) => {
        const s = make(t.testdir())
        t.teardown(() => s.close())
        await run(t, s)
      })
    }
  })
}

// ---- SQLite only: several processes on one file, the lock, the schema, the bounded purge.

function sqlite(dir: string, extra: Partial<ConstructorParameters<typeof SqliteStore>[0]> = {}): SqliteStore {
  return new SqliteStore({ path: sqlitePath(dir), busyTimeoutMs: 500, renameCorrupt: false, log: () => undefined, ...extra })
}

t.test('sqlite: a hold is committed before the step returns: another connection sees it at once', async (t) => {
  const dir = t.testdir()
  const a = sqlite(dir)
  const b = sqlite(dir)
  t.teardown(() => (a.close(), b.close()))
  const lim = ['1msg/1h']
  // A greylisting step of `a` leaves its COMMIT for after the reply; the rate-limit step commits it first.
  await a.updateGreylist('k', 'c', () => ({ triplet: { row: { first: 1, last: 1, passed: 0, count: 1 }, expires: 9e9 }, result: null }))
  t.equal((await a.rateLimit(mk('hold', 'm1', 100, [ident('c:x', lim, RCPT_FIRST(), RCPT_MORE)]))).ok, true)
  // No turn of the event loop between the two: b must see a's hold from the file.
  const other = await b.rateLimit(mk('hold', 'm2', 100, [ident('c:x', lim, RCPT_FIRST(), RCPT_MORE)]))
  t.same(other.exceeded && other.exceeded.held, 1)
  t.same(await b.rateLimit(mk('commit', 'm1', 101, [ident('c:x', lim, amounts(1, 1))])), { ok: true, added: [NO_AMOUNTS], hadHold: true, expiredHolds: 0, now: 101 }, 'END-OF-MESSAGE on another process finds the hold')
  t.same(await a.listUsage(all, 101, 6), [usage('c:x', 'msg', 3600, 1, 0)])
  t.equal((await b.listTriplets(() => true, 10)).length, 1, 'and the greylisting row was committed with it')
})

t.test('sqlite: a step that fails writes nothing, not even the removal of expired holds', async (t) => {
  const s = sqlite(t.testdir())
  t.teardown(() => s.close())
  await s.rateLimit(mk('hold', 'a', 0, [ident('c:x', ['1msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
  await s.rateLimit(mk('commit', 'b', 0, [ident('c:y', ['9msg/1h'], amounts(1, 1))]))
  const twice = mk('commit', 'c', 5000, [ident('c:y', ['9msg/1h'], amounts(1, 1)), ident('c:x', ['9msg/1h'], amounts(1, 1)), ident('c:y', ['9msg/1h'], amounts(1, 1))])
  const err = await s.rateLimit(twice).catch((e: unknown) => e)
  t.ok(err instanceof StoreError, 'a StoreError')
  t.match((err as StoreError).message, /an identity named twice/)
  t.same(await s.listUsage(all, 100, 6), [usage('c:x', 'msg', 0, 0, 1), usage('c:x', 'rcpt', 0, 0, 1), usage('c:y', 'msg', 3600, 1, 0)], 'c:y not counted; c:x\'s hold, expired at 5000, not removed')
  t.equal((await s.rateLimit(mk('hold', 'd', 5000, [ident('c:x', ['1msg/1h'], RCPT_FIRST(), RCPT_MORE)]))).expiredHolds, 1, 'the store works on')
})

t.test('sqlite: a write lock held elsewhere is waited for, then refused as busy, in both wait modes', async (t) => {
  const dir = t.testdir()
  for (const lockWaits of ['block', 'yield'] as const) {
    const s = sqlite(dir, { busyTimeoutMs: 30, lockWaits })
    await s.listOverrides(0) // creates the file
    const raw = new Database(sqlitePath(dir))
    raw.exec('BEGIN IMMEDIATE')
    const err = await s.rateLimit(mk('hold', 'a', 100, [ident('c:x', ['1msg/1h'], RCPT_FIRST(), RCPT_MORE)])).catch((e: unknown) => e)
    t.same(err instanceof StoreError && err.failure, 'busy', `${lockWaits}: busy`)
    raw.exec('COMMIT')
    raw.close()
    t.equal((await s.rateLimit(mk('hold', 'a', 100, [ident('c:x', ['1msg/1h'], RCPT_FIRST(), RCPT_MORE)]))).ok, true, `${lockWaits}: then it goes through`)
    await s.resetUsage(all)
    s.close()
  }
})

t.test('sqlite: schema 3 is added to a version-2 database; check counts the rate-limit rows', async (t) => {
  const dir = t.testdir()
  const first = sqlite(dir)
  await first.addStats('mx', new Map([['x', 1]]))
  first.close()
  // Back to what version 2 had.
  const raw = new Database(sqlitePath(dir))
  raw.exec("DROP TABLE rl_usage; DROP TABLE rl_hold; DROP TABLE rl_hit; DROP TABLE rl_override; DELETE FROM meta WHERE name LIKE 'rl\\_%' ESCAPE '\\'; PRAGMA user_version = 2")
  raw.close()
  const logs: string[] = []
  const s = sqlite(dir, { log: (_l, m) => logs.push(m) })
  t.teardown(() => s.close())
  t.equal((await s.rateLimit(mk('commit', 'a', 100, [ident('c:x', ['1msg/1h'], amounts(1, 1))]))).ok, true)
  t.same(logs, [`database ${sqlitePath(dir)} migrated from schema version 2 to 3`])
  t.same(await s.stats(), [{ host: 'mx', name: 'x', value: 1 }], 'version 2 rows kept')
  t.equal(await s.lastCommit(), 100)
  await s.rateLimit(mk('hold', 'b', 100, [ident('c:x', ['1msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
  await s.setOverride({ key: 'c:y', limits: 'unlimited', expires: Infinity, note: '', setAt: 0 })
  const health = await s.check()
  t.equal(health.ok, true)
  t.match(health.lines.join('\n'), /schema version 3/)
  t.ok(health.lines.includes('rate limits: 1 usage counters, 0 held messages, 1 hit rows, 1 overrides'), health.lines.join(' | '))
})

t.test('sqlite: the upkeep step purges a bounded number of rate-limit rows per table, walking on with a cursor', async (t) => {
  const dir = t.testdir()
  const s = sqlite(dir)
  t.teardown(() => s.close())
  await s.rateLimit(mk('hold', 'i', 4000, [ident('a', ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
  for (const id of ['b', 'c']) await s.rateLimit(mk('hold', 'i', 0, [ident(id, ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
  await s.setOverride({ key: 'o1', limits: 'unlimited', expires: Infinity, note: '', setAt: 0 })
  await s.setOverride({ key: 'o2', limits: 'unlimited', expires: 10, note: '', setAt: 0 })
  const raw = new Database(sqlitePath(dir), { readonly: true })
  t.teardown(() => raw.close())
  const rows = (table: string): number => raw.prepare(`SELECT count(*) FROM ${table}`).pluck().get() as number
  // Holds b and c expired at 3600, a is live; o2 has expired, o1 never does. Each call looks at one row of each table.
  t.equal(await s.purgeExpired(5000, 1), 0, 'a and o1: live')
  t.equal(await s.purgeExpired(5000, 1), 2, 'the walk goes on past them: b and o2')
  t.same([rows('rl_hold'), rows('rl_override')], [2, 1])
  t.equal(await s.purgeExpired(5000, 1), 1, 'c; the overrides end, their walk starts over')
  t.equal(await s.purgeExpired(5000, 1), 0, 'the holds end too')
  t.same([rows('rl_hold'), rows('rl_override')], [1, 1])
  t.equal(await s.purgeExpired(5000, 0), 0, 'a limit of 0 purges nothing')
})

t.test('sqlite: the upkeep step keeps each table\'s end rule: a counter or a hit goes after its expiry, a hold or an override at it', async (t) => {
  const dir = t.testdir()
  const s = sqlite(dir)
  t.teardown(() => s.close())
  await s.rateLimit(mk('commit', 'a', 0, [ident('u', ['1msg/1m'], amounts(1, 1))])) // the counter expires at 70
  await s.rateLimit(mk('hold', 'h', 0, [ident('h', ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)])) // the hold expires at 3600
  await s.rateLimit(mk('hold', 'x', 10, [ident('x', ['0msg/1h'], RCPT_FIRST(), RCPT_MORE)])) // a hit, expires a week later: 604810
  await s.setOverride({ key: 'o', limits: 'unlimited', expires: 500, note: '', setAt: 0 })
  const raw = new Database(sqlitePath(dir), { readonly: true })
  t.teardown(() => raw.close())
  const rows = (): number[] => ['rl_usage', 'rl_hold', 'rl_hit', 'rl_override'].map((table) => raw.prepare(`SELECT count(*) FROM ${table}`).pluck().get() as number)
  const walk: Array<[number, number, number[]]> = [
    [69, 0, [1, 1, 1, 1]],
    [70, 0, [1, 1, 1, 1]],
    [70.5, 1, [0, 1, 1, 1]],
    [499, 0, [0, 1, 1, 1]],
    [500, 1, [0, 1, 1, 0]],
    [3599, 0, [0, 1, 1, 0]],
    [3600, 1, [0, 0, 1, 0]],
    [604810, 0, [0, 0, 1, 0]],
    [604811, 1, [0, 0, 0, 0]],
  ]
  for (const [now, gone, left] of walk) {
    t.equal(await s.purgeExpired(now, 100), gone, `at ${now}: ${gone} gone`)
    t.same(rows(), left, `at ${now}: rows left (usage, holds, hits, overrides)`)
  }
})

t.test('sqlite: a cursor missing from meta (a database edited by hand): the upkeep step works on, from the first key', async (t) => {
  const dir = t.testdir()
  const s = sqlite(dir)
  t.teardown(() => s.close())
  await s.rateLimit(mk('hold', 'i', 0, [ident('a', ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
  await s.rateLimit(mk('hold', 'i', 4000, [ident('b', ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
  const raw = new Database(sqlitePath(dir))
  t.teardown(() => raw.close())
  raw.prepare("DELETE FROM meta WHERE name = 'rl_hold_cursor'").run()
  t.equal(await s.purgeExpired(5000, 1), 1, 'a: expired at 3600')
  t.same(raw.prepare('SELECT id FROM rl_hold').pluck().all(), ['b'])
})
