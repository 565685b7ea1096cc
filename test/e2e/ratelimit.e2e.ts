// Rate limiting end to end (issue 11): a real private Postfix asks the built
// bin/policyd-ts, placed as policyd-ts(8) RATE LIMITING says (first in
// smtpd_recipient_restrictions, before permit_mynetworks, and in
// smtpd_end_of_data_restrictions), for mail submitted without SASL from the
// site's own network (XCLIENT claims an address in mynetworks and in
// ratelimit_networks). Spawn mode and daemon mode. Not part of `npm test`.
// Run as root:
//
//   npm run build && npx tap --jobs 1 --timeout 600 test/e2e/ratelimit.e2e.ts
import t from 'tap'
import fs from 'node:fs'
import {
  MYHOSTNAME,
  createdDirs,
  leftoverProcesses,
  runningInstances,
  usePostfix,
  waitFor,
  type PolicyMode,
  type PostfixInstance,
  type PostfixOptions,
  type SmtpReply,
  type SwaksResult,
} from './postfix'

/** The site's own network: in mynetworks (Postfix relays for it) and in ratelimit_networks (limited by sender and client). */
const OWN_NET = '192.0.2.0/24'
const OUTSIDE = '198.51.100.7'
/** Greylisting stays on: the own network's mail must never be greylisted, and mail from outside still is. */
const BASE = ['--spf_enabled', 'no', '--greylist_delay', '2s', '--hostname', MYHOSTNAME, '--ratelimit_enabled', 'yes', '--ratelimit_networks', OWN_NET]
/** The placement of the man page: the check before permit_mynetworks, and at END-OF-MESSAGE where held mail is counted. */
const PLACED: PostfixOptions = { recipientPolicy: 'first', endOfDataRestrictions: true, extraMain: { mynetworks: `127.0.0.0/8, ${OWN_NET}` } }
const MODES: PolicyMode[] = ['spawn', 'daemon']

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
const ISO = '(\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ)'
/** ratelimit_text's default behind Postfix's prefix; the time it names is the first group. */
const rateLimited = (rcpt: string, limit: string, key: string): RegExp =>
  new RegExp(`^4\\.7\\.1 <${esc(rcpt)}>: Recipient address rejected: Rate limit ${esc(limit)} exceeded for ${esc(key)}, retry after ${ISO}$`)
const greylisted = (rcpt: string): RegExp => new RegExp(`^4\\.2\\.0 <${esc(rcpt)}>: Recipient address rejected: Greylisted, please try again in 2 seconds$`)
const RCPT_OK = /^2\.1\.5 Ok$/
const QUEUED = /^2\.0\.0 Ok: queued as [0-9A-F]+$/

function reply(t: tap.Test, got: SmtpReply | null | undefined, code: number, text: RegExp, what: string): RegExpExecArray | null {
  t.equal(got?.code, code, `${what}: ${code} (${got?.lines.join(' / ') ?? 'no reply'})`)
  const m = text.exec(got?.text ?? '')
  t.ok(m, `${what}: text ${text}`)
  return m
}

/** Every recipient accepted, the message queued, and one copy per recipient delivered (without an X-Greylist header). */
async function accepted(t: tap.Test, pf: PostfixInstance, r: SwaksResult, what: string): Promise<void> {
  for (const { to, reply: rr } of r.rcpt) reply(t, rr, 250, RCPT_OK, `${what}: RCPT ${to}`)
  reply(t, r.dataCommand, 354, /^End data with/, `${what}: DATA`)
  reply(t, r.data, 250, QUEUED, `${what}: end of DATA`)
  if (r.queueId === null) return // not queued (said above): nothing will be delivered
  const copies = await waitFor(async () => {
    const mine = (await pf.delivered(0, 0)).filter((m) => m.e2eId === r.id)
    return mine.length >= r.rcpt.length && mine
  }, 10000)
  t.same((copies || []).map((m) => m.header('Delivered-To')[0]).sort(), r.rcpt.map((x) => x.to).sort(), `${what}: one copy delivered per recipient`)
  t.ok((copies || []).every((m) => m.header('X-Greylist').length === 0), `${what}: not greylisted`)
}

/** Refused at its (only) RCPT with `text`; nothing sent. Returns the match. */
function refused(t: tap.Test, r: SwaksResult, text: RegExp, what: string): RegExpExecArray | null {
  t.equal(r.exitCode, 24, `${what}: no recipient accepted (swaks exit 24)`)
  const m = reply(t, r.rcpt[0]?.reply, 450, text, `${what}: RCPT`)
  t.equal(r.data, null, `${what}: no message sent`)
  return m
}

function clean(t: tap.Test, pf: PostfixInstance): void {
  t.same(pf.policyWarnings(), [], 'no policy warnings in the Postfix log')
  t.same(pf.maillogProblems().filter((l) => /\b(fatal|panic):/.test(l)), [], 'no fatal or panic in the Postfix log')
  if (pf.daemon) {
    const pid = pf.daemon.pid()
    const pids = [...pf.policyLog().matchAll(/policyd-ts\[(\d+)\]: decision /g)].map((m) => Number(m[1]))
    t.same([...new Set(pids)], [pid], `every decision by the daemon (pid ${pid})`)
    t.equal(pf.daemon.output(), '', 'the daemon wrote nothing on stdout or stderr')
  }
}

/** [used, held] of each limit of `key`, as `policyd-ts ratelimit show KEY --json` reports them to an admin. */
function usage(t: tap.Test, pf: PostfixInstance, key: string): Record<string, [number, number]> {
  const r = pf.policyCommand(['ratelimit', 'show', key, '--json'])
  t.equal(r.code, 0, `policyd-ts ratelimit show ${key} --json exits 0 ${r.err.trim()}`)
  const out: Record<string, [number, number]> = {}
  try {
    const shown = JSON.parse(r.out) as { identities: Array<{ usage: Array<{ limit: string; used: number; held: number }> }> }
    for (const u of shown.identities.flatMap((i) => i.usage)) out[u.limit] = [u.used, u.held]
  } catch (err) {
    t.fail(`ratelimit show ${key} --json: ${(err as Error).message}: ${r.out}`)
  }
  return out
}

/** Decision lines of the policy log that match every one of `parts`. */
function decisions(pf: PostfixInstance, ...parts: RegExp[]): string[] {
  return pf.policyLog().split('\n').filter((l) => / decision /.test(l) && parts.every((p) => p.test(l)))
}

// ---------------------------------------------------------------------------

for (const policyMode of MODES) {
  t.test(`${policyMode}: after L messages of a sender the next RCPT gets the 4.7.1 text; not greylisted; reset lets it through`, async (t) => {
    const pf = await usePostfix(t, { ...PLACED, policyMode, policyArgs: [...BASE, '--ratelimit_sender_limits', '3msg/1h'] })
    t.match(fs.readFileSync(`${pf.etcDir}/main.cf`, 'utf8'), /^smtpd_recipient_restrictions = check_policy_service \S.*, permit_mynetworks, reject_unauth_destination$/m, 'main.cf: the check first')

    // What an admin sees with --test-mode against this instance's main.cf (postconf with MAIL_CONFIG).
    const tm = pf.policyCommand(['--test-mode'])
    t.equal(tm.code, 0, `--test-mode exits 0 ${tm.err}`)
    t.match(tm.out, /^# rate limiting: sender limits: 3msg\/1h$/m, '--test-mode: the sender limit')
    t.match(tm.out, /^# rate limiting: smtpd_end_of_data_restrictions has check_policy_service/m, '--test-mode: held mail is counted')
    t.notMatch(tm.out, /rate limiting: warning/, '--test-mode: no warning about the placement')

    const alice = { from: 'alice@sender.example', to: 'bob@example.test', xclient: { addr: '192.0.2.10' } }
    const before = Math.floor(Date.now() / 1000)
    for (let i = 1; i <= 3; i++) await accepted(t, pf, await pf.swaks(alice), `message ${i} of 3`)
    const after = Math.ceil(Date.now() / 1000)
    t.same(usage(t, pf, 'sender:alice@sender.example'), { '3msg/1h': [3, 0] }, 'ratelimit show: 3 of 3 used, nothing held')

    const over = await pf.swaks(alice)
    const m = refused(t, over, rateLimited('bob@example.test', '3msg/1h', 'sender:alice@sender.example'), 'message 4')
    // 60 slots of a minute: the first message leaves the window between 59 and 60 minutes after it was counted.
    const retry = m ? Date.parse(m[1]) / 1000 : NaN
    t.ok(retry >= before + 3540 && retry <= after + 3601, `retry after ${m?.[1]}: when the first message leaves the hour (${retry - before} s after the first was sent)`)
    const again = await pf.swaks(alice)
    refused(t, again, rateLimited('bob@example.test', '3msg/1h', 'sender:alice@sender.example'), 'message 5')

    // The limit is the sender's: another sender of the same client goes on.
    await accepted(t, pf, await pf.swaks({ ...alice, from: 'carol@sender.example' }), 'another sender of the same client')
    // Outside ratelimit_networks a sender is never limited (a forged one would use up the real user's limit), and
    // greylisting applies as before.
    const outside = await pf.swaks({ ...alice, xclient: { addr: OUTSIDE } })
    refused(t, outside, greylisted('bob@example.test'), 'the same sender from outside: greylisted, not rate-limited')

    const reset = pf.policyCommand(['ratelimit', 'reset', 'sender:alice@sender.example'])
    t.equal(reset.code, 0, `policyd-ts ratelimit reset sender:alice@sender.example exits 0 (${reset.out.trim()} ${reset.err.trim()})`)
    t.same(usage(t, pf, 'sender:alice@sender.example'), { '3msg/1h': [0, 0] }, 'ratelimit show after the reset: nothing used')
    await accepted(t, pf, await pf.swaks(alice), 'after the reset')
    t.same(usage(t, pf, 'sender:alice@sender.example'), { '3msg/1h': [1, 0] }, 'ratelimit show: counting goes on from there')

    const countedAlice = (): string[] => decisions(pf, /check=ratelimit reason=counted /, /state=END-OF-MESSAGE /, /sender=alice@sender\.example /)
    await waitFor(() => countedAlice().length >= 4, 5000)
    const log = pf.policyLog()
    t.equal(log.match(/rate limit 3msg\/1h exceeded for sender:alice@sender\.example: used 3, held 0, asked 1/g)?.length, 1, 'the hit logged once, not once per refusal')
    t.equal(decisions(pf, /check=ratelimit reason=exceeded /, /state=RCPT /, /sender=alice@sender\.example /).length, 2, 'log: two refusals')
    t.equal(countedAlice().length, 4, 'log: four messages of alice counted at END-OF-MESSAGE')
    t.same(decisions(pf, /check=greylist /, /client=192\.0\.2\./), [], 'log: no greylisting decision for the own network')
    t.equal(decisions(pf, /check=greylist reason=new /, new RegExp(`client=${esc(OUTSIDE)} `)).length, 1, 'log: the outside client greylisted')
    clean(t, pf)
  })

  t.test(`${policyMode}: a message with three recipients counts three`, async (t) => {
    const pf = await usePostfix(t, { ...PLACED, policyMode, policyArgs: [...BASE, '--ratelimit_client_limits', '4rcpt/1h'] })
    const client = { addr: '192.0.2.20' }
    const three = await pf.swaks({ from: 'dave@sender.example', to: ['bob@example.test', 'carol@example.test', 'erin@example.test'], xclient: client })
    await accepted(t, pf, three, 'three recipients')
    t.same(usage(t, pf, 'client:192.0.2.20'), { '4rcpt/1h': [3, 0] }, 'ratelimit show: 3 recipients counted, nothing held')

    // 3 counted + 1 fits in 4rcpt/1h; a second recipient would be the fifth.
    const two = await pf.swaks({ from: 'dave@sender.example', to: ['frank@example.test', 'grace@example.test'], xclient: client })
    reply(t, two.rcpt[0]?.reply, 250, RCPT_OK, 'next message: its first recipient (the fourth)')
    reply(t, two.rcpt[1]?.reply, 450, rateLimited('grace@example.test', '4rcpt/1h', 'client:192.0.2.20'), 'next message: its second recipient (the fifth)')
    reply(t, two.data, 250, QUEUED, 'next message: sent to the accepted recipient')
    // Wait for the copy itself: an empty list is truthy, so waiting on the filter alone returned before delivery.
    const mine = async (): Promise<Awaited<ReturnType<typeof pf.delivered>>> => (await pf.delivered(0, 0)).filter((m) => m.e2eId === two.id)
    await waitFor(async () => (await mine()).length >= 1, 10000)
    await waitFor(async () => (await pf.delivered(0, 0)).length >= 4, 10000)
    const copies = await mine()
    t.same(copies.map((m) => m.header('Delivered-To')[0]), ['frank@example.test'], 'next message: delivered to the fourth recipient only')
    t.same(usage(t, pf, 'client:192.0.2.20'), { '4rcpt/1h': [4, 0] }, 'ratelimit show: the refused recipient neither counted nor held')

    // The counter is the client's, whatever the sender.
    const other = await pf.swaks({ from: 'heidi@sender.example', to: 'ivan@example.test', xclient: client })
    refused(t, other, rateLimited('ivan@example.test', '4rcpt/1h', 'client:192.0.2.20'), 'another sender of that client')
    await pf.waitPolicyLog(new RegExp(`reason=counted .*queue_id=${two.queueId}`))
    t.equal(decisions(pf, /check=ratelimit reason=counted /, /state=END-OF-MESSAGE /).length, 2, 'log: two messages counted')
    t.equal(decisions(pf, /check=ratelimit reason=held /, /state=RCPT /).length, 4, 'log: four recipients held at RCPT')

    await t.test('a message to an exempt recipient (postmaster@) passes although the client is over its limit, and is not counted', async (t) => {
      const exempt = await pf.swaks({ from: 'heidi@sender.example', to: 'postmaster@example.test', xclient: client })
      await accepted(t, pf, exempt, 'to postmaster@')
      if (exempt.queueId === null) return // refused: said above, no END-OF-MESSAGE to wait for
      await pf.waitPolicyLog(new RegExp(`state=END-OF-MESSAGE .*queue_id=${exempt.queueId}`))
      t.same(decisions(pf, new RegExp(`queue_id=${exempt.queueId}`)).map((l) => / reason=(\S+)/.exec(l)?.[1]), ['exempt-recipient', 'exempt-recipient'], 'log: exempt at DATA and END-OF-MESSAGE too')
      t.same(usage(t, pf, 'client:192.0.2.20'), { '4rcpt/1h': [4, 0] }, 'ratelimit show: still 4')
    })
    clean(t, pf)
  })

  t.test(`${policyMode}: a message refused at DATA by another restriction does not count`, async (t) => {
    const pf = await usePostfix(t, { ...PLACED, policyMode, rejectAtData: ['refused@sender.example'], policyArgs: [...BASE, '--ratelimit_client_limits', '2msg/1h'] })
    const client = { addr: '192.0.2.30' }
    await accepted(t, pf, await pf.swaks({ from: 'alice@sender.example', to: 'bob@example.test', xclient: client }), 'the first of 2 messages')

    // One SMTP session, as a client would go on after a refusal: the refused message, then the next one.
    const s = await pf.smtp()
    await s.ehlo('client.example.net')
    reply(t, await s.xclient(client), 220, /./, 'XCLIENT')
    await s.ehlo('client.example.net')
    reply(t, await s.mail('refused@sender.example'), 250, /^2\.1\.0 Ok$/, 'refused message: MAIL')
    reply(t, await s.rcpt('bob@example.test'), 250, RCPT_OK, 'refused message: RCPT (held)')
    const data = await s.data('Subject: refused\r\n\r\nnever sent\r\n')
    reply(t, data.command, 554, /^5\.7\.1 <refused@sender\.example>: Sender address rejected: Access denied$/, 'refused message: DATA refused by check_sender_access')
    reply(t, await s.command('RSET'), 250, /^2\.0\.0 Ok$/, 'RSET')

    const id = `${pf.dir.split('/').pop()}-session`
    reply(t, await s.mail('alice@sender.example'), 250, /^2\.1\.0 Ok$/, 'second message: MAIL')
    reply(t, await s.rcpt('bob@example.test'), 250, RCPT_OK, 'second message: RCPT (fits: the refused message is neither counted nor still held)')
    const sent = await s.data(`Subject: second\r\nX-E2E-Id: ${id}\r\n\r\nthe second message\r\n`)
    reply(t, sent.result, 250, QUEUED, 'second message: queued')
    reply(t, await s.mail('alice@sender.example'), 250, /^2\.1\.0 Ok$/, 'third message: MAIL')
    reply(t, await s.rcpt('bob@example.test'), 450, rateLimited('bob@example.test', '2msg/1h', 'client:192.0.2.30'), 'third message: RCPT over 2msg/1h')
    await s.quit()

    t.same(usage(t, pf, 'client:192.0.2.30'), { '2msg/1h': [2, 0] }, 'ratelimit show: two messages counted, nothing left held')
    const mbox = await pf.delivered(2)
    t.equal(mbox.length, 2, 'two messages delivered')
    t.ok(mbox.some((m) => m.e2eId === id), 'the second message of the session among them')
    t.notMatch(mbox.map((m) => m.raw).join('\n'), /never sent/, 'the refused one not')

    const log = await pf.waitPolicyLog(/check=ratelimit reason=exceeded /)
    const instance = / state=RCPT .*sender=refused@sender\.example .*instance=(\S+)/.exec(log)?.[1]
    t.ok(instance, `the refused message's instance: ${instance}`)
    t.same(decisions(pf, new RegExp(`instance=${esc(instance ?? '?')}( |$)`)).map((l) => / state=(\S+)/.exec(l)?.[1]), ['RCPT', 'DATA'], 'the policy saw its RCPT and DATA, no END-OF-MESSAGE')
    t.equal(decisions(pf, /check=ratelimit reason=counted /, /state=END-OF-MESSAGE /).length, 2, 'log: two messages counted')
    clean(t, pf)
  })
}

t.test('nothing left behind: no instance running, no temp dir, no process (daemons included)', async (t) => {
  t.equal(runningInstances(), 0, 'every instance stopped')
  t.same(createdDirs().filter((d) => fs.existsSync(d)), [], 'every temp dir removed')
  t.same(leftoverProcesses(), [], 'no process of any instance left')
})
