// The ops commands through the built binary, on the database spawned
// processes wrote: greylist list/delete/whitelist/unwhitelist, stats,
// store check/purge, with --json and the exit codes.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { BIN, isolatedArgs, rcptRequest, serveRequests } from '../helpers/policy-process'

function ops(dir: string, args: string[], after: string[] = []): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args, ...isolatedArgs(dir), ...after], { encoding: 'utf8', env: { PATH: process.env.PATH }, timeout: 30000 })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

const serve = (dir: string, requests: string[]): Promise<string[]> => serveRequests(isolatedArgs(dir), requests)

const GREYLISTED = /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted/

t.test('greylist list shows what spawned processes recorded; delete removes it', async (t) => {
  const dir = t.testdir()
  await serve(dir, [
    rcptRequest({ client_address: '192.0.2.10', sender: 'alice@example.net', recipient: 'bob@example.org', instance: 'a' }),
    rcptRequest({ client_address: '198.51.100.7', sender: 'carol@example.com', recipient: 'bob@example.org', instance: 'b' }),
  ])
  const table = ops(dir, ['greylist', 'list'])
  t.equal(table.status, 0, table.stderr)
  t.match(table.stdout, /^CLIENT +SENDER +RECIPIENT +STATE/)
  t.match(table.stdout, /^192\.0\.2\.0\/24 +alice@example\.net +bob@example\.org +waiting /m)
  const json = JSON.parse(ops(dir, ['greylist', 'list', '--sender', '*@example.com', '--json']).stdout) as Array<Record<string, unknown>>
  t.same(json.map((r) => [r.subject, r.sender, r.recipient, r.state, r.count]), [['198.51.100.0/24', 'carol@example.com', 'bob@example.org', 'waiting', 1]])
  t.equal(ops(dir, ['greylist', 'delete']).status, 64, 'delete without a filter or --all is refused')
  const del = ops(dir, ['greylist', 'delete', '--client', '198.51.100.*'])
  t.equal(del.stdout, '1 triplets deleted\n')
  t.same(JSON.parse(ops(dir, ['greylist', 'list', '--json']).stdout).map((r: { sender: string }) => r.sender), ['alice@example.net'])
})

t.test('greylist whitelist: the next request of that sender, client network or recipient passes; unwhitelist ends it', async (t) => {
  const dir = t.testdir()
  const req = (over: Record<string, string>) => rcptRequest({ client_address: '203.0.113.5', sender: 'news@partner.example', recipient: 'bob@example.org', ...over })
  t.match((await serve(dir, [req({ instance: 'm1' })]))[0], GREYLISTED)
  const set = ops(dir, ['greylist', 'whitelist', 'sender', 'News+list@Partner.Example', '--note', 'newsletter', '--ttl', '30d'])
  t.equal(set.status, 0, set.stderr)
  t.match(set.stdout, /^sender news@partner\.example whitelisted until \d{4}-/, 'stored as the greylist check normalises senders')
  t.same(await serve(dir, [req({ instance: 'm2', recipient: 'new@example.org' })]), ['action=DUNNO'], 'a new triplet of that sender passes at once')
  t.equal(ops(dir, ['greylist', 'whitelist', 'client', '203.0.113.99/24']).status, 0)
  t.same(await serve(dir, [req({ instance: 'm3', sender: 'other@else.example' })]), ['action=DUNNO'], 'the client network entry')
  const listed = JSON.parse(ops(dir, ['greylist', 'whitelist', '--json']).stdout) as Array<{ kind: string; value: string; note: string }>
  t.same(listed.map((e) => [e.kind, e.value, e.note]), [['client', '203.0.113.0/24', ''], ['sender', 'news@partner.example', 'newsletter']])
  t.equal(ops(dir, ['greylist', 'unwhitelist', 'client', '203.0.113.0/24']).status, 0)
  t.equal(ops(dir, ['greylist', 'unwhitelist', 'client', '203.0.113.0/24']).status, 65, 'nothing left to remove')
  t.match((await serve(dir, [req({ instance: 'm4', sender: 'third@else.example' })]))[0], GREYLISTED, 'greylisted again without the entry')
  const bad = ops(dir, ['greylist', 'whitelist', 'client', 'not-an-address'])
  t.equal(bad.status, 64)
  t.match(bad.stderr, /is not an IP address or network/)
})

t.test('stats: the counters of exited processes, summed; --prometheus for the textfile collector', async (t) => {
  const dir = t.testdir()
  await serve(dir, [rcptRequest({ instance: 's1' }), rcptRequest({ instance: 's2', recipient: 'x@example.org' })])
  await serve(dir, [rcptRequest({ instance: 's3', recipient: 'y@example.org' })])
  const json = JSON.parse(ops(dir, ['stats', '--json']).stdout) as { totals: Record<string, number> }
  t.equal(json.totals['policyd_requests_total{state="RCPT",action="DEFER_IF_PERMIT"}'], 3, 'three requests from two processes')
  t.equal(json.totals['policyd_decisions_total{check="greylist",result="new"}'], 3)
  const prom = ops(dir, ['stats', '--prometheus']).stdout
  t.match(prom, /^# TYPE policyd_requests_total counter\npolicyd_requests_total\{state="RCPT",action="DEFER_IF_PERMIT"\} 3$/m)
})

t.test('store check and purge', async (t) => {
  const dir = t.testdir()
  await serve(dir, [rcptRequest({ instance: 'p1' })])
  const check = ops(dir, ['store', 'check'])
  t.equal(check.status, 0, check.stderr)
  t.match(check.stdout, /integrity ok/)
  t.match(check.stdout, /triplets: 1 /)
  t.equal(ops(dir, ['store', 'purge']).stdout, '0 expired rows purged\n', 'nothing has expired')
  const missing = ops(dir, ['store', 'check'], ['--db_path', '/proc/none/x.sqlite'])
  t.equal(missing.status, 69, 'an unusable database: EX_UNAVAILABLE')
  t.match(missing.stdout, /^database \/proc\/none\/x\.sqlite: .*\nPROBLEM\n$/)
})

t.test('the ops commands never create the database (run as root it would be root\'s), refuse a bad configuration and entries that could never match', async (t) => {
  const fs = await import('node:fs')
  const path = await import('node:path')
  const dir = t.testdir()
  const db = path.join(dir, 'db', 'policyd-ts.sqlite')
  for (const cmd of [['stats'], ['store', 'check'], ['greylist', 'list'], ['greylist', 'whitelist', 'sender', 'a@b.example']]) {
    const r = ops(dir, cmd)
    t.equal(r.status, 69, `${cmd.join(' ')}: unavailable`)
    t.match(r.stderr + r.stdout, /does not exist: no policyd-ts process has written it yet/)
  }
  t.notOk(fs.existsSync(db), 'no database file made')
  t.notOk(fs.existsSync(path.dirname(db)), 'no directory made')
  await serve(dir, [rcptRequest({ instance: 'n1' })])
  const wide = ops(dir, ['greylist', 'whitelist', 'client', '10.0.0.0/8'])
  t.equal(wide.status, 64)
  t.match(wide.stderr, /is a \/8 network, but greylisting keys IPv4 clients by \/24 \(greylist_ipv4_prefix\)/)
  t.equal(ops(dir, ['greylist', 'whitelist', 'client', '2001:db8::/64']).status, 0, 'an IPv6 /64, as greylisting keys them')
  t.equal(ops(dir, ['greylist', 'whitelist', 'sender', 'example.com']).status, 64, 'a domain is not an address')
  t.equal(ops(dir, ['greylist', 'whitelist', 'sender', '<>']).status, 0, 'the null sender')
  const badConfig = ops(dir, ['greylist', 'list'], ['--greylist_ipv4_prefix', '99'])
  t.equal(badConfig.status, 78, 'a configuration error: no command on a store that may not be the one meant')
})
