// What --test-mode says about rate limiting: the limits of each class, the
// override file, and whether Postfix's restrictions put the check where it
// must be (before the permit_* entries; in smtpd_end_of_data_restrictions).

import type { Config } from '../config'
import { formatLimitSet } from './limits'
import { classLimits, parseOverrideFile } from './overrides'

/** postconf -h NAME, or null when postconf cannot be run (no Postfix here). */
export type Postconf = (name: string) => string | null

export function systemPostconf(name: string): string | null {
  const { spawnSync } = require('node:child_process') as typeof import('node:child_process')
  const r = spawnSync('postconf', ['-h', name], { encoding: 'utf8', timeout: 5000 })
  return r.status === 0 ? r.stdout.trim() : null
}

/** Innermost `{ ... }`: the options of an entry, never entries themselves. */
const OPTIONS = /\{[^{}]*\}/g

/**
 * Restriction entries of a postconf value, in order: commas and blanks
 * separate them, and what stands in braces is dropped, nested ones too
 * (`check_sender_access inline:{ { a@example.org = permit_mynetworks } }`
 * names no permit_mynetworks entry). Each pass removes at least one pair of
 * braces, so the loop ends.
 */
function entries(value: string): string[] {
  let flat = value
  let before: string
  do {
    before = flat
    flat = flat.replace(OPTIONS, ' ')
  } while (flat !== before)
  return flat.split(/[\s,]+/).filter((x) => x !== '')
}

export function rateLimitNotes(config: Config, postconf: Postconf, readFile: (path: string) => string): { notes: string[]; warnings: string[] } {
  const notes: string[] = []
  const warnings: string[] = []
  if (!config.ratelimit_enabled) return { notes: ['rate limiting is off'], warnings }
  const limits = classLimits(config)
  for (const cls of ['sasl', 'sender', 'client', 'global'] as const) {
    notes.push(`${cls} limits: ${limits[cls] === 'unlimited' || limits[cls].length > 0 ? formatLimitSet(limits[cls]) : 'none'}`)
  }
  if ((limits.sender !== 'unlimited' && limits.sender.length > 0 || limits.client !== 'unlimited' && limits.client.length > 0) && config.ratelimit_networks.length === 0) {
    warnings.push('ratelimit_sender_limits and ratelimit_client_limits apply only to clients in ratelimit_networks, which is empty: they limit nobody')
  }
  if (config.ratelimit_overrides !== '') {
    try {
      const { entries: found, errors } = parseOverrideFile(readFile(config.ratelimit_overrides), config.ratelimit_overrides, config)
      notes.push(`overrides ${config.ratelimit_overrides}: ${found.length} entries`)
      warnings.push(...errors)
    } catch (err) {
      warnings.push(`overrides ${config.ratelimit_overrides}: ${(err as Error).message} (the class limits apply alone)`)
    }
  }
  const recipient = postconf('smtpd_recipient_restrictions')
  if (recipient === null) {
    notes.push('postconf could not be run: the Postfix restrictions were not checked')
    return { notes, warnings }
  }
  const rcpt = entries(recipient)
  const policy = rcpt.findIndex((e) => e === 'check_policy_service')
  if (policy === -1) warnings.push('smtpd_recipient_restrictions has no check_policy_service: nothing is held at RCPT')
  else {
    for (const permit of ['permit_mynetworks', 'permit_sasl_authenticated']) {
      const at = rcpt.indexOf(permit)
      if (at !== -1 && at < policy) warnings.push(`smtpd_recipient_restrictions: ${permit} comes before check_policy_service, so those clients are never rate-limited; put the check first`)
    }
  }
  if (config.ratelimit_commit_at === 'end-of-message') {
    const eod = entries(postconf('smtpd_end_of_data_restrictions') ?? '')
    if (!eod.includes('check_policy_service')) {
      warnings.push('smtpd_end_of_data_restrictions has no check_policy_service: held mail is never counted; add: smtpd_end_of_data_restrictions = check_policy_service <the same service as in smtpd_recipient_restrictions> (or set ratelimit_commit_at = data)')
    } else notes.push('smtpd_end_of_data_restrictions has check_policy_service: held mail is counted there')
  }
  return { notes, warnings }
}
