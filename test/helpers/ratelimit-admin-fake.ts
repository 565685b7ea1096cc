// An in-memory rate-limit store for the unit tests of the ratelimit
// commands: it keeps the contracts of RateLimitAdmin and listOverrides
// (sorting, filtering, what reset counts) over rows a test seeds, and
// records what the commands asked of it.
import type { RateOpsStore } from '../../lib/ops/ratelimit'
import type { HitListing, OverrideEntry, UsageListing } from '../../lib/ratelimit/types'

export class FakeRateLimitAdmin implements RateOpsStore {
  usage: UsageListing[] = []
  hits: HitListing[] = []
  readonly overrides = new Map<string, OverrideEntry>()
  /** The arguments of each listUsage call, to check the commands pass the clock and ratelimit_slots. */
  readonly usageAsked: Array<{ now: number; slots: number }> = []

  async listUsage(match: (id: string) => boolean, now: number, slots: number): Promise<UsageListing[]> {
    this.usageAsked.push({ now, slots })
    const order = (a: UsageListing, b: UsageListing): number => (a.id < b.id ? -1 : a.id > b.id ? 1 : a.unit < b.unit ? -1 : a.unit > b.unit ? 1 : a.window - b.window)
    return this.usage.filter((u) => match(u.id)).sort(order).map((u) => ({ ...u }))
  }

  async resetUsage(match: (id: string) => boolean): Promise<number> {
    const ids = new Set([...this.usage.map((u) => u.id), ...this.hits.map((h) => h.id)].filter(match))
    this.usage = this.usage.filter((u) => !ids.has(u.id))
    this.hits = this.hits.filter((h) => !ids.has(h.id))
    return ids.size
  }

  async setOverride(entry: OverrideEntry): Promise<void> {
    this.overrides.set(entry.key, { ...entry })
  }

  async deleteOverride(key: string): Promise<boolean> {
    return this.overrides.delete(key)
  }

  async listHits(since: number): Promise<HitListing[]> {
    return this.hits.filter((h) => h.last >= since).sort((a, b) => b.last - a.last).map((h) => ({ ...h }))
  }

  async listOverrides(now: number): Promise<OverrideEntry[]> {
    return [...this.overrides.values()].filter((e) => e.expires > now).map((e) => ({ ...e }))
  }
}
