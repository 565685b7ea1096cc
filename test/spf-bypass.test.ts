// The lists that exempt a client from the SPF checks (lib/spf/bypass.ts),
// through findBypass() with a resolver that answers from a table and logs
// each query, and a clock the test moves: which list and entry match, which
// names are looked up, and how each method's time limit cuts its lookups.
import t from 'tap'
import { loadConfig } from '../lib/config'
import type { DnsAnswer, Resolver, RrType } from '../lib/dns/resolver'
import { parseIp, type ParsedIp } from '../lib/normalize'
import { findBypass, type BypassDeps } from '../lib/spf/bypass'
import type { SpfResult } from '../lib/spf/check-host'
import { toPolicy, type SpfPolicy } from '../lib/spf/policy'

function policy(cli: Record<string, string>, over: Partial<SpfPolicy> = {}): SpfPolicy {
  const l = loadConfig({ cli: { Whitelist_Lookup_Time: '1', ...cli }, configPath: '/dev/null', env: {}, readFile: () => '' })
  if (l.errors.length) throw new Error(l.errors.join('; '))
  return { ...toPolicy(l.config), ...over }
}

function ip(text: string): ParsedIp {
  const p = parseIp(text)
  if (!p) throw new Error(`not an address: ${text}`)
  return p
}

/** Records by `name TYPE`; HANG: a query that is never answered. */
type Table = Record<string, string[] | 'HANG'>

interface Fake {
  deps: BypassDeps
  /** `name TYPE` of each query, in order. */
  queries: string[]
  /** `domain timeMs` of each check_host() of Domain_Whitelist. */
  checks: string[]
  clock: { now: number }
}

/**
 * `onQuery` runs as a query is answered (a slow answer moves the clock);
 * `check` gives the check_host() result of a Domain_Whitelist domain.
 */
function fake(table: Table, opts: { onQuery?: (key: string, clock: { now: number }) => void; check?: (domain: string, timeMs: number, clock: { now: number }) => SpfResult['result'] } = {}): Fake {
  const clock = { now: 50_000 }
  const queries: string[] = []
  const checks: string[] = []
  const resolver: Resolver = {
    query(name: string, type: RrType): Promise<DnsAnswer> {
      const key = `${name} ${type}`
      queries.push(key)
      const records = table[key]
      if (records === 'HANG') return new Promise<DnsAnswer>(() => {})
      opts.onQuery?.(key, clock)
      return Promise.resolve(records ? { rcode: 'NOERROR', records, mx: [] } : { rcode: 'NXDOMAIN', records: [], mx: [] })
    },
    cached: () => undefined,
    stats: () => ({ queries: queries.length, cacheHits: 0, timeouts: 0, cacheEntries: 0, sockets: 0 }),
    close: () => {},
  }
  const deps: BypassDeps = {
    resolver,
    now: () => clock.now,
    checkDomain: async (domain, timeMs) => {
      checks.push(`${domain} ${timeMs}`)
      return { result: opts.check?.(domain, timeMs, clock) ?? 'fail', reason: 'test', domain }
    },
  }
  return { deps, queries, checks, clock }
}

const CLIENT = ip('192.0.2.10')
const REQ = { helo: 'mail.example.net', clientName: 'unknown' }

t.test('skip_addresses and Whitelist: the network that matched is the entry', async (t) => {
  const f = fake({})
  t.same(await findBypass(CLIENT, REQ, policy({ Whitelist: '198.51.100.0/24, 192.0.2.0/28' }), f.deps), { list: 'Whitelist', entry: '192.0.2.0/28' })
  t.same(await findBypass(ip('::1'), REQ, policy({}), f.deps), { list: 'skip_addresses', entry: '::1/128' })
  t.same(f.queries, [], 'no DNS lookup for a network')
})

t.test('Domain_Whitelist: each domain checked within what is left of the time, none once it is over', async (t) => {
  // The first check takes 400 ms and fails; the second gets the 600 ms left and passes.
  const slow = fake({}, { check: (d, _ms, clock) => ((clock.now += 400), d === 'b.test' ? 'pass' : 'fail') })
  t.same(await findBypass(CLIENT, REQ, policy({ Domain_Whitelist: 'a.test, b.test' }), slow.deps), { list: 'Domain_Whitelist', entry: 'b.test' })
  t.same(slow.checks, ['a.test 1000', 'b.test 600'])

  // The first check takes the whole second: the time is over exactly, the second domain is not checked.
  const spent = fake({}, { check: (d, ms, clock) => ((clock.now += ms), d === 'b.test' ? 'pass' : 'fail') })
  t.equal(await findBypass(CLIENT, REQ, policy({ Domain_Whitelist: 'a.test, b.test' }), spent.deps), null)
  t.same(spent.checks, ['a.test 1000'])
})

t.test('HELO_Whitelist: the HELO name, lower case without its final dot, must resolve to the client', async (t) => {
  const table: Table = {
    'relay.test A': ['203.0.113.9', '192.0.2.10'],
    'relay.test AAAA': ['2001:db8::99'],
    'relay6.test AAAA': ['2001:db8::10'],
    'relay6.test A': ['192.0.2.10'],
  }
  const helo = policy({ HELO_Whitelist: 'relay.test, relay6.test, empty.test' })
  const f = fake(table)
  t.same(await findBypass(CLIENT, { ...REQ, helo: 'Relay.TEST.' }, helo, f.deps), { list: 'HELO_Whitelist', entry: 'relay.test' }, 'one of its addresses is the client')
  t.same(f.queries, ['relay.test A'])

  const v6 = fake(table)
  t.same(await findBypass(ip('2001:db8::10'), { ...REQ, helo: 'relay6.test' }, helo, v6.deps), { list: 'HELO_Whitelist', entry: 'relay6.test' }, 'an IPv6 client: AAAA')
  t.same(v6.queries, ['relay6.test AAAA'])
  t.equal(await findBypass(ip('2001:db8::10'), { ...REQ, helo: 'relay.test' }, helo, fake(table).deps), null, 'its AAAA records are not the client')

  t.equal(await findBypass(CLIENT, { ...REQ, helo: 'empty.test' }, helo, fake(table).deps), null, 'a name without addresses')
  t.equal(await findBypass(CLIENT, { ...REQ, helo: 'other.test' }, helo, fake(table).deps), null, 'a name not on the list')
})

t.test('a lookup never answered ends with the time of the method, its timer cleared', async (t) => {
  const f = fake({ 'relay.test A': 'HANG' })
  t.equal(await findBypass(CLIENT, { ...REQ, helo: 'relay.test' }, policy({ HELO_Whitelist: 'relay.test' }, { whitelistLookupMs: 20 }), f.deps), null)
  t.same(f.queries, ['relay.test A'])

  // An answer in time clears the timer of the lookup: none is left to keep the process up.
  const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
  const before = timers()
  t.ok(await findBypass(CLIENT, { ...REQ, helo: 'relay.test' }, policy({ HELO_Whitelist: 'relay.test' }, { whitelistLookupMs: 3_600_000 }), fake({ 'relay.test A': ['192.0.2.10'] }).deps))
  t.equal(timers(), before)
})

t.test("Domain_Whitelist_PTR: Postfix's client name, else the PTR names that resolve back to the client", async (t) => {
  const trusted = policy({ Domain_Whitelist_PTR: 'trusted.test' })
  const given = fake({})
  t.same(await findBypass(CLIENT, { ...REQ, clientName: 'MX9.Trusted.TEST.' }, trusted, given.deps), { list: 'Domain_Whitelist_PTR', entry: 'trusted.test' })
  t.same(given.queries, [], "Postfix's client_name is confirmed already")

  const table: Table = { '10.2.0.192.in-addr.arpa PTR': ['Other.Example.', 'MX1.Trusted.TEST.'], 'other.example A': ['192.0.2.10'], 'mx1.trusted.test A': ['192.0.2.10'] }
  for (const clientName of ['unknown', '']) {
    const f = fake(table)
    t.same(await findBypass(CLIENT, { ...REQ, clientName }, trusted, f.deps), { list: 'Domain_Whitelist_PTR', entry: 'trusted.test' }, `client_name ${JSON.stringify(clientName)}`)
    t.same(f.queries, ['10.2.0.192.in-addr.arpa PTR', 'other.example A', 'mx1.trusted.test A'], 'each PTR name looked up in lower case, without its final dot')
  }

  const none = fake(table)
  t.equal(await findBypass(CLIENT, REQ, policy({}), none.deps), null)
  t.same(none.queries, [], 'no PTR lookup without a Domain_Whitelist_PTR')
})

t.test('Domain_Whitelist_PTR: at most 10 PTR names, none after the time is over', async (t) => {
  const names = Array.from({ length: 11 }, (_, i) => `h${i}.${i === 10 ? 'trusted' : 'other'}.test`)
  const table: Table = { '10.2.0.192.in-addr.arpa PTR': names, ...Object.fromEntries(names.map((n) => [`${n} A`, ['192.0.2.10']])) }
  const many = fake(table)
  t.equal(await findBypass(CLIENT, REQ, policy({ Domain_Whitelist_PTR: 'trusted.test' }), many.deps), null, 'the 11th name is not tried')
  t.same(many.queries, ['10.2.0.192.in-addr.arpa PTR', ...names.slice(0, 10).map((n) => `${n} A`)])

  // The PTR answer comes when the time is over exactly: its names are not looked up.
  const late = fake({ '10.2.0.192.in-addr.arpa PTR': ['mx1.trusted.test'], 'mx1.trusted.test A': ['192.0.2.10'] }, { onQuery: (_k, clock) => (clock.now += 1000) })
  t.equal(await findBypass(CLIENT, REQ, policy({ Domain_Whitelist_PTR: 'trusted.test' }), late.deps), null)
  t.same(late.queries, ['10.2.0.192.in-addr.arpa PTR'])

  // The PTR lookup is given up by its timer (the clock still shows time left): no name to look up.
  const lost = fake({ '10.2.0.192.in-addr.arpa PTR': 'HANG' })
  t.equal(await findBypass(CLIENT, REQ, policy({ Domain_Whitelist_PTR: 'trusted.test' }, { whitelistLookupMs: 20 }), lost.deps), null)
  t.same(lost.queries, ['10.2.0.192.in-addr.arpa PTR'])
})
