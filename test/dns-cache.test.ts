// The resolver's cache on an injected clock. An answer received at T with
// a TTL of s seconds is fresh while now < T + s * 1000 ms; at exactly
// T + s * 1000 it has expired and the question is asked again (the TTL is
// how long it may be kept, RFC 1035 §3.2.1). Each test checks both sides
// of the instant.
import type * as dnsPacket from 'dns-packet'
import t from 'tap'
import { createResolver, type DnsAnswer, type Resolver, type RrType } from '../lib/dns/resolver'
import { responseTo, startScriptedDnsServer, type ReceivedQuery, type ScriptedDnsServer } from './helpers/dns-server'

const T0 = 1_000_000_000

type Script = Record<string, (q: ReceivedQuery) => Partial<dnsPacket.Packet>>

interface Harness {
  server: ScriptedDnsServer
  resolver: Resolver
  clock: { now: number }
  /** Questions the server has received for `name`. */
  asked(name: string): number
}

async function harness(t: Tap.Test, script: Script, cacheMaxEntries?: number): Promise<Harness> {
  const server = await startScriptedDnsServer((q) => {
    const answer = script[q.question.name.toLowerCase()]
    if (answer) q.reply(responseTo(q, answer(q)))
  })
  t.teardown(() => server.close())
  const clock = { now: T0 }
  const resolver = createResolver({ servers: [`127.0.0.1:${server.port}`], timeoutMs: 2000, tries: 1, now: () => clock.now, cacheMaxEntries })
  t.teardown(() => resolver.close())
  return { server, resolver, clock, asked: (name) => server.received.filter((q) => q.question.name.toLowerCase() === name).length }
}

function a(name: string, ttl: number, data = '192.0.2.1'): dnsPacket.Answer {
  return { type: 'A', name, ttl, class: 'IN', data }
}

function soa(name: string, ttl: number, minimum: number): dnsPacket.Answer {
  return { type: 'SOA', name, ttl, class: 'IN', data: { mname: `ns.${name}`, rname: `hostmaster.${name}`, serial: 1, refresh: 3600, retry: 600, expire: 86400, minimum } }
}

const NXDOMAIN = 3
const NOTIMP = 4

/**
 * Asks `name` at T0, then just before T0 + ms (expects the cache) and at
 * T0 + ms (expects a new question).
 */
async function expiresAfter(t: Tap.Test, h: Harness, name: string, type: RrType, ms: number): Promise<DnsAnswer> {
  h.clock.now = T0
  const first = await h.resolver.query(name, type)
  t.equal(h.asked(name), 1, `${name}: asked once`)
  h.clock.now = T0 + ms - 1
  t.same(h.resolver.cached(name, type), first, `${name}: cached() has it ${ms - 1} ms later`)
  t.same(await h.resolver.query(name, type), first, `${name}: still cached ${ms - 1} ms later`)
  t.equal(h.asked(name), 1, `${name}: no new question before ${ms} ms`)
  h.clock.now = T0 + ms
  t.equal(h.resolver.cached(name, type), undefined, `${name}: cached() has nothing at exactly ${ms} ms`)
  await h.resolver.query(name, type)
  t.equal(h.asked(name), 2, `${name}: asked again at exactly ${ms} ms`)
  h.clock.now = T0 + 2 * ms - 1
  await h.resolver.query(name, type)
  t.equal(h.asked(name), 2, `${name}: the new answer is fresh from the time it came`)
  return first
}

t.test('a positive answer is kept for its TTL in seconds, not a millisecond more', async (t) => {
  const h = await harness(t, { 'a.example': (q) => ({ answers: [a(q.question.name, 300)] }) })
  await expiresAfter(t, h, 'a.example', 'A', 300_000)
})

t.test('the smallest TTL of the answer governs, a CNAME included', async (t) => {
  const h = await harness(t, {
    'two.example': (q) => ({ answers: [a(q.question.name, 300, '192.0.2.1'), a(q.question.name, 30, '192.0.2.2')] }),
    'alias.example': (q) => ({
      answers: [{ type: 'CNAME', name: q.question.name, ttl: 20, class: 'IN', data: 'target.example' }, a('target.example', 300)],
    }),
  })
  await expiresAfter(t, h, 'two.example', 'A', 30_000)
  await expiresAfter(t, h, 'alias.example', 'A', 20_000)
  t.same(h.resolver.cached('alias.example', 'A')?.records, ['192.0.2.1'], 'the CNAME is followed, not returned as a record')
})

t.test('a TTL over a day is kept a day; a TTL of 0 is not kept', async (t) => {
  const h = await harness(t, {
    'long.example': (q) => ({ answers: [a(q.question.name, 10_000_000)] }),
    'zero.example': (q) => ({ answers: [a(q.question.name, 0)] }),
  })
  await expiresAfter(t, h, 'long.example', 'A', 86_400_000)
  await h.resolver.query('zero.example', 'A')
  await h.resolver.query('zero.example', 'A')
  t.equal(h.asked('zero.example'), 2)
})

t.test('negative answers: 60 s without an SOA, else the SOA TTL or minimum if less, at least 1 s', async (t) => {
  const nx = (extra: Partial<dnsPacket.Packet> = {}) => (): Partial<dnsPacket.Packet> => ({ flags: NXDOMAIN, ...extra })
  const h = await harness(t, {
    'bare.nx.example': nx(),
    'min.nx.example': nx({ authorities: [soa('nx.example', 120, 30)] }),
    'ttl.nx.example': nx({ authorities: [soa('nx.example', 10, 3600)] }),
    'long.nx.example': nx({ authorities: [soa('nx.example', 3600, 3600)] }),
    'zero.nx.example': nx({ authorities: [soa('nx.example', 0, 0)] }),
    'nodata.example': () => ({ authorities: [soa('nodata.example', 3600, 45)] }),
  })
  t.equal((await expiresAfter(t, h, 'bare.nx.example', 'TXT', 60_000)).rcode, 'NXDOMAIN')
  await expiresAfter(t, h, 'min.nx.example', 'TXT', 30_000)
  await expiresAfter(t, h, 'ttl.nx.example', 'TXT', 10_000)
  await expiresAfter(t, h, 'long.nx.example', 'TXT', 60_000)
  await expiresAfter(t, h, 'zero.nx.example', 'TXT', 1000)
  t.same(await expiresAfter(t, h, 'nodata.example', 'TXT', 45_000), { rcode: 'NOERROR', records: [], mx: [] }, 'no data')
})

t.test('failures are not kept', async (t) => {
  const h = await harness(t, { 'fail.example': () => ({ flags: 2 }), 'notimp.example': () => ({ flags: NOTIMP }) })
  for (const name of ['fail.example', 'notimp.example']) {
    await h.resolver.query(name, 'TXT')
    await h.resolver.query(name, 'TXT')
    t.equal(h.asked(name), 2, name)
  }
  t.equal(h.resolver.stats().cacheEntries, 0)
})

t.test('names differing only in case or a final dot share an entry; types do not', async (t) => {
  const h = await harness(t, {
    'a.example': (q) => (q.question.type === 'A' ? { answers: [a(q.question.name, 300)] } : {}),
  })
  await h.resolver.query('a.example', 'A')
  await h.resolver.query('A.Example.', 'A')
  t.equal(h.asked('a.example'), 1)
  await h.resolver.query('a.example', 'AAAA')
  t.equal(h.asked('a.example'), 2)
})

t.test('cacheMaxEntries: the oldest entry goes first, the others stay', async (t) => {
  const h = await harness(t, Object.fromEntries(['one', 'two', 'three'].map((n) => [`${n}.example`, (q: ReceivedQuery) => ({ answers: [a(q.question.name, 300)] })])), 2)
  for (const n of ['one', 'two', 'three']) await h.resolver.query(`${n}.example`, 'A')
  t.equal(h.resolver.stats().cacheEntries, 2)
  t.ok(h.resolver.cached('two.example', 'A'), 'the second kept')
  t.ok(h.resolver.cached('three.example', 'A'), 'the newest kept')
  t.equal(h.resolver.cached('one.example', 'A'), undefined, 'the oldest dropped')
})

t.test('an MX answer is kept for its TTL, not the negative TTL', async (t) => {
  const h = await harness(t, { 'mx.example': (q) => ({ answers: [{ type: 'MX', name: q.question.name, ttl: 300, class: 'IN', data: { preference: 10, exchange: 'mail.example' } }] }) })
  const answer = await expiresAfter(t, h, 'mx.example', 'MX', 300_000)
  t.same(answer.mx, [{ preference: 10, exchange: 'mail.example' }])
})

t.test('an expired entry is dropped when asked again: a failure then leaves none, a new answer is the newest entry', async (t) => {
  let flakyAsked = 0
  const h = await harness(t, {
    'flaky.example': (q) => (++flakyAsked === 1 ? { answers: [a(q.question.name, 1)] } : { flags: 2 }),
    'one.example': (q) => ({ answers: [a(q.question.name, 1)] }),
    'two.example': (q) => ({ answers: [a(q.question.name, 300)] }),
    'three.example': (q) => ({ answers: [a(q.question.name, 300)] }),
  }, 2)
  await h.resolver.query('flaky.example', 'A')
  t.equal(h.resolver.stats().cacheEntries, 1)
  h.clock.now = T0 + 1000
  t.equal((await h.resolver.query('flaky.example', 'A')).rcode, 'SERVFAIL')
  t.equal(h.resolver.stats().cacheEntries, 0, 'the expired answer is gone')
  h.clock.now = T0
  await h.resolver.query('one.example', 'A')
  await h.resolver.query('two.example', 'A')
  h.clock.now = T0 + 1000
  await h.resolver.query('one.example', 'A')
  t.equal(h.asked('one.example'), 2)
  await h.resolver.query('three.example', 'A')
  t.ok(h.resolver.cached('one.example', 'A'), 'the refreshed entry is newer than two.example')
  t.equal(h.resolver.cached('two.example', 'A'), undefined, 'two.example is now the oldest, and went')
})
