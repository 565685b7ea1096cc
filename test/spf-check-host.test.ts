// check_host() itself (lib/spf/check-host.ts) on cases the RFC 7208 suite
// leaves out: internationalised names, a sender without a local part, an
// empty exp= text, IPv4-mapped ip6 networks, and where a pass stops being
// narrow enough to authenticate a domain. Against a DNS server on loopback.
import t from 'tap'
import { checkHost, DEFAULT_EXPLANATION, type CheckHostContext, type SpfResult } from '../lib/spf/check-host'
import { createResolver, type DnsAnswer, type Rcode, type Resolver, type RrType } from '../lib/dns/resolver'
import { startDnsServer, type DnsServer, type Zone } from './helpers/dns-server'

const ZONE: Zone = {
  // bücher.example, mail-bücher.example, and a name a macro builds from the local part jörg.
  'xn--bcher-kva.example': [{ TXT: 'v=spf1 ip4:192.0.2.0/24 -all exp=why.xn--bcher-kva.example' }],
  'why.xn--bcher-kva.example': [{ TXT: '%{s} %{o} %{d} %{h}' }],
  'xn--mail-bcher-feb.example': [{ TXT: 'v=spf1 a -all' }, { A: '192.0.2.20' }],
  'local.example': [{ TXT: 'v=spf1 exists:%{l}.ok.local.example exists:%{L}.esc.local.example -all' }],
  'xn--jrg-sna.ok.local.example': [{ A: '127.0.0.2' }],
  'j%C3%B6rg-up.esc.local.example': [{ A: '127.0.0.2' }],
  // A sender without a local part.
  'nolocal.example': [{ TXT: 'v=spf1 -all exp=why.nolocal.example' }],
  'why.nolocal.example': [{ TXT: 's=%{s} l=%{l} o=%{o}' }],
  // exp= texts that explain nothing.
  'empty-exp.example': [{ TXT: 'v=spf1 -all exp=why.empty-exp.example' }],
  'why.empty-exp.example': [{ TXT: '' }],
  'blank-exp.example': [{ TXT: 'v=spf1 -all exp=why.blank-exp.example' }],
  'why.blank-exp.example': [{ TXT: '   ' }],
  'macro-blank-exp.example': [{ TXT: 'v=spf1 -all exp=why.macro-blank-exp.example' }],
  'why.macro-blank-exp.example': [{ TXT: '%_%_' }],
  // IPv4-mapped ip6 networks.
  'mapped.example': [{ TXT: 'v=spf1 ip6:::ffff:192.0.2.1 -all' }],
  'mapped-net.example': [{ TXT: 'v=spf1 ip6:::ffff:192.0.2.0/120 -all' }],
  'not-mapped.example': [{ TXT: 'v=spf1 ip6:::ff00:c000:201 -all' }],
  // Targets that expand to no domain name (the local part alone): errors for redirect= and include:, no match for a: and exists:.
  'redirect-bad.example': [{ TXT: 'v=spf1 redirect=%{l}' }],
  'include-bad.example': [{ TXT: 'v=spf1 include:%{l} -all' }],
  'a-bad.example': [{ TXT: 'v=spf1 a:%{l} -all' }],
  'exists-bad.example': [{ TXT: 'v=spf1 exists:%{l} -all' }],
  'mx-bad.example': [{ TXT: 'v=spf1 mx:%{l} -all' }],
  // Not looked up at all, so three of them are no three void lookups (the limit is 2).
  'a-bad3.example': [{ TXT: 'v=spf1 a:%{l} a:%{l} a:%{l} -all' }],
  'mx-bad3.example': [{ TXT: 'v=spf1 mx:%{l} mx:%{l} mx:%{l} -all' }],
  'exists-bad3.example': [{ TXT: 'v=spf1 exists:%{l} exists:%{l} exists:%{l} -all' }],
}

let dns: DnsServer
t.before(async () => {
  dns = await startDnsServer(ZONE)
})
t.teardown(() => dns.close())

async function check(ip: string, sender: string, helo = 'mail.example.net', domain = sender.slice(sender.lastIndexOf('@') + 1)): Promise<SpfResult> {
  const resolver = createResolver({ servers: [`127.0.0.1:${dns.port}`], timeoutMs: 500, tries: 1 })
  try {
    return await checkHost({ ip, domain, sender, helo }, { resolver, lookupTimeMs: 5000, now: () => 1_700_000_000_000 })
  } finally {
    resolver.close()
  }
}

t.test('internationalised names are looked up by their A-labels (RFC 7208 §4.3)', async (t) => {
  const pass = await check('192.0.2.10', 'jörg@bücher.example')
  t.equal(pass.result, 'pass', `a SMTPUTF8 sender of an IDN domain: ${pass.reason}`)
  t.equal(pass.domain, 'xn--bcher-kva.example')
  const fail = await check('203.0.113.5', 'jörg@BÜCHER.example', 'mail-bücher.example')
  t.equal(fail.result, 'fail', 'a forged IDN sender fails')
  t.equal(fail.explanation, 'jörg@xn--bcher-kva.example xn--bcher-kva.example xn--bcher-kva.example xn--mail-bcher-feb.example',
    '%{s}, %{o}, %{d} and %{h} carry A-labels; the local part has no other form')
  const helo = await check('192.0.2.20', 'postmaster@mail-bücher.example', 'mail-bücher.example')
  t.equal(helo.result, 'pass', `an IDN HELO name: ${helo.reason}`)
  t.equal((await check('192.0.2.21', 'postmaster@mail-bücher.example', 'mail-bücher.example')).result, 'fail')

  const local = await check('192.0.2.10', 'jörg@local.example')
  t.equal(local.result, 'pass', `a name a macro builds from a non-ASCII local part is looked up by its A-label: ${local.reason}`)
  t.equal(local.mechanism, 'exists:%{l}.ok.local.example')
  const upper = await check('192.0.2.10', 'jörg-up@local.example')
  t.equal(upper.mechanism, 'exists:%{L}.esc.local.example', `%{L} escapes the UTF-8 bytes of the local part: ${upper.reason}`)

  const before = dns.queries
  for (const name of ['a\u200db.example', 'bü/cher.example', 'bü%41.example', 'bü cher.example']) {
    const r = await check('192.0.2.10', `x@${name}`)
    t.equal(r.result, 'none', `${JSON.stringify(name)} has no A-label form: none`)
    t.match(r.reason, /no checkable domain/)
  }
  t.equal(dns.queries, before, 'and nothing is looked up for it')
})

t.test('%{s}, %{l} and %{o} of a sender without a local part (RFC 7208 §4.3: postmaster)', async (t) => {
  const r = await check('192.0.2.10', '@nolocal.example')
  t.equal(r.result, 'fail')
  t.equal(r.explanation, 's=postmaster@nolocal.example l=postmaster o=nolocal.example')
  const bare = await check('192.0.2.10', 'nolocal.example')
  t.equal(bare.explanation, 's=postmaster@nolocal.example l=postmaster o=nolocal.example', 'a sender that is only a domain')
})

t.test('an exp= text that is empty or white space after expansion gives the default explanation', async (t) => {
  for (const domain of ['empty-exp.example', 'blank-exp.example', 'macro-blank-exp.example']) {
    const r = await check('192.0.2.10', `a@${domain}`)
    t.equal(r.result, 'fail', domain)
    t.equal(r.explanation, DEFAULT_EXPLANATION, `${domain}: the default explanation`)
  }
})

t.test('ip6 with an IPv4-mapped address: valid, matches the mapped IPv4 client only', async (t) => {
  const cases: Array<[string, string, string]> = [
    ['mapped.example', '2001:db8::1', 'fail'],
    ['mapped.example', '::ffff:192.0.2.2', 'fail'],
    ['mapped.example', '192.0.2.2', 'fail'],
    ['mapped.example', '192.0.2.1', 'pass'],
    ['mapped.example', '::ffff:192.0.2.1', 'pass'],
    ['mapped-net.example', '192.0.2.200', 'pass'],
    ['mapped-net.example', '192.0.3.1', 'fail'],
    ['mapped-net.example', '2001:db8::c000:201', 'fail'],
    // ::ff00:c000:201 is not in the mapped range: an IPv6 address like any other.
    ['not-mapped.example', '192.0.2.1', 'fail'],
    ['not-mapped.example', '::ff00:c000:201', 'pass'],
  ]
  for (const [domain, ip, want] of cases) {
    const r = await check(ip, `a@${domain}`)
    t.equal(r.result, want, `${domain} from ${ip}: ${r.reason}`)
  }
})

t.test('a pass is broad (authenticates nobody) below /8 for IPv4 and /16 for IPv6, narrow from there', async (t) => {
  const cases: Array<[string, string, boolean]> = [
    ['ip4:192.0.0.0/8', '192.0.2.10', false],
    ['ip4:192.0.0.0/7', '192.0.2.10', true],
    ['ip6:2001::/16', '2001:db8::1', false],
    ['ip6:2000::/15', '2001:db8::1', true],
    ['ip6:::ffff:192.0.0.0/104', '192.0.2.10', false],
    ['ip6:::ffff:192.0.0.0/103', '192.0.2.10', true],
    ['a:host.broad.example/8', '192.0.2.10', false],
    ['a:host.broad.example/7', '192.0.2.10', true],
    ['a:host.broad.example//16', '2001:db8::1', false],
    ['a:host.broad.example//15', '2001:db8::1', true],
    ['mx:broad.example/8', '192.0.2.10', false],
    ['mx:broad.example/7', '192.0.2.10', true],
    ['exists:%{i}.x.broad.example', '192.0.2.10', false],
    ['exists:host.broad.example', '192.0.2.10', true],
    ['all', '192.0.2.10', true],
  ]
  for (const [mechanism, ip, broad] of cases) {
    dns.setZone({
      ...ZONE,
      'broad.example': [{ TXT: `v=spf1 ${mechanism} -all` }, { MX: [10, 'host.broad.example'] }],
      'host.broad.example': [{ A: '192.0.2.77' }, { AAAA: '2001:db8::77' }],
      '192.0.2.10.x.broad.example': [{ A: '127.0.0.2' }],
    })
    const r = await check(ip, 'a@broad.example')
    t.equal(r.result, 'pass', `${mechanism} from ${ip}: ${r.reason}`)
    t.equal(r.broad, broad, `${mechanism} from ${ip}: ${broad ? 'broad' : 'narrow'}`)
  }
  dns.setZone(ZONE)
})

t.test('the reason of a permerror names what is wrong; a target that is no domain name matches nothing', async (t) => {
  const badIp = await check('300.1.2.3', 'alice@example.org')
  t.same([badIp.result, badIp.reason], ['permerror', 'bad client address 300.1.2.3'])
  const redirect = await check('192.0.2.1', 'alice@redirect-bad.example')
  t.same([redirect.result, redirect.reason], ['permerror', 'redirect to an invalid domain alice'])
  const include = await check('192.0.2.1', 'alice@include-bad.example')
  t.same([include.result, include.reason], ['permerror', 'include of an invalid domain alice'])
  // A target with no A-label form is no name at all: the reason names none.
  const noALabels = await check('192.0.2.1', 'bü/cher@redirect-bad.example')
  t.same([noALabels.result, noALabels.reason], ['permerror', 'redirect to an invalid domain '])
  for (const domain of ['a-bad.example', 'mx-bad.example', 'exists-bad.example', 'a-bad3.example', 'mx-bad3.example', 'exists-bad3.example']) {
    const r = await check('192.0.2.1', `alice@${domain}`)
    t.equal(r.result, 'fail', `${domain}: the mechanism does not match, -all fails (${r.reason})`)
  }
})

// The cases below need answers no authoritative server gives on demand
// (SERVFAIL, REFUSED, a resolver that refused to send the name, an answer
// that comes too late, PTR names with a trailing dot), so a scripted
// resolver answers them: `name TYPE` -> records, MX pairs, an rcode, or
// LATE (the records one second later, after the time budget of the check).
type Scripted = string[] | { mx: Array<[number, string]> } | Exclude<Rcode, 'NOERROR'> | { late: string[] }

const T0 = 1_700_000_000_000

interface ScriptedCheck {
  ip?: string
  sender?: string
  domain?: string
  helo?: string
  ctx?: Partial<CheckHostContext>
  /** Called with `name TYPE` before each answer: a test moves the clock here, as a slow answer would. */
  onQuery?: (key: string, clock: { now: number }) => void
}

async function scripted(zone: Record<string, Scripted>, opts: ScriptedCheck = {}): Promise<{ r: SpfResult; asked: string[] }> {
  const asked: string[] = []
  const clock = { now: T0 }
  const resolver: Resolver = {
    query(name: string, type: RrType): Promise<DnsAnswer> {
      const key = `${name} ${type}`
      asked.push(key)
      opts.onQuery?.(key, clock)
      const s = zone[key]
      if (s === undefined) return Promise.resolve({ rcode: 'NXDOMAIN', records: [], mx: [] })
      if (typeof s === 'string') return Promise.resolve({ rcode: s, records: [], mx: [] })
      if (Array.isArray(s)) return Promise.resolve({ rcode: 'NOERROR', records: s, mx: [] })
      if ('late' in s) {
        return new Promise((resolve) => setTimeout(() => resolve({ rcode: 'NOERROR', records: s.late, mx: [] }), 1000).unref())
      }
      return Promise.resolve({ rcode: 'NOERROR', records: [], mx: s.mx.map(([preference, exchange]) => ({ preference, exchange })) })
    },
    cached: () => undefined,
    stats: () => ({ queries: asked.length, cacheHits: 0, timeouts: 0, cacheEntries: 0, sockets: 0 }),
    close: () => undefined,
  }
  const sender = opts.sender ?? 'alice@d.example'
  const input = { ip: opts.ip ?? '192.0.2.10', sender, domain: opts.domain ?? sender.slice(sender.lastIndexOf('@') + 1), helo: opts.helo ?? 'mail.example.net' }
  const r = await checkHost(input, { resolver, now: () => clock.now, ...opts.ctx })
  return { r, asked }
}

t.test('which domains can be checked (RFC 7208 §4.3): the others give none without a lookup', async (t) => {
  const label = (c: string, n: number): string => c.repeat(n)
  const name253 = `${label('a', 63)}.${label('b', 63)}.${label('c', 63)}.${label('d', 61)}`
  const cases: Array<[string, boolean]> = [
    ['d.example', true],
    ['d.example.', true],
    // A trailing dot is no label, also after the one the given domain loses.
    [`d.${label('e', 50)}..`, true],
    [`${label('x', 63)}.example`, true],
    [name253, true],
    [`${name253}e`, false],
    [`${label('x', 64)}.example`, false],
    ['localhost', false],
    ['d..example', false],
    ['.d.example', false],
    ['[192.0.2.1]', false],
    ['', false],
  ]
  for (const [domain, checkable] of cases) {
    const stripped = domain.replace(/\.$/, '')
    const { r, asked } = await scripted({ [`${stripped} TXT`]: ['v=spf1 +all'] }, { domain, sender: `alice@${domain}` })
    if (checkable) {
      t.equal(r.result, 'pass', `${domain} (${domain.length}) is checked: ${r.reason}`)
      t.same(asked, [`${stripped} TXT`])
    } else {
      t.same([r.result, r.reason], ['none', `no checkable domain in ${JSON.stringify(domain)}`], `${domain} (${domain.length}) cannot be checked`)
      t.same(asked, [], 'and nothing is looked up for it')
    }
  }
})

t.test('DNS errors are temperror naming the rcode, name and type; the limits and each outcome have their reason', async (t) => {
  const D = 'd.example'
  const many = (n: number, term: (i: number) => string): string => Array.from({ length: n }, (_, i) => term(i)).join(' ')
  const cases: Array<[string, Record<string, Scripted>, string, string]> = [
    ['TXT SERVFAIL', { [`${D} TXT`]: 'SERVFAIL' }, 'temperror', `DNS servfail for ${D} TXT`],
    ['TXT TIMEOUT', { [`${D} TXT`]: 'TIMEOUT' }, 'temperror', `DNS timeout for ${D} TXT`],
    ['TXT REFUSED', { [`${D} TXT`]: 'REFUSED' }, 'temperror', `DNS refused for ${D} TXT`],
    ['TXT not sent (ERROR)', { [`${D} TXT`]: 'ERROR' }, 'none', `no SPF record for ${D}`],
    ['no record', {}, 'none', `no SPF record for ${D}`],
    ['two records', { [`${D} TXT`]: ['v=spf1 -all', 'v=spf1 +all'] }, 'permerror', `${D} has more than one SPF record`],
    ['a: SERVFAIL', { [`${D} TXT`]: ['v=spf1 a:h.example -all'], 'h.example A': 'SERVFAIL' }, 'temperror', 'DNS servfail for h.example A'],
    ['a: TIMEOUT', { [`${D} TXT`]: ['v=spf1 a:h.example -all'], 'h.example A': 'TIMEOUT' }, 'temperror', 'DNS timeout for h.example A'],
    ['a: REFUSED', { [`${D} TXT`]: ['v=spf1 a:h.example -all'], 'h.example A': 'REFUSED' }, 'temperror', 'DNS refused for h.example A'],
    ['a: ERROR of a dotted name', { [`${D} TXT`]: ['v=spf1 a:h.example -all'], 'h.example A': 'ERROR' }, 'temperror', 'DNS error for h.example A'],
    ['exists: SERVFAIL', { [`${D} TXT`]: ['v=spf1 exists:h.example -all'], 'h.example A': 'SERVFAIL' }, 'temperror', 'DNS servfail for h.example A'],
    ['mx: REFUSED', { [`${D} TXT`]: ['v=spf1 mx -all'], [`${D} MX`]: 'REFUSED' }, 'temperror', `DNS refused for ${D} MX`],
    ['an A answer that is no address', { [`${D} TXT`]: ['v=spf1 a:h.example -all'], 'h.example A': ['no-address'] }, 'fail', 'mechanism -all matched'],
    ['an A answer of the other family', { [`${D} TXT`]: ['v=spf1 a:h.example -all'], 'h.example A': ['2001:db8::1'] }, 'fail', 'mechanism -all matched'],
    ['three void lookups', { [`${D} TXT`]: ['v=spf1 a:n1.example exists:n2.example mx:n3.example -all'] }, 'permerror', 'more than 2 void DNS lookups'],
    ['two void lookups', { [`${D} TXT`]: ['v=spf1 a:n1.example exists:n2.example -all'] }, 'fail', 'mechanism -all matched'],
    ['11 DNS-querying terms', { [`${D} TXT`]: [`v=spf1 ${many(11, (i) => `a:h${i}.example`)} -all`], ...Object.fromEntries(Array.from({ length: 11 }, (_, i) => [`h${i}.example A`, ['192.0.2.99']])) }, 'permerror', 'more than 10 DNS-querying terms'],
    ['no mechanism matched', { [`${D} TXT`]: ['v=spf1 ip4:192.0.2.99'] }, 'neutral', 'no mechanism matched'],
    ['redirect to no record', { [`${D} TXT`]: ['v=spf1 redirect=r.example'] }, 'permerror', 'redirect target r.example has no SPF record'],
    ['redirect to a pass', { [`${D} TXT`]: ['v=spf1 redirect=r.example'], 'r.example TXT': ['v=spf1 ip4:192.0.2.10 -all'] }, 'pass', 'mechanism ip4:192.0.2.10 matched'],
    ['include of no record', { [`${D} TXT`]: ['v=spf1 include:i.example -all'] }, 'permerror', 'include:i.example: no SPF record for i.example'],
    ['include of a permerror', { [`${D} TXT`]: ['v=spf1 include:i.example -all'], 'i.example TXT': ['v=spf1 bogus'] }, 'permerror', 'unknown mechanism bogus'],
    ['include of a temperror', { [`${D} TXT`]: ['v=spf1 include:i.example -all'], 'i.example TXT': 'SERVFAIL' }, 'temperror', 'DNS servfail for i.example TXT'],
    ['include of a fail', { [`${D} TXT`]: ['v=spf1 include:i.example ~all'], 'i.example TXT': ['v=spf1 -all'] }, 'softfail', 'mechanism ~all matched'],
    ['mx: a single-label host', { [`${D} TXT`]: ['v=spf1 mx -all'], [`${D} MX`]: { mx: [[10, 'mx1']] }, 'mx1 A': ['192.0.2.10'] }, 'pass', 'mechanism mx matched'],
    ['10 MX records', { [`${D} TXT`]: ['v=spf1 mx -all'], [`${D} MX`]: { mx: Array.from({ length: 10 }, (_, i) => [i, `mx${i}.example`]) }, ...Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`mx${i}.example A`, ['192.0.2.99']])) }, 'fail', 'mechanism -all matched'],
    ['11 MX records', { [`${D} TXT`]: ['v=spf1 mx -all'], [`${D} MX`]: { mx: Array.from({ length: 11 }, (_, i) => [i, `mx${i}.example`]) } }, 'permerror', `more than 10 MX records for ${D}`],
  ]
  for (const [what, zone, result, reason] of cases) {
    const { r } = await scripted(zone, { ctx: { voidLimit: 2 } })
    t.same([r.result, r.reason], [result, reason], what)
  }
})

t.test('an MX host the resolver would not send (ERROR): temperror for a dotted name, else no address (not even a void lookup)', async (t) => {
  // voidLimit 0: a single void lookup would be a permerror.
  // A label over 63 bytes is what makes the resolver refuse these names.
  const long = 'x'.repeat(64)
  const cases: Array<[string, string, string]> = [
    [`mx1.${long}.org`, 'temperror', `DNS error for mx1.${long}.org A`],
    [`mx1.${long}..org`, 'fail', 'mechanism -all matched'],
    [`.mx1.${long}.org`, 'fail', 'mechanism -all matched'],
    [`mx1.${long}.org.`, 'fail', 'mechanism -all matched'],
    [long, 'fail', 'mechanism -all matched'],
    ['.', 'fail', 'mechanism -all matched'],
  ]
  for (const [exchange, result, reason] of cases) {
    const { r } = await scripted({ 'd.example TXT': ['v=spf1 mx -all'], 'd.example MX': { mx: [[10, exchange]] }, [`${exchange} A`]: 'ERROR' }, { ctx: { voidLimit: 0 } })
    t.same([r.result, r.reason], [result, reason], `MX ${exchange}`)
  }
})

t.test('the explanation of a fail: %{t}, %{r}, %{i}, an exp= that is no domain name, an exp= text that comes too late', async (t) => {
  const D = 'd.example'
  const nibbles = '2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1'
  const cases: Array<[string, Record<string, Scripted>, ScriptedCheck, string]> = [
    ['%{t} is the clock in seconds, %{r} without a receiver is unknown', { 'why.d.example TXT': ['t=%{t} r=%{r}'] }, {}, 't=1700000000 r=unknown'],
    ['%{r} names the receiver', { 'why.d.example TXT': ['r=%{r}'] }, { ctx: { receiver: 'mx.example.org' } }, 'r=mx.example.org'],
    ['%{i} of an IPv6 client written in lower case', { 'why.d.example TXT': ['i=%{i}'] }, { ip: '2001:db8::1' }, `i=${nibbles}`],
    ['%{i} of an IPv6 client written in upper case', { 'why.d.example TXT': ['i=%{i}'] }, { ip: '2001:DB8::1' }, `i=${nibbles.toUpperCase()}`],
    ['an exp= TXT that does not come within the time budget', { 'why.d.example TXT': { late: ['too late'] } }, { ctx: { lookupTimeMs: 5 } }, DEFAULT_EXPLANATION],
  ]
  for (const [what, zone, opts, explanation] of cases) {
    const { r } = await scripted({ [`${D} TXT`]: ['v=spf1 -all exp=why.d.example'], ...zone }, opts)
    t.same([r.result, r.explanation], ['fail', explanation], what)
  }
  const { r, asked } = await scripted({ [`${D} TXT`]: ['v=spf1 -all exp=%{l}'], 'alice TXT': ['alice may not send'] })
  t.same([r.result, r.explanation], ['fail', DEFAULT_EXPLANATION], 'exp= that expands to no domain name (the local part): the default explanation')
  t.same(asked, [`${D} TXT`], 'without a lookup')
})

t.test('%{p}: the validated name that is the domain, else one under it, else the first; unknown when there is none', async (t) => {
  const D = 'd.example'
  const PTR = '10.2.0.192.in-addr.arpa PTR'
  const client = ['192.0.2.10']
  const cases: Array<[string, Record<string, Scripted>, ScriptedCheck, string]> = [
    ['the domain itself', { [PTR]: ['x.other.example', D], 'x.other.example A': client, [`${D} A`]: client }, {}, 'p=d.example'],
    ['a name under the domain', { [PTR]: ['x.other.example', 'mail.d.example'], 'x.other.example A': client, 'mail.d.example A': client }, {}, 'p=mail.d.example'],
    ['the first validated name', { [PTR]: ['x.other.example', 'y.other.example'], 'x.other.example A': client, 'y.other.example A': client }, {}, 'p=x.other.example'],
    ['a name that does not give the client back', { [PTR]: [D], [`${D} A`]: ['192.0.2.11'] }, {}, 'p=unknown'],
    ['PTR SERVFAIL', { [PTR]: 'SERVFAIL' }, {}, 'p=unknown'],
    ['no time left for the PTR lookup', { [PTR]: [D], [`${D} A`]: client },
      { onQuery: (key, clock) => { if (key === 'why.d.example TXT') clock.now += 20000 } }, 'p=unknown'],
  ]
  for (const [what, zone, opts, explanation] of cases) {
    const { r } = await scripted({ [`${D} TXT`]: ['v=spf1 -all exp=why.d.example'], 'why.d.example TXT': ['p=%{p}'], ...zone }, opts)
    t.same([r.result, r.explanation], ['fail', explanation], what)
  }
})

t.test('ptr: void lookups, at most 10 names tried, a trailing dot; %{p} is no void lookup', async (t) => {
  const D = 'd.example'
  const PTR = '10.2.0.192.in-addr.arpa PTR'
  const client = ['192.0.2.10']
  const names = Array.from({ length: 11 }, (_, i) => `h${i}.d.example`)
  const cases: Array<[string, Record<string, Scripted>, number, string, string]> = [
    ['no PTR name: a void lookup', {}, 0, 'permerror', 'more than 0 void DNS lookups'],
    ['no PTR name, one void lookup allowed', {}, 1, 'fail', 'mechanism -all matched'],
    ['a validated PTR name is no void lookup', { [PTR]: ['mail.d.example'], 'mail.d.example A': client }, 0, 'pass', 'mechanism ptr matched'],
    ['PTR SERVFAIL: no name, and no void lookup', { [PTR]: 'SERVFAIL' }, 0, 'fail', 'mechanism -all matched'],
    ['a PTR name with a trailing dot', { [PTR]: ['mail.d.example.'], 'mail.d.example A': client }, 0, 'pass', 'mechanism ptr matched'],
    ['the 10th PTR name is tried', { [PTR]: names, [`${names[9]} A`]: client }, 0, 'pass', 'mechanism ptr matched'],
    ['the 11th is not', { [PTR]: names, [`${names[10]} A`]: client }, 0, 'fail', 'mechanism -all matched'],
  ]
  for (const [what, zone, voidLimit, result, reason] of cases) {
    const { r } = await scripted({ [`${D} TXT`]: ['v=spf1 ptr -all'], ...zone }, { ctx: { voidLimit } })
    t.same([r.result, r.reason], [result, reason], what)
  }
  const { r, asked } = await scripted({ [`${D} TXT`]: ['v=spf1 exists:%{p}.x.d.example -all'] }, { ctx: { voidLimit: 1 } })
  t.same([r.result, r.reason], ['fail', 'mechanism -all matched'], 'the PTR lookup of %{p} is not counted: only the exists: one is void')
  t.ok(asked.includes('unknown.x.d.example A'))
})

t.test('which fields a result has: explanation for a fail only, broad for a pass only, record when there is one', async (t) => {
  const D = 'd.example'
  const PTR = '10.2.0.192.in-addr.arpa PTR'
  const cases: Array<[string, Record<string, Scripted>, Partial<SpfResult>]> = [
    ['softfail', { [`${D} TXT`]: ['v=spf1 ~all'] }, { result: 'softfail', mechanism: '~all', record: 'v=spf1 ~all' }],
    ['fail', { [`${D} TXT`]: ['v=spf1 -all'] }, { result: 'fail', mechanism: '-all', record: 'v=spf1 -all', explanation: DEFAULT_EXPLANATION }],
    ['none', {}, { result: 'none' }],
    ['a pass by ptr is narrow', { [`${D} TXT`]: ['v=spf1 ptr -all'], [PTR]: ['mail.d.example'], 'mail.d.example A': ['192.0.2.10'] },
      { result: 'pass', mechanism: 'ptr', record: 'v=spf1 ptr -all', broad: false }],
    ['a pass by an include: whose +all matched is broad', { [`${D} TXT`]: ['v=spf1 include:i.example -all'], 'i.example TXT': ['v=spf1 +all'] },
      { result: 'pass', mechanism: 'include:i.example', record: 'v=spf1 include:i.example -all', broad: true }],
    ['a pass by an include: whose ip4: matched is narrow', { [`${D} TXT`]: ['v=spf1 include:i.example -all'], 'i.example TXT': ['v=spf1 ip4:192.0.2.10'] },
      { result: 'pass', mechanism: 'include:i.example', record: 'v=spf1 include:i.example -all', broad: false }],
  ]
  for (const [what, zone, want] of cases) {
    const { r } = await scripted(zone)
    const { reason: _reason, domain: _domain, ...fields } = r
    t.strictSame(fields, want, what)
  }
})

t.test('the time budget: a lookup once it is spent is temperror; an answer later than it is a timeout; no timer is left', async (t) => {
  const before = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
  const quick = await scripted({ 'd.example TXT': ['v=spf1 a mx -all'], 'd.example A': ['192.0.2.99'], 'd.example MX': { mx: [[10, 'd.example']] } })
  t.equal(quick.r.result, 'fail')
  t.equal(process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length, before, 'each lookup clears its timer when the answer comes')

  const spent = await scripted({ 'd.example TXT': ['v=spf1 a -all'], 'd.example A': ['192.0.2.10'] },
    { onQuery: (key, clock) => { if (key === 'd.example TXT') clock.now += 20000 } })
  t.same([spent.r.result, spent.r.reason], ['temperror', 'lookup time limit exceeded'], 'the record took the whole budget: no time for the a lookup')
  const left = await scripted({ 'd.example TXT': ['v=spf1 a -all'], 'd.example A': ['192.0.2.10'] },
    { onQuery: (key, clock) => { if (key === 'd.example TXT') clock.now += 19999 } })
  t.same([left.r.result, left.r.reason], ['pass', 'mechanism a matched'], 'a millisecond left is enough for an answer that comes at once')

  const late = await scripted({ 'd.example TXT': ['v=spf1 a:h.example -all'], 'h.example A': { late: ['192.0.2.10'] } }, { ctx: { lookupTimeMs: 5 } })
  t.same([late.r.result, late.r.reason], ['temperror', 'DNS timeout for h.example A'], 'an answer after the budget is a timeout')
})
