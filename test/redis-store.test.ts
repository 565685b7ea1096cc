// What the Redis store does beyond the conformance tables: the server's clock,
// TTLs and the count buckets, the same for rate limits, the format record that refuses a host keyed
// differently, compare-and-set retries, and the failure policy against a
// real private redis-server that is killed, restarted and stopped, or a fake one
// (test/helpers/fake-redis.ts) that closes at once or, as a Sentinel, names an impossible port.
import t from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { loadConfig, type Config } from '../lib/config'
import { decide, type DecideContext } from '../lib/decide'
import { BoundedMap } from '../lib/bounded-map'
import { HeaderQueue } from '../lib/header-queue'
import { toPolicyRequest } from '../lib/request'
import { createGreylistWhitelists } from '../lib/greylist/lists'
import type { RedisOptions } from 'ioredis'
import { CAS_RETRIES, RedisStore, checkRedisStore, classifyRedisError, redisStoreOptions, type RedisStoreOptions } from '../lib/store/redis'
import { BUCKET_SECONDS } from '../lib/store/redis-scripts'
import { execPipeline } from '../lib/store/redis-ratelimit'
import { describeEndpoint, parseRedisUrl, redisUrlProblem, type RedisEndpoint } from '../lib/store/redis-url'
import { StoreError, type GreylistView } from '../lib/store/types'
import { startRedisServer, startSentinels, type RedisServer } from './helpers/redis-server'
import { bulk, startFakeRedis } from './helpers/fake-redis'
import { isolatedArgs, rcptRequest, startPolicy } from './helpers/policy-process'
import { connect, socketDir, startDaemon } from './helpers/daemon-process'
import { amounts, HOLD_TIME, ident, mk, RCPT_FIRST, RCPT_MORE, SLOTS } from './helpers/ratelimit'
import { slotIndex, slotStart } from '../lib/ratelimit/window'

const REDIS_CLI = '/usr/bin/redis-cli'

function store(t: Tap.Test, server: Pick<RedisServer, 'url'>, over: Partial<RedisStoreOptions> = {}): RedisStore {
  const s = new RedisStore({
    endpoint: parseRedisUrl(server.url) as RedisEndpoint,
    prefix: 'test:',
    timeoutMs: 1000,
    privacy: false,
    log: () => undefined,
    reconnectMs: { first: 20, max: 100 },
    ...over,
  })
  t.teardown(() => s.close())
  return s
}

const row = (first: number) => ({ first, last: first, passed: 0, count: 1 })
const read = (s: RedisStore, key = 'k', client = 'c'): Promise<GreylistView> => s.updateGreylist(key, client, (v) => ({ result: v }))
const put = (s: RedisStore, key: string, expires: number, client = `c-${key}`) =>
  s.updateGreylist(key, client, () => ({ triplet: { row: row(1), expires }, client: { row: { count: 1, last: 1, lastCounted: 1 }, expires }, result: null }))

/** The failure class a promise rejects with, and how long it took (ms). */
async function failure(p: Promise<unknown>): Promise<{ failure: string; ms: number; message: string }> {
  const started = performance.now()
  try {
    await p
  } catch (err) {
    if (!(err instanceof StoreError)) throw err
    return { failure: err.failure, ms: performance.now() - started, message: err.message }
  }
  throw new Error('expected a StoreError')
}

/** Retry `step` until it resolves: the store reconnects by itself in the background (bounded: 10 s). */
async function eventually<T>(step: () => Promise<T>): Promise<T> {
  const started = Date.now()
  for (;;) {
    try {
      return await step()
    } catch (err) {
      if (Date.now() - started > 10_000) throw err
      await new Promise((r) => setTimeout(r, 25))
    }
  }
}

t.test('redis_url: the three schemes, what they mean, and what the configuration refuses', async (t) => {
  t.same(parseRedisUrl('redis://127.0.0.1'), { tls: false, host: '127.0.0.1', port: 6379, db: 0 })
  t.same(parseRedisUrl('rediss://policy@redis.example.org:6380/3'), { tls: true, host: 'redis.example.org', port: 6380, db: 3, username: 'policy' })
  t.same(parseRedisUrl('redis://[::1]:7000/1'), { tls: false, host: '::1', port: 7000, db: 1 })
  t.same(parseRedisUrl('unix:///run/redis/redis.sock?db=2'), { tls: false, path: '/run/redis/redis.sock', db: 2 })
  t.equal(describeEndpoint(parseRedisUrl('rediss://u:secret@[::1]/4') as RedisEndpoint), 'rediss://u@[::1]:6379/4', 'never the password')
  for (const bad of ['http://x', 'redis://', 'redis://x/db', 'redis://x/1?timeout=3', 'unix://relative', 'not a url']) t.ok('error' in parseRedisUrl(bad), bad)
  // The database number: digits only, at most 7 of them and at most 1000000; an empty path or '/' is database 0.
  const db = (url: string): number | string => {
    const parsed = parseRedisUrl(url)
    return 'error' in parsed ? parsed.error : parsed.db
  }
  const notDb = (path: string): string => `has path ${path}, which is not /DB (a database number)`
  const dbTable: Array<[string, number | string]> = [
    ['redis://127.0.0.1', 0],
    ['redis://127.0.0.1/', 0],
    ['redis://127.0.0.1/7', 7],
    ['redis://127.0.0.1/15', 15],
    ['redis://127.0.0.1/1000000', 1_000_000],
    ['redis://127.0.0.1/1000001', notDb('/1000001')],
    ['redis://127.0.0.1/00000001', notDb('/00000001')],
    ['redis://127.0.0.1/1.5', notDb('/1.5')],
    ['redis://127.0.0.1/1e3', notDb('/1e3')],
    ['redis://127.0.0.1/0x1', notDb('/0x1')],
    ['redis://127.0.0.1/2x', notDb('/2x')],
    ['unix:///run/redis.sock', 0],
    ['unix:///run/redis.sock?db=12', 12],
    ['unix:///run/redis.sock?db=', 'has a db= that is not a database number'],
    ['unix:///run/redis.sock?db=1.5', 'has a db= that is not a database number'],
    ['unix://localhost/run/redis.sock', 'must name an absolute socket path (unix:///run/redis/redis.sock)'],
    ['unix://relative', 'must name an absolute socket path (unix:///run/redis/redis.sock)'],
    ['unix:///', 'must name an absolute socket path (unix:///run/redis/redis.sock)'],
    // An opaque path has no host: the path itself must be absolute.
    ['unix:relative', 'must name an absolute socket path (unix:///run/redis/redis.sock)'],
    ['http://x', 'has scheme http: (known: redis:, rediss:, unix:)'],
    ['redis://', 'names no host'],
    ['redis://x/1?timeout=3', 'has a query or fragment, which policyd-ts does not read'],
    ['redis://x/1#timeout=3', 'has a query or fragment, which policyd-ts does not read'],
  ]
  for (const [url, want] of dbTable) t.equal(db(url), want, url)
  t.equal(redisUrlProblem('not a url'), 'redis_url: "not a url" is not a URL (redis://HOST:PORT/DB, rediss://..., unix:///PATH)')
  t.equal(redisUrlProblem('redis://127.0.0.1/1'), null)
  // describeEndpoint: a unix socket names its database only when it is not 0, as the URL would.
  for (const url of ['unix:///run/redis.sock', 'unix:///run/redis.sock?db=3']) t.equal(describeEndpoint(parseRedisUrl(url) as RedisEndpoint), url)
  const problems = (cli: Record<string, string>): string[] =>
    loadConfig({ cli, configPath: '/dev/null', env: {}, readFile: () => '', parseDotenv: () => () => ({}) }).errors
  t.same(problems({ store: 'redis', redis_url: 'unix:///run/redis.sock', redis_sentinels: '10.0.0.1:26379, [2001:db8::1]:26379', redis_prefix: 'mx-a:', redis_timeout: '250ms' }), [])
  t.match(problems({ redis_url: 'redis://:hunter2@127.0.0.1' }).join(), /carries a password; put it in redis_password_file/)
  t.notMatch(problems({ redis_url: 'redis://:hunter2@127.0.0.1' }).join(), /hunter2/, 'the refusal does not repeat it')
  t.match(problems({ redis_prefix: 'a b*' }).join(), /redis_prefix: "a b\*" may hold only/)
  t.match(problems({ redis_sentinels: 'sentinel1' }).join(), /sentinel1.*HOST:PORT/)
  t.match(problems({ store: 'memcached' }).join(), /store/)
})

t.test('a StoreError of another copy of lib/store/types (the start-up bundle\'s, a store loaded by path) is a StoreError all the same', async (t) => {
  const file = require.resolve('../lib/store/types')
  const kept = require.cache[file]
  const first = require(file) as typeof import('../lib/store/types')
  delete require.cache[file]
  const second = require(file) as typeof import('../lib/store/types')
  if (kept) require.cache[file] = kept
  t.not(first.StoreError, second.StoreError, 'two copies of the class')
  t.ok(new second.StoreError('unavailable', 'x') instanceof first.StoreError, 'so decide.ts answers fail_action for it')
  t.notOk(new Error('x') instanceof first.StoreError)
  t.notOk(null instanceof first.StoreError)
  // The mark is a registered symbol: a copy built apart (another bundle) finds it by its name alone.
  const foreign = Object.assign(new Error('x'), { failure: 'busy', [Symbol.for('policyd-ts.StoreError')]: true })
  t.ok(foreign instanceof first.StoreError, 'an error marked under the registered name')
  for (const value of [undefined, null, 'policyd-ts.StoreError', 0, true, {}, { failure: 'busy' }]) t.notOk((value as unknown) instanceof first.StoreError, `not a StoreError: ${String(value)}`)
  class Held extends first.StoreError {}
  t.ok(new Held('busy', 'x') instanceof first.StoreError)
  t.notOk(new first.StoreError('busy', 'x') instanceof Held, 'a subclass keeps the prototype test')
})

t.test('store = sqlite loads neither the Redis store nor its client; store = redis loads the client only when used', async (t) => {
  const loaded = (name: string): boolean => Object.keys(require.cache).some((f) => f.includes(name))
  t.notOk(loaded(`${path.sep}ioredis${path.sep}`), 'not loaded by this test file\'s imports either')
  const bundle = path.join(__dirname, '..', 'dist', 'lib', 'policyd-ts.bundle.js')
  if (fs.existsSync(bundle)) t.notMatch(fs.readFileSync(bundle, 'utf8'), /ioredis|POLICYD_META/, 'the start-up bundle holds neither')
  const server = await startRedisServer(t)
  if (!server) return
  const s = store(t, server)
  t.notOk(loaded(`${path.sep}ioredis${path.sep}`), 'a store made is not a store used')
  await read(s)
  t.ok(loaded(`${path.sep}ioredis${path.sep}`), 'loaded at the first request')
})

t.test('the server\'s TIME: the view carries it, TTLs follow the expiry times, and a skewed caller cannot shorten the delay', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const s = store(t, server)
  const v = await read(s)
  t.ok(v.now !== undefined && Math.abs(v.now - Date.now() / 1000) < 5, 'the server\'s time, in seconds with a fraction')
  const now = v.now!
  await s.updateGreylist('k', 'c', () => ({ triplet: { row: row(now), expires: now + 100 }, client: { row: { count: 1, last: now, lastCounted: now }, expires: now + 3600 }, result: null }))
  const pttl = async (key: string): Promise<number> => Number(await server.command('PTTL', key))
  const tripletTtl = await pttl('test:{g}:t:k')
  t.ok(tripletTtl > 95_000 && tripletTtl <= 101_000, `triplet TTL ${tripletTtl} ms: expiry + 1 s`)
  const clientTtl = await pttl('test:{g}:c:c')
  t.ok(clientTtl > 3_595_000 && clientTtl <= 3_601_000, `client TTL ${clientTtl} ms`)
  t.match(await server.command('HGETALL', 'test:{g}:meta'), /format\n1\nprivacy\nno/, 'the first write records the key format')

  // Whole greylisting through decide(), the caller's clock 400 s ahead of the server's.
  const cfg = config()
  const ctx = context(cfg, s)
  const callerNow = Date.now() / 1000
  t.match((await decide(request({ instance: 'm1' }), ctx, callerNow)).action, /^DEFER_IF_PERMIT .* 300 seconds/)
  const retry = await decide(request({ instance: 'm2' }), ctx, callerNow + 400)
  t.match(retry.action, /^DEFER_IF_PERMIT .* (299|300) seconds/, 'still greylisted: the server says almost no time passed')
  t.equal(retry.winner?.reason, 'early')
})

t.test('with a test clock: TTL = expiry - clock + 1 s, and a rewrite moves it', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  let now = 1000
  const s = store(t, server, { clock: () => now })
  t.equal((await read(s)).now, undefined, 'the caller\'s clock rules: no store time in the view')
  await put(s, 'k', 1050, 'c')
  const ttl = Number(await server.command('PTTL', 'test:{g}:t:k'))
  t.ok(ttl > 49_000 && ttl <= 51_000, `TTL ${ttl} ms`)
  now = 1040
  await put(s, 'k', 2000, 'c')
  const moved = Number(await server.command('PTTL', 'test:{g}:t:k'))
  t.ok(moved > 959_000 && moved <= 961_000, `moved to ${moved} ms`)
})

t.test('the triplet count follows expiry by the hour, by itself, and explicit deletes', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  let now = 0
  const s = store(t, server, { clock: () => now })
  const H = BUCKET_SECONDS
  await put(s, 'a', 50)
  await put(s, 'b', H + 50)
  await put(s, 'c', 2 * H + 50)
  t.equal((await read(s, 'x', 'y')).tripletCount, 3)
  t.same(await s.counts(), { triplets: 3, clients: 3 })
  now = H
  t.equal((await read(s, 'x', 'y')).tripletCount, 2, 'a read leaves out the hour that is over, without writing')
  await s.purgeExpired(now, 1000)
  t.match(await server.command('HGETALL', 'test:{g}:n'), /^(?![\s\S]*\nt:0\n)/, 'the upkeep step drained bucket 0')
  await put(s, 'b', 5 * H, 'c-b')
  now = 2 * H
  t.equal((await read(s, 'x', 'y')).tripletCount, 2, 'b moved to a later hour with its rewrite')
  now = 3 * H
  t.same(await s.counts(), { triplets: 1, clients: 1 }, 'c has expired; b and its client remain')
  // Rows still present (their real TTL has not run out) whose hour was drained do not count twice, nor go negative.
  t.equal(await s.deleteTriplets(() => true), 3)
  t.same(await s.counts(), { triplets: 0, clients: 1 })
  now = 1000 * H
  t.same(await s.counts(), { triplets: 0, clients: 0 }, 'a gap of many hours: recounted from the buckets')
  await put(s, 'd', now + 10)
  t.equal((await read(s, 'x', 'y')).tripletCount, 1)
})

t.test('the format record: a host with another greylist_privacy is refused and told why; another prefix is another store', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const clear = store(t, server, { clock: () => 0 })
  await put(clear, 'k', 50, 'c')
  const hashed = store(t, server, { clock: () => 0, privacy: true })
  const refused = await failure(read(hashed))
  t.equal(refused.failure, 'error')
  t.match(refused.message, /greylist_privacy no, this host format 1 and greylist_privacy yes: every host sharing the store must agree .*test:\{g\}:meta/)
  t.equal((await failure(put(hashed, 'h', 50))).failure, 'error', 'writes are refused too')
  const health = await hashed.check()
  t.equal(health.ok, false)
  t.match(health.lines.join('\n'), /NOT this host's/)
  t.equal((await clear.check()).ok, true)
  t.same((await read(clear)).triplet, row(1), 'the first host goes on')
  let privacy = false
  const reloaded = store(t, server, { clock: () => 0, privacy: () => privacy })
  t.same((await read(reloaded)).triplet, row(1))
  privacy = true
  t.equal((await failure(read(reloaded))).failure, 'error', 'a reload that turns greylist_privacy on is refused from its next request')
  const other = store(t, server, { clock: () => 0, privacy: true, prefix: 'other:' })
  await put(other, 'h', 50)
  t.equal((await read(other, 'h', 'c-h')).tripletCount, 1)
})

t.test('compare-and-set: a write by another host between read and write makes it read again; five retries in a row give up as busy', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  if (!fs.existsSync(REDIS_CLI)) return t.skip(`${REDIS_CLI} is not installed`)
  const s = store(t, server, { clock: () => 0 })
  await put(s, 'k', 500, 'c')
  // Another host's write, made synchronously inside decide(): it lands between this store's read and its write.
  const otherHost = (): void => {
    execFileSync(REDIS_CLI, ['-p', String(server.port), 'HSET', 'test:{g}:t:k', 'n', '7', 'v', String(Math.random())], { stdio: 'ignore' })
  }
  const seen: number[] = []
  const result = await s.updateGreylist('k', 'c', (v) => {
    seen.push(v.triplet!.count)
    if (seen.length === 1) otherHost()
    return { triplet: { row: { ...v.triplet!, count: v.triplet!.count + 1 }, expires: 500 }, result: v.triplet!.count }
  })
  t.same(seen, [1, 7], 'decided again on the other host\'s row')
  t.equal(result, 7)
  t.equal((await read(s)).triplet?.count, 8, 'and wrote on top of it')
  let calls = 0
  const busy = await failure(s.updateGreylist('k', 'c', (v) => {
    calls++
    otherHost()
    return { triplet: { row: v.triplet!, expires: 500 }, result: null }
  }))
  t.equal(busy.failure, 'busy')
  t.equal(busy.message, `redis redis://127.0.0.1:${server.port}/0: triplet k changed by other requests ${CAS_RETRIES + 1} times while this one decided`)
  t.equal(calls, CAS_RETRIES + 1, 'the first attempt and five retries')
  let unchanged = 0
  await s.updateGreylist('k', 'c', () => {
    unchanged++
    otherHost()
    return { result: null }
  })
  t.equal(unchanged, 1, 'a request that writes nothing is one read, whatever others do')
})

t.test('scripts flushed from the server (a restart, a failover) are loaded again', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const s = store(t, server, { clock: () => 0 })
  await put(s, 'k', 50)
  t.equal(await server.command('SCRIPT', 'FLUSH'), 'OK')
  await put(s, 'k2', 50)
  t.equal((await read(s)).tripletCount, 2)
})

t.test('killed, restarted: unavailable within redis_timeout meanwhile, then used again by the same store', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const logs: string[] = []
  const s = store(t, server, { clock: () => 0, timeoutMs: 300, log: (_l, m) => logs.push(m) })
  await put(s, 'k', 50)
  await server.kill()
  for (let i = 0; i < 3; i++) {
    const down = await failure(read(s))
    t.equal(down.failure, 'unavailable', down.message)
    t.ok(down.ms < 600, `answered in ${down.ms.toFixed(0)} ms`)
  }
  t.equal((await failure(s.addStats('mx', new Map([['x', 1]])))).failure, 'unavailable', 'the counters too')
  t.equal(await s.addStats('mx', new Map()), undefined, 'no counters to add: nothing sent, so nothing fails')
  await server.restart()
  await eventually(() => read(s))
  t.equal((await read(s)).triplet, null, 'a server without persistence came back empty')
  await put(s, 'k', 50)
  t.same(logs.filter((l) => /connection lost|connected again/.test(l)).map((l) => l.replace(/^.*: /, '')), ['connection lost, reconnecting', 'connected again'], 'one debug line each way')
})

t.test('down at start: unavailable at once; used as soon as the server is there', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  await server.kill()
  const s = store(t, server, { clock: () => 0, timeoutMs: 300 })
  const first = await failure(read(s))
  t.equal(first.failure, 'unavailable')
  t.match(first.message, /ECONNREFUSED/, 'the connection\'s own reason')
  t.ok(first.ms < 600, `answered in ${first.ms.toFixed(0)} ms`)
  await server.restart()
  await eventually(() => put(s, 'k', 50))
  t.equal((await read(s)).tripletCount, 1)
})

t.test('a server that answers nothing (stopped): each request fails within redis_timeout, and works once it answers', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const s = store(t, server, { clock: () => 0, timeoutMs: 200 })
  await put(s, 'k', 50)
  server.pause()
  t.teardown(() => server.resume())
  for (let i = 0; i < 2; i++) {
    const hung = await failure(put(s, 'k', 60))
    t.equal(hung.failure, 'unavailable', hung.message)
    t.ok(hung.ms >= 150 && hung.ms < 500, `gave up after ${hung.ms.toFixed(0)} ms`)
  }
  server.resume()
  await eventually(() => put(s, 'k', 70))
  t.equal((await s.listTriplets(() => true, 10))[0].expires, 70)
})

t.test('server errors map to failure classes: out of memory is full, a replica is readonly', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const s = store(t, server, { clock: () => 0 })
  await put(s, 'k', 50)
  await server.command('CONFIG', 'SET', 'maxmemory', '1')
  t.equal((await failure(put(s, 'k2', 50))).failure, 'full')
  t.same((await read(s)).triplet, row(1), 'reads still work')
  await server.command('CONFIG', 'SET', 'maxmemory', '0')
  await server.command('REPLICAOF', '127.0.0.1', '1')
  t.teardown(() => server.command('REPLICAOF', 'NO', 'ONE').catch(() => undefined))
  t.equal((await failure(put(s, 'k3', 50))).failure, 'readonly')
  await server.command('REPLICAOF', 'NO', 'ONE')
  await eventually(() => put(s, 'k3', 50))
  t.equal(classifyRedisError(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' })), 'unavailable')
  t.equal(classifyRedisError(new Error('BUSY Redis is busy running a script.')), 'busy')
  t.equal(classifyRedisError(new Error('LOADING Redis is loading the dataset in memory')), 'unavailable')
  t.equal(classifyRedisError(new Error('WRONGTYPE Operation against a key holding the wrong kind of value')), 'error')
})

t.test('classifyRedisError: what is not an Error, Node\'s own error codes, and server words that count only at the start of the reply', async (t) => {
  const coded = (message: string, code: string) => Object.assign(new Error(message), { code })
  const table: Array<[unknown, string]> = [
    [null, 'error'],
    [undefined, 'error'],
    ['READONLY You can\'t write against a read only replica.', 'readonly'],
    [new Error('NOPERM this user has no permissions to run the \'evalsha\' command'), 'readonly'],
    [new Error('MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to \'no\'.'), 'unavailable'],
    [new Error('WRONGPASS invalid username-password pair or user is disabled.'), 'unavailable'],
    // A script's own error text may name these words later on: only the reply's first word is its class.
    [new Error('ERR user_script:1: READONLY is not a command of this script'), 'error'],
    [new Error('ERR user_script:1: NOPERM'), 'error'],
    [new Error('ERR user_script:1: LOADING'), 'error'],
    [new Error('ERR user_script:1: WRONGPASS'), 'error'],
    [new Error('ERR user_script:1: OOM'), 'error'],
    [new Error('ERR user_script:1: BUSY'), 'error'],
    // A system error's code (ECONNRESET, EPIPE …) means the connection; Node's ERR_* codes mean a bug.
    [coded('write EPIPE', 'EPIPE'), 'unavailable'],
    [coded('write after end', 'ERR_STREAM_WRITE_AFTER_END'), 'error'],
  ]
  for (const [err, want] of table) t.equal(classifyRedisError(err), want, String((err as Error)?.message ?? err))
})

t.test('the reconnection delays (doubling from the first to the cap) and the replies that make the client reconnect', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  // ioredis calls these with no trace a test could time without sleeping: they are read from the client the store made.
  type Made = { client: { options: Pick<RedisOptions, 'retryStrategy' | 'reconnectOnError'> } }
  const options = async (reconnectMs: { first: number; max: number }) => {
    const s = store(t, server, { reconnectMs, clock: () => 0 })
    await read(s)
    return (s as unknown as Made).client.options
  }
  const quick = await options({ first: 20, max: 100 })
  t.same([1, 2, 3, 4, 5, 50].map((times) => quick.retryStrategy!(times)), [20, 40, 80, 100, 100, 100])
  const wide = await options({ first: 1, max: 1e9 })
  t.same([1, 2, 3, 17, 18, 1000].map((times) => wide.retryStrategy!(times)), [1, 2, 4, 65536, 65536, 65536], 'the doubling stops at 2^16 times the first')
  const reconnects = (message: string): unknown => quick.reconnectOnError!(new Error(message))
  t.equal(reconnects('READONLY You can\'t write against a read only replica.'), true, 'a master turned replica')
  t.equal(reconnects('ERR user_script:1: READONLY is not a command of this script'), false)
  t.equal(reconnects('OOM command not allowed when used memory > \'maxmemory\'.'), false)
})

/** A store whose master is named by Sentinels on these loopback ports (redis_timeout 200 ms), closed at teardown. */
function sentinelStore(t: { teardown(fn: () => void): void }, ports: number[]): RedisStore {
  const s = new RedisStore({
    endpoint: parseRedisUrl('redis://127.0.0.1') as RedisEndpoint,
    sentinels: ports.map((port) => ({ host: '127.0.0.1', port })),
    sentinelName: 'pts-none',
    prefix: 'test:',
    timeoutMs: 200,
    privacy: false,
    log: () => undefined,
    reconnectMs: { first: 20, max: 100 },
  })
  t.teardown(() => s.close())
  return s
}

t.test('Sentinel: the request\'s deadline names every Sentinel; a connection lost says so until the first reconnection fails', async (t) => {
  // Nothing listens on ports 1 and 2 of 127.0.0.1: the Sentinels are asked in turn, again and again, until the deadline.
  const viaSentinels = sentinelStore(t, [1, 2])
  const late = await failure(read(viaSentinels))
  t.same([late.failure, late.message], ['unavailable', 'redis sentinel pts-none (127.0.0.1:1, 127.0.0.1:2): no answer within 200 ms'])

  const server = await startRedisServer(t)
  if (!server) return
  // A first reconnection a minute away: until then nothing else tells why the connection is down.
  let lost: () => void = () => undefined
  const closed = new Promise<void>((resolve) => (lost = resolve))
  const s = store(t, server, { clock: () => 0, reconnectMs: { first: 60_000, max: 60_000 }, log: (_l, m) => /connection lost/.test(m) && lost() })
  await put(s, 'k', 50)
  await server.kill()
  await closed
  const down = await failure(read(s))
  t.same([down.failure, down.message], ['unavailable', `redis redis://127.0.0.1:${server.port}/0: connection lost, reconnecting`])
})

t.test('Sentinel: with every Sentinel down or silent, the health check (store check, --test-mode) answers within redis_timeout instead of waiting for ever', async (t) => {
  // A Sentinel that accepts the connection and never answers.
  const accepted: net.Socket[] = []
  const silent = net.createServer((socket) => accepted.push(socket))
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    silent.close()
    for (const socket of accepted) socket.destroy()
  })
  const silentPort = (silent.address() as net.AddressInfo).port
  const cases: Array<[string, number[], RegExp]> = [
    // Nothing listens on ports 1 and 2: ioredis says so (and retries), but its connect() never settles.
    ['refused', [1, 2], /^redis sentinel pts-none \(127\.0\.0\.1:1, 127\.0\.0\.1:2\): All sentinels are unreachable\b/],
    ['silent', [silentPort], new RegExp(`^redis sentinel pts-none \\(127\\.0\\.0\\.1:${silentPort}\\): no answer within 200 ms$`)],
  ]
  for (const [what, ports, line] of cases) {
    const viaSentinels = sentinelStore(t, ports)
    // The guard only turns a hang into a failure; the answer comes after 200 ms.
    let guard: NodeJS.Timeout | undefined
    const health = await Promise.race([viaSentinels.check(), new Promise<'hangs'>((resolve) => (guard = setTimeout(() => resolve('hangs'), 10_000)))])
    clearTimeout(guard)
    t.match(health, { ok: false, lines: [line] }, what)
    t.equal(health !== 'hangs' && health.lines.length, 1, `${what}: one line`)
  }
})

t.test('Sentinel: a connection ended for good (the Sentinel named an impossible port) is made again by the next request once the Sentinel answers sensibly', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  let master = '99999'
  const answered: string[] = []
  const sentinel = await startFakeRedis(t, (words) => {
    if (words[0] !== 'sentinel') return `-ERR unknown command '${words[0]}'\r\n`
    if (words[1].toLowerCase() !== 'get-master-addr-by-name') return '*0\r\n'
    answered.push(master)
    return `*2\r\n${bulk('127.0.0.1')}${bulk(master)}`
  })
  const s = sentinelStore(t, [sentinel.port])
  // ioredis cannot even open a socket to port 99999: its connect() fails and the client ends, with no retry of its own.
  t.match((await failure(read(s))).message, /^redis sentinel pts-none \(127\.0\.0\.1:\d+\): Port should be >= 0 and < 65536\b/)
  master = String(server.port)
  t.same((await read(s)).triplet, null, 'the next request connects again (the first connection: waited for)')

  // Once more after having been connected: the connection lost, its reconnection told the impossible port.
  master = '99999'
  const told = answered.length
  await server.command('CLIENT', 'KILL', 'TYPE', 'normal')
  for (let i = 0; i < 250 && answered.length === told; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.ok(answered.length > told, 'the reconnection asked the Sentinel')
  master = String(server.port)
  // Later outages are not waited for: a request starts the connection and fails; one of the next ones finds it made.
  let tries = 0
  for (let ok = false; !ok && tries < 100; tries++) {
    ok = await read(s).then(() => true, () => false)
    if (!ok) await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.ok(tries < 100, `connected again (after ${tries} requests)`)
})

t.test('a server that closes the connection as it opens: the request fails with ioredis\'s reason, not as if it had timed out', async (t) => {
  // Closed when the ready check's INFO arrives: no error event, only the close (ioredis: "Connection is closed.").
  const fake = await startFakeRedis(t, () => null)
  const s = store(t, { url: `redis://127.0.0.1:${fake.port}/0` }, { clock: () => 0, timeoutMs: 5000, reconnectMs: { first: 60_000, max: 60_000 } })
  const closed = await failure(read(s))
  t.same([closed.failure, closed.message], ['unavailable', `redis redis://127.0.0.1:${fake.port}/0: Connection is closed.`])
})

t.test('a request during an outage does not hurry the reconnection: no connection is made before the delay is over', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  let lost: () => void = () => undefined
  const closed = new Promise<void>((resolve) => (lost = resolve))
  const s = store(t, server, { clock: () => 0, reconnectMs: { first: 60_000, max: 60_000 }, log: (_l, m) => /connection lost/.test(m) && lost() })
  await read(s)
  await server.command('CLIENT', 'KILL', 'TYPE', 'normal')
  await closed
  t.equal((await failure(read(s))).message, `redis redis://127.0.0.1:${server.port}/0: connection lost, reconnecting`)
  // A request that connected by itself would have its connection within a few ms.
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal((await failure(read(s))).failure, 'unavailable', 'still down: the next attempt is a minute away')
  t.equal((await server.command('CLIENT', 'LIST', 'TYPE', 'normal')).trim().split('\n').length, 1, 'the server has no connection but the one asking')
})

t.test('no timer outlives a request: the deadline of each and the wait for the first connection are cleared', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  // A pending timer keeps a leaving process alive: with a redis_timeout of a minute, for a minute.
  const timers = (): number => process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length
  const before = timers()
  const s = store(t, server, { clock: () => 0, timeoutMs: 60_000 })
  t.same((await read(s)).triplet, null)
  t.equal(timers(), before, 'after the first request, which waited for the connection')
  await put(s, 'k', 50)
  await s.counts()
  await s.stats()
  t.equal(timers(), before, 'after a write, a count and an ops command')
})

t.test('redis_password_file: read at connection; a missing one is unavailable and says which file', async (t) => {
  const server = await startRedisServer(t, { password: 's3cret pass' })
  if (!server) return
  const dir = t.testdir()
  const file = path.join(dir, 'pw')
  fs.writeFileSync(file, 's3cret pass\n', { mode: 0o600 })
  await put(store(t, server, { passwordFile: file, clock: () => 0 }), 'k', 50)
  const missing = await failure(read(store(t, server, { passwordFile: path.join(dir, 'none') })))
  t.equal(missing.failure, 'unavailable')
  t.match(missing.message, /redis_password_file .*none cannot be read/)
  t.equal((await failure(read(store(t, server)))).failure, 'unavailable', 'no password: NOAUTH')
})

t.test('unix:// and Sentinel: the same store over a socket, and through a Sentinel that names the master', async (t) => {
  const server = await startRedisServer(t, { unixSocket: true })
  if (!server) return
  const viaSocket = store(t, server, { endpoint: parseRedisUrl(`unix://${server.socket}`) as RedisEndpoint, clock: () => 0 })
  await put(viaSocket, 'k', 50)
  const sentinel = await startSentinel(t, server.port)
  const viaSentinel = store(t, server, { sentinels: [{ host: '127.0.0.1', port: sentinel }], sentinelName: 'pts-test', clock: () => 0 })
  t.same((await eventually(() => read(viaSentinel))).triplet, row(1))
  t.match((await viaSentinel.check()).lines[0], /^redis sentinel pts-test \(127\.0\.0\.1:\d+\): Redis 7/)
})

t.test('rediss://: TLS to the server, its certificate verified (here by a private CA given as NODE_EXTRA_CA_CERTS)', async (t) => {
  const tls = await startTlsServer(t)
  if (!tls) return
  const { server, ca } = tls
  t.match(server.url, /^rediss:/)
  const dir = t.testdir()
  const args = isolatedArgs(dir, ['--store', 'redis', '--redis_url', server.url])
  const bin = path.join(__dirname, '..', 'bin', 'policyd-ts')
  const trusted = { PATH: process.env.PATH, NODE_EXTRA_CA_CERTS: ca }
  const p = startPolicy(args, trusted)
  t.teardown(() => p.child.kill('SIGKILL'))
  p.send(rcptRequest())
  t.match((await p.replies(1))[0], /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted/)
  const check = spawnSync(process.execPath, [bin, 'store', 'check', ...args], { encoding: 'utf8', env: trusted })
  t.equal(check.status, 0, check.stdout + check.stderr)
  t.match(check.stdout, /^redis rediss:\/\/127\.0\.0\.1:\d+\/0: Redis 7[^\n]*\n[\s\S]*triplets: 1 /)
  const untrusted = spawnSync(process.execPath, [bin, 'store', 'check', ...args], { encoding: 'utf8', env: { PATH: process.env.PATH } })
  t.equal(untrusted.status, 69, 'a certificate no CA vouches for is refused')
  t.match(untrusted.stdout, /certificate/i)
})

t.test('rediss://: TLS even through Sentinel, and the certificate verified: a server whose CA this process does not trust is refused', async (t) => {
  const tls = await startTlsServer(t)
  if (!tls) return
  const direct = await failure(read(store(t, tls.server)))
  t.equal(direct.failure, 'unavailable')
  // The chain's root is a CA this process does not know (plain text to a TLS port would end with the connection closed).
  t.match(direct.message, /^redis rediss:\/\/127\.0\.0\.1:\d+\/0: self-signed certificate in certificate chain$/)
  const sentinels = await startSentinels(t, tls.server.port, 1, { name: 'pts-tls', quorum: 1, downAfterMs: 60_000, failoverTimeoutMs: 60_000 })
  if (!sentinels) return
  // The Sentinel itself speaks plain text (redis_url's scheme is about the master); it names the TLS master.
  const viaSentinel = await failure(read(store(t, tls.server, { sentinels: [{ host: '127.0.0.1', port: sentinels[0].port }], sentinelName: 'pts-tls' })))
  t.equal(viaSentinel.failure, 'unavailable')
  t.match(viaSentinel.message, /^redis sentinel pts-tls \(127\.0\.0\.1:\d+\): self-signed certificate in certificate chain$/)
})

t.test('check(): keys not written yet, a policy that may evict keys without TTL, a server that keeps its version and role to itself, a server down', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const where = `redis redis://127.0.0.1:${server.port}/0`
  const s = store(t, server, { clock: () => 0 })
  const counts = 'triplets: 0 (counted for greylist_max_entries: 0), client networks: 0, whitelist entries: 0'
  const checkStarted = performance.now()
  const fresh = await s.check()
  const checkMs = performance.now() - checkStarted
  t.equal(fresh.ok, true)
  t.match(fresh.lines[0], new RegExp(`^${escapeRegExp(where)}: Redis \\d+\\.\\d+\\.\\d+, role master, answered PING in \\d+\\.\\d ms$`))
  // The PING's own round trip: part of the whole check, measured on the same clock.
  const pingMs = Number(/answered PING in (\S+) ms$/.exec(fresh.lines[0])![1])
  t.ok(pingMs >= 0 && pingMs <= checkMs + 0.05, `PING ${pingMs} ms within the check's ${checkMs.toFixed(1)} ms`)
  t.same(fresh.lines.slice(1), ['keys under test:{g}: none written yet (the first greylisting write records their format)', counts])
  const warning = (policy: string): string =>
    `maxmemory-policy ${policy}: the server may evict greylisting keys without TTL (the whitelist, the counters); noeviction or a volatile-* policy keeps them`
  const policies: Array<[string, string[]]> = [
    ['allkeys-lru', [warning('allkeys-lru')]],
    ['allkeys-random', [warning('allkeys-random')]],
    ['volatile-lru', []],
    ['noeviction', []],
  ]
  for (const [policy, want] of policies) {
    await server.command('CONFIG', 'SET', 'maxmemory-policy', policy)
    const h = await s.check()
    t.same([h.ok, h.lines.slice(2)], [true, [counts, ...want]], policy)
  }
  // A proxy that answers INFO with its memory section only: no redis_version, no role.
  const proxy = await infoHidingProxy(t, server.port)
  const hidden = await store(t, server, { endpoint: parseRedisUrl(`redis://127.0.0.1:${proxy}/0`) as RedisEndpoint, clock: () => 0 }).check()
  t.equal(hidden.ok, true)
  t.match(hidden.lines[0], new RegExp(`^redis redis://127\\.0\\.0\\.1:${proxy}/0: server, role \\?, answered PING in \\d+\\.\\d ms$`))
  await server.kill()
  const down = await store(t, server, { clock: () => 0 }).check()
  t.same(down, { ok: false, lines: [`${where}: connect ECONNREFUSED 127.0.0.1:${server.port}`] }, 'the reason is the one line: what stops greylisting')
})

t.test('a closed store refuses every request at once, and says so', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const s = store(t, server, { clock: () => 0 })
  await put(s, 'k', 50)
  s.close()
  for (const p of [read(s), s.counts(), s.listWhitelist()]) {
    const closed = await failure(p)
    t.same([closed.failure, closed.message], ['unavailable', `redis redis://127.0.0.1:${server.port}/0: store closed`])
  }
})

t.test('--test-mode\'s check: notes and problems (what is wrong is the last line), the connection closed after; a bad redis_url is refused by name', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const cfg = config({ store: 'redis', redis_url: server.url, redis_prefix: 'tm:', greylist_privacy: 'no' })
  const where = `redis redis://127.0.0.1:${server.port}/0`
  const clients = async (): Promise<number> => Number(/connected_clients:(\d+)/.exec(await server.command('INFO', 'clients'))![1])
  /** The store's connection is gone: only the helper's own one is left (bounded: 2 s). */
  const closedAfter = async (): Promise<boolean> => {
    const started = Date.now()
    while (Date.now() - started < 2000) {
      if ((await clients()) === 1) return true
      await new Promise((r) => setTimeout(r, 10))
    }
    return false
  }
  const counts = (n: number): string => `triplets: ${n} (counted for greylist_max_entries: ${n}), client networks: ${n}, whitelist entries: 0`
  const fine = await checkRedisStore(cfg)
  t.same(fine.problems, [])
  t.same(fine.notes.slice(1), ['keys under tm:{g}: none written yet (the first greylisting write records their format)', counts(0)])
  t.match(fine.notes[0], new RegExp(`^${escapeRegExp(where)}: Redis `))
  t.ok(await closedAfter(), 'its connection closed')
  // Another host wrote the keys with greylist_privacy on.
  const hashed = store(t, server, { prefix: 'tm:', privacy: true, clock: () => 0 })
  await put(hashed, 'k', 50)
  hashed.close()
  const refused = await checkRedisStore(cfg)
  t.equal(refused.notes.length, 3)
  t.match(refused.notes[0], new RegExp(`^${escapeRegExp(where)}: Redis `))
  t.same(refused.notes.slice(1), ['keys under tm:{g}: format 1, greylist_privacy yes', counts(1)])
  t.same(refused.problems, ['these are NOT this host\'s (format 1, greylist_privacy no): greylisting answers fail_action until they agree (or delete tm:{g}:meta to start afresh)'])
  t.ok(await closedAfter(), 'its connection closed')
  // The configuration refuses a bad redis_url before; the store's own refusal names the setting and the flaw.
  const bad = { ...cfg, redis_url: 'http://127.0.0.1' }
  const thrown = (() => {
    try {
      redisStoreOptions(bad, () => undefined)
    } catch (err) {
      return err
    }
  })()
  t.ok(thrown instanceof StoreError)
  t.same(thrown instanceof StoreError && [thrown.failure, thrown.message], ['error', 'redis_url: has scheme http: (known: redis:, rediss:, unix:)'])
  await t.rejects(checkRedisStore(bad), { message: 'redis_url: has scheme http: (known: redis:, rediss:, unix:)' })
})

t.test('writes of one row only: the client row alone (the triplet untouched), the client row deleted', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const s = store(t, server, { clock: () => 0 })
  await put(s, 'k', 50, 'c')
  await s.updateGreylist('k', 'c', () => ({ client: { row: { count: 2, last: 7, lastCounted: 5 }, expires: 60 }, result: null }))
  const written = await read(s)
  t.same([written.triplet, written.client], [row(1), { count: 2, last: 7, lastCounted: 5 }])
  t.same(await s.listTriplets(() => true, 10), [{ key: 'k', ...row(1), expires: 50 }], 'the triplet row as it was')
  await s.updateGreylist('k', 'c', () => ({ client: null, result: null }))
  const deleted = await read(s)
  t.same([deleted.triplet, deleted.client], [row(1), null])
  t.same(await s.counts(), { triplets: 1, clients: 0 })
})

t.test('whitelist entries of one request: the one that lasts longest, whatever the order; of equals, the first named', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const s = store(t, server, { clock: () => 0 })
  // '' stands for a part the request lacks (no SASL name …): it never matches, not even an entry stored under ''.
  const entries: Array<[string, number]> = [['short', 100], ['long', 300], ['also-long', 300], ['forever', Infinity], ['', Infinity]]
  for (const [key, expires] of entries) await s.setWhitelist({ key, expires, note: '', setAt: 1 })
  const table: Array<[string[], { key: string; expires: number } | undefined]> = [
    [['short', 'long'], { key: 'long', expires: 300 }],
    [['long', 'short'], { key: 'long', expires: 300 }],
    [['none', 'short', 'none-either'], { key: 'short', expires: 100 }],
    [['long', 'also-long'], { key: 'long', expires: 300 }],
    [['also-long', 'long', 'short'], { key: 'also-long', expires: 300 }],
    [['short', 'forever', 'long'], { key: 'forever', expires: Infinity }],
    [['none'], undefined],
    [['', 'none'], undefined],
    [['short', ''], { key: 'short', expires: 100 }],
  ]
  for (const [keys, want] of table) t.same((await s.updateGreylist('k', 'c', (v) => ({ result: v }), () => keys)).whitelisted, want, keys.join(' '))
})

/** Runs node with args to its exit; msAfterVerdict: from the moment stdout ends with `verdict` to the exit. */
function runToExit(args: string[], verdict: string): Promise<{ status: number | null; stdout: string; msAfterVerdict: number }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'ignore'] })
    let stdout = ''
    let verdictAt = Infinity
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk
      if (stdout.endsWith(verdict)) verdictAt = performance.now()
    })
    child.on('close', (status) => resolve({ status, stdout, msAfterVerdict: performance.now() - verdictAt }))
  })
}

t.test('the binary: store = redis greylists; store check reports the server; a killed server gets fail_action, logged once', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const dir = t.testdir()
  const args = isolatedArgs(dir, ['--store', 'redis', '--redis_url', server.url, '--redis_prefix', 'bin:', '--redis_timeout', '300ms'])
  const p = startPolicy(args)
  t.teardown(() => p.child.kill('SIGKILL'))
  p.send(rcptRequest())
  t.match((await p.replies(1))[0], /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted, please try again in 300 seconds$/)
  const check = execFileSync(process.execPath, [path.join(__dirname, '..', 'bin', 'policyd-ts'), 'store', 'check', ...args], { encoding: 'utf8' })
  t.match(check, /^redis redis:\/\/127\.0\.0\.1:\d+\/0: Redis 7[^\n]*\nkeys under bin:\{g\}: format 1, greylist_privacy no\ntriplets: 1 \(counted for greylist_max_entries: 1\)[^\n]*\nok\n$/)
  const testMode = (...extra: string[]) => spawnSync(process.execPath, [path.join(__dirname, '..', 'bin', 'policyd-ts'), '--test-mode', ...args, ...extra], { encoding: 'utf8' })
  const fine = testMode()
  t.equal(fine.status, 0, fine.stderr)
  t.match(fine.stdout, /\n# database: redis redis:\/\/127\.0\.0\.1:\d+\/0: Redis 7[^\n]*\n# database: keys under bin:\{g\}: format 1, greylist_privacy no\n/, '--test-mode checks the server, not db_path')
  const hashed = testMode('--greylist_privacy', 'yes')
  t.equal(hashed.status, 73, 'a host keyed otherwise: --test-mode fails')
  t.match(hashed.stderr, /database: these are NOT this host's \(format 1, greylist_privacy yes\)/)
  await server.kill()
  const started = Date.now()
  p.send(rcptRequest({ recipient: 'carol@example.org' }) + rcptRequest({ recipient: 'dave@example.org' }))
  const replies = await p.replies(3)
  t.same(replies.slice(1), ['action=DUNNO', 'action=DUNNO'], 'fail_action')
  t.ok(Date.now() - started < 2000, 'within redis_timeout each')
  // Timed from its verdict to its exit, not from its start (a loaded
  // machine slows Node's start-up): a connection left to linger would keep
  // it 2 s more (ioredis's disconnect timer).
  const down = await runToExit([path.join(__dirname, '..', 'bin', 'policyd-ts'), 'store', 'check', ...args], 'PROBLEM\n')
  t.equal(down.status, 69, 'EX_UNAVAILABLE')
  t.match(down.stdout, /^redis redis:\/\/127\.0\.0\.1:\d+\/0: connect ECONNREFUSED [^\n]*\nPROBLEM\n$/)
  t.ok(down.msAfterVerdict < 1900, `and leaves at once (no socket left to linger): ${down.msAfterVerdict} ms after its verdict`)
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  t.equal(p.stderr(), '')
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  t.equal(log.match(/database unavailable, answering fail_action DUNNO/g)?.length, 1, log)
})

t.test('two daemons ("hosts") on one Redis: attempts of one triplet from 6 connections at once all count, none lost', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const daemons = await Promise.all(['a', 'b'].map(async (host) => {
    const dir = t.testdir()
    const d = await startDaemon(socketDir(t), isolatedArgs(path.join(dir, host), ['--store', 'redis', '--redis_url', server.url, '--redis_prefix', 'two:', '--hostname', `mx-${host}`]))
    t.teardown(() => d.child.kill('SIGKILL'))
    return d
  }))
  const clients = await Promise.all(Array.from({ length: 6 }, (_, i) => connect(daemons[i % 2].socketPath)))
  t.teardown(() => clients.forEach((c) => c.end()))
  const replies = await Promise.all(clients.map((c, i) => c.ask(rcptRequest({ instance: `m${i}` }))))
  t.equal(replies.filter((r) => /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted, please try again in (299|300) seconds$/.test(r)).length, 6, replies.join('\n'))
  t.equal(await server.command('HGET', 'two:{g}:t:192.0.2.0/24/alice@example.net/bob@example.org', 'n'), '6', 'each attempt counted once: no update lost between the hosts')
  t.equal(await server.command('HGET', 'two:{g}:n', 't'), '1', 'one triplet counted')
})

// ---- rate limits (the conformance table is test/ratelimit-conformance.test.ts)

t.test('rate limits: the server\'s TIME rules, so two hosts whose clocks are 600 s apart count in the same slots; with test clocks each counts on its own', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const lim = ['1msg/10m']
  const hostNow = Date.now() / 1000
  const a = store(t, server)
  const b = store(t, server)
  const committed = await a.rateLimit(mk('commit', 'm1', hostNow, [ident('sasl:skew', lim, amounts(1, 1))]))
  t.ok(Math.abs(committed.now - hostNow) < 5, `the server's time (${committed.now}), in seconds with a fraction`)
  // Host b's clock says ten minutes later: the whole window of a's message would have passed by it.
  const refused = await b.rateLimit(mk('hold', 'm2', hostNow + 600, [ident('sasl:skew', lim, RCPT_FIRST(), RCPT_MORE)]))
  t.same([refused.ok, refused.exceeded?.used], [false, 1], 'refused: by the server\'s clock, a\'s message is in the window')
  t.ok(Math.abs(refused.now - committed.now) < 5, 'both steps on one clock')
  t.ok(refused.exceeded!.retryAt > refused.now + 400 && refused.exceeded!.retryAt <= refused.now + 600, 'retryAt on the server\'s clock too')
  // The same two steps with test clocks 600 s apart: each store takes its step's own time.
  const c = store(t, server, { clock: () => 0, prefix: 'clocked:' })
  const d = store(t, server, { clock: () => 0, prefix: 'clocked:' })
  await c.rateLimit(mk('commit', 'm1', 1_800_000_000, [ident('sasl:skew', lim, amounts(1, 1))]))
  const later = await d.rateLimit(mk('hold', 'm2', 1_800_000_600, [ident('sasl:skew', lim, RCPT_FIRST(), RCPT_MORE)]))
  t.same([later.ok, later.now], [true, 1_800_000_600], 'with a test clock, 600 s later the window has passed')
})

t.test('rate limits: TTLs follow the rows\' expiry; the ops commands see the keys; purgeAll keeps live rows', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const s = store(t, server)
  const pttl = async (key: string): Promise<number> => Number(await server.command('PTTL', key))
  const commit = await s.rateLimit(mk('commit', 'm1', 0, [ident('client:t', ['1msg/1h', '5rcpt/1d'], amounts(2, 1))]))
  const hourEnd = slotStart(slotIndex(commit.now, 86400, SLOTS) + 1 + SLOTS, 86400, SLOTS)
  const usageTtl = await pttl('test:{r}:u:client:t')
  t.ok(Math.abs(usageTtl - ((hourEnd - commit.now) * 1000 + 1000)) < 3000, `usage TTL ${usageTtl} ms: the day counter's end of last slot + window (the longest)`)
  t.equal((await s.rateLimit(mk('hold', 'm2', 0, [ident('client:t', ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)]))).ok, true)
  t.equal((await s.rateLimit(mk('hold', 'm3', 0, [ident('client:t', ['1msg/1h'], RCPT_FIRST(), RCPT_MORE)]))).ok, false, 'a hit')
  for (const key of ['test:{r}:h:client:t', 'test:{r}:a:client:t']) {
    const ttl = await pttl(key)
    t.ok(ttl > HOLD_TIME * 1000 - 3000 && ttl <= HOLD_TIME * 1000 + 1000, `${key}: TTL ${ttl} ms, the hold time`)
  }
  const hitTtl = await pttl('test:{r}:x:client:t')
  t.ok(hitTtl > 7 * 86400_000 - 3000 && hitTtl <= 7 * 86400_000 + 1000, `hit TTL ${hitTtl} ms: a week`)
  t.match(await server.command('HGETALL', 'test:{r}:m'), /format\n1\nprivacy\nno/, 'the first step records the key format')
  t.ok(Math.abs(Number(await server.command('HGET', 'test:{r}:m', 'lc')) - commit.now) < 1e-6, 'the last commit, on the server\'s clock')
  t.same((await s.listUsage(() => true, commit.now, SLOTS)).map((u) => [u.unit, u.window, u.used, u.held]), [['msg', 3600, 1, 1], ['rcpt', 86400, 2, 1]])
  t.equal(await s.purgeAll(commit.now), 0, 'nothing has expired')
  t.equal(await s.resetUsage(() => true), 1)
  t.same(await server.command('KEYS', 'test:{r}:[uhax]:*'), '', 'every key of the identity is gone')
})

t.test('rate limits: the stored forms: a permanent override ends at "inf"; a hold whose amounts are gone counts as nothing', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const s = store(t, server, { clock: () => 0 })
  await s.setOverride({ key: 'sasl:vip', limits: 'unlimited', expires: Infinity, note: 'for good', setAt: 5 })
  await s.setOverride({ key: 'sasl:until', limits: '9msg/1h', expires: 7200, note: '', setAt: 6 })
  // END<TAB>SET-AT<TAB>LIMITS<TAB>NOTE, as the Lua scripts and other versions read it.
  t.equal(await server.command('HGET', 'test:{r}:o', 'sasl:vip'), 'inf\t5\tunlimited\tfor good')
  t.equal(await server.command('HGET', 'test:{r}:o', 'sasl:until'), '7200\t6\t9msg/1h\t')
  await s.rateLimit(mk('commit', 'm0', 100, [ident('c:x', ['9msg/1h'], amounts(1, 1))]))
  await s.rateLimit(mk('hold', 'm1', 100, [ident('c:x', ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
  await s.rateLimit(mk('hold', 'm2', 100, [ident('c:x', ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
  t.same((await s.listUsage(() => true, 100, SLOTS)).map((u) => [u.unit, u.used, u.held]), [['msg', 1, 2]])
  await server.command('HDEL', 'test:{r}:a:c:x', 'm1')
  t.same((await s.listUsage(() => true, 100, SLOTS)).map((u) => [u.unit, u.used, u.held]), [['msg', 1, 1]], 'm1 without its amounts: nothing held')
})

t.test('execPipeline: an error of any command rejects; a transaction discarded by WATCH is a StoreError', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const { Redis } = await import('ioredis')
  const c = new Redis({ host: '127.0.0.1', port: server.port, maxRetriesPerRequest: 0 })
  t.teardown(() => c.disconnect())
  await server.command('SET', 'text', 'x')
  t.same(await execPipeline(c.pipeline([['get', 'text'], ['strlen', 'text']])), ['x', 1])
  await t.rejects(execPipeline(c.pipeline([['get', 'text'], ['hgetall', 'text']])), /WRONGTYPE/)
  await c.watch('text')
  await server.command('SET', 'text', 'changed')
  const err = await execPipeline(c.multi().set('text', 'mine')).catch((e: unknown) => e)
  t.ok(err instanceof StoreError, 'a StoreError')
  t.same(err instanceof StoreError && [err.failure, err.message], ['error', 'transaction discarded'])
  t.equal(await server.command('GET', 'text'), 'changed', 'nothing written')
})

t.test('rate limits: a host with another greylist_privacy is refused, before the script writes anything; so is an identity named twice', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const clear = store(t, server, { clock: () => 0 })
  await clear.rateLimit(mk('commit', 'a', 100, [ident('c:x', ['9msg/1h'], amounts(1, 1))]))
  const hashed = store(t, server, { clock: () => 0, privacy: true })
  const refused = await failure(hashed.rateLimit(mk('commit', 'b', 100, [ident('c:y', ['9msg/1h'], amounts(1, 1))])))
  t.equal(refused.failure, 'error')
  t.match(refused.message, /its rate-limit keys under test: have format 1 and greylist_privacy no, .* delete the key test:\{r\}:m/)
  t.same(await server.command('EXISTS', 'test:{r}:u:c:y'), '0', 'nothing written')
  const twice = await failure(clear.rateLimit(mk('commit', 'c', 100, [ident('c:x', ['9msg/1h'], amounts(1, 1)), ident('c:x', ['9msg/1h'], amounts(1, 1))])))
  t.match(twice.message, /an identity named twice/)
  t.same((await clear.listUsage(() => true, 100, SLOTS)).map((u) => u.used), [1], 'c:x counted once, by the first step only')
})

t.test('rate limits: scripts flushed from the server are loaded again; a killed server is unavailable within redis_timeout', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const s = store(t, server, { clock: () => 0 })
  await s.rateLimit(mk('hold', 'a', 100, [ident('c:x', ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)]))
  t.equal(await server.command('SCRIPT', 'FLUSH'), 'OK')
  t.same((await s.rateLimit(mk('commit', 'a', 101, [ident('c:x', ['9msg/1h'], amounts(1, 1))]))).hadHold, true)
  await server.kill()
  const down = await failure(s.rateLimit(mk('hold', 'b', 102, [ident('c:x', ['9msg/1h'], RCPT_FIRST(), RCPT_MORE)])))
  t.equal(down.failure, 'unavailable')
  t.ok(down.ms < 1500, `failed after ${down.ms.toFixed(0)} ms`)
})

/** A Sentinel (redis-server --sentinel) on a free port watching the master at `masterPort` as pts-test; killed in teardown. */
async function startSentinel(t: Tap.Test, masterPort: number): Promise<number> {
  const { spawn } = await import('node:child_process')
  const net = await import('node:net')
  const dir = t.testdir()
  const probe = net.createServer()
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r))
  const port = (probe.address() as import('node:net').AddressInfo).port
  await new Promise((r) => probe.close(r))
  const conf = path.join(dir, 'sentinel.conf')
  fs.writeFileSync(conf, `port ${port}\nbind 127.0.0.1\ndir ${dir}\nlogfile ${path.join(dir, 'sentinel.log')}\nsentinel monitor pts-test 127.0.0.1 ${masterPort} 1\n`)
  const child = spawn('/usr/bin/redis-server', [conf, '--sentinel'], { stdio: 'ignore' })
  t.teardown(() => {
    child.kill('SIGKILL')
  })
  return port
}

/** A TLS-only redis-server whose certificate a private CA signed (`ca`: its PEM file, which this process does not trust). */
async function startTlsServer(t: Tap.Test): Promise<{ server: RedisServer; ca: string } | null> {
  if (!fs.existsSync('/usr/bin/openssl')) {
    t.skip('/usr/bin/openssl is not installed: no certificates for a TLS server')
    return null
  }
  const pki = fs.mkdtempSync(path.join(os.tmpdir(), 'pts-pki-'))
  t.teardown(() => fs.rmSync(pki, { recursive: true, force: true }))
  const ssl = (...a: string[]): void => {
    execFileSync('/usr/bin/openssl', a, { cwd: pki, stdio: 'ignore' })
  }
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  ssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=policyd-ts test CA')
  ssl('req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1')
  fs.writeFileSync(path.join(pki, 'san'), 'subjectAltName=IP:127.0.0.1\n')
  ssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'san')
  const ca = path.join(pki, 'ca.pem')
  const server = await startRedisServer(t, { tls: { cert: path.join(pki, 'server.pem'), key: path.join(pki, 'server.key'), ca } })
  return server && { server, ca }
}

/**
 * A TCP proxy on 127.0.0.1 to the server at `port` that turns each bare INFO
 * into INFO memory: a server that keeps its version and role to itself. Closed in teardown.
 */
async function infoHidingProxy(t: Tap.Test, port: number): Promise<number> {
  const net = await import('node:net')
  const sockets = new Set<import('node:net').Socket>()
  const bareInfo = /\*1\r\n\$4\r\ninfo\r\n/gi
  const proxy = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1')
    for (const sock of [client, upstream]) {
      sockets.add(sock)
      sock.on('error', () => undefined)
      sock.on('close', () => {
        sockets.delete(sock)
        client.destroy()
        upstream.destroy()
      })
    }
    client.on('data', (d: Buffer) => upstream.write(d.toString('latin1').replace(bareInfo, () => '*2\r\n$4\r\ninfo\r\n$6\r\nmemory\r\n'), 'latin1'))
    upstream.pipe(client)
  })
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r))
  t.teardown(async () => {
    for (const sock of sockets) sock.destroy()
    await new Promise((r) => proxy.close(r))
  })
  return (proxy.address() as import('node:net').AddressInfo).port
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

function config(over: Record<string, string> = {}): Config {
  const l = loadConfig({ cli: { greylist_whitelist_clients: '', greylist_whitelist_recipients: '', ...over }, configPath: '/dev/null', env: {}, readFile: () => '', parseDotenv: () => () => ({}) })
  if (l.errors.length) throw new Error(l.errors.join('; '))
  return l.config
}

function context(cfg: Config, s: RedisStore): DecideContext {
  return {
    config: cfg,
    logStateChange: () => undefined,
    log: () => undefined,
    headers: new HeaderQueue(16, () => undefined),
    greylist: {
      config: cfg,
      store: s,
      whitelists: createGreylistWhitelists(cfg, () => undefined, () => 0),
      headerSent: new BoundedMap(16),
      version: () => '9.9.9',
      hostname: 'mx.example.org',
      log: () => undefined,
      logStateChange: () => undefined,
    },
  }
}

function request(over: Record<string, string> = {}) {
  return toPolicyRequest(
    new Map(Object.entries({
      request: 'smtpd_access_policy', protocol_state: 'RCPT', client_address: '192.0.2.10', client_name: 'mail.example.net',
      helo_name: 'mail.example.net', sender: 'alice@example.net', recipient: 'bob@example.org', instance: 'm1', ...over,
    })),
  )
}
