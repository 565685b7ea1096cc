// `policyd-ts spfquery --ip A --sender S --helo H`: the tool an admin reaches
// for when a sender complains. Same engine, same configuration and same
// resolver as the policy server; prints the result word first, then what
// led to it and the action the server would answer (greylisting aside).

import { App } from './app'
import { decide } from './decide'
import type { Logger } from './log'
import { domainOf } from './normalize'
import { toPolicyRequest } from './request'
import { checkHost, type SpfResult } from './spf/check-host'
import { explanationOf } from './spf/texts'
import type { LoadedConfig } from './config'

export interface SpfQuery {
  ip: string
  sender: string
  helo: string
  recipient: string
}

function describe(identity: string, subject: string, r: SpfResult): string {
  const parts = [`${identity}: ${r.result} for ${subject}`, `(${r.reason})`]
  if (r.record !== undefined) parts.push(`record "${r.record}"`)
  return parts.join(' ')
}

/** Runs the query and returns the lines to print. */
export async function spfQuery(q: SpfQuery, loaded: LoadedConfig, hostname: string): Promise<string[]> {
  const config = { ...loaded.config, greylist_enabled: false, spf_enabled: true, Mock: false }
  const logs: string[] = []
  const log = (level: number, msg: string): void => {
    if (level <= Math.max(config.debugLevel, 0)) logs.push(msg)
  }
  const logger: Logger = {
    log,
    logStateChange: (_topic, _state, level, msg) => log(level, msg),
    enabled: (level) => level <= Math.max(config.debugLevel, 0),
    setLevel: () => undefined,
    reopen: () => undefined,
    close: async () => undefined,
  }
  const app = new App({ loaded: { ...loaded, config }, log: logger, hostname })
  const spf = app.runtime.spf()
  try {
    const sender = q.sender.replace(/^<(.*)>$/, '$1').toLowerCase()
    const helo = q.helo.toLowerCase()
    const heloName = helo || domainOf(sender) || 'unknown'
    const limits = { resolver: spf.resolver, lookupTimeMs: config.Lookup_Time * 1000, voidLimit: config.Void_Limit, receiver: hostname }
    const ip = config.Prospective || q.ip
    const heloResult = await checkHost({ ip, domain: heloName, sender: `postmaster@${heloName}`, helo: heloName }, limits)
    const mailFrom = sender === '' ? null : await checkHost({ ip, domain: domainOf(sender) || sender, sender, helo: heloName }, limits)

    const req = toPolicyRequest(new Map(Object.entries({
      request: 'smtpd_access_policy', protocol_state: 'RCPT', client_address: q.ip, client_name: 'unknown',
      helo_name: q.helo, sender, recipient: q.recipient, instance: 'spfquery',
    })))
    const decision = await decide(req, app.connection().context(), app.now())

    // The identity whose result decided the action (a HELO fail rejects before MAIL FROM counts).
    const spfVerdict = decision.verdicts.find((v) => v.check === 'spf')
    const deciding = spfVerdict?.reason.startsWith('helo') || !mailFrom ? heloResult : mailFrom
    const out = [deciding.result, `explanation: ${explanationOf(deciding.result, deciding)}`]
    if (mailFrom) out.push(describe('mailfrom', sender, mailFrom))
    out.push(describe('helo', heloName, heloResult))
    if (spfVerdict) out.push(`policy: ${spfVerdict.reason}`)
    out.push(`action: ${decision.action}`)
    if (config.Prospective) out.push(`(checked as if from ${config.Prospective}: Prospective)`)
    for (const l of logs) out.push(`log: ${l}`)
    return out
  } finally {
    app.close()
  }
}
