// Redis failures under load, through the built binary (issue 12): one
// daemon, 16 connections sending greylisting requests, while
//   1. the redis-server is killed (SIGKILL) and started again on the same
//      port and dir (appendonly, appendfsync always);
//   2. the master of a Sentinel-watched pair is killed and a replica promoted.
// Every request must be answered within redis_timeout plus a margin, with a
// well-formed reply, fail_action while no server can answer, and greylisting
// again afterwards without a restart of the daemon.
//
// Each load request names a recipient of its own, so that its triplet is new:
// greylisting answers DEFER_IF_PERMIT ("Greylisted"), fail_action DUNNO. A
// reply thus says whether the store answered.
import t from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { startDaemon, socketDir, type DaemonProcess } from '../helpers/daemon-process'
import { isolatedArgs, rcptRequest } from '../helpers/policy-process'
import { sentinelMaster, sentinelMasterPort, startRedisServer, startSentinels, type RedisServer, type Sentinel } from '../helpers/redis-server'
import { RedisStore } from '../../lib/store/redis'
import { parseRedisUrl, type RedisEndpoint } from '../../lib/store/redis-url'

const CONNECTIONS = 16
const REDIS_TIMEOUT_MS = 1000
/** redis_timeout plus what a busy 2-core machine adds to one answer. */
const ANSWER_BOUND_MS = REDIS_TIMEOUT_MS + 500
/** Between two requests of one connection: load, without starving the people sharing the machine. */
const THINK_MS = 5
/** Bounds every wait for something to happen (a server up, a failover, a log line). */
const WAIT_MS = 20_000
const GREYLISTED = /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted, please try again in \d+ seconds$/
const PREFIX = 'flt:'
const SASL = { sasl_method: 'PLAIN', sasl_username: 'counted@example.org' }
const SASL_ID = 'sasl:counted@example.org'

interface Answer {
  conn: number
  recipient: string
  sentAt: number
  ms: number
  reply: string
}

/**
 * 16 connections, each asking one request at a time (a new triplet each)
 * until stop(); every reply recorded with the time its request left. A reply
 * later than `ANSWER_BOUND_MS` * 4 ends that connection's loop as a failure,
 * so that no wait is unbounded.
 */
function startLoad(t: Tap.Test, socketPath: string, tag: string) {
  const answers: Answer[] = []
  let stopping = false
  const errors: string[] = []
  const one = async (conn: number): Promise<void> => {
    const socket = net.connect(socketPath)
    t.teardown(() => socket.destroy())
    await new Promise<void>((resolve, reject) => (socket.once('connect', resolve), socket.once('error', reject)))
    socket.setEncoding('utf8')
    let buf = ''
    let waiting: ((reply: string) => void) | null = null
    socket.on('data', (d: string) => {
      buf += d
      const end = buf.indexOf('\n\n')
      if (end >= 0 && waiting) {
        const reply = buf.slice(0, end)
        buf = buf.slice(end + 2)
        const w = waiting
        waiting = null
        w(reply)
      }
    })
    socket.on('error', (err) => errors.push(`connection ${conn}: ${err.message}`))
    for (let i = 0; !stopping && i < 1_000_000; i++) {
      const recipient = `${tag}-${conn}-${i}@example.org`
      const sentAt = Date.now()
      const reply = await new Promise<string | null>((resolve) => {
        const timer = setTimeout(() => resolve(null), ANSWER_BOUND_MS * 4)
        waiting = (r) => (clearTimeout(timer), resolve(r))
        socket.write(rcptRequest({ recipient, instance: `${tag}.${conn}.${i}` }))
      })
      if (reply === null) {
        errors.push(`connection ${conn}: no reply to ${recipient} within ${ANSWER_BOUND_MS * 4} ms`)
        break
      }
      if (buf !== '') errors.push(`connection ${conn}: more than one reply to ${recipient}: ${JSON.stringify(buf)}`)
      answers.push({ conn, recipient, sentAt, ms: Date.now() - sentAt, reply })
      await new Promise((r) => setTimeout(r, THINK_MS))
    }
    socket.end()
  }
  const running = Promise.all(Array.from({ length: CONNECTIONS }, (_, conn) => one(conn)))
  return {
    answers,
    errors,
    /** Ends the load; resolves once every connection has its last reply. */
    stop: async (): Promise<void> => {
      stopping = true
      await running
    },
  }
}

/** Polls `probe` every 50 ms until it gives a value (not undefined); throws after `WAIT_MS` with `what`. */
async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined): Promise<T> {
  const started = Date.now()
  for (;;) {
    const value = await probe()
    if (value !== undefined) return value
    if (Date.now() - started > WAIT_MS) throw new Error(`waited ${WAIT_MS} ms for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** Resident set size of a process in KiB (/proc/PID/status VmRSS). */
function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (!m) throw new Error(`no VmRSS for ${pid}`)
  return Number(m[1])
}

/** Samples the daemon's RSS every 100 ms; stop() gives the largest seen. */
function watchRss(pid: number) {
  let peak = rssKiB(pid)
  const timer = setInterval(() => {
    peak = Math.max(peak, rssKiB(pid))
  }, 100)
  return {
    stop: (): number => {
      clearInterval(timer)
      return Math.max(peak, rssKiB(pid))
    },
  }
}

function daemonArgs(dir: string, extra: string[]): string[] {
  return isolatedArgs(dir, [
    '--store', 'redis', '--redis_prefix', PREFIX, '--redis_timeout', `${REDIS_TIMEOUT_MS}ms`,
    '--ratelimit_enabled', 'yes', '--ratelimit_sasl_limits', '50msg/1h',
    ...extra,
  ])
}

async function startFaultDaemon(t: Tap.Test, extra: string[]): Promise<{ d: DaemonProcess; dir: string }> {
  const dir = t.testdir()
  const d = await startDaemon(socketDir(t), daemonArgs(dir, extra))
  t.teardown(() => {
    if (d.child.exitCode === null) d.child.kill('SIGKILL')
  })
  return { d, dir }
}

/** Sends requests one after another on a connection of its own; the replies. */
async function askEach(socketPath: string, requests: string[]): Promise<string[]> {
  const socket = net.connect(socketPath)
  socket.setEncoding('utf8')
  let out = ''
  socket.on('data', (d: string) => (out += d))
  try {
    await new Promise<void>((resolve, reject) => (socket.once('connect', resolve), socket.once('error', reject)))
    for (let i = 0; i < requests.length; i++) {
      socket.write(requests[i])
      await until(`reply ${i + 1}`, () => (out.split('\n\n').length > i + 1 ? true : undefined))
    }
    return out.split('\n\n').slice(0, requests.length)
  } finally {
    socket.destroy()
  }
}

const tripletKey = (recipient: string): string => `${PREFIX}{g}:t:192.0.2.0/24/alice@example.net/${recipient}`

/** Usage of the SASL identity as the store has it: [unit, used, held] each. */
async function usageOf(url: string): Promise<Array<[string, number, number]>> {
  const s = new RedisStore({ endpoint: parseRedisUrl(url) as RedisEndpoint, prefix: PREFIX, timeoutMs: 2000, privacy: false, log: () => undefined })
  try {
    return (await s.listUsage((id) => id === SASL_ID, Date.now() / 1000, 60)).map((u) => [u.unit, u.used, u.held])
  } finally {
    s.close()
  }
}

/** What every fault test asserts of the answers: bounded, well formed, greylisting or fail_action only. */
function checkAnswers(t: Tap.Test, load: ReturnType<typeof startLoad>): void {
  t.same(load.errors, [], 'every request had exactly one reply, no connection failed')
  const slow = load.answers.filter((a) => a.ms > ANSWER_BOUND_MS)
  t.same(slow, [], `every request answered within ${ANSWER_BOUND_MS} ms (slowest ${load.answers.reduce((m, a) => Math.max(m, a.ms), 0)} ms of ${load.answers.length})`)
  const odd = load.answers.filter((a) => !GREYLISTED.test(a.reply) && a.reply !== 'action=DUNNO')
  t.same(odd, [], 'every reply is a well-formed action: greylisted, or fail_action DUNNO')
}

/** The daemon's log once it holds `pattern` (it writes in batches). */
async function logWith(d: DaemonProcess, pattern: RegExp): Promise<string> {
  return until(`a log line matching ${pattern}`, () => (pattern.test(d.log()) ? d.log() : undefined))
}

t.test('redis-server killed and restarted during 16-connection load: bounded answers, fail_action meanwhile, state kept, memory bounded, logged once each way', async (t) => {
  const server = await startRedisServer(t, { appendonly: true, appendfsync: 'always' })
  if (!server) return
  const { d } = await startFaultDaemon(t, ['--redis_url', server.url])

  // State written before the crash: a greylisted triplet, and a message counted against a SASL user's limit.
  const before = await askEach(d.socketPath, [
    rcptRequest({ recipient: 'kept@example.org' }),
    rcptRequest({ ...SASL, recipient: 'x@example.org', instance: 'counted' }),
    rcptRequest({ ...SASL, protocol_state: 'END-OF-MESSAGE', recipient: '', recipient_count: '1', size: '100', queue_id: 'Q1', instance: 'counted' }),
  ])
  t.match(before[0], GREYLISTED, 'the triplet is greylisted')
  t.same(before.slice(1), ['action=DUNNO', 'action=DUNNO'], 'the SASL message passes and is counted at END-OF-MESSAGE')
  t.equal(await server.command('HGET', tripletKey('kept@example.org'), 'n'), '1')
  t.same(await usageOf(server.url), [['msg', 1, 0]])

  const load = startLoad(t, d.socketPath, 'kill')
  // A baseline under load: the heap the daemon needs for this load before anything fails.
  await until('load replies from every connection', () => (new Set(load.answers.map((a) => a.conn)).size === CONNECTIONS ? true : undefined))
  await new Promise((r) => setTimeout(r, 500))
  const rssBefore = rssKiB(d.child.pid!)
  const rss = watchRss(d.child.pid!)

  await server.kill()
  const killedAt = Date.now()
  await new Promise((r) => setTimeout(r, 1500))
  const restartingAt = Date.now()
  await server.restart()
  const restartedAt = Date.now()
  const recovered = await until('a greylisted reply after the restart', () => load.answers.find((a) => a.sentAt > restartedAt && GREYLISTED.test(a.reply)))
  await new Promise((r) => setTimeout(r, 500))
  await load.stop()
  const rssPeak = rss.stop()

  checkAnswers(t, load)
  const duringOutage = load.answers.filter((a) => a.sentAt >= killedAt && a.sentAt + a.ms < restartingAt)
  t.ok(duringOutage.length >= CONNECTIONS, `requests answered while no server ran: ${duringOutage.length}`)
  t.same(duringOutage.filter((a) => a.reply !== 'action=DUNNO'), [], 'all of them fail_action DUNNO')
  t.ok(load.answers.filter((a) => a.sentAt < killedAt && GREYLISTED.test(a.reply)).length >= CONNECTIONS, 'greylisting before the kill')
  t.ok(load.answers.filter((a) => a.sentAt > recovered.sentAt && GREYLISTED.test(a.reply)).length >= CONNECTIONS, 'and again after the restart, without restarting the daemon')
  t.equal(await server.command('HGET', tripletKey(recovered.recipient), 'n'), '1', 'a triplet of after the restart is in the restarted server')

  t.equal(await server.command('HGET', tripletKey('kept@example.org'), 'n'), '1', 'the triplet greylisted before the crash survived it (appendfsync always)')
  t.same(await usageOf(server.url), [['msg', 1, 0]], 'so did the rate-limit count')
  t.match((await askEach(d.socketPath, [rcptRequest({ recipient: 'kept@example.org' })]))[0], GREYLISTED, 'and the daemon still greylists it')
  t.equal(await server.command('HGET', tripletKey('kept@example.org'), 'n'), '2', 'counting the new attempt')

  t.ok(rssPeak < 2 * rssBefore, `RSS peak ${rssPeak} KiB < 2 x ${rssBefore} KiB before the outage`)
  const log = await logWith(d, /database available again/)
  t.equal(log.match(/database unavailable, answering fail_action DUNNO/g)?.length, 1, 'one line for the outage')
  t.equal(log.match(/database available again/g)?.length, 1, 'one line for the recovery')
  t.notMatch(log, /database (error|busy|readonly|full)\b/, 'no other failure class on the way')
  t.equal(d.stderr(), '', 'nothing on the daemon\'s stderr')
  t.equal(d.child.exitCode, null, 'the daemon still runs')
})

t.test('Sentinel failover during 16-connection load: fail_action during the switch, then the daemon writes to the promoted replica', async (t) => {
  const NAME = 'pts-faults'
  const master = await startRedisServer(t)
  if (!master) return
  const replica = await startRedisServer(t, { replicaOf: master.port })
  if (!replica) return
  await until('the replica in sync', async () => (/^slave0:.*state=online/m.test(await master.command('INFO', 'replication')) ? true : undefined))
  const sentinels = await startSentinels(t, master.port, 3, { name: NAME, quorum: 2, downAfterMs: 500, failoverTimeoutMs: 2000 })
  if (!sentinels) return
  // A failover needs a majority of Sentinels that know each other (hello messages, every 2 s) and the replica.
  await until('the Sentinels to know each other and the replica', async () => {
    const views = await Promise.all(sentinels.map((s) => sentinelMaster(s, NAME)))
    return views.every((v) => v['num-other-sentinels'] === '2' && v['num-slaves'] === '1' && v.flags === 'master') ? true : undefined
  })
  const { d } = await startFaultDaemon(t, ['--redis_sentinels', sentinels.map((s) => `127.0.0.1:${s.port}`).join(','), '--redis_sentinel_name', NAME])
  t.match((await askEach(d.socketPath, [rcptRequest({ recipient: 'first@example.org' })]))[0], GREYLISTED, 'greylisting through the master Sentinel names')
  t.equal(await master.command('HGET', tripletKey('first@example.org'), 'n'), '1', 'written to the master')

  const load = startLoad(t, d.socketPath, 'fo')
  await until('load replies from every connection', () => (new Set(load.answers.map((a) => a.conn)).size === CONNECTIONS ? true : undefined))
  // Kill whichever server the Sentinels name now (a slow machine could have failed over already).
  const current = await sentinelMasterPort(sentinels[0], NAME)
  const [dying, promoted]: RedisServer[] = current === master.port ? [master, replica] : [replica, master]
  await dying.kill()
  const killedAt = Date.now()
  await until('the Sentinels to promote the replica', async () => ((await masterPorts(sentinels, NAME)).every((p) => p === promoted.port) ? true : undefined))
  const switchedAt = Date.now()
  const recovered = await until('a greylisted reply after the failover', () => load.answers.find((a) => a.sentAt > switchedAt && GREYLISTED.test(a.reply)))
  await new Promise((r) => setTimeout(r, 500))
  await load.stop()

  checkAnswers(t, load)
  const duringSwitch = load.answers.filter((a) => a.sentAt >= killedAt && a.sentAt < switchedAt)
  t.ok(duringSwitch.filter((a) => a.reply === 'action=DUNNO').length >= CONNECTIONS, `fail_action during the switch (${duringSwitch.length} answered in ${switchedAt - killedAt} ms)`)
  t.match(await promoted.command('INFO', 'replication'), /^role:master\r?$/m, 'the replica is the master now')
  t.equal(await promoted.command('HGET', tripletKey(recovered.recipient), 'n'), '1', 'a triplet of after the failover is on the promoted server')
  t.equal(await promoted.command('HGET', tripletKey('first@example.org'), 'n'), '1', 'and the one from before, replicated')
  t.match((await askEach(d.socketPath, [rcptRequest({ recipient: 'after@example.org' })]))[0], GREYLISTED)
  t.equal(await promoted.command('HGET', tripletKey('after@example.org'), 'n'), '1', 'new writes go to the promoted server')
  const log = await logWith(d, /database available again/)
  t.equal(log.match(/database unavailable, answering fail_action DUNNO: redis sentinel pts-faults /g)?.length, 1, 'one line for the outage')
  t.equal(log.match(/database available again/g)?.length, 1, 'one line for the recovery')
  t.notMatch(log, /database (error|busy|readonly|full)\b/, 'no other failure class on the way (no write reached a replica)')
  t.equal(d.stderr(), '', 'nothing on the daemon\'s stderr')
})

async function masterPorts(sentinels: Sentinel[], name: string): Promise<number[]> {
  return Promise.all(sentinels.map((s) => sentinelMasterPort(s, name)))
}
