// Rate limiting through the real binary (spawn mode, SQLite): what counts,
// what is given back, processes sharing one file, a process killed in the
// middle of a message, and a database that cannot be used.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { assertWellFormed, isolatedArgs, rcptRequest, startPolicy, type PolicyProcess } from '../helpers/policy-process'
import { SqliteStore } from '../../lib/store/sqlite'
import { startDnsServer } from '../helpers/dns-server'

const SASL = { sasl_method: 'PLAIN', sasl_username: 'Alice@Example.ORG' }

function args(dir: string, extra: string[] = []): string[] {
  return isolatedArgs(dir, ['--ratelimit_enabled', 'yes', '--greylist_enabled', 'no', ...extra])
}

function rcpt(instance: string, over: Record<string, string> = {}): string {
  return rcptRequest({ ...SASL, instance, ...over })
}

function endOfMessage(instance: string, recipients: number, over: Record<string, string> = {}): string {
  return rcptRequest({ ...SASL, protocol_state: 'END-OF-MESSAGE', recipient: '', recipient_count: String(recipients), size: '2000', queue_id: 'ABC123', instance, ...over })
}

/** Send one request and wait for its reply (replies are numbered from the start of the process). */
async function ask(p: PolicyProcess, request: string, counter: { n: number }): Promise<string> {
  p.send(request)
  counter.n++
  return (await p.replies(counter.n))[counter.n - 1]
}

async function finish(t: Tap.Test, p: PolicyProcess): Promise<void> {
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0, 'exits 0 at EOF')
  t.equal(p.stderr(), '', 'nothing on stderr')
  assertWellFormed(p.stdout())
}

function usage(dir: string, id: string): Promise<Array<{ unit: string; used: number; held: number }>> {
  const store = new SqliteStore({ path: path.join(dir, 'db', 'policyd-ts.sqlite'), busyTimeoutMs: 2000, renameCorrupt: false, log: () => undefined })
  return store.listUsage((x) => x === id, Date.now() / 1000, 60).finally(() => store.close())
}

t.test('a SASL user: L messages pass, the next RCPT gets the 4.7.1 text naming the limit and the time; not greylisted', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(args(dir, ['--ratelimit_sasl_limits', '3msg/1h, 100rcpt/1d', '--greylist_enabled', 'yes']))
  const n = { n: 0 }
  for (let i = 0; i < 3; i++) {
    t.equal(await ask(p, rcpt(`m${i}`), n), 'action=DUNNO', `message ${i}: RCPT passes (and is not greylisted)`)
    t.equal(await ask(p, endOfMessage(`m${i}`, 1), n), 'action=DUNNO', `message ${i}: counted`)
  }
  const refused = await ask(p, rcpt('m3'), n)
  t.match(refused, /^action=DEFER_IF_PERMIT 4\.7\.1 Rate limit 3msg\/1h exceeded for sasl:alice@example\.org, retry after \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)
  await finish(t, p)
  t.same((await usage(dir, 'sasl:alice@example.org')).map((u) => [u.unit, u.used, u.held]), [['msg', 3, 0], ['rcpt', 3, 0]])
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  t.equal(log.match(/rate limit 3msg\/1h exceeded for sasl:alice@example\.org/g)?.length, 1, 'the hit is logged once')
})

t.test('one log line per key and limit per window, however many requests are refused; learn-only counts but never refuses', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(args(dir, ['--ratelimit_sasl_limits', '1msg/1h']))
  const n = { n: 0 }
  await ask(p, rcpt('a'), n)
  await ask(p, endOfMessage('a', 1), n)
  for (let i = 0; i < 5; i++) t.match(await ask(p, rcpt(`b${i}`), n), /^action=DEFER_IF_PERMIT 4\.7\.1 Rate limit 1msg\/1h/)
  await finish(t, p)
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  t.equal(log.match(/rate limit 1msg\/1h exceeded/g)?.length, 1)

  const learn = startPolicy(args(dir, ['--ratelimit_sasl_limits', '1msg/1h', '--ratelimit_learn_only', 'yes']))
  const m = { n: 0 }
  t.equal(await ask(learn, rcpt('c'), m), 'action=DUNNO', 'over the limit, but learn-only')
  t.equal(await ask(learn, endOfMessage('c', 1), m), 'action=DUNNO')
  await finish(t, learn)
  t.same((await usage(dir, 'sasl:alice@example.org')).find((u) => u.unit === 'msg')?.used, 2, 'learn-only still counts')
})

t.test('a message with three recipients counts three; the fourth recipient of the next message is refused', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(args(dir, ['--ratelimit_sasl_limits', '5rcpt/1h']))
  const n = { n: 0 }
  for (const r of ['a', 'b', 'c']) t.equal(await ask(p, rcpt('m1', { recipient: `${r}@example.net` }), n), 'action=DUNNO')
  t.equal(await ask(p, endOfMessage('m1', 3), n), 'action=DUNNO')
  t.equal(await ask(p, rcpt('m2', { recipient: 'd@example.net' }), n), 'action=DUNNO')
  t.equal(await ask(p, rcpt('m2', { recipient: 'e@example.net' }), n), 'action=DUNNO')
  t.match(await ask(p, rcpt('m2', { recipient: 'f@example.net' }), n), /Rate limit 5rcpt\/1h exceeded/)
  t.equal(await ask(p, rcpt('m2', { recipient: 'postmaster@example.net' }), n), 'action=DUNNO', 'an exempt recipient is never refused')
  await finish(t, p)
})

t.test('mail that greylisting refuses does not count: its hold is given back', async (t) => {
  const dir = t.testdir()
  // Outside ratelimit_networks and without SASL, only the global limit applies.
  const p = startPolicy(args(dir, ['--greylist_enabled', 'yes', '--ratelimit_global_limits', '1msg/1h']))
  const n = { n: 0 }
  const plain = { sasl_method: '', sasl_username: '' }
  t.match(await ask(p, rcpt('g1', { ...plain, sender: 'one@example.net' }), n), /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted/)
  t.match(await ask(p, rcpt('g2', { ...plain, sender: 'two@example.net' }), n), /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted/, 'greylisted again, not rate-limited: the first hold went back')
  await finish(t, p)
  t.same(await usage(dir, 'global:*'), [], 'nothing used, nothing held')
})

t.test('a message whose END-OF-MESSAGE never comes releases its hold when the next message starts', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(args(dir, ['--ratelimit_sasl_limits', '2msg/1h']))
  const n = { n: 0 }
  await ask(p, rcpt('x'), n)
  await ask(p, endOfMessage('x', 1), n)
  t.equal(await ask(p, rcpt('abandoned'), n), 'action=DUNNO', 'held: 1 used + 1 held')
  t.equal(await ask(p, rcpt('next'), n), 'action=DUNNO', 'the abandoned hold went (else 1 used + 1 held + 1 > 2)')
  t.match(await ask(p, rcpt('next', { recipient: 'carol@example.org' }), n), /^action=DUNNO$/, 'a second recipient of the same message adds no message')
  await finish(t, p)
})

t.test('RCPT on one process, END-OF-MESSAGE on another: counted once, in the shared file', async (t) => {
  const dir = t.testdir()
  const a = startPolicy(args(dir, ['--ratelimit_sasl_limits', '2msg/1h']))
  const b = startPolicy(args(dir, ['--ratelimit_sasl_limits', '2msg/1h']))
  const na = { n: 0 }
  const nb = { n: 0 }
  for (const m of ['m1', 'm2']) {
    t.equal(await ask(a, rcpt(m), na), 'action=DUNNO')
    t.equal(await ask(b, endOfMessage(m, 1), nb), 'action=DUNNO')
  }
  t.match(await ask(a, rcpt('m3'), na), /Rate limit 2msg\/1h exceeded/)
  await finish(t, a)
  await finish(t, b)
  t.same((await usage(dir, 'sasl:alice@example.org')).map((u) => [u.used, u.held]), [[2, 0]])
})

t.test('16 processes racing for one key with limit L accept exactly L', async (t) => {
  const dir = t.testdir()
  const L = 40
  const procs = Array.from({ length: 16 }, () => startPolicy(args(dir, ['--ratelimit_sasl_limits', `${L}msg/1h`, '--debugLevel', '0'])))
  const PER = 6
  // Each process sends its RCPTs at once (pipelined), then the END-OF-MESSAGE of every message it was let through.
  const rcpts = await Promise.all(procs.map(async (p, i) => {
    for (let k = 0; k < PER; k++) p.send(rcpt(`p${i}-${k}`))
    return p.replies(PER, 30000)
  }))
  const accepted = rcpts.flatMap((replies, i) => replies.map((r, k) => (r === 'action=DUNNO' ? `p${i}-${k}` : null))).filter((x): x is string => x !== null)
  if (!t.equal(accepted.length, L, `${16 * PER} messages tried, exactly ${L} held`)) {
    // What the processes said about it (a store failure answers fail_action, which lets mail through unheld).
    t.comment(fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8').split('\n').filter((l) => !/ decision /.test(l)).slice(0, 40).join('\n'))
  }
  t.ok(rcpts.flat().every((r) => r === 'action=DUNNO' || /Rate limit 40msg\/1h exceeded/.test(r)), 'the others refused by the limit')
  // The END-OF-MESSAGE of each accepted message, on a process chosen by its rank, mostly not the one of its RCPT.
  const byProc = new Map<number, string[]>()
  accepted.forEach((inst, j) => byProc.set(j % 16, [...(byProc.get(j % 16) ?? []), inst]))
  await Promise.all([...byProc].map(async ([i, list]) => {
    for (const inst of list) procs[i].send(endOfMessage(inst, 1))
    const all = await procs[i].replies(PER + list.length, 30000)
    t.ok(all.slice(PER).every((r) => r === 'action=DUNNO'), `process ${i}: every held message counted`)
  }))
  await Promise.all(procs.map((p) => finish(t, p)))
  t.same((await usage(dir, 'sasl:alice@example.org')).map((u) => [u.used, u.held]), [[L, 0]], 'exactly L counted, nothing left held')
})

t.test('kill -9 in the middle of a message: the file stays sound, no count lost or doubled beyond that message', async (t) => {
  const dir = t.testdir()
  const victim = startPolicy(args(dir, ['--ratelimit_sasl_limits', '100000msg/1h', '--debugLevel', '0']))
  for (let i = 0; i < 200; i++) {
    victim.send(rcpt(`k${i}`))
    victim.send(endOfMessage(`k${i}`, 1))
  }
  // Let some of them through, then kill without warning.
  await victim.replies(60, 20000)
  victim.child.kill('SIGKILL')
  await victim.exited()
  const replies = victim.stdout().split('\n\n').filter((r) => r !== '')
  const committed = Math.floor(replies.length / 2)
  const u = await usage(dir, 'sasl:alice@example.org')
  const msg = u.find((x) => x.unit === 'msg')!
  t.ok(msg.used >= committed && msg.used <= committed + 1, `counted ${msg.used}, answered END-OF-MESSAGE ${committed} (one more may have been written before its reply)`)
  t.ok(msg.held <= 1, 'at most the message in flight is still held')
  const Database = (await import('better-sqlite3')).default
  const db = new Database(path.join(dir, 'db', 'policyd-ts.sqlite'), { readonly: true })
  t.equal(db.pragma('integrity_check', { simple: true }), 'ok')
  db.close()
  // The next process serves, and counts on from there.
  const next = startPolicy(args(dir, ['--ratelimit_sasl_limits', '100000msg/1h']))
  const n = { n: 0 }
  t.equal(await ask(next, rcpt('after'), n), 'action=DUNNO')
  t.equal(await ask(next, endOfMessage('after', 1), n), 'action=DUNNO')
  await finish(t, next)
  t.equal((await usage(dir, 'sasl:alice@example.org')).find((x) => x.unit === 'msg')!.used, msg.used + 1)
})

t.test('the database unusable: fail_action for the rate-limit check, mail flows, logged once', async (t) => {
  const dir = t.testdir({ 'not-a-dir': 'a file where the database directory should be' })
  const p = startPolicy([...args(dir, ['--ratelimit_sasl_limits', '1msg/1h']), '--db_path', path.join(dir, 'not-a-dir', 'policyd-ts.sqlite')])
  const n = { n: 0 }
  for (let i = 0; i < 4; i++) t.equal(await ask(p, rcpt(`u${i}`), n), 'action=DUNNO', `request ${i}: fail_action (DUNNO)`)
  await finish(t, p)
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  t.equal(log.match(/database unavailable, answering fail_action DUNNO/g)?.length, 1, 'logged once')
  t.match(log, /reason=store-unavailable|ratelimit=skipped-store-unavailable/)
})

t.test('mail that SPF rejects is not held; a SASL client is not SPF-checked unless spf_check_authenticated', async (t) => {
  const dns = await startDnsServer({ 'fail.test': [{ TXT: 'v=spf1 ip4:198.51.100.1 -all' }] })
  t.teardown(() => dns.close())
  const spf = ['--spf_enabled', 'yes', '--dns_servers', `127.0.0.1:${dns.port}`, '--Lookup_Time', '1', '--hostname', 'mx.example.org']
  const dir = t.testdir()
  // The client is in ratelimit_networks, so only spf_check_authenticated brings SPF back for it.
  const p = startPolicy([...args(dir, ['--ratelimit_global_limits', '1msg/1h', '--spf_check_authenticated', 'yes']), ...spf])
  const n = { n: 0 }
  const plain = { sasl_method: '', sasl_username: '', sender: 'x@fail.test' }
  t.match(await ask(p, rcpt('f1', plain), n), /^action=550 5\.7\.23 /, 'SPF rejects')
  t.match(await ask(p, rcpt('f2', plain), n), /^action=550 5\.7\.23 /, 'rejected by SPF again, not by the rate limit: nothing was held')
  await finish(t, p)
  t.same(await usage(dir, 'global:*'), [], 'nothing used, nothing held')

  const dir2 = t.testdir()
  const q = startPolicy([...args(dir2, ['--ratelimit_sasl_limits', '5msg/1h']), ...spf])
  const m = { n: 0 }
  t.equal(await ask(q, rcpt('s1', { sender: 'x@fail.test' }), m), 'action=DUNNO', 'a SASL user sending as a failing domain: not SPF-checked by default')
  await finish(t, q)
  const r = startPolicy([...args(dir2, ['--ratelimit_sasl_limits', '5msg/1h', '--spf_check_authenticated', 'yes']), ...spf])
  const k = { n: 0 }
  t.match(await ask(r, rcpt('s2', { sender: 'x@fail.test' }), k), /^action=550 5\.7\.23 /, 'spf_check_authenticated = yes checks it')
  await finish(t, r)
})
