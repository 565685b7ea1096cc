// npm run bench -- --compare, Redis (issue 12): the policyd-ts daemon with
// store = redis beside the same daemon with store = sqlite, on the request
// streams of the other parts (alone: --compare --redis-only).
//
//   greylisting:   the two daemons and postgrey at 1, 8 and 32 connections
//                  (compare.ts's stream: mostly repeats, which a daemon
//                  answers from its memory of passes), and at 8 connections
//                  a stream of new triplets only (every request a store write)
//   rate limiting: the two daemons at 1, 8 and 32 connections (ratelimit.ts's
//                  RCPT + END-OF-MESSAGE stream), and a race of 16 clients on
//                  one key with limit L through two daemons sharing one Redis
//                  (two MX hosts): exactly L accepted, and counted in Redis
//
// Redis is a private redis-server, our child: 127.0.0.1 on a free port,
// persistence off (no RDB snapshots, no AOF), its files in the run's temp
// dir; never the system service. Its CPU time and memory count as the
// Redis-backed daemons' (Subject.helperPids): SQLite and postgrey's Berkeley
// DB work inside their server process.
// The rate-limit part runs while the known triplets wait out greylist_delay.

import fs from 'node:fs'
import path from 'node:path'
import type { Redis as RedisClient } from 'ioredis'
import {
  CONNS, GL_DELAY, GL_REQUESTS, GREYLIST_MIX, ROUNDS, WARMUP, better, connectTo, connectWhenUp, daemonSubject, fmtRate, freePort, greylistStream, mb,
  measure, newTriplet, out, policydArgs, preparePostgreyDir, res, seedKnown, sleep, startDaemonProcess, startPolicydDaemon, startPostgrey, stopDaemon,
  tryVersion, type Check, type Daemon, type Result, type Stream, type Subject,
} from './compare'
import {
  RACE_CLIENT, RACE_CLIENTS, RACE_LIMIT, RACE_PER_CLIENT, RATE_LIMITS, RL_REQUESTS, STREAM_TEXT, policydTsArgs, race, rateStream, tsLimits, up,
  type RaceOutcome,
} from './ratelimit'
import { Connection, row } from './driver'

const REDIS_SERVER = '/usr/bin/redis-server'
/** Connections of every timed run here (the issue's 1/8/32). */
const LEVELS = [1, CONNS, 32]
/** The issue's targets for the Redis-backed daemon at CONNS connections. */
const TARGET_RATIO = 5
const TARGET_P99_MS = 5

// ---------------------------------------------------------------- redis-server

interface PrivateRedis {
  daemon: Daemon
  url: string
  /** One client for set-up and checks (never on the measured path). */
  client: RedisClient
}

/** A private redis-server in `dir`: 127.0.0.1 on a free port, no persistence; stopped with the run's other children. */
async function startRedis(dir: string): Promise<PrivateRedis> {
  const port = await freePort()
  const daemon = startDaemonProcess({
    name: 'redis-server', where: `127.0.0.1:${port}`, connect: () => connectTo({ host: '127.0.0.1', port }),
    outFile: path.join(dir, 'redis-server.out'), graceMs: 5000,
  }, REDIS_SERVER, [
    '--port', String(port), '--bind', '127.0.0.1', '--protected-mode', 'yes', '--dir', dir,
    '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--logfile', '',
  ])
  ;(await connectWhenUp(daemon, 15000)).destroy()
  const Redis = (require('ioredis') as typeof import('ioredis')).Redis
  const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false })
  // Errors come back on the commands; the server going away at cleanup is expected.
  client.on('error', () => undefined)
  await client.connect()
  res.closers.push(async () => client.disconnect())
  // Persistence off, as asked: check what the server says rather than what we passed.
  const [, save] = (await client.config('GET', 'save')) as string[]
  const [, aof] = (await client.config('GET', 'appendonly')) as string[]
  if (save !== '' || aof !== 'no') throw new Error(`redis-server has persistence on (save ${JSON.stringify(save)}, appendonly ${aof})`)
  return { daemon, url: `redis://127.0.0.1:${port}/0`, client }
}

/** Keys under `prefix` (SCAN: bounded by the keys there are). */
async function keysUnder(client: RedisClient, prefix: string): Promise<number> {
  let n = 0
  let cursor = '0'
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
    cursor = next
    n += keys.length
  } while (cursor !== '0')
  return n
}

/** What Redis counted for `id` under `prefix` (used, holds left), read through the store's admin side as `policyd-ts ratelimit` does. */
async function redisUsage(url: string, prefix: string, id: string): Promise<{ used: number; held: number }> {
  const { RedisStore } = require('../lib/store/redis') as typeof import('../lib/store/redis')
  const { parseRedisUrl } = require('../lib/store/redis-url') as typeof import('../lib/store/redis-url')
  const endpoint = parseRedisUrl(url)
  if ('error' in endpoint) throw new Error(`redis url ${url}: ${endpoint.error}`)
  const store = new RedisStore({ endpoint, prefix, timeoutMs: 5000, privacy: false, log: () => undefined })
  try {
    const rows = await store.listUsage((x) => x === id, Date.now() / 1000, 60)
    return { used: rows.reduce((n, r) => n + r.used, 0), held: rows.reduce((n, r) => n + r.held, 0) }
  } finally {
    store.close()
  }
}

// ---------------------------------------------------------------- the part

type GreyKey = 'redis' | 'sqlite' | 'pg'
type RlKey = 'redis' | 'sqlite'
const NAMES: Record<GreyKey, string> = { redis: 'daemon, store redis', sqlite: 'daemon, store sqlite', pg: 'postgrey' }

/** Timed requests per connection for `total` over `conns` connections, in whole blocks of `block`. */
const perConn = (total: number, conns: number, block: number): number => Math.ceil(total / conns / block) * block

/** Every request a triplet never seen: each one a store write. */
function newOnlyStream(tag: string): Stream {
  return (i) => ({ text: newTriplet(tag, i, `${tag}.${i}`), expect: 'greylist' })
}

/** Runs the Redis comparison in `dir` and prints its section; `target` records a target's result. */
export async function redisPart(dir: string, target: (ok: boolean, what: string) => string): Promise<void> {
  out('== Redis: the policyd-ts daemon with store = redis vs store = sqlite (and postgrey)')
  if (!fs.existsSync(REDIS_SERVER)) {
    out(`!! ${REDIS_SERVER} is not installed (apt-get install redis-server): nothing measured`)
    target(false, 'Redis part (redis-server not installed)')
    out()
    return
  }
  const started = Date.now()
  const rdir = path.join(dir, 'redis')
  fs.mkdirSync(rdir, { mode: 0o711 })
  preparePostgreyDir(rdir)
  const redis = await startRedis(rdir)
  const redisPid = (): number[] => (redis.daemon.child.pid === undefined ? [] : [redis.daemon.child.pid])
  const onRedis = (prefix: string): string[] => ['--store', 'redis', '--redis_url', redis.url, '--redis_prefix', prefix]
  /** A policyd-ts daemon `name` with its own files (socket in a short /tmp dir: a socket address has at most 107 bytes). */
  const daemon = async (name: string, args: string[]): Promise<Daemon> => {
    const own = path.join(rdir, name)
    fs.mkdirSync(own)
    const sockDir = fs.mkdtempSync('/tmp/pts-rd-')
    res.dirs.push(sockDir)
    return up(startPolicydDaemon(own, sockDir, args, []))
  }
  const onRedisSubject = (d: Daemon): Subject => ({ ...daemonSubject(d), helperPids: redisPid })
  out(`redis-server ${tryVersion('redis-server')}: ${REDIS_SERVER} --bind 127.0.0.1 --port <free> --save '' --appendonly no, temp --dir, foreground (our child; not the system service); policyd-ts reaches it over TCP (${redis.url}), each daemon its own redis_prefix`)
  out(`policyd-ts daemons: as in the parts above (master.cf.example's node flags, --listen unix:<temp>), with --store redis --redis_url ${redis.url} or the default store sqlite (temp db_path); redis_timeout at its default`)
  out(`server CPU and memory of a Redis-backed daemon include redis-server's (SQLite and postgrey's Berkeley DB work inside their process)`)

  // ---- Greylisting: the daemons and postgrey, each its own store; the known triplets are seen once now.
  const greyArgs = (name: string): string[] => [...policydArgs(rdir, name), '--spf_enabled', 'no', '--greylist_delay', `${GL_DELAY}s`]
  const glRedis = await daemon('gl-redis', [...greyArgs('gl-redis'), ...onRedis('gl:')])
  const glSqlite = await daemon('gl-sqlite', greyArgs('gl-sqlite'))
  const pg = await up(startPostgrey(rdir, await freePort()))
  const grey: Array<[GreyKey, Subject]> = [['redis', onRedisSubject(glRedis)], ['sqlite', daemonSubject(glSqlite)], ['pg', daemonSubject(pg)]]
  const seed1 = await Promise.all(grey.map(([, s]) => seedKnown(s, 'new', 'rseed1')))
  const seededAt = Date.now()

  // ---- Rate limiting (meanwhile): the race first, on fresh keys, then throughput.
  const raceLimits = tsLimits([[RACE_LIMIT, 3600]])
  const raceDaemons = [
    await daemon('rl-race-a', [...policydTsArgs(rdir, 'rl-race-a', raceLimits), ...onRedis('race:')]),
    await daemon('rl-race-b', [...policydTsArgs(rdir, 'rl-race-b', raceLimits), ...onRedis('race:')]),
  ]
  const raced = await race(`2 daemons, one Redis (${RACE_CLIENTS} connections)`, async (j) => Connection.socket(await raceDaemons[j % 2].connect(), 'policyd-ts race'))
  await Promise.all(raceDaemons.map((d) => stopDaemon(d)))
  const counted = await redisUsage(redis.url, 'race:', `client:${RACE_CLIENT}`)
  const raceOutcome: RaceOutcome = { ...raced, counted: `${counted.used} (${counted.held} held)`, consistent: counted.used === raced.accepted && counted.held === 0 }
  const rlLimits = tsLimits(RATE_LIMITS)
  const rlRedis = await daemon('rl-redis', [...policydTsArgs(rdir, 'rl-redis', rlLimits), ...onRedis('rl:')])
  const rlSqlite = await daemon('rl-sqlite', policydTsArgs(rdir, 'rl-sqlite', rlLimits))
  const rl: Array<[RlKey, Subject]> = [['redis', onRedisSubject(rlRedis)], ['sqlite', daemonSubject(rlSqlite)]]
  const rlRes: Record<RlKey, Map<number, Result>> = { redis: new Map(), sqlite: new Map() }
  for (let r = 0; r < ROUNDS; r++) {
    for (const conns of LEVELS) {
      for (const [key, s] of rl) {
        const got = await measure(s, conns, perConn(RL_REQUESTS, conns, 2), (n) => rateStream(`rr${r}c${conns}${key}n${n}`), WARMUP, (n) => rateStream(`rr${r}w${conns}${key}n${n}`))
        rlRes[key].set(conns, better(rlRes[key].get(conns), got))
      }
    }
  }
  await Promise.all([stopDaemon(rlRedis), stopDaemon(rlSqlite)])
  const rlKeys = await keysUnder(redis.client, 'rl:')

  // ---- Greylisting, timed: the known triplets' first pass, then every server at every number of connections.
  const wait = seededAt + (GL_DELAY + 1.2) * 1000 - Date.now()
  if (wait > 0) await sleep(wait)
  const seed2 = await Promise.all(grey.map(([, s]) => seedKnown(s, 'pass', 'rseed2')))
  const greyRes: Record<GreyKey, Map<number, Result>> = { redis: new Map(), sqlite: new Map(), pg: new Map() }
  const newRes: Partial<Record<GreyKey, Result>> = {}
  for (let r = 0; r < ROUNDS; r++) {
    for (const conns of LEVELS) {
      for (const [key, s] of grey) {
        const got = await measure(s, conns, perConn(GL_REQUESTS, conns, 10), (n) => greylistStream(`rg${r}c${conns}n${n}`, n), WARMUP, (n) => greylistStream(`rg${r}w${conns}n${n}`, n))
        greyRes[key].set(conns, better(greyRes[key].get(conns), got))
      }
    }
    for (const [key, s] of grey) {
      newRes[key] = better(newRes[key], await measure(s, CONNS, perConn(GL_REQUESTS, CONNS, 10), (n) => newOnlyStream(`rn${r}n${n}`), WARMUP, (n) => newOnlyStream(`rn${r}w${n}`)))
    }
  }
  await Promise.all([stopDaemon(glRedis), stopDaemon(glSqlite), stopDaemon(pg)])
  const glKeys = await keysUnder(redis.client, 'gl:')
  const redisPeakBytes = (await redis.client.info('memory')).match(/^used_memory_peak:(\d+)/m)?.[1]
  redis.client.disconnect()
  await stopDaemon(redis.daemon)

  // ---- Report.
  const W = [6, 22, 12, 18, 11, 6, 10]
  const head = row(['conns', 'server', 'decisions/s', 'p50 / p99 ms', 'CPU us/req', 'procs', 'RSS MB'], W)
  const line = (conns: string, name: string, x: Result): string =>
    row([conns, name, fmtRate(x), `${x.p50.toFixed(3)} / ${x.p99.toFixed(3)}`, x.serverCpuUs.toFixed(1), x.server.processes, mb(x.server.rssKb)], W)
  const table = <K extends string>(keys: K[], results: Record<K, Map<number, Result>>, names: Record<K, string>): void => {
    out(head)
    for (const conns of LEVELS) keys.forEach((k, i) => out(line(i === 0 ? String(conns) : '', names[k], results[k].get(conns)!)))
  }
  const greyKeys: GreyKey[] = ['redis', 'sqlite', 'pg']
  out(`greylisting: stream ${GREYLIST_MIX}; delay ${GL_DELAY}s; ${GL_REQUESTS} timed requests per number of connections and round, after ${WARMUP} warm-up requests to every server (spread over its connections); best of ${ROUNDS} rounds; CPU and RSS: every server process (and redis-server) over the timed part`)
  table(greyKeys, greyRes, NAMES)
  out(`new triplets only (every request a store write), ${CONNS} connections:`)
  for (const [i, k] of greyKeys.entries()) out(line(i === 0 ? String(CONNS) : '', NAMES[k], newRes[k]!))
  const d8 = greyRes.redis.get(CONNS)!
  const s8 = greyRes.sqlite.get(CONNS)!
  const p8 = greyRes.pg.get(CONNS)!
  const TW = [62, 40, 6]
  out(row(['target', 'measured', 'result'], TW))
  out(row([`redis-backed daemon at ${CONNS} connections >= ${TARGET_RATIO} x postgrey`, `${fmtRate(d8)} / ${fmtRate(p8)} = ${(d8.rate / p8.rate).toFixed(2)} x`, target(d8.rate >= TARGET_RATIO * p8.rate, `Redis daemon ${CONNS} connections >= ${TARGET_RATIO} x postgrey`)], TW))
  out(row([`redis-backed daemon at ${CONNS} connections: p99 <= ${TARGET_P99_MS} ms`, `${d8.p99.toFixed(3)} ms`, target(d8.p99 <= TARGET_P99_MS, `Redis daemon p99 at ${CONNS} connections`)], TW))
  out(row([`  redis / sqlite daemon at ${CONNS} connections`, `${(d8.rate / s8.rate).toFixed(2)} x (new triplets only: ${(newRes.redis!.rate / newRes.sqlite!.rate).toFixed(2)} x)`, '(reported)'], TW))
  out(row([`  redis daemon / postgrey, new triplets only`, `${(newRes.redis!.rate / newRes.pg!.rate).toFixed(2)} x`, '(reported)'], TW))
  const greyChecks: Array<[string, Check]> = [
    ...greyKeys.flatMap((k, i) => [[`${NAMES[k]} seeding`, seed1[i]], [`${NAMES[k]} first pass`, seed2[i]], [`${NAMES[k]} new only`, newRes[k]!]] as Array<[string, Check]>),
    ...greyKeys.flatMap((k) => [...greyRes[k]].map(([conns, x]) => [`${NAMES[k]} ${conns}`, x] as [string, Check])),
  ]
  const greyUnexpected = greyChecks.reduce((n, [, c]) => n + c.mismatches, 0)
  out(`replies: ${greyUnexpected === 0 ? 'all as expected' : 'NOT all as expected: figures unverified'}; keys under the redis daemon's prefix at the end: ${glKeys} (${glKeys > 0 ? 'its state is in Redis' : 'NONE: it did not use Redis'}); redis-server used_memory_peak ${redisPeakBytes === undefined ? '?' : mb(Number(redisPeakBytes) / 1024)} MB`)
  for (const [who, c] of greyChecks) if (c.mismatches > 0) out(`  ${who}: ${c.mismatches} unexpected, first: ${c.firstMismatch}`)
  if (glKeys === 0) target(false, 'Redis daemon kept no greylisting state in Redis')
  out(`  first pass: redis daemon ${JSON.stringify(seed2[0].sample)}`)
  out()

  out(`rate limiting: stream ${STREAM_TEXT}; limits ${rlLimits} per client (never reached); ${RL_REQUESTS} timed requests per number of connections and round, after ${WARMUP} warm-up requests; best of ${ROUNDS} rounds`)
  table<RlKey>(['redis', 'sqlite'], rlRes, NAMES)
  const r8 = rlRes.redis.get(CONNS)!
  out(row([`  redis / sqlite daemon at 1 / ${CONNS} / 32 connections`, LEVELS.map((c) => (rlRes.redis.get(c)!.rate / rlRes.sqlite.get(c)!.rate).toFixed(2)).join(' / '), '(reported)'], TW))
  out(row([`  redis daemon at ${CONNS} connections: p99`, `${r8.p99.toFixed(3)} ms`, '(reported)'], TW))
  const rlUnexpected = [...rlRes.redis.values(), ...rlRes.sqlite.values()].reduce((n, x) => n + x.mismatches, 0)
  out(`replies: ${rlUnexpected === 0 ? 'all DUNNO as expected' : 'NOT all as expected: figures unverified'}; keys under the redis daemon's prefix at the end: ${rlKeys}`)
  for (const k of ['redis', 'sqlite'] as const) for (const [conns, x] of rlRes[k]) if (x.mismatches > 0) out(`  ${NAMES[k]} ${conns}: ${x.mismatches} unexpected, first: ${x.firstMismatch}`)
  if (rlKeys === 0) target(false, 'Redis daemon kept no rate-limit state in Redis')
  const exact = raceOutcome.accepted === RACE_LIMIT && raceOutcome.unexpected === 0 && raceOutcome.consistent
  out(`race: ${RACE_CLIENTS} clients at once over 2 Redis-backed daemons (two MX hosts, one Redis), ${RACE_PER_CLIENT} messages each from ${RACE_CLIENT}, limit ${RACE_LIMIT} per hour: accepted ${raceOutcome.accepted}, refused ${raceOutcome.refused}, counted in Redis ${raceOutcome.counted}, ${raceOutcome.seconds.toFixed(1)} s: ${target(exact, `Redis race: exactly ${RACE_LIMIT} accepted`)}`)
  if (raceOutcome.unexpected > 0) out(`  ${raceOutcome.unexpected} unexpected replies, first: ${raceOutcome.firstUnexpected}`)
  out(`(Redis part: ${((Date.now() - started) / 1000).toFixed(0)} s)`)
  out()
}
