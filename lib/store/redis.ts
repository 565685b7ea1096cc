// The Redis (or Valkey) store: greylisting shared by several MX hosts, with
// the SQLite store's semantics (the conformance table runs against both).
// Loaded only when store = redis, and by a computed path (lib/app.ts), so
// neither this module nor the client library is in the start-up bundle.
//
// Keys (P = redis_prefix; the hash tag {g} puts them all in one slot, so a
// script may name any of them):
//   P{g}:meta           format and greylist_privacy of the keys (refuses a host that differs)
//   P{g}:t:<triplet>    first, last, passed, count; expires, count bucket, version (TTL at expiry)
//   P{g}:c:<client>     count, last, last counted; expires, count bucket, version (TTL at expiry)
//   P{g}:n              row counts by expiry hour (redis-scripts.ts) and the version sequence
//   P{g}:w              whitelist entries of `policyd-ts greylist whitelist`: key → END<TAB>SET-AT<TAB>NOTE
//   P{g}:s              counters of `policyd-ts stats`: HOST<TAB>NAME → value
//
// Failures: the client has no offline queue and resends nothing, each
// command has redis_timeout, and a whole request has redis_timeout too; it
// reconnects in the background with a capped backoff. Every error leaves as
// a StoreError, so decide.ts answers fail_action and logs the change once.

import type { Redis as RedisClient, RedisOptions } from 'ioredis'
import type { Config } from '../config'
import type { HitListing, OverrideEntry, RateLimitAdmin, RateLimitStep, RateLimitStore, StepResult, UsageListing } from '../ratelimit/types'
import { GL_CAS, GL_PURGE, GL_READ, GL_UPKEEP, WL_PURGE } from './redis-scripts'
import { RL_COMMIT, RL_HOLD, RL_PURGE, RL_RELEASE } from './redis-ratelimit.lua'
import * as rl from './redis-ratelimit'
import { byteOrder, execPipeline } from './redis-ratelimit'
import { describeEndpoint, parseRedisUrl, type RedisEndpoint } from './redis-url'
import {
  StoreError,
  type GreylistStore,
  type GreylistUpdate,
  type GreylistView,
  type StoreAdmin,
  type StoreFailure,
  type StoreHealth,
  type TripletListing,
  type WhitelistEntry,
} from './types'

export interface RedisStoreOptions {
  endpoint: RedisEndpoint
  /** Read at each connection: its first line is the password. */
  passwordFile?: string
  sentinels?: ReadonlyArray<{ host: string; port: number }>
  sentinelName?: string
  prefix: string
  timeoutMs: number
  /** greylist_privacy: part of the key format every host sharing the store must agree on (a function: as a reload changes it). */
  privacy: boolean | (() => boolean)
  log: (level: number, msg: string) => void
  /**
   * Tests only: epoch seconds instead of the server's TIME, so that one
   * table of cases with small times drives both stores. Without it the
   * view carries the server's time (GreylistView.now).
   */
  clock?: () => number
  /** Milliseconds of the first reconnection delay and its cap (doubling between). */
  reconnectMs?: { first: number; max: number }
}

/** The layout of the keys; a change is a new number, and hosts of different numbers refuse to share. */
export const KEY_FORMAT = '1'
/**
 * Retries of one read-decide-write before it gives up as busy. A retry
 * means another request wrote the same rows meanwhile (and that one is
 * done), so among N requests racing for one triplet each needs at most
 * N attempts: six attempts carry six at once.
 */
export const CAS_RETRIES = 5
/** Keys per SCAN step and per delete script of the ops commands. */
const SCAN_COUNT = 1000
const DELETE_BATCH = 500
/** SCAN always ends; this bounds it anyway (ten million steps of SCAN_COUNT). */
const MAX_SCAN_STEPS = 10_000_000
/** We are leaving: replies still on their way no longer matter. */
const CLOSE_WAIT_MS = 100
const NOT_YET = 'not connected yet'

interface Scripts {
  glRead(...args: string[]): Promise<[string, Array<string | null>, Array<string | null>, string, Array<string | null>]>
  glCas(...args: string[]): Promise<number>
  glPurge(numKeys: number, ...args: string[]): Promise<number>
  glUpkeep(...args: string[]): Promise<[number, number]>
}
type Client = RedisClient & Scripts & rl.RateLimitScripts

/** Map a client or server error to its failure class. */
export function classifyRedisError(err: unknown): StoreFailure {
  if (err instanceof StoreError) return err.failure
  const message = String((err as Error)?.message ?? err)
  const code = String((err as { code?: unknown })?.code ?? '')
  if (/^OOM\b/.test(message)) return 'full'
  if (/^(READONLY|NOPERM)\b/.test(message)) return 'readonly'
  if (/^BUSY\b/.test(message)) return 'busy'
  if (/^(LOADING|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|NOAUTH|WRONGPASS)\b/.test(message)) return 'unavailable'
  if (/^E[A-Z]+$/.test(code) || /Connection is closed|Stream isn't writeable|Command timed out|connect ETIMEDOUT|MaxRetriesPerRequest|All sentinels are unreachable|Reached the max retries/i.test(message)) {
    return 'unavailable'
  }
  return 'error'
}

export class RedisStore implements GreylistStore, StoreAdmin, RateLimitStore, RateLimitAdmin {
  private client: Client | null = null
  private connecting: Promise<void> | null = null
  private closed = false
  /** Why the connection is down, for the error of a request that finds it down. */
  private downReason = NOT_YET
  private wasReady = false
  /** Lost after having been ready, until ready again. */
  private down = false
  private readonly where: string
  protected readonly k: { // [hg] protected: the importer (redis-import.ts) extends this store
    meta: string
    triplet: string
    client: string
    counters: string
    whitelist: string
    stats: string
  }
  private readonly rk: rl.RateLimitKeys

  constructor(private readonly opts: RedisStoreOptions) {
    const base = `${opts.prefix}{g}:`
    this.k = { meta: `${base}meta`, triplet: `${base}t:`, client: `${base}c:`, counters: `${base}n`, whitelist: `${base}w`, stats: `${base}s` }
    this.rk = new rl.RateLimitKeys(opts.prefix)
    this.where = opts.sentinels?.length
      ? `redis sentinel ${opts.sentinelName} (${opts.sentinels.map((s) => `${s.host}:${s.port}`).join(', ')})`
      : `redis ${describeEndpoint(opts.endpoint)}`
  }

  // ---- the request path

  async updateGreylist<T>(tripletKey: string, clientKey: string, decide: (view: GreylistView) => GreylistUpdate<T>, whitelistKeys: () => readonly string[] = () => []): Promise<T> {
    return this.request(async (c) => {
      const keys = [this.k.meta, this.k.triplet + tripletKey, this.k.client + clientKey, this.k.counters]
      const wl = whitelistKeys().filter((key) => key !== '')
      for (let attempt = 1; ; attempt++) {
        const [nowText, t, cl, count, entries] = await c.glRead(...keys, this.k.whitelist, ...this.metaArgs(), this.testClock(), ...wl)
        const view: GreylistView = {
          triplet: t[4] === null ? null : { first: Number(t[0]), last: Number(t[1]), passed: Number(t[2]), count: Number(t[3]) },
          client: cl[3] === null ? null : { count: Number(cl[0]), last: Number(cl[1]), lastCounted: Number(cl[2]) },
          tripletCount: Number(count),
        }
        const whitelisted = longestEntry(wl, entries)
        if (whitelisted) view.whitelisted = whitelisted
        if (!this.opts.clock) view.now = Number(nowText)
        const update = decide(view)
        if (update.triplet === undefined && update.client === undefined) return update.result
        const written = await c.glCas(...keys, ...this.metaArgs(), this.testClock(), t[4] ?? '', cl[3] ?? '', ...tripletArgs(update), ...clientArgs(update))
        if (written === 1) return update.result
        if (attempt > CAS_RETRIES) throw new StoreError('busy', `${this.where}: triplet ${tripletKey} changed by other requests ${attempt} times while this one decided`)
      }
    })
  }

  /** Rows go by their TTL; the upkeep step drains the count buckets whose hour is over. Returns 0: nothing is purged here. */
  async purgeExpired(_now: number, _limit: number): Promise<number> {
    await this.request((c) => c.glUpkeep(this.k.counters, this.testClock()))
    return 0
  }

  async counts(): Promise<{ triplets: number; clients: number }> {
    const [triplets, clients] = await this.request((c) => c.glUpkeep(this.k.counters, this.testClock()))
    return { triplets, clients }
  }

  close(): void {
    this.closed = true
    this.client?.disconnect()
    this.client = null
  }

  // ---- StoreAdmin: the ops commands, never on the request path

  async listTriplets(match: (key: string) => boolean, limit: number): Promise<TripletListing[]> {
    return this.admin(async (c) => {
      const keys = (await this.scan(c, this.k.triplet)).filter(match).sort(byteOrder).slice(0, limit)
      const pipe = c.pipeline()
      for (const key of keys) pipe.hmget(this.k.triplet + key, 'f', 'l', 'p', 'n', 'e')
      const rows = await execPipeline(pipe)
      const out: TripletListing[] = []
      keys.forEach((key, i) => {
        const r = rows[i] as Array<string | null>
        // Gone since the scan (expired or deleted): not listed.
        if (r[0] !== null) out.push({ key, first: Number(r[0]), last: Number(r[1]), passed: Number(r[2]), count: Number(r[3]), expires: Number(r[4]) })
      })
      return out
    })
  }

  async deleteTriplets(match: (key: string) => boolean): Promise<number> {
    return this.admin(async (c) => {
      const keys = (await this.scan(c, this.k.triplet)).filter(match)
      return this.purgeKeys(c, 't', keys.map((k) => this.k.triplet + k), 'inf')
    })
  }

  async setWhitelist(entry: WhitelistEntry): Promise<void> {
    await this.admin((c) => c.hset(this.k.whitelist, entry.key, encodeEntry(entry)))
  }

  async deleteWhitelist(key: string): Promise<boolean> {
    return this.admin(async (c) => (await c.hdel(this.k.whitelist, key)) > 0)
  }

  async listWhitelist(): Promise<WhitelistEntry[]> {
    return this.admin(async (c) => {
      const all = await c.hgetall(this.k.whitelist)
      return Object.keys(all).sort(byteOrder).map((key) => decodeEntry(key, all[key]))
    })
  }

  async addStats(host: string, deltas: ReadonlyMap<string, number>): Promise<void> {
    if (deltas.size === 0) return
    await this.request(async (c) => {
      const tx = c.multi()
      for (const [name, value] of deltas) tx.hincrbyfloat(this.k.stats, `${host}\t${name}`, value)
      await execPipeline(tx)
    })
  }

  async stats(): Promise<Array<{ host: string; name: string; value: number }>> {
    return this.admin(async (c) => {
      const all = await c.hgetall(this.k.stats)
      return Object.entries(all)
        .map(([field, value]) => {
          const tab = field.indexOf('\t')
          return { host: field.slice(0, tab), name: field.slice(tab + 1), value: Number(value) }
        })
        .sort((a, b) => byteOrder(a.name, b.name) || byteOrder(a.host, b.host))
    })
  }

  async purgeAll(now: number): Promise<number> {
    return this.admin(async (c) => {
      let gone = 0
      for (const [kind, prefix] of [['t', this.k.triplet], ['c', this.k.client]] as const) {
        const keys = (await this.scan(c, prefix)).map((k) => prefix + k)
        gone += await this.purgeKeys(c, kind, keys, String(now))
      }
      gone += await c.wlPurge(this.k.whitelist, String(now))
      return gone + (await rl.purgeRateLimits(c, this.rk, (prefix) => this.scan(c, prefix), now))
    })
  }

  async check(): Promise<StoreHealth> {
    const lines: string[] = []
    /** What stops greylisting on this host: the last line. */
    let problem: string | null = null
    try {
      await this.admin(async (c) => {
        const started = performance.now()
        await c.ping()
        const ping = performance.now() - started
        const info = parseInfo(await c.info())
        lines.push(`${this.where}: ${info.redis_version ? `Redis ${info.redis_version}` : 'server'}, role ${info.role ?? '?'}, answered PING in ${ping.toFixed(1)} ms`)
        const meta = await c.hgetall(this.k.meta)
        if (meta.format === undefined) lines.push(`keys under ${this.opts.prefix}{g}: none written yet (the first greylisting write records their format)`)
        else {
          const mine = this.metaArgs()
          lines.push(`keys under ${this.opts.prefix}{g}: format ${meta.format}, greylist_privacy ${meta.privacy}`)
          if (meta.format !== mine[0] || meta.privacy !== mine[1]) {
            problem = `these are NOT this host's (format ${mine[0]}, greylist_privacy ${mine[1]}): greylisting answers fail_action until they agree (or delete ${this.k.meta} to start afresh)`
          }
        }
        const [counted] = await c.glUpkeep(this.k.counters, this.testClock())
        const triplets = (await this.scan(c, this.k.triplet)).length
        const clients = (await this.scan(c, this.k.client)).length
        const whitelist = await c.hlen(this.k.whitelist)
        lines.push(`triplets: ${triplets} (counted for greylist_max_entries: ${counted}), client networks: ${clients}, whitelist entries: ${whitelist}`)
        const policy = info.maxmemory_policy
        if (policy?.startsWith('allkeys')) {
          lines.push(`maxmemory-policy ${policy}: the server may evict greylisting keys without TTL (the whitelist, the counters); noeviction or a volatile-* policy keeps them`)
        }
      })
    } catch (err) {
      problem = (err as Error).message
    }
    if (problem !== null) lines.push(problem)
    return { ok: problem === null, lines }
  }

  // ---- rate limits (./redis-ratelimit.ts): RateLimitStore and RateLimitAdmin

  /**
   * One step in one script: the read, the decision and the writes of every
   * identity at once. The step's own `now` is used only with a test clock;
   * otherwise the server's TIME, so that hosts with skewed clocks count in
   * the same slots (the result's `now` says which).
   */
  async rateLimit(step: RateLimitStep): Promise<StepResult> {
    return this.request((c) => rl.runStep(c, this.rk, step, this.metaArgs(), this.opts.clock ? String(step.now) : ''))
  }

  async listOverrides(now: number): Promise<OverrideEntry[]> {
    return this.request((c) => rl.listOverrides(c, this.rk, now))
  }

  async lastCommit(): Promise<number> {
    return this.request((c) => rl.lastCommit(c, this.rk))
  }

  async listUsage(match: (id: string) => boolean, now: number, slots: number): Promise<UsageListing[]> {
    return this.admin((c) => rl.listUsage(c, this.rk, (prefix) => this.scan(c, prefix), match, now, slots))
  }

  async resetUsage(match: (id: string) => boolean): Promise<number> {
    return this.admin((c) => rl.resetUsage(c, this.rk, (prefix) => this.scan(c, prefix), match))
  }

  async setOverride(entry: OverrideEntry): Promise<void> {
    await this.admin((c) => rl.setOverride(c, this.rk, entry))
  }

  async deleteOverride(key: string): Promise<boolean> {
    return this.admin((c) => rl.deleteOverride(c, this.rk, key))
  }

  async listHits(since: number): Promise<HitListing[]> {
    return this.admin((c) => rl.listHits(c, this.rk, (prefix) => this.scan(c, prefix), since))
  }

  // ---- connection and errors

  /** A request-path step: bounded by redis_timeout as a whole, whatever it waits for. */
  private async request<T>(step: (c: Client) => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new StoreError('unavailable', `${this.where}: no answer within ${this.opts.timeoutMs} ms`)), this.opts.timeoutMs)
    })
    try {
      return await Promise.race([this.admin(step), deadline])
    } finally {
      clearTimeout(timer)
    }
  }

  /** Any step: each command is bounded by redis_timeout; errors become StoreErrors. */
  protected async admin<T>(step: (c: Client) => Promise<T>): Promise<T> { // [hg] protected for redis-import.ts
    try {
      return await step(await this.ready())
    } catch (err) {
      throw this.storeError(err)
    }
  }

  private storeError(err: unknown): StoreError {
    if (err instanceof StoreError) return err
    const message = String((err as Error)?.message ?? err)
    const meta = /^POLICYD_META format (\S+) privacy (\S+) key (\S+)/.exec(message)
    if (meta) {
      const [format, privacy] = this.metaArgs()
      const what = meta[3] === this.rk.meta ? 'rate-limit' : 'greylisting'
      return new StoreError(
        'error',
        `${this.where}: its ${what} keys under ${this.opts.prefix} have format ${meta[1]} and greylist_privacy ${meta[2]}, this host format ${format} and greylist_privacy ${privacy}: ` +
          `every host sharing the store must agree (or use another redis_prefix); to start afresh, delete the key ${meta[3]}`,
      )
    }
    return new StoreError(classifyRedisError(err), `${this.where}: ${message}`)
  }

  /** The client once connected; a request that finds the connection down fails at once (no offline queue). */
  private async ready(): Promise<Client> {
    if (this.closed) throw new StoreError('unavailable', `${this.where}: store closed`)
    const c = this.client ?? (this.client = this.makeClient())
    if (c.status === 'ready') return c
    if (c.status === 'wait' || c.status === 'end') {
      // Never rejects: a failure is kept as the reason, and the client goes on reconnecting by itself.
      this.connecting ??= c.connect().then(
        () => {
          this.connecting = null
        },
        (err: Error) => {
          this.connecting = null
          // The 'error' event's reason (ECONNREFUSED …) says more than the rejection's "Connection is closed".
          if (this.downReason === NOT_YET) this.downReason = err.message
        },
      )
    }
    // The first connection is waited for, for redis_timeout at most: with
    // every Sentinel down, ioredis tries them again and again without an
    // error event, and an ops command or --test-mode has no other deadline.
    // Later outages are not waited for: reconnection runs in the background.
    if (this.connecting && !this.wasReady) await this.withinTimeout(this.connecting)
    // (status changes while awaiting; TypeScript narrowed it before)
    if ((c.status as string) === 'ready') return c
    throw new StoreError('unavailable', `${this.where}: ${this.downReason === NOT_YET ? `no answer within ${this.opts.timeoutMs} ms` : this.downReason}`)
  }

  /** Settles when `p` does or after redis_timeout, whichever is first. */
  private async withinTimeout(p: Promise<void>): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    try {
      await Promise.race([p, new Promise<void>((resolve) => (timer = setTimeout(resolve, this.opts.timeoutMs)))])
    } finally {
      clearTimeout(timer)
    }
  }

  private makeClient(): Client {
    const { default: Redis } = require('ioredis') as typeof import('ioredis')
    const e = this.opts.endpoint
    const reconnect = this.opts.reconnectMs ?? { first: 50, max: 2000 }
    const options: RedisOptions = {
      lazyConnect: true,
      enableOfflineQueue: false,
      // A command in flight when the connection drops fails; none is resent.
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      commandTimeout: this.opts.timeoutMs,
      connectTimeout: this.opts.timeoutMs,
      retryStrategy: (times) => Math.min(reconnect.first * 2 ** Math.min(times - 1, 16), reconnect.max),
      // A master turned replica (a failover): reconnect, so that Sentinel names the new one.
      reconnectOnError: (err) => /^READONLY\b/.test(err.message),
      // RESP2 spares the HELLO round trip and keeps the script replies plain arrays.
      protocol: 2,
      disableClientInfo: true,
      // How long close() lets a socket finish before destroying it (ioredis: 2 s, which a process leaving waited out).
      disconnectTimeout: CLOSE_WAIT_MS,
      db: e.db,
      username: e.username,
      password: this.password(),
    }
    if (this.opts.sentinels?.length) {
      Object.assign(options, { sentinels: this.opts.sentinels.map((s) => ({ ...s })), name: this.opts.sentinelName, sentinelRetryStrategy: options.retryStrategy })
      if (e.tls) Object.assign(options, { tls: {}, enableTLSForSentinelMode: true })
    } else if (e.path !== undefined) options.path = e.path
    else Object.assign(options, { host: e.host, port: e.port }, e.tls ? { tls: {} } : {})
    const c = new Redis(options) as Client
    c.defineCommand('glRead', { lua: GL_READ, numberOfKeys: 5 })
    c.defineCommand('glCas', { lua: GL_CAS, numberOfKeys: 4 })
    c.defineCommand('glPurge', { lua: GL_PURGE })
    c.defineCommand('glUpkeep', { lua: GL_UPKEEP, numberOfKeys: 1 })
    c.defineCommand('wlPurge', { lua: WL_PURGE, numberOfKeys: 1 })
    // The rate-limit scripts take a key count first: KEYS_PER_IDENTITY keys per identity of the step.
    c.defineCommand('rlHold', { lua: RL_HOLD })
    c.defineCommand('rlCommit', { lua: RL_COMMIT })
    c.defineCommand('rlRelease', { lua: RL_RELEASE })
    c.defineCommand('rlPurge', { lua: RL_PURGE })
    // Without a listener an 'error' event would end the process; the
    // requests carry the failure (decide.ts logs its changes once).
    c.on('error', (err: Error) => {
      this.downReason = err.message
    })
    // Debug lines only: the outage and the recovery are logged once each by the requests that meet them.
    c.on('ready', () => {
      if (this.down) this.opts.log(2, `${this.where}: connected again`)
      this.wasReady = true
      this.down = false
    })
    c.on('close', () => {
      if (!this.wasReady || this.down || this.closed) return
      this.down = true
      this.downReason = 'connection lost, reconnecting'
      this.opts.log(2, `${this.where}: connection lost, reconnecting`)
    })
    return c
  }

  private password(): string | undefined {
    const file = this.opts.passwordFile
    if (!file) return this.opts.endpoint.password
    const fs = require('node:fs') as typeof import('node:fs')
    try {
      return fs.readFileSync(file, 'utf8').split(/\r?\n/, 1)[0]
    } catch (err) {
      throw new StoreError('unavailable', `redis_password_file ${file} cannot be read: ${(err as Error).message}`)
    }
  }

  protected metaArgs(): [string, string] { // [hg] protected for redis-import.ts
    const privacy = typeof this.opts.privacy === 'function' ? this.opts.privacy() : this.opts.privacy
    return [KEY_FORMAT, privacy ? 'yes' : 'no']
  }

  protected testClock(): string { // [hg] protected for redis-import.ts
    return this.opts.clock ? String(this.opts.clock()) : ''
  }

  /** Every key name (after `prefix`) under a prefix, once each (SCAN may return one twice). */
  private async scan(c: Client, prefix: string): Promise<string[]> {
    const found = new Set<string>()
    const pattern = `${globEscape(prefix)}*`
    let cursor = '0'
    for (let step = 0; step < MAX_SCAN_STEPS; step++) {
      const [next, keys] = await c.scan(cursor, 'MATCH', pattern, 'COUNT', SCAN_COUNT)
      for (const key of keys) found.add(key.slice(prefix.length))
      cursor = next
      if (cursor === '0') break
    }
    return [...found]
  }

  private async purgeKeys(c: Client, kind: 't' | 'c', keys: readonly string[], before: string): Promise<number> {
    let gone = 0
    for (let i = 0; i < keys.length; i += DELETE_BATCH) {
      const batch = keys.slice(i, i + DELETE_BATCH)
      gone += await c.glPurge(batch.length + 1, this.k.counters, ...batch, kind, before, this.testClock())
    }
    return gone
  }
}

/** The store's options from the configuration. */
export function redisStoreOptions(config: Config, log: (level: number, msg: string) => void): RedisStoreOptions {
  const { parseHostPort } = require('../listen-address') as typeof import('../listen-address')
  const endpoint = parseRedisUrl(config.redis_url)
  // The configuration refuses a bad redis_url; this is its default then.
  if ('error' in endpoint) throw new StoreError('error', `redis_url: ${endpoint.error}`)
  return {
    endpoint,
    passwordFile: config.redis_password_file || undefined,
    sentinels: config.redis_sentinels.map((s) => parseHostPort(s)).filter((s) => s !== null).map((s) => ({ host: s.host, port: s.port })),
    sentinelName: config.redis_sentinel_name,
    prefix: config.redis_prefix,
    timeoutMs: config.redis_timeout * 1000,
    privacy: config.greylist_privacy,
    log,
  }
}

/**
 * For --test-mode: the store's health as the user this runs as (the
 * password file is read, the server asked), as notes and problems.
 */
export async function checkRedisStore(config: Config): Promise<{ notes: string[]; problems: string[] }> {
  const store = new RedisStore(redisStoreOptions(config, () => undefined))
  try {
    const health = await store.check()
    // check() gives what is wrong as its last line.
    return health.ok ? { notes: health.lines, problems: [] } : { notes: health.lines.slice(0, -1), problems: health.lines.slice(-1) }
  } finally {
    store.close()
  }
}

function tripletArgs(update: GreylistUpdate<unknown>): string[] {
  const w = update.triplet
  if (w === undefined) return ['', '', '', '', '', '']
  if (w === null) return ['del', '', '', '', '', '']
  return ['put', String(w.row.first), String(w.row.last), String(w.row.passed), String(w.row.count), String(w.expires)]
}

function clientArgs(update: GreylistUpdate<unknown>): string[] {
  const w = update.client
  if (w === undefined) return ['', '', '', '', '']
  if (w === null) return ['del', '', '', '', '']
  return ['put', String(w.row.count), String(w.row.last), String(w.row.lastCounted), String(w.expires)]
}

function encodeEntry(e: WhitelistEntry): string {
  return `${e.expires === Infinity ? 'inf' : String(e.expires)}\t${e.setAt}\t${e.note}`
}

function decodeEntry(key: string, value: string): WhitelistEntry {
  const [expires, setAt] = value.split('\t', 2)
  const note = value.slice(expires.length + setAt.length + 2)
  return { key, expires: expires === 'inf' ? Infinity : Number(expires), note, setAt: Number(setAt) }
}

/** Of the entries found for a request, the one that lasts longest (as SQLite picks). */
function longestEntry(keys: readonly string[], values: ReadonlyArray<string | null>): { key: string; expires: number } | undefined {
  let best: { key: string; expires: number } | undefined
  values.forEach((value, i) => {
    if (value === null) return
    const { expires } = decodeEntry(keys[i], value)
    if (!best || expires > best.expires) best = { key: keys[i], expires }
  })
  return best
}

function globEscape(text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&')
}

function parseInfo(text: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf(':')
    if (i > 0 && !line.startsWith('#')) out[line.slice(0, i)] = line.slice(i + 1)
  }
  return out
}
