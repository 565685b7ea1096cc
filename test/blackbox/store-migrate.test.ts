// store migrate --from sqlite --to redis through the built binary: spawned
// processes greylist on SQLite, the command copies their state to a private
// redis-server, and processes on store = redis go on from there (a retry
// passes, a whitelisted sender passes) instead of greylisting afresh.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { BIN, isolatedArgs, rcptRequest, serveRequests } from '../helpers/policy-process'
import { startRedisServer } from '../helpers/redis-server'

/** The command's own short run: bounded by spawnSync's timeout. */
function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { PATH: process.env.PATH }, timeout: 30000 })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

const GREYLISTED = /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted/

t.test('greylisting goes on on Redis where SQLite left it', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const dir = t.testdir()
  // The shortest delay the configuration takes, so that the retry below may pass after one second.
  const sqliteArgs = isolatedArgs(dir, ['--greylist_delay', '1s'])
  const redisKeys = ['--redis_url', server.url, '--redis_prefix', 'mx:']
  const redisArgs = [...sqliteArgs, '--store', 'redis', ...redisKeys]
  const retry = (instance: string) => rcptRequest({ client_address: '192.0.2.10', sender: 'alice@example.net', recipient: 'bob@example.org', instance })

  const started = Date.now()
  t.match((await serveRequests(sqliteArgs, [retry('m1')]))[0], GREYLISTED)
  t.equal(run(['greylist', 'whitelist', 'sender', 'news@partner.example', ...sqliteArgs]).status, 0)

  const dry = run(['store', 'migrate', '--from', 'sqlite', '--to', 'redis', '--dry-run', '--json', ...sqliteArgs, ...redisKeys])
  t.equal(dry.status, 0, dry.stderr)
  t.match(JSON.parse(dry.stdout), { dryRun: true, triplets: { written: 1, kept: 0 }, whitelist: { written: 1 } })
  t.equal(await server.command('DBSIZE'), '0', 'a dry run writes nothing')

  const copy = run(['store', 'migrate', '--from', 'sqlite', '--to', 'redis', ...sqliteArgs, ...redisKeys])
  t.equal(copy.status, 0, copy.stderr)
  t.match(copy.stdout, /^sqlite -> redis\ntriplets: 1 copied, 0 kept[^\n]*\nclient networks: 0 copied[^\n]*\nwhitelist entries: 1 copied[^\n]*\nrate-limit overrides: [^\n]*\nnot copied: rate-limit usage, holds and hits[^\n]*\nnot copied: stats counters[^\n]*\n$/)
  t.equal(copy.stderr, '', 'no progress line for one row')
  const listed = (args: string[]) => JSON.parse(run(['greylist', 'list', '--json', ...args]).stdout) as Array<Record<string, unknown>>
  t.same(listed(redisArgs), listed(sqliteArgs), 'greylist list shows the same triplet on both stores')

  const again = run(['store', 'migrate', '--from', 'sqlite', '--to', 'redis', '--json', ...sqliteArgs, ...redisKeys])
  t.match(JSON.parse(again.stdout), { triplets: { written: 0, kept: 1 }, whitelist: { written: 0, kept: 1 } }, 'a second run copies nothing')

  // The one wait of this test: greylist_delay (1 s) since the first attempt.
  const wait = started + 1100 - Date.now()
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
  const replies = await serveRequests(redisArgs, [
    retry('m2'),
    rcptRequest({ client_address: '198.51.100.7', sender: 'carol@example.com', recipient: 'bob@example.org', instance: 'm3' }),
    rcptRequest({ client_address: '203.0.113.5', sender: 'news@partner.example', recipient: 'bob@example.org', instance: 'm4' }),
  ])
  t.notMatch(replies[0], /DEFER/, 'the retry of the triplet first seen on SQLite passes on Redis')
  t.match(replies[1], GREYLISTED, 'a triplet never seen is greylisted')
  t.equal(replies[2], 'action=DUNNO', 'the whitelist entry came along')
})

t.test('store migrate: exit codes of refusal and usage', async (t) => {
  const server = await startRedisServer(t)
  if (!server) return
  const dir = t.testdir()
  const args = isolatedArgs(dir)
  const redisKeys = ['--redis_url', server.url]
  await serveRequests(args, [rcptRequest({ instance: 'x' })])
  await server.command('HSET', 'pts:{g}:meta', 'format', '1', 'privacy', 'yes')
  const refused = run(['store', 'migrate', '--from', 'sqlite', '--to', 'redis', ...args, ...redisKeys])
  t.equal(refused.status, 78, 'the target is keyed with greylist_privacy yes, this configuration no')
  t.match(refused.stderr, /^policyd-ts store migrate: refusing redis as the target: .*greylist_privacy yes, this configuration format 1 and greylist_privacy no/)
  t.equal(refused.stdout, '')
  t.equal(await server.command('EXISTS', 'pts:{g}:n'), '0', 'nothing written')

  const back = run(['store', 'migrate', '--from', 'redis', '--to', 'sqlite', ...args, ...redisKeys])
  t.equal(back.status, 64)
  t.match(back.stderr, /--from redis --to sqlite is not supported/)
  const bad = run(['store', 'migrate', '--from', 'mysql', '--to', 'redis', ...args])
  t.equal(bad.status, 64)
  t.match(bad.stderr, /Invalid values:[\s\S]*from/)
  const broken = run(['store', 'migrate', '--from', 'sqlite', '--to', 'redis', ...args, '--greylist_delay', 'soon'])
  t.equal(broken.status, 78, 'a configuration error: the command acts on nothing')
})
