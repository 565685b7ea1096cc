// Per-key limits: the ratelimit_overrides file and the entries set with
// `policyd-ts ratelimit set`, and which limits an identity gets. The most
// specific entry wins (a user over its domain, a longer network prefix over
// a shorter one); an entry set with the command wins over the file, being
// the admin's latest word; without any, the class's configured limits.

import type { Config } from '../config'
import { ipInNetwork } from '../normalize'
import { GLOBAL_VALUE, parseRateKey, type IdentityConfig, type ParsedKey, type RateIdentity } from './identity'
import { parseLimitSet } from './limits'
import type { LimitSet, OverrideEntry, RateClass } from './types'

export interface Override {
  key: ParsedKey
  limits: LimitSet
  /** Where it was written, for the log: `file:line` or `set with policyd-ts ratelimit set`. */
  source: string
}

/** Overrides of one source, indexed for the request path. */
export class OverrideTable {
  /** sasl, sender and global entries by "class:value". */
  private readonly byValue = new Map<string, Override>()
  /** client entries, longest prefix first. */
  private readonly networks: Override[] = []

  constructor(entries: readonly Override[] = []) {
    for (const o of entries) {
      if (o.key.cidr) this.networks.push(o)
      else this.byValue.set(`${o.key.cls}:${o.key.value}`, o)
    }
    this.networks.sort((a, b) => b.key.cidr!.prefix - a.key.cidr!.prefix)
  }

  get size(): number {
    return this.byValue.size + this.networks.length
  }

  /** The most specific entry for an identity, if any. */
  match(identity: RateIdentity): Override | undefined {
    switch (identity.cls) {
      case 'global':
        return this.byValue.get(`global:${GLOBAL_VALUE}`)
      case 'client':
        return identity.ip ? this.networks.find((o) => ipInNetwork(identity.ip!, o.key.cidr!)) : undefined
      case 'sasl':
      case 'sender': {
        const exact = this.byValue.get(`${identity.cls}:${identity.value}`)
        if (exact) return exact
        if (identity.value.startsWith('<>@')) return this.byValue.get(`sender:<>`)
        const at = identity.value.lastIndexOf('@')
        return at === -1 ? undefined : this.byValue.get(`${identity.cls}:${identity.value.slice(at)}`)
      }
    }
  }
}

/**
 * Read an override file: one `CLASS:KEY LIMITS` entry per line, `#`
 * comments and blank lines skipped. A bad line is reported with its number
 * and skipped (its key keeps the class's limits); a key written twice keeps
 * its last line, and that is reported too.
 */
export function parseOverrideFile(text: string, source: string, config: IdentityConfig): { entries: Override[]; errors: string[] } {
  const errors: string[] = []
  const byKey = new Map<string, { o: Override; line: number }>()
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim()
    if (line === '') return
    const where = `${source}:${i + 1}`
    const space = line.search(/\s/)
    if (space === -1) {
      errors.push(`${where}: "${line}" has a key but no limits (write unlimited for none); line skipped`)
      return
    }
    const key = parseRateKey(line.slice(0, space), config)
    if ('error' in key) {
      errors.push(`${where}: ${key.error}; line skipped`)
      return
    }
    const limits = parseLimitSet(line.slice(space + 1))
    if ('error' in limits) {
      errors.push(`${where}: ${limits.error}; line skipped`)
      return
    }
    const name = `${key.key.cls}:${key.key.value}`
    const before = byKey.get(name)
    if (before) errors.push(`${where}: ${name} is set again (first at line ${before.line}); the last line counts`)
    byKey.set(name, { o: { key: key.key, limits: limits.limits, source: where }, line: i + 1 })
  })
  return { entries: [...byKey.values()].map((x) => x.o), errors }
}

/** Entries stored by `policyd-ts ratelimit set`, as the request path uses them; an entry that no longer parses is reported and skipped. */
export function storedOverrides(entries: readonly OverrideEntry[], config: IdentityConfig, log: (msg: string) => void): Override[] {
  const out: Override[] = []
  for (const e of entries) {
    const key = parseRateKey(e.key, config)
    const limits = parseLimitSet(e.limits)
    if ('error' in key || 'error' in limits) {
      log(`stored rate-limit override ${e.key} = ${e.limits} skipped: ${'error' in key ? key.error : (limits as { error: string }).error}`)
      continue
    }
    out.push({ key: key.key, limits: limits.limits, source: 'policyd-ts ratelimit set' })
  }
  return out
}

export type ClassLimits = Record<RateClass, LimitSet>

/** The configured limits of each class ([] where none: the class is not limited). */
export function classLimits(config: Pick<Config, 'ratelimit_sasl_limits' | 'ratelimit_sender_limits' | 'ratelimit_client_limits' | 'ratelimit_global_limits'>): ClassLimits {
  const of = (text: string): LimitSet => {
    if (text.trim() === '') return []
    const parsed = parseLimitSet(text)
    // A bad value never reaches here: the config loader refused it (the key keeps its default, no limits).
    return 'error' in parsed ? [] : parsed.limits
  }
  return {
    sasl: of(config.ratelimit_sasl_limits),
    sender: of(config.ratelimit_sender_limits),
    client: of(config.ratelimit_client_limits),
    global: of(config.ratelimit_global_limits),
  }
}

/** The limits an identity gets, and from where (for the log and `ratelimit show`). */
export function limitsFor(identity: RateIdentity, defaults: ClassLimits, stored: OverrideTable, file: OverrideTable): { limits: LimitSet; source: string } {
  const o = stored.match(identity) ?? file.match(identity)
  if (o) return { limits: o.limits, source: `${o.source} (${o.key.cls}:${o.key.value})` }
  return { limits: defaults[identity.cls], source: `ratelimit_${identity.cls}_limits` }
}
