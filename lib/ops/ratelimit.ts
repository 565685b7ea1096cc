// The `policyd-ts ratelimit` commands: show, list [--over], top, reset,
// set, unset, hits. They act on the configured store's rate-limit state
// (RateLimitAdmin), print a table for people or JSON (--json) for scripts,
// and never run on the request path. A KEY is read by the check's own
// parseRateKey and the limits in effect come from its own limitsFor, so
// that what an admin types finds what the check counted, under the limits
// the check applies.

import type { Config } from '../config'
import { ipInNetwork, parseCidr } from '../normalize'
import { EX_DATAERR, EX_USAGE, isoTime, parseTtl, table, ttlExpiry, type OpsIo } from '../ops'
import { parseRateKey, type ParsedKey, type RateIdentity } from '../ratelimit/identity'
import { formatDuration, formatLimitSet, parseLimitSet } from '../ratelimit/limits'
import { classLimits, limitsFor, OverrideTable, parseOverrideFile, storedOverrides, type ClassLimits, type Override } from '../ratelimit/overrides'
import { RATE_CLASSES, type HitListing, type LimitSet, type OverrideEntry, type RateClass, type RateLimitAdmin, type RateLimitStore, type RateUnit, type UsageListing } from '../ratelimit/types'

/** What the commands need of a store: its admin side and the overrides `set` wrote. */
export type RateOpsStore = RateLimitAdmin & Pick<RateLimitStore, 'listOverrides'>
export type ReadFile = (path: string) => string

const DAY = 86400

/** A key as the commands print and store it: `class:value`, `global` for the installation. */
export function keyText(key: ParsedKey): string {
  return key.cls === 'global' ? 'global' : `${key.cls}:${key.value}`
}

/** The ratelimit_overrides file's entries; what is wrong with it goes to stderr, and an unreadable file counts as empty. */
function fileOverrides(config: Config, readFile: ReadFile, io: OpsIo): Override[] {
  const path = config.ratelimit_overrides
  if (path === '') return []
  let text: string
  try {
    text = readFile(path)
  } catch (err) {
    io.err(`policyd-ts ratelimit: cannot read ratelimit_overrides ${path}: ${(err as Error).message}; its entries are left out\n`)
    return []
  }
  const { entries, errors } = parseOverrideFile(text, path, config)
  for (const e of errors) io.err(`policyd-ts ratelimit: ${e}\n`)
  return entries
}

/** The limits of stored identities, resolved as the check resolves them. */
export class LimitResolver {
  private readonly defaults: ClassLimits
  private readonly stored: Override[]
  private readonly storedTable: OverrideTable
  private readonly fileTable: OverrideTable

  constructor(
    private readonly config: Config,
    /** The store's entries as `set` wrote them (with expiry and note). */
    readonly storedEntries: readonly OverrideEntry[],
    private readonly file: readonly Override[],
    log: (msg: string) => void,
  ) {
    this.defaults = classLimits(config)
    this.stored = storedOverrides(storedEntries, config, log)
    this.storedTable = new OverrideTable(this.stored)
    this.fileTable = new OverrideTable(file)
  }

  static async load(store: RateOpsStore, config: Config, readFile: ReadFile, io: OpsIo): Promise<LimitResolver> {
    const log = (msg: string): void => io.err(`policyd-ts ratelimit: ${msg}\n`)
    return new LimitResolver(config, await store.listOverrides(io.now()), fileOverrides(config, readFile, io), log)
  }

  /** Every override, stored ones first, for `set` without a key and for `show`. */
  overrides(): Array<{ override: Override; from: 'store' | 'file' }> {
    return [...this.stored.map((override) => ({ override, from: 'store' as const })), ...this.file.map((override) => ({ override, from: 'file' as const }))]
  }

  limitsOf(id: string): { limits: LimitSet; source: string } {
    const cls = classOf(id)
    if (cls === null) return { limits: [], source: 'not an identity this version counts' }
    const identity = this.config.greylist_privacy ? null : identityOfId(id, cls, this.config)
    if (identity !== null) return limitsFor(identity, this.defaults, this.storedTable, this.fileTable)
    // Under greylist_privacy the stored value is a digest: only an entry
    // naming exactly this identity (whose digest is its id) can be told.
    const exact = this.stored.find((o) => o.key.id === id) ?? this.file.find((o) => o.key.id === id)
    if (exact) return { limits: exact.limits, source: `${exact.source} (${keyText(exact.key)})` }
    return { limits: this.defaults[cls], source: `ratelimit_${cls}_limits${this.config.greylist_privacy ? ' (greylist_privacy: domain and network entries cannot be matched to a digest)' : ''}` }
  }
}

function classOf(id: string): RateClass | null {
  const cls = id.slice(0, id.indexOf(':'))
  return (RATE_CLASSES as readonly string[]).includes(cls) ? (cls as RateClass) : null
}

/**
 * The identity a stored id in clear stands for, as requestIdentities made
 * it. A client network's counter stands for all its addresses: its first
 * address is the one matched against override networks.
 */
function identityOfId(id: string, cls: RateClass, config: Config): RateIdentity | null {
  const parsed = parseRateKey(id, config)
  if ('error' in parsed || parsed.key.id !== id) return null
  return { cls, id, name: id, value: parsed.key.value, ip: parsed.key.cidr?.net }
}

/**
 * Which stored ids a key names: the one identity of an exact key, or the
 * members of a group (the users of a domain, the null sender of every
 * client, the counters inside or around a network). Null under
 * greylist_privacy for a group: digests cannot be matched.
 */
function keyMatcher(key: ParsedKey, privacy: boolean): ((id: string) => boolean) | null {
  if (key.id !== undefined) return (id) => id === key.id
  if (privacy) return null
  if (key.cidr) {
    const net = key.cidr
    return (id) => {
      if (!id.startsWith('client:')) return false
      const counted = parseCidr(id.slice('client:'.length))
      return counted !== null && (ipInNetwork(counted.net, net) || ipInNetwork(net.net, counted))
    }
  }
  if (key.value === '<>') return (id) => id.startsWith('sender:<>@')
  // sasl:@domain, sender:@domain: ids are stored lower-case.
  return (id) => id.startsWith(`${key.cls}:`) && id.endsWith(key.value)
}

function readKey(text: string | undefined, config: Config, io: OpsIo, verb: string): ParsedKey | null {
  if (text === undefined || text.trim() === '') {
    io.err(`policyd-ts ratelimit ${verb}: give a KEY: sasl:USER, sender:ADDRESS, sender:@DOMAIN, client:ADDRESS[/PREFIX] or global\n`)
    return null
  }
  const parsed = parseRateKey(text, config)
  if ('error' in parsed) {
    io.err(`policyd-ts ratelimit ${verb}: ${parsed.error}\n`)
    return null
  }
  return parsed.key
}

export interface UsageRow {
  /** The limit's text; null for a counter of a unit and period no limit of this identity has now. */
  limit: string | null
  unit: RateUnit
  window: number
  count: number | null
  used: number
  held: number
  /** (used + held) / count: 1 or more means nothing more fits; null without a limit. */
  full: number | null
}

export interface IdentityView {
  id: string
  limits: string[] | 'unlimited'
  source: string
  usage: UsageRow[]
}

/**
 * One identity's limits in effect beside its counters: a row per limit,
 * then counters no limit matches now. Holds are per unit, not per period
 * (every listing of a unit carries the same held amount), and an identity
 * holding mail before any count has a listing of window 0 for them.
 */
export function identityView(id: string, usage: readonly UsageListing[], resolved: { limits: LimitSet; source: string }): IdentityView {
  const limits = resolved.limits === 'unlimited' ? [] : resolved.limits
  const rows: UsageRow[] = limits.map((l) => {
    const used = usage.find((x) => x.unit === l.unit && x.window === l.window)?.used ?? 0
    const held = usage.find((x) => x.unit === l.unit)?.held ?? 0
    // A zero limit lets nothing through: it is full from the start.
    return { limit: l.text, unit: l.unit, window: l.window, count: l.count, used, held, full: l.count === 0 ? 1 : (used + held) / l.count }
  })
  for (const u of usage) {
    const limited = u.window === 0 ? limits.some((l) => l.unit === u.unit) : limits.some((l) => l.unit === u.unit && l.window === u.window)
    if (!limited) rows.push({ limit: null, unit: u.unit, window: u.window, count: null, used: u.used, held: u.held, full: null })
  }
  return { id, limits: resolved.limits === 'unlimited' ? 'unlimited' : limits.map((l) => l.text), source: resolved.source, usage: rows }
}

function fullest(view: IdentityView): UsageRow | null {
  let best: UsageRow | null = null
  for (const r of view.usage) if (r.full !== null && (best === null || r.full > best.full!)) best = r
  return best
}

function isOver(view: IdentityView): boolean {
  return view.usage.some((r) => r.full !== null && r.full >= 1)
}

/** Amounts as people read them: bytes in the largest binary unit that keeps a whole number before the point. */
export function formatAmount(unit: RateUnit, n: number): string {
  if (unit !== 'bytes') return String(n)
  for (const [name, size] of [['GB', 1024 ** 3], ['MB', 1024 ** 2], ['KB', 1024]] as const) {
    if (n >= size) return `${Number((n / size).toFixed(1))}${name}`
  }
  return `${n}B`
}

function percent(full: number | null): string {
  return full === null ? '-' : `${Math.floor(full * 100)}%`
}

function rowLimit(r: UsageRow): string {
  return r.limit ?? `${r.window === 0 ? `${r.unit} held` : `${r.unit}/${formatDuration(r.window)}`} (no limit now)`
}

function usageCells(r: UsageRow): string[] {
  return [rowLimit(r), formatAmount(r.unit, r.used), formatAmount(r.unit, r.held), percent(r.full)]
}

/** Identities with usage, each with its counters: sorted by id, as listUsage returns them. */
function byIdentity(rows: readonly UsageListing[]): Map<string, UsageListing[]> {
  const out = new Map<string, UsageListing[]>()
  for (const r of rows) {
    const list = out.get(r.id) ?? []
    list.push(r)
    out.set(r.id, list)
  }
  return out
}

function hitJson(h: HitListing): Record<string, unknown> {
  return { id: h.id, limit: h.limit, first: h.first, last: h.last, count: h.count }
}

function hitsTable(hits: readonly HitListing[], withId: boolean): string {
  return table(
    [...(withId ? ['ID'] : []), 'LIMIT', 'FIRST', 'LAST', 'REFUSED'],
    hits.map((h) => [...(withId ? [h.id] : []), h.limit, isoTime(h.first), isoTime(h.last), String(h.count)]),
  )
}

export interface ShowArgs {
  key?: string
  json: boolean
}

/**
 * show KEY: the limits in effect and where they come from, the counters
 * of each limit, the hits; for a group key (a domain, a network), the
 * overrides set on it and each member identity the store has.
 */
export async function ratelimitShow(store: RateOpsStore, config: Config, args: ShowArgs, io: OpsIo, readFile: ReadFile): Promise<number> {
  const key = readKey(args.key, config, io, 'show')
  if (key === null) return EX_USAGE
  const resolver = await LimitResolver.load(store, config, readFile, io)
  const name = keyText(key)
  const onKey = resolver.overrides().filter((o) => keyText(o.override.key) === name)
  const match = keyMatcher(key, config.greylist_privacy)
  if (match === null) io.err(`policyd-ts ratelimit show: greylist_privacy is on: the store holds digests, which a group key cannot match; only the overrides on ${name} are shown\n`)
  const usage = match === null ? [] : await store.listUsage(match, io.now(), config.ratelimit_slots)
  const hits = match === null ? [] : (await store.listHits(0)).filter((h) => match(h.id))
  const grouped = byIdentity(usage)
  const ids = new Set([...(key.id !== undefined ? [key.id] : []), ...grouped.keys(), ...hits.map((h) => h.id)])
  const views = [...ids].sort().map((id) => ({ ...identityView(id, grouped.get(id) ?? [], resolver.limitsOf(id)), hits: hits.filter((h) => h.id === id) }))
  const overrides = onKey.map(({ override, from }) => {
    const entry = from === 'store' ? resolver.storedEntries.find((e) => sameKey(e.key, name, config)) : undefined
    return { from, limits: formatLimitSet(override.limits), where: override.source, expires: entry && Number.isFinite(entry.expires) ? entry.expires : null, note: entry?.note ?? '' }
  })
  if (args.json) {
    io.out(`${JSON.stringify({ key: name, exact: key.id !== undefined, overrides, identities: views.map((v) => ({ ...v, hits: v.hits.map(hitJson) })) })}\n`)
    return 0
  }
  const out: string[] = [`${name}${key.id === undefined ? ' (a group of identities)' : ''}`]
  for (const o of overrides) {
    out.push(`override: ${o.limits}, ${o.from === 'store' ? `set with policyd-ts ratelimit set, until ${isoTime(o.expires ?? Infinity)}${o.note !== '' ? ` (${o.note})` : ''}` : `in ${o.where}`}`)
  }
  if (key.id === undefined && match !== null && views.length === 0) out.push('no member has usage or hits in the store')
  for (const v of views) {
    // A group's members each get a block of their own.
    if (key.id === undefined) out.push('', v.id)
    out.push(`limits: ${v.limits === 'unlimited' ? 'unlimited' : v.limits.length === 0 ? 'none' : v.limits.join(', ')} (from ${v.source})`)
    if (v.usage.length > 0) out.push(table(['LIMIT', 'USED', 'HELD', 'FULL'], v.usage.map(usageCells)).trimEnd())
    out.push(v.hits.length === 0 ? 'hits: none' : `hits:\n${hitsTable(v.hits, false).trimEnd()}`)
  }
  io.out(`${out.join('\n')}\n`)
  return 0
}

function sameKey(stored: string, name: string, config: Config): boolean {
  const parsed = parseRateKey(stored, config)
  return !('error' in parsed) && keyText(parsed.key) === name
}

export interface ListArgs {
  over: boolean
  limit: number
  json: boolean
}

/** The views of every identity with usage, in id order. */
async function allViews(store: RateOpsStore, config: Config, io: OpsIo, readFile: ReadFile): Promise<IdentityView[]> {
  const resolver = await LimitResolver.load(store, config, readFile, io)
  const grouped = byIdentity(await store.listUsage(() => true, io.now(), config.ratelimit_slots))
  return [...grouped].map(([id, rows]) => identityView(id, rows, resolver.limitsOf(id)))
}

/** list [--over]: every identity with usage, a row per limit; --over only those with a limit used up. */
export async function ratelimitList(store: RateOpsStore, config: Config, args: ListArgs, io: OpsIo, readFile: ReadFile): Promise<number> {
  const all = (await allViews(store, config, io, readFile)).filter((v) => !args.over || isOver(v))
  const shown = all.slice(0, args.limit)
  if (args.json) io.out(`${JSON.stringify(shown)}\n`)
  else io.out(table(['ID', 'LIMIT', 'USED', 'HELD', 'FULL'], shown.flatMap((v) => v.usage.map((r) => [v.id, ...usageCells(r)]))))
  if (all.length > shown.length) io.err(`policyd-ts: the first ${args.limit} of ${all.length} identities shown (--limit)\n`)
  return 0
}

/** top: the identities closest to (or furthest over) one of their limits, fullest first. */
export async function ratelimitTop(store: RateOpsStore, config: Config, args: { limit: number; json: boolean }, io: OpsIo, readFile: ReadFile): Promise<number> {
  const ranked = (await allViews(store, config, io, readFile))
    .map((v) => ({ id: v.id, row: fullest(v) }))
    .filter((x): x is { id: string; row: UsageRow } => x.row !== null)
    .sort((a, b) => b.row.full! - a.row.full! || (a.id < b.id ? -1 : 1))
    .slice(0, args.limit)
  if (args.json) io.out(`${JSON.stringify(ranked.map(({ id, row }) => ({ id, ...row })))}\n`)
  else io.out(table(['ID', 'LIMIT', 'USED', 'HELD', 'FULL'], ranked.map(({ id, row }) => [id, ...usageCells(row)])))
  return 0
}

/** reset KEY | --all: forget usage, holds and hits (overrides stay). */
export async function ratelimitReset(store: RateOpsStore, config: Config, args: { key?: string; all: boolean; json: boolean }, io: OpsIo): Promise<number> {
  if (args.all === (args.key !== undefined)) {
    io.err('policyd-ts ratelimit reset: give a KEY, or --all to reset every identity\n')
    return EX_USAGE
  }
  let match: (id: string) => boolean = () => true
  if (!args.all) {
    const key = readKey(args.key, config, io, 'reset')
    if (key === null) return EX_USAGE
    const m = keyMatcher(key, config.greylist_privacy)
    if (m === null) {
      io.err(`policyd-ts ratelimit reset: greylist_privacy is on: the store holds digests, which the group key ${keyText(key)} cannot match; give one identity, or --all\n`)
      return EX_USAGE
    }
    match = m
  }
  const n = await store.resetUsage(match)
  io.out(args.json ? `${JSON.stringify({ reset: n })}\n` : `${n} ${n === 1 ? 'identity' : 'identities'} reset\n`)
  return 0
}

export interface SetArgs {
  key?: string
  limits?: string
  ttl?: string
  note?: string
  json: boolean
}

/** set KEY LIMITS [--ttl] [--note]: an override in the store, which wins over the file; without a KEY, every override. */
export async function ratelimitSet(store: RateOpsStore, config: Config, args: SetArgs, io: OpsIo, readFile: ReadFile): Promise<number> {
  if (args.key === undefined) return listOverrides(store, config, args.json, io, readFile)
  const key = readKey(args.key, config, io, 'set')
  if (key === null) return EX_USAGE
  if (args.limits === undefined) {
    io.err(`policyd-ts ratelimit set: give the LIMITS of ${keyText(key)}, such as "5000rcpt/1d, 100msg/1h", or unlimited\n`)
    return EX_USAGE
  }
  const limits = parseLimitSet(args.limits)
  if ('error' in limits) {
    io.err(`policyd-ts ratelimit set: ${limits.error}\n`)
    return EX_USAGE
  }
  const expires = ttlExpiry(args.ttl, io, 'ratelimit set')
  if (expires === null) return EX_USAGE
  const entry: OverrideEntry = { key: keyText(key), limits: formatLimitSet(limits.limits), expires, note: args.note ?? '', setAt: io.now() }
  await store.setOverride(entry)
  if ((key.cls === 'sender' || key.cls === 'client') && config.ratelimit_networks.length === 0) {
    io.err(`policyd-ts ratelimit set: note: ${key.cls} limits apply only to clients inside ratelimit_networks, which is empty\n`)
  }
  if (args.json) io.out(`${JSON.stringify({ key: entry.key, limits: entry.limits, expires: Number.isFinite(expires) ? expires : null, note: entry.note })}\n`)
  else io.out(`${entry.key}: ${entry.limits}${Number.isFinite(expires) ? ` until ${isoTime(expires)}` : ''} (running processes take it within ten seconds)\n`)
  return 0
}

async function listOverrides(store: RateOpsStore, config: Config, json: boolean, io: OpsIo, readFile: ReadFile): Promise<number> {
  const stored = (await store.listOverrides(io.now())).map((e) => ({ key: e.key, limits: e.limits, from: 'store', expires: Number.isFinite(e.expires) ? e.expires : null, note: e.note, set_at: e.setAt }))
  const file = fileOverrides(config, readFile, io).map((o) => ({ key: keyText(o.key), limits: formatLimitSet(o.limits), from: o.source, expires: null, note: '', set_at: null }))
  const all = [...stored, ...file]
  if (json) io.out(`${JSON.stringify(all)}\n`)
  else io.out(table(['KEY', 'LIMITS', 'FROM', 'EXPIRES', 'NOTE'], all.map((e) => [e.key, e.limits, e.from, isoTime(e.expires ?? Infinity), e.note])))
  return 0
}

/** unset KEY: remove the override `set` wrote (the file's entries are the file's). */
export async function ratelimitUnset(store: RateOpsStore, config: Config, args: { key?: string; json: boolean }, io: OpsIo, readFile: ReadFile): Promise<number> {
  const key = readKey(args.key, config, io, 'unset')
  if (key === null) return EX_USAGE
  const name = keyText(key)
  if (!(await store.deleteOverride(name))) {
    const inFile = fileOverrides(config, readFile, io).find((o) => keyText(o.key) === name)
    io.err(`policyd-ts ratelimit unset: no override of ${name} set with policyd-ts ratelimit set${inFile ? ` (the entry in ${inFile.source} is the file's: edit the file)` : ''}\n`)
    return EX_DATAERR
  }
  io.out(args.json ? `${JSON.stringify({ key: name, removed: true })}\n` : `${name}: override removed\n`)
  return 0
}

/** Epoch seconds from "1d" (that long ago) or an ISO 8601 time; null when it is neither. */
export function parseSince(text: string, now: number): number | null {
  const ago = parseTtl(text)
  if (ago !== null) return now - ago
  if (!/^\d{4}-\d{2}-\d{2}/.test(text.trim())) return null
  const ms = Date.parse(text.trim())
  return Number.isFinite(ms) ? ms / 1000 : null
}

/**
 * hits [--since]: who hit which limit, when (the last 24 hours by
 * default). Nothing at all is printed when there is none, so that cron
 * mails the report only when there is something to read.
 */
export async function ratelimitHits(store: RateOpsStore, args: { since?: string; json: boolean }, io: OpsIo): Promise<number> {
  const since = args.since === undefined ? io.now() - DAY : parseSince(args.since, io.now())
  if (since === null) {
    io.err(`policyd-ts ratelimit hits: --since ${JSON.stringify(args.since)} is neither a duration (12h, 7d) nor an ISO time (2026-12-01T00:00:00Z)\n`)
    return EX_USAGE
  }
  const hits = await store.listHits(since)
  if (args.json) io.out(`${JSON.stringify(hits.map(hitJson))}\n`)
  else if (hits.length > 0) io.out(hitsTable(hits, true))
  return 0
}

/**
 * The configured store as the ratelimit commands use it; a store without
 * rate-limit state (a database of an older version) is refused with a
 * message, which the caller turns into EX_UNAVAILABLE.
 */
export function rateOpsStoreOf(store: object): RateOpsStore {
  const s = store as Partial<RateOpsStore>
  const needed: Array<keyof RateOpsStore> = ['listUsage', 'resetUsage', 'setOverride', 'deleteOverride', 'listHits', 'listOverrides']
  const missing = needed.filter((m) => typeof s[m] !== 'function')
  if (missing.length > 0) throw new Error(`this store keeps no rate-limit state (no ${missing.join(', ')})`)
  return s as RateOpsStore
}

/** A whole number of at least 1 from --limit, or the default when not given; null when it is not one. */
function readLimit(text: unknown, fallback: number): number | null {
  if (text === undefined) return fallback
  const n = Number(text)
  return typeof text === 'string' && /^\d+$/.test(text.trim()) && Number.isSafeInteger(n) && n >= 1 ? n : null
}

/** One ratelimit command line (yargs' result) to its command. */
export async function runRateLimit(store: RateOpsStore, config: Config, args: Record<string, unknown>, io: OpsIo, readFile: ReadFile): Promise<number> {
  const str = (name: string): string | undefined => (typeof args[name] === 'string' ? (args[name] as string) : undefined)
  const json = args.json === true
  const action = String(args.action)
  // Only set takes LIMITS: a third word elsewhere is a mistake, not something to ignore.
  if (action !== 'set' && str('limits') !== undefined) {
    io.err(`policyd-ts ratelimit ${action}: unexpected argument ${JSON.stringify(str('limits'))}\n`)
    return EX_USAGE
  }
  if (['list', 'top', 'hits'].includes(action) && str('key') !== undefined) {
    io.err(`policyd-ts ratelimit ${action}: takes no KEY (got ${JSON.stringify(str('key'))})\n`)
    return EX_USAGE
  }
  switch (action) {
    case 'show':
      return ratelimitShow(store, config, { key: str('key'), json }, io, readFile)
    case 'list':
    case 'top': {
      const limit = readLimit(args.limit, action === 'list' ? 1000 : 10)
      if (limit === null) {
        io.err(`policyd-ts ratelimit ${action}: --limit ${JSON.stringify(str('limit'))} is not a positive whole number\n`)
        return EX_USAGE
      }
      return action === 'list' ? ratelimitList(store, config, { over: args.over === true, limit, json }, io, readFile) : ratelimitTop(store, config, { limit, json }, io, readFile)
    }
    case 'reset':
      return ratelimitReset(store, config, { key: str('key'), all: args.all === true, json }, io)
    case 'set':
      return ratelimitSet(store, config, { key: str('key'), limits: str('limits'), ttl: str('ttl'), note: str('note'), json }, io, readFile)
    case 'unset':
      return ratelimitUnset(store, config, { key: str('key'), json }, io, readFile)
    case 'hits':
      return ratelimitHits(store, { since: str('since'), json }, io)
    default:
      io.err(`policyd-ts ratelimit: unknown action ${JSON.stringify(action)}\n`)
      return EX_USAGE
  }
}
