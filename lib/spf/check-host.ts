// RFC 7208 check_host(): the result of an SPF check for one identity.

import type { DnsAnswer, Resolver, RrType } from '../dns/resolver'
import { addressToALabels, domainToALabels, ipInNetwork, maskIp, parseIp, type ParsedIp } from '../normalize'
import { expandMacros, truncateDomain, type MacroContext } from './macro'
import { isSpfRecord, parseRecordOnce, SpfSyntaxError, type Mechanism, type Qualifier, type SpfRecord } from './record'

export type SpfResultCode = 'pass' | 'fail' | 'softfail' | 'neutral' | 'none' | 'permerror' | 'temperror'

export interface SpfResult {
  result: SpfResultCode
  /** For fail: the domain's exp= text (expanded) or the default explanation. */
  explanation?: string
  /** Why, in a few words, for logs and headers. */
  reason: string
  mechanism?: string
  domain: string
  /** The record of the checked domain itself, when it had one (No_Mail compares it). */
  record?: string
  /**
   * For pass: the mechanism that matched authorises (nearly) every address:
   * `all`, an ip4/a/mx network shorter than /8, an ip6 one shorter than /16,
   * or an `exists` whose name does not depend on the client address. Such a
   * pass says nothing about who sent the mail.
   */
  broad?: boolean
}

export interface CheckHostInput {
  ip: string
  domain: string
  sender: string
  helo: string
}

export interface CheckHostContext {
  resolver: Resolver
  /** Total time budget of one check, milliseconds. */
  lookupTimeMs?: number
  voidLimit?: number
  dnsLimit?: number
  receiver?: string
  /** Epoch milliseconds. */
  now?: () => number
}

export const DEFAULT_EXPLANATION = 'DEFAULT'

const QUALIFIER_RESULT: Record<Qualifier, SpfResultCode> = { '+': 'pass', '-': 'fail', '~': 'softfail', '?': 'neutral' }

class Outcome extends Error {
  constructor(
    readonly result: SpfResultCode,
    readonly reason: string,
  ) {
    super(reason)
  }
}

interface State {
  ip: ParsedIp
  sender: string
  helo: string
  receiver: string
  resolver: Resolver
  deadline: number
  now: () => number
  dnsTerms: number
  voids: number
  dnsLimit: number
  voidLimit: number
  validated?: Promise<string>
  upperHex: boolean
  /** The last mechanism that matched outside include:, for `broad`. */
  lastMatch?: Mechanism
  topRecord?: string
}

/** §4.3: a domain that cannot be checked gives none. */
function isCheckableDomain(domain: string): boolean {
  const d = domain.replace(/\.$/, '')
  if (d === '' || d.length > 253 || d.startsWith('[')) return false
  const labels = d.split('.')
  if (labels.length < 2) return false
  return labels.every((l) => l.length > 0 && l.length <= 63)
}

export async function checkHost(input: CheckHostInput, ctx: CheckHostContext): Promise<SpfResult> {
  const now = ctx.now ?? Date.now
  const ip = parseIp(input.ip)
  const given = input.domain.replace(/\.$/, '')
  if (!ip) return { result: 'permerror', reason: `bad client address ${input.ip}`, domain: given }
  // §4.3: an internationalised name is looked up by its A-labels; one without them cannot be checked.
  const domain = domainToALabels(given)
  if (domain === null || !isCheckableDomain(domain)) return { result: 'none', reason: `no checkable domain in ${JSON.stringify(input.domain)}`, domain: domain ?? given }
  const at = input.sender.lastIndexOf('@')
  const sender = addressToALabels(at === -1 ? `postmaster@${input.sender}` : at === 0 ? `postmaster${input.sender}` : input.sender)
  const state: State = {
    ip,
    sender,
    helo: domainToALabels(input.helo) ?? input.helo,
    receiver: ctx.receiver ?? 'unknown',
    resolver: ctx.resolver,
    deadline: now() + (ctx.lookupTimeMs ?? 20000),
    now,
    dnsTerms: 0,
    voids: 0,
    dnsLimit: ctx.dnsLimit ?? 10,
    voidLimit: ctx.voidLimit ?? 2,
    upperHex: /[A-F]/.test(input.ip),
  }
  try {
    const r = await evaluate(domain, state, 0)
    if (r.result === 'pass') r.broad = state.lastMatch === undefined || isBroad(state.lastMatch, state.ip.family)
    return withRecord(r, state)
  } catch (err) {
    if (err instanceof Outcome) return withRecord({ result: err.result, reason: err.reason, domain }, state)
    if (err instanceof SpfSyntaxError) return withRecord({ result: 'permerror', reason: err.message, domain }, state)
    throw err
  }
}

function withRecord(r: SpfResult, state: State): SpfResult {
  if (state.topRecord !== undefined) r.record = state.topRecord
  return r
}

/** Networks shorter than these authorise (nearly) the whole address space of their family. */
const NARROWEST_BROAD = { 4: 8, 6: 16 } as const

function isBroad(mech: Mechanism, family: 4 | 6): boolean {
  switch (mech.name) {
    case 'all':
      return true
    case 'ip4':
    case 'ip6':
      // The network that matched: an IPv4-mapped ip6 one is IPv4 with its prefix counted in IPv4 bits.
      return mech.net !== undefined && mech.net.prefix < NARROWEST_BROAD[mech.net.net.family]
    case 'a':
    case 'mx':
      return family === 4 ? (mech.cidr4 ?? 32) < NARROWEST_BROAD[4] : (mech.cidr6 ?? 128) < NARROWEST_BROAD[6]
    case 'exists':
      return !/%\{[ip]/i.test(mech.target ?? '')
    default:
      return false
  }
}

async function query(state: State, name: string, type: RrType): Promise<DnsAnswer> {
  const left = state.deadline - state.now()
  if (left <= 0) throw new Outcome('temperror', 'lookup time limit exceeded')
  // A cached answer needs no timer and no race.
  const cached = state.resolver.cached(name, type)
  if (cached) return cached
  let timer: NodeJS.Timeout | undefined
  const answer = await Promise.race([
    state.resolver.query(name, type),
    new Promise<DnsAnswer>((resolve) => {
      timer = setTimeout(() => resolve({ rcode: 'TIMEOUT', records: [], mx: [] }), left)
    }),
  ]).finally(() => clearTimeout(timer))
  return answer
}

function isDnsError(a: DnsAnswer): boolean {
  return a.rcode === 'SERVFAIL' || a.rcode === 'TIMEOUT' || a.rcode === 'REFUSED' || a.rcode === 'ERROR'
}

/** A query made for a mechanism or modifier: DNS errors are temperror, empty answers count as void lookups. */
async function termQuery(state: State, name: string, type: RrType): Promise<DnsAnswer> {
  const a = await query(state, name, type)
  if (a.rcode === 'ERROR' && !/^[^.]+(\.[^.]+)+$/.test(name)) return { rcode: 'NXDOMAIN', records: [], mx: [] }
  if (isDnsError(a)) throw new Outcome('temperror', `DNS ${a.rcode.toLowerCase()} for ${name} ${type}`)
  if (a.records.length === 0 && a.mx.length === 0) {
    state.voids++
    if (state.voids > state.voidLimit) throw new Outcome('permerror', `more than ${state.voidLimit} void DNS lookups`)
  }
  return a
}

function countDnsTerm(state: State): void {
  state.dnsTerms++
  if (state.dnsTerms > state.dnsLimit) throw new Outcome('permerror', `more than ${state.dnsLimit} DNS-querying terms`)
}

async function fetchRecord(domain: string, state: State): Promise<SpfRecord | null> {
  const a = await query(state, domain, 'TXT')
  if (a.rcode === 'ERROR') return null
  if (isDnsError(a)) throw new Outcome('temperror', `DNS ${a.rcode.toLowerCase()} for ${domain} TXT`)
  const records = a.records.filter(isSpfRecord)
  if (records.length === 0) return null
  if (records.length > 1) throw new Outcome('permerror', `${domain} has more than one SPF record`)
  state.topRecord ??= records[0]
  return parseRecordOnce(records[0])
}

function macroContext(domain: string, state: State): MacroContext {
  return {
    sender: state.sender,
    domain,
    ip: state.ip,
    helo: state.helo,
    receiver: state.receiver,
    now: state.now() / 1000,
    upperHex: state.upperHex,
    validatedName: () => (state.validated ??= validatedName(domain, state)),
  }
}

async function expandDomain(spec: string | undefined, domain: string, state: State): Promise<string> {
  if (spec === undefined) return domain
  const name = (await expandMacros(spec, macroContext(domain, state))).replace(/\.$/, '')
  // A macro can bring non-ASCII (a local part, say) into the name: A-labels, or no checkable name at all.
  return truncateDomain(domainToALabels(name) ?? '')
}

async function evaluate(domain: string, state: State, depth: number): Promise<SpfResult> {
  const record = await fetchRecord(domain, state)
  if (!record) return { result: 'none', reason: `no SPF record for ${domain}`, domain }
  for (const mech of record.mechanisms) {
    if (await matches(mech, domain, state, depth)) {
      if (mech.name !== 'include') state.lastMatch = mech
      const result = QUALIFIER_RESULT[mech.qualifier]
      const out: SpfResult = { result, reason: `mechanism ${mech.text} matched`, mechanism: mech.text, domain }
      if (result === 'fail') out.explanation = await explain(record, domain, state)
      return out
    }
  }
  if (record.redirect !== undefined) {
    countDnsTerm(state)
    const target = await expandDomain(record.redirect, domain, state)
    if (!isCheckableDomain(target)) throw new Outcome('permerror', `redirect to an invalid domain ${target}`)
    const r = await evaluate(target, state, depth + 1)
    if (r.result === 'none') throw new Outcome('permerror', `redirect target ${target} has no SPF record`)
    return r
  }
  return { result: 'neutral', reason: 'no mechanism matched', domain }
}

async function addressesOf(name: string, state: State, v6: boolean, count: boolean): Promise<string[]> {
  const a = count ? await termQuery(state, name, v6 ? 'AAAA' : 'A') : await query(state, name, v6 ? 'AAAA' : 'A')
  if (!count && isDnsError(a)) throw new Outcome('temperror', `DNS ${a.rcode.toLowerCase()} for ${name}`)
  return a.records
}

function inNet(ip: ParsedIp, addr: string, mech: Mechanism): boolean {
  const net = parseIp(addr)
  if (!net || net.family !== ip.family) return false
  const prefix = ip.family === 4 ? (mech.cidr4 ?? 32) : (mech.cidr6 ?? 128)
  return ipInNetwork(ip, { net: maskIp(net, prefix), prefix })
}

async function matches(mech: Mechanism, domain: string, state: State, depth: number): Promise<boolean> {
  const v6 = state.ip.family === 6
  switch (mech.name) {
    case 'all':
      return true
    case 'ip4':
      return state.ip.family === 4 && mech.net !== undefined && ipInNetwork(state.ip, mech.net)
    case 'ip6':
      // An IPv4-mapped ip6 network is an IPv4 one (record.ts): each matches clients of its own family only.
      return mech.net !== undefined && ipInNetwork(state.ip, mech.net)
    case 'a': {
      countDnsTerm(state)
      const target = await expandDomain(mech.target, domain, state)
      if (!isCheckableDomain(target)) return false
      const addrs = await addressesOf(target, state, v6, true)
      return addrs.some((addr) => inNet(state.ip, addr, mech))
    }
    case 'mx': {
      countDnsTerm(state)
      const target = await expandDomain(mech.target, domain, state)
      if (!isCheckableDomain(target)) return false
      const a = await termQuery(state, target, 'MX')
      if (a.mx.length > 10) throw new Outcome('permerror', `more than 10 MX records for ${target}`)
      for (const mx of a.mx) {
        const addrs = await addressesOf(mx.exchange, state, v6, true)
        if (addrs.some((addr) => inNet(state.ip, addr, mech))) return true
      }
      return false
    }
    case 'ptr': {
      countDnsTerm(state)
      const target = (await expandDomain(mech.target, domain, state)).toLowerCase()
      const names = await validatedNames(state, true)
      return names.some((n) => n === target || n.endsWith(`.${target}`))
    }
    case 'exists': {
      countDnsTerm(state)
      const target = await expandDomain(mech.target, domain, state)
      if (!isCheckableDomain(target)) return false
      const a = await termQuery(state, target, 'A')
      return a.records.length > 0
    }
    case 'include': {
      countDnsTerm(state)
      const target = await expandDomain(mech.target, domain, state)
      if (!isCheckableDomain(target)) throw new Outcome('permerror', `include of an invalid domain ${target}`)
      const r = await evaluate(target, state, depth + 1)
      if (r.result === 'pass') return true
      if (r.result === 'temperror') throw new Outcome('temperror', r.reason)
      if (r.result === 'permerror' || r.result === 'none') throw new Outcome('permerror', `include:${target}: ${r.reason}`)
      return false
    }
  }
}

/** The in-addr.arpa / ip6.arpa name of an address, for its PTR records. */
export function reverseName(ip: ParsedIp): string {
  if (ip.family === 4) return `${Array.from(ip.bytes).reverse().join('.')}.in-addr.arpa`
  const nibbles: string[] = []
  for (const b of ip.bytes) nibbles.push((b >> 4).toString(16), (b & 15).toString(16))
  return `${nibbles.reverse().join('.')}.ip6.arpa`
}

/** Names of the IP whose forward lookup gives the IP back (§5.5); at most 10 PTR names are tried. */
async function validatedNames(state: State, countVoid: boolean): Promise<string[]> {
  const ptr = countVoid ? await query(state, reverseName(state.ip), 'PTR') : await query(state, reverseName(state.ip), 'PTR')
  if (isDnsError(ptr)) return []
  if (ptr.records.length === 0 && countVoid) {
    state.voids++
    if (state.voids > state.voidLimit) throw new Outcome('permerror', `more than ${state.voidLimit} void DNS lookups`)
  }
  const out: string[] = []
  for (const name of ptr.records.slice(0, 10)) {
    const n = name.replace(/\.$/, '').toLowerCase()
    const a = await query(state, n, state.ip.family === 6 ? 'AAAA' : 'A')
    if (isDnsError(a)) continue
    if (a.records.some((addr) => parseIp(addr)?.text === state.ip.text)) out.push(n)
  }
  return out
}

async function validatedName(domain: string, state: State): Promise<string> {
  try {
    const names = await validatedNames(state, false)
    const d = domain.toLowerCase()
    return names.find((n) => n === d) ?? names.find((n) => n.endsWith(`.${d}`)) ?? names[0] ?? 'unknown'
  } catch {
    return 'unknown'
  }
}

/** §6.2: the explanation of a fail; any problem just means the default one. */
async function explain(record: SpfRecord, domain: string, state: State): Promise<string> {
  if (record.exp === undefined) return DEFAULT_EXPLANATION
  try {
    const target = await expandDomain(record.exp, domain, state)
    if (!isCheckableDomain(target)) return DEFAULT_EXPLANATION
    const a = await query(state, target, 'TXT')
    if (a.records.length !== 1) return DEFAULT_EXPLANATION
    const text = a.records[0]
    // eslint-disable-next-line no-control-regex
    if (/[^\x20-\x7e]/.test(text)) return DEFAULT_EXPLANATION
    const explanation = await expandMacros(text, macroContext(domain, state), true)
    // An empty text explains nothing: the default one does, as in pyspf.
    return explanation.trim() === '' ? DEFAULT_EXPLANATION : explanation
  } catch {
    return DEFAULT_EXPLANATION
  }
}
