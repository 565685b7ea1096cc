// What the Redis store puts on the wire and reads back from it, seen from
// outside the store: the stored form of whitelist entries (other hosts read
// it), the SCAN patterns of the ops commands (a prefix with glob characters
// must see its own keys only), the size of the delete scripts (watched with
// MONITOR), redis_password_file as the configuration gives it, the INFO
// text of check() as a server may word it and the commands of a connection's
// handshake (a fake server on loopback), where the statistics live, a row gone
// between SCAN and read, and the keys of another key format; and that a write
// of the triplet alone leaves the client row on the server as it was.
// One private redis-server for the whole file; each test has its own prefix.
import t from 'tap'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { Redis } from 'ioredis'
import { loadConfig, type Config } from '../lib/config'
import { RedisStore, checkRedisStore, type RedisStoreOptions } from '../lib/store/redis'
import type { RedisEndpoint } from '../lib/store/redis-url'
import { startRedisServer, type RedisServer } from './helpers/redis-server'
import { bulk, startFakeRedis, type FakeRedis } from './helpers/fake-redis'

let server: RedisServer | null = null
t.before(async () => {
  server = await startRedisServer(t)
})

function store(t: Tap.Test, port: number, prefix: string, over: Partial<RedisStoreOptions> = {}): RedisStore {
  const endpoint: RedisEndpoint = { tls: false, host: '127.0.0.1', port, db: 0 }
  const s = new RedisStore({ endpoint, prefix, timeoutMs: 2000, privacy: false, log: () => undefined, clock: () => 0, ...over })
  t.teardown(() => s.close())
  return s
}

/** A triplet row and its client row (client `c <key>`), both ending at 50. */
const put = (s: RedisStore, key: string) =>
  s.updateGreylist(key, `c ${key}`, () => ({
    triplet: { row: { first: 1, last: 1, passed: 0, count: 1 }, expires: 50 },
    client: { row: { count: 1, last: 1, lastCounted: 1 }, expires: 50 },
    result: null,
  }))

t.test('whitelist entries are stored as END<TAB>SET-AT<TAB>NOTE, a permanent one ending at "inf" (the form every host reads)', async (t) => {
  if (!server) return
  const s = store(t, server.port, 'wl:')
  await s.setWhitelist({ key: 'forever', expires: Infinity, note: 'a note\twith a tab', setAt: 5 })
  await s.setWhitelist({ key: 'dated', expires: 300, note: '', setAt: 7 })
  t.equal(await server.command('HGET', 'wl:{g}:w', 'forever'), 'inf\t5\ta note\twith a tab')
  t.equal(await server.command('HGET', 'wl:{g}:w', 'dated'), '300\t7\t')
  t.same(await s.listWhitelist(), [
    { key: 'dated', expires: 300, note: '', setAt: 7 },
    { key: 'forever', expires: Infinity, note: 'a note\twith a tab', setAt: 5 },
  ])
})

t.test('a write of the triplet alone leaves the client row as it was, on the server too', async (t) => {
  if (!server) return
  const s = store(t, server.port, 'one:')
  await put(s, 'k')
  const before = await server.command('HGETALL', 'one:{g}:c:c k')
  await s.updateGreylist('k', 'c k', () => ({ triplet: { row: { first: 1, last: 9, passed: 9, count: 2 }, expires: 60 }, result: null }))
  t.equal(await server.command('HGETALL', 'one:{g}:c:c k'), before)
  t.same((await s.updateGreylist('k', 'c k', (v) => ({ result: v }))).client, { count: 1, last: 1, lastCounted: 1 })
  t.same((await s.listTriplets(() => true, 10))[0], { key: 'k', first: 1, last: 9, passed: 9, count: 2, expires: 60 })
})

t.test('a prefix with glob characters (* ? [ ] \\) sees its own keys only, not those of a prefix the glob would match', async (t) => {
  if (!server) return
  const port = server.port
  // Store i holds i + 1 triplets: a store that counted another's keys, or missed its own, shows another number.
  const prefixes = ['x', 'xy', 'xa', 'x*', 'x?', 'x[ab]', 'x\\', 'x]']
  const stores = prefixes.map((prefix) => store(t, port, prefix))
  const keysOf = (i: number): string[] => Array.from({ length: i + 1 }, (_, n) => `${prefixes[i]} ${n}`)
  for (const [i, s] of stores.entries()) for (const key of keysOf(i)) await put(s, key)
  for (const [i, s] of stores.entries()) {
    const n = i + 1
    t.same((await s.listTriplets(() => true, 100)).map((r) => r.key), keysOf(i), `${prefixes[i]}: its triplets`)
    const health = await s.check()
    t.equal(health.lines[2], `triplets: ${n} (counted for greylist_max_entries: ${n}), client networks: ${n}, whitelist entries: 0`, `${prefixes[i]}: check() counts`)
  }
})

t.test('deleteTriplets deletes in scripts of at most 500 rows each, and runs none when nothing matches', async (t) => {
  if (!server) return
  const port = server.port
  const s = store(t, port, 'd:')
  const writer = new Redis({ host: '127.0.0.1', port, lazyConnect: true })
  t.teardown(() => writer.disconnect())
  const monitor = await writer.duplicate().monitor()
  t.teardown(() => monitor.disconnect())
  let batches: number[] = []
  let marks = 0
  monitor.on('monitor', (_time: string, args: string[]) => {
    const name = args[0].toLowerCase()
    if (name === 'echo') marks++
    // A glPurge call (EVAL the first time on a connection, EVALSHA after): KEYS = the counters, then the rows; ARGV = kind, time, test clock.
    else if ((name === 'eval' || name === 'evalsha') && args[3] === 'd:{g}:n' && args.length === 3 + Number(args[2]) + 3) batches.push(Number(args[2]) - 1)
  })
  /** The script calls of one deleteTriplets, as MONITOR saw them: the echo sent after it comes after them all (bounded: 5 s). */
  const deleteAll = async (): Promise<{ gone: number; batches: number[] }> => {
    batches = []
    const gone = await s.deleteTriplets(() => true)
    const want = marks + 1
    await server!.command('ECHO', 'done')
    for (const started = Date.now(); marks < want && Date.now() - started < 5000; ) await new Promise((r) => setTimeout(r, 5))
    return { gone, batches }
  }
  const write = async (n: number): Promise<void> => {
    const pipe = writer.pipeline()
    for (let i = 0; i < n; i++) pipe.hset(`d:{g}:t:k${i}`, 'f', 1, 'l', 1, 'p', 0, 'n', 1, 'e', 50)
    await pipe.exec()
  }
  t.same(await deleteAll(), { gone: 0, batches: [] }, 'no rows: no script')
  t.equal(await server.command('EXISTS', 'd:{g}:n'), '0', 'and nothing written')
  await write(1000)
  t.same(await deleteAll(), { gone: 1000, batches: [500, 500] })
  await write(1001)
  t.same(await deleteAll(), { gone: 1001, batches: [500, 500, 1] })
  t.equal(await server.command('KEYS', 'd:{g}:t:*'), '', 'every row gone')
})

t.test('--test-mode\'s check reads redis_password_file: one that cannot be read is the problem, named', async (t) => {
  if (!server) return
  const missing = path.join(t.testdir(), 'no-such-file')
  const result = await checkRedisStore(config({ store: 'redis', redis_url: server.url, redis_prefix: 'pw:', redis_password_file: missing }))
  t.same(result.problems.length, 1)
  t.match(result.problems[0], `redis_password_file ${missing} cannot be read`)
})

t.test('check() reads INFO as KEY:VALUE lines, whatever the line ends, skipping comments and lines without a colon; an INFO without maxmemory_policy is healthy', async (t) => {
  const table: Array<[string, string, string]> = [
    ['CRLF', '# Server\r\nredis_version:7.2.4\r\n\r\n# Replication\r\nrole:master\r\n', 'Redis 7.2.4, role master'],
    ['bare LF', '# Server\nredis_version:7.2.4\n\n# Replication\nrole:slave\n', 'Redis 7.2.4, role slave'],
    ['a line without a colon', '# Server\r\nredis_version:7.2.4\r\nrole:master\r\nroles\r\n', 'Redis 7.2.4, role master'],
    ['a comment with a colon', '# Server\r\nredis_version:7.2.4\r\nrole:master\r\n# role:slave\r\n', 'Redis 7.2.4, role master'],
    ['a value ending in #', '# Server\r\nredis_version:7.2.4-fork#\r\nrole:master\r\n', 'Redis 7.2.4-fork#, role master'],
    ['no version, no role', '# Server\r\nos:Linux\r\n', 'server, role ?'],
  ]
  for (const [what, info, want] of table) {
    const fake = await fakeServer(t, info)
    const port = fake.port
    const health = await store(t, port, 'f:').check()
    t.match(health.lines[0], `redis redis://127.0.0.1:${port}/0: ${want}, answered PING in `, what)
    // None of these INFO texts has maxmemory_policy (a proxy or another server may leave it out): nothing to warn about.
    t.equal(health.ok, true, `${what}: healthy`)
    t.equal(health.lines.length, 3, `${what}: the server, the keys and the counts, no more`)
    // Redis 7.0 reads an empty cursor as 0 too; later servers refuse it ("invalid cursor").
    t.same(fake.commands.filter((words) => words[0] === 'scan').map((words) => words[1]), ['0', '0'], `${what}: each SCAN (triplets, clients) starts at cursor 0`)
  }
})

t.test('a connection costs one round trip before the first command: the ready check\'s INFO, no HELLO, no CLIENT SETINFO', async (t) => {
  const fake = await fakeServer(t, '# Server\r\nredis_version:7.0.15\r\n')
  const s = store(t, fake.port, 'hs:')
  await s.counts()
  t.same(fake.commands.map((words) => words[0]), ['info', 'eval'], 'INFO, then the upkeep script (EVAL: the first call on a connection)')
})

t.test('statistics live in the hash PREFIX{g}:s, field HOST<TAB>NAME: two prefixes on one server count apart', async (t) => {
  if (!server) return
  const a = store(t, server.port, 'sa:')
  const b = store(t, server.port, 'sb:')
  await a.addStats('mx1', new Map([['greylisted', 2]]))
  await b.addStats('mx1', new Map([['greylisted', 5]]))
  t.equal(await server.command('HGET', 'sa:{g}:s', 'mx1\tgreylisted'), '2')
  t.equal(await server.command('HGET', 'sb:{g}:s', 'mx1\tgreylisted'), '5')
  t.same(await a.stats(), [{ host: 'mx1', name: 'greylisted', value: 2 }])
})

t.test('listTriplets leaves out a row that is gone between its SCAN and its read', async (t) => {
  if (!server) return
  const s = store(t, server.port, 'gone:')
  await put(s, 'stays')
  await put(s, 'goes')
  const port = String(server.port)
  // match() runs after the SCAN and before the rows are read: it deletes one row there, synchronously.
  const match = (key: string): boolean => {
    if (key === 'goes') execFileSync('redis-cli', ['-p', port, 'DEL', 'gone:{g}:t:goes'], { stdio: 'ignore' })
    return true
  }
  const listed = await s.listTriplets(match, 10)
  t.same(listed.map((row) => row.key), ['stays'])
  t.equal(await server.command('EXISTS', 'gone:{g}:t:goes'), '0', 'the row was indeed deleted by then')
})

t.test('keys of another key format (a later version\'s "10"): requests refused naming greylisting and both formats, check() says they are not this host\'s', async (t) => {
  if (!server) return
  const s = store(t, server.port, 'fmt:')
  await server.command('HSET', 'fmt:{g}:meta', 'format', '10', 'privacy', 'no')
  const refused = await put(s, 'k').then(
    () => null,
    (err: Error) => err.message,
  )
  t.equal(
    refused,
    `redis redis://127.0.0.1:${server.port}/0: its greylisting keys under fmt: have format 10 and greylist_privacy no, this host format 1 and greylist_privacy no: ` +
      'every host sharing the store must agree (or use another redis_prefix); to start afresh, delete the key fmt:{g}:meta',
  )
  const health = await s.check()
  t.equal(health.ok, false)
  t.equal(health.lines.at(-1), 'these are NOT this host\'s (format 1, greylist_privacy no): greylisting answers fail_action until they agree (or delete fmt:{g}:meta to start afresh)')
})

/** A fake server that answers check()'s commands as an empty server would, INFO with `info`. */
async function fakeServer(t: Tap.Test, info: string): Promise<FakeRedis> {
  const replies: Record<string, string> = {
    ping: '+PONG\r\n',
    info: bulk(info),
    hgetall: '*0\r\n',
    evalsha: '*2\r\n:0\r\n:0\r\n',
    eval: '*2\r\n:0\r\n:0\r\n',
    scan: `*2\r\n${bulk('0')}*0\r\n`,
    hlen: ':0\r\n',
  }
  return startFakeRedis(t, (words) => replies[words[0]] ?? `-ERR unknown command '${words[0]}'\r\n`)
}

function config(over: Record<string, string>): Config {
  const l = loadConfig({ cli: { greylist_whitelist_clients: '', greylist_whitelist_recipients: '', ...over }, configPath: '/dev/null', env: {}, readFile: () => '' })
  if (l.errors.length) throw new Error(l.errors.join('; '))
  return l.config
}
