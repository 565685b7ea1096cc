// The texts an SPF result becomes: reply texts as postfix-policyd-spf-python
// words them, and header fields in the forms of RFC 7208 §9.1
// (Received-SPF) and RFC 8601 (Authentication-Results). Every value taken
// from the request or from DNS is cleaned here, so that no input can end a
// header line, start another one, or leave the ASCII a header must be in.

import { DEFAULT_EXPLANATION, type SpfResultCode } from './check-host'

/** How policyd-spf writes a result word: Python's capitalize(). */
export function resultWord(result: SpfResultCode): string {
  return result[0].toUpperCase() + result.slice(1)
}

/** pyspf's explanation of each result, which policyd-spf puts into comments and reply texts. */
const EXPLANATION: Record<SpfResultCode, string> = {
  pass: 'sender SPF authorized',
  fail: 'SPF fail - not authorized',
  softfail: 'domain owner discourages use of this host',
  neutral: 'access neither permitted nor denied',
  none: 'no SPF record',
  permerror: 'SPF Permanent Error',
  temperror: 'SPF Temporary Error',
}

/** Longest value written into a header or a reply, in characters: a header line stays under 998. */
export const MAX_VALUE = 200
/** Longest explanation ({spf}) in a reply text: an SMTP reply line must stay under 512. */
export const MAX_EXPLANATION = 160

/** Printable ASCII only: anything else becomes '?'; overlong text is cut with '...'. */
export function printable(text: string, max = MAX_VALUE): string {
  // eslint-disable-next-line no-control-regex
  const clean = text.replace(/[^\x20-\x7e]/gu, '?')
  return clean.length > max ? `${clean.slice(0, max - 3)}...` : clean
}

/** A domain name in its ASCII form (IDN U-labels as A-labels) when it has one. */
function asciiDomain(domain: string): string {
  // eslint-disable-next-line no-control-regex
  if (/^[\x21-\x7e]*$/.test(domain)) return domain
  const { domainToASCII } = require('node:url') as typeof import('node:url')
  return domainToASCII(domain) || domain
}

/** An address with its domain in ASCII form. */
export function asciiAddress(address: string): string {
  const at = address.lastIndexOf('@')
  return at === -1 ? asciiDomain(address) : `${address.slice(0, at + 1)}${asciiDomain(address.slice(at + 1))}`
}

const DOT_ATOM = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/

/** A key-value value of RFC 7208 §9.1: a dot-atom as it is, anything else as a quoted-string. */
export function kvValue(text: string): string {
  const clean = printable(text)
  if (DOT_ATOM.test(clean)) return clean
  return `"${clean.replace(/[\\"]/g, (c) => `\\${c}`)}"`
}

/** Text for inside a comment `( )`: parentheses and backslashes quoted. */
export function commentText(text: string, max = MAX_VALUE): string {
  return printable(text, max).replace(/[\\()]/g, (c) => `\\${c}`)
}

/** The explanation of a result, as policyd-spf's {spf} and header comments carry it. */
export function explanationOf(result: SpfResultCode, detail: { explanation?: string; reason: string }): string {
  // A domain's exp= text often ends in a full stop; Reason_Message adds its own.
  if (result === 'fail' && detail.explanation !== undefined && detail.explanation !== DEFAULT_EXPLANATION) return printable(detail.explanation.replace(/[.\s]+$/, ''), MAX_EXPLANATION)
  if (result === 'permerror' || result === 'temperror') return `${EXPLANATION[result]}: ${printable(detail.reason, MAX_EXPLANATION)}`
  return EXPLANATION[result]
}

export interface HeaderFacts {
  clientIp: string
  helo: string
  /** The envelope sender, '' for the null sender. */
  sender: string
  /** The recipient domain, or <UNKNOWN> when hidden. */
  receiver: string
}

function facts(f: HeaderFacts, separator: string): string {
  return [
    `client-ip=${kvValue(f.clientIp)}`,
    `helo=${kvValue(asciiDomain(f.helo))}`,
    `envelope-from=${kvValue(f.sender === '' ? '<>' : asciiAddress(f.sender))}`,
    `receiver=${kvValue(f.receiver)}`,
  ].join(separator)
}

/** `Received-SPF: Pass (comment) identity=mailfrom; client-ip=…; helo=…; envelope-from=…; receiver=…` */
export function receivedSpf(result: SpfResultCode, comment: string, identity: 'helo' | 'mailfrom', f: HeaderFacts): string {
  return `Received-SPF: ${resultWord(result)} (${commentText(comment)}) identity=${identity}; ${facts(f, '; ')}`
}

/** `Authentication-Results: id; spf=pass (comment) smtp.mailfrom=domain (client-ip=…; …)` */
export function authenticationResults(authservId: string, result: SpfResultCode, comment: string, identity: 'helo' | 'mailfrom', checked: string, f: HeaderFacts): string {
  const property = identity === 'helo' ? 'smtp.helo' : 'smtp.mailfrom'
  return `Authentication-Results: ${kvValue(authservId)}; spf=${result} (${commentText(comment)}) ${property}=${kvValue(asciiDomain(checked))} (${commentText(facts(f, '; '), 4 * MAX_VALUE)})`
}

/** The header of a skipped check: `X-Comment: <why> - client-ip=…`, or an Authentication-Results `none`. */
export function skippedHeader(why: string, headerType: 'SPF' | 'AR', authservId: string, f: HeaderFacts): string {
  if (headerType === 'AR') return `Authentication-Results: ${kvValue(authservId)}; none (${commentText(`${why} - ${facts(f, '; ')}`, 5 * MAX_VALUE)})`
  return `X-Comment: ${why} - ${facts(f, '; ')}`
}

/** Characters a query parameter may carry as they are; the rest is %-escaped (UTF-8). */
function urlPart(text: string): string {
  return Array.from(Buffer.from(text, 'utf8'), (b) => {
    const c = String.fromCharCode(b)
    return /[A-Za-z0-9._~@+<>-]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`
  })
    .join('')
    .slice(0, MAX_VALUE)
}

/** policyd-spf's "Why" link: `http://www.openspf.net/Why?s=mfrom;id=…;ip=…;r=…`. */
export function whyUrl(scope: 'helo' | 'mfrom', id: string, ip: string, receiver: string): string {
  return `http://www.openspf.net/Why?s=${scope};id=${urlPart(id)};ip=${urlPart(ip)};r=${urlPart(receiver)}`
}

/** Reason_Message with its fields filled in. */
export function reasonMessage(template: string, fields: { rejectdefer: 'rejected' | 'deferred'; spf: string; url: string }): string {
  return printable(template.replace(/\{(rejectdefer|spf|url)\}/g, (_, name: keyof typeof fields) => fields[name]), 900)
}
