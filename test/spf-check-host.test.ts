// check_host() itself (lib/spf/check-host.ts) on cases the RFC 7208 suite
// leaves out: internationalised names, an empty exp= text. Against a DNS
// server on loopback.
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
  // exp= texts that explain nothing.
  'empty-exp.example': [{ TXT: 'v=spf1 -all exp=why.empty-exp.example' }],
  'why.empty-exp.example': [{ TXT: '' }],
  'blank-exp.example': [{ TXT: 'v=spf1 -all exp=why.blank-exp.example' }],
  'why.blank-exp.example': [{ TXT: '   ' }],
  'macro-blank-exp.example': [{ TXT: 'v=spf1 -all exp=why.macro-blank-exp.example' }],
  'why.macro-blank-exp.example': [{ TXT: '%_%_' }],
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

t.test('an exp= text that is empty or white space after expansion gives the default explanation', async (t) => {
  for (const domain of ['empty-exp.example', 'blank-exp.example', 'macro-blank-exp.example']) {
    const r = await check('192.0.2.10', `a@${domain}`)
    t.equal(r.result, 'fail', domain)
    t.equal(r.explanation, DEFAULT_EXPLANATION, `${domain}: the default explanation`)
  }
})
