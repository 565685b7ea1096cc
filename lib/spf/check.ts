// The SPF check of a policy request, as postfix-policyd-spf-python decides
// it: exemption lists, then the HELO identity, then MAIL FROM, each result
// mapped to reject, defer, a restriction or a header by the policy keys.
// Two deliberate differences: when the MAIL FROM identity was checked, the
// header always carries its result, never the HELO one (CVE-2019-20790);
// Domain_Whitelist_PTR matches confirmed host names on a label boundary.
//
// Results are remembered per message (`instance`): the 2nd recipient gets
// the same rejection again or, once the header has been handed out,
// nothing more; a Per_User recipient gets its own policy applied to the
// same DNS results.

import type { BoundedMap } from '../bounded-map'
import type { Config } from '../config'
import type { Resolver } from '../dns/resolver'
import { addressToALabels, domainOf, domainToALabels, parseIp } from '../normalize'
import type { PolicyRequest } from '../request'
import type { Verdict } from '../verdict'
import { BYPASS_COMMENT, findBypass, type Bypass } from './bypass'
import { checkHost, type SpfResult } from './check-host'
import { inDomainList, type PerUserFile, type SpfPolicy } from './policy'
import {
  authenticationResults,
  explanationOf,
  reasonMessage,
  receivedSpf,
  resultWord,
  skippedHeader,
  whyUrl,
  type HeaderFacts,
} from './texts'

export interface SpfContext {
  config: Config
  policy: SpfPolicy
  perUser: PerUserFile | null
  resolver: Resolver
  /** The authserv-id of Authentication-Results fields, Authserv_Id with HOSTNAME resolved. */
  authservId: string
  /** The receiving host's name, for the %{r} macro. */
  hostname: string
  messages: BoundedMap<string, MessageSpf>
  log: (level: number, msg: string) => void
  /** Milliseconds. */
  now: () => number
}

/** What one message (instance) has learnt so far. */
export interface MessageSpf {
  lookups: Map<string, Promise<SpfResult>>
  /** The outcome under the global policy, given again to later recipients. */
  outcome?: SpfOutcome
  /** The message's SPF header has been handed to the reply queue. */
  headerGiven: boolean
}

export type SpfAction = 'reject' | 'defer' | 'restriction' | 'prepend' | 'dunno'

export interface SpfOutcome {
  action: SpfAction
  /** reject/defer: the whole access(5) action; restriction: the restriction; prepend: the header. */
  text: string
  reason: string
  fields: Record<string, string>
  /** The MAIL FROM domain when it passed SPF by a record narrower than the whole Internet. */
  authenticatedDomain?: string
}

export interface SpfCheck {
  verdict: Verdict
  authenticatedDomain?: string
}

/** States in which a check makes sense: the envelope is known (END-OF-MESSAGE cannot take a header). */
const CHECKED_STATES = new Set(['MAIL', 'RCPT', 'DATA', 'BDAT', 'END-OF-MESSAGE'])

const REJECT_RESULTS: Record<string, readonly string[]> = {
  SPF_Not_Pass: ['fail', 'softfail', 'neutral'],
  Softfail: ['fail', 'softfail'],
  Fail: ['fail'],
  Null: ['fail'],
}

/** What policy says of one identity's result; `local` when Reject_Not_Pass_Domains made it stricter. */
export function actionFor(scope: 'helo' | 'mailfrom', r: SpfResult, policy: SpfPolicy, domain: string): { action: 'reject' | 'defer' | 'prepend'; local: boolean } {
  let rule: string = scope === 'helo' ? policy.heloReject : policy.mailFromReject
  const local = inDomainList(domain, policy.rejectNotPassDomains)
  if (local) rule = 'SPF_Not_Pass'
  if (rule === 'False') return { action: 'prepend', local }
  if (REJECT_RESULTS[rule]?.includes(r.result)) return { action: 'reject', local }
  if (r.result === 'temperror' && policy.tempErrorDefer) return { action: 'defer', local }
  if (r.result === 'permerror' && policy.permErrorReject) return { action: 'reject', local }
  return { action: 'prepend', local }
}

function isNoMailRecord(record: string | undefined): boolean {
  return record !== undefined && record.trim().replace(/\s+/g, ' ').toLowerCase() === 'v=spf1 -all'
}

interface Evaluation {
  req: PolicyRequest
  policy: SpfPolicy
  ctx: SpfContext
  msg: MessageSpf
}

function headerFacts(e: Evaluation, clientIp: string, helo: string, sender: string): HeaderFacts {
  return { clientIp, helo, sender, receiver: receiverOf(e.req, e.ctx.config) }
}

/** The recipient domain as policyd-spf writes it (receiver=, r=), or <UNKNOWN> with Hide_Receiver. */
export function receiverOf(req: PolicyRequest, config: Config): string {
  if (config.Hide_Receiver) return '<UNKNOWN>'
  if (req.recipient === '') return 'none'
  const domain = domainOf(req.recipient)
  return domain === '' ? req.recipient.toLowerCase() : (domainToALabels(domain) ?? domain)
}

async function evaluate(e: Evaluation): Promise<SpfOutcome> {
  const { req, policy, ctx, msg } = e
  const { config } = ctx
  const ipText = config.Prospective || req.clientAddress
  const ip = parseIp(ipText)
  if (!ip) return { action: 'dunno', text: '', reason: 'no-client-address', fields: {} }
  // Domains as A-labels from here on (RFC 7208 §4.3): for DNS, the domain lists, the greylist key, the headers.
  const sender = addressToALabels(req.sender.toLowerCase())
  const heloGiven = req.helo.toLowerCase().replace(/\.$/, '')
  const helo = domainToALabels(heloGiven) ?? heloGiven

  const lookup = (domain: string, identitySender: string, heloName: string, timeMs: number): Promise<SpfResult> => {
    const key = `${domain} ${identitySender} ${heloName} ${policy.voidLimit} ${timeMs}`
    let found = msg.lookups.get(key)
    if (!found) {
      found = checkHost(
        // The address as given: %{i} of IPv6 keeps the case of its hex digits.
        { ip: ipText, domain, sender: identitySender, helo: heloName },
        { resolver: ctx.resolver, lookupTimeMs: timeMs, voidLimit: policy.voidLimit, receiver: ctx.hostname, now: ctx.now },
      )
      msg.lookups.set(key, found)
    }
    return found
  }

  const bypass: Bypass | null = await findBypass(ip, req, policy, {
    resolver: ctx.resolver,
    now: ctx.now,
    checkDomain: (domain, timeMs) => lookup(domain, `postmaster@${domain}`, domain, timeMs),
  })
  if (bypass) {
    const header = skippedHeader(BYPASS_COMMENT[bypass.list], config.Header_Type === 'AR' ? 'AR' : 'SPF', ctx.authservId, headerFacts(e, req.clientAddress, req.helo.toLowerCase(), sender))
    return { action: 'prepend', text: header, reason: bypass.list, fields: { spf_bypass: `${bypass.list}:${bypass.entry}` } }
  }
  if (sender === '' && helo === '') return { action: 'dunno', text: '', reason: 'no-sender-no-helo', fields: {} }

  // Without a HELO name, policyd-spf checks the sender's domain in its place.
  const heloName = helo || domainOf(sender) || 'unknown'
  const lookupMs = config.Lookup_Time * 1000
  const facts = headerFacts(e, ip.text, heloName, sender)
  const fields: Record<string, string> = {}

  const header = (identity: 'helo' | 'mailfrom', r: SpfResult, checked: string): string => {
    const explanation = explanationOf(r.result, r)
    if (config.Header_Type === 'AR') return authenticationResults(ctx.authservId, r.result, explanation, identity, checked, facts)
    return receivedSpf(r.result, identity === 'mailfrom' ? 'mailfrom' : explanation, identity, facts)
  }
  const refuse = (scope: 'helo' | 'mailfrom', r: SpfResult, action: 'reject' | 'defer', local: boolean, id: string): SpfOutcome => {
    const byLocalPolicy = local && ['fail', 'softfail', 'neutral'].includes(r.result)
    const spf = byLocalPolicy ? `Receiver policy for SPF ${resultWord(r.result)}` : explanationOf(r.result, r)
    const isError = r.result === 'permerror' || r.result === 'temperror'
    const code = action === 'reject'
      ? (policy.enhancedCodes ? (isError ? '550 5.7.24' : '550 5.7.23') : '550')
      : (policy.enhancedCodes ? 'DEFER_IF_PERMIT 4.7.24' : 'DEFER_IF_PERMIT')
    const text = reasonMessage(policy.reasonMessage, {
      rejectdefer: action === 'reject' ? 'rejected' : 'deferred',
      spf,
      // The address as Postfix gave it, as policyd-spf writes it.
      url: whyUrl(scope === 'helo' ? 'helo' : 'mfrom', id, ipText.trim(), facts.receiver),
    })
    return { action, text: `${code} ${text}`, reason: `${scope}-${r.result}${byLocalPolicy ? '-receiver-policy' : ''}`, fields }
  }

  const mailDomain = domainOf(sender) || sender
  const checksMailFrom = sender !== '' && policy.mailFromReject !== 'No_Check'
  // Ask for the sender's record while the HELO check waits for its own answers.
  if (checksMailFrom && policy.heloReject !== 'No_Check' && mailDomain !== heloName) void ctx.resolver.query(mailDomain, 'TXT').catch(() => undefined)

  let heloResult: SpfResult | null = null
  if (policy.heloReject !== 'No_Check') {
    heloResult = await lookup(heloName, `postmaster@${heloName}`, heloName, lookupMs)
    fields.spf_helo = heloResult.result
    let { action, local } = actionFor('helo', heloResult, policy, heloName)
    if (policy.heloReject === 'Null' && sender !== '') action = 'prepend'
    if (action === 'reject' && policy.noMail && !isNoMailRecord(heloResult.record)) action = 'prepend'
    if (action !== 'prepend') return refuse('helo', heloResult, action, local, heloName)
  }

  const heloPass = (): SpfOutcome | null =>
    heloResult?.result === 'pass' && policy.heloPassRestriction !== ''
      ? { action: 'restriction', text: policy.heloPassRestriction, reason: 'helo-pass-restriction', fields }
      : null

  if (!checksMailFrom) {
    if (!heloResult) return { action: 'dunno', text: '', reason: 'no-identity-checked', fields }
    return heloPass() ?? { action: 'prepend', text: header('helo', heloResult, heloName), reason: `helo-${heloResult.result}`, fields }
  }

  const domain = mailDomain
  const mailFrom = await lookup(domain, sender, heloName, lookupMs)
  fields.spf_mailfrom = mailFrom.result
  let { action, local } = actionFor('mailfrom', mailFrom, policy, domain)
  if (action === 'reject' && policy.noMail && !isNoMailRecord(mailFrom.record)) action = 'prepend'
  if (action !== 'prepend') return refuse('mailfrom', mailFrom, action, local, sender)

  const authenticated = mailFrom.result === 'pass' && !mailFrom.broad && config.Prospective === '' ? domain : undefined
  if (mailFrom.result === 'pass' && mailFrom.broad) fields.spf_broad = mailFrom.mechanism ?? 'yes'
  const outcome: SpfOutcome =
    mailFrom.result === 'pass' && policy.mailFromPassRestriction !== ''
      ? { action: 'restriction', text: policy.mailFromPassRestriction, reason: 'mailfrom-pass-restriction', fields }
      : heloPass() ?? { action: 'prepend', text: header('mailfrom', mailFrom, domain), reason: `mailfrom-${mailFrom.result}`, fields }
  outcome.authenticatedDomain = authenticated
  return outcome
}

/** The SPF verdict of one request. */
export async function checkSpf(req: PolicyRequest, ctx: SpfContext): Promise<SpfCheck> {
  const pass = (reason: string, fields?: Record<string, string>): SpfCheck => ({ verdict: { check: 'spf', severity: 'dunno', reason, fields } })
  if (!CHECKED_STATES.has(req.protocolState)) return pass('not-checked-in-this-state')

  let msg = req.instance === '' ? undefined : ctx.messages.get(req.instance)
  if (!msg) {
    msg = { lookups: new Map(), headerGiven: false }
    if (req.instance !== '') ctx.messages.set(req.instance, msg)
  }
  const special = req.recipient === '' ? null : (ctx.perUser?.policyFor(req.recipient) ?? null)
  let outcome: SpfOutcome
  if (special) {
    outcome = await evaluate({ req, policy: special, ctx, msg })
    outcome.fields = { ...outcome.fields, spf_per_user: 'yes' }
  } else {
    outcome = msg.outcome ??= await evaluate({ req, policy: ctx.policy, ctx, msg })
  }
  const policy = special ?? ctx.policy
  const { config } = ctx
  const fields = outcome.fields
  const authenticatedDomain = config.greylist_spf_key ? outcome.authenticatedDomain : undefined

  if (policy.dryRun && (outcome.action === 'reject' || outcome.action === 'defer' || outcome.action === 'restriction')) {
    return { verdict: { check: 'spf', severity: 'dunno', reason: `test-only-would-${outcome.action}:${outcome.reason}`, fields }, authenticatedDomain }
  }
  switch (outcome.action) {
    case 'reject':
    case 'defer':
      return { verdict: { check: 'spf', severity: outcome.action, action: outcome.text, reason: outcome.reason, fields }, authenticatedDomain }
    case 'restriction':
      return { verdict: { check: 'spf', severity: 'restriction', action: outcome.text, reason: outcome.reason, fields }, authenticatedDomain }
    case 'dunno':
      return { verdict: { check: 'spf', severity: 'dunno', reason: outcome.reason, fields }, authenticatedDomain }
    case 'prepend': {
      if (config.Prospective !== '') return { verdict: { check: 'spf', severity: 'dunno', reason: `${outcome.reason}-prospective`, fields }, authenticatedDomain }
      if (config.Header_Type === 'None') return { verdict: { check: 'spf', severity: 'dunno', reason: `${outcome.reason}-no-header`, fields }, authenticatedDomain }
      if (msg.headerGiven) return { verdict: { check: 'spf', severity: 'dunno', reason: `${outcome.reason}-header-given`, fields }, authenticatedDomain }
      msg.headerGiven = true
      return { verdict: { check: 'spf', severity: 'prepend', headers: [outcome.text], reason: outcome.reason, fields }, authenticatedDomain }
    }
  }
}
