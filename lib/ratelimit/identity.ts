// Who a request is counted as: its rate-limit identities, one per class that
// applies, each with its store key. The ops commands build keys with the
// same functions, so that `policyd-ts ratelimit show sasl:alice@example.org`
// finds what the check counted.

import { createHash } from 'node:crypto'
import type { Config } from '../config'
import { clientNetwork, ipInNetwork, normalizeSender, parseCidr, parseIp, type Cidr, type ParsedIp } from '../normalize'
import type { PolicyRequest } from '../request'
import type { RateClass } from './types'

export interface RateIdentity {
  cls: RateClass
  /** The store key: "class:value", the value a SHA-256 digest with greylist_privacy. */
  id: string
  /** "class:value" in clear, for the log and (without privacy) the reply. */
  name: string
  /** What overrides are matched on: the address for sasl and sender, the client address for client. */
  value: string
  ip?: ParsedIp
}

export type IdentityConfig = Pick<Config, 'ratelimit_networks' | 'ratelimit_ipv4_prefix' | 'ratelimit_ipv6_prefix' | 'greylist_privacy'>

export const GLOBAL_VALUE = '*'

/** The store key of a class and its (normalised) value. */
export function identityId(cls: RateClass, value: string, privacy: boolean): string {
  return `${cls}:${privacy ? createHash('sha256').update(value).digest('hex') : value}`
}

function identity(cls: RateClass, value: string, privacy: boolean, ip?: ParsedIp): RateIdentity {
  return { cls, id: identityId(cls, value, privacy), name: `${cls}:${value}`, value, ip }
}

/** The SASL user as counted: lower case (Dovecot and Cyrus logins are case-insensitive). */
export function saslValue(username: string): string {
  return username.trim().toLowerCase()
}

/**
 * The sender as counted: normalised as greylisting keys it; the null
 * sender per client address (`<>@192.0.2.7`), so that bounces from one
 * client share a counter but no bounce counts against every other.
 */
export function senderValue(sender: string, clientAddress: string): string {
  const normal = normalizeSender(sender)
  return normal === '' ? `<>@${clientAddress}` : normal
}

export function clientValue(ip: ParsedIp, config: Pick<Config, 'ratelimit_ipv4_prefix' | 'ratelimit_ipv6_prefix'>): string {
  return clientNetwork(ip, config.ratelimit_ipv4_prefix, config.ratelimit_ipv6_prefix)
}

/** Parsed ratelimit_networks, cached per configuration (the list is parsed once, not per request). */
const networksOf = new WeakMap<readonly string[], Cidr[]>()
function limitedNetworks(list: readonly string[]): Cidr[] {
  let nets = networksOf.get(list)
  if (!nets) networksOf.set(list, (nets = list.map((x) => parseCidr(x)).filter((x): x is Cidr => x !== null)))
  return nets
}

export function inLimitedNetworks(ip: ParsedIp | null, config: Pick<Config, 'ratelimit_networks'>): boolean {
  return ip !== null && limitedNetworks(config.ratelimit_networks).some((net) => ipInNetwork(ip, net))
}

/**
 * The identities of a request, in the order they are tested: the SASL user
 * when the client authenticated; otherwise, for clients inside
 * ratelimit_networks only, the sender and the client (outside them a
 * forged sender could use up a real user's limit); and the installation.
 */
export function requestIdentities(req: PolicyRequest, config: IdentityConfig): RateIdentity[] {
  const privacy = config.greylist_privacy
  const out: RateIdentity[] = []
  const sasl = saslValue(req.attrs.get('sasl_username') ?? '')
  if (sasl !== '') out.push(identity('sasl', sasl, privacy))
  else if (req.clientIp && inLimitedNetworks(req.clientIp, config)) {
    out.push(identity('sender', senderValue(req.sender, clientNetwork(req.clientIp, 32, 128)), privacy))
    out.push(identity('client', clientValue(req.clientIp, config), privacy, req.clientIp))
  }
  out.push(identity('global', GLOBAL_VALUE, privacy))
  return out
}

/**
 * A key as an admin writes it on the command line or in the override file:
 * `sasl:alice@example.org`, `sasl:@example.org` (every user of a domain),
 * `sender:bob@example.com`, `sender:@example.com`, `sender:<>`,
 * `client:192.0.2.7`, `client:192.0.2.0/24`, `global`. Comes back
 * normalised, with whether it names one identity (`exact`) or a group
 * (a domain, the null sender of any client, a network other than the one
 * clients are counted by); or why it is not a key.
 */
export interface ParsedKey {
  cls: RateClass
  /** Normalised: what an override is stored and matched under. */
  value: string
  /** The identity's store key when the key names exactly one counter. */
  id?: string
  /** For a client key: the network. */
  cidr?: Cidr
}

export function parseRateKey(text: string, config: IdentityConfig): { key: ParsedKey } | { error: string } {
  const raw = text.trim()
  if (raw.toLowerCase() === 'global' || raw.toLowerCase() === 'global:*') {
    return { key: { cls: 'global', value: GLOBAL_VALUE, id: identityId('global', GLOBAL_VALUE, config.greylist_privacy) } }
  }
  const colon = raw.indexOf(':')
  const cls = raw.slice(0, colon).toLowerCase()
  const value = raw.slice(colon + 1).trim()
  const bad = (why: string): { error: string } => ({ error: `${JSON.stringify(raw)}: ${why}` })
  if (colon === -1 || !['sasl', 'sender', 'client'].includes(cls)) return bad('a key is sasl:USER, sender:ADDRESS, sender:@DOMAIN, client:ADDRESS[/PREFIX] or global')
  if (value === '' || /[\s\0]/.test(value)) return bad('the value after the class is empty or has blanks')
  const privacy = config.greylist_privacy
  if (cls === 'sasl') {
    const v = saslValue(value)
    return { key: { cls, value: v, id: v.startsWith('@') ? undefined : identityId('sasl', v, privacy) } }
  }
  if (cls === 'sender') {
    if (value === '<>') return { key: { cls, value: '<>' } }
    if (/^<>@/.test(value)) {
      const ip = parseIp(value.slice(3))
      if (!ip) return bad('a null-sender key is sender:<> or sender:<>@CLIENT-ADDRESS')
      const v = `<>@${clientNetwork(ip, 32, 128)}`
      return { key: { cls, value: v, id: identityId('sender', v, privacy) } }
    }
    if (!/^[^@\s]*@[^@\s]+$/.test(value)) return bad('a sender key is an address (local@domain), @domain or <>')
    if (value.startsWith('@')) return { key: { cls, value: value.toLowerCase() } }
    const v = normalizeSender(value)
    return { key: { cls, value: v, id: identityId('sender', v, privacy) } }
  }
  const cidr = parseCidr(value)
  if (!cidr) return bad('a client key is an IP address or a network (a.b.c.d/n, x:y::/n)')
  const bits = cidr.net.bytes.length * 8
  const counted = cidr.net.family === 4 ? config.ratelimit_ipv4_prefix : config.ratelimit_ipv6_prefix
  const v = clientNetwork(cidr.net, cidr.prefix, cidr.prefix)
  // An address counted by its network, or that network itself, names one counter.
  const exact = cidr.prefix === counted || (cidr.prefix === bits && counted <= bits)
  const id = exact ? identityId('client', clientNetwork(cidr.net, counted, counted), privacy) : undefined
  return { key: { cls: 'client', value: v, id, cidr } }
}
