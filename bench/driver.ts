// The client side shared by npm run bench (bench.ts) and npm run bench --
// --compare (compare.ts): request generation, a connection that sends one
// request at a time and waits for the reply (as smtpd does), latency
// statistics and peak RSS from /proc.

import type { ChildProcessWithoutNullStreams } from 'node:child_process'
import fs from 'node:fs'
import type net from 'node:net'
import type { Readable } from 'node:stream'

/** The 29 attributes Postfix 3.7 sends at RCPT, in wire order; `over` replaces values by name. */
export function policyRequest(over: Record<string, string>): string {
  const attrs: Record<string, string> = {
    request: 'smtpd_access_policy', protocol_state: 'RCPT', protocol_name: 'ESMTP',
    client_address: '192.0.2.10', client_name: 'unknown', client_port: '4000',
    reverse_client_name: 'unknown', server_address: '127.0.0.1', server_port: '25', helo_name: 'bench.example',
    sender: '', recipient: '', recipient_count: '0', queue_id: '',
    instance: '', size: '0', etrn_domain: '', stress: '', sasl_method: '', sasl_username: '', sasl_sender: '',
    ccert_subject: '', ccert_issuer: '', ccert_fingerprint: '', ccert_pubkey_fingerprint: '', encryption_protocol: '',
    encryption_cipher: '', encryption_keysize: '0', policy_context: '',
    ...over,
  }
  let text = ''
  for (const name in attrs) text += `${name}=${attrs[name]}\n`
  return `${text}\n`
}

/** npm run bench's stream: a new sender, recipient and client for every i. */
export function request(i: number, tag: string): string {
  return policyRequest({
    client_address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
    sender: `sender${i}@${tag}.example`, recipient: `rcpt${i}@example.org`, instance: `${tag}.${i}`,
  })
}

/** Where a connection's requests go and its replies come from. */
interface Endpoint {
  output: Readable
  write(text: string): void
  end(): Promise<void>
  /** The serving process (for its peak RSS), when it is one process per connection. */
  pid: number | undefined
}

const live = new Set<Connection>()
let watchdog: NodeJS.Timeout | undefined

/**
 * Sends requests one at a time (as smtpd does) and resolves each reply
 * (the text before the empty line). A reply that does not come within
 * `Connection.timeoutMs`, or the server going away, rejects the request.
 */
export class Connection {
  static timeoutMs = 30000
  private buf = ''
  private waiting: { resolve: (reply: string) => void; reject: (err: Error) => void; since: number } | null = null
  private closed: Error | null = null

  private constructor(readonly endpoint: Endpoint, readonly label: string) {
    endpoint.output.setEncoding('utf8')
    endpoint.output.on('data', (d: string) => {
      this.buf += d
      let end: number
      while (this.waiting && (end = this.buf.indexOf('\n\n')) !== -1) {
        const reply = this.buf.slice(0, end)
        this.buf = this.buf.slice(end + 2)
        const w = this.waiting
        this.waiting = null
        w.resolve(reply)
      }
    })
    endpoint.output.on('end', () => this.fail(new Error(`${label}: connection closed by the server`)))
    endpoint.output.on('error', (err: Error) => this.fail(new Error(`${label}: ${err.message}`)))
    live.add(this)
    if (!watchdog) {
      // One timer for all connections instead of one per request: no cost on the measured path.
      watchdog = setInterval(() => {
        const now = Date.now()
        for (const c of live) {
          if (c.waiting && now - c.waiting.since > Connection.timeoutMs) c.fail(new Error(`${c.label}: no reply within ${Connection.timeoutMs} ms`))
        }
      }, 250)
      watchdog.unref()
    }
  }

  /** A spawned server: requests on its stdin, replies on its stdout. */
  static spawned(child: ChildProcessWithoutNullStreams, label = 'process'): Connection {
    child.stdin.on('error', () => undefined)
    const exited = new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve()
      else child.once('exit', () => resolve())
    })
    return new Connection({
      output: child.stdout,
      pid: child.pid,
      write: (text) => child.stdin.write(text),
      end: () => {
        child.stdin.end()
        return exited
      },
    }, `${label}[${child.pid}]`)
  }

  /** A connection to a daemon (postgrey over TCP, policyd-ts --listen over a unix socket). */
  static socket(sock: net.Socket, label = 'socket'): Connection {
    sock.on('error', () => undefined)
    sock.setNoDelay(true)
    return new Connection({
      output: sock,
      pid: undefined,
      write: (text) => sock.write(text),
      end: () =>
        new Promise<void>((resolve) => {
          if (sock.destroyed) return resolve()
          sock.once('close', () => resolve())
          sock.end()
        }),
    }, label)
  }

  ask(text: string): Promise<string> {
    if (this.closed) return Promise.reject(this.closed)
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject, since: Date.now() }
      this.endpoint.write(text)
    })
  }

  get pid(): number | undefined {
    return this.endpoint.pid
  }

  peakRssKb(): number {
    return this.endpoint.pid === undefined ? 0 : peakRssKb(this.endpoint.pid)
  }

  close(): Promise<void> {
    live.delete(this)
    return this.endpoint.end()
  }

  private fail(err: Error): void {
    if (!this.closed) this.closed = err
    live.delete(this)
    const w = this.waiting
    this.waiting = null
    w?.reject(err)
  }
}

/** VmHWM of a process in kB (0 when it is gone). */
export function peakRssKb(pid: number): number {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
    return Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0)
  } catch {
    return 0
  }
}

/** Resident and unique (private) memory of a process in kB, from /proc/PID/smaps_rollup; zeros when it is gone. */
export function memoryKb(pid: number): { rssKb: number; ussKb: number } {
  try {
    const rollup = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')
    const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(rollup)?.[1] ?? 0)
    return { rssKb: field('Rss'), ussKb: field('Private_Clean') + field('Private_Dirty') }
  } catch {
    return { rssKb: 0, ussKb: 0 }
  }
}

/** `pid` and every process below it (children of all its threads, recursively); bounded by `limit`. */
export function processTree(pid: number, limit = 1000): number[] {
  const found = [pid]
  for (let i = 0; i < found.length && found.length < limit; i++) {
    let tasks: string[] = []
    try {
      tasks = fs.readdirSync(`/proc/${found[i]}/task`)
    } catch {
      continue
    }
    for (const task of tasks) {
      try {
        for (const child of fs.readFileSync(`/proc/${found[i]}/task/${task}/children`, 'utf8').trim().split(/\s+/)) {
          if (child !== '' && !found.includes(Number(child))) found.push(Number(child))
        }
      } catch {
        // the task ended meanwhile
      }
    }
  }
  return found
}

/** CPU time (ns) the given processes and everything below them have run so far, all threads (/proc/PID/task/TID/schedstat). */
export function cpuTimeNs(pids: number[]): number {
  let ns = 0
  for (const pid of new Set(pids.flatMap((p) => processTree(p)))) {
    let tasks: string[] = []
    try {
      tasks = fs.readdirSync(`/proc/${pid}/task`)
    } catch {
      continue
    }
    for (const task of tasks) {
      try {
        ns += Number(fs.readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0])
      } catch {
        // the thread ended meanwhile
      }
    }
  }
  return ns
}

/** Summed RSS and USS (kB) of the given processes and everything below them, as they are now. */
export function totalMemoryKb(pids: number[]): { rssKb: number; ussKb: number; processes: number } {
  const all = new Set(pids.flatMap((p) => processTree(p)))
  let rssKb = 0
  let ussKb = 0
  for (const pid of all) {
    const m = memoryKb(pid)
    rssKb += m.rssKb
    ussKb += m.ussKb
  }
  return { rssKb, ussKb, processes: all.size }
}

export function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]
}

export function median(values: number[]): number {
  return percentile([...values].sort((a, b) => a - b), 50)
}

export interface LatencyStats {
  count: number
  p50: number
  p99: number
}

/** Latencies in ms, in any order. */
export function latencyStats(lat: number[]): LatencyStats {
  const sorted = [...lat].sort((a, b) => a - b)
  return { count: sorted.length, p50: percentile(sorted, 50), p99: percentile(sorted, 99) }
}

/** Milliseconds since `t0` (a process.hrtime.bigint() value). */
export function msSince(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e6
}

export function row(cells: Array<string | number>, widths: number[]): string {
  return cells.map((c, i) => String(c).padEnd(widths[i])).join('  ')
}
