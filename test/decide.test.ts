// Whole greylisting lives through decide(), with an injected clock: no sleeping.
import t from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { loadConfig, type Config } from '../lib/config'
import { decide, type DecideContext } from '../lib/decide'
import { BoundedMap } from '../lib/bounded-map'
import { HeaderQueue } from '../lib/header-queue'
import { toPolicyRequest } from '../lib/request'
import { SqliteStore } from '../lib/store/sqlite'
import { StoreError, type GreylistStore } from '../lib/store/types'
import { createGreylistWhitelists } from '../lib/greylist/lists'
import { greylistKeys, rfc5322Date } from '../lib/greylist/check'
import { parseIp } from '../lib/normalize'

function config(over: Record<string, string> = {}): Config {
  const l = loadConfig({ cli: { greylist_whitelist_clients: '', greylist_whitelist_recipients: '', ...over }, configPath: '/dev/null', env: {}, readFile: () => '', parseDotenv: () => () => ({}) })
  if (l.errors.length) throw new Error(l.errors.join('; '))
  return l.config
}

function context(t: Tap.Test, cfg: Config, store?: GreylistStore) {
  const logs: string[] = []
  const s = store ?? new SqliteStore({ path: path.join(t.testdir(), 'db', 'g.sqlite'), busyTimeoutMs: 100, renameCorrupt: true, log: () => undefined })
  t.teardown(() => s.close())
  const states = new Map<string, string>()
  // As the logger does it: a change of state is logged, except a healthy start.
  const logStateChange = (topic: string, state: string, _l: number, msg: string): void => {
    const previous = states.get(topic)
    states.set(topic, state)
    if (previous !== state && !(previous === undefined && state === 'ok')) logs.push(msg)
  }
  const ctx: DecideContext = {
    config: cfg,
    logStateChange,
    log: (_l, m) => logs.push(m),
    headers: new HeaderQueue(16, (_l, m) => logs.push(m)),
    greylist: {
      config: cfg,
      store: s,
      whitelists: createGreylistWhitelists(cfg, () => undefined, () => 0),
      headerSent: new BoundedMap(16),
      version: () => '9.9.9',
      hostname: 'mx.example.org',
      log: (_l, m) => logs.push(m),
      logStateChange,
    },
  }
  return { ctx, logs }
}

function req(over: Record<string, string> = {}) {
  return toPolicyRequest(
    new Map(Object.entries({
      request: 'smtpd_access_policy', protocol_state: 'RCPT', client_address: '192.0.2.10', client_name: 'mail.example.net',
      helo_name: 'mail.example.net', sender: 'alice@example.net', recipient: 'bob@example.org', instance: 'm1', ...over,
    })),
  )
}

const T0 = 1_800_000_000

t.test('a greylisting life: new, too early, retry from the same /24 after the delay, known', async (t) => {
  const { ctx } = context(t, config())
  t.equal((await decide(req(), ctx, T0)).action, 'DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 300 seconds')
  t.equal((await decide(req({ instance: 'm2' }), ctx, T0 + 120)).action, 'DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 180 seconds')
  const pass = await decide(req({ instance: 'm3', client_address: '192.0.2.99' }), ctx, T0 + 301)
  t.equal(pass.action, `PREPEND X-Greylist: delayed 301 seconds by policyd-ts-9.9.9 at mx.example.org; Fri, 15 Jan 2027 08:05:01 +0000`)
  t.equal(pass.winner?.reason, 'first-pass')
  const known = await decide(req({ instance: 'm4' }), ctx, T0 + 400)
  t.equal(known.action, 'DUNNO')
  t.equal(known.winner?.reason, 'triplet-known')
  t.equal((await decide(req({ instance: 'm5', client_address: '192.0.3.10' }), ctx, T0 + 500)).action.split(' ')[0], 'DEFER_IF_PERMIT', 'another /24 is another triplet')
})

t.test('the header goes once per message (instance), even for several recipients', async (t) => {
  const { ctx } = context(t, config())
  await decide(req({ recipient: 'a@example.org' }), ctx, T0)
  await decide(req({ recipient: 'b@example.org' }), ctx, T0)
  const a = await decide(req({ recipient: 'a@example.org', instance: 'x' }), ctx, T0 + 300)
  const b = await decide(req({ recipient: 'b@example.org', instance: 'x' }), ctx, T0 + 300)
  t.match(a.action, /^PREPEND X-Greylist: delayed 300 seconds/)
  t.equal(b.action, 'DUNNO')
  t.equal(b.winner?.reason, 'first-pass')
})

t.test('null sender, sender normalisation and IPv6 /64 keys', async (t) => {
  const { ctx } = context(t, config())
  await decide(req({ sender: '', client_address: '2001:db8:1:2::10' }), ctx, T0)
  t.match((await decide(req({ sender: '<>', client_address: '2001:db8:1:2:ffff::1', instance: 'n' }), ctx, T0 + 300)).action, /^PREPEND/, 'same /64, null sender')
  await decide(req({ sender: 'bounce-1234@lists.example' }), ctx, T0)
  t.match((await decide(req({ sender: 'bounce-5678@lists.example', instance: 'v' }), ctx, T0 + 300)).action, /^PREPEND/, 'VERP numbers folded')
})

t.test('DATA and other stages are not greylisted; missing attributes pass', async (t) => {
  const { ctx } = context(t, config())
  t.equal((await decide(req({ protocol_state: 'DATA' }), ctx, T0)).winner?.reason, 'not-rcpt-stage')
  t.equal((await decide(req({ client_address: '' }), ctx, T0)).winner?.reason, 'no-client-address')
  t.equal((await decide(req({ recipient: '' }), ctx, T0)).winner?.reason, 'no-recipient')
})

t.test('learn-only records and logs but never defers', async (t) => {
  const { ctx } = context(t, config({ greylist_learn_only: 'yes' }))
  const first = await decide(req(), ctx, T0)
  t.equal(first.action, 'DUNNO')
  t.equal(first.winner?.reason, 'new-learn-only')
  t.equal((await decide(req(), ctx, T0 + 10)).winner?.reason, 'early-learn-only')
  const pass = await decide(req({ instance: 'z' }), ctx, T0 + 300)
  t.equal(pass.action, 'DUNNO', 'nothing was delayed, so no X-Greylist header claims it')
  t.equal(pass.winner?.reason, 'first-pass-learn-only')
})

t.test('greylist text and header are templates; an empty header turns it off', async (t) => {
  const { ctx } = context(t, config({ greylist_text: 'Try later (%s s) for %r', greylist_action: '451', greylist_header: '' }))
  t.equal((await decide(req({ recipient: 'bob@Sub.Example.ORG' }), ctx, T0)).action, '451 Try later (300 s) for sub.example.org')
  t.equal((await decide(req({ recipient: 'bob@Sub.Example.ORG', instance: 'q' }), ctx, T0 + 300)).action, 'DUNNO')
})

t.test('auto-whitelisted client network after 5 passes skips greylisting', async (t) => {
  const { ctx, logs } = context(t, config())
  let now = T0
  for (let i = 0; i < 5; i++) {
    await decide(req({ sender: `s${i}@x.example`, instance: `a${i}` }), ctx, now)
    await decide(req({ sender: `s${i}@x.example`, instance: `b${i}` }), ctx, now + 300)
    now += 3600
  }
  t.match(logs.join('\n'), /client 192.0.2.0\/24 auto-whitelisted after 5 greylisting passes/)
  const d = await decide(req({ sender: 'new@y.example', client_address: '192.0.2.200' }), ctx, now)
  t.equal(d.action, 'DUNNO')
  t.equal(d.winner?.reason, 'client-awl')
})

t.test('privacy mode stores hashes only', async (t) => {
  const dir = t.testdir()
  const store = new SqliteStore({ path: path.join(dir, 'db', 'g.sqlite'), busyTimeoutMs: 100, renameCorrupt: true, log: () => undefined })
  const { ctx } = context(t, config({ greylist_privacy: 'yes' }), store)
  await decide(req(), ctx, T0)
  store.close()
  const Database = (await import('better-sqlite3')).default
  const db = new Database(path.join(dir, 'db', 'g.sqlite'), { readonly: true })
  const keys = (db.prepare('SELECT key FROM triplet UNION ALL SELECT key FROM client').all() as Array<{ key: string }>).map((r) => r.key)
  db.close()
  t.ok(keys.length >= 1 && keys.every((k) => /^[0-9a-f]{64}$/.test(k)), keys.join(','))
})

t.test('a failing store answers fail_action, logged once per change of state', async (t) => {
  let failing: StoreError | null = new StoreError('busy', 'database locked')
  const real = new SqliteStore({ path: path.join(t.testdir(), 'db', 'g.sqlite'), busyTimeoutMs: 100, renameCorrupt: true, log: () => undefined })
  const flaky: GreylistStore = {
    updateGreylist: (a, b, f) => (failing ? Promise.reject(failing) : real.updateGreylist(a, b, f)),
    purgeExpired: (n, l) => real.purgeExpired(n, l),
    counts: () => real.counts(),
    close: () => real.close(),
  }
  const { ctx, logs } = context(t, config({ fail_action: 'DEFER_IF_PERMIT 4.3.0 try later' }), flaky)
  t.equal((await decide(req(), ctx, T0)).action, 'DEFER_IF_PERMIT 4.3.0 try later')
  t.equal((await decide(req(), ctx, T0)).winner?.reason, 'store-busy')
  t.equal((await decide(req({ protocol_state: 'DATA' }), ctx, T0)).action, 'DUNNO', 'DATA does not use the store...')
  t.equal((await decide(req({ client_address: '' }), ctx, T0)).action, 'DUNNO', '...nor a request without a client address')
  failing = null
  t.equal((await decide(req(), ctx, T0)).action.split(' ')[0], 'DEFER_IF_PERMIT')
  t.same(logs, ['database busy, answering fail_action DEFER_IF_PERMIT 4.3.0 try later: database locked', 'database available again'], 'so only a real store round trip says the database works again')
})

t.test('a triplet this process saw pass is answered from memory for TOUCH_INTERVAL, then from the store', async (t) => {
  const real = new SqliteStore({ path: path.join(t.testdir(), 'db', 'g.sqlite'), busyTimeoutMs: 100, renameCorrupt: true, log: () => undefined })
  let calls = 0
  const counting: GreylistStore = {
    updateGreylist: (a, b, f) => (calls++, real.updateGreylist(a, b, f)),
    purgeExpired: (n, l) => real.purgeExpired(n, l),
    counts: () => real.counts(),
    close: () => real.close(),
  }
  const { ctx } = context(t, config(), counting)
  ctx.greylist!.recentPasses = new BoundedMap(16)
  await decide(req({ instance: 'r1' }), ctx, T0)
  t.match((await decide(req({ instance: 'r2' }), ctx, T0 + 300)).action, /^PREPEND X-Greylist/)
  t.equal(calls, 2)
  const again = await decide(req({ instance: 'r3' }), ctx, T0 + 400)
  t.equal(again.winner?.reason, 'triplet-known')
  t.equal(calls, 2, 'answered from memory')
  t.equal((await decide(req({ instance: 'r3b' }), ctx, T0 + 300)).winner?.reason, 'triplet-known')
  t.equal(calls, 2, 'in the very second it passed, too')
  t.equal((await decide(req({ instance: 'r4' }), ctx, T0 + 300 + 600)).winner?.reason, 'triplet-known')
  t.equal(calls, 3, 'after TOUCH_INTERVAL the store is asked (and writes the sighting back)')
  await decide(req({ instance: 'r5' }), ctx, T0 - 10)
  t.equal(calls, 4, 'a clock that went back does not trust the memory: the store is asked')
})

t.test('a check that cannot run leaves a field saying it was skipped, for the decision line', async (t) => {
  const { ctx, logs } = context(t, config({ spf_enabled: 'yes' }))
  ctx.spf = () => {
    throw new Error('no resolver')
  }
  const d = await decide(req(), ctx, T0)
  t.equal(d.winner?.check, 'greylist', 'greylisting still ran')
  t.same(d.verdicts.find((v) => v.check === 'spf')?.fields, { spf: 'skipped-internal-error' })
  t.match(logs.join('\n'), /SPF check failed, answering fail_action DUNNO for it: Error: no resolver/)
})

t.test('the X-Greylist date: RFC 5322, UTC, every day and month name', async (t) => {
  const days = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat']
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec']
  // 2023-01-01 was a Sunday.
  const jan1 = Date.UTC(2023, 0, 1) / 1000
  for (let i = 0; i < 7; i++) t.equal(rfc5322Date(jan1 + i * 86400 + 3723), `${days[i]}, 0${i + 1} Jan 2023 01:02:03 +0000`)
  for (let m = 0; m < 12; m++) t.match(rfc5322Date(Date.UTC(2023, m, 15, 23, 59, 9) / 1000), new RegExp(`^\\w{3}, 15 ${months[m]} 2023 23:59:09 \\+0000$`))
})

t.test('the stored keys keep their format (a database written by an earlier version stays valid)', async (t) => {
  const plain = config()
  const ip = parseIp('192.0.2.10')!
  t.same(greylistKeys(req({ sender: '' }), ip, plain), { triplet: '192.0.2.0/24/<>/bob@example.org', client: '192.0.2.0/24', subject: '192.0.2.0/24' })
  t.same(greylistKeys(req({ sender: 'Bounce-42@Lists.Example' }), ip, plain, 'lists.example'), {
    triplet: 'spf:lists.example/bounce-#@lists.example/bob@example.org', client: 'spf:lists.example', subject: 'spf:lists.example',
  })
  const hashed = greylistKeys(req({ sender: '' }), ip, config({ greylist_privacy: 'yes' }))
  const { createHash } = await import('node:crypto')
  t.equal(hashed.triplet, createHash('sha256').update('192.0.2.0/24/<>/bob@example.org').digest('hex'))
  t.equal(hashed.client, createHash('sha256').update('192.0.2.0/24').digest('hex'))
})

t.test('greylist_text: %% is a percent sign, an unknown %x stays as written', async (t) => {
  const { ctx } = context(t, config({ greylist_text: 'wait %s s (100%%, %x, %%s)' }))
  t.equal((await decide(req(), ctx, T0)).action, 'DEFER_IF_PERMIT wait 300 s (100%, %x, %s)')
})

t.test('whitelisted clients and recipients pass, and the decision names the entry and the key', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'policyd-ts-wl-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.writeFileSync(path.join(dir, 'clients'), 'mail.example.net\n')
  fs.writeFileSync(path.join(dir, 'recipients'), 'vip@example.org\n')
  const { ctx } = context(t, config({ greylist_whitelist_clients: path.join(dir, 'clients'), greylist_whitelist_recipients: path.join(dir, 'recipients') }))
  const byClient = await decide(req(), ctx, T0)
  t.equal(byClient.action, 'DUNNO')
  t.same(byClient.winner && { check: byClient.winner.check, reason: byClient.winner.reason, severity: byClient.winner.severity, fields: byClient.winner.fields },
    { check: 'greylist', reason: 'client-whitelist', severity: 'dunno', fields: { whitelist: `${path.join(dir, 'clients')}:1 mail.example.net` } })
  const byRecipient = await decide(req({ client_name: 'unknown', recipient: 'VIP@example.org' }), ctx, T0)
  t.same(byRecipient.winner?.fields, { whitelist: `${path.join(dir, 'recipients')}:1 vip@example.org` })
  t.equal(byRecipient.winner?.reason, 'recipient-whitelist')
  const greylisted = await decide(req({ client_name: 'unknown' }), ctx, T0)
  t.same(greylisted.winner?.fields, { key: '192.0.2.0/24', left: 300 })
})

t.test('entries of policyd-ts greylist whitelist: each key kind passes, and the decision names the entry', async (t) => {
  const store = new SqliteStore({ path: path.join(t.testdir(), 'db', 'g.sqlite'), busyTimeoutMs: 100, renameCorrupt: true, log: () => undefined })
  const { ctx } = context(t, config(), store)
  const cases: Array<[string, Record<string, string>, string]> = [
    ['client\t192.0.2.10', { client_address: '192.0.2.10' }, 'client:192.0.2.10'],
    ['client\t198.51.100.0/24', { client_address: '198.51.100.7' }, 'client:198.51.100.0/24'],
    ['sender\tcarol@example.net', { sender: 'Carol@Example.NET' }, 'sender:carol@example.net'],
    ['sender\t<>', { sender: '' }, 'sender:<>'],
    ['recipient\tvip@example.org', { recipient: 'VIP@example.org' }, 'recipient:vip@example.org'],
  ]
  let n = 0
  for (const [key, over, shown] of cases) {
    await store.setWhitelist({ key, expires: Infinity, note: '', setAt: T0 })
    // A request that matches no other entry: unknown client, other sender and recipient, unless the case sets them.
    const d = await decide(req({ client_address: '203.0.113.5', sender: 'x@elsewhere.example', recipient: 'y@example.org', instance: `w${n++}`, ...over }), ctx, T0)
    t.equal(d.action, 'DUNNO', `${shown}: passes`)
    t.same(d.winner && { reason: d.winner.reason, fields: d.winner.fields }, { reason: 'store-whitelist', fields: { whitelist: shown } }, `${shown}: named in the decision`)
    t.ok(await store.deleteWhitelist(key))
  }
  const none = await decide(req({ client_address: '203.0.113.5', sender: '', instance: 'w-none' }), ctx, T0)
  t.match(none.action, /^DEFER_IF_PERMIT /, 'with the entries gone, the null sender is greylisted again')
})

t.test('auto-whitelisting: logged once, when the client gets there; its passes in the decision; answered from memory after', async (t) => {
  const real = new SqliteStore({ path: path.join(t.testdir(), 'db', 'g.sqlite'), busyTimeoutMs: 100, renameCorrupt: true, log: () => undefined })
  let calls = 0
  const counting: GreylistStore = {
    updateGreylist: (a, b, f) => (calls++, real.updateGreylist(a, b, f)),
    purgeExpired: (n, l) => real.purgeExpired(n, l),
    counts: () => real.counts(),
    close: () => real.close(),
  }
  const { ctx, logs } = context(t, config({ greylist_auto_whitelist: '2' }), counting)
  ctx.greylist!.recentPasses = new BoundedMap(16)
  let now = T0
  for (let i = 0; i < 2; i++) {
    await decide(req({ sender: `s${i}@x.example`, instance: `a${i}` }), ctx, now)
    await decide(req({ sender: `s${i}@x.example`, instance: `b${i}` }), ctx, now + 300)
    now += 3600
  }
  t.same(logs.filter((l) => /auto-whitelisted/.test(l)), ['client 192.0.2.0/24 auto-whitelisted after 2 greylisting passes'])
  const d = await decide(req({ sender: 'new@y.example', instance: 'c' }), ctx, now)
  t.same(d.winner && [d.winner.reason, d.winner.fields], ['client-awl', { key: '192.0.2.0/24', passes: 2 }])
  const before = calls
  const again = await decide(req({ sender: 'other@z.example', instance: 'd' }), ctx, now + 10)
  t.equal(again.winner?.reason, 'client-awl')
  t.equal(calls, before, 'the whitelisted client is answered from memory')
})

t.test('a full triplet table lets new triplets pass unrecorded, logged once', async (t) => {
  const { ctx, logs } = context(t, config({ greylist_max_entries: '100' }))
  for (let i = 0; i < 100; i++) await decide(req({ sender: `s${i}@x.example` }), ctx, T0)
  const full = await decide(req({ sender: 'one-more@x.example' }), ctx, T0)
  t.equal(full.action, 'DUNNO')
  t.same(full.winner && [full.winner.reason, full.winner.fields], ['table-full', { key: '192.0.2.0/24' }])
  await decide(req({ sender: 'and-another@x.example' }), ctx, T0)
  t.same(logs, ['greylist table full (100 triplets, greylist_max_entries 100): new triplets pass unrecorded until old ones expire'], 'and a store that works from the start is not news')
})

t.test('the header memory holds messages only: a request without an instance takes no place in it', async (t) => {
  const { ctx } = context(t, config())
  ctx.greylist!.headerSent = new BoundedMap(2)
  for (const rcpt of ['a', 'b', 'c', 'd']) await decide(req({ recipient: `${rcpt}@example.org` }), ctx, T0)
  t.match((await decide(req({ recipient: 'a@example.org', instance: 'x' }), ctx, T0 + 300)).action, /^PREPEND/)
  t.match((await decide(req({ recipient: 'b@example.org', instance: '' }), ctx, T0 + 300)).action, /^PREPEND/, 'no instance: a header')
  t.match((await decide(req({ recipient: 'c@example.org', instance: 'y' }), ctx, T0 + 300)).action, /^PREPEND/)
  const d = await decide(req({ recipient: 'd@example.org', instance: 'x' }), ctx, T0 + 300)
  t.same([d.action, d.winner?.reason], ['DUNNO', 'first-pass'], 'message x is still remembered: no second header')
})
