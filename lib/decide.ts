// Runs the enabled checks on one normalised request and combines their
// verdicts into one action: SPF first (its authenticated domain keys the
// greylist triplet), then rate limiting and greylisting while the checks
// before let the mail through; the most severe verdict wins. Mail of a
// SASL-authenticated client is only rate-limited (SPF on request). This is
// also the one place where a failing check (store down, locked, corrupt,
// full; an internal error) becomes the configured fail_action, logged once
// per change of state.
// Headers go out through a queue per message (./header-queue).
//
// Store writes follow the combined verdict: a check that counts or holds
// something proposes it as its verdict's `effect`, committed only when the
// mail goes on and released when any check refuses it. Greylisting's
// record is its verdict itself (one atomic read-decide-write), so it runs
// last and only for mail no other check refused.

import { BoundedMap } from './bounded-map'
import type { Config } from './config'
import { checkGreylist, type GreylistContext } from './greylist/check'
import type { HeaderQueue } from './header-queue'
import type { RateLimitContext } from './ratelimit/check'
import type { PolicyRequest } from './request'
import type { SpfContext } from './spf/check'
import { StoreError } from './store/types'
import { combineVerdicts, letsThrough, type SeverityName, type Verdict } from './verdict'

export interface DecideContext {
  config: Config
  /** Absent where nothing greylists (spfquery). */
  greylist?: GreylistContext
  /** Made on first use: SPF loads its modules and resolver only when a request needs them. */
  spf?: () => SpfContext
  /** Absent where nothing rate-limits (spfquery, ratelimit_enabled = no). */
  ratelimit?: RateLimitContext
  headers: HeaderQueue
  log: (level: number, msg: string) => void
  logStateChange: (topic: string, state: string, level: number, msg: string) => void
}

export interface Decision {
  action: string
  verdicts: Verdict[]
  winner: Verdict | null
  /** The name of the header the reply prepends, which may come from an earlier request of the message. */
  header?: string
  /** The check that made that header: not always the winner of this reply. */
  headerCheck?: string
}

/** policyd-spf's Mock reply: DUNNO with a text Postfix ignores. */
export const MOCK_ACTION = 'DUNNO mock header field that should be ignored'

/** Which verdict severity a configured fail_action stands for. */
export function failSeverity(failAction: string): SeverityName {
  const word = failAction.trim().split(/\s+/)[0].toUpperCase()
  if (word === 'DUNNO') return 'dunno'
  if (word === 'REJECT' || /^5\d\d$/.test(word)) return 'reject'
  if (word.startsWith('DEFER') || /^4\d\d$/.test(word)) return 'defer'
  // OK, PERMIT, WARN, HOLD and the like: an explicit action, given as it is.
  return 'restriction'
}

/** A check that could not run: fail_action, and a field that says so even when another check wins. */
function failedVerdict(check: string, config: Config, reason: string): Verdict {
  return { check, severity: failSeverity(config.fail_action), action: config.fail_action, reason, fields: { [check]: `skipped-${reason}` } }
}

/**
 * Which check made each header waiting in a queue, for the decision line:
 * a header may go out with a later reply of its message that another check
 * decides. Bounded like the queue; an entry goes when its header does.
 */
const headerChecks = new WeakMap<HeaderQueue, BoundedMap<string, string>>()
const HEADER_CHECKS_KEPT = 256

function headerChecksOf(queue: HeaderQueue): BoundedMap<string, string> {
  let checks = headerChecks.get(queue)
  if (!checks) headerChecks.set(queue, (checks = new BoundedMap(HEADER_CHECKS_KEPT)))
  return checks
}

export async function decide(req: PolicyRequest, ctx: DecideContext, now: number): Promise<Decision> {
  const { config } = ctx
  if (config.Mock) return { action: MOCK_ACTION, verdicts: [], winner: null }
  const verdicts: Verdict[] = []
  let authenticatedDomain: string | undefined
  // Mail of a SASL-authenticated client, or (with rate limiting) of a
  // client in ratelimit_networks, is the site's own: it is rate-limited,
  // but never greylisted, nor SPF-checked unless asked. So the check can
  // come before permit_sasl_authenticated and permit_mynetworks.
  const authenticated = (req.attrs.get('sasl_username') ?? '').trim() !== '' || (config.ratelimit_enabled && ownNetwork(req, config))
  if (config.spf_enabled && ctx.spf && (!authenticated || config.spf_check_authenticated)) {
    try {
      const { checkSpf } = require('./spf/check') as typeof import('./spf/check')
      const spf = await checkSpf(req, ctx.spf())
      verdicts.push(spf.verdict)
      authenticatedDomain = spf.authenticatedDomain
    } catch (err) {
      ctx.log(0, `SPF check failed, answering fail_action ${config.fail_action} for it: ${(err as Error).stack ?? err}`)
      verdicts.push(failedVerdict('spf', config, 'internal-error'))
    }
  }
  // Counting mail that SPF refuses would use up limits with mail that never goes anywhere.
  if (config.ratelimit_enabled && ctx.ratelimit && !refusedBy(verdicts)) {
    try {
      const { checkRateLimit } = require('./ratelimit/check') as typeof import('./ratelimit/check')
      verdicts.push(await checkRateLimit(req, ctx.ratelimit, now))
    } catch (err) {
      if (!(err instanceof StoreError)) throw err
      ctx.logStateChange('store', err.failure, 0, `database ${err.failure}, answering fail_action ${config.fail_action}: ${err.message}`)
      verdicts.push(failedVerdict('ratelimit', config, `store-${err.failure}`))
    }
  }
  // Greylisting mail that another check refuses would only record triplets that never come back.
  if (config.greylist_enabled && ctx.greylist && !authenticated && !refusedBy(verdicts)) {
    try {
      verdicts.push(await checkGreylist(req, ctx.greylist, now, authenticatedDomain))
    } catch (err) {
      if (!(err instanceof StoreError)) throw err
      ctx.logStateChange('store', err.failure, 0, `database ${err.failure}, answering fail_action ${config.fail_action}: ${err.message}`)
      verdicts.push(failedVerdict('greylist', config, `store-${err.failure}`))
    }
  }
  const combined = combineVerdicts(verdicts)
  if (verdicts.some((v) => v.effect)) await settleEffects(verdicts, letsThrough(combined), ctx)
  if (combined.headers.length > 0) {
    const checks = headerChecksOf(ctx.headers)
    for (const v of verdicts) for (const h of v.headers ?? []) checks.set(h, v.check)
  }
  const header = ctx.headers.take(req, combined.headers, combined.action === null)
  if (combined.action === null && header !== null) {
    const checks = headerChecksOf(ctx.headers)
    const headerCheck = checks.get(header) ?? 'unknown'
    checks.delete(header)
    return { action: `PREPEND ${header}`, verdicts, winner: combined.winner, header: header.slice(0, header.indexOf(':')), headerCheck }
  }
  return { action: combined.action ?? 'DUNNO', verdicts, winner: combined.winner }
}

function ownNetwork(req: PolicyRequest, config: Config): boolean {
  const { inLimitedNetworks } = require('./ratelimit/identity') as typeof import('./ratelimit/identity')
  return inLimitedNetworks(req.clientIp, config)
}

function refusedBy(verdicts: readonly Verdict[]): boolean {
  return verdicts.some((v) => v.severity === 'defer' || v.severity === 'reject')
}

/** Commit (mail goes on) or release (mail refused) what each check proposed; a failure is logged, the reply stands. */
export async function settleEffects(verdicts: readonly Verdict[], commit: boolean, ctx: DecideContext): Promise<void> {
  for (const v of verdicts) {
    if (!v.effect) continue
    try {
      await (commit ? v.effect.commit() : v.effect.release())
    } catch (err) {
      ctx.log(0, `${v.check}: ${commit ? 'commit' : 'release'} failed, the reply stands: ${(err as Error).message}`)
    }
  }
}
