// Greylisting end to end: a real private Postfix runs the built
// bin/policyd-ts through spawn(8), exactly as master.cf.example says, and
// swaks or a raw SMTP client talks to it. Slow on purpose (real sleeps of
// greylist_delay 2s); not part of `npm test`. Run as root:
//
//   bash scripts/e2e-deps.sh && npx tsc -p tsconfig.json && npx tap --jobs 1 --timeout 600 test/e2e/*.e2e.ts
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import {
  MYHOSTNAME,
  ROOT,
  createdDirs,
  leftoverProcesses,
  runningInstances,
  sleep,
  usePostfix,
  waitFor,
  type DeliveredMessage,
  type PostfixInstance,
  type SmtpReply,
  type SwaksResult,
  type Transport,
} from './postfix'

const VERSION = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version
const DELAY_S = 2
/** Every scenario: SPF off, a short delay, a fixed host name for the header. */
const BASE = ['--spf_enabled', 'no', '--greylist_delay', `${DELAY_S}s`, '--hostname', MYHOSTNAME]

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
/** What the client sees for a greylisted recipient: greylist_text's default behind Postfix's own prefix. */
const greylisted = (rcpt: string, seconds = DELAY_S): RegExp =>
  new RegExp(`^4\\.2\\.0 <${esc(rcpt)}>: Recipient address rejected: Greylisted, please try again in ${seconds} seconds$`)
/** The X-Greylist value of the first accepted retry (greylist_header's default). */
const X_GREYLIST = new RegExp(
  `^delayed [2-9] seconds by policyd-ts-${esc(VERSION)} at ${esc(MYHOSTNAME)}; (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \\d\\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \\d{4} \\d\\d:\\d\\d:\\d\\d \\+0000$`,
)
const RCPT_OK = /^2\.1\.5 Ok$/
const QUEUED = /^2\.0\.0 Ok: queued as [0-9A-F]+$/

function reply(t: tap.Test, got: SmtpReply | null | undefined, code: number, text: RegExp, what: string): void {
  t.ok(got, `${what}: a reply`)
  if (!got) return
  t.equal(got.code, code, `${what}: code ${code}`)
  t.match(got.text, text, `${what}: text`)
}

/** A swaks run that was refused at RCPT for every recipient with the greylist reply. */
function assertGreylisted(t: tap.Test, r: SwaksResult, rcpts: string[]): void {
  t.equal(r.exitCode, 24, 'swaks: no recipient accepted (exit 24)')
  t.same(r.rcpt.map((x) => x.to), rcpts, 'every RCPT was sent')
  for (const { to, reply: rr } of r.rcpt) reply(t, rr, 450, greylisted(to), `RCPT ${to}`)
  t.equal(r.data, null, 'no message was sent')
}

/** A swaks run accepted at RCPT for every recipient and at the end of DATA. */
function assertAccepted(t: tap.Test, r: SwaksResult, rcpts: string[]): void {
  t.equal(r.exitCode, 0, 'swaks exit 0')
  t.same(r.rcpt.map((x) => x.to), rcpts, 'every RCPT was sent')
  for (const { to, reply: rr } of r.rcpt) reply(t, rr, 250, RCPT_OK, `RCPT ${to}`)
  reply(t, r.dataCommand, 354, /^End data with/, 'DATA')
  reply(t, r.data, 250, QUEUED, 'end of DATA')
}

/** The delivered copies of the message swaks sent as `r`, one per recipient, waited for (bounded). */
async function copiesOf(pf: PostfixInstance, r: SwaksResult, rcpts: string[]): Promise<DeliveredMessage[]> {
  await waitFor(async () => (await pf.delivered(0, 0)).filter((m) => m.e2eId === r.id).length >= rcpts.length, 10000)
  return (await pf.delivered(0, 0)).filter((m) => m.e2eId === r.id)
}

function assertCopies(t: tap.Test, copies: DeliveredMessage[], rcpts: string[], xGreylist: 0 | 1, r: SwaksResult): void {
  t.same(copies.map((m) => m.header('Delivered-To')[0]).sort(), [...rcpts].sort(), `one delivered copy per recipient (${rcpts.join(', ')})`)
  for (const m of copies) {
    const to = m.header('Delivered-To')[0]
    const values = m.header('X-Greylist')
    t.equal(values.length, xGreylist, `copy for ${to}: X-Greylist ${xGreylist === 1 ? 'exactly once' : 'absent'}`)
    for (const v of values) t.match(v, X_GREYLIST, `copy for ${to}: X-Greylist text`)
    t.notMatch(m.body, /X-Greylist/i, `copy for ${to}: nothing in the body`)
    t.match(m.body, /This is a test mailing/, `copy for ${to}: body intact`)
    t.match(m.header('Received')[0] ?? '', new RegExp(`with ESMTP id ${r.queueId}\\b`), `copy for ${to}: the queued message ${r.queueId}`)
  }
}

function noPolicyWarnings(t: tap.Test, pf: PostfixInstance): void {
  t.same(pf.policyWarnings(), [], 'no policy warnings in the Postfix log')
  t.same(pf.maillogProblems().filter((l) => /\b(fatal|panic):/.test(l)), [], 'no fatal or panic in the Postfix log')
}

/** Sleeps until greylist_delay (plus a margin) has passed since `since`. */
async function afterDelay(since: number): Promise<void> {
  await sleep(Math.max(0, since + DELAY_S * 1000 + 300 - Date.now()))
}

// ---------------------------------------------------------------------------

for (const transport of ['unix', 'inet'] as Transport[]) {
  t.test(`1/7 greylisting through a ${transport} policy service: 450, retry after the delay 250 with one X-Greylist header`, async (t) => {
    const pf = await usePostfix(t, { transport, policyArgs: BASE })
    t.match(pf.policyEntry, transport === 'unix' ? /^policy\s+unix\s+-\s+n\s+n\s+-\s+0\s+spawn\n/ : new RegExp(`^127\\.0\\.0\\.1:${pf.policyPort} inet\\s+n\\s+n\\s+n\\s+-\\s+0\\s+spawn\\n\\s+-o command_time_limit=3600s\\n`), 'master.cf entry from master.cf.example')
    t.match(pf.policyEntry, /\n\s+user=nobody argv=\S+ --single-threaded-gc \S+\/bin\/policyd-ts /, 'argv as in master.cf.example')
    t.equal(pf.startUp, 'bundle+cache (code cache accepted)', 'with those node flags, as nobody, the start-up bundle and its code cache are used')
    const msg = { from: 'alice@sender.example', to: 'bob@example.test', xclient: { addr: '192.0.2.10' } }

    const first = await pf.swaks(msg)
    const firstAt = Date.now()
    assertGreylisted(t, first, ['bob@example.test'])

    const early = await pf.swaks(msg)
    t.equal(early.rcpt[0]?.reply.code, 450, 'a retry before the delay is greylisted again')
    t.match(early.rcpt[0]?.reply.text ?? '', /Greylisted, please try again in [12] seconds$/, '...with the seconds left')

    await afterDelay(firstAt)
    const retry = await pf.swaks(msg)
    assertAccepted(t, retry, ['bob@example.test'])
    assertCopies(t, await copiesOf(pf, retry, ['bob@example.test']), ['bob@example.test'], 1, retry)

    const later = await pf.swaks(msg)
    assertAccepted(t, later, ['bob@example.test'])
    assertCopies(t, await copiesOf(pf, later, ['bob@example.test']), ['bob@example.test'], 0, later)
    t.equal((await pf.delivered(2)).length, 2, 'exactly two messages delivered: the refused attempts left nothing')

    const log = await pf.waitPolicyLog(new RegExp(`state=DATA .*queue_id=${later.queueId}`))
    t.match(log, /decision action=DEFER_IF_PERMIT check=greylist reason=new .*recipient=bob@example\.test/, 'log: new triplet deferred')
    t.match(log, /decision action=DEFER_IF_PERMIT check=greylist reason=early /, 'log: early retry deferred')
    t.match(log, /decision action=PREPEND check=greylist reason=first-pass .*delay=[2-9]\b/, 'log: first pass with the header')
    t.match(log, /decision action=DUNNO check=greylist reason=triplet-known /, 'log: known triplet')
    t.match(log, new RegExp(`reason=not-rcpt-stage state=DATA .*queue_id=${retry.queueId}`), 'the policy was also asked at DATA (smtpd_data_restrictions)')
    noPolicyWarnings(t, pf)
  })
}

t.test('2/7 a message to two recipients: both 450, after the delay both 250, each copy has X-Greylist once', async (t) => {
  const pf = await usePostfix(t, { policyArgs: BASE })
  const rcpts = ['bob@example.test', 'carol@example.test']
  const msg = { from: 'dave@sender.example', to: rcpts, xclient: { addr: '198.51.100.10' } }
  const first = await pf.swaks(msg)
  const firstAt = Date.now()
  assertGreylisted(t, first, rcpts)
  await afterDelay(firstAt)
  const retry = await pf.swaks(msg)
  assertAccepted(t, retry, rcpts)
  const copies = await copiesOf(pf, retry, rcpts)
  t.equal(copies.length, 2, 'two copies delivered')
  assertCopies(t, copies, rcpts, 1, retry)
  t.equal((await pf.delivered(2)).length, 2, 'nothing else delivered')
  const log = await pf.waitPolicyLog(new RegExp(`state=DATA .*queue_id=${retry.queueId}`))
  t.equal(log.match(/decision action=PREPEND .*reason=first-pass/g)?.length, 1, 'log: the header was handed out once')
  t.match(log, /decision action=DUNNO check=greylist reason=first-pass .*recipient=carol@example\.test/, 'log: second recipient passed without a second header')
  noPolicyWarnings(t, pf)
})

t.test('3/7 whitelisted clients (by address and by name) and a whitelisted recipient pass at once', async (t) => {
  const pf = await usePostfix(t, {
    files: {
      whitelist_clients: '# postgrey format\n192.0.2.17\npartner.example\n',
      whitelist_recipients: '# postgrey format\npostmaster@\n',
    },
    policyArgs: (p) => [
      ...BASE,
      `--greylist_whitelist_clients=${p.file('whitelist_clients')}`,
      `--greylist_whitelist_recipients=${p.file('whitelist_recipients')}`,
    ],
  })
  const cases = [
    { what: 'client whitelisted by address', from: 'erin@sender.example', to: 'bob@example.test', xclient: { addr: '192.0.2.17' }, reason: 'client-whitelist' },
    { what: 'client whitelisted by name', from: 'frank@sender.example', to: 'bob@example.test', xclient: { addr: '198.51.100.20', name: 'mx1.partner.example' }, reason: 'client-whitelist' },
    { what: 'whitelisted recipient postmaster@', from: 'grace@sender.example', to: 'postmaster@example.test', xclient: { addr: '203.0.113.5' }, reason: 'recipient-whitelist' },
  ]
  for (const c of cases) {
    const r = await pf.swaks(c)
    await t.test(`${c.what}: 250 on the first attempt, no X-Greylist`, async (t) => {
      assertAccepted(t, r, [c.to])
      assertCopies(t, await copiesOf(pf, r, [c.to]), [c.to], 0, r)
    })
  }
  const control = await pf.swaks({ from: 'grace@sender.example', to: 'bob@example.test', xclient: { addr: '203.0.113.5' } })
  await t.test('control: the same client to another recipient is greylisted', async (t) => assertGreylisted(t, control, ['bob@example.test']))
  const log = await pf.waitPolicyLog(/reason=new .*recipient=bob@example\.test/)
  t.equal(log.match(/decision action=DUNNO check=greylist reason=client-whitelist /g)?.length, 2, 'log: two client-whitelist decisions')
  t.match(log, /reason=client-whitelist .*client=192\.0\.2\.17 .*whitelist=".*whitelist_clients:2 192\.0\.2\.17"/, 'log: the address entry')
  t.match(log, /reason=client-whitelist .*client_name=mx1\.partner\.example .*whitelist=".*whitelist_clients:3 partner\.example"/, 'log: the name entry')
  t.match(log, /reason=recipient-whitelist .*recipient=postmaster@example\.test .*whitelist=".*whitelist_recipients:2 postmaster@"/, 'log: the recipient entry')
  const Database = (await import('better-sqlite3')).default
  const db = new Database(pf.dbFile, { readonly: true, fileMustExist: true })
  try {
    const keys = (db.prepare('SELECT key FROM triplet ORDER BY key').all() as Array<{ key: string }>).map((r) => r.key)
    t.same(keys, ['203.0.113.0/24/grace@sender.example/bob@example.test'], 'only the control triplet was recorded')
  } finally {
    db.close()
  }
  noPolicyWarnings(t, pf)
})

t.test('4/7 greylist_learn_only: never defers, but records the triplet', async (t) => {
  const pf = await usePostfix(t, { policyArgs: [...BASE, '--greylist_learn_only', 'yes'] })
  const msg = { from: 'heidi@sender.example', to: 'bob@example.test', xclient: { addr: '192.0.2.44' } }
  const first = await pf.swaks(msg)
  const firstAt = Date.now()
  assertAccepted(t, first, ['bob@example.test'])
  assertCopies(t, await copiesOf(pf, first, ['bob@example.test']), ['bob@example.test'], 0, first)
  const again = await pf.swaks(msg)
  assertAccepted(t, again, ['bob@example.test'])
  assertCopies(t, await copiesOf(pf, again, ['bob@example.test']), ['bob@example.test'], 0, again)
  await pf.waitPolicyLog(new RegExp(`state=DATA .*queue_id=${again.queueId}`))
  t.equal(pf.policyLog().match(/decision action=DUNNO check=greylist reason=early-learn-only|decision action=DUNNO check=greylist reason=new-learn-only/g)?.length, 2, 'log: both attempts learned, not deferred')

  const Database = (await import('better-sqlite3')).default
  const db = new Database(pf.dbFile, { readonly: true, fileMustExist: true })
  try {
    const rows = db.prepare('SELECT key, first, last, passed, count FROM triplet').all() as Array<{ key: string; first: number; last: number; passed: number; count: number }>
    t.equal(rows.length, 1, 'one triplet recorded')
    t.equal(rows[0]?.key, '192.0.2.0/24/heidi@sender.example/bob@example.test', 'keyed by the client /24, sender and recipient')
    t.equal(rows[0]?.count, 2, 'both attempts counted')
    t.equal(rows[0]?.passed, 0, 'not marked as passed (it was never deferred)')
    t.ok(rows[0] && Math.abs(rows[0].first - Date.now() / 1000) < 60, 'first attempt time is now')
  } finally {
    db.close()
  }

  // After the delay: still accepted; nothing was ever delayed, so no X-Greylist header should claim a delay.
  await afterDelay(firstAt)
  const later = await pf.swaks(msg)
  assertAccepted(t, later, ['bob@example.test'])
  const copies = await copiesOf(pf, later, ['bob@example.test'])
  t.equal(copies.length, 1, 'delivered')
  t.equal(copies[0]?.header('X-Greylist').length, 0, 'no "X-Greylist: delayed N seconds" on mail that was never delayed')
  noPolicyWarnings(t, pf)
})

t.test('5/7 the database directory made unusable: a new policy process fails open (DUNNO) and logs it', async (t) => {
  const pf = await usePostfix(t, { policyArgs: BASE })
  const xclient = { addr: '192.0.2.55' }
  const first = await pf.swaks({ from: 'ivan@sender.example', to: 'bob@example.test', xclient })
  const firstAt = Date.now()
  assertGreylisted(t, first, ['bob@example.test'])
  await afterDelay(firstAt)
  const accepted = await pf.swaks({ from: 'ivan@sender.example', to: 'bob@example.test', xclient })
  await t.test('first accepted session (the database works)', async (t) => {
    assertAccepted(t, accepted, ['bob@example.test'])
    assertCopies(t, await copiesOf(pf, accepted, ['bob@example.test']), ['bob@example.test'], 1, accepted)
  })
  const before = pf.policyPids()
  t.ok(before.length >= 1, `policy processes before: ${before.join(', ')}`)

  // Unusable for the policy user (root, running the test, still gets in).
  fs.chmodSync(pf.dbDir, 0o000)
  t.teardown(() => fs.chmodSync(pf.dbDir, 0o700))
  const old = await pf.reload()
  t.same(old, before, 'postfix reload ended the running policy processes (they would keep their open database)')

  // A new triplet: a working database would say 450.
  const broken = await pf.swaks({ from: 'judy@sender.example', to: 'bob@example.test', xclient })
  const after = pf.policyPids()
  t.ok(after.length >= 1 && after.every((p) => !before.includes(p)), `a new policy process served it: ${after.join(', ')}`)
  assertAccepted(t, broken, ['bob@example.test'])
  assertCopies(t, await copiesOf(pf, broken, ['bob@example.test']), ['bob@example.test'], 0, broken)
  const log = await pf.waitPolicyLog(new RegExp(`state=DATA .*queue_id=${broken.queueId}`))
  const pidRe = `policyd-ts\\[(${after.join('|')})\\]`
  t.match(log, new RegExp(`${pidRe}: database readonly, answering fail_action DUNNO: database ${esc(pf.dbFile)}: EACCES: permission denied`), 'log: the new process names the database failure and the fail_action')
  t.match(log, new RegExp(`${pidRe}: decision action=DUNNO check=greylist reason=store-readonly .*sender=judy@sender\\.example`), 'log: the decision says why')

  // A second message while the database is still unusable.
  const broken2 = await pf.swaks({ from: 'kim@sender.example', to: 'bob@example.test', xclient })
  assertAccepted(t, broken2, ['bob@example.test'])
  const log2 = await pf.waitPolicyLog(new RegExp(`state=DATA .*queue_id=${broken2.queueId}`))
  t.comment('policy log lines about the database while it is unusable:')
  for (const l of log2.split('\n').filter((l) => /database (readonly|available)/.test(l))) t.comment(`  ${l.replace(/^\S+ /, '')}`)
  t.notMatch(log2, /database available again/, 'no recovery is logged while the database is still unusable')
  t.equal(log2.match(/database readonly, answering fail_action/g)?.length, 1, 'the failure is logged once per change of state, not per message')
  noPolicyWarnings(t, pf)
})

t.test('6/7 the policy process killed (SIGKILL) between two RCPTs of one session', async (t) => {
  const pf = await usePostfix(t, { policyArgs: BASE })
  const s = await pf.smtp()
  reply(t, await s.ehlo('client.example.net'), 250, /XCLIENT/, 'EHLO')
  reply(t, await s.xclient({ addr: '192.0.2.66' }), 220, /ESMTP/, 'XCLIENT')
  reply(t, await s.ehlo('client.example.net'), 250, /^mx\.example\.test/, 'EHLO after XCLIENT')
  reply(t, await s.mail('leo@sender.example'), 250, /^2\.1\.0 Ok$/, 'MAIL')
  reply(t, await s.rcpt('bob@example.test'), 450, greylisted('bob@example.test'), 'RCPT 1 (policy alive)')
  const victims = pf.policyPids()
  t.equal(victims.length, 1, `one policy process for this smtpd: ${victims.join(', ')}`)
  // policyd-ts commits a decision just after its reply (by design): wait for the commit, so that the kill falls
  // between two requests and not inside that window (a kill 3-5 ms after the reply lost the triplet in 7 of 20 tries).
  const Database = (await import('better-sqlite3')).default
  const committedIn = Date.now()
  const committed = await waitFor(() => {
    const db = new Database(pf.dbFile, { readonly: true, fileMustExist: true })
    try {
      const row = db.prepare('SELECT count(*) AS n FROM triplet WHERE key = ?').get('192.0.2.0/24/leo@sender.example/bob@example.test') as { n: number }
      return row.n === 1
    } finally {
      db.close()
    }
  }, 5000, 1)
  t.ok(committed, `the first RCPT's triplet is committed (seen after ${Date.now() - committedIn} ms)`)
  const warningsBefore = pf.maillogProblems().length
  process.kill(victims[0], 'SIGKILL')
  t.ok(await waitFor(() => !pf.policyPids().includes(victims[0]), 5000), 'the policy process is gone')

  const t0 = Date.now()
  const second = await s.rcpt('carol@example.test')
  const took = Date.now() - t0
  const secondAt = Date.now()
  reply(t, second, 450, greylisted('carol@example.test'), 'RCPT 2 (after the kill): a proper policy answer, not 451 4.3.5')
  const replacement = pf.policyPids()
  t.ok(replacement.length === 1 && replacement[0] !== victims[0], `a new policy process answered: ${replacement.join(', ')}`)
  reply(t, await s.command('RSET'), 250, /^2\.0\.0 Ok$/, 'RSET')
  reply(t, await s.quit(), 221, /^2\.0\.0 Bye$/, 'QUIT')
  await sleep(200) // postlogd writes asynchronously
  const killWarnings = pf.maillogProblems().slice(warningsBefore)
  t.comment(`RCPT 2 took ${took} ms (smtpd_policy_service_retry_delay is 1s); Postfix log lines about the kill:`)
  for (const l of killWarnings) t.comment(`  ${l}`)
  t.ok(killWarnings.every((l) => /spawn\[\d+\]: warning: command \S+ killed by signal 9$|problem talking to server|premature end-of-input/.test(l)), 'only warnings about the killed connection')

  // The next session: both triplets (one recorded by the killed process) pass after the delay.
  const policyWarningsBefore = pf.policyWarnings().length
  await afterDelay(secondAt)
  const rcpts = ['bob@example.test', 'carol@example.test']
  const next = await pf.swaks({ from: 'leo@sender.example', to: rcpts, xclient: { addr: '192.0.2.66' } })
  assertAccepted(t, next, rcpts)
  assertCopies(t, await copiesOf(pf, next, rcpts), rcpts, 1, next)
  await pf.waitPolicyLog(new RegExp(`state=DATA .*queue_id=${next.queueId}`))
  t.same(pf.policyWarnings().slice(policyWarningsBefore), [], 'no new policy warnings')
  t.same(pf.maillogProblems().slice(warningsBefore + killWarnings.length), [], 'no new warnings at all')
})

t.test('nothing left behind: no instance running, no temp dir, no process', async (t) => {
  t.equal(runningInstances(), 0, 'every instance stopped')
  t.same(createdDirs().filter((d) => fs.existsSync(d)), [], 'every temp dir removed')
  t.same(leftoverProcesses(), [], 'no process of any instance left')
})
