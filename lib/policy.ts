// From one framed request to one action, with the decision log line. Bad
// input (discarded requests, lines without '=', another request type) ends
// here, each with its written action. A bad setting in the configuration does
// not: the loader ignores it (lib/config.ts) and the checks run.

import type { Config } from './config'
import { decide, type DecideContext, type Decision } from './decide'
import type { Logger } from './log'
import type { Metrics } from './metrics'
import type { Frame } from './protocol'
import { toPolicyRequest, type PolicyRequest } from './request'

export interface PolicyOptions {
  config: Config
  log: Logger
  context: () => DecideContext
  now: () => number
  /** Called after each decided request (e.g. for incremental store upkeep). */
  afterDecision?: (now: number) => void
  metrics?: Metrics
}

/** Quote a log value when it would break the key=value form. */
export function logValue(value: string | number): string {
  if (typeof value === 'number') return String(value)
  return value !== '' && !NEEDS_QUOTES.test(value) ? value : JSON.stringify(value)
}
const NEEDS_QUOTES = /[\s"=]/

export function formatFields(fields: Record<string, string | number>): string {
  return Object.entries(fields)
    .map(([k, v]) => `${k}=${logValue(v)}`)
    .join(' ')
}

export function createPolicy(opts: PolicyOptions): (frame: Frame) => Promise<string> {
  const { config, log } = opts
  const logDecision = (req: PolicyRequest, decision: Decision): void => {
    const fields: Record<string, string | number> = {
      action: decision.action.split(' ')[0],
      check: decision.winner?.check ?? 'none',
      reason: decision.winner?.reason ?? 'none',
      state: req.protocolState,
      client: req.clientAddress,
      client_name: req.clientName,
      helo: req.helo,
      sender: req.sender === '' ? '<>' : req.sender,
      recipient: req.recipient,
      instance: req.instance,
    }
    if (req.queueId !== '') fields.queue_id = req.queueId
    if (decision.header !== undefined) fields.header = decision.header
    for (const v of decision.verdicts) {
      if (v !== decision.winner && log.enabled(2)) log.log(2, `check=${v.check} reason=${logValue(v.reason)} severity=${v.severity}`)
      Object.assign(fields, v.fields ?? {})
    }
    log.log(1, `decision ${formatFields(fields)}`)
  }
  return async (frame) => {
    if (frame.kind === 'discarded') {
      opts.metrics?.add('discarded')
      log.log(0, `request discarded: ${frame.reason}; answering ${config.fail_action}`)
      return config.fail_action
    }
    if (log.enabled(4)) for (const [k, v] of frame.attrs) log.log(4, `read ${k}=${v}`)
    for (const line of frame.garbage) log.log(0, `ignoring a line without '=': ${JSON.stringify(line)}`)
    for (const name of frame.duplicates) log.log(2, `attribute ${name} repeated; the first value counts`)

    const req = toPolicyRequest(frame.attrs)
    if (req.request !== 'smtpd_access_policy') {
      log.log(0, `unsupported request type ${logValue(req.request)}: answering DUNNO`)
      return 'DUNNO'
    }
    const now = opts.now()
    const started = opts.metrics ? performance.now() : 0
    const decision = await decide(req, opts.context(), now)
    if (opts.metrics) count(opts.metrics, req, decision, (performance.now() - started) / 1000)
    // The decision line is written after the reply has gone out: formatting
    // it is a fifth of the work of a request and Postfix need not wait for it.
    if (log.enabled(1)) setImmediate(logDecision, req, decision)
    opts.afterDecision?.(now)
    return decision.action
  }
}

function count(m: Metrics, req: PolicyRequest, decision: Decision, seconds: number): void {
  m.add('requests', { state: req.protocolState || 'none', action: decision.action.split(' ')[0] })
  m.observe('requestSeconds', seconds)
  for (const v of decision.verdicts) {
    m.add('decisions', { check: v.check, result: v.reason })
    if (v.reason.startsWith('store-')) m.add('storeErrors', { failure: v.reason.slice(6) })
  }
}
