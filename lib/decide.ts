// Runs the enabled checks on one normalised request and combines their
// verdicts into one action. This is also the one place where a failing
// check (store down, locked, corrupt, full) becomes the configured
// fail_action, logged once per change of state.

import type { Config } from './config'
import { checkGreylist, type GreylistContext } from './greylist/check'
import type { PolicyRequest } from './request'
import { StoreError } from './store/types'
import { combineVerdicts, type SeverityName, type Verdict } from './verdict'

export interface DecideContext {
  config: Config
  greylist: GreylistContext
  logStateChange: (topic: string, state: string, level: number, msg: string) => void
}

export interface Decision {
  action: string
  verdicts: Verdict[]
  winner: Verdict | null
}

/** Which verdict severity a configured fail_action stands for. */
export function failSeverity(failAction: string): SeverityName {
  const word = failAction.trim().split(/\s+/)[0].toUpperCase()
  if (word === 'REJECT' || /^5\d\d$/.test(word)) return 'reject'
  if (word.startsWith('DEFER') || /^4\d\d$/.test(word)) return 'defer'
  return 'dunno'
}

function failedVerdict(check: string, config: Config, reason: string): Verdict {
  return { check, severity: failSeverity(config.fail_action), action: config.fail_action, reason }
}

export async function decide(req: PolicyRequest, ctx: DecideContext, now: number): Promise<Decision> {
  const verdicts: Verdict[] = []
  if (ctx.config.greylist_enabled) {
    try {
      verdicts.push(await checkGreylist(req, ctx.greylist, now))
      ctx.logStateChange('store', 'ok', 0, 'database available again')
    } catch (err) {
      if (!(err instanceof StoreError)) throw err
      ctx.logStateChange('store', err.failure, 0, `database ${err.failure}, answering fail_action ${ctx.config.fail_action}: ${err.message}`)
      verdicts.push(failedVerdict('greylist', ctx.config, `store-${err.failure}`))
    }
  }
  const { action, winner } = combineVerdicts(verdicts)
  return { action, verdicts, winner }
}
