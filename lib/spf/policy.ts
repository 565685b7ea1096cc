// The SPF policy keys of the configuration in the form the check uses, and
// their per-recipient overrides (policyd-spf's Per_User text file).

import { parseValue, type Config, type ConfigKey } from '../config'
import { parseCidr, type Cidr } from '../normalize'
import { WatchedFile } from '../watched-file'

export type RejectPolicy = 'Fail' | 'SPF_Not_Pass' | 'Softfail' | 'Null' | 'False' | 'No_Check'

export interface SpfPolicy {
  /** TestOnly = 0: nothing rejects or defers. */
  dryRun: boolean
  heloReject: RejectPolicy
  mailFromReject: RejectPolicy
  permErrorReject: boolean
  tempErrorDefer: boolean
  noMail: boolean
  rejectNotPassDomains: string[]
  heloPassRestriction: string
  mailFromPassRestriction: string
  skipAddresses: Cidr[]
  whitelist: Cidr[]
  domainWhitelist: string[]
  heloWhitelist: string[]
  domainWhitelistPtr: string[]
  enhancedCodes: boolean
  reasonMessage: string
  voidLimit: number
  /** Milliseconds. */
  whitelistLookupMs: number
}

/**
 * Keys a Per_User line may set (policyd-spf.peruser(5)); Lookup_Time,
 * Header_Type, Hide_Receiver, Authserv_Id, Prospective, debugLevel and Mock
 * hold for the whole process.
 */
export const PER_USER_KEYS = [
  'TestOnly', 'HELO_reject', 'Mail_From_reject', 'PermError_reject', 'TempError_Defer', 'No_Mail', 'Reject_Not_Pass_Domains',
  'HELO_pass_restriction', 'Mail_From_pass_restriction', 'skip_addresses', 'Whitelist', 'Domain_Whitelist', 'HELO_Whitelist',
  'Domain_Whitelist_PTR', 'SPF_Enhanced_Status_Codes', 'Reason_Message', 'Void_Limit', 'Whitelist_Lookup_Time',
] as const satisfies readonly ConfigKey[]
type PerUserKey = (typeof PER_USER_KEYS)[number]
type PolicyValues = Pick<Config, PerUserKey>

function cidrs(items: readonly string[]): Cidr[] {
  // Items were checked when the configuration was loaded.
  return items.map(parseCidr).filter((c): c is Cidr => c !== null)
}

function lowerDomains(items: readonly string[]): string[] {
  return items.map((d) => d.toLowerCase().replace(/\.$/, ''))
}

export function toPolicy(c: PolicyValues): SpfPolicy {
  return {
    dryRun: c.TestOnly === 0,
    heloReject: c.HELO_reject as RejectPolicy,
    mailFromReject: c.Mail_From_reject as RejectPolicy,
    permErrorReject: c.PermError_reject,
    tempErrorDefer: c.TempError_Defer,
    noMail: c.No_Mail,
    rejectNotPassDomains: lowerDomains(c.Reject_Not_Pass_Domains),
    heloPassRestriction: c.HELO_pass_restriction,
    mailFromPassRestriction: c.Mail_From_pass_restriction,
    skipAddresses: cidrs(c.skip_addresses),
    whitelist: cidrs(c.Whitelist),
    domainWhitelist: lowerDomains(c.Domain_Whitelist),
    heloWhitelist: lowerDomains(c.HELO_Whitelist),
    domainWhitelistPtr: lowerDomains(c.Domain_Whitelist_PTR),
    enhancedCodes: c.SPF_Enhanced_Status_Codes,
    reasonMessage: c.Reason_Message,
    voidLimit: c.Void_Limit,
    whitelistLookupMs: c.Whitelist_Lookup_Time * 1000,
  }
}

/** True when `domain` is one of `list` or below one of them (on a label boundary). */
export function inDomainList(domain: string, list: readonly string[]): boolean {
  const d = domain.toLowerCase().replace(/\.$/, '')
  return d !== '' && list.some((entry) => d === entry || d.endsWith(`.${entry}`))
}

export interface PerUserFile {
  /** The policy of `recipient` with its overrides, or null when it has none. */
  policyFor(recipient: string): SpfPolicy | null
}

/**
 * Parse a Per_User file: `recipient,Key=value|Key=value` lines, `#` comments.
 * Values go through the same checks as the configuration; a bad line or
 * value is reported and left out, the rest of the file still counts.
 */
export function parsePerUser(text: string, base: Config, source: string): { policies: Map<string, SpfPolicy>; errors: string[] } {
  const policies = new Map<string, SpfPolicy>()
  const errors: string[] = []
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim()
    if (line === '') return
    const where = `${source}:${i + 1}`
    const comma = line.indexOf(',')
    if (comma === -1) {
      errors.push(`${where}: expected recipient,Key=value|...: ${line}`)
      return
    }
    const recipient = line.slice(0, comma).trim().toLowerCase()
    if (policies.has(recipient)) return // the first line of a recipient counts, as in policyd-spf
    const values: Record<string, unknown> = {}
    for (const pair of line.slice(comma + 1).split('|')) {
      const eq = pair.indexOf('=')
      const key = (eq === -1 ? pair : pair.slice(0, eq)).trim()
      if (!(PER_USER_KEYS as readonly string[]).includes(key)) {
        errors.push(`${where}: ${key === '' ? 'empty key' : `${key} cannot be set per user`}`)
        continue
      }
      const parsed = parseValue(key as PerUserKey, eq === -1 ? '' : pair.slice(eq + 1))
      if ('error' in parsed) errors.push(`${where}: ${parsed.error}`)
      else values[key] = parsed.value
    }
    const merged = { ...base, ...values } as Config
    for (const key of ['skip_addresses', 'Whitelist'] as const) {
      if (merged[key].some((item) => parseCidr(item) === null)) {
        errors.push(`${where}: ${key} holds an item that is not a network; the global value is used`)
        merged[key] = base[key]
      }
    }
    policies.set(recipient, toPolicy(merged))
  })
  return { policies, errors }
}

/** The file of `Per_User = text,/path`, reread when it changes (checked at most once a second). */
export function openPerUser(config: Config, log: (level: number, msg: string) => void, now: () => number): PerUserFile {
  const path = config.Per_User.replace(/^text\s*,\s*/, '').trim()
  const file = new WatchedFile(path, (text) => parsePerUser(text, config, path))
  let checkedAt = -Infinity
  const current = (): Map<string, SpfPolicy> | null => {
    if (now() - checkedAt >= 1000) {
      checkedAt = now()
      if (file.poll()) {
        const { value, reason } = file.current
        if (value === null) log(0, `Per_User file ${path} unreadable, no per-user settings: ${reason}`)
        else {
          for (const e of value.errors) log(0, `Per_User: ${e}`)
          log(2, `Per_User file ${path} read: ${value.policies.size} recipients`)
        }
      }
    }
    return file.current.value?.policies ?? null
  }
  return {
    policyFor: (recipient) => current()?.get(recipient.toLowerCase()) ?? null,
  }
}
