// Parsing of one SPF record (RFC 7208 §4.5-§4.6, §5, §6). The whole record
// is parsed before anything is evaluated: a syntax error anywhere makes the
// result permerror, whatever an earlier mechanism would have matched.

import { maskIp, parseCidr, parseIp, type Cidr, type ParsedIp } from '../normalize'

export type Qualifier = '+' | '-' | '~' | '?'
export type MechanismName = 'all' | 'include' | 'a' | 'mx' | 'ptr' | 'ip4' | 'ip6' | 'exists'

export interface Mechanism {
  qualifier: Qualifier
  name: MechanismName
  /** The domain-spec (unexpanded) for include/a/mx/ptr/exists; the address for ip4/ip6. */
  target?: string
  cidr4?: number
  cidr6?: number
  /** ip4/ip6: the network, masked, parsed once. */
  net?: Cidr
  text: string
}

export interface SpfRecord {
  mechanisms: Mechanism[]
  redirect?: string
  exp?: string
}

export class SpfSyntaxError extends Error {}

const VERSION = /^v=spf1( |$)/i

/** True for the text of an SPF version 1 record (§4.5). */
export function isSpfRecord(text: string): boolean {
  return VERSION.test(text)
}

/** A macro-string (§7.1): literal characters 0x21-0x7e and well-formed macros. */
export function checkMacroString(text: string, allowExpOnly = false): void {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c < 0x21 || c > 0x7e) throw new SpfSyntaxError(`invalid character in ${JSON.stringify(text)}`)
    if (text[i] !== '%') continue
    const next = text[i + 1]
    if (next === '%' || next === '_' || next === '-') {
      i++
      continue
    }
    if (next !== '{') throw new SpfSyntaxError(`bad macro in ${JSON.stringify(text)}`)
    const end = text.indexOf('}', i)
    if (end === -1) throw new SpfSyntaxError(`unterminated macro in ${JSON.stringify(text)}`)
    const body = text.slice(i + 2, end)
    const letters = allowExpOnly ? 'slodiphvcrtSLODIPHVCRT' : 'slodiphvSLODIPHV'
    if (!new RegExp(`^[${letters}]\\d*r?[.\\-+,/_=]*$`, 'i').test(body) || !letters.includes(body[0])) {
      throw new SpfSyntaxError(`bad macro %{${body}}`)
    }
    i = end
  }
}

/** A domain-spec (§7.1): a macro-string that ends in a top label or a macro. */
export function checkDomainSpec(spec: string): void {
  if (spec === '') throw new SpfSyntaxError('empty domain-spec')
  checkMacroString(spec)
  if (spec.endsWith('}')) return
  const trimmed = spec.endsWith('.') ? spec.slice(0, -1) : spec
  const labels = trimmed.split('.')
  const top = labels[labels.length - 1]
  // The domain-end must be "." toplabel: a bare word (no dot) is not one.
  if (labels.length < 2 && !/%\{/.test(spec)) throw new SpfSyntaxError(`domain-spec ${JSON.stringify(spec)} has no top label`)
  if (!/^(?=.*[A-Za-z])[A-Za-z0-9]+$|^[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]$/.test(top)) {
    throw new SpfSyntaxError(`domain-spec ${JSON.stringify(spec)} has an invalid top label`)
  }
}

function cidrLength(text: string, max: number): number {
  if (!/^(0|[1-9]\d{0,2})$/.test(text)) throw new SpfSyntaxError(`bad CIDR length /${text}`)
  const n = Number(text)
  if (n > max) throw new SpfSyntaxError(`CIDR length /${text} out of range`)
  return n
}

/** Split a/mx argument `domain/24//64` into domain-spec and lengths. */
function splitDualCidr(arg: string): { spec: string | undefined; cidr4?: number; cidr6?: number } {
  const m = /^(.*?)(?:\/(\d+))?(?:\/\/(\d+))?$/.exec(arg)!
  const spec = m[1] === '' ? undefined : m[1]
  return {
    spec,
    cidr4: m[2] !== undefined ? cidrLength(m[2], 32) : undefined,
    cidr6: m[3] !== undefined ? cidrLength(m[3], 128) : undefined,
  }
}

/**
 * The network of an ip6 mechanism. An IPv4-mapped address (`::ffff:192.0.2.1`)
 * comes parsed as IPv4, as a mapped client does (RFC 4291 §2.5.5.2): a network
 * inside the mapped range (/96 or longer) is that IPv4 network and matches
 * those IPv4 clients; a shorter one is an IPv6 network like any other.
 */
function ip6Network(ip: ParsedIp, cidr6: number): Cidr {
  if (ip.family === 6) return { net: maskIp(ip, cidr6), prefix: cidr6 }
  if (cidr6 >= 96) return { net: maskIp(ip, cidr6 - 96), prefix: cidr6 - 96 }
  const bytes = new Uint8Array(16)
  bytes.set([0xff, 0xff], 10)
  bytes.set(ip.bytes, 12)
  return { net: maskIp({ family: 6, bytes, text: '' }, cidr6), prefix: cidr6 }
}

const IP4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/

/** Records seen by this process, parsed: the same few records come with most mail. */
const parsed = new Map<string, SpfRecord | SpfSyntaxError>()
const PARSED_MAX = 512

/** parseRecord(), remembered per record text (a syntax error is remembered and thrown again). */
export function parseRecordOnce(text: string): SpfRecord {
  let r = parsed.get(text)
  if (r === undefined) {
    try {
      r = parseRecord(text)
    } catch (err) {
      if (!(err instanceof SpfSyntaxError)) throw err
      r = err
    }
    if (parsed.size >= PARSED_MAX) parsed.delete(parsed.keys().next().value as string)
    parsed.set(text, r)
  }
  if (r instanceof SpfSyntaxError) throw r
  return r
}

export function parseRecord(text: string): SpfRecord {
  if (!VERSION.test(text)) throw new SpfSyntaxError('not an SPF record')
  const record: SpfRecord = { mechanisms: [] }
  const terms = text.slice(6).split(' ').filter((t) => t !== '')
  for (const term of terms) {
    const eq = /^([A-Za-z][A-Za-z0-9\-_.]*)=/.exec(term)
    if (eq) {
      const name = eq[1].toLowerCase()
      const value = term.slice(eq[0].length)
      if (name === 'redirect' || name === 'exp') {
        if (record[name] !== undefined) throw new SpfSyntaxError(`${name}= given twice`)
        checkDomainSpec(value)
        record[name] = value
      } else {
        // An unknown modifier: its name already matched the pattern above.
        checkMacroString(value)
      }
      continue
    }
    record.mechanisms.push(parseMechanism(term))
  }
  return record
}

function parseMechanism(term: string): Mechanism {
  let qualifier: Qualifier = '+'
  let rest = term
  if ('+-~?'.includes(rest[0])) {
    qualifier = rest[0] as Qualifier
    rest = rest.slice(1)
  }
  const m = /^([A-Za-z][A-Za-z0-9\-_.]*)(.*)$/.exec(rest)
  if (!m) throw new SpfSyntaxError(`bad term ${JSON.stringify(term)}`)
  const name = m[1].toLowerCase()
  const arg = m[2]
  const base = { qualifier, text: term }
  switch (name) {
    case 'all':
      if (arg !== '') throw new SpfSyntaxError(`bad term ${term}`)
      return { ...base, name }
    case 'include':
    case 'exists': {
      if (!arg.startsWith(':')) throw new SpfSyntaxError(`${name} needs a domain: ${term}`)
      const target = arg.slice(1)
      checkDomainSpec(target)
      return { ...base, name, target }
    }
    case 'a':
    case 'mx': {
      if (arg !== '' && !arg.startsWith(':') && !arg.startsWith('/')) throw new SpfSyntaxError(`bad term ${term}`)
      const { spec, cidr4, cidr6 } = splitDualCidr(arg.startsWith(':') ? arg.slice(1) : arg)
      if (arg.startsWith(':') && spec === undefined) throw new SpfSyntaxError(`empty domain in ${term}`)
      if (spec !== undefined) checkDomainSpec(spec)
      return { ...base, name, target: spec, cidr4, cidr6 }
    }
    case 'ptr': {
      if (arg !== '' && !arg.startsWith(':')) throw new SpfSyntaxError(`bad term ${term}`)
      const target = arg === '' ? undefined : arg.slice(1)
      if (target !== undefined) checkDomainSpec(target)
      return { ...base, name, target }
    }
    case 'ip4': {
      const mm = /^:([^/]*)(?:\/(.*))?$/.exec(arg)
      if (!mm || !IP4.test(mm[1])) throw new SpfSyntaxError(`bad ip4 in ${term}`)
      const cidr4 = mm[2] !== undefined ? cidrLength(mm[2], 32) : 32
      return { ...base, name, target: mm[1], cidr4, net: parseCidr(`${mm[1]}/${cidr4}`) ?? undefined }
    }
    case 'ip6': {
      const mm = /^:([0-9A-Fa-f:.]+)(?:\/(.*))?$/.exec(arg)
      const ip = mm && mm[1].includes(':') ? parseIp(mm[1]) : null
      if (!mm || !ip) throw new SpfSyntaxError(`bad ip6 in ${term}`)
      const cidr6 = mm[2] !== undefined ? cidrLength(mm[2], 128) : 128
      return { ...base, name, target: mm[1], cidr6, net: ip6Network(ip, cidr6) }
    }
    default:
      throw new SpfSyntaxError(`unknown mechanism ${name}`)
  }
}
