// The daemon end to end: a real private Postfix (smtpd chrooted in the
// queue directory, as on Debian) asks ONE policyd-ts process that the test
// runs itself (policyd-ts --listen, as nobody, with the node flags of
// master.cf.example). No master.cf entry: main.cf alone names it,
// `check_policy_service { unix:policyd-ts/policy, default_action=DUNNO }`
// (relative to the queue directory, all a chrooted smtpd can reach) or
// `{ inet:127.0.0.1:PORT, default_action=DUNNO }`. Slow on purpose (real
// sleeps of greylist_delay 2s, Postfix's 1 s policy retry delay); not part
// of `npm test`. Run as root:
//
//   bash scripts/e2e-deps.sh && npm run build && npx tap --jobs 1 --timeout 600 test/e2e/daemon.e2e.ts
import t from 'tap'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import {
  DAEMON_SOCKET_GROUP,
  MYHOSTNAME,
  ROOT,
  SPAWN_USER,
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
/** The daemon the test runs, and smtpd chrooted in the queue directory as Debian runs it. */
const DAEMON = { policyMode: 'daemon', chrootSmtpd: true } as const

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
const greylisted = (rcpt: string): RegExp => new RegExp(`^4\\.2\\.0 <${esc(rcpt)}>: Recipient address rejected: Greylisted, please try again in [12] seconds$`)
const X_GREYLIST = new RegExp(`^delayed [2-9] seconds by policyd-ts-${esc(VERSION)} at ${esc(MYHOSTNAME)}; `)
const RCPT_OK = /^2\.1\.5 Ok$/
const QUEUED = /^2\.0\.0 Ok: queued as [0-9A-F]+$/

function reply(t: tap.Test, got: SmtpReply | null | undefined, code: number, text: RegExp, what: string): void {
  t.ok(got, `${what}: a reply`)
  if (!got) return
  t.equal(got.code, code, `${what}: code ${code}`)
  t.match(got.text, text, `${what}: text`)
}

function assertGreylisted(t: tap.Test, r: SwaksResult, rcpts: string[]): void {
  t.equal(r.exitCode, 24, 'swaks: no recipient accepted (exit 24)')
  t.same(r.rcpt.map((x) => x.to), rcpts, 'every RCPT was sent')
  for (const { to, reply: rr } of r.rcpt) reply(t, rr, 450, greylisted(to), `RCPT ${to}`)
  t.equal(r.data, null, 'no message was sent')
}

/** Accepted at every RCPT and at the end of DATA: in particular no 451 4.3.5 (the default_action Postfix has without DUNNO). */
function assertAccepted(t: tap.Test, r: SwaksResult, rcpts: string[]): void {
  t.equal(r.exitCode, 0, 'swaks exit 0')
  t.same(r.rcpt.map((x) => x.to), rcpts, 'every RCPT was sent')
  for (const { to, reply: rr } of r.rcpt) reply(t, rr, 250, RCPT_OK, `RCPT ${to}`)
  reply(t, r.data, 250, QUEUED, 'end of DATA')
}

/** The delivered copies of the message swaks sent as `r`, waited for (bounded). */
async function copiesOf(pf: PostfixInstance, r: SwaksResult, n: number): Promise<DeliveredMessage[]> {
  await waitFor(async () => (await pf.delivered(0, 0)).filter((m) => m.e2eId === r.id).length >= n, 10000)
  return (await pf.delivered(0, 0)).filter((m) => m.e2eId === r.id)
}

async function assertCopies(t: tap.Test, pf: PostfixInstance, r: SwaksResult, rcpts: string[], xGreylist: 0 | 1): Promise<void> {
  const copies = await copiesOf(pf, r, rcpts.length)
  t.same(copies.map((m) => m.header('Delivered-To')[0]).sort(), [...rcpts].sort(), `one delivered copy per recipient (${rcpts.join(', ')})`)
  for (const m of copies) {
    const values = m.header('X-Greylist')
    t.equal(values.length, xGreylist, `copy for ${m.header('Delivered-To')[0]}: X-Greylist ${xGreylist === 1 ? 'exactly once' : 'absent'}`)
    for (const v of values) t.match(v, X_GREYLIST, 'X-Greylist text')
  }
}

function noPolicyWarnings(t: tap.Test, pf: PostfixInstance): void {
  t.same(pf.policyWarnings(), [], 'no "problem talking to server", "missing attribute action" or "premature end-of-input" in the Postfix log')
  t.same(pf.maillogProblems().filter((l) => /\b(fatal|panic):/.test(l)), [], 'no fatal or panic in the Postfix log')
}

/** The PIDs in the policy log's decision lines. */
function decisionPids(log: string): number[] {
  return [...log.matchAll(/policyd-ts\[(\d+)\]: decision /g)].map((m) => Number(m[1]))
}

function daemonPid(pf: PostfixInstance): number {
  const pid = pf.daemon?.pid()
  if (!pid) throw new Error('no daemon runs')
  return pid
}

/** uid of a process, from /proc. */
function processUid(pid: number): number {
  return Number(/^Uid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1])
}

const uidOf = (user: string): number => Number(fs.readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(`${user}:`))?.split(':')[2])
const gidOf = (group: string): number => Number(fs.readFileSync('/etc/group', 'utf8').split('\n').find((l) => l.startsWith(`${group}:`))?.split(':')[2])

async function afterDelay(since: number): Promise<void> {
  await sleep(Math.max(0, since + DELAY_S * 1000 + 300 - Date.now()))
}

/** The Postfix side as written: only main.cf names the daemon. */
function assertPostfixSide(t: tap.Test, pf: PostfixInstance, target: string): void {
  const mainCf = fs.readFileSync(path.join(pf.etcDir, 'main.cf'), 'utf8')
  const service = `check_policy_service { ${target}, default_action=DUNNO }`
  t.match(mainCf, new RegExp(`^smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination, ${esc(service)}$`, 'm'), `main.cf: ${service} after reject_unauth_destination`)
  t.match(mainCf, new RegExp(`^smtpd_data_restrictions = ${esc(service)}$`, 'm'), 'main.cf: the same service string at DATA (one connection per smtpd)')
  t.notMatch(fs.readFileSync(path.join(pf.etcDir, 'master.cf'), 'utf8'), /spawn|policyd-ts/, 'master.cf: no policy service at all')
}

// ---------------------------------------------------------------------------

for (const transport of ['unix', 'inet'] as Transport[]) {
  t.test(`${transport === 'unix' ? 1 : 2}/6 greylisting through the daemon over ${transport}: 450, after the delay 250 with X-Greylist, all from one daemon process`, async (t) => {
    const pf = await usePostfix(t, { ...DAEMON, transport, policyArgs: BASE })
    const pid = daemonPid(pf)
    assertPostfixSide(t, pf, transport === 'unix' ? 'unix:policyd-ts/policy' : `inet:127.0.0.1:${pf.policyPort}`)
    t.equal(processUid(pid), uidOf(SPAWN_USER), `the daemon runs as ${SPAWN_USER}`)
    t.match(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' '), /^\S+ --single-threaded-gc \S+\/bin\/policyd-ts --listen /, 'with the node flags of master.cf.example')
    t.notMatch(fs.readFileSync(`/proc/${pid}/environ`, 'utf8'), /NODE_OPTIONS/, 'nothing of the test runner loaded into it (no NODE_OPTIONS)')
    if (transport === 'unix') {
      const st = fs.statSync(pf.daemon!.socketPath!)
      t.ok(st.isSocket(), `${pf.daemon!.socketPath} is a socket`)
      t.equal(st.uid, uidOf(SPAWN_USER), `socket owner ${SPAWN_USER}`)
      t.equal(st.gid, gidOf(DAEMON_SOCKET_GROUP), `socket group ${DAEMON_SOCKET_GROUP} (the group smtpd runs as)`)
      t.equal((st.mode & 0o777).toString(8), '660', 'socket mode 0660')
    }

    const msg = { from: 'alice@sender.example', to: 'bob@example.test', xclient: { addr: '192.0.2.10' } }
    const first = await pf.swaks(msg)
    const firstAt = Date.now()
    assertGreylisted(t, first, ['bob@example.test'])
    const smtpd = Number(/postfix\/smtpd\[(\d+)\]: NOQUEUE: reject: RCPT .*from=<alice@sender\.example>/.exec(pf.maillog())?.[1])
    t.equal(fs.readlinkSync(`/proc/${smtpd}/root`), path.join(pf.dir, 'spool'), `the smtpd that asked (pid ${smtpd}) runs chrooted in the queue directory`)
    const early = await pf.swaks(msg)
    reply(t, early.rcpt[0]?.reply, 450, greylisted('bob@example.test'), 'a retry before the delay: greylisted again')

    await afterDelay(firstAt)
    const retry = await pf.swaks(msg)
    assertAccepted(t, retry, ['bob@example.test'])
    await assertCopies(t, pf, retry, ['bob@example.test'], 1)
    const later = await pf.swaks(msg)
    assertAccepted(t, later, ['bob@example.test'])
    await assertCopies(t, pf, later, ['bob@example.test'], 0)

    const log = await pf.waitPolicyLog(new RegExp(`state=DATA .*queue_id=${later.queueId}`))
    t.match(log, /decision action=DEFER_IF_PERMIT check=greylist reason=new .*recipient=bob@example\.test/, 'log: new triplet deferred')
    t.match(log, /decision action=PREPEND check=greylist reason=first-pass /, 'log: first pass with the header')
    t.match(log, new RegExp(`reason=not-rcpt-stage state=DATA .*queue_id=${retry.queueId}`), 'the daemon was also asked at DATA')
    const pids = decisionPids(log)
    t.ok(pids.length >= 6, `${pids.length} decisions logged`)
    t.same([...new Set(pids)], [pid], `every decision by the daemon (pid ${pid})`)
    t.same(pf.policyPids(), [pid], 'no other policyd-ts process: Postfix spawned none')
    t.equal(pf.daemon!.output(), '', 'the daemon wrote nothing on stdout or stderr')
    t.same(pf.maillogProblems(), [], 'no warning at all in the Postfix log')
    noPolicyWarnings(t, pf)
  })
}

t.test('3/6 a message to two recipients through the daemon: both 450, then both 250, X-Greylist exactly once in each copy', async (t) => {
  const pf = await usePostfix(t, { ...DAEMON, policyArgs: BASE })
  const rcpts = ['bob@example.test', 'carol@example.test']
  const msg = { from: 'dave@sender.example', to: rcpts, xclient: { addr: '198.51.100.10' } }
  const first = await pf.swaks(msg)
  const firstAt = Date.now()
  assertGreylisted(t, first, rcpts)
  await afterDelay(firstAt)
  const retry = await pf.swaks(msg)
  assertAccepted(t, retry, rcpts)
  await assertCopies(t, pf, retry, rcpts, 1)
  t.equal((await pf.delivered(2)).length, 2, 'nothing else delivered')
  const log = await pf.waitPolicyLog(new RegExp(`state=DATA .*queue_id=${retry.queueId}`))
  t.equal(log.match(/decision action=PREPEND .*reason=first-pass/g)?.length, 1, 'log: the header was handed out once for the message')
  t.match(log, /decision action=DUNNO check=greylist reason=first-pass .*recipient=carol@example\.test/, 'log: the second recipient passed without a second header')
  noPolicyWarnings(t, pf)
})

t.test('4/6 eight concurrent SMTP sessions (eight smtpd processes) all served by the one daemon process', async (t) => {
  const pf = await usePostfix(t, { ...DAEMON, policyArgs: BASE })
  const pid = daemonPid(pf)
  const N = 8
  const sender = (i: number): string => `conc${i}@sender.example`
  // All sessions open at once: each needs an smtpd of its own, and each smtpd opens its own policy connection.
  const sessions = await Promise.all(Array.from({ length: N }, () => pf.smtp()))
  const rcptReplies = await Promise.all(
    sessions.map(async (s, i) => {
      await s.ehlo('client.example.net')
      await s.xclient({ addr: `203.0.113.${10 + i}` })
      await s.ehlo('client.example.net')
      await s.mail(sender(i))
      return s.rcpt('bob@example.test')
    }),
  )
  const firstAt = Date.now()
  rcptReplies.forEach((r, i) => reply(t, r, 450, greylisted('bob@example.test'), `session ${i}: RCPT`))
  await sleep(300) // postlogd writes asynchronously
  const smtpdPids = new Set(
    pf.maillog().split('\n').filter((l) => /NOQUEUE: reject: RCPT .* from=<conc\d@sender\.example>/.test(l)).map((l) => /postfix\/smtpd\[(\d+)\]/.exec(l)?.[1]),
  )
  t.equal(smtpdPids.size, N, `${N} different smtpd processes answered: ${[...smtpdPids].join(', ')}`)
  t.same(pf.policyPids(), [pid], 'while they are open, the only policyd-ts process is the daemon (/proc)')
  // USR1 makes the daemon log its open connections: one per smtpd.
  const before = pf.policyLog().length
  process.kill(pid, 'SIGUSR1')
  const usr1 = await waitFor(() => /connections=(\d+) rss_mb=/.exec(pf.policyLog().slice(before)), 5000)
  t.equal(usr1?.[1], String(N), `the daemon holds ${N} connections at once, one per smtpd`)
  await Promise.all(sessions.map((s) => s.quit()))

  // The retries, concurrently too, with the message: every one accepted with its header.
  await afterDelay(firstAt)
  const retries = await Promise.all(Array.from({ length: N }, (_, i) => pf.swaks({ from: sender(i), to: 'bob@example.test', xclient: { addr: `203.0.113.${10 + i}` } })))
  for (const [i, r] of retries.entries()) {
    await t.test(`retry ${i}`, async (t) => {
      assertAccepted(t, r, ['bob@example.test'])
      await assertCopies(t, pf, r, ['bob@example.test'], 1)
    })
  }
  const last = retries.map((r) => r.queueId)
  const log = await waitFor(() => last.every((q) => new RegExp(`state=DATA .*queue_id=${q}`).test(pf.policyLog())) && pf.policyLog(), 5000)
  t.ok(log, 'every DATA request logged')
  const pids = decisionPids(pf.policyLog())
  t.ok(pids.length >= 3 * N, `${pids.length} decisions logged`)
  t.same([...new Set(pids)], [pid], `every decision by the one daemon (pid ${pid})`)
  t.same(pf.policyPids(), [pid], 'still one policyd-ts process')
  noPolicyWarnings(t, pf)
})

t.test('5/6 the daemon stopped with TERM and started again between two messages: the next message is served by the new one', async (t) => {
  const pf = await usePostfix(t, { ...DAEMON, policyArgs: BASE })
  const first = daemonPid(pf)
  const msg = { from: 'erin@sender.example', to: 'bob@example.test', xclient: { addr: '192.0.2.20' } }
  const greylist = await pf.swaks(msg)
  const greylistAt = Date.now()
  assertGreylisted(t, greylist, ['bob@example.test'])

  const exit = await pf.daemon!.stop()
  t.same(exit, { pid: first, code: 0, signal: null, killed: false }, 'TERM: the daemon exits 0 by itself')
  await pf.waitPolicyLog(new RegExp(`policyd-ts\\[${first}\\]: daemon stopped`))
  const second = await pf.daemon!.start()
  t.not(second, first, `a new daemon process (pid ${second})`)

  await afterDelay(greylistAt)
  // The idle smtpd saw the old daemon close its policy connection at TERM, and connects anew for the next request.
  const retry = await pf.swaks(msg)
  t.comment(`the message after the restart took ${retry.ms} ms`)
  assertAccepted(t, retry, ['bob@example.test'])
  await assertCopies(t, pf, retry, ['bob@example.test'], 1)
  const log = await pf.waitPolicyLog(new RegExp(`state=DATA .*queue_id=${retry.queueId}`))
  t.match(log, new RegExp(`policyd-ts\\[${second}\\]: decision action=PREPEND check=greylist reason=first-pass .*sender=erin@sender\\.example`), 'the new daemon passed it: the triplet recorded before the restart was kept')
  t.same(pf.policyPids(), [second], 'only the new daemon runs')

  // Restarted again in the middle of an SMTP session, between two of its messages.
  const s = await pf.smtp()
  await s.ehlo('client.example.net')
  await s.xclient({ addr: '192.0.2.21' })
  await s.ehlo('client.example.net')
  reply(t, await s.mail('ivan@sender.example'), 250, /^2\.1\.0 Ok$/, 'session: MAIL 1')
  reply(t, await s.rcpt('bob@example.test'), 450, greylisted('bob@example.test'), 'session: RCPT 1, before the restart')
  reply(t, await s.command('RSET'), 250, /^2\.0\.0 Ok$/, 'session: RSET')
  t.same(await pf.daemon!.stop(), { pid: second, code: 0, signal: null, killed: false }, 'TERM: exit 0')
  const third = await pf.daemon!.start()
  reply(t, await s.mail('judy@sender.example'), 250, /^2\.1\.0 Ok$/, 'session: MAIL 2')
  const t0 = Date.now()
  reply(t, await s.rcpt('bob@example.test'), 450, greylisted('bob@example.test'), 'session: RCPT 2, after the restart: a proper answer')
  // This smtpd was busy with the session: it finds its old connection closed at the request and retries on a new
  // one after smtpd_policy_service_retry_delay (1s), without a warning (EOF before the request is not an error).
  t.comment(`RCPT 2 took ${Date.now() - t0} ms`)
  await s.quit()
  await pf.waitPolicyLog(new RegExp(`policyd-ts\\[${third}\\]: decision action=DEFER_IF_PERMIT .*sender=judy@sender\\.example`))
  t.pass(`the third daemon (pid ${third}) answered it`)
  await sleep(300) // postlogd writes asynchronously
  noPolicyWarnings(t, pf)
})

for (const transport of ['unix', 'inet'] as Transport[]) {
  t.test(`6/6 the daemon not running (${transport}): Postfix uses default_action=DUNNO, the mail is accepted, no 451`, async (t) => {
    const pf = await usePostfix(t, { ...DAEMON, transport, policyArgs: BASE })
    const served = await pf.swaks({ from: 'frank@sender.example', to: 'bob@example.test', xclient: { addr: '192.0.2.30' } })
    assertGreylisted(t, served, ['bob@example.test'])
    const exit = await pf.daemon!.stop()
    t.equal(exit?.code, 0, 'the daemon stopped (TERM, exit 0)')
    if (transport === 'unix') t.notOk(fs.existsSync(pf.daemon!.socketPath!), 'its socket file was removed at exit')
    await sleep(300)
    const problemsBefore = pf.maillogProblems().length

    // A new triplet: the daemon would say 450.
    const down = await pf.swaks({ from: 'grace@sender.example', to: 'bob@example.test', xclient: { addr: '192.0.2.31' } })
    t.comment(`with the daemon down the message took ${down.ms} ms (two tries per request, smtpd_policy_service_retry_delay 1s)`)
    assertAccepted(t, down, ['bob@example.test'])
    await assertCopies(t, pf, down, ['bob@example.test'], 0)
    await sleep(300) // postlogd writes asynchronously
    // What Postfix logs when it cannot reach the policy server, per request (RCPT, then DATA): two tries 1 s apart
    // (smtpd_policy_service_try_limit, _retry_delay), each "connect to SERVICE: ERROR"; "problem talking to server
    // SERVICE: ERROR" after the last try, and after the first too unless ERROR is ENOENT (or EPIPE, ECONNRESET);
    // then it applies default_action=DUNNO. For the unix socket ERROR is "No such file or directory" (the daemon
    // removed its socket at exit), for inet "Connection refused".
    const expected = transport === 'unix' ? 'policyd-ts/policy: No such file or directory' : `127.0.0.1:${pf.policyPort}: Connection refused`
    const warnings = pf.maillogProblems().slice(problemsBefore)
    t.comment('Postfix log lines while the daemon was down:')
    for (const l of warnings) t.comment(`  ${l}`)
    const what = warnings.map((l) => /postfix\/smtpd\[\d+\]: warning: (.*)$/.exec(l)?.[1] ?? l)
    const connect = `connect to ${expected}`
    const problem = `problem talking to server ${expected}`
    const perRequest = transport === 'unix' ? [connect, connect, problem] : [connect, problem, connect, problem]
    t.same(what, [...perRequest, ...perRequest], `per request: ${perRequest.map((w) => `"${w}"`).join(', ')}; nothing else`)

    // Started again: Postfix reconnects by itself, greylisting is back.
    const again = await pf.daemon!.start()
    const back = await pf.swaks({ from: 'heidi@sender.example', to: 'bob@example.test', xclient: { addr: '192.0.2.32' } })
    assertGreylisted(t, back, ['bob@example.test'])
    await pf.waitPolicyLog(new RegExp(`policyd-ts\\[${again}\\]: decision action=DEFER_IF_PERMIT .*sender=heidi@sender\\.example`))
    t.pass(`the restarted daemon (pid ${again}) answered`)
  })
}

t.test('the daemon\'s own advice for its socket directory, followed as printed, gives a socket smtpd can use', async (t) => {
  const pf = await usePostfix(t, { ...DAEMON, prepareDaemon: false, policyArgs: BASE })
  const socketDir = path.dirname(pf.daemon!.socketPath!)
  const command = `install -d -o ${SPAWN_USER} -g ${DAEMON_SOCKET_GROUP} -m 2750 ${socketDir}`
  const advice = (): string => /install -d -o \S+ -g \S+ -m [0-7]+ \S+/.exec(pf.daemon!.output())?.[0] ?? ''
  const asRoot = (cmd: string): void => {
    const r = spawnSync('/bin/sh', ['-c', cmd], { encoding: 'utf8' })
    t.equal(r.status, 0, `${cmd}: exit 0 ${r.stderr}`)
  }

  t.notOk(fs.existsSync(socketDir), `${socketDir} does not exist yet`)
  t.ok(await pf.daemon!.start().then(() => false, () => true), 'the daemon does not start without its directory')
  t.match(pf.daemon!.output(), `directory ${socketDir} does not exist`, 'it names the missing directory')
  t.equal(advice(), command, `its command: that directory, the daemon's user, set-group-ID listen_group (${advice()})`)

  // The directory group postfix but not set-group-ID: the daemon (nobody, in no other group) cannot give its socket
  // group postfix.
  asRoot(`install -d -o ${SPAWN_USER} -g ${DAEMON_SOCKET_GROUP} -m 0750 ${socketDir}`)
  const before = pf.daemon!.output().length
  t.ok(await pf.daemon!.start().then(() => false, () => true), 'without set-group-ID the daemon does not start either')
  const said = pf.daemon!.output().slice(before)
  t.match(said, `${SPAWN_USER} is not a member of group ${DAEMON_SOCKET_GROUP} (listen_group)`, `it says why: ${said.trim()}`)
  t.equal(/install -d -o \S+ -g \S+ -m [0-7]+ \S+/.exec(said)?.[0], command, 'and gives the same command')
  t.notOk(fs.existsSync(pf.daemon!.socketPath!), 'no socket left behind')

  // As an admin would: run the command as root, start the daemon again.
  asRoot(command)
  const pid = await pf.daemon!.start().catch((err: Error) => {
    t.fail(`the daemon does not start in the directory made as it says: ${err.message}`)
    return null
  })
  if (pid === null) return
  const st = fs.statSync(pf.daemon!.socketPath!)
  t.equal(st.gid, gidOf(DAEMON_SOCKET_GROUP), `socket group ${DAEMON_SOCKET_GROUP}`)
  t.equal((st.mode & 0o777).toString(8), '660', 'socket mode 0660')
  const first = await pf.swaks({ from: 'kim@sender.example', to: 'bob@example.test', xclient: { addr: '192.0.2.40' } })
  assertGreylisted(t, first, ['bob@example.test'])
  await pf.waitPolicyLog(new RegExp(`policyd-ts\\[${pid}\\]: decision action=DEFER_IF_PERMIT .*sender=kim@sender\\.example`))
  noPolicyWarnings(t, pf)
})

t.test('nothing left behind: no instance running, no temp dir, no process (daemons included)', async (t) => {
  t.equal(runningInstances(), 0, 'every instance stopped')
  t.same(createdDirs().filter((d) => fs.existsSync(d)), [], 'every temp dir removed')
  t.same(leftoverProcesses(), [], 'no process of any instance left, no daemon either')
})
