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

/**
 * A log value as exactly one field, whatever the client sent. Bare when it
 * is printable and holds no space, double quote, '=' or backslash; else in
 * double quotes, with a backslash before each double quote and backslash,
 * and every control or other non-printable character written as \xHH (up
 * to U+00FF) or \u{HHHH}. Cleaning comes before quoting, so nothing is left
 * for the logger to turn into a space that splits the value.
 */
export function logValue(value: string | number): string {
  if (typeof value === 'number') return String(value)
  if (value !== '' && (!NOT_PLAIN_ASCII.test(value) || !NEEDS_QUOTES.test(value))) return value
  return `"${value.replace(ESCAPED, escapeChar)}"`
}
/** Tested first, as most values are printable ASCII without space, double quote, '=' or backslash. */
// eslint-disable-next-line no-control-regex
const NOT_PLAIN_ASCII = /[\x00-\x20"=\\\x7f-\uffff]/
/** Unicode's "other" (controls, format, surrogates, private, unassigned) and separators. */
const NEEDS_QUOTES = /["=\\\p{C}\p{Z}]/u
/** The same but the space itself, which is safe inside quotes. */
const ESCAPED = /["\\\p{C}\p{Zl}\p{Zp}]|[^\P{Zs} ]/gu

function escapeChar(char: string): string {
  if (char === '"' || char === '\\') return `\\${char}`
  const code = char.codePointAt(0)!
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u{${code.toString(16)}}`
}

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
    if (decision.header !== undefined) {
      fields.header = decision.header
      fields.header_check = decision.headerCheck ?? 'unknown'
    }
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
    if (log.enabled(4)) for (const [k, v] of frame.attrs) log.log(4, `read ${k}=${logValue(v)}`)
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
