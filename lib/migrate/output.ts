// What a migration produces, whichever program it comes from: settings of
// policyd-ts.conf with the reason for each, lines of the ratelimit_overrides
// file, and what has no equivalent; and how that is printed.

import type { ConfigKey } from '../config'
import { parseRateKey, type IdentityConfig } from '../ratelimit/identity'
import { parseLimit } from '../ratelimit/limits'
import type { RateClass, RateUnit } from '../ratelimit/types'

export interface Setting {
  key: ConfigKey
  value: string
  /** Comment lines above it: where the value comes from and what differs. */
  why: readonly string[]
}

export interface OverrideLine {
  /** `class:value` as parseRateKey reads it. */
  key: string
  /** `unlimited` or limits in policyd-ts syntax. */
  limits: string
  /** One comment line: the entry it comes from. */
  why: string
}

export interface Migration {
  /** The program converted from, for the header. */
  program: string
  settings: Setting[]
  overrides: OverrideLine[]
  /** One item each: a setting (or behaviour) of the old program and what to do about it. */
  noEquivalent: string[]
}

export type Converted = { migration: Migration } | { error: string }

/** One count per period of the old program. */
export interface OldLimit {
  count: number
  seconds: number
}

/** Override keys are checked against the identity syntax; the prefixes do not matter to that. */
const KEY_CHECK: IdentityConfig = { ratelimit_networks: [], ratelimit_ipv4_prefix: 32, ratelimit_ipv6_prefix: 128, greylist_privacy: false }

/**
 * `class:value` normalised as the override file reads it, or why it cannot
 * be a key. The old programs looked ids up as written: a value that names
 * a group here (@domain, a network, <>) never matched a request there.
 */
export function overrideKey(cls: RateClass, value: string): { key: string } | { problem: string } {
  const parsed = parseRateKey(`${cls}:${value}`, KEY_CHECK)
  if ('error' in parsed) return { problem: parsed.error }
  if (parsed.key.id === undefined) return { problem: `${JSON.stringify(value)} was looked up as written, so no request ever matched it (here it would name a whole group)` }
  return { key: `${parsed.key.cls}:${parsed.key.value}` }
}

/**
 * Old limits in policyd-ts syntax, one unit for all. A period policyd-ts
 * cannot keep (over 366 days) is left out, and of two limits on the same
 * period the smaller wins, as both were checked; each is said in `notes`.
 * Empty when nothing is left.
 */
export function limitsText(limits: readonly OldLimit[], unit: RateUnit, where: string, notes: string[]): string {
  const kept = new Map<number, { count: number; text: string }>()
  for (const l of limits) {
    const parsed = parseLimit(`${l.count}${unit}/${l.seconds}s`)
    if ('error' in parsed) {
      notes.push(`${where}: ${l.count} per ${l.seconds} seconds: ${parsed.error.replace(/^"[^"]*": /, '')}; left out`)
      continue
    }
    const before = kept.get(parsed.limit.window)
    if (before && before.count <= parsed.limit.count) {
      notes.push(`${where}: ${l.count} per ${l.seconds} seconds is looser than ${before.count} per the same period; left out`)
      continue
    }
    if (before) notes.push(`${where}: ${before.count} per ${l.seconds} seconds is looser than ${l.count} per the same period; left out`)
    kept.set(parsed.limit.window, { count: parsed.limit.count, text: parsed.limit.text })
  }
  return [...kept.entries()].sort(([a], [b]) => a - b).map(([, l]) => l.text).join(', ')
}

export interface RenderedMigration {
  /** The policyd-ts.conf fragment. */
  config: string
  /** Where the overrides go; null when there are none. */
  overrides_file: string | null
  overrides: string
  no_equivalent: string[]
}

/** The fragment, the overrides file and the list apart (--json), with ratelimit_overrides pointing at the file. */
export function renderMigration(m: Migration, source: string, overridesFile: string): RenderedMigration {
  const settings = [...m.settings]
  if (m.overrides.length > 0) {
    settings.push({ key: 'ratelimit_overrides', value: overridesFile, why: [`The per-key limits of ${source}, one "CLASS:KEY LIMITS" line each, in the file below.`] })
  }
  const config = [
    `# policyd-ts configuration converted from ${m.program}'s ${source} by policyd-ts migrate.`,
    '# Check it with: policyd-ts --test-mode',
    ...settings.flatMap((s) => ['', ...s.why.map((w) => `# ${w}`), `${s.key} = ${s.value}`.trimEnd()]),
  ].join('\n')
  const overrides = m.overrides.map((o) => `# ${o.why}\n${o.key} ${o.limits}`).join('\n')
  return { config: `${config}\n`, overrides_file: m.overrides.length > 0 ? overridesFile : null, overrides: overrides === '' ? '' : `${overrides}\n`, no_equivalent: m.noEquivalent }
}

/** The three parts for people, each between marker lines that say where it goes. */
export function migrationText(r: RenderedMigration): string {
  const parts = [`# ==== policyd-ts.conf ====\n${r.config}`]
  if (r.overrides_file !== null) parts.push(`# ==== write the lines below to ${r.overrides_file} ====\n${r.overrides}# ==== end of ${r.overrides_file} ====\n`)
  parts.push(r.no_equivalent.length === 0 ? '# ==== everything was converted ====\n' : `# ==== not converted: no equivalent in policyd-ts, or nothing to do ====\n${r.no_equivalent.map((n) => `# - ${n}\n`).join('')}`)
  return parts.join('\n')
}
