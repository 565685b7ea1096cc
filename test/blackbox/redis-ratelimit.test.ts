// Rate limits on Redis through the built binary: two daemons ("hosts") on
// TCP sharing one private redis-server, 16 connections racing for one SASL
// user's quota, exactly L accepted and L counted; then spawn-mode processes
// on the same kind of store, a message's END-OF-MESSAGE reaching another
// process than its RCPT. (Hosts whose clocks differ: the binary has no test
// clock, so that is shown at the store level in test/redis-store.test.ts.)
// Last, two MX hosts sharing one greylisting memory.
import t from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { assertWellFormed, isolatedArgs, rcptRequest, startPolicy, type PolicyProcess } from '../helpers/policy-process'
import { freePort, startRedisServer } from '../helpers/redis-server'
import { RedisStore } from '../../lib/store/redis'
import { parseRedisUrl, type RedisEndpoint } from '../../lib/store/redis-url'

const SASL = { sasl_method: 'PLAIN', sasl_username: 'Racer@Example.ORG' }
const ID = 'sasl:racer@example.org'
const CONNECTIONS = 16
const MESSAGES_EACH = 4
const L = 20
const WAIT_MS = 20_000

const rcpt = (instance: string): string => rcptRequest({ ...SASL, instance })
const endOfMessage = (instance: string): string =>
  rcptRequest({ ...SASL, protocol_state: 'END-OF-MESSAGE', recipient: '', recipient_count: '1', size: '2000', queue_id: 'ABC123', instance })

function args(dir: string, redisUrl: string, extra: string[] = []): string[] {
  return isolatedArgs(dir, ['--store', 'redis', '--redis_url', redisUrl, '--redis_prefix', 'bb:', '--ratelimit_enabled', 'yes', '--greylist_enabled', 'no', '--ratelimit_sasl_limits', `${L}msg/1h`, ...extra])
}

/** Usage of the racing identity as the store has it. */
async function usageOf(url: string): Promise<Array<[string, number, number]>> {
  const s = new RedisStore({ endpoint: parseRedisUrl(url) as RedisEndpoint, prefix: 'bb:', timeoutMs: 2000, privacy: false, log: () => undefined })
  try {
    return (await s.listUsage((id) => id === ID, Date.now() / 1000, 60)).map((u) => [u.unit, u.used, u.held])
  } finally {
    s.close()
  }
}

/** A daemon listening on 127.0.0.1:port; resolves once it accepts connections (bounded). */
async function startInetDaemon(t: Tap.Test, dir: string, extra: string[]): Promise<{ p: PolicyProcess; port: number }> {
  const port = await freePort()
  const p = startPolicy(['--listen', `inet:127.0.0.1:${port}`, ...extra])
  t.teardown(() => {
    if (p.child.exitCode === null) p.child.kill('SIGKILL')
  })
  const started = Date.now()
  while (!(await accepts(port))) {
    if (p.child.exitCode !== null || Date.now() - started > WAIT_MS) throw new Error(`daemon did not start: ${p.stderr()} ${readLog(dir)}`)
    await new Promise((r) => setTimeout(r, 20))
  }
  return { p, port }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    s.once('connect', () => (s.destroy(), resolve(true)))
    s.once('error', () => resolve(false))
  })
}

function readLog(dir: string): string {
  try {
    return fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  } catch {
    return ''
  }
}

/** One SMTP session's policy connection: ask() sends a request and resolves with its reply line. */
async function session(t: Tap.Test, port: number): Promise<(request: string) => Promise<string>> {
  const socket = net.connect(port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  await new Promise<void>((resolve, reject) => (socket.once('connect', resolve), socket.once('error', reject)))
  socket.setEncoding('utf8')
  let buf = ''
  const waiting: Array<(reply: string) => void> = []
  socket.on('data', (d: string) => {
    buf += d
    for (let end = buf.indexOf('\n\n'); end >= 0 && waiting.length > 0; end = buf.indexOf('\n\n')) {
      const reply = buf.slice(0, end)
      buf = buf.slice(end + 2)
      waiting.shift()!(reply)
    }
  })
  return (request) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no reply within the wait')), WAIT_MS)
      waiting.push((reply) => (clearTimeout(timer), resolve(reply)))
      socket.write(request)
    })
}

t.test('two daemons on one Redis: 16 connections race RCPT + END-OF-MESSAGE for one SASL user: exactly L accepted and counted', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const daemons = await Promise.all(['a', 'b'].map((host) => {
    const dir = path.join(t.testdir(), host)
    return startInetDaemon(t, dir, args(dir, server.url, ['--hostname', `mx-${host}`]))
  }))
  const asks = await Promise.all(Array.from({ length: CONNECTIONS }, (_, i) => session(t, daemons[i % 2].port)))
  const outcomes = await Promise.all(asks.map(async (ask, i) => {
    let accepted = 0
    let refused = 0
    for (let m = 0; m < MESSAGES_EACH; m++) {
      const instance = `c${i}.m${m}`
      const reply = await ask(rcpt(instance))
      if (reply === 'action=DUNNO') {
        accepted++
        t.equal(await ask(endOfMessage(instance)), 'action=DUNNO', `${instance}: END-OF-MESSAGE passes`)
      } else {
        refused++
        t.match(reply, /^action=DEFER_IF_PERMIT 4\.7\.1 Rate limit 20msg\/1h exceeded for sasl:racer@example\.org, retry after /)
      }
    }
    return { accepted, refused }
  }))
  const accepted = outcomes.reduce((n, o) => n + o.accepted, 0)
  t.equal(accepted, L, `${CONNECTIONS * MESSAGES_EACH} attempts: exactly ${L} accepted`)
  t.ok(outcomes.filter((o) => o.accepted > 0).length > 1, 'accepted on more than one connection')
  t.same(await usageOf(server.url), [['msg', L, 0]], 'and exactly L counted, nothing left held')
  for (const { p } of daemons) t.equal(p.stderr(), '', 'nothing on the daemon\'s stderr')
})

t.test('spawn mode on Redis: a message held by one process is committed by another; the limit holds across processes; nothing on stderr', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const dir = t.testdir()
  const spawnArgs = args(dir, server.url, ['--ratelimit_sasl_limits', '2msg/1h'])
  const replies = async (requests: string[]): Promise<string[]> => {
    const p = startPolicy(spawnArgs)
    t.teardown(() => {
      if (p.child.exitCode === null) p.child.kill('SIGKILL')
    })
    for (const r of requests) p.send(r)
    const out = await p.replies(requests.length, WAIT_MS)
    p.child.stdin.end()
    t.equal((await p.exited(WAIT_MS)).code, 0, 'exits 0 at EOF')
    t.equal(p.stderr(), '', 'nothing on stderr')
    assertWellFormed(p.stdout())
    return out
  }
  t.same(await replies([rcpt('m1')]), ['action=DUNNO'], 'process 1 holds m1')
  t.same(await usageOf(server.url), [['msg', 0, 1], ['rcpt', 0, 1]], 'held in Redis (no counter yet: window 0)')
  t.same(await replies([endOfMessage('m1'), rcpt('m2'), endOfMessage('m2')]), ['action=DUNNO', 'action=DUNNO', 'action=DUNNO'], 'process 2 commits m1, then sends m2')
  t.same(await usageOf(server.url), [['msg', 2, 0]])
  const [refused] = await replies([rcpt('m3')])
  t.match(refused, /^action=DEFER_IF_PERMIT 4\.7\.1 Rate limit 2msg\/1h exceeded for sasl:racer@example\.org/, 'process 3 is refused')
  t.notMatch(readLog(dir), /no effect with store = redis/, 'no start-up warning about rate limits on Redis')
})

t.test('two MX hosts on one Redis: a triplet first seen on one passes on the other after the delay, and not before', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const daemons = await Promise.all(['a', 'b'].map((host) => {
    const dir = path.join(t.testdir(), host)
    return startInetDaemon(t, dir, isolatedArgs(dir, ['--store', 'redis', '--redis_url', server.url, '--redis_prefix', 'mx:', '--greylist_delay', '2s', '--hostname', `mx-${host}`]))
  }))
  const [onA, onB] = await Promise.all(daemons.map((d) => session(t, d.port)))
  const first = Date.now()
  const attempt = (ask: (r: string) => Promise<string>, instance: string): Promise<string> => ask(rcptRequest({ client_address: '198.51.100.20', sender: 'roamer@example.net', recipient: 'bob@example.org', instance }))
  t.match(await attempt(onA, 'a1'), /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted/, 'new on MX A: greylisted')
  const early = await attempt(onB, 'b1')
  if (Date.now() - first < 2000) t.match(early, /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted, please try again in [12] seconds/, 'on MX B before the delay: still greylisted, the same triplet (its delay counts from MX A)')
  await new Promise((r) => setTimeout(r, Math.max(0, first + 2300 - Date.now())))
  t.match(await attempt(onB, 'b2'), /^action=(PREPEND X-Greylist|DUNNO)/, 'on MX B after the delay: passes, without ever having been greylisted there first')
  t.match(await attempt(onA, 'a2'), /^action=DUNNO$/, 'and stays passed on MX A')
})
