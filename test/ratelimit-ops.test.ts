// The `policyd-ts ratelimit` commands against an in-memory store: which
// identities a KEY finds, which limits are in effect and from where, how
// full each is, and the exit codes of each mistake.
import t from 'tap'
import { loadConfig, type Config } from '../lib/config'
import { formatAmount, identityView, parseSince, rateOpsStoreOf, runRateLimit } from '../lib/ops/ratelimit'
import { identityId } from '../lib/ratelimit/identity'
import type { UsageListing } from '../lib/ratelimit/types'
import { usageListing } from '../lib/ratelimit/usage-listing'
import { add, formatCounter, slotIndex } from '../lib/ratelimit/window'
import { FakeRateLimitAdmin } from './helpers/ratelimit-admin-fake'

const NOW = 1_800_000_000
const OVERRIDES = '/etc/policyd-ts/ratelimit_overrides'

function config(over: Record<string, string> = {}): Config {
  const l = loadConfig({ cli: { ratelimit_enabled: 'yes', ratelimit_sasl_limits: '30msg/1m, 1000rcpt/1d', ...over }, configPath: '/dev/null', env: {}, readFile: () => '' })
  if (l.errors.length > 0) throw new Error(l.errors.join('; '))
  return l.config
}

interface Run {
  code: number
  out: string
  err: string
}

async function run(store: FakeRateLimitAdmin, cfg: Config, args: Record<string, unknown>, files: Record<string, string> = {}): Promise<Run> {
  const out: string[] = []
  const err: string[] = []
  const io = { out: (s: string) => void out.push(s), err: (s: string) => void err.push(s), now: () => NOW }
  const readFile = (path: string): string => {
    if (!(path in files)) throw new Error(`ENOENT: no such file or directory, open '${path}'`)
    return files[path]
  }
  const code = await runRateLimit(store, cfg, args, io, readFile)
  return { code, out: out.join(''), err: err.join('') }
}

async function json<T = any>(store: FakeRateLimitAdmin, cfg: Config, args: Record<string, unknown>, files: Record<string, string> = {}): Promise<T> {
  const r = await run(store, cfg, { ...args, json: true }, files)
  if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.err}`)
  return JSON.parse(r.out) as T
}

const use = (id: string, unit: UsageListing['unit'], window: number, used: number, held = 0): UsageListing => ({ id, unit, window, used, held })

t.test('show KEY: the limits in effect, how full each is, and the hits of that one identity', async (t) => {
  const store = new FakeRateLimitAdmin()
  store.usage = [
    use('sasl:alice@example.org', 'msg', 60, 12, 3),
    use('sasl:alice@example.org', 'rcpt', 86400, 400),
    use('sasl:alice@example.org', 'bytes', 3600, 2048),
    use('sasl:bob@example.org', 'msg', 60, 30),
  ]
  store.hits = [
    { id: 'sasl:alice@example.org', limit: '30msg/1m', first: NOW - 500, last: NOW - 100, count: 4 },
    { id: 'sasl:bob@example.org', limit: '30msg/1m', first: NOW - 50, last: NOW - 10, count: 1 },
  ]
  const cfg = config({ ratelimit_slots: '30' })
  const shown = await json(store, cfg, { action: 'show', key: 'SASL:Alice@Example.ORG' })
  t.same(store.usageAsked, [{ now: NOW, slots: 30 }], 'asked at the clock of the command, with ratelimit_slots')
  t.equal(shown.key, 'sasl:alice@example.org', 'the key as the check counts it: lower case')
  t.equal(shown.exact, true)
  t.equal(shown.identities.length, 1, 'bob is not shown')
  const alice = shown.identities[0]
  t.same(alice.limits, ['30msg/1m', '1000rcpt/1d'])
  t.equal(alice.source, 'ratelimit_sasl_limits')
  t.same(alice.usage, [
    { limit: '30msg/1m', unit: 'msg', window: 60, count: 30, used: 12, held: 3, full: 0.5 },
    { limit: '1000rcpt/1d', unit: 'rcpt', window: 86400, count: 1000, used: 400, held: 0, full: 0.4 },
    { limit: null, unit: 'bytes', window: 3600, count: null, used: 2048, held: 0, full: null },
  ], 'a row per limit, held counted as taken; a counter no limit has now is shown apart')
  t.same(alice.hits, [{ id: 'sasl:alice@example.org', limit: '30msg/1m', first: NOW - 500, last: NOW - 100, count: 4 }])

  const table = await run(store, cfg, { action: 'show', key: 'sasl:alice@example.org' })
  t.equal(table.code, 0)
  t.match(table.out, /^sasl:alice@example\.org\n/)
  t.match(table.out, /^limits: 30msg\/1m, 1000rcpt\/1d \(from ratelimit_sasl_limits\)$/m)
  t.match(table.out, /^LIMIT +USED +HELD +FULL$/m)
  t.match(table.out, /^30msg\/1m +12 +3 +50%$/m)
  t.match(table.out, /^1000rcpt\/1d +400 +0 +40%$/m)
  t.match(table.out, /^bytes\/1h \(no limit now\) +2KB +0B +-$/m)
  t.match(table.out, /^hits:\nLIMIT +FIRST +LAST +REFUSED\n30msg\/1m +\d{4}-\d\d-\d\dT[\d:]+Z +\d{4}-[\d-]+T[\d:]+Z +4$/m)
})

t.test('show KEY of an identity without usage: its limits, zero rows, no hits', async (t) => {
  const store = new FakeRateLimitAdmin()
  const shown = await json(store, config(), { action: 'show', key: 'sasl:new@example.org' })
  t.same(shown.identities.map((i: any) => [i.id, i.usage.map((u: any) => [u.limit, u.used, u.full]), i.hits]), [['sasl:new@example.org', [['30msg/1m', 0, 0], ['1000rcpt/1d', 0, 0]], []]])
  const table = await run(store, config(), { action: 'show', key: 'global' })
  t.match(table.out, /^global\nlimits: none \(from ratelimit_global_limits\)\nhits: none\n$/, 'global without limits: said so')
})

t.test('where limits come from: an entry set with the command over the file, a user over its domain, the file over the class', async (t) => {
  const store = new FakeRateLimitAdmin()
  const cfg = config({ ratelimit_overrides: OVERRIDES })
  const files = { [OVERRIDES]: '# per-key limits\nsasl:@example.org 100msg/1h\nsasl:alice@example.org 500msg/1h\n' }
  const limitsOf = async (key: string): Promise<[string[] | string, string]> => {
    const s = await json(store, cfg, { action: 'show', key }, files)
    return [s.identities[0].limits, s.identities[0].source]
  }
  t.same(await limitsOf('sasl:alice@example.org'), [['500msg/1h'], `${OVERRIDES}:3 (sasl:alice@example.org)`])
  t.same(await limitsOf('sasl:bob@example.org'), [['100msg/1h'], `${OVERRIDES}:2 (sasl:@example.org)`])
  t.same(await limitsOf('sasl:carol@example.net'), [['30msg/1m', '1000rcpt/1d'], 'ratelimit_sasl_limits'])
  t.equal((await run(store, cfg, { action: 'set', key: 'sasl:@example.org', limits: '10msg/1h', note: 'spam run' }, files)).code, 0)
  t.same(await limitsOf('sasl:alice@example.org'), [['10msg/1h'], 'policyd-ts ratelimit set (sasl:@example.org)'], 'the admin\'s latest word wins over the file')
  const group = await json(store, cfg, { action: 'show', key: 'sasl:@example.org' }, files)
  t.same(group.overrides, [
    { from: 'store', limits: '10msg/1h', where: 'policyd-ts ratelimit set', expires: null, note: 'spam run' },
    { from: 'file', limits: '100msg/1h', where: `${OVERRIDES}:2`, expires: null, note: '' },
  ])
  const table = await run(store, cfg, { action: 'show', key: 'sasl:@example.org' }, files)
  t.match(table.out, /^sasl:@example\.org \(a group of identities\)\noverride: 10msg\/1h, set with policyd-ts ratelimit set, until never \(spam run\)\noverride: 100msg\/1h, in \/etc\/policyd-ts\/ratelimit_overrides:2\nno member has usage or hits in the store\n$/)
})

t.test('show a group KEY: its members in the store, and only those', async (t) => {
  const store = new FakeRateLimitAdmin()
  store.usage = [
    use('sasl:alice@example.org', 'msg', 60, 5),
    use('sasl:carol@sub.example.org', 'msg', 60, 5),
    use('sasl:dave@example.net', 'msg', 60, 5),
    use('sender:eve@example.org', 'msg', 60, 5),
    use('sender:<>@192.0.2.7', 'msg', 60, 2),
    use('client:192.0.2.7', 'msg', 60, 2),
    use('client:198.51.100.1', 'msg', 60, 2),
    use('client:2001:db8:1:2::/64', 'msg', 60, 9),
    use('client:2001:db8:2::/64', 'msg', 60, 9),
  ]
  store.hits = [{ id: 'sasl:frank@example.org', limit: '30msg/1m', first: NOW - 9, last: NOW - 9, count: 1 }]
  const cfg = config({ ratelimit_networks: '192.0.2.0/24, 198.51.100.0/24, 2001:db8::/32', ratelimit_client_limits: '20msg/1m' })
  const ids = async (key: string): Promise<string[]> => (await json(store, cfg, { action: 'show', key })).identities.map((i: any) => i.id)
  t.same(await ids('sasl:@example.org'), ['sasl:alice@example.org', 'sasl:frank@example.org'], 'a user with hits only is a member too; a subdomain is not')
  t.same(await ids('sender:@example.org'), ['sender:eve@example.org'])
  t.same(await ids('sender:<>'), ['sender:<>@192.0.2.7'], 'the null sender of every client')
  t.same(await ids('client:192.0.2.0/24'), ['client:192.0.2.7'])
  t.same(await ids('client:2001:db8:1::/48'), ['client:2001:db8:1:2::/64'], 'a /64 counter inside the network')
  t.same(await ids('client:2001:db8:1:2::99'), ['client:2001:db8:1:2::/64'], 'an address finds the /64 it is counted by')
  t.same(await ids('client:2001:db8:1:2:0:0:0:0/96'), ['client:2001:db8:1:2::/64'], 'a network inside a counter finds that counter')
  const member = (await json(store, cfg, { action: 'show', key: 'client:2001:db8:1::/48' }, { [OVERRIDES]: '' })).identities[0]
  t.same([member.limits, member.source], [['20msg/1m'], 'ratelimit_client_limits'])
  const withFile = config({ ratelimit_networks: '2001:db8::/32', ratelimit_client_limits: '20msg/1m', ratelimit_overrides: OVERRIDES })
  const overridden = (await json(store, withFile, { action: 'show', key: 'client:2001:db8:1:2::/64' }, { [OVERRIDES]: 'client:2001:db8:1::/48 7msg/1m\n' })).identities[0]
  t.same([overridden.limits, overridden.source], [['7msg/1m'], `${OVERRIDES}:1 (client:2001:db8:1::/48)`], 'a counted network gets the override of a network around it')
})

t.test('show: a KEY that is not one is a usage error, and nothing is printed', async (t) => {
  const store = new FakeRateLimitAdmin()
  for (const key of ['alice@example.org', 'sasl:', 'client:300.1.1.1', 'sender:no-at-sign']) {
    const r = await run(store, config(), { action: 'show', key })
    t.equal(r.code, 64, key)
    t.equal(r.out, '', key)
    t.match(r.err, /^policyd-ts ratelimit show: ".*": /, key)
  }
  const none = await run(store, config(), { action: 'show' })
  t.equal(none.code, 64)
  t.match(none.err, /give a KEY/)
  t.same(store.usageAsked, [], 'the store was not asked')
})

t.test('greylist_privacy: an exact KEY finds its digest, with its exact override; a group KEY cannot', async (t) => {
  const store = new FakeRateLimitAdmin()
  const cfg = config({ greylist_privacy: 'yes', ratelimit_overrides: OVERRIDES })
  const files = { [OVERRIDES]: 'sasl:@example.org 100msg/1h\n' }
  const alice = identityId('sasl', 'alice@example.org', true)
  const bob = identityId('sasl', 'bob@example.org', true)
  store.usage = [use(alice, 'msg', 60, 4), use(bob, 'msg', 60, 1)]
  await run(store, cfg, { action: 'set', key: 'sasl:alice@example.org', limits: '5msg/1m' }, files)
  const shown = await json(store, cfg, { action: 'show', key: 'sasl:Alice@example.org' }, files)
  t.same(shown.identities.map((i: any) => [i.id, i.limits, i.usage[0].used]), [[alice, ['5msg/1m'], 4]])
  const listed = await json(store, cfg, { action: 'list' }, files)
  const bobView = listed.find((i: any) => i.id === bob)
  t.same(bobView.limits, ['30msg/1m', '1000rcpt/1d'], 'a domain entry cannot be matched to a digest')
  t.match(bobView.source, /greylist_privacy/)
  const group = await run(store, cfg, { action: 'show', key: 'sasl:@example.org', json: true }, files)
  t.equal(group.code, 0)
  t.match(group.err, /greylist_privacy is on/)
  t.same(JSON.parse(group.out).identities, [])
})

t.test('list [--over] [--limit]: every identity with usage, a row per limit', async (t) => {
  const store = new FakeRateLimitAdmin()
  store.usage = [
    use('sasl:alice@example.org', 'msg', 60, 28, 2),
    use('sasl:alice@example.org', 'rcpt', 86400, 10),
    use('sasl:bob@example.org', 'msg', 60, 1),
    use('sasl:carol@example.org', 'msg', 60, 99),
  ]
  store.overrides.set('sasl:carol@example.org', { key: 'sasl:carol@example.org', limits: 'unlimited', expires: Infinity, note: '', setAt: NOW })
  const all = await json(store, config(), { action: 'list' })
  t.same(all.map((i: any) => [i.id, i.limits]), [['sasl:alice@example.org', ['30msg/1m', '1000rcpt/1d']], ['sasl:bob@example.org', ['30msg/1m', '1000rcpt/1d']], ['sasl:carol@example.org', 'unlimited']])
  t.same(all[2].usage, [{ limit: null, unit: 'msg', window: 60, count: null, used: 99, held: 0, full: null }], 'unlimited: usage without a limit')
  const over = await json(store, config(), { action: 'list', over: true })
  t.same(over.map((i: any) => i.id), ['sasl:alice@example.org'], 'used and held together fill the limit; carol, unlimited, is never over')
  t.equal(over[0].usage.length, 2, 'all rows of an identity over a limit')
  const cut = await run(store, config(), { action: 'list', limit: '1' })
  t.equal(cut.code, 0)
  t.match(cut.out, /^ID +LIMIT +USED +HELD +FULL\nsasl:alice@example\.org +30msg\/1m +28 +2 +100%\nsasl:alice@example\.org +1000rcpt\/1d +10 +0 +1%\n$/)
  t.match(cut.err, /the first 1 of 3 identities shown/)
  t.equal((await run(store, config(), { action: 'list' })).err, '', 'no note when all are shown')
})

t.test('top: the fullest identities first, each with its fullest limit; --limit, 10 by default', async (t) => {
  const store = new FakeRateLimitAdmin()
  store.usage = [
    use('sasl:bob@example.org', 'msg', 60, 1),
    use('sasl:alice@example.org', 'msg', 60, 30),
    use('sasl:dave@example.org', 'msg', 60, 3),
    use('sasl:dave@example.org', 'rcpt', 86400, 900, 50),
    use('sasl:erin@example.org', 'msg', 60, 1),
    use('sasl:carol@example.org', 'msg', 60, 500),
  ]
  store.overrides.set('sasl:carol@example.org', { key: 'sasl:carol@example.org', limits: 'unlimited', expires: Infinity, note: '', setAt: NOW })
  const top = await json(store, config(), { action: 'top' })
  t.same(top.map((r: any) => [r.id, r.limit, r.full]), [
    ['sasl:alice@example.org', '30msg/1m', 1],
    ['sasl:dave@example.org', '1000rcpt/1d', 0.95],
    ['sasl:bob@example.org', '30msg/1m', 1 / 30],
    ['sasl:erin@example.org', '30msg/1m', 1 / 30],
  ], 'unlimited carol is not ranked; equals in id order')
  t.same((await json(store, config(), { action: 'top', limit: '2' })).map((r: any) => r.id), ['sasl:alice@example.org', 'sasl:dave@example.org'])
  store.usage = Array.from({ length: 12 }, (_, i) => use(`sasl:u${String(i).padStart(2, '0')}@example.org`, 'msg', 60, i))
  t.equal((await json(store, config(), { action: 'top' })).length, 10)
  const table = await run(store, config(), { action: 'top', limit: '1' })
  t.equal(table.out, 'ID                    LIMIT     USED  HELD  FULL\nsasl:u11@example.org  30msg/1m  11    0     36%\n')
})

t.test('reset KEY | --all: usage and hits go, of the identities named only', async (t) => {
  const seed = (): FakeRateLimitAdmin => {
    const store = new FakeRateLimitAdmin()
    store.usage = [use('sasl:alice@example.org', 'msg', 60, 5), use('sasl:bob@example.org', 'msg', 60, 5), use('sasl:carol@example.net', 'msg', 60, 5)]
    store.hits = [{ id: 'sasl:frank@example.org', limit: '30msg/1m', first: NOW, last: NOW, count: 1 }]
    return store
  }
  let store = seed()
  const one = await run(store, config(), { action: 'reset', key: 'sasl:Alice@example.org' })
  t.same([one.code, one.out], [0, '1 identity reset\n'])
  t.same(store.usage.map((u) => u.id), ['sasl:bob@example.org', 'sasl:carol@example.net'])
  store = seed()
  t.same(await json(store, config(), { action: 'reset', key: 'sasl:@example.org' }), { reset: 3 }, 'alice, bob and frank (hits only)')
  t.same(store.usage.map((u) => u.id), ['sasl:carol@example.net'])
  store = seed()
  t.equal((await run(store, config(), { action: 'reset', all: true })).out, '4 identities reset\n')
  store = seed()
  for (const args of [{ action: 'reset' }, { action: 'reset', key: 'global', all: true }]) {
    const r = await run(store, config(), args)
    t.equal(r.code, 64, JSON.stringify(args))
    t.match(r.err, /give a KEY, or --all/)
  }
  const hashed = await run(store, config({ greylist_privacy: 'yes' }), { action: 'reset', key: 'sasl:@example.org' })
  t.equal(hashed.code, 64)
  t.match(hashed.err, /greylist_privacy is on/)
  t.equal(store.usage.length, 3, 'nothing was reset by the refused commands')
})

t.test('set KEY LIMITS [--ttl] [--note]: stored as the override file would read it', async (t) => {
  const store = new FakeRateLimitAdmin()
  const set = await run(store, config(), { action: 'set', key: 'SASL:Alice@Example.org', limits: '100 msg / 1h,5000/1d', ttl: '2d', note: 'sales campaign' })
  t.equal(set.code, 0, set.err)
  t.equal(set.out, `sasl:alice@example.org: 100msg/1h, 5000rcpt/1d until ${new Date((NOW + 172800) * 1000).toISOString().replace('.000', '')} (running processes take it within ten seconds)\n`)
  t.same(store.overrides.get('sasl:alice@example.org'), { key: 'sasl:alice@example.org', limits: '100msg/1h, 5000rcpt/1d', expires: NOW + 172800, note: 'sales campaign', setAt: NOW })
  t.same(await json(store, config(), { action: 'set', key: 'global:*', limits: 'unlimited' }), { key: 'global', limits: 'unlimited', expires: null, note: '' })
  t.same((await json(store, config(), { action: 'show', key: 'global' })).identities[0].limits, 'unlimited', 'show reads what set wrote')
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ key: 'sasl:alice@example.org', limits: '30msgs/1m' }, /"30msgs\/1m" is not a limit/],
    [{ key: 'sasl:alice@example.org', limits: '1/400d' }, /longer than 366d/],
    [{ key: 'sasl:alice@example.org' }, /give the LIMITS of sasl:alice@example\.org/],
    [{ key: 'sasl:alice@example.org', limits: '1/1m', ttl: '3 days' }, /--ttl "3 days" is not a duration/],
    [{ key: 'sasl:alice@example.org', limits: '1/1m', ttl: '0' }, /--ttl "0"/],
    [{ key: 'alice', limits: '1/1m' }, /a key is sasl:USER/],
  ]
  for (const [args, why] of bad) {
    const r = await run(store, config(), { action: 'set', ...args })
    t.equal(r.code, 64, JSON.stringify(args))
    t.match(r.err, why)
  }
  t.same([...store.overrides.keys()], ['sasl:alice@example.org', 'global'], 'nothing stored by a refused set')
  t.match((await run(store, config(), { action: 'set', key: 'sender:@example.com', limits: '10/1h' })).err, /sender limits apply only to clients inside ratelimit_networks, which is empty/)
  t.equal((await run(store, config({ ratelimit_networks: '192.0.2.0/24' }), { action: 'set', key: 'client:192.0.2.0/28', limits: '10/1h' })).err, '')
})

t.test('set without a KEY: every override, the stored ones and the file\'s', async (t) => {
  const store = new FakeRateLimitAdmin()
  store.overrides.set('sasl:alice@example.org', { key: 'sasl:alice@example.org', limits: '5msg/1m', expires: NOW + 60, note: 'trial', setAt: NOW - 5 })
  store.overrides.set('sasl:gone@example.org', { key: 'sasl:gone@example.org', limits: '5msg/1m', expires: NOW - 1, note: '', setAt: NOW - 5 })
  const cfg = config({ ratelimit_overrides: OVERRIDES })
  const files = { [OVERRIDES]: 'client:192.0.2.0/24 unlimited\n' }
  t.same(await json(store, cfg, { action: 'set' }, files), [
    { key: 'sasl:alice@example.org', limits: '5msg/1m', from: 'store', expires: NOW + 60, note: 'trial', set_at: NOW - 5 },
    { key: 'client:192.0.2.0/24', limits: 'unlimited', from: `${OVERRIDES}:1`, expires: null, note: '', set_at: null },
  ])
  const table = await run(store, cfg, { action: 'set' }, files)
  t.match(table.out, /^KEY +LIMITS +FROM +EXPIRES +NOTE\nsasl:alice@example\.org +5msg\/1m +store +\S+Z +trial\nclient:192\.0\.2\.0\/24 +unlimited +\/etc\/policyd-ts\/ratelimit_overrides:1 +never\n$/)
})

t.test('unset KEY: the stored override goes; none, or one in the file only, is a data error', async (t) => {
  const store = new FakeRateLimitAdmin()
  const cfg = config({ ratelimit_overrides: OVERRIDES })
  const files = { [OVERRIDES]: 'sasl:bob@example.org 10msg/1h\n' }
  await run(store, cfg, { action: 'set', key: 'sasl:alice@example.org', limits: '5msg/1m' }, files)
  const gone = await run(store, cfg, { action: 'unset', key: 'sasl:ALICE@example.org' }, files)
  t.same([gone.code, gone.out], [0, 'sasl:alice@example.org: override removed\n'])
  t.equal(store.overrides.size, 0)
  const again = await run(store, cfg, { action: 'unset', key: 'sasl:alice@example.org', json: true }, files)
  t.same([again.code, again.out], [65, ''])
  t.match(again.err, /no override of sasl:alice@example\.org set with policyd-ts ratelimit set\n$/)
  const inFile = await run(store, cfg, { action: 'unset', key: 'sasl:bob@example.org' }, files)
  t.equal(inFile.code, 65)
  t.match(inFile.err, /the entry in \/etc\/policyd-ts\/ratelimit_overrides:1 is the file's: edit the file/)
  t.equal((await run(store, cfg, { action: 'unset' }, files)).code, 64)
})

t.test('hits [--since]: the last day by default, most recent first; nothing at all printed when there is none', async (t) => {
  const store = new FakeRateLimitAdmin()
  store.hits = [
    { id: 'sasl:a@example.org', limit: '30msg/1m', first: NOW - 4000, last: NOW - 3600, count: 3 },
    { id: 'sasl:b@example.org', limit: '1000rcpt/1d', first: NOW - 100000, last: NOW - 90000, count: 7 },
    { id: 'client:192.0.2.7', limit: '1000 held messages', first: NOW - 20, last: NOW - 10, count: 1 },
  ]
  t.same((await json(store, config(), { action: 'hits' })).map((h: any) => h.id), ['client:192.0.2.7', 'sasl:a@example.org'])
  t.same((await json(store, config(), { action: 'hits', since: '2d' })).map((h: any) => h.id), ['client:192.0.2.7', 'sasl:a@example.org', 'sasl:b@example.org'])
  t.same((await json(store, config(), { action: 'hits', since: new Date((NOW - 3600) * 1000).toISOString() })).map((h: any) => h.id), ['client:192.0.2.7', 'sasl:a@example.org'], 'an ISO time: hits last seen at or after it')
  const table = await run(store, config(), { action: 'hits' })
  t.match(table.out, /^ID +LIMIT +FIRST +LAST +REFUSED\nclient:192\.0\.2\.7 +1000 held messages +\S+ +\S+ +1\nsasl:a@example\.org +30msg\/1m +\S+ +\S+ +3\n$/)
  const quiet = await run(store, config(), { action: 'hits', since: '5s' })
  t.same([quiet.code, quiet.out, quiet.err], [0, '', ''], 'an empty report is no report: cron sends no mail')
  t.equal((await run(store, config(), { action: 'hits', since: '5s', json: true })).out, '[]\n')
  const bad = await run(store, config(), { action: 'hits', since: 'yesterday' })
  t.equal(bad.code, 64)
  t.match(bad.err, /--since "yesterday" is neither a duration/)
})

t.test('parseSince: a duration back from now, or an ISO time', async (t) => {
  t.equal(parseSince('12h', NOW), NOW - 43200)
  t.equal(parseSince('3600', NOW), NOW - 3600)
  t.equal(parseSince('2027-01-15T10:00:00Z', NOW), Date.UTC(2027, 0, 15, 10) / 1000)
  t.equal(parseSince('2027-01-15', NOW), Date.UTC(2027, 0, 15) / 1000, 'a date alone is midnight UTC')
  for (const bad of ['', 'yesterday', '2027-13-45', '-1d', '15/01/2027']) t.equal(parseSince(bad, NOW), null, bad)
})

t.test('arguments the action does not take are usage errors', async (t) => {
  const store = new FakeRateLimitAdmin()
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ action: 'show', key: 'global', limits: '1/1m' }, /unexpected argument "1\/1m"/],
    [{ action: 'list', key: 'global' }, /takes no KEY/],
    [{ action: 'hits', key: 'global' }, /takes no KEY/],
    [{ action: 'list', limit: '0' }, /--limit "0" is not a positive whole number/],
    [{ action: 'top', limit: 'ten' }, /--limit "ten"/],
    [{ action: 'top', limit: '1.5' }, /--limit "1.5"/],
  ]
  for (const [args, why] of cases) {
    const r = await run(store, config(), args)
    t.equal(r.code, 64, JSON.stringify(args))
    t.match(r.err, why)
  }
})

t.test('the override file: unreadable or with bad lines, the commands still run and say so', async (t) => {
  const store = new FakeRateLimitAdmin()
  const cfg = config({ ratelimit_overrides: OVERRIDES })
  const missing = await run(store, cfg, { action: 'show', key: 'sasl:alice@example.org' }, {})
  t.equal(missing.code, 0)
  t.match(missing.err, /cannot read ratelimit_overrides \/etc\/policyd-ts\/ratelimit_overrides: ENOENT.*its entries are left out/)
  t.match(missing.out, /from ratelimit_sasl_limits/)
  const bad = await run(store, cfg, { action: 'show', key: 'sasl:alice@example.org' }, { [OVERRIDES]: 'sasl:alice@example.org 5msgs/1m\n' })
  t.match(bad.err, /ratelimit_overrides:1: "5msgs\/1m" is not a limit .*; line skipped/)
})

t.test('a store without rate-limit state is refused before any command runs', async (t) => {
  t.throws(() => rateOpsStoreOf({ listTriplets: () => [] }), /this store keeps no rate-limit state \(no listUsage, resetUsage, setOverride, deleteOverride, listHits, listOverrides\)/)
  const fake = new FakeRateLimitAdmin()
  t.equal(rateOpsStoreOf(fake), fake)
})

t.test('holds are per unit: every limit of the unit counts them, also before any count (a listing of window 0)', async (t) => {
  const limits = { limits: [{ count: 10, unit: 'msg' as const, window: 60, text: '10msg/1m' }, { count: 100, unit: 'msg' as const, window: 3600, text: '100msg/1h' }], source: 's' }
  const counted = identityView('sasl:a@example.org', [use('sasl:a@example.org', 'msg', 60, 4, 5)], limits)
  t.same(counted.usage.map((r) => [r.limit, r.used, r.held]), [['10msg/1m', 4, 5], ['100msg/1h', 0, 5]], 'the hour has no counter yet, but the holds count against it')
  const holdsOnly = identityView('sasl:a@example.org', [use('sasl:a@example.org', 'msg', 0, 0, 10), use('sasl:a@example.org', 'rcpt', 0, 0, 30)], limits)
  t.same(holdsOnly.usage.map((r) => [r.limit, r.unit, r.used, r.held, r.full]), [['10msg/1m', 'msg', 0, 10, 1], ['100msg/1h', 'msg', 0, 10, 0.1], [null, 'rcpt', 0, 30, null]])
  const store = new FakeRateLimitAdmin()
  store.usage = [use('sasl:a@example.org', 'msg', 0, 0, 30), use('sasl:a@example.org', 'bytes', 0, 0, 4096)]
  const over = await json(store, config(), { action: 'list', over: true })
  t.same(over.map((v: any) => v.id), ['sasl:a@example.org'], '30 messages held fill 30msg/1m before any is counted')
  t.match((await run(store, config(), { action: 'show', key: 'sasl:a@example.org' })).out, /^bytes held \(no limit now\) +0B +4KB +-$/m)
})

t.test('identityView and formatAmount', async (t) => {
  const view = identityView('global:*', [use('global:*', 'bytes', 86400, 1536)], { limits: [{ count: 0, unit: 'msg', window: 60, text: '0msg/1m' }, { count: 1024 ** 3, unit: 'bytes', window: 86400, text: '1GB/1d' }], source: 's' })
  t.same(view.usage.map((r) => [r.limit, r.used, r.full]), [['0msg/1m', 0, 1], ['1GB/1d', 1536, 1536 / 1024 ** 3]], 'a zero limit is full from the start')
  t.same([formatAmount('bytes', 500), formatAmount('bytes', 1536), formatAmount('bytes', 1024 ** 3), formatAmount('bytes', 5 * 1024 ** 2 + 1), formatAmount('rcpt', 12345)], ['500B', '1.5KB', '1GB', '5MB', '12345'])
})

t.test('usageListing: a counter that counts nothing now is listed while its identity holds; sorted by id before unit', async (t) => {
  const slots = 6
  const counter = (at: number, window: number, amount: number): string => formatCounter(add({ first: 0, counts: [] }, slotIndex(at, window, slots), slots, amount))
  // Counted at NOW - 2h in a 1h window: nothing of it counts at NOW.
  const stale = counter(NOW - 7200, 3600, 2)
  const held = new Map([['sasl:a', { rcpt: 3, msg: 1, bytes: 0 }]])
  t.same(usageListing([{ id: 'sasl:a', unit: 'rcpt', window: 3600, counts: stale }], held, NOW, slots), [
    { id: 'sasl:a', unit: 'rcpt', window: 3600, used: 0, held: 3 },
  ], 'its counter, with the holds of its unit; no window-0 rows for it')
  t.same(usageListing([{ id: 'sasl:a', unit: 'rcpt', window: 3600, counts: stale }], new Map(), NOW, slots), [], 'nothing counted, nothing held: not listed')
  const rows = [
    { id: 'sasl:a', unit: 'msg' as const, window: 60, counts: counter(NOW, 60, 1) },
    { id: 'sasl:b', unit: 'bytes' as const, window: 60, counts: counter(NOW, 60, 5) },
  ]
  const expected = [{ id: 'sasl:a', unit: 'msg', window: 60, used: 1, held: 0 }, { id: 'sasl:b', unit: 'bytes', window: 60, used: 5, held: 0 }]
  t.same(usageListing(rows, new Map(), NOW, slots), expected, 'a later id with an earlier unit still comes later')
  t.same(usageListing(rows.slice().reverse(), new Map(), NOW, slots), expected, 'whatever the order of the rows')
})
