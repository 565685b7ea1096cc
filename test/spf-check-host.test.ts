// check_host() itself (lib/spf/check-host.ts) on cases the RFC 7208 suite
// leaves out: internationalised names, a sender without a local part, an
// empty exp= text, IPv4-mapped ip6 networks, and where a pass stops being
// narrow enough to authenticate a domain. Against a DNS server on loopback.
import t from 'tap'
import { checkHost, DEFAULT_EXPLANATION, type SpfResult } from '../lib/spf/check-host'
import { createResolver } from '../lib/dns/resolver'
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
  for (const domain of ['a-bad.example', 'mx-bad.example', 'exists-bad.example', 'a-bad3.example', 'mx-bad3.example', 'exists-bad3.example']) {
    const r = await check('192.0.2.1', `alice@${domain}`)
    t.equal(r.result, 'fail', `${domain}: the mechanism does not match, -all fails (${r.reason})`)
  }
})
