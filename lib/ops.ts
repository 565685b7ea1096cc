// The ops commands: greylist list|delete|whitelist|unwhitelist, stats,
// store check|purge. They act on the configured store (run them as root or
// as the store's owner), print a table for people or JSON (--json) for
// scripts, and never run on the request path. The rate-limit commands are
// one more group of the same shape, in ./ops/ratelimit.ts.

import type { Config, LoadedConfig } from './config'
import { globToRegExp, splitTripletKey, tripletMatcher, type TripletFilter } from './ops/patterns'
import { clientNetwork, normalizeRecipient, normalizeSender, parseCidr } from './normalize'
import { whitelistKey, type WhitelistKind } from './greylist/check'
import type { StoreAdmin, GreylistStore } from './store/types'

export const EX_USAGE = 64
export const EX_UNAVAILABLE = 69
export const EX_DATAERR = 65

export interface OpsIo {
  out(text: string): void
  err(text: string): void
  /** Epoch seconds. */
  now(): number
}

export type OpsStore = GreylistStore & StoreAdmin

const KINDS: readonly WhitelistKind[] = ['client', 'sender', 'recipient']

/**
 * The value a whitelist entry is stored under, normalised as the greylist
 * check looks it up, or why it cannot be one. A client entry is an address
 * or a network of the size greylisting keys clients by (the check looks up
 * exactly those two): any other size could never match.
 */
export function whitelistValue(kind: WhitelistKind, value: string, config: Pick<Config, 'greylist_ipv4_prefix' | 'greylist_ipv6_prefix'>): { value: string } | { problem: string } {
  const v = value.trim()
  if (kind === 'client') {
    const cidr = parseCidr(v)
    if (!cidr) return { problem: 'is not an IP address or network' }
    const bits = cidr.net.bytes.length * 8
    const keyed = cidr.net.family === 4 ? config.greylist_ipv4_prefix : config.greylist_ipv6_prefix
    if (cidr.prefix !== bits && cidr.prefix !== keyed) {
      return { problem: `is a /${cidr.prefix} network, but greylisting keys IPv${cidr.net.family} clients by /${keyed} (greylist_ipv${cidr.net.family}_prefix): give an address or a /${keyed} network` }
    }
    return { value: clientNetwork(cidr.net, cidr.prefix, cidr.prefix) }
  }
  if (kind === 'sender' && v === '<>') return { value: '<>' }
  if (!/^[^@\s]*@[^@\s]+$/.test(v)) return { problem: 'is not an address (local@domain)' }
  return { value: kind === 'sender' ? normalizeSender(v) : normalizeRecipient(v) }
}

/** Seconds from "300", "5m", "2h", "35d", "1w"; null when it is none of them. */
export function parseTtl(text: string): number | null {
  const m = /^(\d{1,9})\s*(s|m|h|d|w)?$/i.exec(text.trim())
  if (!m) return null
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[(m[2] ?? 's').toLowerCase() as 's']
}

/** When an entry given `--ttl` ends: Infinity without one, null (said on stderr) for a bad one. */
export function ttlExpiry(ttl: string | undefined, io: OpsIo, command: string): number | null {
  if (ttl === undefined) return Infinity
  const seconds = parseTtl(ttl)
  if (seconds === null || seconds === 0) {
    io.err(`policyd-ts ${command}: --ttl ${JSON.stringify(ttl)} is not a duration such as 3600, 12h or 30d\n`)
    return null
  }
  return io.now() + seconds
}

/** Epoch seconds as ISO 8601 UTC to the second; `never` for Infinity. */
export function isoTime(t: number): string {
  if (!Number.isFinite(t)) return 'never'
  return new Date(t * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z')
}

/** Rows as aligned columns under a header. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd()
  return `${[line(header), ...rows.map(line)].join('\n')}\n`
}

export interface GreylistListArgs extends TripletFilter {
  limit: number
  json: boolean
}

/** Under greylist_privacy the store holds hashes of the keys: no pattern can match them. */
function warnPrivacy(config: Config, filter: TripletFilter, io: OpsIo): void {
  if (config.greylist_privacy && (filter.client ?? filter.sender ?? filter.recipient) !== undefined) {
    io.err('policyd-ts: greylist_privacy is on: the store holds hashes, which no pattern matches\n')
  }
}

export async function greylistList(store: OpsStore, config: Config, args: GreylistListArgs, io: OpsIo): Promise<number> {
  warnPrivacy(config, args, io)
  const rows = await store.listTriplets(tripletMatcher(args), args.limit)
  if (args.json) {
    io.out(`${JSON.stringify(rows.map((r) => ({ ...r, ...(splitTripletKey(r.key) ?? {}), state: r.passed > 0 ? 'passed' : 'waiting' })))}\n`)
    return 0
  }
  io.out(table(
    ['CLIENT', 'SENDER', 'RECIPIENT', 'STATE', 'FIRST', 'LAST', 'SEEN', 'EXPIRES'],
    rows.map((r) => {
      const parts = splitTripletKey(r.key) ?? { subject: r.key, sender: '', recipient: '' }
      return [parts.subject, parts.sender, parts.recipient, r.passed > 0 ? 'passed' : 'waiting', isoTime(r.first), isoTime(r.last), String(r.count), isoTime(r.expires)]
    }),
  ))
  if (rows.length === args.limit) io.err(`policyd-ts: the first ${args.limit} matching triplets shown (--limit)\n`)
  return 0
}

export async function greylistDelete(store: OpsStore, config: Config, args: TripletFilter & { all: boolean; json: boolean }, io: OpsIo): Promise<number> {
  warnPrivacy(config, args, io)
  if (!args.all && args.client === undefined && args.sender === undefined && args.recipient === undefined) {
    io.err('policyd-ts greylist delete: give --client, --sender or --recipient, or --all to delete every triplet\n')
    return EX_USAGE
  }
  const n = await store.deleteTriplets(args.all ? () => true : tripletMatcher(args))
  io.out(args.json ? `${JSON.stringify({ deleted: n })}\n` : `${n} triplets deleted\n`)
  return 0
}

export interface WhitelistArgs {
  kind?: string
  value?: string
  ttl?: string
  note?: string
  json: boolean
}

export async function greylistWhitelist(store: OpsStore, config: Config, args: WhitelistArgs, io: OpsIo): Promise<number> {
  if (args.kind === undefined) return listWhitelist(store, args.json, io)
  const key = entryKey(args.kind, args.value, config, io, 'whitelist')
  if (key === null) return EX_USAGE
  const expires = ttlExpiry(args.ttl, io, 'greylist whitelist')
  if (expires === null) return EX_USAGE
  await store.setWhitelist({ key, expires, note: args.note ?? '', setAt: io.now() })
  const [kind, value] = key.split('\t')
  io.out(args.json ? `${JSON.stringify({ kind, value, expires: Number.isFinite(expires) ? expires : null })}\n` : `${kind} ${value} whitelisted${Number.isFinite(expires) ? ` until ${isoTime(expires)}` : ''}\n`)
  return 0
}

export async function greylistUnwhitelist(store: OpsStore, config: Config, args: WhitelistArgs, io: OpsIo): Promise<number> {
  const key = entryKey(args.kind, args.value, config, io, 'unwhitelist')
  if (key === null) return EX_USAGE
  const [kind, value] = key.split('\t')
  if (!(await store.deleteWhitelist(key))) {
    io.err(`policyd-ts greylist unwhitelist: no whitelist entry for ${kind} ${value}\n`)
    return EX_DATAERR
  }
  io.out(args.json ? `${JSON.stringify({ kind, value, removed: true })}\n` : `${kind} ${value} no longer whitelisted\n`)
  return 0
}

function entryKey(kind: string | undefined, value: string | undefined, config: Config, io: OpsIo, verb: string): string | null {
  if (kind === undefined || !(KINDS as readonly string[]).includes(kind) || value === undefined) {
    io.err(`policyd-ts greylist ${verb}: give client ADDRESS[/BITS], sender ADDRESS or recipient ADDRESS\n`)
    return null
  }
  const v = whitelistValue(kind as WhitelistKind, value, config)
  if ('problem' in v) {
    io.err(`policyd-ts greylist ${verb}: ${JSON.stringify(value)} ${v.problem}\n`)
    return null
  }
  return whitelistKey(kind as WhitelistKind, v.value)
}

async function listWhitelist(store: OpsStore, json: boolean, io: OpsIo): Promise<number> {
  const entries = (await store.listWhitelist()).filter((e) => e.expires > io.now())
  const shown = entries.map((e) => {
    const [kind, value] = e.key.split('\t')
    return { kind, value, expires: Number.isFinite(e.expires) ? e.expires : null, note: e.note, set_at: e.setAt }
  })
  if (json) io.out(`${JSON.stringify(shown)}\n`)
  else io.out(table(['KIND', 'VALUE', 'EXPIRES', 'SET', 'NOTE'], shown.map((e) => [e.kind, e.value, isoTime(e.expires ?? Infinity), isoTime(e.set_at), e.note])))
  return 0
}

/** stats: the counters every process added to the store, summed over hosts (--json per host too). */
export async function stats(store: OpsStore, args: { json: boolean; prometheus: boolean }, io: OpsIo): Promise<number> {
  const rows = await store.stats()
  const totals = new Map<string, number>()
  for (const r of rows) totals.set(r.name, (totals.get(r.name) ?? 0) + r.value)
  if (args.json) {
    io.out(`${JSON.stringify({ totals: Object.fromEntries(totals), hosts: rows })}\n`)
    return 0
  }
  if (args.prometheus) {
    // For node_exporter's textfile collector: one TYPE line per family.
    const lines: string[] = []
    let family = ''
    for (const [name, value] of [...totals].sort(([a], [b]) => a.localeCompare(b))) {
      const f = name.replace(/\{.*$/, '')
      if (f !== family) lines.push(`# TYPE ${(family = f)} counter`)
      lines.push(`${name} ${value}`)
    }
    io.out(lines.length > 0 ? `${lines.join('\n')}\n` : '')
    return 0
  }
  if (totals.size === 0) {
    io.out('no counters in the store yet (processes add theirs every 10 seconds of activity and when they exit)\n')
    return 0
  }
  io.out(table(['COUNTER', 'VALUE'], [...totals].sort(([a], [b]) => a.localeCompare(b)).map(([n, v]) => [n, String(v)])))
  return 0
}

export async function storeCheck(store: OpsStore, json: boolean, io: OpsIo): Promise<number> {
  const health = await store.check()
  io.out(json ? `${JSON.stringify(health)}\n` : `${health.lines.join('\n')}\n${health.ok ? 'ok' : 'PROBLEM'}\n`)
  return health.ok ? 0 : EX_UNAVAILABLE
}

export async function storePurge(store: OpsStore, json: boolean, io: OpsIo): Promise<number> {
  const n = await store.purgeAll(io.now())
  io.out(json ? `${JSON.stringify({ purged: n })}\n` : `${n} expired rows purged\n`)
  return 0
}

/** The store the configuration names, for a command; errors become one line and EX_UNAVAILABLE. */
export function openOpsStore(loaded: LoadedConfig): OpsStore {
  const c = loaded.config
  if (c.store === 'redis') {
    // store = redis (task HC)
    const { RedisStore, redisStoreOptions } = require('./store/redis') as typeof import('./store/redis')
    return new RedisStore(redisStoreOptions(c, () => undefined))
  }
  const { SqliteStore } = require('./store/sqlite') as typeof import('./store/sqlite')
  return new SqliteStore({ path: c.db_path, busyTimeoutMs: c.db_busy_timeout * 1000, renameCorrupt: false, mustExist: true, log: () => undefined })
}

export { globToRegExp }
