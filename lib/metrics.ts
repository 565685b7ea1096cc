// Counters and histograms of one process, rendered in the Prometheus text
// format 0.0.4. Hand-written rather than prom-client: this runs in every
// spawned process, where prom-client costs 10-40 ms of load time and
// +5 MB (research §5), and its registry could not sum spawned processes
// anyway. No per-user labels: label values come from small fixed sets
// (protocol states, actions, checks, reasons, store failures).

export interface MetricFamily {
  name: string
  help: string
  type: 'counter' | 'gauge' | 'histogram'
}

/** Latency buckets in seconds, from 0.5 ms to 2.5 s. */
export const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5] as const

export const FAMILIES = {
  requests: { name: 'policyd_requests_total', help: 'Policy requests answered, by protocol state and action word.', type: 'counter' },
  decisions: { name: 'policyd_decisions_total', help: 'Verdicts of each check, by check and reason.', type: 'counter' },
  requestSeconds: { name: 'policyd_request_seconds', help: 'Time from a complete request to its decided action.', type: 'histogram' },
  storeErrors: { name: 'policyd_store_errors_total', help: 'Store operations that failed, by failure class.', type: 'counter' },
  storeSeconds: { name: 'policyd_store_seconds', help: 'Time of store operations.', type: 'histogram' },
  discarded: { name: 'policyd_requests_discarded_total', help: 'Requests discarded before a decision (oversized, too many attributes), answered with fail_action.', type: 'counter' },
  connections: { name: 'policyd_connections', help: 'Open policy connections.', type: 'gauge' },
  connectionsRefused: { name: 'policyd_connections_refused_total', help: 'Connections closed at once because max_connections were open.', type: 'counter' },
  holdsExpired: { name: 'policyd_ratelimit_holds_expired_total', help: 'Rate-limit holds that expired (a message neither counted at END-OF-MESSAGE nor released).', type: 'counter' },
  dns: { name: 'policyd_dns_total', help: 'DNS questions of the SPF check, by outcome (query, cache_hit, timeout).', type: 'counter' },
  rss: { name: 'process_resident_memory_bytes', help: 'Resident memory size in bytes.', type: 'gauge' },
  cpu: { name: 'process_cpu_seconds_total', help: 'User and system CPU time spent, in seconds.', type: 'counter' },
  start: { name: 'process_start_time_seconds', help: 'Start time of the process since the epoch, in seconds.', type: 'gauge' },
} as const satisfies Record<string, MetricFamily>

export type FamilyKey = keyof typeof FAMILIES

interface Histogram {
  counts: number[]
  sum: number
  count: number
}

/** Label values go into the exposition quoted; escape what the format requires. */
function labelValue(v: string): string {
  return NEEDS_ESCAPE.test(v) ? v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"') : v
}
const NEEDS_ESCAPE = /[\\\n"]/

/** `{k="v",...}`, or '' without labels. Runs for every counted request: a plain loop, no intermediate arrays. */
function labelText(labels: Record<string, string>): string {
  let text = ''
  for (const k in labels) text += `${text === '' ? '{' : ','}${k}="${labelValue(labels[k])}"`
  return text === '' ? '' : `${text}}`
}

export class Metrics {
  private readonly counters = new Map<FamilyKey, Map<string, number>>()
  private readonly histograms = new Map<FamilyKey, Map<string, Histogram>>()
  private readonly gauges = new Map<FamilyKey, () => number>()
  /** Counters kept elsewhere (the resolver's), read when rendered. */
  private readonly collectors = new Map<FamilyKey, () => Array<[Record<string, string>, number]>>()

  /** Add `by` to a counter; labels are rendered in the order given. */
  add(family: FamilyKey, labels: Record<string, string> = {}, by = 1): void {
    let series = this.counters.get(family)
    if (!series) this.counters.set(family, (series = new Map()))
    const key = labelText(labels)
    series.set(key, (series.get(key) ?? 0) + by)
  }

  observe(family: FamilyKey, seconds: number, labels: Record<string, string> = {}): void {
    let series = this.histograms.get(family)
    if (!series) this.histograms.set(family, (series = new Map()))
    const key = labelText(labels)
    let h = series.get(key)
    if (!h) series.set(key, (h = { counts: new Array<number>(LATENCY_BUCKETS.length).fill(0), sum: 0, count: 0 }))
    // Counts per bucket here; rendering makes them cumulative.
    const i = LATENCY_BUCKETS.findIndex((b) => seconds <= b)
    if (i !== -1) h.counts[i]++
    h.sum += seconds
    h.count++
  }

  gauge(family: FamilyKey, read: () => number): void {
    this.gauges.set(family, read)
  }

  /** A counter family whose values another part keeps: `read` gives them, with their labels, when rendered. */
  collect(family: FamilyKey, read: () => Array<[Record<string, string>, number]>): void {
    this.collectors.set(family, read)
  }

  private counterSeries(family: FamilyKey): Map<string, number> | undefined {
    const read = this.collectors.get(family)
    if (!read) return this.counters.get(family)
    return new Map(read().map(([labels, v]) => [labelText(labels), v]))
  }

  /** Counter values as flat `name{labels}` keys, for adding to the store's totals. */
  counterValues(): Map<string, number> {
    const out = new Map<string, number>()
    for (const family of new Set([...this.counters.keys(), ...this.collectors.keys()])) {
      for (const [labels, v] of this.counterSeries(family) ?? []) out.set(`${FAMILIES[family].name}${labels}`, v)
    }
    return out
  }

  render(): string {
    const lines: string[] = []
    const header = (f: MetricFamily): void => {
      lines.push(`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`)
    }
    for (const key of Object.keys(FAMILIES) as FamilyKey[]) {
      const f = FAMILIES[key]
      const counters = this.counterSeries(key)
      const histograms = this.histograms.get(key)
      const gauge = this.gauges.get(key)
      if (counters && counters.size > 0) {
        header(f)
        for (const [labels, v] of counters) lines.push(`${f.name}${labels} ${v}`)
      } else if (histograms && histograms.size > 0) {
        header(f)
        for (const [labels, h] of histograms) {
          const inner = labels === '' ? '' : `${labels.slice(1, -1)},`
          let cumulative = 0
          LATENCY_BUCKETS.forEach((b, i) => {
            cumulative += h.counts[i]
            lines.push(`${f.name}_bucket{${inner}le="${b}"} ${cumulative}`)
          })
          lines.push(`${f.name}_bucket{${inner}le="+Inf"} ${h.count}`, `${f.name}_sum${labels} ${h.sum}`, `${f.name}_count${labels} ${h.count}`)
        }
      } else if (gauge) {
        header(f)
        lines.push(`${f.name} ${gauge()}`)
      }
    }
    return `${lines.join('\n')}\n`
  }
}

/** The process gauges every exposition carries. */
export function addProcessGauges(m: Metrics, startedAt: number): void {
  m.gauge('rss', () => process.memoryUsage.rss())
  m.gauge('cpu', () => {
    const u = process.cpuUsage()
    return (u.user + u.system) / 1e6
  })
  m.gauge('start', () => startedAt)
}
