// The composition root: builds the application once from a configuration
// (store, whitelists, SPF context, log, clock) and hands out connections.
// Spawn mode serves stdin/stdout as its one connection, the daemon each
// accepted socket; spfquery and the tests build it the same way. Nothing
// here knows where connections come from.

import type { Config, LoadedConfig } from './config'
import { Connection } from './connection'
import type { Logger } from './log'
import type { GreylistStore, StoreAdmin } from './store/types'
import type { SpfContext } from './spf/check'
import type { GreylistWhitelists } from './greylist/check'
import { BoundedMap } from './bounded-map'
import { Metrics } from './metrics'
import { createGreylistWhitelists } from './greylist/lists'
import { version } from './version'
import type { RateLimitStore } from './ratelimit/types'
import type { EndOfMessageWatch } from './ratelimit/check'
import type { RateLimitRuntime } from './ratelimit/runtime'

/** Seconds between two upkeep steps of one process, and rows looked at in each. */
export const UPKEEP_EVERY = 10
export const UPKEEP_ROWS = 1000

/** Passed triplets remembered per process (see GreylistContext.recentPasses). */
const RECENT_PASSES = 4096

export interface AppOptions {
  loaded: LoadedConfig
  log: Logger
  /** Epoch seconds; injected by tests. */
  now?: () => number
  /** A store made by the caller (tests); otherwise the configured one is opened on first use. */
  store?: GreylistStore
  /** How a waiting SQLite lock is waited for: blocking (spawn: one connection) or yielding (daemon: many). */
  lockWaits?: 'block' | 'yield'
  hostname?: string
}

/**
 * What every connection of one configuration shares. A reload (daemon HUP)
 * makes a new Runtime; connections pick it up at their next request.
 */
export interface Runtime {
  readonly config: Config
  readonly generation: number
  readonly hostname: string
  readonly whitelists: GreylistWhitelists
  readonly recentPasses: BoundedMap<string, number>
  /** Made on first use: SPF loads its modules and resolver only when a request needs them. */
  spf(): SpfContext
  readonly spfLoaded: boolean
  /** The rate-limit check's shared state; null when ratelimit_enabled is off. */
  readonly ratelimit: RateLimitRuntime | null
  close(): void
}

export class App {
  readonly log: Logger
  readonly store: GreylistStore
  /** The same store's rate-limit side, timed; null for a store without one (a test's fake). */
  readonly rateLimits: RateLimitStore | null
  /** Made when rate limiting first needs it: whether END-OF-MESSAGE requests reach any process. */
  private endOfMessageWatch: EndOfMessageWatch | null = null
  readonly now: () => number
  readonly metrics = new Metrics()
  private runtimeNow: Runtime
  private generation = 0
  private lastUpkeep: number
  private readonly ownStore: boolean
  /** Where this process adds its counters for `policyd-ts stats`, when the store keeps them. */
  private readonly statsStore: (GreylistStore & StoreAdmin) | null
  /** DNS counts of the resolvers of earlier configurations (before a reload). */
  private dnsBefore = { queries: 0, cacheHits: 0, timeouts: 0 }
  /** Counter values already added to the store. */
  private flushed = new Map<string, number>()
  private readonly hostnameOverride?: string

  constructor(opts: AppOptions) {
    this.log = opts.log
    this.now = opts.now ?? (() => Date.now() / 1000)
    this.hostnameOverride = opts.hostname
    const config = opts.loaded.config
    this.ownStore = opts.store === undefined
    const store = opts.store ?? openStore(config, this.log, opts.lockWaits ?? 'block', () => this.runtimeNow.config)
    this.statsStore = 'addStats' in store ? (store as GreylistStore & StoreAdmin) : null
    this.store = timedStore(store, this.metrics)
    this.rateLimits = 'rateLimit' in store ? timedRateLimits(store as unknown as RateLimitStore, this.metrics) : null
    this.runtimeNow = this.makeRuntime(opts.loaded)
    // The resolver counts its own questions; a reload starts a new one, so
    // the totals of earlier ones are kept here.
    this.metrics.collect('dns', () => {
      const now = this.runtimeNow.spfLoaded ? this.runtimeNow.spf().resolver.stats() : { queries: 0, cacheHits: 0, timeouts: 0 }
      return [
        [{ outcome: 'query' }, this.dnsBefore.queries + now.queries],
        [{ outcome: 'cache_hit' }, this.dnsBefore.cacheHits + now.cacheHits],
        [{ outcome: 'timeout' }, this.dnsBefore.timeouts + now.timeouts],
      ]
    })
    this.lastUpkeep = this.now()
  }

  get runtime(): Runtime {
    return this.runtimeNow
  }

  get config(): Config {
    return this.runtimeNow.config
  }

  /** A new connection's state: framing is the server's, the rest (headers, per-message memory) is here. */
  connection(): Connection {
    return new Connection(this)
  }

  /**
   * Take a new configuration (daemon HUP). Keys that the running store
   * depends on cannot change without a restart: the caller checks
   * `storeKeysChanged` first and refuses such a reload.
   */
  reload(loaded: LoadedConfig): void {
    const old = this.runtimeNow
    if (old.spfLoaded) {
      const s = old.spf().resolver.stats()
      this.dnsBefore = { queries: this.dnsBefore.queries + s.queries, cacheHits: this.dnsBefore.cacheHits + s.cacheHits, timeouts: this.dnsBefore.timeouts + s.timeouts }
    }
    this.runtimeNow = this.makeRuntime(loaded)
    this.log.setLevel(loaded.config.debugLevel)
    // Requests already in their SPF check finish on the old resolver:
    // closing it now would turn their pending lookups into temperror.
    const lookups = (old.config.Lookup_Time + old.config.Whitelist_Lookup_Time) * 1000
    setTimeout(() => old.close(), lookups + 1000).unref()
  }

  get endOfMessage(): EndOfMessageWatch {
    if (!this.endOfMessageWatch) {
      const { EndOfMessageWatch } = require('./ratelimit/check') as typeof import('./ratelimit/check')
      this.endOfMessageWatch = new EndOfMessageWatch(this.rateLimits!)
    }
    return this.endOfMessageWatch
  }

  /** Whether a check of this configuration keeps state in the store. */
  private usesStore(): boolean {
    return this.config.greylist_enabled || this.config.ratelimit_enabled
  }

  /** Called after each decided request: a few rows of store upkeep every UPKEEP_EVERY seconds of activity. */
  afterDecision(now: number): void {
    if (!this.usesStore() || now - this.lastUpkeep < UPKEEP_EVERY) return
    this.lastUpkeep = now
    setImmediate(() => {
      this.store.purgeExpired(now, UPKEEP_ROWS).then(
        (n) => n > 0 && this.log.log(2, `purged ${n} expired rows`),
        (err: Error) => this.log.log(2, `purge skipped: ${err.message}`),
      )
      const rl = this.runtimeNow.ratelimit
      if (rl && this.rateLimits) rl.refreshStored(this.rateLimits, now).catch(() => undefined)
      void this.flushStats()
    })
  }

  /**
   * Add the counters that grew since the last call to the store's totals
   * (`policyd-ts stats`): spawned processes serve no /metrics. Only while
   * greylisting uses the store: an SPF-only process never opens it. A
   * failure keeps the deltas for the next call.
   */
  async flushStats(): Promise<void> {
    if (!this.statsStore || !this.usesStore()) return
    const deltas = new Map<string, number>()
    const values = this.metrics.counterValues()
    for (const [name, value] of values) {
      const delta = value - (this.flushed.get(name) ?? 0)
      if (delta !== 0) deltas.set(name, delta)
    }
    if (deltas.size === 0) return
    try {
      await this.statsStore.addStats(this.runtimeNow.hostname, deltas)
      this.flushed = values
    } catch (err) {
      this.log.log(2, `counters not added to the store: ${(err as Error).message}`)
    }
  }

  /** Close the store and the resolver; the log is the caller's. Call flushStats() first to keep the last counters. */
  close(): void {
    if (this.ownStore) this.store.close()
    this.runtimeNow.close()
  }

  private makeRuntime(loaded: LoadedConfig): Runtime {
    const config = loaded.config
    const log = this.log
    const logLine = (level: number, msg: string): void => log.log(level, msg)
    const hostname = this.hostnameOverride ?? systemHostname(config)
    let spf: SpfContext | undefined
    let ratelimit: RateLimitRuntime | null = null
    if (config.ratelimit_enabled) {
      const { RateLimitRuntime } = require('./ratelimit/runtime') as typeof import('./ratelimit/runtime')
      ratelimit = new RateLimitRuntime(config, logLine)
    }
    return {
      config,
      ratelimit,
      generation: ++this.generation,
      hostname,
      whitelists: createGreylistWhitelists(config, logLine, () => Date.now()),
      recentPasses: new BoundedMap(RECENT_PASSES),
      spf: () => {
        if (!spf) {
          const { createSpfContext } = require('./spf/context') as typeof import('./spf/context')
          spf = createSpfContext(config, { hostname, log: logLine })
        }
        return spf
      },
      get spfLoaded() {
        return spf !== undefined
      },
      close: () => spf?.resolver.close(),
    }
  }
}

export function systemHostname(config: Config): string {
  return config.hostname || (require('node:os') as typeof import('node:os')).hostname()
}

/** The store with the time of each operation counted (policyd_store_seconds). */
function timedStore(store: GreylistStore, metrics: Metrics): GreylistStore {
  const timed = async <T>(op: string, run: () => Promise<T>): Promise<T> => {
    const started = performance.now()
    try {
      return await run()
    } finally {
      metrics.observe('storeSeconds', (performance.now() - started) / 1000, { op })
    }
  }
  return {
    updateGreylist: (tripletKey, clientKey, decide, whitelistKeys) => timed('greylist', () => store.updateGreylist(tripletKey, clientKey, decide, whitelistKeys)),
    purgeExpired: (now, limit) => timed('purge', () => store.purgeExpired(now, limit)),
    counts: () => store.counts(),
    close: () => store.close(),
  }
}

/** The rate-limit side of the store, timed as timedStore times the rest. */
function timedRateLimits(store: RateLimitStore, metrics: Metrics): RateLimitStore {
  return {
    rateLimit: async (step) => {
      const started = performance.now()
      try {
        return await store.rateLimit(step)
      } finally {
        metrics.observe('storeSeconds', (performance.now() - started) / 1000, { op: `ratelimit-${step.op}` })
      }
    },
    listOverrides: (now) => store.listOverrides(now),
    lastCommit: () => store.lastCommit(),
  }
}

function openStore(config: Config, log: Logger, lockWaits: 'block' | 'yield', current: () => Config): GreylistStore {
  if (config.store === 'redis') {
    // store = redis (task HC): required by a computed path, so that the start-up bundle leaves out the store and
    // its client library (a spawned process on SQLite never pays for them); it connects on first use.
    const path = require('node:path') as typeof import('node:path')
    const { RedisStore, redisStoreOptions } = require(path.join(__dirname, 'store', 'redis')) as typeof import('./store/redis')
    // greylist_privacy as the running configuration has it: a reload (HUP) that changes it changes the keys'
    // format, which the store's format record then refuses rather than mixing two formats.
    return new RedisStore({ ...redisStoreOptions(config, (level, msg) => log.log(level, msg)), privacy: () => current().greylist_privacy })
  }
  const { SqliteStore } = require('./store/sqlite') as typeof import('./store/sqlite')
  return new SqliteStore({
    path: config.db_path,
    busyTimeoutMs: config.db_busy_timeout * 1000,
    renameCorrupt: config.db_corrupt_action === 'rename',
    log: (level, msg) => log.log(level, msg),
    lockWaits,
  })
}

/** The package version, read when a header or --version needs it. */
export { version }
