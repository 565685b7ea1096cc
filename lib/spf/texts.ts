// The texts an SPF result becomes: reply texts as postfix-policyd-spf-python
// words them, and header fields in the forms of RFC 7208 §9.1
// (Received-SPF) and RFC 8601 (Authentication-Results). Every value taken
// from the request or from DNS is cleaned here, so that no input can end a
// header line or start another one. Reply texts are printable ASCII. Header
// fields are too, with one exception: domain names are written as A-labels,
// but a local part that is not ASCII (an SMTPUTF8 sender, `jörg@…`) has no
// ASCII form and stays UTF-8, as RFC 6532 allows in such a message.

import { addressToALabels, domainToALabels } from '../normalize'
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

/** Longest value written into a header or a reply, in bytes (UTF-8): a header line stays under 998. */
export const MAX_VALUE = 200
/** Longest explanation ({spf}) in a reply text: an SMTP reply line must stay under 512. */
export const MAX_EXPLANATION = 160

/** Printable ASCII only: anything else becomes '?'; overlong text is cut with '...'. */
export function printable(text: string, max = MAX_VALUE): string {
  // eslint-disable-next-line no-control-regex
  const clean = text.replace(/[^\x20-\x7e]/gu, '?')
  return clean.length > max ? `${clean.slice(0, max - 3)}...` : clean
}

/**
 * Printable text for a header field: ASCII, letters, marks, digits,
 * punctuation and symbols of any script. Controls, invisible formatting
 * (bidi overrides), other spaces, and U+FFFD (bytes that were not UTF-8)
 * become '?'. Overlong text is cut, on a character boundary, with '...'.
 */
function headerText(text: string, maxBytes = MAX_VALUE): string {
  const clean = text.replace(/[^\x20-\x7e\p{L}\p{M}\p{N}\p{P}\p{S}]|\uFFFD/gu, '?')
  if (Buffer.byteLength(clean) <= maxBytes) return clean
  let out = ''
  let bytes = 0
  for (const ch of clean) {
    bytes += Buffer.byteLength(ch)
    if (bytes > maxBytes - 3) break
    out += ch
  }
  return `${out}...`
}

/** A domain name as A-labels when it has them (else as given, cleaned later). */
function asciiDomain(domain: string): string {
  return domainToALabels(domain) ?? domain
}

const DOT_ATOM = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/

/** A key-value value of RFC 7208 §9.1: a dot-atom as it is, anything else as a quoted-string. */
export function kvValue(text: string): string {
  const clean = headerText(text)
  if (DOT_ATOM.test(clean)) return clean
  return `"${clean.replace(/[\\"]/g, (c) => `\\${c}`)}"`
}

/** Text for inside a comment `( )`: parentheses and backslashes quoted. */
export function commentText(text: string, max = MAX_VALUE): string {
  return headerText(text, max).replace(/[\\()]/g, (c) => `\\${c}`)
}

/** The explanation of a result, as policyd-spf's {spf} and header comments carry it. */
export function explanationOf(result: SpfResultCode, detail: { explanation?: string; reason: string }): string {
  // A domain's exp= text often ends in a full stop; Reason_Message adds its own.
  if (result === 'fail' && detail.explanation !== undefined && detail.explanation !== DEFAULT_EXPLANATION) {
    const own = detail.explanation.replace(/[.\s]+$/, '')
    // A text of only full stops or white space explains nothing: the default one does.
    if (own !== '') return printable(own, MAX_EXPLANATION)
  }
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
    `envelope-from=${kvValue(f.sender === '' ? '<>' : addressToALabels(f.sender))}`,
    `receiver=${kvValue(asciiDomain(f.receiver))}`,
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

/**
 * Characters of a Why-link value written as they are, as policyd-spf writes
 * every character: what a URL query may hold (RFC 3986 unreserved,
 * sub-delims, ':', '@', '/', '?'), and the '<>' of `r=<UNKNOWN>`.
 */
const URL_AS_IS = /^[A-Za-z0-9\-._~!$&'()*+,;=:@/?<>]$/

/**
 * A value of the Why link: as policyd-spf writes it, but space, '"', '%',
 * '#', controls, the other characters a URL cannot carry, and non-ASCII
 * (as UTF-8) %-escaped, so that the link stays one working URL. Cut at
 * MAX_VALUE characters, never inside an escape.
 */
function urlPart(text: string): string {
  let out = ''
  for (const b of Buffer.from(text, 'utf8')) {
    const c = String.fromCharCode(b)
    const piece = URL_AS_IS.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`
    if (out.length + piece.length > MAX_VALUE) break
    out += piece
  }
  return out
}

/** policyd-spf's "Why" link: `http://www.openspf.net/Why?s=mfrom;id=…;ip=…;r=…`. */
export function whyUrl(scope: 'helo' | 'mfrom', id: string, ip: string, receiver: string): string {
  return `http://www.openspf.net/Why?s=${scope};id=${urlPart(id)};ip=${urlPart(ip)};r=${urlPart(receiver)}`
}

/** Reason_Message with its fields filled in. */
export function reasonMessage(template: string, fields: { rejectdefer: 'rejected' | 'deferred'; spf: string; url: string }): string {
  return printable(template.replace(/\{(rejectdefer|spf|url)\}/g, (_, name: keyof typeof fields) => fields[name]), 900)
}
