// The limit syntax of ratelimit_*_limits, overrides and `policyd-ts
// ratelimit set`: `30msg/1m, 1000rcpt/1d, 1GB/1d`, or `unlimited`.
// COUNT[rcpt|msg|B|KB|MB|GB]/DURATION; a bare count is recipients (as
// policyd-rate-limit counts); bytes are binary multiples (1KB = 1024 B, as
// Postfix's message_size_limit reckons); DURATION is a count of s, m, h, d
// or w (a bare number is seconds).

import type { Limit, LimitSet, RateUnit } from './types'

const BYTE_UNITS: Record<string, number> = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 }
const SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 }
/** Longer windows are typos, not policies; a year also bounds the slot arithmetic. */
export const LONGEST_WINDOW = 366 * 86400
/** Counts fit well inside a double's exact integers and SQLite's INTEGER. */
const LARGEST_COUNT = 2 ** 50

const LIMIT = /^(\d{1,16})\s*(rcpt|msg|b|kb|mb|gb)?\s*\/\s*(\d{1,9})\s*(s|m|h|d|w)?$/i

/** One limit such as `30msg/1m`, or why it is not one. */
export function parseLimit(text: string): { limit: Limit } | { error: string } {
  const m = LIMIT.exec(text.trim())
  if (!m) return { error: `${JSON.stringify(text.trim())} is not a limit such as 30msg/1m, 1000rcpt/1d or 1GB/1d` }
  const word = (m[2] ?? 'rcpt').toLowerCase()
  const unit: RateUnit = word === 'rcpt' || word === 'msg' ? word : 'bytes'
  const count = Number(m[1]) * (BYTE_UNITS[word] ?? 1)
  const window = Number(m[3]) * SECONDS[(m[4] ?? 's').toLowerCase()]
  if (window < 1) return { error: `${JSON.stringify(text.trim())}: the period must be at least one second` }
  if (window > LONGEST_WINDOW) return { error: `${JSON.stringify(text.trim())}: the period is longer than 366d` }
  if (count > LARGEST_COUNT) return { error: `${JSON.stringify(text.trim())}: the count is too large` }
  return { limit: { count, unit, window, text: formatLimit(count, unit, window) } }
}

/**
 * A list of limits separated by commas (or blanks), or `unlimited`; every
 * problem is reported, and a limit written twice (same unit and period) is
 * one too many: which of the two was meant cannot be guessed.
 */
export function parseLimitSet(text: string): { limits: LimitSet } | { error: string } {
  const items = text.split(/[,\s]+/).filter((x) => x !== '')
  if (items.length === 1 && items[0].toLowerCase() === 'unlimited') return { limits: 'unlimited' }
  if (items.some((x) => x.toLowerCase() === 'unlimited')) return { error: '"unlimited" cannot be combined with limits' }
  const limits: Limit[] = []
  const errors: string[] = []
  for (const item of splitItems(text)) {
    const parsed = parseLimit(item)
    if ('error' in parsed) errors.push(parsed.error)
    else if (limits.some((l) => l.unit === parsed.limit.unit && l.window === parsed.limit.window)) errors.push(`two limits on ${parsed.limit.unit} per ${formatDuration(parsed.limit.window)}`)
    else limits.push(parsed.limit)
  }
  if (errors.length > 0) return { error: errors.join('; ') }
  return { limits }
}

/**
 * The items between commas; an item that is not one limit is several when
 * each of its blank-separated words is one ("30msg/1m 1000rcpt/1d"), and
 * stays whole otherwise, so that "30 msg / 1 m" is one limit and a typo is
 * reported as written.
 */
function splitItems(text: string): string[] {
  return text.split(',').map((x) => x.trim()).filter((x) => x !== '').flatMap((item) => {
    if (LIMIT.test(item)) return [item]
    const words = item.split(/\s+/)
    return words.every((w) => LIMIT.test(w)) ? words : [item]
  })
}

/** The canonical text of a limit: the largest byte unit that divides the count, the largest time unit that divides the window. */
export function formatLimit(count: number, unit: RateUnit, window: number): string {
  let amount = `${count}${unit}`
  if (unit === 'bytes') {
    const [name, size] = Object.entries(BYTE_UNITS).reverse().find(([, size]) => count % size === 0 && count >= size) ?? ['b', 1]
    amount = `${count / size}${name.toUpperCase()}`
  }
  return `${amount}/${formatDuration(window)}`
}

export function formatDuration(seconds: number): string {
  const [name, size] = Object.entries(SECONDS).reverse().find(([, size]) => seconds % size === 0) ?? ['s', 1]
  return `${seconds / size}${name}`
}

export function formatLimitSet(limits: LimitSet): string {
  return limits === 'unlimited' ? 'unlimited' : limits.map((l) => l.text).join(', ')
}
