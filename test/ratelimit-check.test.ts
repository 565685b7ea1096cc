// The rate-limit check (lib/ratelimit/check.ts) against a recording store:
// which step each request state builds, what the verdict, reply and log say;
// and what it stands on: identities (identity.ts), overrides (overrides.ts)
// and the per-configuration runtime (runtime.ts). Times are passed in.
import t from 'tap'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { loadConfig, type Config } from '../lib/config'
import { toPolicyRequest, type PolicyRequest } from '../lib/request'
import { checkRateLimit, EndOfMessageWatch, type RateLimitConnection, type RateLimitContext } from '../lib/ratelimit/check'
import { identityId, parseRateKey, requestIdentities, type ParsedKey } from '../lib/ratelimit/identity'
import { classLimits, limitsFor, OverrideTable, parseOverrideFile, storedOverrides } from '../lib/ratelimit/overrides'
import { RateLimitRuntime } from '../lib/ratelimit/runtime'
import { NO_AMOUNTS, type Exceeded, type OverrideEntry, type RateLimitStep, type RateLimitStore, type StepResult } from '../lib/ratelimit/types'
import { limit } from './helpers/ratelimit'
import { recipientWhitelistOf } from '../lib/greylist/whitelist'

const NOW = 1_800_000_000
const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex')

function config(over: Record<string, string> = {}): Config {
  const l = loadConfig({ cli: { ratelimit_enabled: 'yes', ratelimit_sasl_limits: '30msg/1m', ratelimit_global_limits: '', ...over }, configPath: '/dev/null', env: {}, readFile: () => '' })
  if (l.errors.length > 0) throw new Error(l.errors.join('; '))
  return l.config
}

function request(attrs: Record<string, string>): PolicyRequest {
  return toPolicyRequest(new Map(Object.entries({ request: 'smtpd_access_policy', protocol_state: 'RCPT', instance: 'i1', client_address: '192.0.2.7', sasl_username: 'Alice', sender: 'a@example.org', recipient: 'bob@example.com', ...attrs })))
}

/** A store that records each step and answers with what the test queued (a plain pass otherwise). */
class RecordingStore implements RateLimitStore {
  steps: RateLimitStep[] = []
  answers: Array<Partial<StepResult> | Error> = []
  commitTime = 0
  lastCommitCalls = 0
  overrides: OverrideEntry[] = []

  async rateLimit(step: RateLimitStep): Promise<StepResult> {
    this.steps.push(step)
    const a = this.answers.shift()
    if (a instanceof Error) throw a
    return { ok: true, added: step.identities.map(() => (step.op === 'hold' ? step.identities[0].first : NO_AMOUNTS)), hadHold: false, expiredHolds: 0, now: step.now, ...a }
  }

  async listOverrides(): Promise<OverrideEntry[]> {
    return this.overrides
  }

  async lastCommit(): Promise<number> {
    this.lastCommitCalls++
    return this.commitTime
  }
}

interface Harness {
  ctx: RateLimitContext
  store: RecordingStore
  logs: Array<[number, string]>
  states: string[]
  expired: number[]
  prepared: number
}

function harness(cfg: Config = config(), stored: OverrideTable = new OverrideTable(), file: OverrideTable = new OverrideTable()): Harness {
  const store = new RecordingStore()
  const h: Harness = { store, logs: [], states: [], expired: [], prepared: 0, ctx: undefined as unknown as RateLimitContext }
  const connection: RateLimitConnection = { instance: '', ids: [] }
  h.ctx = {
    config: cfg,
    store,
    defaults: classLimits(cfg),
    overrides: () => ({ stored, file }),
    prepare: async () => void h.prepared++,
    exempt: recipientWhitelistOf(cfg.ratelimit_exempt_recipients, 'ratelimit_exempt_recipients'),
    connection,
    endOfMessage: new EndOfMessageWatch(store),
    log: (level, msg) => void h.logs.push([level, msg]),
    logStateChange: (topic, state, level, msg) => void h.states.push(`${topic} ${state} ${level} ${msg}`),
    countExpired: (n) => void h.expired.push(n),
  }
  return h
}

const exceeded = (over: Partial<Exceeded> = {}): Exceeded => ({ id: 'sasl:alice', limit: limit('30msg/1m'), used: 30, held: 2, asked: 1, retryAt: NOW + 42.5, firstInWindow: true, ...over })

t.test('check: stages and requests that are not counted never reach the store', async (t) => {
  const h = harness()
  for (const state of ['CONNECT', 'EHLO', 'MAIL', 'VRFY', 'ETRN', '']) {
    t.same(await checkRateLimit(request({ protocol_state: state }), h.ctx, NOW), { check: 'ratelimit', severity: 'dunno', reason: 'not-counted-stage', fields: undefined }, state)
  }
  t.equal((await checkRateLimit(request({ instance: '' }), h.ctx, NOW)).reason, 'no-instance')
  t.equal((await checkRateLimit(request({ sasl_username: '' }), h.ctx, NOW)).reason, 'unlimited', 'no SASL, outside ratelimit_networks, no global limits')
  t.same(h.store.steps, [])
  t.equal(h.prepared, 1, 'the stored overrides are read before an identity is looked at')
})

t.test('check RCPT: a hold of one recipient, one message and SIZE= on every limited identity', async (t) => {
  const cfg = config({ ratelimit_global_limits: '1000msg/1d', ratelimit_slots: '30', ratelimit_hold_time: '10m', ratelimit_max_holds: '7' })
  const h = harness(cfg)
  const v = await checkRateLimit(request({ size: '2048', sasl_username: ' ALICE@Example.ORG ' }), h.ctx, NOW)
  t.same(h.store.steps, [{
    op: 'hold',
    instance: 'i1',
    identities: [
      { id: 'sasl:alice@example.org', limits: [limit('30msg/1m')], first: { rcpt: 1, msg: 1, bytes: 2048 }, more: { rcpt: 1, msg: 0, bytes: 0 } },
      { id: 'global:*', limits: [limit('1000msg/1d')], first: { rcpt: 1, msg: 1, bytes: 2048 }, more: { rcpt: 1, msg: 0, bytes: 0 } },
    ],
    now: NOW,
    slots: 30,
    holdTime: 600,
    maxHolds: 7,
    force: false,
  }])
  t.same([v.check, v.severity, v.reason, v.fields], ['ratelimit', 'dunno', 'held', { keys: 'sasl:alice@example.org,global:*' }])
  t.same(h.ctx.connection, { instance: 'i1', ids: ['sasl:alice@example.org', 'global:*'] }, 'the connection remembers the held message')
  t.same(h.states, ['store ok 0 database available again'])
  t.same(h.logs, [])
  t.same(h.expired, [], 'no expired holds: nothing counted')
  // The effect gives back what the hold added, per identity.
  t.ok(v.effect)
  await v.effect!.commit()
  t.equal(h.store.steps.length, 1, 'keeping the hold is no store step')
  await v.effect!.release()
  t.same(h.store.steps[1], { ...h.store.steps[0], op: 'release', identities: h.store.steps[0].identities.map((s) => ({ ...s, first: { rcpt: 1, msg: 1, bytes: 2048 }, more: NO_AMOUNTS })) })
})

t.test('check RCPT: SIZE= and recipient_count that are not counts count as 0', async (t) => {
  for (const size of ['-5', '1.5', 'abc', '', '1e400', '9007199254740993']) {
    const h = harness()
    await checkRateLimit(request({ size }), h.ctx, NOW)
    t.equal(h.store.steps[0].identities[0].first.bytes, 0, JSON.stringify(size))
  }
  const h = harness()
  await checkRateLimit(request({ size: '0' }), h.ctx, NOW)
  await checkRateLimit(request({ size: '9007199254740991' }), h.ctx, NOW)
  t.same(h.store.steps.map((s) => s.identities[0].first.bytes), [0, 9007199254740991])
})

t.test('check RCPT: a hold that added nothing has no effect; expired holds are counted; learn-only reasons', async (t) => {
  const h = harness(config({ ratelimit_learn_only: 'yes' }))
  h.store.answers.push({ added: [NO_AMOUNTS], expiredHolds: 3 })
  const v = await checkRateLimit(request({}), h.ctx, NOW)
  t.equal(v.effect, undefined, 'nothing to give back')
  t.same(h.expired, [3])
  t.equal(h.store.steps[0].force, true, 'learn-only forces the step')
  for (const added of [{ rcpt: 1, msg: 0, bytes: 0 }, { rcpt: 0, msg: 1, bytes: 0 }, { rcpt: 0, msg: 0, bytes: 1 }]) {
    h.store.answers.push({ added: [added] })
    t.ok((await checkRateLimit(request({}), h.ctx, NOW)).effect, `an effect when ${JSON.stringify(added)} was added`)
  }
  h.store.answers.push({ ok: true, exceeded: exceeded({ firstInWindow: true, retryAt: Infinity }) })
  const over = await checkRateLimit(request({}), h.ctx, NOW)
  t.same([over.severity, over.reason, over.fields], ['dunno', 'held-over-learn-only', { keys: 'sasl:alice', limit: '30msg/1m', over: 'sasl:alice' }])
  t.same(h.logs.at(-1), [1, 'rate limit 30msg/1m exceeded (learn-only, not refused) for sasl:alice: used 30, held 2, asked 1, the message alone is over the limit'])
  h.store.answers.push({ ok: true, exceeded: exceeded({ firstInWindow: false }) })
  const logged = h.logs.length
  await checkRateLimit(request({}), h.ctx, NOW)
  t.equal(h.logs.length, logged, 'a repeat in the window is not logged')
})

t.test('check: a refusal defers with the configured action and text', async (t) => {
  const h = harness(config({ ratelimit_action: '451' }))
  h.store.answers.push({ ok: false, exceeded: exceeded({ id: 'sasl:alice', retryAt: NOW + 42.5 }), now: NOW + 2 })
  const v = await checkRateLimit(request({ sasl_username: 'alice' }), h.ctx, NOW)
  t.same(v, {
    check: 'ratelimit',
    severity: 'defer',
    action: `451 4.7.1 Rate limit 30msg/1m exceeded for sasl:alice, retry after ${new Date((NOW + 43) * 1000).toISOString().replace('.000Z', 'Z')}`,
    reason: 'exceeded',
    fields: { keys: 'sasl:alice', limit: '30msg/1m', over: 'sasl:alice' },
  })
  t.same(h.logs, [[1, `rate limit 30msg/1m exceeded for sasl:alice: used 30, held 2, asked 1, fits again at ${new Date((NOW + 43) * 1000).toISOString().replace('.000Z', 'Z')}`]])
  t.same(h.ctx.connection, { instance: '', ids: [] }, 'a refused message is not remembered as held')
})

t.test('check: the reply text: every escape, the clock of the store, never, privacy, one printable line', async (t) => {
  const reply = async (over: Record<string, string>, e: Partial<Exceeded>, storeNow = NOW, attrs: Record<string, string> = {}): Promise<string> => {
    // The loader refuses an unknown %x; set here, the text shows it as written.
    const { ratelimit_text, ...rest } = over
    const cfg = config(rest)
    const h = harness(ratelimit_text === undefined ? cfg : { ...cfg, ratelimit_text })
    h.store.answers.push({ ok: false, exceeded: exceeded(e), now: storeNow })
    return (await checkRateLimit(request({ sasl_username: 'alice', ...attrs }), h.ctx, NOW)).action!
  }
  const text = { ratelimit_text: '4.7.1 %l|%k|%t|%s|%%|%x|%' }
  t.equal(await reply(text, { retryAt: NOW + 42.5 }), 'DEFER_IF_PERMIT 4.7.1 30msg/1m|sasl:alice|2027-01-15T08:00:43Z|43|%|%x|%')
  t.equal(await reply(text, { retryAt: NOW + 10 }, NOW + 20), 'DEFER_IF_PERMIT 4.7.1 30msg/1m|sasl:alice|2027-01-15T08:00:20Z|1|%|%x|%', 'the store\'s clock ahead: at least 1 s, never in the past')
  t.equal(await reply(text, { retryAt: NOW + 0.2 }), 'DEFER_IF_PERMIT 4.7.1 30msg/1m|sasl:alice|2027-01-15T08:00:01Z|1|%|%x|%')
  t.equal(await reply(text, { retryAt: Infinity }), 'DEFER_IF_PERMIT 4.7.1 30msg/1m|sasl:alice|never: the message alone is over the limit|never|%|%x|%')
  t.equal(await reply({ ...text, greylist_privacy: 'yes' }, { id: identityId('sasl', 'alice', true) }), 'DEFER_IF_PERMIT 4.7.1 30msg/1m|sasl key|2027-01-15T08:00:43Z|43|%|%x|%', 'the class only, with privacy')
  t.equal(await reply(text, { id: 'sasl:someone-else' }), 'DEFER_IF_PERMIT 4.7.1 30msg/1m|sasl:someone-else|2027-01-15T08:00:43Z|43|%|%x|%', 'an id the request has not: shown as is')
  t.equal(await reply({ ratelimit_text: '4.7.1 over for %k' }, { id: 'sasl:älice\u2028x' }), 'DEFER_IF_PERMIT 4.7.1 over for sasl:?lice?x', 'what is not printable ASCII becomes ?')
})

t.test('check DATA and END-OF-MESSAGE: hold or commit the real recipient count and size', async (t) => {
  const h = harness()
  await checkRateLimit(request({ protocol_state: 'DATA', recipient_count: '4', size: '100', recipient: '' }), h.ctx, NOW)
  t.same(h.store.steps.map((s) => [s.op, s.identities[0].first, s.identities[0].more]), [['hold', { rcpt: 4, msg: 1, bytes: 100 }, NO_AMOUNTS]], 'DATA holds what was not held at RCPT')
  const v = await checkRateLimit(request({ protocol_state: 'END-OF-MESSAGE', recipient_count: '4', size: '300', recipient: '' }), h.ctx, NOW + 5)
  t.same(h.store.steps.map((s) => [s.op, s.now, s.identities[0].first]).at(-1), ['commit', NOW + 5, { rcpt: 4, msg: 1, bytes: 300 }])
  t.same([v.reason, v.effect, h.ctx.connection], ['counted', undefined, { instance: '', ids: [] }], 'the message is no longer held by this connection')
  const other = harness()
  other.ctx.connection.instance = 'older'
  other.ctx.connection.ids = ['sasl:alice']
  await checkRateLimit(request({ protocol_state: 'END-OF-MESSAGE', recipient_count: '1' }), other.ctx, NOW)
  t.same(other.ctx.connection, { instance: 'older', ids: ['sasl:alice'] }, 'another instance\'s commit leaves the memory alone')
  other.store.answers.push({ ok: true, exceeded: exceeded({ firstInWindow: false }) })
  t.equal((await checkRateLimit(request({ protocol_state: 'END-OF-MESSAGE', recipient_count: '1' }), other.ctx, NOW)).reason, 'counted-over-learn-only')

  const atData = harness(config({ ratelimit_commit_at: 'data' }))
  await checkRateLimit(request({ protocol_state: 'DATA', recipient_count: '2', size: '10' }), atData.ctx, NOW)
  t.same(atData.store.steps.map((s) => [s.op, s.identities[0].first]), [['commit', { rcpt: 2, msg: 1, bytes: 10 }]], 'ratelimit_commit_at = data counts at DATA')
  t.same((await checkRateLimit(request({ protocol_state: 'END-OF-MESSAGE', recipient_count: '2' }), atData.ctx, NOW)).reason, 'counted-at-data')
  t.equal(atData.store.steps.length, 1, 'and not again at END-OF-MESSAGE')
})

t.test('check: exempt recipients are neither held nor counted', async (t) => {
  const h = harness()
  t.equal((await checkRateLimit(request({ recipient: 'postmaster@example.com' }), h.ctx, NOW)).reason, 'exempt-recipient')
  t.equal((await checkRateLimit(request({ recipient: 'abuse@example.net' }), h.ctx, NOW)).reason, 'exempt-recipient')
  t.same([h.ctx.connection.exemptInstance, h.ctx.connection.exempt], ['i1', 2])
  t.equal((await checkRateLimit(request({ instance: 'i2', recipient: 'abuse@example.net' }), h.ctx, NOW)).reason, 'exempt-recipient')
  t.same([h.ctx.connection.exemptInstance, h.ctx.connection.exempt], ['i2', 1], 'a new message starts its count afresh')
  t.equal((await checkRateLimit(request({ instance: 'i2', protocol_state: 'END-OF-MESSAGE', recipient_count: '1' }), h.ctx, NOW)).reason, 'exempt-recipient', 'only exempt recipients: nothing to count')
  t.same(h.store.steps, [])
  await checkRateLimit(request({ instance: 'i2', protocol_state: 'END-OF-MESSAGE', recipient_count: '3' }), h.ctx, NOW)
  t.same(h.store.steps[0].identities[0].first.rcpt, 2, 'recipient_count less the exempt ones')
  await checkRateLimit(request({ instance: 'i9', protocol_state: 'END-OF-MESSAGE', recipient_count: '3' }), h.ctx, NOW)
  t.same(h.store.steps[1].identities[0].first.rcpt, 3, 'exempt recipients of another message do not count here')
  await checkRateLimit(request({ instance: 'i2', protocol_state: 'DATA', recipient_count: '3' }), h.ctx, NOW)
  t.same(h.store.steps[2].identities[0].first.rcpt, 2, 'nor at DATA')
  await checkRateLimit(request({ instance: 'i2', protocol_state: 'RCPT' }), h.ctx, NOW)
  t.same(h.store.steps[3].identities[0].first.rcpt, 1, 'a RCPT request holds its one recipient')
  const zero = harness()
  t.equal((await checkRateLimit(request({ protocol_state: 'END-OF-MESSAGE', recipient_count: '0' }), zero.ctx, NOW)).reason, 'counted', 'no exempt recipient: counted even with recipient_count 0')
})

t.test('check: a new message on a connection releases the hold of one that ended without a commit', async (t) => {
  const h = harness(config({ ratelimit_slots: '12', ratelimit_hold_time: '2m', ratelimit_max_holds: '9' }))
  h.store.commitTime = 5
  await checkRateLimit(request({ instance: 'a' }), h.ctx, NOW)
  await checkRateLimit(request({ instance: 'a' }), h.ctx, NOW + 1)
  t.equal(h.store.steps.length, 2, 'the same message: no release')
  await checkRateLimit(request({ instance: 'b' }), h.ctx, NOW + 2)
  t.same(h.store.steps[2], {
    op: 'release', whole: true, instance: 'a', now: NOW + 2,
    identities: [{ id: 'sasl:alice', limits: [], first: NO_AMOUNTS, more: NO_AMOUNTS }],
    slots: 12, holdTime: 120, maxHolds: 9, force: false,
  })
  t.equal(h.store.steps[3].instance, 'b')
  t.equal(h.store.lastCommitCalls, 1)
  await checkRateLimit(request({ instance: 'c' }), h.ctx, NOW + 3)
  t.equal(h.store.lastCommitCalls, 1, 'once a commit is seen, the store is not asked again')
  t.same(h.store.steps.map((s) => `${s.op} ${s.instance}`).slice(4), ['release b', 'hold c'])

  const failing = harness()
  failing.store.commitTime = 1
  await checkRateLimit(request({ instance: 'a' }), failing.ctx, NOW)
  failing.store.answers.push(new Error('disk on fire'))
  const v = await checkRateLimit(request({ instance: 'b' }), failing.ctx, NOW)
  t.equal(v.reason, 'held', 'the request goes on')
  t.same(failing.logs, [[0, 'rate limiting: the hold of the abandoned message a was not released: disk on fire']])
  t.same(failing.ctx.connection, { instance: 'b', ids: ['sasl:alice'] })

  const none = harness()
  none.ctx.connection.instance = 'a'
  await checkRateLimit(request({ instance: 'b' }), none.ctx, NOW)
  t.same(none.store.steps.map((s) => s.op), ['hold'], 'a memory without identities releases nothing')
  t.equal(none.store.lastCommitCalls, 0)

  const data = harness()
  data.store.commitTime = 1
  await checkRateLimit(request({ instance: 'a' }), data.ctx, NOW)
  await checkRateLimit(request({ instance: 'b', protocol_state: 'DATA', recipient_count: '1' }), data.ctx, NOW)
  t.same(data.store.steps.map((s) => s.op), ['hold', 'hold'], 'only a RCPT request starts a new message')
})

t.test('EndOfMessageWatch: no END-OF-MESSAGE anywhere: holds stay, and after three abandoned messages one warning', async (t) => {
  const h = harness()
  const logs: Array<[number, string]> = []
  const log = (level: number, msg: string): void => void logs.push([level, msg])
  const watch = new EndOfMessageWatch(h.store)
  t.equal(await watch.messageEnded(log), false)
  t.equal(await watch.messageEnded(log), false)
  t.same(logs, [], 'two abandoned messages are no sign')
  t.equal(await watch.messageEnded(log), false)
  t.equal(logs.length, 1)
  t.same(logs[0][0], 0)
  t.match(logs[0][1], /^rate limiting: no END-OF-MESSAGE request has reached policyd-ts, so held mail is never counted .*smtpd_end_of_data_restrictions = check_policy_service/)
  t.equal(await watch.messageEnded(log), false)
  t.equal(logs.length, 1, 'said once')
  h.store.commitTime = 7
  t.equal(await watch.messageEnded(log), true, 'a commit seen in the store')
  h.store.commitTime = 0
  t.equal(await watch.messageEnded(log), true, 'and remembered')
  t.equal(h.store.lastCommitCalls, 5)

  // Through the check: without a commit anywhere the abandoned hold is not released.
  const c = harness()
  for (const inst of ['a', 'b', 'c', 'd']) await checkRateLimit(request({ instance: inst }), c.ctx, NOW)
  t.same(c.store.steps.map((s) => s.op), ['hold', 'hold', 'hold', 'hold'])
  t.equal(c.logs.length, 1, 'the third abandoned message warns')
})

// ---- identities ----

const IDS = { ratelimit_networks: ['192.0.2.0/24', '2001:db8::/32'], ratelimit_ipv4_prefix: 24, ratelimit_ipv6_prefix: 48, greylist_privacy: false }

t.test('identity: SASL user; sender and client inside ratelimit_networks only; always global', async (t) => {
  const ids = (attrs: Record<string, string>, cfg = IDS): string[] => requestIdentities(request(attrs), cfg).map((i) => `${i.cls} ${i.id} ${i.name} ${i.value} ${i.ip ? i.ip.text : '-'}`)
  t.same(ids({ sasl_username: ' Alice@Example.ORG ' }), ['sasl sasl:alice@example.org sasl:alice@example.org alice@example.org -', 'global global:* global:* * -'])
  t.same(ids({ sasl_username: '', sender: 'Bob@Example.COM', client_address: '192.0.2.77' }), [
    'sender sender:bob@example.com sender:bob@example.com bob@example.com -',
    'client client:192.0.2.0/24 client:192.0.2.0/24 192.0.2.0/24 192.0.2.77',
    'global global:* global:* * -',
  ])
  t.same(ids({ sasl_username: '', sender: '', client_address: '2001:db8:1:2::9' }), [
    'sender sender:<>@2001:db8:1:2::9 sender:<>@2001:db8:1:2::9 <>@2001:db8:1:2::9 -',
    'client client:2001:db8:1::/48 client:2001:db8:1::/48 2001:db8:1::/48 2001:db8:1:2::9',
    'global global:* global:* * -',
  ], 'the null sender per client address, whatever the client prefix')
  t.same(ids({ sasl_username: '', client_address: '198.51.100.1' }), ['global global:* global:* * -'], 'outside the networks: a forged sender must not use up a real one\'s limit')
  t.same(ids({ sasl_username: '', client_address: 'unknown' }), ['global global:* global:* * -'])
  t.same(ids({ sasl_username: '', client_address: '192.0.2.1' }, { ...IDS, ratelimit_networks: [] }), ['global global:* global:* * -'])
  t.same(ids({ sasl_username: '', client_address: '192.0.2.1' }, { ...IDS, ratelimit_networks: ['bogus', '192.0.2.1'] }).length, 3, 'an unparsable network is skipped, the others apply')
  const secret = requestIdentities(request({ sasl_username: 'Alice' }), { ...IDS, greylist_privacy: true })
  t.same(secret.map((i) => [i.id, i.name]), [
    [`sasl:${sha256('alice')}`, 'sasl:alice'],
    [`global:${sha256('*')}`, 'global:*'],
  ], 'privacy: digests in the store, clear names for the log')
  t.equal(identityId('client', '192.0.2.1', false), 'client:192.0.2.1')
})

t.test('identity: keys as admins write them', async (t) => {
  const key = (text: string, cfg = IDS): ParsedKey | string => {
    const r = parseRateKey(text, cfg)
    return 'error' in r ? r.error : { ...r.key, cidr: r.key.cidr ? (`${r.key.cidr.net.text}/${r.key.cidr.prefix}` as never) : undefined }
  }
  t.same(key(' Global '), { cls: 'global', value: '*', id: 'global:*', cidr: undefined })
  t.same(key('GLOBAL:*'), { cls: 'global', value: '*', id: 'global:*', cidr: undefined })
  t.same(key('SASL: Alice@Example.org'), { cls: 'sasl', value: 'alice@example.org', id: 'sasl:alice@example.org', cidr: undefined })
  t.same(key('sasl:@Example.org'), { cls: 'sasl', value: '@example.org', id: undefined, cidr: undefined }, 'a domain is a group')
  t.same(key('sender:<>'), { cls: 'sender', value: '<>', cidr: undefined })
  t.same(key('sender:<>@192.0.2.7'), { cls: 'sender', value: '<>@192.0.2.7', id: 'sender:<>@192.0.2.7', cidr: undefined })
  t.same(key('sender:<>@2001:DB8::1'), { cls: 'sender', value: '<>@2001:db8::1', id: 'sender:<>@2001:db8::1', cidr: undefined })
  t.match(key('sender:<>@nowhere'), /^"sender:<>@nowhere": a null-sender key is sender:<> or sender:<>@CLIENT-ADDRESS$/)
  t.same(key('sender:@Example.COM'), { cls: 'sender', value: '@example.com', cidr: undefined })
  t.same(key('sender:Bob@Example.COM'), { cls: 'sender', value: 'bob@example.com', id: 'sender:bob@example.com', cidr: undefined })
  for (const bad of ['sender:bob', 'sender:a@b@c', 'sender:a@', 'sender:@']) t.match(key(bad), /a sender key is an address/, bad)
  for (const bad of ['alice', 'user:alice', ':alice', 'global:x']) t.match(key(bad), /: a key is sasl:USER, sender:ADDRESS/, bad)
  for (const bad of ['sasl:', 'sasl: ', 'sasl:a b', 'sasl:a\0b']) t.match(key(bad), /the value after the class is empty or has blanks/, JSON.stringify(bad))
  t.match(key('client:nope'), /a client key is an IP address or a network/)
  t.same(key('client:192.0.2.7'), { cls: 'client', value: '192.0.2.7', id: 'client:192.0.2.0/24', cidr: '192.0.2.7/32' }, 'an address names the counter of its network')
  t.same(key('client:192.0.2.7/24'), { cls: 'client', value: '192.0.2.0/24', id: 'client:192.0.2.0/24', cidr: '192.0.2.0/24' }, 'the counted network itself')
  t.same(key('client:192.0.0.0/16'), { cls: 'client', value: '192.0.0.0/16', id: undefined, cidr: '192.0.0.0/16' }, 'a wider network is a group')
  t.same(key('client:192.0.2.0/28'), { cls: 'client', value: '192.0.2.0/28', id: undefined, cidr: '192.0.2.0/28' }, 'so is a narrower one')
  t.same(key('client:2001:db8:1:2::9'), { cls: 'client', value: '2001:db8:1:2::9', id: 'client:2001:db8:1::/48', cidr: '2001:db8:1:2::9/128' })
  t.same(key('client:2001:db8:1::/48'), { cls: 'client', value: '2001:db8:1::/48', id: 'client:2001:db8:1::/48', cidr: '2001:db8:1::/48' })
  t.same(key('client:192.0.2.7', { ...IDS, ratelimit_ipv4_prefix: 32 }), { cls: 'client', value: '192.0.2.7', id: 'client:192.0.2.7', cidr: '192.0.2.7/32' })
  const hashed = parseRateKey('sender:bob@example.com', { ...IDS, greylist_privacy: true })
  t.equal('key' in hashed && hashed.key.id, identityId('sender', 'bob@example.com', true))
  t.not(identityId('sender', 'bob@example.com', true), 'sender:bob@example.com')
})

// ---- overrides ----

function parsedKey(text: string): ParsedKey {
  const r = parseRateKey(text, IDS)
  if ('error' in r) throw new Error(r.error)
  return r.key
}

t.test('overrides: the most specific entry wins', async (t) => {
  const o = (key: string, limits: string): { key: ParsedKey; limits: ReturnType<typeof limitsOf>; source: string } => ({ key: parsedKey(key), limits: limitsOf(limits), source: key })
  const table = new OverrideTable([
    o('sasl:@example.org', '1msg/1m'),
    o('sasl:alice@example.org', '2msg/1m'),
    o('sender:<>', '3msg/1m'),
    o('sender:@example.com', '4msg/1m'),
    o('client:192.0.0.0/16', '5msg/1m'),
    o('client:192.0.2.0/24', '6msg/1m'),
    o('client:192.0.2.128/25', '7msg/1m'),
    o('global', 'unlimited'),
  ])
  t.equal(table.size, 8)
  const source = (attrs: Record<string, string>): string[] => requestIdentities(request(attrs), IDS).map((i) => table.match(i)?.source ?? '-')
  t.same(source({ sasl_username: 'alice@example.org' }), ['sasl:alice@example.org', 'global'])
  t.same(source({ sasl_username: 'carol@example.org' }), ['sasl:@example.org', 'global'])
  t.same(source({ sasl_username: 'carol@example.net' }), ['-', 'global'])
  t.same(source({ sasl_username: 'carol' }), ['-', 'global'], 'a user without a domain')
  t.same(source({ sasl_username: '', sender: 'x@example.com', client_address: '192.0.2.200' }), ['sender:@example.com', 'client:192.0.2.128/25', 'global'])
  t.same(source({ sasl_username: '', sender: '', client_address: '192.0.2.1' }), ['sender:<>', 'client:192.0.2.0/24', 'global'])
  t.same(source({ sasl_username: '', sender: 'x@example.net', client_address: '192.0.2.1' }), ['-', 'client:192.0.2.0/24', 'global'])
  t.equal(table.match({ cls: 'client', id: 'client:x', name: 'client:x', value: 'x' }), undefined, 'a client identity without an address matches no network')
  t.equal(new OverrideTable([o('client:192.0.0.0/16', '5msg/1m'), o('client:192.0.2.0/24', '6msg/1m')]).match(requestIdentities(request({ sasl_username: '', client_address: '192.0.2.1' }), IDS)[1])?.source, 'client:192.0.2.0/24', 'longest prefix first whatever the order written')
  t.equal(new OverrideTable().size, 0)
  t.equal(new OverrideTable().match({ cls: 'global', id: 'global:*', name: 'global:*', value: '*' }), undefined)

  const stored = new OverrideTable([o('sasl:alice@example.org', '9msg/1m')])
  const defaults = classLimits(config({ ratelimit_sasl_limits: '10msg/1m', ratelimit_global_limits: '100msg/1m' }))
  const alice = requestIdentities(request({ sasl_username: 'alice@example.org' }), IDS)
  t.same(limitsFor(alice[0], defaults, stored, table), { limits: limitsOf('9msg/1m'), source: 'sasl:alice@example.org (sasl:alice@example.org)' }, 'a stored entry wins over the file')
  t.same(limitsFor(alice[0], defaults, new OverrideTable(), table), { limits: limitsOf('2msg/1m'), source: 'sasl:alice@example.org (sasl:alice@example.org)' })
  t.same(limitsFor(alice[1], defaults, stored, new OverrideTable()), { limits: limitsOf('100msg/1m'), source: 'ratelimit_global_limits' })
})

function limitsOf(text: string): ReturnType<typeof classLimits>['sasl'] {
  return classLimits({ ratelimit_sasl_limits: text, ratelimit_sender_limits: '', ratelimit_client_limits: '', ratelimit_global_limits: '' }).sasl
}

t.test('overrides: classLimits: empty is none, unlimited, a list', async (t) => {
  t.same(classLimits({ ratelimit_sasl_limits: ' ', ratelimit_sender_limits: 'unlimited', ratelimit_client_limits: '5/1m, 1msg/1h', ratelimit_global_limits: 'nonsense' }), {
    sasl: [],
    sender: 'unlimited',
    client: [limit('5/1m'), limit('1msg/1h')],
    global: [],
  })
})

t.test('overrides: the file: comments, bad lines with their numbers, a key written twice', async (t) => {
  const text = [
    '# per-key limits',
    'sasl:alice@example.org 5000rcpt/1d, 100msg/1h  # vip',
    '',
    '   ',
    'sasl:bob@example.org',
    'bogus:x 1msg/1m',
    'sender:@example.com 1msg/0s',
    'client:192.0.2.0/24\tunlimited',
    'SASL:Alice@Example.org 7msg/1h',
  ].join('\n')
  const { entries, errors } = parseOverrideFile(text, '/etc/o', IDS)
  t.same(entries.map((e) => [e.key.cls, e.key.value, e.limits === 'unlimited' ? 'unlimited' : e.limits.map((l) => l.text).join(', '), e.source]), [
    ['sasl', 'alice@example.org', '7msg/1h', '/etc/o:9'],
    ['client', '192.0.2.0/24', 'unlimited', '/etc/o:8'],
  ])
  t.same(errors, [
    '/etc/o:5: "sasl:bob@example.org" has a key but no limits (write unlimited for none); line skipped',
    '/etc/o:6: "bogus:x": a key is sasl:USER, sender:ADDRESS, sender:@DOMAIN, client:ADDRESS[/PREFIX] or global; line skipped',
    '/etc/o:7: "1msg/0s": the period must be at least one second; line skipped',
    '/etc/o:9: sasl:alice@example.org is set again (first at line 2); the last line counts',
  ])
  t.same(parseOverrideFile('', 'x', IDS), { entries: [], errors: [] })
})

t.test('overrides: stored entries that no longer parse are reported and skipped', async (t) => {
  const logs: string[] = []
  const e = (key: string, limits: string): OverrideEntry => ({ key, limits, expires: Infinity, note: '', setAt: 0 })
  const out = storedOverrides([e('sasl:a@b', '1msg/1m'), e('nonsense', '1msg/1m'), e('sasl:c@d', 'lots'), e('global', 'unlimited')], IDS, (m) => logs.push(m))
  t.same(out.map((o) => [o.key.value, o.source]), [['a@b', 'policyd-ts ratelimit set'], ['*', 'policyd-ts ratelimit set']])
  t.same(logs, [
    'stored rate-limit override nonsense = 1msg/1m skipped: "nonsense": a key is sasl:USER, sender:ADDRESS, sender:@DOMAIN, client:ADDRESS[/PREFIX] or global',
    'stored rate-limit override sasl:c@d = lots skipped: "lots" is not a limit such as 30msg/1m, 1000rcpt/1d or 1GB/1d',
  ])
})

// ---- runtime ----

t.test('runtime: the override file is looked at every 5 s at most, reread when it changes, dropped loudly when unreadable', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'overrides')
  fs.writeFileSync(file, 'sasl:alice 1msg/1m\nbad line\n')
  let ms = 1_000_000
  const logs: Array<[number, string]> = []
  const rt = new RateLimitRuntime(config({ ratelimit_overrides: file, ratelimit_sasl_limits: '3msg/1m', ratelimit_exempt_recipients: 'hostmaster@' }), (l, m) => void logs.push([l, m]), () => ms)
  t.same(rt.defaults.sasl, [limit('3msg/1m')])
  t.equal(rt.exempt.match('hostmaster@example.org') !== null, true)
  t.equal(rt.exempt.match('postmaster@example.org'), null, 'the configured exempt list, not the default')
  t.equal(rt.overrides().file.size, 1)
  t.same(logs, [[0, `rate-limit overrides: ${file}:2: "bad": a key is sasl:USER, sender:ADDRESS, sender:@DOMAIN, client:ADDRESS[/PREFIX] or global; line skipped`], [2, `rate-limit overrides: 1 entries read from ${file}`]])
  fs.writeFileSync(file, 'sasl:alice 1msg/1m\nsasl:bob 2msg/1m\n')
  ms += 4999
  t.equal(rt.overrides().file.size, 1, 'not looked at within 5 s')
  ms += 1
  t.equal(rt.overrides().file.size, 2, 'looked at after 5 s')
  fs.rmSync(file)
  ms += 4999
  t.equal(rt.overrides().file.size, 2)
  ms += 1
  t.equal(rt.overrides().file.size, 0, 'gone: no stale entries')
  t.match(logs.at(-1), [0, new RegExp(`^rate-limit overrides: cannot read ${file}: .*ENOENT.*; using the class limits only$`)])
  const n = logs.length
  ms += 5000
  rt.overrides()
  t.equal(logs.length, n, 'said once per change')
  const none = new RateLimitRuntime(config(), () => t.fail('no log'), () => t.fail('no clock') as never)
  t.equal(none.overrides().file.size, 0, 'no file: no clock read, no log')
})

t.test('runtime: stored overrides are read on demand; a failure keeps the last ones and is passed on', async (t) => {
  const logs: Array<[number, string]> = []
  const rt = new RateLimitRuntime(config(), (l, m) => void logs.push([l, m]), () => 0)
  t.equal(rt.storedReady, false)
  const store = new RecordingStore()
  store.overrides = [{ key: 'sasl:alice', limits: '1msg/1m', expires: Infinity, note: '', setAt: 0 }, { key: 'junk', limits: 'x', expires: Infinity, note: '', setAt: 0 }]
  await rt.refreshStored(store, NOW)
  t.equal(rt.storedReady, true)
  t.equal(rt.overrides().stored.size, 1)
  t.same(logs.map((l) => l[0]), [0], 'the bad stored entry is reported at level 0')
  const broken: RateLimitStore = { ...store, rateLimit: store.rateLimit.bind(store), lastCommit: store.lastCommit.bind(store), listOverrides: async () => { throw new Error('locked') } }
  await t.rejects(rt.refreshStored(broken, NOW), /locked/)
  t.same(logs.at(-1), [2, 'rate-limit overrides in the store not read: locked'])
  t.equal(rt.overrides().stored.size, 1, 'the last ones kept')
})

t.test('check: exempt only at RCPT; fewer recipients than exempt ones; the over field of an unknown id', async (t) => {
  const h = harness()
  await checkRateLimit(request({ protocol_state: 'END-OF-MESSAGE', recipient: 'postmaster@example.com', recipient_count: '1' }), h.ctx, NOW)
  t.same(h.store.steps.map((s) => s.op), ['commit'], 'END-OF-MESSAGE names the one recipient of a message: it is counted all the same')
  for (const r of ['abuse@a', 'abuse@b']) await checkRateLimit(request({ instance: 'e', recipient: r }), h.ctx, NOW)
  t.equal((await checkRateLimit(request({ instance: 'e', protocol_state: 'END-OF-MESSAGE', recipient_count: '1' }), h.ctx, NOW)).reason, 'exempt-recipient', 'a recipient_count below the exempt count (a milter dropped some) is no count below 0')
  t.equal(h.store.steps.length, 1)
  h.store.answers.push({ ok: false, exceeded: exceeded({ id: 'sasl:someone-else' }) })
  const v = await checkRateLimit(request({}), h.ctx, NOW)
  t.same(v.fields, { keys: 'sasl:alice', limit: '30msg/1m', over: 'sasl:someone-else' })
  t.match(h.logs.at(-1)?.[1], /^rate limit 30msg\/1m exceeded for sasl:someone-else: /)
})

t.test('check: a refused new message leaves the connection remembering none', async (t) => {
  const h = harness()
  h.store.commitTime = 1
  await checkRateLimit(request({ instance: 'a' }), h.ctx, NOW)
  h.store.answers.push({}, { ok: false, exceeded: exceeded() })
  t.equal((await checkRateLimit(request({ instance: 'b' }), h.ctx, NOW)).reason, 'exceeded')
  t.same(h.store.steps.map((s) => `${s.op} ${s.instance}`), ['hold a', 'release a', 'hold b'])
  t.same(h.ctx.connection, { instance: '', ids: [] }, 'a is released, b holds nothing')
  await checkRateLimit(request({ instance: 'c' }), h.ctx, NOW)
  t.same(h.store.steps.map((s) => `${s.op} ${s.instance}`).slice(3), ['hold c'], 'so the next message releases nothing')
})

t.test('identity: a key that only looks like a class, a null sender not at the start', async (t) => {
  t.match(parseRateKey('saslx', IDS), { error: /a key is sasl:USER/ }, 'no colon: no class, whatever its first letters')
  t.match(parseRateKey('sender:x<>@192.0.2.1', IDS), { key: { cls: 'sender', value: 'x<>@192.0.2.1', id: 'sender:x<>@192.0.2.1' } }, 'an address, not a null-sender key')
})

t.test('check with greylist_privacy: the log and the over field name the exceeding identity in clear', async (t) => {
  const h = harness(config({ greylist_privacy: 'yes', ratelimit_global_limits: '100msg/1m' }))
  const ids = { sasl: identityId('sasl', 'alice', true), global: identityId('global', '*', true) }
  for (const [cls, name] of [['global', 'global:*'], ['sasl', 'sasl:alice']] as const) {
    h.store.answers.push({ ok: false, exceeded: exceeded({ id: ids[cls] }) })
    const v = await checkRateLimit(request({ instance: `m-${cls}` }), h.ctx, NOW)
    t.same(v.fields, { keys: 'sasl:alice,global:*', limit: '30msg/1m', over: name }, cls)
    t.match(h.logs.at(-1)?.[1], new RegExp(`^rate limit 30msg/1m exceeded for ${name.replace('*', '\\*')}: `), `${cls}: the log`)
    t.same(h.store.steps.at(-1)?.identities.map((i) => i.id), [ids.sasl, ids.global], 'the store sees digests only')
  }
})

t.test('check DATA: a hold that added to one identity only still has an effect that gives that back', async (t) => {
  // The message was held at RCPT on the user; the global limit is newer (or its hold expired): only global adds at DATA.
  const h = harness(config({ ratelimit_global_limits: '100msg/1m' }))
  const added = { rcpt: 2, msg: 1, bytes: 300 }
  h.store.answers.push({ added: [NO_AMOUNTS, added], hadHold: true })
  const v = await checkRateLimit(request({ protocol_state: 'DATA', recipient_count: '2', size: '300' }), h.ctx, NOW)
  t.equal(v.reason, 'held')
  t.ok(v.effect, 'something was added: refused by another check, it goes back')
  await v.effect?.release()
  t.same(h.store.steps[1]?.identities.map((s) => [s.id, s.first]), [['sasl:alice', NO_AMOUNTS], ['global:*', added]])
})

t.test('identity: a request without the sasl_username attribute is not a SASL user', async (t) => {
  const attrs = new Map(Object.entries({ request: 'smtpd_access_policy', protocol_state: 'RCPT', instance: 'i1', client_address: '198.51.100.1', sender: 'a@example.org', recipient: 'bob@example.com' }))
  t.same(requestIdentities(toPolicyRequest(attrs), IDS).map((i) => i.id), ['global:*'])
})

t.test('overrides: a user name without a domain matches its own entry only', async (t) => {
  const { entries } = parseOverrideFile('sasl:e 5msg/1m\nsasl:@example.org 6msg/1m\n', 'o', IDS)
  const table = new OverrideTable(entries)
  const user = (name: string): ReturnType<typeof requestIdentities>[number] => requestIdentities(request({ sasl_username: name }), IDS)[0]
  t.equal(table.match(user('alice')), undefined, 'not the entry of user "e", its last letter')
  t.equal(table.match(user('e'))?.source, 'o:1')
  t.equal(table.match(user('bob@example.org'))?.source, 'o:2', 'a user with a domain: its domain\'s entry')
})

t.test('runtime: an exempt recipient is matched with the setting that exempts it', async (t) => {
  const rt = new RateLimitRuntime(config({ ratelimit_exempt_recipients: 'hostmaster@, abuse@example.org' }), () => t.fail('no log'))
  t.equal(rt.exempt.match('Hostmaster@example.com'), 'ratelimit_exempt_recipients hostmaster@')
  t.equal(rt.exempt.match('abuse@example.org'), 'ratelimit_exempt_recipients abuse@example.org')
  t.equal(rt.exempt.match('alice@example.org'), null)
})
