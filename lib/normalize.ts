// Addresses and IPs are normalised once, here, before anything is keyed on
// them. Pure functions; test/normalize.test.ts holds the got/want tables.

export interface ParsedIp {
  family: 4 | 6
  /** 4 or 16 bytes in network order. */
  bytes: Uint8Array
  /** Canonical text: dotted quad, or RFC 5952 compressed lower-case IPv6. */
  text: string
}

const V4_PART = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/

function parseV4(text: string): Uint8Array | null {
  const parts = text.split('.')
  if (parts.length !== 4) return null
  const bytes = new Uint8Array(4)
  for (let i = 0; i < 4; i++) {
    if (!V4_PART.test(parts[i])) return null
    bytes[i] = Number(parts[i])
  }
  return bytes
}

function parseV6(text: string): Uint8Array | null {
  if (!/^[0-9a-fA-F:.]+$/.test(text)) return null
  const halves = text.split('::')
  if (halves.length > 2) return null
  const groups = (s: string): number[] | null => {
    if (s === '') return []
    const out: number[] = []
    const items = s.split(':')
    for (let i = 0; i < items.length; i++) {
      const item = items[i]
      if (i === items.length - 1 && item.includes('.')) {
        const v4 = parseV4(item)
        if (!v4) return null
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3])
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(item)) return null
        out.push(parseInt(item, 16))
      }
    }
    return out
  }
  const head = groups(halves[0])
  const tail = halves.length === 2 ? groups(halves[1]) : []
  if (!head || !tail) return null
  // An embedded dotted quad is only allowed at the very end.
  if (halves.length === 2 && halves[0].includes('.')) return null
  let all: number[]
  if (halves.length === 2) {
    const missing = 8 - head.length - tail.length
    if (missing < 1) return null
    all = [...head, ...new Array<number>(missing).fill(0), ...tail]
  } else {
    if (head.length !== 8) return null
    all = head
  }
  const bytes = new Uint8Array(16)
  all.forEach((g, i) => {
    bytes[2 * i] = g >> 8
    bytes[2 * i + 1] = g & 0xff
  })
  return bytes
}

function formatV6(bytes: Uint8Array): string {
  const groups: number[] = []
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i] << 8) | bytes[i + 1])
  // RFC 5952: compress the longest run (the first when tied) of two or more zero groups.
  let bestStart = -1
  let bestLen = 0
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++
      continue
    }
    let j = i
    while (j < 8 && groups[j] === 0) j++
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i
      bestLen = j - i
    }
    i = j
  }
  const hex = groups.map((g) => g.toString(16))
  if (bestStart === -1) return hex.join(':')
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`
}

function v4(bytes: Uint8Array): ParsedIp {
  return { family: 4, bytes, text: `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}` }
}

/** Parse an IPv4 or IPv6 address; IPv4-mapped IPv6 (`::ffff:a.b.c.d`) comes back as IPv4. */
export function parseIp(text: string): ParsedIp | null {
  const s = text.trim()
  if (s.includes(':')) {
    const bytes = parseV6(s)
    if (!bytes) return null
    const mapped = bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff
    if (mapped) return v4(bytes.slice(12))
    return { family: 6, bytes, text: formatV6(bytes) }
  }
  const bytes = parseV4(s)
  return bytes ? v4(bytes) : null
}

/** The network of `ip` with `prefix` bits kept. */
export function maskIp(ip: ParsedIp, prefix: number): ParsedIp {
  const bytes = new Uint8Array(ip.bytes.length)
  for (let i = 0; i < bytes.length; i++) {
    const bits = Math.max(0, Math.min(8, prefix - i * 8))
    bytes[i] = ip.bytes[i] & (0xff << (8 - bits)) & 0xff
  }
  return ip.family === 4 ? v4(bytes) : { family: 6, bytes, text: formatV6(bytes) }
}

/** The greylist client key: `192.0.2.0/24`, `2001:db8::/64`, or the bare address for a host prefix. */
export function clientNetwork(ip: ParsedIp, v4prefix: number, v6prefix: number): string {
  const prefix = ip.family === 4 ? v4prefix : v6prefix
  if (prefix >= ip.bytes.length * 8) return ip.text
  return `${maskIp(ip, prefix).text}/${prefix}`
}

export interface Cidr {
  net: ParsedIp
  prefix: number
}

/** `a.b.c.d`, `a.b.c.d/m`, `x::y`, `x::y/m`; host bits are masked off. */
export function parseCidr(text: string): Cidr | null {
  const [addr, len, extra] = text.trim().split('/')
  if (extra !== undefined) return null
  const ip = parseIp(addr)
  if (!ip) return null
  const max = ip.family === 4 ? 32 : 128
  let prefix = max
  if (len !== undefined) {
    if (!/^\d{1,3}$/.test(len)) return null
    prefix = Number(len)
    // A mapped IPv6 network given with an IPv6 prefix length.
    if (ip.family === 4 && addr.includes(':')) prefix -= 96
    if (prefix < 0 || prefix > max) return null
  }
  return { net: maskIp(ip, prefix), prefix }
}

export function ipInNetwork(ip: ParsedIp, cidr: Cidr): boolean {
  if (ip.family !== cidr.net.family) return false
  const masked = maskIp(ip, cidr.prefix)
  return masked.bytes.every((b, i) => b === cidr.net.bytes[i])
}

/** `<a@b>` -> `a@b`; anything else is returned trimmed. */
export function stripAngles(address: string): string {
  const s = address.trim()
  return s.startsWith('<') && s.endsWith('>') ? s.slice(1, -1).trim() : s
}

export function domainOf(address: string): string {
  const at = stripAngles(address).lastIndexOf('@')
  if (at === -1) return ''
  return stripAngles(address).slice(at + 1).toLowerCase().replace(/\.$/, '')
}

/** The ASCII a domain name may hold around its non-ASCII characters: no URL syntax (`/`, `%`, `@`...) reaches IDNA. */
// eslint-disable-next-line no-control-regex
const IDN_ASCII_PART = /^(?:[A-Za-z0-9._-]|[^\x00-\x7f])*$/

/**
 * A domain name with its U-labels written as A-labels (`bücher.example` ->
 * `xn--bcher-kva.example`, IDNA as URLs do it: UTS #46, lower case), for
 * DNS and for ASCII headers (RFC 7208 §4.3). An ASCII name comes back as
 * it is. null: a non-ASCII name that has no A-label form.
 */
export function domainToALabels(name: string): string | null {
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\x7f]*$/.test(name)) return name
  if (!IDN_ASCII_PART.test(name)) return null
  const { domainToASCII } = require('node:url') as typeof import('node:url')
  return domainToASCII(name) || null
}

/** An address with its domain as A-labels; the local part stays as it is (it has no ASCII form). */
export function addressToALabels(address: string): string {
  const at = address.lastIndexOf('@')
  if (at === -1) return address
  const domain = address.slice(at + 1)
  return `${address.slice(0, at + 1)}${domainToALabels(domain) ?? domain}`
}

export function normalizeRecipient(rcpt: string): string {
  return stripAngles(rcpt).toLowerCase()
}

const BATV_TAG = /^[0-9]{4}[0-9a-f]{6}$/

/** Undo BATV (prvs=, msprvs1=, btv1==) on a local part. */
function stripBatv(local: string): string {
  let m = /^(?:prvs|msprvs1)=([^=]+)=(.+)$/.exec(local)
  if (m) {
    // prvs=TAG=user is the standard form; prvs=user=TAG is the older one.
    if (BATV_TAG.test(m[1])) return m[2]
    if (BATV_TAG.test(m[2])) return m[1]
    return m[2]
  }
  m = /^btv1==[^=]*==(.+)$/.exec(local)
  return m ? m[1] : local
}

/** Undo SRS0/SRS1 rewriting: back to the original sender `local@domain`. */
function decodeSrs(local: string): string | null {
  let m = /^srs0[=+-][^=]*=[^=]*=([^=]+)=(.+)$/.exec(local)
  if (m) return `${m[2]}@${m[1]}`
  m = /^srs1[=+-][^=]*=[^=]*==[^=]*=[^=]*=([^=]+)=(.+)$/.exec(local)
  if (m) return `${m[2]}@${m[1]}`
  return null
}

/**
 * The sender as greylisting keys it, so that a sender's retries match even
 * when the envelope varies per message: lower case, BATV removed, SRS
 * decoded, `+extension` removed, whole-word digit runs (VERP/list ids)
 * replaced by `#`. The null sender is ''.
 */
export function normalizeSender(sender: string): string {
  let address = stripAngles(sender).toLowerCase()
  if (address === '') return ''
  for (let round = 0; round < 3; round++) {
    const at = address.lastIndexOf('@')
    if (at === -1) break
    const local = stripBatv(address.slice(0, at))
    const srs = decodeSrs(local)
    if (srs === null) {
      address = `${local}${address.slice(at)}`
      break
    }
    address = srs
  }
  const at = address.lastIndexOf('@')
  let local = at === -1 ? address : address.slice(0, at)
  const domain = at === -1 ? '' : address.slice(at)
  const plus = local.indexOf('+')
  if (plus > 0) local = local.slice(0, plus)
  local = local.replace(/\b\d+\b/g, '#')
  return local + domain
}
