// Exempt recipients (ratelimit_exempt_recipients: postmaster@, abuse@) are
// never held nor counted, at DATA and END-OF-MESSAGE too, where Postfix's
// recipient_count includes them. Found by test/e2e/ratelimit.e2e.ts: a
// message to postmaster@ alone from a client over its limit was refused at
// DATA.
import t from 'tap'
import path from 'node:path'
import { assertWellFormed, isolatedArgs, rcptRequest, startPolicy, type PolicyProcess } from '../helpers/policy-process'
import { SqliteStore } from '../../lib/store/sqlite'

const SASL = { sasl_method: 'PLAIN', sasl_username: 'alice@example.org' }
const KEY = 'sasl:alice@example.org'

function request(state: 'RCPT' | 'DATA' | 'END-OF-MESSAGE', instance: string, recipient: string, recipients: number): string {
  return rcptRequest({ ...SASL, protocol_state: state, instance, recipient: state === 'RCPT' ? recipient : '', recipient_count: String(recipients), size: '1000' })
}

/** The RCPTs of a message, then its DATA and END-OF-MESSAGE with recipient_count = every recipient; the replies. */
async function message(p: PolicyProcess, sent: { n: number }, instance: string, rcpts: string[]): Promise<string[]> {
  const requests = [
    ...rcpts.map((r, i) => request('RCPT', instance, r, i)),
    request('DATA', instance, '', rcpts.length),
    request('END-OF-MESSAGE', instance, '', rcpts.length),
  ]
  p.send(requests.join(''))
  sent.n += requests.length
  return (await p.replies(sent.n)).slice(sent.n - requests.length)
}

async function used(dir: string): Promise<number | undefined> {
  const store = new SqliteStore({ path: path.join(dir, 'db', 'policyd-ts.sqlite'), busyTimeoutMs: 2000, renameCorrupt: false, log: () => undefined })
  try {
    return (await store.listUsage((id) => id === KEY, Date.now() / 1000, 60)).find((u) => u.unit === 'rcpt')?.used
  } finally {
    store.close()
  }
}

t.test('a message to exempt recipients only passes at DATA and END-OF-MESSAGE when the user is over its limit, and is not counted', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir, ['--ratelimit_enabled', 'yes', '--greylist_enabled', 'no', '--ratelimit_sasl_limits', '2rcpt/1h']))
  const sent = { n: 0 }
  t.same(await message(p, sent, 'm1', ['bob@example.net', 'carol@example.net']), ['action=DUNNO', 'action=DUNNO', 'action=DUNNO', 'action=DUNNO'], 'two recipients: the limit used up')
  t.same(await message(p, sent, 'm2', ['postmaster@example.net', 'abuse@example.net']), ['action=DUNNO', 'action=DUNNO', 'action=DUNNO', 'action=DUNNO'], 'to postmaster@ and abuse@: passes everywhere')
  t.match((await message(p, sent, 'm3', ['dave@example.net']))[0], /^action=DEFER_IF_PERMIT 4\.7\.1 Rate limit 2rcpt\/1h exceeded/, 'control: another recipient is refused')
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  assertWellFormed(p.stdout())
  t.equal(await used(dir), 2, 'only the two recipients of the first message counted')
})

t.test('a message to a limited and an exempt recipient counts one recipient', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir, ['--ratelimit_enabled', 'yes', '--greylist_enabled', 'no', '--ratelimit_sasl_limits', '10rcpt/1h']))
  const sent = { n: 0 }
  t.same(await message(p, sent, 'm1', ['bob@example.net', 'postmaster@example.net']), ['action=DUNNO', 'action=DUNNO', 'action=DUNNO', 'action=DUNNO'])
  // The exempt count is per message: the next one's recipient_count is its own.
  t.same(await message(p, sent, 'm2', ['carol@example.net']), ['action=DUNNO', 'action=DUNNO', 'action=DUNNO'])
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  t.equal(await used(dir), 2, 'bob and carol counted, postmaster not')
})
