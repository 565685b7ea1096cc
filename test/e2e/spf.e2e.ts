// SPF end to end, with greylisting: a real private Postfix runs the built
// bin/policyd-ts through spawn(8) (the master.cf.example entry), and the
// policy process (as nobody) resolves through a DNS server on loopback that
// this test serves. Asserts what the sending client sees and what the
// delivered message contains. Run as root (see greylist.e2e.ts).
import t from 'tap'
import fs from 'node:fs'
import Database from 'better-sqlite3'
import crypto from 'node:crypto'
import { MYHOSTNAME, sleep, usePostfix, waitFor, type DeliveredMessage, type PostfixInstance, type SmtpReply, type SwaksResult } from './postfix'
import { startDnsServer, type DnsServer } from '../helpers/dns-server'

const DELAY_S = 2
let dns: DnsServer

t.before(async () => {
  dns = await startDnsServer({
    // A sender pool in two networks.
    'pool.example': [{ TXT: 'v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all' }],
    'fail.example': [{ TXT: 'v=spf1 ip4:203.0.113.1 -all' }],
    'slow.example': ['TIMEOUT'],
    'nospf.example': [{ A: '203.0.113.9' }],
    // bücher.example and mail-bücher.example, by their A-labels only.
    'xn--bcher-kva.example': [{ TXT: 'v=spf1 ip4:192.0.2.40 -all' }],
    'xn--mail-bcher-feb.example': [{ TXT: 'v=spf1 a -all' }, { A: '192.0.2.40' }],
  })
})
t.teardown(() => dns.close())

const base = (): string[] => [`--dns_servers=127.0.0.1:${dns.port}`, '--Lookup_Time=2', '--greylist_delay', `${DELAY_S}s`, '--hostname', MYHOSTNAME]

async function copiesOf(pf: PostfixInstance, r: SwaksResult, n: number): Promise<DeliveredMessage[]> {
  await waitFor(async () => (await pf.delivered(0, 0)).filter((m) => m.e2eId === r.id).length >= n, 10000)
  return (await pf.delivered(0, 0)).filter((m) => m.e2eId === r.id)
}

function noPolicyWarnings(t: Tap.Test, pf: PostfixInstance): void {
  t.same(pf.policyWarnings(), [], 'no "problem talking to server", "missing attribute action" or "premature end-of-input" in the Postfix log')
}

const receivedSpfPass = (ip: string, from: string): string =>
  `Pass (mailfrom) identity=mailfrom; client-ip=${ip}; helo=client.example.net; envelope-from="${from}"; receiver=example.test`

t.test('SPF fail: 550 5.7.23 with policyd-spf\'s text; nothing delivered, nothing recorded', async (t) => {
  const pf = await usePostfix(t, { policyArgs: base() })
  const r = await pf.swaks({ from: 'ceo@fail.example', to: 'bob@example.test', xclient: { addr: '192.0.2.20' } })
  t.equal(r.exitCode, 24)
  t.equal(r.rcpt[0]?.reply.code, 550)
  t.equal(
    r.rcpt[0]?.reply.text,
    '5.7.23 <bob@example.test>: Recipient address rejected: Message rejected due to: SPF fail - not authorized. Please see http://www.openspf.net/Why?s=mfrom;id=ceo@fail.example;ip=192.0.2.20;r=example.test',
  )
  await sleep(300)
  t.equal((await pf.delivered(0, 0)).length, 0, 'nothing delivered')
  await pf.waitPolicyLog(/decision action=550 check=spf reason=mailfrom-fail /)
  t.notOk(fs.existsSync(pf.dbFile), 'greylisting never ran for the rejected sender: not even the database was opened')
  noPolicyWarnings(t, pf)
})

t.test('SPF temperror with TempError_Defer: 450 4.7.24; without it the mail is only greylisted', async (t) => {
  const pf = await usePostfix(t, { policyArgs: [...base(), '--TempError_Defer', 'True'] })
  const r = await pf.swaks({ from: 'x@slow.example', to: 'bob@example.test', xclient: { addr: '192.0.2.21' } })
  t.equal(r.rcpt[0]?.reply.code, 450)
  t.match(
    r.rcpt[0]?.reply.text ?? '',
    /^4\.7\.24 <bob@example\.test>: Recipient address rejected: Message deferred due to: SPF Temporary Error: .+\. Please see http:\/\/www\.openspf\.net\/Why\?s=mfrom;id=x@slow\.example;ip=192\.0\.2\.21;r=example\.test$/,
  )
  t.ok(r.ms < 9000, `answered within the policy timeout (${r.ms} ms, Lookup_Time 2 s per identity)`)
  noPolicyWarnings(t, pf)
})

t.test('SPF pass + greylisting: both headers reach every copy exactly once; the pool retries from another /24 and passes', async (t) => {
  const pf = await usePostfix(t, { policyArgs: base() })
  const rcpts = ['bob@example.test', 'carol@example.test']
  const first = await pf.swaks({ from: 'news@pool.example', to: rcpts, xclient: { addr: '192.0.2.10' } })
  const firstAt = Date.now()
  t.equal(first.exitCode, 24)
  for (const { reply } of first.rcpt) t.match(`${reply.code} ${reply.text}`, /^450 4\.2\.0 <[a-z]+@example\.test>: Recipient address rejected: Greylisted, please try again in 2 seconds$/)

  await sleep(Math.max(0, firstAt + DELAY_S * 1000 + 300 - Date.now()))
  // Another network of the same pool: keyed by the SPF-authenticated domain, the triplets are found again.
  const retry = await pf.swaks({ from: 'news@pool.example', to: rcpts, xclient: { addr: '198.51.100.7' } })
  t.equal(retry.exitCode, 0, 'accepted')
  for (const { reply } of retry.rcpt) t.equal(reply.code, 250)
  const copies = await copiesOf(pf, retry, 2)
  t.equal(copies.length, 2, 'one copy per recipient')
  for (const m of copies) {
    const to = m.header('Delivered-To')[0]
    t.same(m.header('Received-SPF'), [receivedSpfPass('198.51.100.7', 'news@pool.example')], `${to}: Received-SPF exactly once`)
    t.equal(m.header('X-Greylist').length, 1, `${to}: X-Greylist exactly once`)
    t.match(m.header('X-Greylist')[0] ?? '', /^delayed [2-9] seconds by policyd-ts-/)
  }
  const db = new Database(pf.dbFile, { readonly: true })
  try {
    const keys = (db.prepare('SELECT key FROM triplet ORDER BY key').all() as Array<{ key: string }>).map((r) => r.key)
    t.same(keys, ['spf:pool.example/news@pool.example/bob@example.test', 'spf:pool.example/news@pool.example/carol@example.test'], 'keyed by the authenticated domain')
  } finally {
    db.close()
  }
  noPolicyWarnings(t, pf)
})

t.test('one recipient: the second header goes out with the DATA check', async (t) => {
  const pf = await usePostfix(t, { policyArgs: base() })
  const msg = { from: 'alerts@pool.example', to: 'dave@example.test', xclient: { addr: '192.0.2.11' } }
  await pf.swaks(msg)
  const firstAt = Date.now()
  await sleep(Math.max(0, firstAt + DELAY_S * 1000 + 300 - Date.now()))
  const retry = await pf.swaks(msg)
  t.equal(retry.exitCode, 0)
  const [m] = await copiesOf(pf, retry, 1)
  t.same(m?.header('Received-SPF'), [receivedSpfPass('192.0.2.11', 'alerts@pool.example')], 'Received-SPF once')
  t.equal(m?.header('X-Greylist').length, 1, 'X-Greylist once, via DATA')
  await pf.waitPolicyLog(new RegExp(`state=DATA .*header=X-Greylist.*queue_id=${retry.queueId}|state=DATA .*queue_id=${retry.queueId}.*header=X-Greylist`))
  noPolicyWarnings(t, pf)
})

t.test('a sender without SPF that retries from another /24 is greylisted again (keyed by network)', async (t) => {
  const pf = await usePostfix(t, { policyArgs: base() })
  const first = await pf.swaks({ from: 'someone@nospf.example', to: 'erin@example.test', xclient: { addr: '192.0.2.30' } })
  const firstAt = Date.now()
  t.equal(first.rcpt[0]?.reply.code, 450)
  await sleep(Math.max(0, firstAt + DELAY_S * 1000 + 300 - Date.now()))
  const other = await pf.swaks({ from: 'someone@nospf.example', to: 'erin@example.test', xclient: { addr: '198.51.100.30' } })
  t.equal(other.rcpt[0]?.reply.code, 450, 'another network: a new triplet')
  const same = await pf.swaks({ from: 'someone@nospf.example', to: 'erin@example.test', xclient: { addr: '192.0.2.31' } })
  t.equal(same.rcpt[0]?.reply.code, 250, 'the first /24 again: passes')
  const [m] = await copiesOf(pf, same, 1)
  t.same(m?.header('Received-SPF'), ['None (mailfrom) identity=mailfrom; client-ip=192.0.2.31; helo=client.example.net; envelope-from="someone@nospf.example"; receiver=example.test'])
  noPolicyWarnings(t, pf)
})

t.test('an internationalised sender over SMTPUTF8: rejected when forged, its Received-SPF in UTF-8 and A-labels when it passes', async (t) => {
  // swaks (20201014) cannot send the SMTPUTF8 parameter: this test speaks SMTP itself, in UTF-8.
  const pf = await usePostfix(t, { policyArgs: [...base(), '--greylist_enabled=no'], extraMain: { smtputf8_enable: 'yes' } })
  const reply = (r: SmtpReply, code: number, what: string): void => void t.equal(r.code, code, `${what}: ${r.lines.join(' / ')}`)
  const session = async (addr: string, helo: string): Promise<Awaited<ReturnType<PostfixInstance['smtp']>>> => {
    const s = await pf.smtp()
    reply(await s.ehlo('client.example.net'), 250, 'EHLO')
    reply(await s.xclient({ addr }), 220, 'XCLIENT')
    const ehlo = await s.ehlo(helo)
    reply(ehlo, 250, `EHLO ${helo}`)
    t.match(ehlo.lines.join('\n'), /SMTPUTF8/, 'Postfix offers SMTPUTF8')
    return s
  }
  const why = (scope: string, id: string, ip: string): string =>
    `5.7.23 <bob@example.test>: Recipient address rejected: Message rejected due to: SPF fail - not authorized. Please see http://www.openspf.net/Why?s=${scope};id=${id};ip=${ip};r=example.test`

  const forged = await session('192.0.2.99', 'client.example.net')
  reply(await forged.command('MAIL FROM:<jörg@bücher.example> SMTPUTF8'), 250, 'MAIL FROM an IDN sender')
  const refused = await forged.rcpt('bob@example.test')
  t.equal(refused.code, 550, 'a forged IDN sender is rejected')
  t.equal(refused.text, why('mfrom', 'j%C3%B6rg@xn--bcher-kva.example', '192.0.2.99'))
  await forged.quit()

  const heloForged = await session('192.0.2.99', 'mail-bücher.example')
  reply(await heloForged.command('MAIL FROM:<> SMTPUTF8'), 250, 'MAIL FROM:<>')
  const heloRefused = await heloForged.rcpt('bob@example.test')
  t.equal(heloRefused.code, 550, 'a forged IDN HELO name is rejected')
  t.equal(heloRefused.text, why('helo', 'xn--mail-bcher-feb.example', '192.0.2.99'))
  await heloForged.quit()

  const genuine = await session('192.0.2.40', 'mail-bücher.example')
  reply(await genuine.command('MAIL FROM:<jörg@bücher.example> SMTPUTF8'), 250, 'MAIL FROM')
  reply(await genuine.rcpt('bob@example.test'), 250, 'RCPT from the authorised address')
  const id = `idn-${crypto.randomBytes(4).toString('hex')}`
  const { result } = await genuine.data(`From: jörg@bücher.example\nTo: bob@example.test\nSubject: Grüße\nX-E2E-Id: ${id}\n\nHallo.\n`)
  t.equal(result?.code, 250, `DATA: ${result?.lines.join(' / ')}`)
  await genuine.quit()
  await waitFor(async () => (await pf.delivered(0, 0)).some((m) => m.e2eId === id), 10000)
  const [m] = (await pf.delivered(0, 0)).filter((d) => d.e2eId === id)
  t.same(m?.header('Received-SPF'), [
    'Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.40; helo=xn--mail-bcher-feb.example; envelope-from="jörg@xn--bcher-kva.example"; receiver=example.test',
  ], 'delivered with one Received-SPF: domains as A-labels, the local part in UTF-8, no ?')
  await pf.waitPolicyLog(/decision action=PREPEND check=spf reason=mailfrom-pass /)
  noPolicyWarnings(t, pf)
})
