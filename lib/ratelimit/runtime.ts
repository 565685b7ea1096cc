// What the rate-limit check of one configuration shares across connections:
// the class limits, the exempt recipients, and the overrides: the file
// (looked at every few seconds, reread when it changes) and the entries
// stored by `policyd-ts ratelimit set` (read at first use and at each upkeep
// step, so they take effect within ten seconds).

import type { Config } from '../config'
import { recipientWhitelistOf, type RecipientWhitelist } from '../greylist/whitelist'
import { WatchedFile } from '../watched-file'
import { classLimits, OverrideTable, parseOverrideFile, storedOverrides, type ClassLimits } from './overrides'
import type { RateLimitStore } from './types'

/** How often the override file is looked at (a stat), in milliseconds. */
const FILE_CHECK_MS = 5000

export class RateLimitRuntime {
  readonly defaults: ClassLimits
  readonly exempt: RecipientWhitelist
  private readonly file: WatchedFile<OverrideTable> | null
  private fileTable = new OverrideTable()
  private fileCheckedAt = -Infinity
  private stored = new OverrideTable()
  private storedLoaded = false

  constructor(
    private readonly config: Config,
    private readonly log: (level: number, msg: string) => void,
    private readonly nowMs: () => number = () => Date.now(),
  ) {
    this.defaults = classLimits(config)
    this.exempt = recipientWhitelistOf(config.ratelimit_exempt_recipients, 'ratelimit_exempt_recipients')
    const path = config.ratelimit_overrides
    this.file = path === '' ? null : new WatchedFile(path, (text) => {
      const { entries, errors } = parseOverrideFile(text, path, config)
      for (const e of errors) log(0, `rate-limit overrides: ${e}`)
      log(2, `rate-limit overrides: ${entries.length} entries read from ${path}`)
      return new OverrideTable(entries)
    })
  }

  /** The overrides in effect now: polls the file at most every FILE_CHECK_MS. */
  overrides(): { stored: OverrideTable; file: OverrideTable } {
    if (this.file) {
      const now = this.nowMs()
      if (now - this.fileCheckedAt >= FILE_CHECK_MS) {
        this.fileCheckedAt = now
        if (this.file.poll()) {
          const { value, reason } = this.file.current
          // An unreadable file keeps no entries rather than stale ones, loudly.
          if (value === null) this.log(0, `rate-limit overrides: cannot read ${this.file.path}: ${reason}; using the class limits only`)
          this.fileTable = value ?? new OverrideTable()
        }
      }
    }
    return { stored: this.stored, file: this.fileTable }
  }

  /** Whether the stored overrides were read at least once (the first request reads them before deciding). */
  get storedReady(): boolean {
    return this.storedLoaded
  }

  /** Read the overrides set with `policyd-ts ratelimit set` again; a failure keeps the last ones. */
  async refreshStored(store: RateLimitStore, nowSeconds: number): Promise<void> {
    try {
      this.stored = new OverrideTable(storedOverrides(await store.listOverrides(nowSeconds), this.config, (msg) => this.log(0, msg)))
      this.storedLoaded = true
    } catch (err) {
      this.log(2, `rate-limit overrides in the store not read: ${(err as Error).message}`)
      throw err
    }
  }
}
