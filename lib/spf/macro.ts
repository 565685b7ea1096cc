// Macro expansion (RFC 7208 §7).

import type { ParsedIp } from '../normalize'
import { SpfSyntaxError } from './record'

export interface MacroContext {
  /** <sender>: local-part@domain ("postmaster@" + domain when the local part is empty). */
  sender: string
  /** The current domain (<domain> of this check_host() call). */
  domain: string
  ip: ParsedIp
  helo: string
  /** The validated domain name of the IP, computed on first use. */
  validatedName: () => Promise<string>
  receiver: string
  now: number
  /** %{i} of an IPv6 address keeps the case its hex digits were given in. */
  upperHex?: boolean
}

function ipNibbles(ip: ParsedIp, upper: boolean): string {
  if (ip.family === 4) return ip.text
  const text = Array.from(ip.bytes, (b) => `${(b >> 4).toString(16)}.${(b & 15).toString(16)}`).join('.')
  return upper ? text.toUpperCase() : text
}

function readableIp(ip: ParsedIp): string {
  return ip.text
}

/** RFC 3986 escaping of everything but the unreserved characters (of UTF-8 bytes: an SMTPUTF8 local part), for upper-case macro letters. */
function urlEscape(text: string): string {
  return Array.from(Buffer.from(text, 'utf8'))
    .map((b) => {
      const c = String.fromCharCode(b)
      return /[A-Za-z0-9\-._~]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`
    })
    .join('')
}

async function letterValue(letter: string, ctx: MacroContext): Promise<string> {
  const at = ctx.sender.lastIndexOf('@')
  switch (letter) {
    case 's':
      return ctx.sender
    case 'l':
      return at === -1 ? 'postmaster' : ctx.sender.slice(0, at) || 'postmaster'
    case 'o':
      return at === -1 ? ctx.sender : ctx.sender.slice(at + 1)
    case 'd':
      return ctx.domain
    case 'i':
      return ipNibbles(ctx.ip, ctx.upperHex === true)
    case 'p':
      return ctx.validatedName()
    case 'v':
      return ctx.ip.family === 4 ? 'in-addr' : 'ip6'
    case 'h':
      return ctx.helo
    case 'c':
      return readableIp(ctx.ip)
    case 'r':
      return ctx.receiver
    case 't':
      return String(Math.floor(ctx.now))
    default:
      throw new SpfSyntaxError(`unknown macro letter ${letter}`)
  }
}

/** Expand a macro-string; `explanation` allows c, r and t. Throws SpfSyntaxError (permerror). */
export async function expandMacros(text: string, ctx: MacroContext, explanation = false): Promise<string> {
  let out = ''
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]
    if (ch !== '%') {
      out += ch
      continue
    }
    const next = text[i + 1]
    if (next === '%') out += '%'
    else if (next === '_') out += ' '
    else if (next === '-') out += '%20'
    else if (next === '{') {
      const end = text.indexOf('}', i)
      if (end === -1) throw new SpfSyntaxError('unterminated macro')
      out += await expandOne(text.slice(i + 2, end), ctx, explanation)
      i = end
      continue
    } else throw new SpfSyntaxError(`bad macro %${next ?? ''}`)
    i++
  }
  return out
}

async function expandOne(body: string, ctx: MacroContext, explanation: boolean): Promise<string> {
  const m = /^([a-zA-Z])(\d*)(r?)([.\-+,/_=]*)$/i.exec(body)
  if (!m) throw new SpfSyntaxError(`bad macro %{${body}}`)
  const [, letterRaw, digits, reverse, delims] = m
  const letter = letterRaw.toLowerCase()
  if (!'slodipvh'.includes(letter) && !(explanation && 'crt'.includes(letter))) throw new SpfSyntaxError(`macro letter ${letterRaw} not allowed here`)
  if (digits !== '' && Number(digits) === 0) throw new SpfSyntaxError('macro transformer 0')
  let value = await letterValue(letter, ctx)
  if (digits !== '' || reverse !== '' || delims !== '') {
    const splitOn = delims === '' ? '.' : delims
    let parts = value.split(new RegExp(`[${splitOn.split('').map((c) => `\\${c}`).join('')}]`))
    if (reverse) parts = parts.reverse()
    if (digits !== '') parts = parts.slice(Math.max(0, parts.length - Number(digits)))
    value = parts.join('.')
  }
  if (letterRaw !== letter) value = urlEscape(value)
  return value
}

/** After expansion a domain name longer than 253 characters loses labels on the left (§7.3). */
export function truncateDomain(name: string): string {
  let n = name
  while (n.length > 253 && n.includes('.')) n = n.slice(n.indexOf('.') + 1)
  return n
}
