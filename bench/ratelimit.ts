// npm run bench -- --compare, rate limiting (issue 11): policyd-ts beside
// Debian's policyd-rate-limit daemon on the same request stream.
//
//   throughput: per message one RCPT request, then its END-OF-MESSAGE
//               (recipient_count=1, size), from clients of one limited
//               network with a skewed spread, limits high enough never to
//               refuse; policyd-ts in spawn mode (a process per connection)
//               and as one daemon, policyd-rate-limit as its one daemon, at
//               1 and 8 connections: decisions/s, p50/p99, server CPU, RSS;
//               and a bare Node echo over the same pipes, the ceiling of
//               any Node policy server driven by this client.
//   race:       16 clients at once on one key with limit L, twice L
//               attempts: how many each server accepts (exactly L is right).
//
// policyd-rate-limit runs as the bench runs postgrey: our own child, its own
// YAML config file, SQLite database, pid file and unix socket in a temporary
// directory (it drops to its package's user, so the directories are made
// reachable for it). The system service is never used.
//
// Debian 12 ships policyd-rate-limit 1.0.1.1, which has no count_mode: it
// counts one per RCPT request and answers every other protocol state DUNNO
// without counting. Its END-OF-MESSAGE replies are therefore cheap, and
// policyd-ts's limits here are in recipients (a bare count), which is what
// it counts; both count the same with one recipient per message.

import fs from 'node:fs'
import path from 'node:path'
import type BetterSqlite3 from 'better-sqlite3'
import {
  CONNS, POLICYD_RATE_LIMIT, ROUNDS, WARMUP, arg, better, connectTo, connectWhenUp, daemonSubject, fmtRate, mb, measure, out,
  policydArgs, policydDbPath, policydTs, res, spawnServer, startDaemonProcess, startPolicydDaemon, stopDaemon, tryVersion, userIds,
  type Daemon, type Result, type Stream, type Subject,
} from './compare'
import type { RateLimitAdmin } from '../lib/ratelimit/types'
import { Connection, policyRequest, row } from './driver'

/** Timed requests per number of connections and round: whole messages (RCPT + END-OF-MESSAGE) on each of 8 connections. */
export const RL_REQUESTS = Math.ceil(arg('ratelimit-requests', 16000) / (2 * CONNS)) * 2 * CONNS
const LEVELS = [1, CONNS]
export const RACE_LIMIT = arg('race-limit', 1000)
export const RACE_CLIENTS = 16
/** Messages each race client tries: twice the limit in all. */
export const RACE_PER_CLIENT = Math.ceil((2 * RACE_LIMIT) / RACE_CLIENTS)
/** policyd-rate-limit daemons sharing one database in the second race (several MX hosts, or instances, on one store). */
const RACE_DAEMONS = arg('race-daemons', 4)

const NETWORK = '10.77.0.0/16'
const CLIENTS = 1000
/** Per minute and per day, as policyd-rate-limit's shipped config has them, high enough never to refuse in the timed part. */
export const RATE_LIMITS: Array<[number, number]> = [[100000, 60], [1000000, 86400]]
export const RACE_CLIENT = '10.77.200.1'
const OUTSIDE_CLIENT = '10.99.0.1'
const ECHO = path.join(__dirname, 'echo.js')
const REFUSED = /^action=DEFER_IF_PERMIT /i
const ACCEPTED = /^action=DUNNO$/i

// ---------------------------------------------------------------- streams

/** A 32-bit integer mixer as a fraction in [0, 1): the same spread on every run. */
function fraction(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x45d9f3b)
  x = Math.imul(x ^ (x >>> 16), 0x45d9f3b)
  return ((x ^ (x >>> 16)) >>> 0) / 2 ** 32
}

function seedOf(tag: string): number {
  let h = 2166136261
  for (let i = 0; i < tag.length; i++) h = Math.imul(h ^ tag.charCodeAt(i), 16777619)
  return h
}

interface Message {
  client: string
  sender: string
  recipient: string
  size: number
  instance: string
}

/**
 * Message `m` of stream `tag`: a client of NETWORK, a few of the CLIENTS
 * sending most (index CLIENTS·u², the busiest about 3 %), one of that
 * client's 4 senders, 2 to 200 kB.
 */
function message(tag: string, m: number): Message {
  const seed = seedOf(tag) ^ Math.imul(m + 1, 0x9e3779b1)
  const c = Math.floor(CLIENTS * fraction(seed) ** 2)
  const s = Math.floor(4 * fraction(seed + 1))
  return {
    client: `10.77.${c >> 8}.${c & 255}`,
    sender: `u${s}c${c}x@d${c % 97}.example`,
    recipient: `r${m}x@example.org`,
    size: 2048 + Math.floor(198 * 1024 * fraction(seed + 2)),
    instance: `${tag}.${m}`,
  }
}

/** What Postfix sends at RCPT (recipient_count is 0 there; size is the SIZE= of MAIL FROM). */
function rcptRequest(msg: Message): string {
  return policyRequest({ client_address: msg.client, sender: msg.sender, recipient: msg.recipient, instance: msg.instance, size: String(msg.size) })
}

/** What Postfix sends at END-OF-MESSAGE for a message of one recipient. */
function eomRequest(msg: Message): string {
  return policyRequest({
    protocol_state: 'END-OF-MESSAGE', client_address: msg.client, sender: msg.sender, recipient: msg.recipient,
    recipient_count: '1', queue_id: `4B${(seedOf(msg.instance) >>> 0).toString(16).toUpperCase()}`, instance: msg.instance, size: String(msg.size),
  })
}

/** The throughput stream: request 2m is message m's RCPT, 2m + 1 its END-OF-MESSAGE; no limit is reached, so every reply is DUNNO. */
export function rateStream(tag: string): Stream {
  return (i) => {
    const msg = message(tag, i >> 1)
    return { text: i % 2 === 0 ? rcptRequest(msg) : eomRequest(msg), expect: 'pass' }
  }
}

export const STREAM_TEXT = `per message its RCPT, then its END-OF-MESSAGE (recipient_count=1, size 2-200 kB); ${CLIENTS} clients of ${NETWORK} (index ${CLIENTS}*u^2: the busiest sends ~3 %), 4 senders each; no SASL`

// ---------------------------------------------------------------- servers

/** policyd-ts with rate limiting alone: greylisting and SPF off, client limits inside NETWORK. */
export function policydTsArgs(dir: string, name: string, limits: string): string[] {
  return [
    ...policydArgs(dir, name), '--greylist_enabled', 'no', '--spf_enabled', 'no',
    '--ratelimit_enabled', 'yes', '--ratelimit_networks', NETWORK, '--ratelimit_client_limits', limits,
  ]
}

export function tsLimits(limits: Array<[number, number]>): string {
  return limits.map(([count, seconds]) => `${count}/${seconds}s`).join(', ')
}

/** Directories of policyd-rate-limit servers: a short path (socket addresses) that its user can get through. */
function rateLimitRoot(): string {
  const root = fs.mkdtempSync('/tmp/pts-rl-')
  res.dirs.push(root)
  fs.chmodSync(root, 0o711)
  return root
}

/**
 * One policyd-rate-limit daemon `name`, by IP address inside NETWORK,
 * SQLite database `db` (several daemons may share one). It creates its
 * pid, socket and database directories itself and chowns them to its
 * user before it drops privileges, so they must not exist yet.
 */
function startRateLimit(root: string, name: string, db: string, limits: Array<[number, number]>): Daemon {
  const socket = path.join(root, `sock-${name}`, 'policy')
  const config = {
    debug: false,
    user: 'policyd-rate-limit', group: 'policyd-rate-limit',
    pidfile: path.join(root, `run-${name}`, 'policyd-rate-limit.pid'),
    backend: 0, sqlite_config: { database: path.join(root, db, 'db.sqlite3') },
    SOCKET: socket, socket_permission: 0o666,
    limits, limits_by_id: {},
    limit_by_sasl: true, limit_by_sender: false, limit_by_ip: true, limited_networks: [NETWORK],
    success_action: 'dunno', fail_action: 'defer_if_permit Rate limit reach, retry later', db_error_action: 'dunno',
    report: false, delay_to_close: 300,
  }
  // JSON is YAML: no YAML writer needed.
  const file = path.join(root, `${name}.yaml`)
  fs.writeFileSync(file, `${JSON.stringify(config, null, 1)}\n`)
  return startDaemonProcess({
    name: `policyd-rate-limit ${name}`, where: `unix:${socket}`, connect: () => connectTo({ path: socket }),
    outFile: path.join(root, `${name}.out`), graceMs: 5000,
  }, POLICYD_RATE_LIMIT, ['--file', file])
}

export async function up(d: Daemon): Promise<Daemon> {
  ;(await connectWhenUp(d, 15000)).destroy()
  return d
}

/**
 * A connection to policyd-rate-limit: it listens with a backlog of 5, so
 * connections opened at once are refused (EAGAIN) until it accepts the
 * earlier ones; retried for up to 5 s.
 */
async function openRateLimit(d: Daemon): Promise<Connection> {
  return Connection.socket(await connectWhenUp(d, 5000), d.name)
}

/** Rows of policyd-rate-limit's sliding log (for `id`, or all), read after its daemons stopped. */
function rowsOf(root: string, db: string, id?: string): number {
  const Database = require('better-sqlite3') as typeof BetterSqlite3
  const sqlite = new Database(path.join(root, db, 'db.sqlite3'), { readonly: true, fileMustExist: true })
  try {
    const count = id === undefined ? sqlite.prepare('SELECT COUNT(*) AS n FROM mail_count').get() : sqlite.prepare('SELECT COUNT(*) AS n FROM mail_count WHERE id = ?').get(id)
    return (count as { n: number }).n
  } finally {
    sqlite.close()
  }
}

/**
 * What policyd-ts's database counted (used) and still holds for `id`, read
 * through the store's admin side as `policyd-ts ratelimit` reads it;
 * undefined for a store without rate-limit tables.
 */
async function tsUsage(dir: string, name: string, id: string): Promise<{ used: number; held: number } | undefined> {
  const { SqliteStore } = require('../lib/store/sqlite') as typeof import('../lib/store/sqlite')
  const store = new SqliteStore({ path: policydDbPath(dir, name), busyTimeoutMs: 2000, renameCorrupt: false, log: () => undefined })
  try {
    const admin = store as unknown as Partial<RateLimitAdmin>
    if (typeof admin.listUsage !== 'function') return undefined
    const rows = await admin.listUsage.call(store, (x) => x === id, Date.now() / 1000, 60)
    return { used: rows.reduce((n, r) => n + r.used, 0), held: rows.reduce((n, r) => n + r.held, 0) }
  } finally {
    store.close()
  }
}

/** Lines in which policyd-rate-limit says a query failed (it then answers db_error_action, dunno, without counting). */
function databaseErrors(d: Daemon): number {
  try {
    return fs.readFileSync(d.outFile, 'utf8').split('\n').filter((l) => l.startsWith('Database error')).length
  } catch {
    return 0
  }
}

// ---------------------------------------------------------------- race

export interface RaceOutcome {
  name: string
  accepted: number
  refused: number
  unexpected: number
  firstUnexpected: string
  refusal: string
  seconds: number
  /** What the server's database counted for the key when the race was over, as a cell of the report. */
  counted: string
  /** False when the database counted other than what was accepted, or still holds some of it. */
  consistent: boolean
}

/**
 * RACE_CLIENTS connections, each first sends one message from outside the
 * limited network (not counted: the servers are up and warm), then all at
 * once RACE_PER_CLIENT messages from RACE_CLIENT, each a RCPT and, when it
 * is accepted, its END-OF-MESSAGE (a refused single-recipient message has
 * no DATA).
 */
export async function race(name: string, open: (j: number) => Promise<Connection>): Promise<RaceOutcome> {
  const cs = await Promise.all(Array.from({ length: RACE_CLIENTS }, (_, j) => open(j)))
  const o: RaceOutcome = { name, accepted: 0, refused: 0, unexpected: 0, firstUnexpected: '', refusal: '', seconds: 0, counted: '-', consistent: true }
  const odd = (what: string, reply: string): void => {
    if (o.unexpected++ === 0) o.firstUnexpected = `${what}: ${JSON.stringify(reply)}`
  }
  const ask = async (c: Connection, msg: Message): Promise<boolean> => {
    const reply = await c.ask(rcptRequest(msg))
    if (REFUSED.test(reply)) {
      o.refusal = reply
      return false
    }
    if (!ACCEPTED.test(reply)) odd('RCPT', reply)
    const eom = await c.ask(eomRequest(msg))
    if (!ACCEPTED.test(eom)) odd('END-OF-MESSAGE', eom)
    return true
  }
  try {
    await Promise.all(cs.map(async (c, j) => {
      if (!(await ask(c, { ...message(`racew${j}`, 0), client: OUTSIDE_CLIENT }))) odd('outside the limited network', o.refusal)
    }))
    const t0 = Date.now()
    await Promise.all(cs.map(async (c, j) => {
      for (let m = 0; m < RACE_PER_CLIENT; m++) {
        if (await ask(c, { ...message(`race${j}`, m), client: RACE_CLIENT })) o.accepted++
        else o.refused++
      }
    }))
    o.seconds = (Date.now() - t0) / 1000
  } finally {
    await Promise.all(cs.map((c) => c.close()))
  }
  return o
}

// ---------------------------------------------------------------- the part

type Key = 'ts' | 'daemon' | 'prl' | 'echo'
const NAMES: Record<Key, string> = { ts: 'policyd-ts spawn mode', daemon: 'policyd-ts daemon', prl: 'policyd-rate-limit', echo: 'bare node echo' }

/** Runs the rate-limit comparison in `dir` and prints its section; `target` records a target's result. */
export async function rateLimitPart(dir: string, target: (ok: boolean, what: string) => string): Promise<void> {
  const started = Date.now()
  const prlUser = userIds('policyd-rate-limit')
  const root = rateLimitRoot()
  const raceLimits: Array<[number, number]> = [[RACE_LIMIT, 3600]]
  out('== Rate limiting: policyd-ts vs policyd-rate-limit')
  out(`policyd-rate-limit ${tryVersion('policyd-rate-limit')} (python3 ${tryVersion('python3')}): ${POLICYD_RATE_LIMIT} --file <temp YAML> as root, dropping to its user (uid ${prlUser.uid}), limit_by_ip in ${NETWORK}, SQLite in a temp dir, unix socket, debug off, foreground; it counts one per RCPT request and answers END-OF-MESSAGE DUNNO without counting (1.0.1.1 has no count_mode)`)
  out(`policyd-ts: bin/policyd-ts with master.cf.example's node flags, --config /dev/null, temp db_path, no syslog, --greylist_enabled no --spf_enabled no --ratelimit_enabled yes --ratelimit_networks ${NETWORK} --ratelimit_client_limits <the same limits in recipients>; holds at RCPT, counts at END-OF-MESSAGE; the daemon the same with --listen unix:<temp>`)

  // ---- The race first: fresh servers, limit L per hour on one key.
  const sockDir = (): string => {
    const d = fs.mkdtempSync('/tmp/pts-rlts-')
    res.dirs.push(d)
    return d
  }
  const raceTs = policydTs('policyd-ts', policydTsArgs(dir, 'rl-race-spawn', tsLimits(raceLimits)))
  const raceTsd = await up(startPolicydDaemon(dir, sockDir(), policydTsArgs(dir, 'rl-race-daemon', tsLimits(raceLimits)), []))
  const races: RaceOutcome[] = []
  const tsCounted = async (o: RaceOutcome, name: string): Promise<RaceOutcome> => {
    const u = await tsUsage(dir, name, `client:${RACE_CLIENT}`)
    return u ? { ...o, counted: `${u.used} (${u.held} held)`, consistent: u.used === o.accepted && u.held === 0 } : o
  }
  races.push(await tsCounted(await race(`${NAMES.ts} (${RACE_CLIENTS} processes, one database)`, () => raceTs.open()), 'rl-race-spawn'))
  const rd = await race(`${NAMES.daemon} (${RACE_CLIENTS} connections)`, async () => Connection.socket(await raceTsd.connect(), 'policyd-ts race'))
  await stopDaemon(raceTsd)
  races.push(await tsCounted(rd, 'rl-race-daemon'))
  const one = await up(startRateLimit(root, 'race1', 'db-race1', raceLimits))
  const r1 = await race(`${NAMES.prl} (1 daemon, ${RACE_CLIENTS} connections)`, () => openRateLimit(one))
  await stopDaemon(one)
  const prlCounted = (o: RaceOutcome, db: string, daemons: Daemon[]): RaceOutcome => {
    const rows = rowsOf(root, db, RACE_CLIENT)
    return { ...o, counted: `${rows} (${daemons.reduce((n, d) => n + databaseErrors(d), 0)} db errors)`, consistent: rows === o.accepted }
  }
  races.push(prlCounted(r1, 'db-race1', [one]))
  const many: Daemon[] = []
  for (let k = 0; k < RACE_DAEMONS; k++) many.push(await up(startRateLimit(root, `race${RACE_DAEMONS}d${k}`, 'db-racen', raceLimits)))
  const rn = await race(`${NAMES.prl} (${RACE_DAEMONS} daemons, one database)`, (j) => openRateLimit(many[j % RACE_DAEMONS]))
  await Promise.all(many.map((d) => stopDaemon(d)))
  races.push(prlCounted(rn, 'db-racen', many))
  // policyd-ts refusing nothing at all means its check is not in this build: its throughput would be a process doing no rate-limit work.
  const live = races[0].refused + races[1].refused > 0

  // ---- Throughput: every server at 1 and 8 connections, taking turns, ROUNDS rounds.
  const ts = policydTs('policyd-ts', policydTsArgs(dir, 'rl-spawn', tsLimits(RATE_LIMITS)))
  const tsd = await up(startPolicydDaemon(dir, sockDir(), policydTsArgs(dir, 'rl-daemon', tsLimits(RATE_LIMITS)), []))
  const prl = await up(startRateLimit(root, 'rate', 'db-rate', RATE_LIMITS))
  const echo: Subject = { name: NAMES.echo, perConnectionProcess: true, open: async () => spawnServer(NAMES.echo, process.execPath, [ECHO]) }
  const subjects: Array<[Key, Subject]> = [['ts', ts], ['daemon', daemonSubject(tsd)], ['prl', { ...daemonSubject(prl), open: () => openRateLimit(prl) }], ['echo', echo]]
  const results: Record<Key, Map<number, Result>> = { ts: new Map(), daemon: new Map(), prl: new Map(), echo: new Map() }
  for (let r = 0; r < ROUNDS; r++) {
    for (const conns of LEVELS) {
      for (const [key, s] of subjects) {
        const got = await measure(s, conns, RL_REQUESTS / conns, (n) => rateStream(`rl${r}c${conns}${key}n${n}`), WARMUP, (n) => rateStream(`rl${r}w${conns}${key}n${n}`))
        results[key].set(conns, better(results[key].get(conns), got))
      }
    }
  }
  await stopDaemon(tsd)
  await stopDaemon(prl)
  const prlRows = rowsOf(root, 'db-rate')

  // ---- Report.
  out(`stream: ${STREAM_TEXT}; limits ${tsLimits(RATE_LIMITS)} per client (never reached); ${RL_REQUESTS} timed requests (${RL_REQUESTS / 2} messages) per number of connections and round, split over the connections, after ${WARMUP} warm-up requests to every server process (a daemon's spread over its connections); best of ${ROUNDS} rounds`)
  if (!live) {
    out(`!! policyd-ts's rate limiting is NOT live in this build: it refused nothing in the race (${races[0].accepted} and ${races[1].accepted} of ${RACE_CLIENTS * RACE_PER_CLIENT} accepted).`)
    out('!! Its figures below are for a process that does no rate-limit work: no ratio, no PASS/MISS for throughput.')
  }
  const W = [6, 22, 12, 18, 11, 6, 10]
  out(row(['conns', 'server', 'decisions/s', 'p50 / p99 ms', 'CPU us/req', 'procs', 'RSS MB'], W))
  for (const conns of LEVELS) {
    subjects.forEach(([key], i) => {
      const x = results[key].get(conns)!
      out(row([i === 0 ? String(conns) : '', NAMES[key], fmtRate(x), `${x.p50.toFixed(3)} / ${x.p99.toFixed(3)}`, x.serverCpuUs.toFixed(1), x.server.processes, mb(x.server.rssKb)], W))
    })
  }
  const TW = [66, 36, 6]
  out(row(['target', 'measured', 'result'], TW))
  for (const conns of LEVELS) {
    const p = results.prl.get(conns)!
    for (const key of ['ts', 'daemon'] as const) {
      const x = results[key].get(conns)!
      const what = `${NAMES[key]} at ${conns} connection${conns === 1 ? '' : 's'} >= 8 x policyd-rate-limit`
      const verdict = conns !== 1 ? '(reported)' : live ? target(x.rate >= 8 * p.rate, what) : (target(false, `${what} (not measurable)`), 'n/a')
      out(row([what, `${fmtRate(x)} / ${fmtRate(p)} = ${live ? (x.rate / p.rate).toFixed(2) : 'n/a'} x`, verdict], TW))
    }
    const e = results.echo.get(conns)!
    out(row([`  ceiling: bare node echo at ${conns} / policyd-rate-limit`, `${fmtRate(e)} / ${fmtRate(p)} = ${(e.rate / p.rate).toFixed(2)} x`, '(reported)'], TW))
  }
  const checks = (Object.keys(results) as Key[]).flatMap((k) => [...results[k]].map(([conns, x]) => [`${NAMES[k]} ${conns}`, x] as const))
  const unexpected = checks.reduce((n, [, x]) => n + x.mismatches, 0)
  out(`policyd-rate-limit's log held ${prlRows} rows at the end (one per accepted RCPT; each request counts the client's rows in each window)`)
  out(`replies: ${unexpected === 0 ? 'all DUNNO as expected' : 'NOT all as expected: figures unverified'}`)
  for (const [who, x] of checks) if (x.mismatches > 0) out(`  ${who}: ${x.mismatches} unexpected, first: ${x.firstMismatch}`)
  out()

  out(`race: ${RACE_CLIENTS} clients at once, ${RACE_PER_CLIENT} messages each (${RACE_CLIENTS * RACE_PER_CLIENT} in all) from ${RACE_CLIENT}, limit ${RACE_LIMIT} per hour on it: accepted must be exactly ${RACE_LIMIT}`)
  out('counted: policyd-ts\'s usage of the key in its database (and holds left), policyd-rate-limit\'s rows of the key (and queries that failed: answered dunno, not counted); exactly L means L accepted, L counted, none held')
  const RW = [52, 9, 8, 22, 8, 6]
  out(row(['server', 'accepted', 'refused', 'counted', 'seconds', 'result'], RW))
  races.forEach((o, i) => {
    const exact = o.accepted === RACE_LIMIT && o.unexpected === 0 && o.consistent
    out(row([o.name, o.accepted, o.refused, o.counted, o.seconds.toFixed(1), i < 2 ? target(exact, `${o.name}: exactly ${RACE_LIMIT} accepted`) : '(reported)'], RW))
  })
  for (const o of races) if (o.unexpected > 0) out(`  ${o.name}: ${o.unexpected} unexpected replies, first: ${o.firstUnexpected}`)
  out(`  refusals: policyd-ts ${JSON.stringify(races[0].refusal || races[1].refusal)}; policyd-rate-limit ${JSON.stringify(races[2].refusal || races[3].refusal)}`)
  out(`(rate-limit part: ${((Date.now() - started) / 1000).toFixed(0)} s)`)
  out()
}
