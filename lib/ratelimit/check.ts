// The rate-limit check: at RCPT (and DATA, where nothing was held) it tests
// and holds the message against every limit of every identity in one store
// step; at END-OF-MESSAGE it counts the message with its real recipient
// count and size and drops the hold. A hold is this check's proposed effect:
// when another check refuses the recipient, decide() gives it back, so mail
// that policyd-ts refuses never counts. Holds live in the store, keyed by
// Postfix's `instance`, because the RCPT and END-OF-MESSAGE requests of one
// message may reach different spawned processes.

import type { Config } from '../config'
import type { RecipientWhitelist } from '../greylist/whitelist'
import type { PolicyRequest } from '../request'
import type { Verdict } from '../verdict'
import { requestIdentities, type RateIdentity } from './identity'
import { limitsFor, type ClassLimits, type OverrideTable } from './overrides'
import { NO_AMOUNTS, type Amounts, type Exceeded, type RateLimitStep, type RateLimitStore, type StepIdentity, type StepOp } from './types'

export interface RateLimitContext {
  config: Config
  store: RateLimitStore
  defaults: ClassLimits
  /** Overrides set with `policyd-ts ratelimit set` (refreshed at upkeep) and from ratelimit_overrides (reread when it changes). */
  overrides(): { stored: OverrideTable; file: OverrideTable }
  /** Reads the stored overrides before the first decision of a process. */
  prepare(): Promise<void>
  exempt: RecipientWhitelist
  /** This connection's memory: the last message it held, so that a new one releases an abandoned hold. */
  connection: RateLimitConnection
  /** Whether any process has committed (END-OF-MESSAGE reaches policyd-ts); per process, see warnNoEndOfMessage. */
  endOfMessage: EndOfMessageWatch
  log: (level: number, msg: string) => void
  logStateChange: (topic: string, state: string, level: number, msg: string) => void
  /** Holds found expired, for policyd_ratelimit_holds_expired_total. */
  countExpired(n: number): void
}

/** Per connection: the last instance held here and on which identities. */
export interface RateLimitConnection {
  instance: string
  ids: string[]
}

/**
 * Watches for the missing END-OF-MESSAGE check: without it holds are never
 * counted. Once a commit has been seen in the store, it stops asking.
 */
export class EndOfMessageWatch {
  private seen = false
  private warned = false
  private abandoned = 0

  constructor(private readonly store: RateLimitStore) {}

  /** A held message ended without a commit on this connection (its successor started). */
  async messageEnded(log: (level: number, msg: string) => void): Promise<boolean> {
    if (this.seen) return true
    this.seen = (await this.store.lastCommit()) > 0
    if (this.seen) return true
    // One message can be abandoned (RSET, QUIT after RCPT); several in a row without a single commit anywhere cannot.
    if (++this.abandoned >= 3 && !this.warned) {
      this.warned = true
      log(0, 'rate limiting: no END-OF-MESSAGE request has reached policyd-ts, so held mail is never counted (holds only expire after ratelimit_hold_time); '
        + 'add the check to main.cf: smtpd_end_of_data_restrictions = check_policy_service <the same service as in smtpd_recipient_restrictions>')
    }
    return false
  }
}

const pass = (reason: string, fields?: Record<string, string | number>): Verdict => ({ check: 'ratelimit', severity: 'dunno', reason, fields })

/** The identities of a request that have limits, each with its limits. */
function limitedIdentities(req: PolicyRequest, ctx: RateLimitContext): Array<{ identity: RateIdentity; limits: StepIdentity['limits'] }> {
  const { stored, file } = ctx.overrides()
  const out: Array<{ identity: RateIdentity; limits: StepIdentity['limits'] }> = []
  for (const identity of requestIdentities(req, ctx.config)) {
    const { limits } = limitsFor(identity, ctx.defaults, stored, file)
    if (limits !== 'unlimited' && limits.length > 0) out.push({ identity, limits })
  }
  return out
}

function numberAttr(req: PolicyRequest, name: string): number {
  const n = Number(req.attrs.get(name) ?? '')
  return Number.isSafeInteger(n) && n >= 0 ? n : 0
}

export async function checkRateLimit(req: PolicyRequest, ctx: RateLimitContext, now: number): Promise<Verdict> {
  const { config } = ctx
  const state = req.protocolState
  if (state !== 'RCPT' && state !== 'DATA' && state !== 'END-OF-MESSAGE') return pass('not-counted-stage')
  if (req.instance === '') return pass('no-instance')
  if (state === 'RCPT' && ctx.exempt.match(req.recipient) !== null) return pass('exempt-recipient')
  await ctx.prepare()
  const conn = ctx.connection
  if (state === 'RCPT' && conn.instance !== '' && conn.instance !== req.instance) await releaseAbandoned(ctx, now)

  const limited = limitedIdentities(req, ctx)
  if (limited.length === 0) return pass('unlimited')
  const size = numberAttr(req, 'size')
  const recipients = numberAttr(req, 'recipient_count')
  let op: StepOp
  let first: Amounts
  let more: Amounts = NO_AMOUNTS
  if (state === 'RCPT') {
    op = 'hold'
    first = { rcpt: 1, msg: 1, bytes: size }
    more = { rcpt: 1, msg: 0, bytes: 0 }
  } else if (state === 'DATA') {
    // BDAT arrives as DATA too. Commit here only when asked to; otherwise
    // hold a message none of whose recipients were held (the check is in
    // smtpd_data_restrictions only, or every recipient was exempt).
    op = config.ratelimit_commit_at === 'data' ? 'commit' : 'hold'
    first = { rcpt: recipients, msg: 1, bytes: size }
  } else {
    if (config.ratelimit_commit_at === 'data') return pass('counted-at-data')
    op = 'commit'
    first = { rcpt: recipients, msg: 1, bytes: size }
  }
  const step: RateLimitStep = {
    op,
    instance: req.instance,
    identities: limited.map(({ identity, limits }) => ({ id: identity.id, limits, first, more })),
    now,
    slots: config.ratelimit_slots,
    holdTime: config.ratelimit_hold_time,
    maxHolds: config.ratelimit_max_holds,
    force: config.ratelimit_learn_only,
  }
  const result = await ctx.store.rateLimit(step)
  // Only a request that used the store can tell that it works again.
  ctx.logStateChange('store', 'ok', 0, 'database available again')
  if (result.expiredHolds > 0) ctx.countExpired(result.expiredHolds)
  const fields: Record<string, string | number> = { keys: limited.map((l) => l.identity.name).join(',') }
  if (result.exceeded) {
    const e = result.exceeded
    const name = limited.find((l) => l.identity.id === e.id)?.identity.name ?? e.id
    fields.limit = e.limit.text
    fields.over = name
    if (e.firstInWindow) ctx.log(1, `rate limit ${e.limit.text} ${result.ok ? 'exceeded (learn-only, not refused)' : 'exceeded'} for ${name}: used ${e.used}, held ${e.held}, asked ${e.asked}${Number.isFinite(e.retryAt) ? `, fits again at ${isoTime(e.retryAt)}` : ', the message alone is over the limit'}`)
  }
  if (!result.ok) {
    const e = result.exceeded!
    const text = replyText(config, e, limited.find((l) => l.identity.id === e.id)?.identity ?? null, result.now)
    return { check: 'ratelimit', severity: 'defer', action: `${config.ratelimit_action} ${text}`, reason: 'exceeded', fields }
  }
  if (op === 'commit') {
    if (conn.instance === req.instance) {
      conn.instance = ''
      conn.ids = []
    }
    return pass(result.exceeded ? 'counted-over-learn-only' : 'counted', fields)
  }
  conn.instance = req.instance
  conn.ids = limited.map((l) => l.identity.id)
  const added = result.added
  const verdict = pass(result.exceeded ? 'held-over-learn-only' : 'held', fields)
  if (added.some((a) => a.rcpt > 0 || a.msg > 0 || a.bytes > 0)) {
    verdict.effect = {
      commit: async () => undefined,
      // Refused by another check: this request's share of the hold goes back.
      release: async () => {
        await ctx.store.rateLimit({ ...step, op: 'release', identities: step.identities.map((s, i) => ({ ...s, first: added[i], more: NO_AMOUNTS })) })
      },
    }
  }
  return verdict
}

/**
 * A new message on a connection ends the one before: when it was not
 * counted (no END-OF-MESSAGE: RSET, or refused after RCPT by another
 * restriction), its hold goes. While no END-OF-MESSAGE reaches policyd-ts at
 * all the holds stay until they expire, so that limits still hold roughly.
 */
async function releaseAbandoned(ctx: RateLimitContext, now: number): Promise<void> {
  const { instance, ids } = ctx.connection
  ctx.connection.instance = ''
  ctx.connection.ids = []
  if (ids.length === 0) return
  const c = ctx.config
  try {
    if (!(await ctx.endOfMessage.messageEnded(ctx.log))) return
    await ctx.store.rateLimit({
      op: 'release', whole: true, instance, now,
      identities: ids.map((id) => ({ id, limits: [], first: NO_AMOUNTS, more: NO_AMOUNTS })),
      slots: c.ratelimit_slots, holdTime: c.ratelimit_hold_time, maxHolds: c.ratelimit_max_holds, force: false,
    })
  } catch (err) {
    // The hold then expires after ratelimit_hold_time; this request goes on.
    ctx.log(0, `rate limiting: the hold of the abandoned message ${instance} was not released: ${(err as Error).message}`)
  }
}

function replyText(config: Config, e: Exceeded, identity: RateIdentity | null, now: number): string {
  const key = identity === null ? e.id : config.greylist_privacy ? `${identity.cls} key` : identity.name
  const fits = Number.isFinite(e.retryAt)
  const values: Record<string, string> = {
    l: e.limit.text,
    k: key,
    t: fits ? isoTime(Math.max(e.retryAt, now)) : 'never: the message alone is over the limit',
    s: fits ? String(Math.max(1, Math.ceil(e.retryAt - now))) : 'never',
  }
  // Postfix takes one line; a key comes from the client (sender) and must not break it.
  return config.ratelimit_text.replace(/%([a-z%])/g, (whole, letter: string) => (letter === '%' ? '%' : (values[letter] ?? whole))).replace(/[^\x20-\x7e]/g, '?')
}

function isoTime(t: number): string {
  return new Date(Math.ceil(t) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z')
}
