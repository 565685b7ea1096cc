// postfixlimit's INI configuration (0.0.4) in policyd-ts terms. postfixlimit
// counts one key per request, the attribute `field` names (sender,
// sasl_username or client_address), against `default_limit` or the key's
// line in [limits]; every request it is asked about is one hit (one per
// RCPT in smtpd_recipient_restrictions), tested then added by the `limits`
// library under `strategy`.

import { limitsText, overrideKey, type Converted, type Migration, type OldLimit } from './output'
import { parseIni, type IniValue } from './ini'
import type { RateClass } from '../ratelimit/types'

const FIELDS: Record<string, RateClass> = { sender: 'sender', sasl_username: 'sasl', client_address: 'client' }

/** Periods as the limits library reckons them (a month is 30 days, a year 12 of those). */
const PERIOD: Record<string, number> = { second: 1, minute: 60, hour: 3600, day: 86400, month: 30 * 86400, year: 360 * 86400 }

const ITEM = /^(\d{1,16})\s*(?:\/|\s+per\s+)\s*(\d{1,9})?\s*(second|minute|hour|day|month|year)s?$/i

/** A rate in the limits library's notation, `100/day`, `10 per 2 hours`, several joined by , ; or |; or why not. */
export function parseRateString(text: string): { limits: OldLimit[] } | { error: string } {
  const items = text.split(/[,;|]/).map((x) => x.trim())
  const limits: OldLimit[] = []
  for (const item of items) {
    const m = ITEM.exec(item)
    if (!m) return { error: `${JSON.stringify(item)} is not a rate such as 100/day or 10 per 2 hours` }
    limits.push({ count: Number(m[1]), seconds: Number(m[2] ?? '1') * PERIOD[m[3].toLowerCase()] })
  }
  return { limits }
}

const SERVER_KEYS = new Set(['address', 'port', 'field', 'default_limit', 'action', 'action_text', 'storage', 'strategy', 'transparent', 'dump_period', 'dump_file', 'log_file'])

/** configparser's getboolean. */
function iniBool(v: IniValue, key: string): boolean | { error: string } {
  const word = v.value.toLowerCase()
  if (['1', 'yes', 'true', 'on'].includes(word)) return true
  if (['0', 'no', 'false', 'off'].includes(word)) return false
  return { error: `line ${v.line}: ${key} = ${JSON.stringify(v.value)} is not yes or no` }
}

export function convertPostfixlimit(text: string): Converted {
  const parsed = parseIni(text)
  if ('error' in parsed) return { error: `not an INI file as postfixlimit reads it: ${parsed.error}` }
  const server = parsed.ini.get('server')
  if (!server) return { error: 'no [server] section: not a postfixlimit configuration' }
  const get = (key: string): IniValue | undefined => server.get(key)
  const m: Migration = { program: 'postfixlimit', settings: [], overrides: [], noEquivalent: [] }
  const notes = m.noEquivalent

  const fieldName = get('field')?.value ?? 'sender'
  const cls = FIELDS[fieldName]
  if (cls === undefined) return { error: `line ${get('field')!.line}: field = ${JSON.stringify(fieldName)} is not sender, sasl_username or client_address` }
  const defaultText = get('default_limit')?.value ?? '10/hour'
  const defaults = parseRateString(defaultText)
  if ('error' in defaults) return { error: `${get('default_limit') ? `line ${get('default_limit')!.line}: ` : ''}default_limit: ${defaults.error}` }

  m.settings.push({ key: 'ratelimit_enabled', value: 'yes', why: ['Rate limiting, as postfixlimit did.'] })
  m.settings.push({
    key: `ratelimit_${cls}_limits`,
    value: limitsText(defaults.limits, 'rcpt', 'default_limit', notes),
    why: [`field = ${fieldName}, default_limit = ${defaultText}: postfixlimit counted each request it was asked about, one per RCPT: rcpt limits.`],
  })
  if (cls !== 'sasl') {
    m.settings.push({
      key: 'ratelimit_networks',
      value: '',
      why: [
        `${cls === 'sender' ? 'Sender' : 'Client'} limits apply only to clients inside these networks without SASL: list your own, as mynetworks.`,
        `postfixlimit limited the ${fieldName} of every client, so a forged sender could use up a real one's limit. Mail of clients in these networks is not greylisted or SPF-checked.`,
      ],
    })
    notes.push(`field = ${fieldName} for every client: policyd-ts limits by ${fieldName} only inside ratelimit_networks${cls === 'sender' ? ', and counts the null sender per client address, where postfixlimit counted every bounce under one key ""' : ''}`)
  } else {
    notes.push('field = sasl_username: postfixlimit counted all mail without SASL under one key ""; policyd-ts does not limit such mail by SASL user (sender and client limits inside ratelimit_networks can)')
  }
  if (cls === 'client') m.settings.push({ key: 'ratelimit_ipv6_prefix', value: '128', why: ['postfixlimit counted each IPv6 address; policyd-ts counts a /64 by default (one host\'s usual share): 128 keeps the old way.'] })
  m.settings.push({ key: 'ratelimit_commit_at', value: 'end-of-message', why: ['postfixlimit counted at RCPT even mail never sent; policyd-ts holds recipients at RCPT and counts them at END-OF-MESSAGE (the check goes in smtpd_recipient_restrictions and smtpd_end_of_data_restrictions).'] })

  const action = get('action')
  if (action !== undefined) {
    const word = action.value.toUpperCase()
    if (word === 'DEFER') m.settings.push({ key: 'ratelimit_action', value: 'DEFER', why: ['action = DEFER.'] })
    else notes.push(`action = ${action.value}: policyd-ts only defers mail over a limit (a limit is passed in time, not for good): ratelimit_action stays DEFER_IF_PERMIT`)
  }
  const actionText = get('action_text')
  if (actionText !== undefined) actionTextSetting(actionText, fieldName, m)
  const transparent = get('transparent')
  if (transparent !== undefined) {
    const on = iniBool(transparent, 'transparent')
    if (typeof on !== 'boolean') return on
    if (on) m.settings.push({ key: 'ratelimit_learn_only', value: 'yes', why: ['transparent = yes: count, but never refuse.'] })
  }

  const limits = parsed.ini.get('limits')
  for (const [key, v] of limits ?? []) {
    const rate = parseRateString(v.value)
    if ('error' in rate) return { error: `line ${v.line}: [limits] ${key}: ${rate.error}` }
    const text = limitsText(rate.limits, 'rcpt', `[limits] ${key}`, notes)
    const k = overrideKey(cls, key)
    if ('problem' in k) notes.push(`[limits] ${key}: ${k.problem}; left out`)
    else if (text !== '') m.overrides.push({ key: k.key, limits: text, why: `[limits] ${key} = ${v.value}` })
  }
  serverNotes(server, notes)
  for (const section of parsed.ini.keys()) if (section !== 'server' && section !== 'limits') notes.push(`[${section}]: not a postfixlimit section (it ignored it too)`)
  return { migration: m }
}

/** action_text's {limit}, {field}={key}, {key} as ratelimit_text's %l and %k; {field} alone is the configured field. */
function actionTextSetting(v: IniValue, field: string, m: Migration): void {
  const text = v.value.replace(/%/g, '%%').replace(/\{field\}=\{key\}/g, '%k').replace(/\{key\}/g, '%k').replace(/\{limit\}/g, '%l').replace(/\{field\}/g, field)
  const unknown = /\{[^}]*\}/.exec(text)
  if (unknown) m.noEquivalent.push(`action_text: ${unknown[0]} has no equivalent field (%l the limit, %k the key, %t and %s when mail fits again); ratelimit_text keeps its default`)
  else if (text.includes('#')) m.noEquivalent.push('action_text: a "#" cannot be written in a policyd-ts.conf value; ratelimit_text keeps its default')
  else m.settings.push({ key: 'ratelimit_text', value: text, why: [`action_text = ${v.value}`] })
}

function serverNotes(server: Map<string, IniValue>, notes: string[]): void {
  const has = (k: string): string | undefined => server.get(k)?.value
  const storage = has('storage') ?? 'memory://'
  notes.push(storage.startsWith('memory:')
    ? `storage = ${storage}: counts lived in postfixlimit's memory and went at each restart; policyd-ts keeps them in its SQLite database (db_path), starting from zero`
    : `storage = ${storage}: policyd-ts counts in its own SQLite database (db_path), one per host; postfixlimit's counts are not carried over`)
  const strategy = has('strategy') ?? 'fixed-window'
  notes.push(`strategy = ${strategy}: policyd-ts counts each period in ratelimit_slots slots (60), a window sliding in steps of 1/60 of the period${strategy === 'fixed-window' ? '; a fixed window let up to twice the limit through around its end' : ''}`)
  if (has('address') !== undefined || has('port') !== undefined) notes.push(`address, port (${has('address') ?? 'localhost'}:${has('port') ?? '4455'}): policyd-ts runs under spawn(8) (policyd-ts postfix-config prints the lines), or as a daemon with listen = inet:HOST:PORT; point check_policy_service there`)
  if (has('dump_period') !== undefined || has('dump_file') !== undefined) notes.push('dump_period, dump_file: policyd-ts ratelimit list and policyd-ts ratelimit top print the counters when asked')
  if (has('log_file') !== undefined) notes.push('log_file: policyd-ts logs to syslog (its own log_file only when there is no syslog socket)')
  for (const key of server.keys()) if (!SERVER_KEYS.has(key)) notes.push(`${key}: not a postfixlimit setting (it ignored it too)`)
}
