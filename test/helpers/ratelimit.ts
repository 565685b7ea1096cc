// Building rate-limit steps in tests: limits from their text, the amounts
// a RCPT request holds, and a step with the tests' slots and hold time.
import { parseLimit } from '../../lib/ratelimit/limits'
import { NO_AMOUNTS, type Amounts, type Limit, type RateLimitStep, type StepIdentity, type StepOp } from '../../lib/ratelimit/types'

/** Six slots: a 1m window has slots of 10 s, 1h of 600 s, 1d of 14400 s. */
export const SLOTS = 6
export const HOLD_TIME = 3600

export function limit(text: string): Limit {
  const parsed = parseLimit(text)
  if ('error' in parsed) throw new Error(parsed.error)
  return parsed.limit
}

export const amounts = (rcpt: number, msg: number, bytes = 0): Amounts => ({ rcpt, msg, bytes })
/** What the first RCPT of a message holds. */
export const RCPT_FIRST = (size = 0): Amounts => amounts(1, 1, size)
/** What each further RCPT of a held message adds. */
export const RCPT_MORE = amounts(1, 0)

export function ident(id: string, limits: string[], first: Amounts, more: Amounts = NO_AMOUNTS): StepIdentity {
  return { id, limits: limits.map(limit), first, more }
}

export function mk(op: StepOp, instance: string, now: number, identities: StepIdentity[], extra: Partial<RateLimitStep> = {}): RateLimitStep {
  return { op, instance, now, identities, slots: SLOTS, holdTime: HOLD_TIME, maxHolds: 100, force: false, ...extra }
}
