// The greylist check: whitelists, the triplet key, the store round trip and
// the verdict. How the state evolves is in ./triplet; SQL is in ../store.

import type { Config } from '../config'
import type { BoundedMap } from '../bounded-map'
import { clientNetwork, domainOf, normalizeRecipient, normalizeSender, type ParsedIp } from '../normalize'
import type { PolicyRequest } from '../request'
import type { GreylistStore } from '../store/types'
import type { Verdict } from '../verdict'
import { evaluateTriplet, TOUCH_INTERVAL, type GreylistParams } from './triplet'

export interface GreylistWhitelists {
  matchClient(clientName: string, ip: ParsedIp | null): string | null
  matchRecipient(recipient: string): string | null
}

export interface GreylistContext {
  config: Config
  store: GreylistStore
  whitelists: GreylistWhitelists
  /** Instances (messages) that already got the X-Greylist header. */
  headerSent: BoundedMap<string, true>
  /**
   * Triplets (and auto-whitelisted clients, as `client <key>`) this process
   * found passed, with when: for TOUCH_INTERVAL a repeat is answered from
   * here, without the database (which would not write it back either).
   */
  recentPasses?: BoundedMap<string, number>
  /** The package version, for the header; read only when a header is written. */
  version: () => string
  hostname: string
  log: (level: number, msg: string) => void
  logStateChange: (topic: string, state: string, level: number, msg: string) => void
}

export interface GreylistKeys {
  triplet: string
  client: string
  /** What the key was built from, for the log. */
  subject: string
}

/** The store keys of a request: (client network or SPF-authenticated domain, normalised sender, recipient). */
export function greylistKeys(req: PolicyRequest, ip: ParsedIp, config: Config, authenticatedDomain?: string): GreylistKeys {
  const network = clientNetwork(ip, config.greylist_ipv4_prefix, config.greylist_ipv6_prefix)
  const subject = authenticatedDomain ? `spf:${authenticatedDomain}` : network
  const sender = normalizeSender(req.sender) || '<>'
  const triplet = `${subject}/${sender}/${normalizeRecipient(req.recipient)}`
  const client = subject
  if (!config.greylist_privacy) return { triplet, client, subject }
  return { triplet: sha256(triplet), client: sha256(client), subject }
}

/**
 * The keys under which `policyd-ts greylist whitelist` stores its entries
 * for this request: the client address and the network it is greylisted
 * by, the normalised sender and the recipient ("kind<TAB>value"; kept in
 * clear also with greylist_privacy: the admin wrote them).
 */
export function storeWhitelistKeys(req: PolicyRequest, ip: ParsedIp, config: Config): string[] {
  return [
    whitelistKey('client', hostNetwork(ip)),
    whitelistKey('client', clientNetwork(ip, config.greylist_ipv4_prefix, config.greylist_ipv6_prefix)),
    whitelistKey('sender', normalizeSender(req.sender) || '<>'),
    whitelistKey('recipient', normalizeRecipient(req.recipient)),
  ]
}

export type WhitelistKind = 'client' | 'sender' | 'recipient'

export function whitelistKey(kind: WhitelistKind, value: string): string {
  return `${kind}\t${value}`
}

/** The client address alone, written as clientNetwork writes a network of one address (no /32, /128). */
function hostNetwork(ip: ParsedIp): string {
  return clientNetwork(ip, 32, 128)
}

function sha256(text: string): string {
  const { createHash } = require('node:crypto') as typeof import('node:crypto')
  return createHash('sha256').update(text).digest('hex')
}

const paramsOf = new WeakMap<Config, GreylistParams>()

/** The state machine's parameters, made once per configuration. */
export function greylistParams(config: Config): GreylistParams {
  let params = paramsOf.get(config)
  if (params) return params
  params = {
    delay: config.greylist_delay,
    maxAge: config.greylist_max_age,
    retryWindow: config.greylist_retry_window,
    autoWhitelist: config.greylist_auto_whitelist,
    maxEntries: config.greylist_max_entries,
  }
  paramsOf.set(config, params)
  return params
}

function expand(template: string, values: Record<string, string>): string {
  return template.replace(/%([a-z%])/g, (whole, letter: string) => (letter === '%' ? '%' : (values[letter] ?? whole)))
}

/** RFC 5322 date in UTC, as mail headers carry it. */
export function rfc5322Date(seconds: number): string {
  const d = new Date(seconds * 1000)
  const day = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'][d.getUTCDay()]
  const month = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'][d.getUTCMonth()]
  const two = (n: number): string => String(n).padStart(2, '0')
  return `${day}, ${two(d.getUTCDate())} ${month} ${d.getUTCFullYear()} ${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())} +0000`
}

/**
 * The greylist verdict of one request. `authenticatedDomain`: the MAIL FROM
 * domain when it passed SPF (greylist_spf_key): the triplet is keyed by it
 * instead of the client network, so a sender pool is one client.
 */
export async function checkGreylist(req: PolicyRequest, ctx: GreylistContext, now: number, authenticatedDomain?: string): Promise<Verdict> {
  const { config } = ctx
  const pass = (reason: string, fields?: Record<string, string | number>): Verdict => ({ check: 'greylist', severity: 'dunno', reason, fields })
  if (req.protocolState !== 'RCPT') return pass('not-rcpt-stage')
  if (!req.clientIp) return pass('no-client-address')
  if (req.recipient === '') return pass('no-recipient')

  const clientEntry = ctx.whitelists.matchClient(req.clientName, req.clientIp)
  if (clientEntry) return pass('client-whitelist', { whitelist: clientEntry })
  const recipientEntry = ctx.whitelists.matchRecipient(req.recipient)
  if (recipientEntry) return pass('recipient-whitelist', { whitelist: recipientEntry })

  const ip = req.clientIp
  const keys = greylistKeys(req, ip, config, authenticatedDomain)
  const fields: Record<string, string | number> = { key: keys.subject }
  const recent = ctx.recentPasses
  if (recent) {
    const fresh = (at: number | undefined): boolean => at !== undefined && now >= at && now - at < TOUCH_INTERVAL
    if (fresh(recent.get(`client ${keys.client}`))) return pass('client-awl', fields)
    if (fresh(recent.get(keys.triplet))) return pass('triplet-known', fields)
  }
  const params = greylistParams(config)
  // A shared store's clock decides (view.now, task HC); the local one still dates the header and the memory of passes.
  const outcome = await ctx.store.updateGreylist(keys.triplet, keys.client, (view) => evaluateTriplet(view, view.now ?? now, params), () => storeWhitelistKeys(req, ip, config))
  // Only a request that used the store can tell that it works again.
  ctx.logStateChange('store', 'ok', 0, 'database available again')

  switch (outcome.kind) {
    case 'store-whitelisted':
      return pass('store-whitelist', { whitelist: outcome.entry.replace('\t', ':') })
    case 'auto-whitelisted':
      recent?.set(`client ${keys.client}`, now)
      return pass('client-awl', { ...fields, passes: outcome.passes })
    case 'known':
      recent?.set(keys.triplet, now)
      return pass('triplet-known', fields)
    case 'table-full':
      ctx.logStateChange('greylist-table', 'full', 0, `greylist table full (${outcome.entries} triplets, greylist_max_entries ${config.greylist_max_entries}): new triplets pass unrecorded until old ones expire`)
      return pass('table-full', fields)
    case 'new':
    case 'early': {
      const secondsLeft = Math.max(1, Math.ceil(outcome.secondsLeft))
      fields.left = secondsLeft
      if (config.greylist_learn_only) return pass(`${outcome.kind}-learn-only`, fields)
      const text = expand(config.greylist_text, { s: String(secondsLeft), r: domainOf(req.recipient) })
      return { check: 'greylist', severity: 'greylist', action: `${config.greylist_action} ${text}`, reason: outcome.kind, fields }
    }
    case 'first-pass': {
      recent?.set(keys.triplet, now)
      const delayed = Math.round(outcome.delayed)
      fields.delay = delayed
      if (outcome.clientWhitelisted) {
        ctx.log(1, `client ${keys.subject} auto-whitelisted after ${config.greylist_auto_whitelist} greylisting passes`)
      }
      // In learn-only mode nothing was delayed: no header claims it was.
      if (config.greylist_learn_only) return pass('first-pass-learn-only', fields)
      if (config.greylist_header === '' || (req.instance !== '' && ctx.headerSent.has(req.instance))) {
        return pass('first-pass', fields)
      }
      if (req.instance !== '') ctx.headerSent.set(req.instance, true)
      const header = expand(config.greylist_header, {
        t: String(delayed),
        v: ctx.version(),
        h: ctx.hostname,
        d: rfc5322Date(now),
      })
      return { check: 'greylist', severity: 'prepend', headers: [header], reason: 'first-pass', fields }
    }
  }
}
