// policyd-rate-limit's YAML configuration (Debian's 1.0.1 and upstream
// 1.2.0) in policyd-ts terms. policyd-rate-limit counts one identity per
// request: the SASL user (limit_by_sasl), else the sender (limit_by_sender),
// else the client address inside limited_networks (limit_by_ip); each of
// `limits` ([mails, seconds] pairs) must hold, limits_by_id replaces them
// for one id ([] for none), and what a "mail" is depends on count_mode
// (absent in 1.0.1: each RCPT). A setting missing from the file takes
// policyd-rate-limit's default, as it does.

import { parseCidr, parseIp } from '../normalize'
import { parseValue } from '../config'
import type { RateClass, RateUnit } from '../ratelimit/types'
import { limitsText, overrideKey, type Converted, type Migration, type OldLimit, type OverrideLine } from './output'

const DEFAULT_FAIL_TEXT = 'Rate limit reach, retry later'

/** policyd-rate-limit's defaults (its config.py) for what the conversion reads. */
const DEFAULTS: Record<string, unknown> = {
  limits: [[10, 60], [150, 86400]],
  limits_by_id: {},
  limit_by_sasl: true,
  limit_by_sender: false,
  limit_by_ip: false,
  limited_networks: [],
  success_action: 'dunno',
  fail_action: `defer_if_permit ${DEFAULT_FAIL_TEXT}`,
  db_error_action: 'dunno',
  report: false,
  backend: 0,
}

/** Settings that only run policyd-rate-limit itself: said once each in the not-converted list when present. */
const DAEMON_ONLY: Record<string, string> = {
  user: 'user, group: Postfix\'s spawn(8) runs policyd-ts as the user= of its master.cf entry (policyd-ts postfix-config prints it)',
  pidfile: 'pidfile: policyd-ts runs under spawn(8) or systemd and writes no pid file',
  delay_to_close: 'delay_to_close: policyd-ts closes an idle connection after max_idle (600s by default, longer than Postfix\'s 300s)',
  debug: 'debug: policyd-ts logs to syslog; debugLevel = 2 logs each check of each request',
}
const KNOWN = new Set([
  ...Object.keys(DEFAULTS), ...Object.keys(DAEMON_ONLY), 'group', 'mysql_config', 'sqlite_config', 'pgsql_config', 'SOCKET', 'socket_permission',
  'limited_netword', 'count_mode', 'sql_limits_by_id', 'report_from', 'report_to', 'report_subject', 'report_limits', 'report_only_if_needed',
  'smtp_server', 'smtp_starttls', 'smtp_credentials',
])

class Invalid extends Error {}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date)
}

function show(v: unknown): string {
  return JSON.stringify(v) ?? String(v)
}

/** [[mails, seconds], ...] as policyd-rate-limit unpacks it, or Invalid naming the item. */
function oldLimits(v: unknown, where: string): OldLimit[] {
  if (!Array.isArray(v)) throw new Invalid(`${where}: ${show(v)} is not a list of [number of mails, number of seconds] pairs`)
  return v.map((item, i) => {
    if (!Array.isArray(item) || item.length !== 2 || !item.every((x) => Number.isSafeInteger(x) && (x as number) >= 0)) {
      throw new Invalid(`${where}: item ${i + 1}, ${show(item)}, is not a [number of mails, number of seconds] pair of whole numbers`)
    }
    return { count: item[0] as number, seconds: item[1] as number }
  })
}

function yamlDocument(text: string): Record<string, unknown> {
  // Loaded here only: the one command that reads YAML pays for the parser.
  if (text.split('\n').every((line) => /^\s*(#.*)?$/.test(line))) throw new Invalid('not a policyd-rate-limit configuration: the file has no settings')
  const yaml = require('js-yaml') as typeof import('js-yaml')
  let doc: unknown
  try {
    // PyYAML's SafeLoader reads YAML 1.1 (True, 0666 in octal), as policyd-rate-limit does.
    doc = yaml.load(text, { schema: yaml.YAML11_SCHEMA })
  } catch (err) {
    throw new Invalid(`not valid YAML: ${(err as Error).message.split('\n')[0]}`)
  }
  if (!isRecord(doc)) throw new Invalid('not a policyd-rate-limit configuration: a YAML mapping of settings (limits: ..., limit_by_sasl: ...) was expected')
  return doc
}

export function convertPolicydRateLimit(text: string): Converted {
  try {
    return { migration: convert(yamlDocument(text)) }
  } catch (err) {
    if (err instanceof Invalid) return { error: err.message }
    throw err
  }
}

function convert(doc: Record<string, unknown>): Migration {
  const has = (name: string): boolean => Object.prototype.hasOwnProperty.call(doc, name)
  const get = (name: string): unknown => (has(name) ? doc[name] : DEFAULTS[name])
  const flag = (name: string): boolean => {
    const v = get(name)
    if (typeof v !== 'boolean') throw new Invalid(`${name}: ${show(v)} is not True or False`)
    return v
  }
  const m: Migration = { program: 'policyd-rate-limit', settings: [], overrides: [], noEquivalent: [] }
  const notes = m.noEquivalent

  const countMode = get('count_mode')
  if (countMode !== undefined && countMode !== 0 && countMode !== 1 && countMode !== 2) throw new Invalid(`count_mode: ${show(countMode)} is not 0, 1 or 2`)
  // Mode 2 counts messages; every other counts recipients (mode 0 and 1.0.1: one per RCPT; mode 1: recipient_count at DATA).
  const unit: RateUnit = countMode === 2 ? 'msg' : 'rcpt'
  const what = {
    0: 'count_mode 0 counted one per RCPT: rcpt limits',
    1: 'count_mode 1 counted recipient_count at DATA: rcpt limits',
    2: 'count_mode 2 counted one per message: msg limits',
    none: 'without count_mode, 1.0 counted one per RCPT and 1.2 recipient_count at DATA: recipients either way, so rcpt limits',
  }[countMode ?? 'none']

  const networksKey = has('limited_networks') ? 'limited_networks' : has('limited_netword') ? 'limited_netword' : 'limited_networks'
  const networks = get(networksKey)
  if (!Array.isArray(networks) || !networks.every((n) => typeof n === 'string' && parseCidr(n) !== null)) {
    throw new Invalid(`${networksKey}: ${show(networks)} is not a list of networks in CIDR notation`)
  }
  const bySasl = flag('limit_by_sasl')
  const bySender = flag('limit_by_sender')
  const byIp = flag('limit_by_ip')
  const limits = oldLimits(get('limits'), 'limits')
  const text = limitsText(limits, unit, 'limits', notes)
  const classes: RateClass[] = []
  if (bySasl) classes.push('sasl')
  if (bySender) classes.push('sender')
  if (byIp && networks.length > 0) classes.push('client')
  if (byIp && networks.length === 0) notes.push(`limit_by_ip: True with an empty ${networksKey} limited no client address in policyd-rate-limit either; no client limits`)

  m.settings.push({ key: 'ratelimit_enabled', value: 'yes', why: ['Rate limiting, as policyd-rate-limit did.'] })
  const source = `limits: ${show(limits.map((l) => [l.count, l.seconds]))}`
  for (const cls of classes) {
    const whose = { sasl: 'each SASL user (limit_by_sasl)', sender: 'each sender of mail without SASL (limit_by_sender)', client: `each client address inside ${networksKey} without SASL (limit_by_ip)`, global: '' }[cls]
    m.settings.push({ key: `ratelimit_${cls}_limits`, value: text, why: [`${source}, for ${whose}; ${what}.`, 'policyd-rate-limit took the first of SASL user, sender, client; policyd-ts tests every identity that applies.'] })
  }
  if (bySender || classes.includes('client')) {
    m.settings.push({
      key: 'ratelimit_networks',
      value: networks.join(', '),
      why: bySender
        ? [
            `Sender and client limits apply only to clients inside these networks (${networksKey}${networks.length === 0 ? ' was empty: list your own networks, as mynetworks' : ''}).`,
            'policyd-rate-limit limited the sender of any client without SASL, so a forged sender could use up a real user\'s limit.',
            'Mail of clients in these networks is not greylisted or SPF-checked (spf_check_authenticated).',
          ]
        : [`${networksKey}: the clients limited by address. Their mail is not greylisted or SPF-checked (spf_check_authenticated).`],
    })
  }
  if (classes.includes('client')) {
    m.settings.push({ key: 'ratelimit_ipv6_prefix', value: '128', why: ['policyd-rate-limit counted each IPv6 address; policyd-ts counts a /64 by default (one host\'s usual share): 128 keeps the old way.'] })
  }
  m.settings.push(countMode === 1 || countMode === 2
    ? { key: 'ratelimit_commit_at', value: 'data', why: [`count_mode ${countMode}: counted at DATA. end-of-message would count only mail accepted (the check must then also be in smtpd_end_of_data_restrictions).`] }
    : { key: 'ratelimit_commit_at', value: 'end-of-message', why: ['Recipients are held at RCPT and counted at END-OF-MESSAGE, so mail refused later never counts; the check goes in smtpd_recipient_restrictions and smtpd_end_of_data_restrictions.'] })
  failAction(get('fail_action'), m)
  const dbError = get('db_error_action')
  if (typeof dbError !== 'string') throw new Invalid(`db_error_action: ${show(dbError)} is not an action`)
  if (dbError.trim().toLowerCase() !== 'dunno') {
    if ('error' in parseValue('fail_action', dbError.trim())) notes.push(`db_error_action: ${show(dbError)} is not an action policyd-ts can answer; fail_action stays DUNNO`)
    else m.settings.push({ key: 'fail_action', value: dbError.trim(), why: ['db_error_action; policyd-ts answers it whenever a request cannot be decided, the store failing among other causes.'] })
  }
  const success = get('success_action')
  if (typeof success !== 'string' || success.trim().toLowerCase() !== 'dunno') notes.push(`success_action: ${show(success)}: policyd-ts answers DUNNO under the limits, leaving the decision to the restrictions that follow`)

  m.overrides = idOverrides(get('limits_by_id'), { bySasl, bySender, byIp: classes.includes('client'), unit }, notes)
  storageNotes(doc, has, notes)
  return m
}

/** fail_action "defer_if_permit text": the action word and, when not policyd-rate-limit's own, the text. */
function failAction(v: unknown, m: Migration): void {
  if (typeof v !== 'string' || v.trim() === '') throw new Invalid(`fail_action: ${show(v)} is not an action`)
  const [, word, rest] = /^\s*(\S+)\s*(.*?)\s*$/.exec(v)!
  const upper = word.toUpperCase()
  if (['DEFER_IF_PERMIT', 'DEFER', '450', '451'].includes(upper)) {
    m.settings.push({ key: 'ratelimit_action', value: upper, why: [`fail_action: ${show(v)}.`] })
  } else {
    m.noEquivalent.push(`fail_action: ${show(v)}: policyd-ts only defers mail over a limit (a limit is passed in time, not for good): ratelimit_action stays DEFER_IF_PERMIT`)
  }
  if (rest === '' || rest === DEFAULT_FAIL_TEXT) {
    m.noEquivalent.push(`fail_action text ${show(rest)}: policyd-ts's own ratelimit_text is kept: it names the limit, the key and when mail fits again`)
  } else if (rest.includes('#')) {
    m.noEquivalent.push(`fail_action text ${show(rest)}: a "#" cannot be written in a policyd-ts.conf value; ratelimit_text keeps its default`)
  } else {
    m.settings.push({ key: 'ratelimit_text', value: rest.replace(/%/g, '%%'), why: ['The text of fail_action (%l, %k, %t would add the limit, the key, the time it fits again).'] })
  }
}

/**
 * limits_by_id: an id is whatever the request was counted as, so an
 * address may be a SASL user or a sender, and an IP address a client.
 */
function idOverrides(v: unknown, how: { bySasl: boolean; bySender: boolean; byIp: boolean; unit: RateUnit }, notes: string[]): OverrideLine[] {
  if (v === null || v === undefined) return []
  if (!isRecord(v)) throw new Invalid(`limits_by_id: ${show(v)} is not a mapping of id: [limits]`)
  const out: OverrideLine[] = []
  for (const [id, raw] of Object.entries(v)) {
    const where = `limits_by_id ${id}`
    const list = oldLimits(raw, where)
    const limits = list.length === 0 ? 'unlimited' : limitsText(list, how.unit, where, notes)
    if (limits === '') continue
    const ip = parseIp(id)
    const classes: RateClass[] = ip ? ['client'] : [...(how.bySasl ? ['sasl' as const] : []), ...(how.bySender && id.includes('@') ? ['sender' as const] : [])]
    if (classes.length === 0) notes.push(`${where}: limit_by_sasl is off${id.includes('@') ? ' and so is limit_by_sender' : ''}, so policyd-rate-limit never counted this id; left out`)
    for (const cls of classes) {
      const key = overrideKey(cls, ip ? ip.text : id)
      if ('problem' in key) notes.push(`${where}: ${key.problem}; left out`)
      else out.push({ key: key.key, limits, why: `${where}: ${show(raw)}${ip && !how.byIp ? ' (limit_by_ip was off, so policyd-rate-limit never used it; policyd-ts does when that client is inside ratelimit_networks)' : ''}` })
    }
  }
  return out
}

/** What was about running and storing, and the report mail: the not-converted list. */
function storageNotes(doc: Record<string, unknown>, has: (name: string) => boolean, notes: string[]): void {
  const backend = has('backend') ? doc.backend : DEFAULTS.backend
  const name = backend === 1 ? 'MySQL' : backend === 2 ? 'PostgreSQL' : 'sqlite3'
  notes.push(`backend (${name}${backend === 1 || backend === 2 ? ', shared by the hosts that used it' : ''}): policyd-ts counts in its own SQLite database (db_path), one per host; policyd-rate-limit's counts are not carried over, every identity starts from zero`)
  if (has('sql_limits_by_id')) notes.push('sql_limits_by_id: per-id limits from an SQL query: write them to the overrides file, or set them with policyd-ts ratelimit set KEY LIMITS')
  if (has('SOCKET')) notes.push(`SOCKET ${show(doc.SOCKET)}${has('socket_permission') ? ', socket_permission' : ''}: policyd-ts runs under spawn(8) (policyd-ts postfix-config prints the master.cf and main.cf lines), or as a daemon with listen = unix:PATH or inet:HOST:PORT and listen_mode; point check_policy_service there`)
  for (const [key, note] of Object.entries(DAEMON_ONLY)) {
    const present = key === 'user' ? has('user') || has('group') : key === 'debug' ? doc.debug === true : has(key)
    if (present) notes.push(note)
  }
  if (doc.report === true) {
    const to = Array.isArray(doc.report_to) ? doc.report_to.join(',') : typeof doc.report_to === 'string' ? doc.report_to : 'ADDRESS'
    notes.push(`report, report_to, smtp_*: a crontab line mails the same table of who hit which limit, and only when there is one (report_only_if_needed): MAILTO=${to} then "0 0 * * * root policyd-ts ratelimit hits --since 1d"; it lists every limit, not only report_limits`)
  }
  notes.push('policyd-rate-limit --clean (cron.daily or its clean timer): policyd-ts forgets old counts by itself; remove the job')
  notes.push('Postfix: replace policyd-rate-limit\'s check_policy_service; policyd-ts --test-mode says whether the check sits where rate limiting needs it')
  for (const key of Object.keys(doc)) if (!KNOWN.has(key)) notes.push(`${key}: not a policyd-rate-limit setting (it ignored it too)`)
}
