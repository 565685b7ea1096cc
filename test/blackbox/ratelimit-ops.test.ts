// The ratelimit commands through the built binary, on the SQLite file that
// spawned processes counted in: show, list, top, hits, set (and its effect
// on the next request), unset, reset, with --json and the exit codes.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { BIN, isolatedArgs, rcptRequest, startPolicy } from '../helpers/policy-process'

const LIMITS = ['--ratelimit_enabled', 'yes', '--greylist_enabled', 'no', '--ratelimit_sasl_limits', '2msg/1h, 100rcpt/1d']

function ops(dir: string, args: string[], extra: string[] = []): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, 'ratelimit', ...args, ...isolatedArgs(dir, [...LIMITS, ...extra])], { encoding: 'utf8', env: { PATH: process.env.PATH }, timeout: 30000 })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

function opsJson<T = any>(t: Tap.Test, dir: string, args: string[], extra: string[] = []): T {
  const r = ops(dir, [...args, '--json'], extra)
  t.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`)
  return JSON.parse(r.stdout) as T
}

/** One message of `user`: RCPT, then END-OF-MESSAGE when the RCPT passed; the RCPT's reply. */
function message(user: string, instance: string): string[] {
  const sasl = { sasl_method: 'PLAIN', sasl_username: user, instance }
  return [rcptRequest(sasl), rcptRequest({ ...sasl, protocol_state: 'END-OF-MESSAGE', recipient: '', recipient_count: '1', size: '1000', queue_id: 'Q1' })]
}

/** Requests through one spawned process, each answered before the next is sent; the replies. */
async function serve(dir: string, requests: string[], extra: string[] = []): Promise<string[]> {
  const p = startPolicy(isolatedArgs(dir, [...LIMITS, ...extra]))
  const replies: string[] = []
  for (const r of requests) {
    p.send(r)
    replies.push((await p.replies(replies.length + 1))[replies.length])
  }
  p.child.stdin.end()
  await p.exited()
  return replies
}

const REFUSED = /^action=DEFER_IF_PERMIT 4\.7\.1 Rate limit 2msg\/1h exceeded for sasl:alice@example\.org/

t.test('show, list, top and hits read what spawned processes counted', async (t) => {
  const dir = t.testdir()
  const replies = await serve(dir, [...message('Alice@Example.org', 'a1'), ...message('alice@example.org', 'a2'), rcptRequest({ sasl_method: 'PLAIN', sasl_username: 'alice@example.org', instance: 'a3' }), ...message('bob@example.org', 'b1')])
  t.match(replies[4], REFUSED, 'the third message of alice is refused')
  const alice = opsJson(t, dir, ['show', 'sasl:ALICE@example.org'])
  t.same(alice.identities.map((i: any) => [i.id, i.limits, i.source]), [['sasl:alice@example.org', ['2msg/1h', '100rcpt/1d'], 'ratelimit_sasl_limits']])
  t.same(alice.identities[0].usage.map((u: any) => [u.limit, u.used, u.held, u.full]), [['2msg/1h', 2, 0, 1], ['100rcpt/1d', 2, 0, 0.02]])
  t.same(alice.identities[0].hits.map((h: any) => [h.limit, h.count]), [['2msg/1h', 1]])
  const table = ops(dir, ['show', 'sasl:alice@example.org'])
  t.match(table.stdout, /^2msg\/1h +2 +0 +100%$/m)

  t.same(opsJson(t, dir, ['list']).map((v: any) => v.id), ['sasl:alice@example.org', 'sasl:bob@example.org'])
  t.same(opsJson(t, dir, ['list', '--over']).map((v: any) => v.id), ['sasl:alice@example.org'])
  t.same(opsJson(t, dir, ['top', '--limit', '1']).map((r: any) => [r.id, r.limit]), [['sasl:alice@example.org', '2msg/1h']])
  t.same(opsJson(t, dir, ['hits']).map((h: any) => [h.id, h.limit, h.count]), [['sasl:alice@example.org', '2msg/1h', 1]])
  t.match(ops(dir, ['hits']).stdout, /^ID +LIMIT +FIRST +LAST +REFUSED\nsasl:alice@example\.org +2msg\/1h +\S+ +\S+ +1\n$/)
  const future = ops(dir, ['hits', '--since', '2999-01-01T00:00:00Z'])
  t.same([future.status, future.stdout], [0, ''], 'no hit since then: nothing printed, for cron')
})

t.test('set raises a user\'s limit for the next request; unset takes it back; reset forgets the counts', async (t) => {
  const dir = t.testdir()
  await serve(dir, [...message('alice@example.org', 'a1'), ...message('alice@example.org', 'a2')])
  const set = ops(dir, ['set', 'sasl:Alice@example.org', '10msg/1h, 100rcpt/1d', '--note', 'campaign', '--ttl', '1d'])
  t.equal(set.status, 0, set.stderr)
  t.match(set.stdout, /^sasl:alice@example\.org: 10msg\/1h, 100rcpt\/1d until \d{4}-/)
  t.same(opsJson(t, dir, ['set']).map((e: any) => [e.key, e.limits, e.from, e.note]), [['sasl:alice@example.org', '10msg/1h, 100rcpt/1d', 'store', 'campaign']])
  const shown = opsJson(t, dir, ['show', 'sasl:alice@example.org'])
  t.same([shown.identities[0].limits, shown.identities[0].source], [['10msg/1h', '100rcpt/1d'], 'policyd-ts ratelimit set (sasl:alice@example.org)'])
  t.equal((await serve(dir, message('alice@example.org', 'a3')))[0], 'action=DUNNO', 'the third message passes under the raised limit')

  t.equal(ops(dir, ['unset', 'sasl:alice@example.org']).status, 0)
  const again = ops(dir, ['unset', 'sasl:alice@example.org'])
  t.same([again.status, again.stdout], [65, ''])
  t.match((await serve(dir, [rcptRequest({ sasl_method: 'PLAIN', sasl_username: 'alice@example.org', instance: 'a4' })]))[0], REFUSED, 'the class limit again')

  t.same(opsJson(t, dir, ['reset', 'sasl:alice@example.org']), { reset: 1 })
  const after = opsJson(t, dir, ['show', 'sasl:alice@example.org'])
  t.same(after.identities[0].usage.map((u: any) => u.used), [0, 0])
  t.same(after.identities[0].hits, [], 'its hits went too')
  t.equal((await serve(dir, message('alice@example.org', 'a5')))[0], 'action=DUNNO', 'counting starts again')
})

t.test('the override file shows as the source; usage errors are 64', async (t) => {
  const dir = t.testdir()
  await serve(dir, message('dave@example.org', 'd1'))
  const file = path.join(dir, 'overrides')
  fs.writeFileSync(file, 'sasl:@example.org 5msg/1h\n')
  const shown = opsJson(t, dir, ['show', 'sasl:carol@example.org'], ['--ratelimit_overrides', file])
  t.same([shown.identities[0].limits, shown.identities[0].source], [['5msg/1h'], `${file}:1 (sasl:@example.org)`])
  for (const args of [['reset'], ['show', 'carol'], ['set', 'sasl:carol@example.org', 'lots'], ['hits', '--since', 'soon'], ['list', 'sasl:x@example.org']]) {
    const r = ops(dir, args)
    t.equal(r.status, 64, args.join(' '))
    t.equal(r.stdout, '', args.join(' '))
  }
})
