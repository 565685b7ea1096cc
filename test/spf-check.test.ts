// The SPF check through decide(): every policyd-spf option and every reply
// text, against a DNS server on loopback. Greylisting is off here unless a
// test is about the two together.
import t from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Database from 'better-sqlite3'
import { loadConfig, type Config } from '../lib/config'
import { decide, MOCK_ACTION, type DecideContext } from '../lib/decide'
import { BoundedMap } from '../lib/bounded-map'
import { HeaderQueue } from '../lib/header-queue'
import { toPolicyRequest } from '../lib/request'
import { SqliteStore } from '../lib/store/sqlite'
import { createGreylistWhitelists } from '../lib/greylist/lists'
import { createSpfContext } from '../lib/spf/context'
import { actionFor, checkSpf } from '../lib/spf/check'
import { toPolicy } from '../lib/spf/policy'
import type { Resolver } from '../lib/dns/resolver'
import { startDnsServer, type DnsServer, type Zone } from './helpers/dns-server'

const ZONE: Zone = {
  'pass.test': [{ TXT: 'v=spf1 ip4:192.0.2.0/24 -all' }],
  'fail.test': [{ TXT: 'v=spf1 -all' }],
  'fail2.test': [{ TXT: 'v=spf1 ip4:198.51.100.1 -all' }],
  'exp.test': [{ TXT: 'v=spf1 -all exp=why.exp.test' }],
  'why.exp.test': [{ TXT: "%{i} is not one of %{d}'s designated mail servers." }],
  'softfail.test': [{ TXT: 'v=spf1 ~all' }],
  'neutral.test': [{ TXT: 'v=spf1 ?all' }],
  'perm.test': [{ TXT: 'v=spf1 foo:bar -all' }],
  'temp.test': ['TIMEOUT'],
  'broad.test': [{ TXT: 'v=spf1 +all' }],
  'pool.test': [{ TXT: 'v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all' }],
  'helo.pass.test': [{ TXT: 'v=spf1 a -all' }, { A: '192.0.2.10' }],
  'relay.test': [{ A: '192.0.2.10' }],
  'other.relay.test': [{ A: '203.0.113.9' }],
  'nospf.test': [{ A: '192.0.2.99' }],
  '10.2.0.192.in-addr.arpa': [{ PTR: 'mx1.trusted.test' }],
  'mx1.trusted.test': [{ A: '192.0.2.10' }],
  '11.2.0.192.in-addr.arpa': [{ PTR: 'mx1.badtrusted.test' }],
  'mx1.badtrusted.test': [{ A: '192.0.2.11' }],
  '12.2.0.192.in-addr.arpa': [{ PTR: 'liar.trusted.test' }],
  'liar.trusted.test': [{ A: '203.0.113.12' }],
  // bücher.test and mail-bücher.test, by their A-labels.
  'xn--bcher-kva.test': [{ TXT: 'v=spf1 ip4:192.0.2.0/24 -all' }],
  'neutral.xn--bcher-kva.test': [{ TXT: 'v=spf1 ?all' }],
  'xn--mail-bcher-feb.test': [{ TXT: 'v=spf1 a -all' }, { A: '192.0.2.10' }],
  // exp= texts that explain nothing.
  'empty-exp.test': [{ TXT: 'v=spf1 -all exp=why.empty-exp.test' }],
  'why.empty-exp.test': [{ TXT: '' }],
  'blank-exp.test': [{ TXT: 'v=spf1 -all exp=why.blank-exp.test' }],
  'why.blank-exp.test': [{ TXT: ' %_ ' }],
  'dot-exp.test': [{ TXT: 'v=spf1 -all exp=why.dot-exp.test' }],
  'why.dot-exp.test': [{ TXT: '.' }],
  // Either side of the broad-pass boundary: /8 and /16 still name senders, /7 and /15 do not.
  'slash8.test': [{ TXT: 'v=spf1 ip4:192.0.0.0/8 ip6:2001::/16 -all' }],
  'slash7.test': [{ TXT: 'v=spf1 ip4:192.0.0.0/7 ip6:2000::/15 -all' }],
  // Passes only when %{o}, the sender's domain, is the checked domain: a HELO name or a Domain_Whitelist entry stands for postmaster@itself.
  'macro.test': [{ TXT: 'v=spf1 exists:%{o}.ok.test -all' }],
  'macro.test.ok.test': [{ A: '127.0.0.2' }],
  // v=spf1 -all written with more white space: still a domain that sends no mail.
  'nomail-spaces.test': [{ TXT: 'v=spf1   -all' }],
  'nomail-trailing.test': [{ TXT: 'v=spf1 -all ' }],
}

let dns: DnsServer
t.before(async () => {
  dns = await startDnsServer(ZONE)
})
t.teardown(() => dns.close())

function config(over: Record<string, string> = {}): Config {
  const l = loadConfig({
    cli: {
      greylist_whitelist_clients: '', greylist_whitelist_recipients: '', greylist_enabled: 'no', hostname: 'mx.example.org',
      dns_servers: `127.0.0.1:${dns.port}`, Lookup_Time: '1', Whitelist_Lookup_Time: '1', ...over,
    },
    configPath: '/dev/null', env: {}, readFile: () => '', parseDotenv: () => () => ({}),
  })
  if (l.errors.length) throw new Error(l.errors.join('; '))
  return l.config
}

interface Harness {
  ctx: DecideContext
  dbPath: string
  logs: string[]
  ask: (over?: Record<string, string>, now?: number) => Promise<string>
  /** The SPF verdict of the decision: check, severity, reason and fields, as the decision line logs them. */
  verdict: (over?: Record<string, string>, now?: number) => Promise<unknown>
}

/** Milliseconds added to the real clock: tests move time on instead of sleeping. */
let clockOffset = 0

function harness(t: Tap.Test, over: Record<string, string> = {}, resolver?: Resolver): Harness {
  const cfg = config(over)
  const logs: string[] = []
  const log = (_l: number, m: string): void => void logs.push(m)
  const dbDir = fs.mkdtempSync(path.join(os.tmpdir(), 'spf-check-'))
  const store = new SqliteStore({ path: path.join(dbDir, 'g.sqlite'), busyTimeoutMs: 100, renameCorrupt: true, log: () => undefined })
  const spf = createSpfContext(cfg, { hostname: 'mx.example.org', log, now: () => Date.now() + clockOffset })
  if (resolver) spf.resolver = resolver
  t.teardown(() => {
    store.close()
    spf.resolver.close()
    fs.rmSync(dbDir, { recursive: true, force: true })
  })
  const ctx: DecideContext = {
    config: cfg,
    log,
    logStateChange: (_topic, _state, _l, msg) => logs.push(msg),
    headers: new HeaderQueue(16, log),
    spf: () => spf,
    greylist: {
      config: cfg, store, whitelists: createGreylistWhitelists(cfg, log, () => 0), headerSent: new BoundedMap(16),
      version: () => '9.9.9', hostname: 'mx.example.org', log, logStateChange: () => undefined,
    },
  }
  let n = 0
  const run = async (o: Record<string, string>, now: number) => {
    const req = toPolicyRequest(new Map(Object.entries({
      request: 'smtpd_access_policy', protocol_state: 'RCPT', client_address: '192.0.2.10', client_name: 'unknown',
      helo_name: 'mail.example.net', sender: 'alice@pass.test', recipient: 'bob@example.org', instance: `i${n++}`, ...o,
    })))
    return decide(req, ctx, now)
  }
  const ask = async (o: Record<string, string> = {}, now = 1_800_000_000): Promise<string> => (await run(o, now)).action
  const verdict = async (o: Record<string, string> = {}, now = 1_800_000_000): Promise<unknown> => {
    const spf = (await run(o, now)).verdicts.find((v) => v.check === 'spf')
    return spf && { check: spf.check, severity: spf.severity, reason: spf.reason, fields: spf.fields ?? {} }
  }
  return { ctx, logs, ask, verdict, dbPath: path.join(dbDir, 'g.sqlite') }
}

const WHY = 'Please see http://www.openspf.net/Why?s='

t.test('MAIL FROM results and their replies with the default policy', async (t) => {
  const { ask } = harness(t)
  const facts = (from: string): string => `client-ip=192.0.2.10; helo=mail.example.net; envelope-from="${from}"; receiver=example.org`
  const cases: Array<[string, string]> = [
    ['alice@pass.test', `PREPEND Received-SPF: Pass (mailfrom) identity=mailfrom; ${facts('alice@pass.test')}`],
    ['alice@fail2.test', `550 5.7.23 Message rejected due to: SPF fail - not authorized. ${WHY}mfrom;id=alice@fail2.test;ip=192.0.2.10;r=example.org`],
    ['alice@exp.test', `550 5.7.23 Message rejected due to: 192.0.2.10 is not one of exp.test's designated mail servers. ${WHY}mfrom;id=alice@exp.test;ip=192.0.2.10;r=example.org`],
    ['alice@softfail.test', `PREPEND Received-SPF: Softfail (mailfrom) identity=mailfrom; ${facts('alice@softfail.test')}`],
    ['alice@neutral.test', `PREPEND Received-SPF: Neutral (mailfrom) identity=mailfrom; ${facts('alice@neutral.test')}`],
    ['alice@nospf.test', `PREPEND Received-SPF: None (mailfrom) identity=mailfrom; ${facts('alice@nospf.test')}`],
    ['alice@perm.test', `PREPEND Received-SPF: Permerror (mailfrom) identity=mailfrom; ${facts('alice@perm.test')}`],
    ['alice@temp.test', `PREPEND Received-SPF: Temperror (mailfrom) identity=mailfrom; ${facts('alice@temp.test')}`],
  ]
  for (const [sender, want] of cases) t.equal(await ask({ sender }), want, sender)
})

t.test('reject and defer policies, codes and texts', async (t) => {
  const rows: Array<[Record<string, string>, Record<string, string>, string]> = [
    [{ Mail_From_reject: 'Softfail' }, { sender: 'a@softfail.test' }, `550 5.7.23 Message rejected due to: domain owner discourages use of this host. ${WHY}mfrom;id=a@softfail.test;ip=192.0.2.10;r=example.org`],
    [{ Mail_From_reject: 'Softfail' }, { sender: 'a@neutral.test' }, 'PREPEND Received-SPF: Neutral (mailfrom)'],
    [{ Mail_From_reject: 'SPF_Not_Pass' }, { sender: 'a@neutral.test' }, `550 5.7.23 Message rejected due to: access neither permitted nor denied. ${WHY}mfrom;id=a@neutral.test;`],
    [{ Mail_From_reject: 'SPF_Not_Pass' }, { sender: 'a@nospf.test' }, 'PREPEND Received-SPF: None (mailfrom)'],
    [{ Mail_From_reject: 'False' }, { sender: 'a@fail2.test' }, 'PREPEND Received-SPF: Fail (mailfrom) identity=mailfrom;'],
    [{ Mail_From_reject: 'False', PermError_reject: 'yes', TempError_Defer: 'yes' }, { sender: 'a@perm.test' }, 'PREPEND Received-SPF: Permerror (mailfrom)'],
    [{ PermError_reject: 'True' }, { sender: 'a@perm.test' }, '550 5.7.24 Message rejected due to: SPF Permanent Error: unknown mechanism foo. Please see http://www.openspf.net/Why?s=mfrom;id=a@perm.test;ip=192.0.2.10;r=example.org'],
    [{ TempError_Defer: 'True' }, { sender: 'a@temp.test' }, 'DEFER_IF_PERMIT 4.7.24 Message deferred due to: SPF Temporary Error: '],
    [{ SPF_Enhanced_Status_Codes: 'No' }, { sender: 'a@fail2.test' }, '550 Message rejected due to: SPF fail - not authorized.'],
    [{ SPF_Enhanced_Status_Codes: 'No', TempError_Defer: 'yes' }, { sender: 'a@temp.test' }, 'DEFER_IF_PERMIT Message deferred due to: SPF Temporary Error'],
    [{ Reject_Not_Pass_Domains: 'softfail.test', SPF_Enhanced_Status_Codes: 'No', Hide_Receiver: 'Yes' }, { sender: 'a@softfail.test' },
      `550 Message rejected due to: Receiver policy for SPF Softfail. ${WHY}mfrom;id=a@softfail.test;ip=192.0.2.10;r=<UNKNOWN>`],
    [{ Reject_Not_Pass_Domains: 'test' }, { sender: 'a@neutral.test' }, '550 5.7.23 Message rejected due to: Receiver policy for SPF Neutral.'],
    [{ Reject_Not_Pass_Domains: 'neutral.test' }, { sender: 'a@sub.neutral.test' }, 'PREPEND Received-SPF: None (mailfrom)'],
    [{ Reason_Message: '{rejectdefer}: {spf} <{url}>' }, { sender: 'a@fail2.test' }, `550 5.7.23 rejected: SPF fail - not authorized <http://www.openspf.net/Why?s=mfrom;id=a@fail2.test;ip=192.0.2.10;r=example.org>`],
    [{ No_Mail: 'yes' }, { sender: 'a@fail2.test' }, 'PREPEND Received-SPF: Fail (mailfrom)'],
    [{ No_Mail: 'yes' }, { sender: 'a@fail.test' }, '550 5.7.23 Message rejected due to: SPF fail - not authorized.'],
    [{ TestOnly: '0' }, { sender: 'a@fail2.test' }, 'DUNNO'],
    [{ TestOnly: '0' }, { sender: 'a@pass.test' }, 'PREPEND Received-SPF: Pass (mailfrom)'],
    [{ Header_Type: 'None' }, { sender: 'a@pass.test' }, 'DUNNO'],
    [{ Header_Type: 'None' }, { sender: 'a@fail2.test' }, '550 5.7.23'],
    [{ Mail_From_reject: 'No_Check' }, { sender: 'a@fail2.test', helo_name: 'helo.pass.test' },
      'PREPEND Received-SPF: Pass (sender SPF authorized) identity=helo; client-ip=192.0.2.10; helo=helo.pass.test; envelope-from="a@fail2.test"; receiver=example.org'],
    [{ Mail_From_reject: 'No_Check', HELO_reject: 'No_Check' }, { sender: 'a@fail2.test' }, 'DUNNO'],
    [{ Mail_From_pass_restriction: 'spf_fin, passed_spf' }, { sender: 'a@pass.test' }, 'spf_fin, passed_spf'],
    [{ Mail_From_pass_restriction: 'passed_spf' }, { sender: 'a@softfail.test' }, 'PREPEND Received-SPF: Softfail'],
    [{ HELO_pass_restriction: 'helo_passed_spf' }, { sender: 'a@nospf.test', helo_name: 'helo.pass.test' }, 'helo_passed_spf'],
    [{ HELO_pass_restriction: 'helo_passed_spf' }, { sender: 'a@fail2.test', helo_name: 'helo.pass.test' }, '550 5.7.23'],
    [{ Prospective: '198.51.100.1' }, { sender: 'a@fail2.test' }, 'DUNNO'],
    [{ Prospective: '198.51.100.1' }, { sender: 'a@pass.test' }, '550 5.7.23 Message rejected due to: SPF fail - not authorized. Please see http://www.openspf.net/Why?s=mfrom;id=a@pass.test;ip=198.51.100.1;'],
  ]
  for (const [over, req, want] of rows) {
    const { ask } = harness(t, over)
    const got = await ask(req)
    t.ok(got.startsWith(want), `${JSON.stringify(over)} ${JSON.stringify(req)}\n   got: ${got}\n  want: ${want}...`)
  }
})

t.test('the HELO identity: null sender, HELO_reject, and the MAIL FROM header (CVE-2019-20790)', async (t) => {
  const { ask } = harness(t)
  t.equal(
    await ask({ sender: '', helo_name: 'helo.pass.test' }),
    'PREPEND Received-SPF: Pass (sender SPF authorized) identity=helo; client-ip=192.0.2.10; helo=helo.pass.test; envelope-from="<>"; receiver=example.org',
  )
  t.equal(await ask({ sender: '', helo_name: 'mail.example.net' }), 'PREPEND Received-SPF: None (no SPF record) identity=helo; client-ip=192.0.2.10; helo=mail.example.net; envelope-from="<>"; receiver=example.org')
  t.equal(await ask({ sender: 'a@pass.test', helo_name: 'fail2.test' }), `550 5.7.23 Message rejected due to: SPF fail - not authorized. ${WHY}helo;id=fail2.test;ip=192.0.2.10;r=example.org`)
  // policyd-spf would write the HELO Pass here; the MAIL FROM identity was checked and found nothing.
  t.equal(
    await ask({ sender: 'a@nospf.test', helo_name: 'helo.pass.test' }),
    'PREPEND Received-SPF: None (mailfrom) identity=mailfrom; client-ip=192.0.2.10; helo=helo.pass.test; envelope-from="a@nospf.test"; receiver=example.org',
  )
  t.equal(await ask({ sender: 'a@pass.test', helo_name: '' }), 'PREPEND Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.10; helo=pass.test; envelope-from="a@pass.test"; receiver=example.org', 'no HELO: the sender domain stands in')

  const nul = harness(t, { HELO_reject: 'Null' })
  t.match(await nul.ask({ sender: 'a@pass.test', helo_name: 'fail2.test' }), /^PREPEND Received-SPF: Pass \(mailfrom\)/, 'Null: a HELO fail does not reject a non-null sender')
  t.match(await nul.ask({ sender: '', helo_name: 'fail2.test' }), /^550 5\.7\.23 .*s=helo;id=fail2\.test/, 'Null: it rejects the null sender')

  const soft = harness(t, { HELO_reject: 'SPF_Not_Pass' })
  t.match(await soft.ask({ helo_name: 'neutral.test' }), /^550 5\.7\.23 Message rejected due to: access neither permitted nor denied\. .*s=helo;id=neutral\.test/)
  const off = harness(t, { HELO_reject: 'False' })
  t.match(await off.ask({ sender: '', helo_name: 'fail2.test' }), /^PREPEND Received-SPF: Fail \(SPF fail - not authorized\) identity=helo/)
  const none = harness(t, { HELO_reject: 'No_Check' })
  t.equal(await none.ask({ sender: '', helo_name: 'fail2.test' }), 'DUNNO', 'No_Check: the null sender is not checked at all')
  t.match(await none.ask({ sender: 'a@pass.test', helo_name: 'fail2.test' }), /^PREPEND Received-SPF: Pass \(mailfrom\)/)
})

t.test('Authentication-Results headers (Header_Type AR)', async (t) => {
  const { ask } = harness(t, { Header_Type: 'AR' })
  t.equal(
    await ask({ sender: 'a@pass.test' }),
    'PREPEND Authentication-Results: mx.example.org; spf=pass (sender SPF authorized) smtp.mailfrom=pass.test (client-ip=192.0.2.10; helo=mail.example.net; envelope-from="a@pass.test"; receiver=example.org)',
  )
  t.equal(
    await ask({ sender: '', helo_name: 'helo.pass.test' }),
    'PREPEND Authentication-Results: mx.example.org; spf=pass (sender SPF authorized) smtp.helo=helo.pass.test (client-ip=192.0.2.10; helo=helo.pass.test; envelope-from="<>"; receiver=example.org)',
  )
  const own = harness(t, { Header_Type: 'AR', Authserv_Id: 'auth.example.org' })
  t.match(await own.ask({ sender: 'a@softfail.test' }), /^PREPEND Authentication-Results: auth\.example\.org; spf=softfail \(domain owner discourages use of this host\) smtp\.mailfrom=softfail\.test/)
  t.equal(
    await own.ask({ client_address: '127.0.0.1' }),
    'PREPEND Authentication-Results: auth.example.org; none (SPF check N/A for local connections - client-ip=127.0.0.1; helo=mail.example.net; envelope-from="alice@pass.test"; receiver=example.org)',
  )
})

t.test('exemptions, in policyd-spf order', async (t) => {
  const facts = (ip: string, helo = 'mail.example.net', from = 'a@fail2.test'): string => `client-ip=${ip}; helo=${helo}; envelope-from="${from}"; receiver=example.org`
  const dflt = harness(t)
  t.equal(await dflt.ask({ client_address: '127.0.0.1', sender: 'a@fail2.test' }), `PREPEND X-Comment: SPF check N/A for local connections - ${facts('127.0.0.1')}`)
  t.equal(await dflt.ask({ client_address: '::1', sender: 'a@fail2.test' }), `PREPEND X-Comment: SPF check N/A for local connections - ${facts('"::1"')}`, 'an IPv6 address is not a dot-atom: quoted')
  t.equal(await dflt.ask({ client_address: '::ffff:127.0.0.2', sender: 'a@fail2.test' }), `PREPEND X-Comment: SPF check N/A for local connections - ${facts('"::ffff:127.0.0.2"')}`)

  const wl = harness(t, { Whitelist: '192.0.2.0/28' })
  t.equal(await wl.ask({ sender: 'a@fail2.test' }), `PREPEND X-Comment: SPF skipped for whitelisted relay - ${facts('192.0.2.10')}`)
  t.match(await wl.ask({ sender: 'a@fail2.test', client_address: '192.0.2.20' }), /^550 5\.7\.23/)

  const dom = harness(t, { Domain_Whitelist: 'fail.test, pass.test' })
  t.equal(await dom.ask({ sender: 'a@fail2.test' }), `PREPEND X-Comment: SPF skipped for whitelisted relay domain - ${facts('192.0.2.10')}`)
  t.match(await dom.ask({ sender: 'a@fail2.test', client_address: '203.0.113.5' }), /^550 5\.7\.23/)

  const helo = harness(t, { HELO_Whitelist: 'relay.test, other.relay.test' })
  t.equal(await helo.ask({ sender: 'a@fail2.test', helo_name: 'relay.test' }), `PREPEND X-Comment: SPF skipped for whitelisted HELO domain - ${facts('192.0.2.10', 'relay.test')}`)
  t.match(await helo.ask({ sender: 'a@fail2.test', helo_name: 'other.relay.test' }), /^550 5\.7\.23/, 'a HELO name whose address is not the client is not exempt')

  const ptr = harness(t, { Domain_Whitelist_PTR: 'trusted.test' })
  t.equal(await ptr.ask({ sender: 'a@fail2.test', client_name: 'mx9.trusted.test' }), `PREPEND X-Comment: SPF skipped for PTR whitelisted relay domain - ${facts('192.0.2.10')}`, "Postfix's confirmed client_name")
  t.match(await ptr.ask({ sender: 'a@fail2.test', client_name: 'mx9.badtrusted.test' }), /^550 5\.7\.23/, 'a suffix that is not on a label boundary does not match')
  t.match(await ptr.ask({ sender: 'a@fail2.test' }), /^PREPEND X-Comment: SPF skipped for PTR whitelisted relay domain/, 'client_name unknown: the PTR name confirmed here')
  t.match(await ptr.ask({ sender: 'a@fail2.test', client_address: '192.0.2.11' }), /^550 5\.7\.23/, 'PTR mx1.badtrusted.test: no label boundary')
  t.match(await ptr.ask({ sender: 'a@fail2.test', client_address: '192.0.2.12' }), /^550 5\.7\.23/, 'a PTR name that does not resolve back is not trusted')
})

t.test('one header per message; a rejection is repeated; Per_User; Mock', async (t) => {
  const { ask } = harness(t)
  t.match(await ask({ instance: 'm1', recipient: 'a@example.org' }), /^PREPEND Received-SPF: Pass/)
  t.equal(await ask({ instance: 'm1', recipient: 'b@example.org' }), 'DUNNO', '2nd recipient: no second header')
  t.equal(await ask({ instance: 'm1', protocol_state: 'DATA', recipient: '' }), 'DUNNO', 'DATA: none either')
  const r1 = await ask({ instance: 'm2', sender: 'x@fail2.test', recipient: 'a@example.org' })
  t.match(r1, /^550 5\.7\.23/)
  t.equal(await ask({ instance: 'm2', sender: 'x@fail2.test', recipient: 'b@example.org' }), r1, 'the same rejection for the 2nd recipient')
  t.match(await ask({ instance: 'm3', protocol_state: 'END-OF-MESSAGE' }), /^DUNNO$/, 'END-OF-MESSAGE cannot carry a header')
  t.equal(await ask({ instance: 'm4', protocol_state: 'EHLO', sender: '' }), 'DUNNO', 'nothing to check before MAIL FROM')

  const dir = t.testdir({ userconf: '# per-user settings\nstrict@example.org,Mail_From_reject=Softfail|Reason_Message=Strict: {spf}\nbroken@example.org,HELO_reject=Maybe|Lookup_Time=5\n' })
  const pu = harness(t, { Per_User: `text,${path.join(dir, 'userconf')}` })
  t.match(await pu.ask({ instance: 'p1', sender: 'a@softfail.test', recipient: 'other@example.org' }), /^PREPEND Received-SPF: Softfail/)
  t.equal(await pu.ask({ instance: 'p1', sender: 'a@softfail.test', recipient: 'strict@example.org' }), '550 5.7.23 Strict: domain owner discourages use of this host')
  t.match(await pu.ask({ instance: 'p2', sender: 'a@softfail.test', recipient: 'broken@example.org' }), /^PREPEND Received-SPF: Softfail/)
  t.match(pu.logs.join('\n'), /Per_User: .*userconf:3: bad value "Maybe" for HELO_reject/)
  t.match(pu.logs.join('\n'), /Per_User: .*userconf:3: Lookup_Time cannot be set per user/)
  fs.writeFileSync(path.join(dir, 'userconf'), 'strict@example.org,Mail_From_reject=Fail\n')
  fs.utimesSync(path.join(dir, 'userconf'), new Date(), new Date(Date.now() + 5000))
  clockOffset += 1500
  t.match(await pu.ask({ instance: 'p3', sender: 'a@softfail.test', recipient: 'strict@example.org' }), /^PREPEND Received-SPF: Softfail/, 'the file is reread when it changes')

  const mock = harness(t, { Mock: 'yes' })
  t.equal(await mock.ask({ sender: 'a@fail2.test' }), MOCK_ACTION)
})

t.test('header values cannot break the header; only a non-ASCII local part leaves ASCII', async (t) => {
  const { ask } = harness(t)
  const cases: Array<Record<string, string>> = [
    { helo_name: 'evil\rX-Injected: yes', sender: 'a@nospf.test' },
    { helo_name: 'q"uote\\(paren)', sender: 'a@nospf.test' },
    { sender: 'joerg@nospf.test', helo_name: 'bücher.example' },
    { sender: `${'x'.repeat(3000)}@nospf.test`, helo_name: 'h'.repeat(3000) },
    { sender: 'a\u0001b\u007f@nospf.test', helo_name: 'tab\there' },
    { sender: '', helo_name: 'x;receiver=forged.example' },
    { sender: 'a\u202eb\ufffdc\u00a0d\u2028e@nospf.test', helo_name: 'a\u200db.example' },
  ]
  for (const [i, c] of cases.entries()) {
    const got = await ask(c)
    // The case by number: a U+2028 in a test name would break the TAP stream.
    t.match(got, /^PREPEND Received-SPF: None /, `case ${i}`)
    t.notOk(/[^\x20-\x7e]/.test(got), 'printable ASCII only')
    t.equal(got.split('Received-SPF:').length, 2, 'one header field')
    t.ok(got.length < 998, `shorter than a header line may be (${got.length})`)
  }
  t.match(await ask({ sender: 'a@nospf.test', helo_name: 'bücher.example' }), /helo=xn--bcher-kva\.example;/, 'an IDN HELO name in its ASCII form')
  t.match(await ask({ sender: 'a\u202eb\ufffdc\u00a0d\u2028e@nospf.test' }), /envelope-from="a\?b\?c\?d\?e@nospf\.test"/, 'bidi controls, U+FFFD, other spaces and separators become ?')
  t.match(await ask({ sender: '', helo_name: 'x;receiver=forged.example' }), /helo="x;receiver=forged\.example"; envelope-from="<>"; receiver=example\.org$/)
  const reject = await ask({ sender: 'a b"c@fail2.test' })
  t.match(reject, /id=a%20b%22c@fail2\.test;ip=192\.0\.2\.10;r=example\.org$/, 'the sender in the link is escaped')

  // A SMTPUTF8 local part has no ASCII form: it stays UTF-8 (RFC 6532), never '?'.
  t.equal(
    await ask({ sender: 'jörg@nospf.test', helo_name: 'bücher.example' }),
    'PREPEND Received-SPF: None (mailfrom) identity=mailfrom; client-ip=192.0.2.10; helo=xn--bcher-kva.example; envelope-from="jörg@nospf.test"; receiver=example.org',
  )
  const long = await ask({ sender: `${'ö'.repeat(3000)}@nospf.test` })
  t.ok(Buffer.byteLength(long) < 998, `a long UTF-8 value is cut by bytes (${Buffer.byteLength(long)})`)
  t.match(long, /envelope-from="ö+\.\.\."; receiver=example\.org$/, 'on a character boundary, with ...')
})

t.test('internationalised sender and HELO domains are checked by their A-labels; headers carry no ?', async (t) => {
  const { ask } = harness(t)
  t.equal(
    await ask({ sender: 'jörg@bücher.test' }),
    'PREPEND Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.10; helo=mail.example.net; envelope-from="jörg@xn--bcher-kva.test"; receiver=example.org',
  )
  t.equal(
    await ask({ sender: 'jörg@BÜCHER.test', client_address: '203.0.113.5' }),
    `550 5.7.23 Message rejected due to: SPF fail - not authorized. ${WHY}mfrom;id=j%C3%B6rg@xn--bcher-kva.test;ip=203.0.113.5;r=example.org`,
    'a forged IDN sender is rejected',
  )
  t.equal(
    await ask({ sender: '', helo_name: 'mail-bücher.test', client_address: '203.0.113.5' }),
    `550 5.7.23 Message rejected due to: SPF fail - not authorized. ${WHY}helo;id=xn--mail-bcher-feb.test;ip=203.0.113.5;r=example.org`,
    'an IDN HELO name',
  )
  t.equal(
    await ask({ sender: 'jörg@bücher.test', recipient: 'bob@exämple.org' }),
    'PREPEND Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.10; helo=mail.example.net; envelope-from="jörg@xn--bcher-kva.test"; receiver=xn--exmple-cua.org',
    'an IDN recipient domain',
  )
  t.match(await ask({ sender: 'x@a\u200db.test' }), /^PREPEND Received-SPF: None \(mailfrom\)/, 'a domain without an A-label form: none')

  const ar = harness(t, { Header_Type: 'AR' })
  t.equal(
    await ar.ask({ sender: 'jörg@bücher.test' }),
    'PREPEND Authentication-Results: mx.example.org; spf=pass (sender SPF authorized) smtp.mailfrom=xn--bcher-kva.test (client-ip=192.0.2.10; helo=mail.example.net; envelope-from="jörg@xn--bcher-kva.test"; receiver=example.org)',
  )
  // The domain lists of the configuration (A-labels) match IDN senders and HELO names.
  const local = harness(t, { Reject_Not_Pass_Domains: 'xn--bcher-kva.test' })
  t.match(await local.ask({ sender: 'a@neutral.bücher.test' }), /^550 5\.7\.23 Message rejected due to: Receiver policy for SPF Neutral\. /)
  const heloList = harness(t, { HELO_Whitelist: 'xn--mail-bcher-feb.test' })
  t.match(await heloList.ask({ sender: 'a@fail2.test', helo_name: 'mail-bücher.test' }), /^PREPEND X-Comment: SPF skipped for whitelisted HELO domain - client-ip=192\.0\.2\.10; helo=xn--mail-bcher-feb\.test;/)
})

t.test('an exp= text that is empty, white space or a full stop: the default explanation', async (t) => {
  const { ask } = harness(t)
  for (const domain of ['empty-exp.test', 'blank-exp.test', 'dot-exp.test']) {
    t.equal(await ask({ sender: `a@${domain}` }), `550 5.7.23 Message rejected due to: SPF fail - not authorized. ${WHY}mfrom;id=a@${domain};ip=192.0.2.10;r=example.org`, domain)
  }
})

t.test('No_Mail: the HELO identity too is rejected only for a v=spf1 -all record', async (t) => {
  const { ask } = harness(t, { No_Mail: 'yes' })
  t.equal(await ask({ sender: 'a@pass.test', helo_name: 'fail.test' }), `550 5.7.23 Message rejected due to: SPF fail - not authorized. ${WHY}helo;id=fail.test;ip=192.0.2.10;r=example.org`)
  t.equal(
    await ask({ sender: 'a@pass.test', helo_name: 'fail2.test' }),
    'PREPEND Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.10; helo=fail2.test; envelope-from="a@pass.test"; receiver=example.org',
    'a HELO fail by any other record: the MAIL FROM identity decides',
  )
  t.match(await ask({ sender: '', helo_name: 'fail2.test' }), /^PREPEND Received-SPF: Fail \(SPF fail - not authorized\) identity=helo;/, 'and for the null sender it only goes into the header')
})

t.test('an internal error in the SPF check becomes fail_action, greylisting still runs', async (t) => {
  const broken: Resolver = {
    query: () => Promise.reject(new TypeError('resolver exploded')),
    cached: () => undefined,
    stats: () => ({ queries: 0, cacheHits: 0, cacheEntries: 0 }),
    close: () => undefined,
  }
  const { ask, logs } = harness(t, { greylist_enabled: 'yes' }, broken)
  t.match(await ask({ sender: 'a@pass.test' }), /^DEFER_IF_PERMIT 4\.2\.0 Greylisted/)
  t.match(logs.join('\n'), /SPF check failed, answering fail_action DUNNO for it: TypeError: resolver exploded/)
})

t.test('SPF and greylisting together: severity, both headers, the SPF-authenticated key', async (t) => {
  const { ask, ctx } = harness(t, { greylist_enabled: 'yes', greylist_delay: '60' })
  const T = 1_800_000_000
  t.match(await ask({ instance: 'a1', sender: 'x@fail2.test' }, T), /^550 5\.7\.23/, 'an SPF rejection wins over greylisting')
  t.equal((await ctx.greylist.store.counts()).triplets, 0, 'and records no triplet')
  t.match(await ask({ instance: 'a2', sender: 'x@pass.test', recipient: 'r1@example.org' }, T), /^DEFER_IF_PERMIT 4\.2\.0 Greylisted/)
  t.match(await ask({ instance: 'a2', sender: 'x@pass.test', recipient: 'r2@example.org' }, T), /^DEFER_IF_PERMIT 4\.2\.0 Greylisted/)
  t.equal(await ask({ instance: 'a2', sender: 'x@pass.test', recipient: '', protocol_state: 'END-OF-MESSAGE' }, T), 'DUNNO')

  // The retry: 2 recipients, then DATA. Two headers, one per reply, each once.
  const r1 = await ask({ instance: 'a3', sender: 'x@pass.test', recipient: 'r1@example.org' }, T + 61)
  const r2 = await ask({ instance: 'a3', sender: 'x@pass.test', recipient: 'r2@example.org' }, T + 61)
  const data = await ask({ instance: 'a3', sender: 'x@pass.test', recipient: '', protocol_state: 'DATA' }, T + 61)
  t.match(r1, /^PREPEND Received-SPF: Pass \(mailfrom\)/, '1st recipient: the SPF header')
  t.match(r2, /^PREPEND X-Greylist: delayed 61 seconds by policyd-ts-9\.9\.9 at mx\.example\.org/, '2nd recipient: the greylist header')
  t.equal(data, 'DUNNO', 'DATA: nothing left')

  // One recipient: the second header goes out at DATA.
  await ask({ instance: 'b1', sender: 'y@pass.test', recipient: 'r3@example.org' }, T)
  t.match(await ask({ instance: 'b2', sender: 'y@pass.test', recipient: 'r3@example.org' }, T + 61), /^PREPEND Received-SPF: Pass/)
  t.match(await ask({ instance: 'b2', sender: 'y@pass.test', recipient: 'r3@example.org', protocol_state: 'DATA' }, T + 61), /^PREPEND X-Greylist: /)
  t.equal(await ask({ instance: 'b2', sender: 'y@pass.test', recipient: 'r3@example.org', protocol_state: 'END-OF-MESSAGE' }, T + 61), 'DUNNO')
})

t.test('a header left over when the next message starts is logged, not lost silently', async (t) => {
  const { ask, logs } = harness(t, { greylist_enabled: 'yes', greylist_delay: '60' })
  const T = 1_800_000_000
  await ask({ instance: 'c1', sender: 'z@pass.test' }, T)
  t.match(await ask({ instance: 'c2', sender: 'z@pass.test' }, T + 61), /^PREPEND Received-SPF/)
  await ask({ instance: 'c3', sender: 'other@pass.test', protocol_state: 'EHLO' }, T + 62)
  t.match(logs.join('\n'), /header not added to message c2: no later request of it could carry it \(add check_policy_service to smtpd_data_restrictions\): X-Greylist: delayed 61 seconds/)
})

t.test('greylist_spf_key: a sender pool retrying from another network passes; forged and broad senders do not', async (t) => {
  const T = 1_800_000_000
  const { ask, dbPath } = harness(t, { greylist_enabled: 'yes', greylist_delay: '60', Mail_From_reject: 'False' })
  const key = async (): Promise<string[]> => {
    await new Promise((resolve) => setImmediate(resolve)) // the store commits right after the reply
    const db = new Database(dbPath, { readonly: true })
    try {
      return (db.prepare('SELECT key FROM triplet ORDER BY key').all() as Array<{ key: string }>).map((r) => r.key)
    } finally {
      db.close()
    }
  }
  // pool.test authorises 192.0.2.0/24 and 198.51.100.0/24.
  t.match(await ask({ sender: 'news@pool.test', client_address: '192.0.2.10' }, T), /^DEFER_IF_PERMIT/)
  t.match(await ask({ sender: 'news@pool.test', client_address: '198.51.100.7' }, T + 61), /^PREPEND Received-SPF: Pass/, 'the retry from the other network passes')
  // fail2.test authorises only 198.51.100.1: a forged sender is keyed by the client network.
  t.match(await ask({ sender: 'ceo@fail2.test', client_address: '192.0.2.10' }, T), /^DEFER_IF_PERMIT/)
  t.match(await ask({ sender: 'ceo@fail2.test', client_address: '203.0.113.7' }, T + 61), /^DEFER_IF_PERMIT/, 'SPF fail: another network starts over')
  t.match(await ask({ sender: 'x@nospf.test', client_address: '192.0.2.10' }, T), /^DEFER_IF_PERMIT/)
  t.match(await ask({ sender: 'x@nospf.test', client_address: '203.0.113.7' }, T + 61), /^DEFER_IF_PERMIT/, 'SPF none: another network starts over')
  t.match(await ask({ sender: 'x@broad.test', client_address: '192.0.2.10' }, T), /^DEFER_IF_PERMIT/)
  t.match(await ask({ sender: 'x@broad.test', client_address: '203.0.113.7' }, T + 61), /^DEFER_IF_PERMIT/, '+all authenticates nobody: another network starts over')
  t.same(await key(), [
    '192.0.2.0/24/ceo@fail2.test/bob@example.org',
    '192.0.2.0/24/x@broad.test/bob@example.org',
    '192.0.2.0/24/x@nospf.test/bob@example.org',
    '203.0.113.0/24/ceo@fail2.test/bob@example.org',
    '203.0.113.0/24/x@broad.test/bob@example.org',
    '203.0.113.0/24/x@nospf.test/bob@example.org',
    'spf:pool.test/news@pool.test/bob@example.org',
  ])

  const off = harness(t, { greylist_enabled: 'yes', greylist_delay: '60', greylist_spf_key: 'no' })
  t.match(await off.ask({ sender: 'news@pool.test', client_address: '192.0.2.10' }, T), /^DEFER_IF_PERMIT/)
  t.match(await off.ask({ sender: 'news@pool.test', client_address: '198.51.100.7' }, T + 61), /^DEFER_IF_PERMIT/, 'greylist_spf_key no: keyed by network')
})

t.test('greylist_spf_key: a pass by an ip4 /8 or ip6 /16 authenticates the domain; by /7 or /15 it is too broad', async (t) => {
  const T = 1_800_000_000
  const { ask, dbPath } = harness(t, { greylist_enabled: 'yes', greylist_delay: '60' })
  const keys = async (): Promise<string[]> => {
    await new Promise((resolve) => setImmediate(resolve)) // the store commits right after the reply
    const db = new Database(dbPath, { readonly: true })
    try {
      return (db.prepare('SELECT key FROM triplet ORDER BY key').all() as Array<{ key: string }>).map((r) => r.key)
    } finally {
      db.close()
    }
  }
  for (const [sender, client] of [['a@slash8.test', '192.0.2.10'], ['a@slash7.test', '192.0.2.10'], ['b@slash8.test', '2001:db8::1'], ['b@slash7.test', '2001:db8::1']]) {
    t.match(await ask({ sender, client_address: client, recipient: 'bob@example.org' }, T), /^DEFER_IF_PERMIT 4\.2\.0 Greylisted/, `${sender} from ${client}`)
  }
  t.same(await keys(), [
    '192.0.2.0/24/a@slash7.test/bob@example.org',
    '2001:db8::/64/b@slash7.test/bob@example.org',
    'spf:slash8.test/a@slash8.test/bob@example.org',
    'spf:slash8.test/b@slash8.test/bob@example.org',
  ])
})

t.test('the SPF verdict as the decision line logs it: check, severity, reason and fields', async (t) => {
  const { verdict } = harness(t)
  const v = (severity: string, reason: string, fields: Record<string, string> = {}) => ({ check: 'spf', severity, reason, fields })
  const cases: Array<[Record<string, string>, ReturnType<typeof v>]> = [
    [{}, v('prepend', 'mailfrom-pass', { spf_helo: 'none', spf_mailfrom: 'pass' })],
    [{ sender: 'alice@fail2.test' }, v('reject', 'mailfrom-fail', { spf_helo: 'none', spf_mailfrom: 'fail' })],
    [{ sender: 'alice@softfail.test' }, v('prepend', 'mailfrom-softfail', { spf_helo: 'none', spf_mailfrom: 'softfail' })],
    [{ sender: 'alice@broad.test' }, v('prepend', 'mailfrom-pass', { spf_helo: 'none', spf_mailfrom: 'pass', spf_broad: '+all' })],
    [{ sender: '', helo_name: '' }, v('dunno', 'no-sender-no-helo')],
    [{ client_address: '' }, v('dunno', 'no-client-address')],
    [{ protocol_state: 'CONNECT' }, v('dunno', 'not-checked-in-this-state')],
    [{ sender: '', helo_name: 'helo.pass.test' }, v('prepend', 'helo-pass', { spf_helo: 'pass' })],
    [{ sender: '', helo_name: 'fail.test' }, v('reject', 'helo-fail', { spf_helo: 'fail' })],
  ]
  for (const [over, want] of cases) t.same(await verdict(over), want, JSON.stringify(over))
  const notPass = harness(t, { Reject_Not_Pass_Domains: 'softfail.test' })
  t.same(await notPass.verdict({ sender: 'alice@softfail.test' }), v('reject', 'mailfrom-softfail-receiver-policy', { spf_helo: 'none', spf_mailfrom: 'softfail' }), 'rejected by Reject_Not_Pass_Domains, not by the record')
  const dry = harness(t, { TestOnly: '0' })
  t.same(await dry.verdict({ sender: 'alice@fail2.test' }), v('dunno', 'test-only-would-reject:mailfrom-fail', { spf_helo: 'none', spf_mailfrom: 'fail' }), 'TestOnly = 0: what it would have done')
})

/**
 * The harness with its resolver's calls written down, `name/TYPE` in the order made: queries, and cache reads.
 * The names in `servfail` are answered SERVFAIL at once (a temperror without waiting for a timeout).
 */
function tappedHarness(t: Tap.Test, over: Record<string, string> = {}, servfail: string[] = []): Harness & { queries: string[]; cacheReads: string[] } {
  const h = harness(t, over)
  const spf = h.ctx.spf!()
  const real = spf.resolver
  const queries: string[] = []
  const cacheReads: string[] = []
  spf.resolver = {
    query: (name, type) => {
      queries.push(`${name}/${type}`)
      return servfail.includes(name) ? Promise.resolve({ rcode: 'SERVFAIL', records: [], mx: [] }) : real.query(name, type)
    },
    cached: (name, type) => {
      cacheReads.push(`${name}/${type}`)
      return real.cached(name, type)
    },
    stats: () => real.stats(),
    close: () => real.close(),
  }
  return { ...h, queries, cacheReads }
}

t.test('the SPF verdict of restrictions, dry runs, exemptions, Per_User and unsent headers', async (t) => {
  const v = (severity: string, reason: string, fields: Record<string, string> = {}) => ({ check: 'spf', severity, reason, fields })
  const both = (helo: string, mailfrom: string): Record<string, string> => ({ spf_helo: helo, spf_mailfrom: mailfrom })
  const dir = t.testdir({
    // The line without a recipient must not be taken for requests that have none (DATA).
    userconf: 'strict@example.org,Mail_From_reject=Softfail\n,Mail_From_reject=Softfail\n',
  })
  const perUser = `text,${path.join(dir, 'userconf')}`
  const rows: Array<[Record<string, string>, Record<string, string>, ReturnType<typeof v>]> = [
    [{ Mail_From_pass_restriction: 'passed_spf' }, {}, v('restriction', 'mailfrom-pass-restriction', both('none', 'pass'))],
    [{ HELO_pass_restriction: 'helo_passed' }, { sender: '', helo_name: 'helo.pass.test' }, v('restriction', 'helo-pass-restriction', { spf_helo: 'pass' })],
    [{ TestOnly: '0', Mail_From_pass_restriction: 'passed_spf' }, {}, v('dunno', 'test-only-would-restriction:mailfrom-pass-restriction', both('none', 'pass'))],
    [{ TestOnly: '0', TempError_Defer: 'yes' }, { sender: 'a@servfail.test' }, v('dunno', 'test-only-would-defer:mailfrom-temperror', both('none', 'temperror'))],
    [{ TempError_Defer: 'yes' }, { sender: 'a@servfail.test' }, v('defer', 'mailfrom-temperror', both('none', 'temperror'))],
    [{ TempError_Defer: 'yes' }, { helo_name: 'servfail.test' }, v('defer', 'helo-temperror', { spf_helo: 'temperror' })],
    // No_Mail turns only a rejection into a header: a deferral stays one.
    [{ No_Mail: 'yes', TempError_Defer: 'yes' }, { sender: 'a@servfail.test' }, v('defer', 'mailfrom-temperror', both('none', 'temperror'))],
    [{ No_Mail: 'yes', TempError_Defer: 'yes' }, { helo_name: 'servfail.test' }, v('defer', 'helo-temperror', { spf_helo: 'temperror' })],
    // HELO_pass_restriction is for a HELO pass only.
    [{ HELO_pass_restriction: 'helo_passed' }, { sender: '', helo_name: 'nospf.test' }, v('prepend', 'helo-none', { spf_helo: 'none' })],
    [{ HELO_reject: 'No_Check', Mail_From_reject: 'No_Check' }, {}, v('dunno', 'no-identity-checked')],
    [{ Prospective: '192.0.2.10' }, { client_address: '203.0.113.5' }, v('dunno', 'mailfrom-pass-prospective', both('none', 'pass'))],
    [{ Header_Type: 'None' }, {}, v('dunno', 'mailfrom-pass-no-header', both('none', 'pass'))],
    [{ Whitelist: '192.0.2.0/28' }, { sender: 'a@fail2.test' }, v('prepend', 'Whitelist', { spf_bypass: 'Whitelist:192.0.2.0/28' })],
    [{ Domain_Whitelist: 'macro.test' }, { sender: 'a@fail2.test' }, v('prepend', 'Domain_Whitelist', { spf_bypass: 'Domain_Whitelist:macro.test' })],
    [{}, { sender: '', helo_name: 'macro.test' }, v('prepend', 'helo-pass', { spf_helo: 'pass' })],
    [{ Reject_Not_Pass_Domains: 'fail2.test' }, { sender: 'a@fail2.test' }, v('reject', 'mailfrom-fail-receiver-policy', both('none', 'fail'))],
    [{ Mail_From_reject: 'SPF_Not_Pass' }, { sender: 'a@fail2.test' }, v('reject', 'mailfrom-fail', both('none', 'fail'))],
    [{ Mail_From_reject: 'Softfail' }, { sender: 'a@fail2.test' }, v('reject', 'mailfrom-fail', both('none', 'fail'))],
    [{}, { sender: 'a@fail2.test', protocol_state: 'BDAT' }, v('reject', 'mailfrom-fail', both('none', 'fail'))],
    [{}, { sender: 'a@fail2.test', protocol_state: 'END-OF-MESSAGE' }, v('reject', 'mailfrom-fail', both('none', 'fail'))],
    [{ Per_User: perUser }, { sender: 'a@softfail.test', recipient: 'strict@example.org' }, v('reject', 'mailfrom-softfail', { ...both('none', 'softfail'), spf_per_user: 'yes' })],
    [{ Per_User: perUser }, { sender: 'a@softfail.test', recipient: '', protocol_state: 'DATA' }, v('prepend', 'mailfrom-softfail', both('none', 'softfail'))],
  ]
  for (const [over, req, want] of rows) {
    const { verdict } = tappedHarness(t, over, ['servfail.test'])
    t.same(await verdict(req), want, `${JSON.stringify(over)} ${JSON.stringify(req)}`)
  }
})

t.test('header values: receiver= without a recipient or its domain, a HELO name with its final dot, no HELO name nor sender domain', async (t) => {
  const { ask } = harness(t)
  const header = (helo: string, from: string, receiver: string): string =>
    `PREPEND Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.10; helo=${helo}; envelope-from="${from}"; receiver=${receiver}`
  t.equal(await ask({ protocol_state: 'MAIL', recipient: '' }), header('mail.example.net', 'alice@pass.test', 'none'), 'checked at MAIL FROM: no recipient yet')
  t.equal(await ask({ recipient: 'Postmaster' }), header('mail.example.net', 'alice@pass.test', 'postmaster'), 'RCPT TO:<Postmaster> has no domain')
  t.equal(await ask({ helo_name: 'Mail.Example.NET.' }), header('mail.example.net', 'alice@pass.test', 'example.org'))
  t.equal(
    await ask({ sender: 'alice', helo_name: '' }),
    'PREPEND Received-SPF: None (mailfrom) identity=mailfrom; client-ip=192.0.2.10; helo=unknown; envelope-from=alice; receiver=example.org',
    'neither a HELO name nor a sender domain: unknown',
  )
})

t.test('No_Mail: a v=spf1 -all record with other white space is still one', async (t) => {
  const { ask } = harness(t, { No_Mail: 'yes' })
  for (const domain of ['nomail-spaces.test', 'nomail-trailing.test']) {
    t.equal(await ask({ sender: `a@${domain}` }), `550 5.7.23 Message rejected due to: SPF fail - not authorized. ${WHY}mfrom;id=a@${domain};ip=192.0.2.10;r=example.org`, domain)
  }
})

t.test("the sender's record is asked for first, while the HELO check waits, and only when both are checked", async (t) => {
  // `exact`: the whole list; otherwise its start (whether the MAIL FROM check finds the early answer already there is a race).
  const rows: Array<[Record<string, string>, Record<string, string>, string[], boolean]> = [
    [{}, {}, ['pass.test/TXT', 'mail.example.net/TXT'], false],
    [{}, { helo_name: 'pass.test' }, ['pass.test/TXT'], true],
    [{ HELO_reject: 'No_Check' }, {}, ['pass.test/TXT'], true],
    [{ Mail_From_reject: 'No_Check' }, { helo_name: 'helo.pass.test' }, ['helo.pass.test/TXT', 'helo.pass.test/A'], true],
    [{}, { sender: '', helo_name: 'helo.pass.test' }, ['helo.pass.test/TXT', 'helo.pass.test/A'], true],
  ]
  for (const [over, req, want, exact] of rows) {
    const { ask, queries } = tappedHarness(t, over)
    await ask(req)
    t.same(exact ? queries : queries.slice(0, want.length), want, `${JSON.stringify(over)} ${JSON.stringify(req)}`)
  }
})

t.test('a Per_User recipient of a message reuses the SPF results of its earlier recipients', async (t) => {
  const dir = t.testdir({ userconf: 'strict@example.org,Mail_From_reject=Softfail\n' })
  const { ask, cacheReads } = tappedHarness(t, { Per_User: `text,${path.join(dir, 'userconf')}` })
  t.match(await ask({ instance: 'u1', sender: 'a@softfail.test', recipient: 'other@example.org' }), /^PREPEND Received-SPF: Softfail/)
  const first = cacheReads.length
  t.ok(first > 0, 'the 1st recipient: SPF checked')
  t.match(await ask({ instance: 'u1', sender: 'a@softfail.test', recipient: 'strict@example.org' }), /^550 5\.7\.23/)
  t.equal(cacheReads.length, first, 'the 2nd recipient: not checked again, not even from the DNS cache')
})

t.test('a request without an instance is not remembered', async (t) => {
  const { ask, ctx } = harness(t)
  const messages = ctx.spf!().messages
  t.match(await ask({ instance: '' }), /^PREPEND Received-SPF: Pass/)
  t.match(await ask({ instance: '' }), /^PREPEND Received-SPF: Pass/, 'each such request gets its header')
  t.equal(messages.size, 0)
  await ask({ instance: 'n1' })
  t.equal(messages.size, 1)
})

t.test('a pass for the Prospective address authenticates no sender domain for greylisting', async (t) => {
  const request = (o: Record<string, string>) => toPolicyRequest(new Map(Object.entries({
    request: 'smtpd_access_policy', protocol_state: 'RCPT', client_address: '203.0.113.5', helo_name: 'mail.example.net',
    sender: 'alice@pass.test', recipient: 'bob@example.org', instance: 'g1', ...o,
  })))
  const real = harness(t)
  t.equal((await checkSpf(request({ client_address: '192.0.2.10' }), real.ctx.spf!())).authenticatedDomain, 'pass.test', 'the real client: pass.test')
  const prospective = harness(t, { Prospective: '192.0.2.10' })
  const got = await checkSpf(request({}), prospective.ctx.spf!())
  t.equal(got.verdict.reason, 'mailfrom-pass-prospective')
  t.equal(got.authenticatedDomain, undefined)
})

t.test('actionFor: a rule that rejects no result (No_Check) leaves every result to the header', async (t) => {
  const policy = { ...toPolicy(config()), mailFromReject: 'No_Check' as const, heloReject: 'No_Check' as const }
  for (const result of ['fail', 'softfail', 'neutral', 'none'] as const) {
    t.same(actionFor('mailfrom', { result, reason: '', domain: 'x.test' }, policy, 'x.test'), { action: 'prepend', local: false }, result)
    t.same(actionFor('helo', { result, reason: '', domain: 'x.test' }, policy, 'x.test'), { action: 'prepend', local: false }, result)
  }
})
