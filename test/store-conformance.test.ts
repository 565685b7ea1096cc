// One table of store behaviour, run against every backend (SQLite, Redis)
// unchanged. Each case gets a fresh store; times are given, never read from
// a clock (the Redis store gets a test clock at 0 instead of its server's
// TIME, so that expiry times such as 50 are in the future).
import t from 'tap'
import type { GreylistStore, GreylistView, StoreAdmin } from '../lib/store/types'
import { sqliteStorePath, STORE_BACKENDS } from './helpers/store-backends'
import { SqliteStore } from '../lib/store/sqlite'

type Store = GreylistStore & StoreAdmin

interface Backend {
  name: string
  /** Whatever the backend needs for the whole table (a server); null when it cannot run here (the test says why). */
  open(t: Tap.Test): Promise<((dir: string) => Store) | null>
}

const BACKENDS: Backend[] = STORE_BACKENDS

const triplet = (first: number, passed = 0) => ({ first, last: first, passed, count: 1 })
const client = (count: number, at: number) => ({ count, last: at, lastCounted: at })

/** Write a triplet row (and a client row) unconditionally. */
async function put(s: Store, key: string, expires: number, clientKey = `c-${key}`): Promise<void> {
  await s.updateGreylist(key, clientKey, () => ({ triplet: { row: triplet(100), expires }, client: { row: client(1, 100), expires }, result: null }))
}

async function view(s: Store, key: string, clientKey: string, wl: string[] = []): Promise<GreylistView> {
  return s.updateGreylist(key, clientKey, (v) => ({ result: v }), () => wl)
}

const CASES: Array<[string, (t: Tap.Test, s: Store) => Promise<void>]> = [
  ['a new key reads as empty; written rows read back; both rows of a request in one view', async (t, s) => {
    t.same(await view(s, 'k', 'c'), { triplet: null, client: null, tripletCount: 0 })
    await s.updateGreylist('k', 'c', () => ({ triplet: { row: triplet(10), expires: 50 }, client: { row: client(2, 10), expires: 60 }, result: null }))
    const v = await view(s, 'k', 'c')
    t.same([v.triplet, v.client], [triplet(10), client(2, 10)])
    t.equal(v.tripletCount, 1, 'the count includes this process\'s own insert')
  }],
  ['undefined keeps a row, null deletes it; the result is returned as given', async (t, s) => {
    await put(s, 'k', 50, 'c')
    t.equal(await s.updateGreylist('k', 'c', () => ({ triplet: null, result: 'gone' })), 'gone')
    const v = await view(s, 'k', 'c')
    t.equal(v.triplet, null)
    t.same(v.client, client(1, 100), 'the client row untouched')
  }],
  ['a decide that throws writes nothing', async (t, s) => {
    await t.rejects(s.updateGreylist('k', 'c', () => {
      throw new Error('boom')
    }))
    t.same(await view(s, 'k', 'c'), { triplet: null, client: null, tripletCount: 0 })
  }],
  ['whitelist entries: looked up with the request, listed, replaced, deleted', async (t, s) => {
    await s.setWhitelist({ key: 'sender\ta@example.net', expires: 500, note: 'partner', setAt: 1 })
    await s.setWhitelist({ key: 'client\t192.0.2.0/24', expires: Infinity, note: '', setAt: 2 })
    t.same((await view(s, 'k', 'c', ['client\t192.0.2.7', 'client\t192.0.2.0/24', 'sender\tb@example.net', 'recipient\tx@y'])).whitelisted, { key: 'client\t192.0.2.0/24', expires: Infinity })
    t.same((await view(s, 'k', 'c', ['client\t198.51.100.1', '', 'sender\ta@example.net', ''])).whitelisted, { key: 'sender\ta@example.net', expires: 500 })
    t.equal((await view(s, 'k', 'c', ['client\t198.51.100.1', '', 'sender\tz@example.net', ''])).whitelisted, undefined, 'no entry names the request')
    t.same(await s.listWhitelist(), [
      { key: 'client\t192.0.2.0/24', expires: Infinity, note: '', setAt: 2 },
      { key: 'sender\ta@example.net', expires: 500, note: 'partner', setAt: 1 },
    ])
    await s.setWhitelist({ key: 'sender\ta@example.net', expires: 900, note: 'renewed', setAt: 3 })
    t.same((await s.listWhitelist()).map((e) => [e.expires, e.note]), [[Infinity, ''], [900, 'renewed']], 'set again: replaced, not doubled')
    t.equal(await s.deleteWhitelist('sender\ta@example.net'), true)
    t.equal(await s.deleteWhitelist('sender\ta@example.net'), false, 'a second delete finds nothing')
    t.equal((await s.listWhitelist()).length, 1)
  }],
  ['listTriplets: key order, the matcher, the limit', async (t, s) => {
    for (const k of ['c', 'a', 'd', 'b']) await put(s, k, 50)
    t.same((await s.listTriplets(() => true, 10)).map((r) => r.key), ['a', 'b', 'c', 'd'])
    t.same((await s.listTriplets((k) => k !== 'b', 2)).map((r) => r.key), ['a', 'c'])
    t.same((await s.listTriplets((k) => k === 'd', 10))[0], { key: 'd', ...triplet(100), expires: 50 })
  }],
  ['deleteTriplets: only the matching ones, and the count follows', async (t, s) => {
    for (const k of ['a1', 'a2', 'b1']) await put(s, k, 50)
    t.equal(await s.deleteTriplets((k) => k.startsWith('a')), 2)
    t.same((await s.listTriplets(() => true, 10)).map((r) => r.key), ['b1'])
    await s.purgeExpired(0, 0)
    t.equal((await view(s, 'x', 'y')).tripletCount, 1)
  }],
  ['stats: deltas add up per host and name', async (t, s) => {
    await s.addStats('mx1', new Map([['policyd_requests_total{state="RCPT"}', 3], ['policyd_decisions_total', 1]]))
    await s.addStats('mx1', new Map([['policyd_requests_total{state="RCPT"}', 2]]))
    await s.addStats('mx2', new Map([['policyd_requests_total{state="RCPT"}', 7]]))
    t.same(await s.stats(), [
      { host: 'mx1', name: 'policyd_decisions_total', value: 1 },
      { host: 'mx1', name: 'policyd_requests_total{state="RCPT"}', value: 5 },
      { host: 'mx2', name: 'policyd_requests_total{state="RCPT"}', value: 7 },
    ])
  }],
  ['purgeAll: every expired triplet, client row and whitelist entry, nothing live', async (t, s) => {
    await put(s, 'old', 100, 'c-old')
    await put(s, 'live', 300, 'c-live')
    await s.setWhitelist({ key: 'sender\told@x', expires: 150, note: '', setAt: 0 })
    await s.setWhitelist({ key: 'sender\tlive@x', expires: Infinity, note: '', setAt: 0 })
    t.equal(await s.purgeAll(200), 3, 'one triplet, one client row, one entry')
    t.same((await s.listTriplets(() => true, 10)).map((r) => r.key), ['live'])
    t.same((await s.listWhitelist()).map((e) => e.key), ['sender\tlive@x'])
    t.same((await view(s, 'old', 'c-old')).client, null)
  }],
  ['check: healthy store says ok with its counts', async (t, s) => {
    await put(s, 'a', 50)
    const health = await s.check()
    t.equal(health.ok, true)
    t.match(health.lines.join('\n'), /triplets: 1\b/)
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

t.test('sqlite: an entry another process adds is looked up from the next upkeep step on (ten seconds of activity)', async (t) => {
  const dir = t.testdir()
  const make = (): SqliteStore => new SqliteStore({ path: sqliteStorePath(dir), busyTimeoutMs: 500, renameCorrupt: false, log: () => undefined })
  const server = make()
  const ops = make()
  t.teardown(() => (server.close(), ops.close()))
  const keys = ['client\t192.0.2.1', 'client\t192.0.2.0/24', 'sender\ta@x', 'recipient\tb@y']
  t.equal((await view(server, 'k', 'c', keys)).whitelisted, undefined, 'opened with an empty whitelist')
  // The server commits after its reply, on the next turn of the event loop (two stores share this process here).
  const turn = (): Promise<void> => new Promise((r) => setImmediate(r))
  await turn()
  await ops.setWhitelist({ key: 'sender\ta@x', expires: Infinity, note: '', setAt: 0 })
  t.equal((await view(server, 'k', 'c', keys)).whitelisted, undefined, 'not yet: the table was empty at open')
  await turn()
  await server.purgeExpired(100, 10)
  t.same((await view(server, 'k', 'c', keys)).whitelisted, { key: 'sender\ta@x', expires: Infinity }, 'after its upkeep step')
})
