// A small stub resolver on dns-packet: UDP with retries over the servers,
// TCP when an answer is truncated, a per-process cache that honours TTLs.
// Node's own resolver refuses names with ':', '/', '%' or spaces, which
// SPF macro expansion produces (RFC 7208 test suite); this one sends any
// name whose labels fit the wire format. Nothing here writes to stdio.
//
// Against off-path forgery (RFC 5452): a random query id, a UDP socket of
// its own (a source port the kernel picks at random) every
// QUERIES_PER_SOCKET queries, and an answer is taken only when it comes
// from the server's address and port, to that socket, with our id and our
// question.

import type * as DnsPacket from 'dns-packet'
import type * as Dgram from 'node:dgram'
import { parseIp } from '../normalize'
import { parseServerAddress, type ServerAddress } from './server-address'

export type RrType = 'TXT' | 'A' | 'AAAA' | 'MX' | 'PTR'
/**
 * The server's RCODE; any other error RCODE (FORMERR, NOTIMP...) comes as
 * SERVFAIL, a temporary error (RFC 7208 §4.4). TIMEOUT: no answer.
 * ERROR: the name was not sent (it does not fit the wire format).
 */
export type Rcode = 'NOERROR' | 'NXDOMAIN' | 'SERVFAIL' | 'REFUSED' | 'TIMEOUT' | 'ERROR'

export interface MxRecord {
  preference: number
  exchange: string
}

export interface DnsAnswer {
  rcode: Rcode
  /** TXT: each record's strings joined (bytes as latin1); A/AAAA: addresses; PTR: names. */
  records: string[]
  mx: MxRecord[]
}

export interface ResolverOptions {
  /** `ip`, `ip:port` or `[ipv6]:port`; default: the nameservers of /etc/resolv.conf. */
  servers?: string[]
  /** Per try, milliseconds. */
  timeoutMs?: number
  /** Tries per server list pass. */
  tries?: number
  cacheMaxEntries?: number
  /** Milliseconds, for the cache. */
  now?: () => number
  resolvConf?: string
}

export interface Resolver {
  query(name: string, type: RrType): Promise<DnsAnswer>
  /** The cached answer, if there is a fresh one: no query, no promise. */
  cached(name: string, type: RrType): DnsAnswer | undefined
  /** `sockets`: UDP sockets open now. */
  stats(): { queries: number; cacheHits: number; timeouts: number; cacheEntries: number; sockets: number }
  /**
   * Settles every pending query at once as TIMEOUT (no answer: a temporary
   * error to the SPF check), closes the sockets and clears the timers.
   * Later queries are answered from the cache or TIMEOUT, without a query.
   */
  close(): void
}

type Server = ServerAddress

/**
 * UDP queries sent from one socket (one source port) before the next query
 * opens a new one. A port that carries few queries leaves an off-path
 * forger little time to find it (RFC 5452 §9.2); a new socket costs a few
 * microseconds of the query (measured: see the commit of this line).
 */
export const QUERIES_PER_SOCKET = 16

/** A UDP socket, the queries it carried and those still waiting on it. */
interface PooledSocket {
  socket: Dgram.Socket
  family: 4 | 6
  sent: number
  waiting: number
}

interface PendingQuery {
  via: PooledSocket
  server: Server
  qname: string
  type: RrType
  settle(reply: DnsPacket.Packet | null): void
}

/** Negative answers are cached this long (seconds) unless the zone's SOA says less. */
const NEGATIVE_TTL = 60
const MAX_TTL = 86400

export function readResolvConf(text: string): string[] {
  const out: string[] = []
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line)
    if (m) out.push(m[1].replace(/%.*$/, ''))
  }
  return out
}

/** True when every label fits the wire format (1-63 bytes) and the name 253 bytes. */
export function isWireName(name: string): boolean {
  const n = name.replace(/\.$/, '')
  if (n === '' || Buffer.byteLength(n) > 253) return false
  return n.split('.').every((l) => l.length > 0 && Buffer.byteLength(l) <= 63)
}

export function createResolver(opts: ResolverOptions = {}): Resolver {
  return new StubResolver(opts)
}

class StubResolver implements Resolver {
  private servers: Server[] | null = null
  private readonly cache = new Map<string, { expires: number; answer: DnsAnswer }>()
  private readonly inFlight = new Map<string, Promise<DnsAnswer>>()
  private readonly idPool = Buffer.alloc(256)
  private idPos = 256
  /** The socket new queries of each family go out on. */
  private readonly current: Partial<Record<4 | 6, PooledSocket>> = {}
  private readonly open = new Set<PooledSocket>()
  private readonly pending = new Map<number, PendingQuery>()
  /** Settles each TCP query still running (used by close()). */
  private readonly tcpPending = new Set<() => void>()
  private queries = 0
  private cacheHits = 0
  /** Queries that got no answer in time. */
  private timeouts = 0
  private closed = false
  private packet: typeof DnsPacket | null = null

  constructor(private readonly opts: ResolverOptions) {}

  private now(): number {
    return this.opts.now ? this.opts.now() : Date.now()
  }

  private dns(): typeof DnsPacket {
    this.packet ??= require('dns-packet') as typeof DnsPacket
    return this.packet
  }

  private serverList(): Server[] {
    if (this.servers) return this.servers
    let names = this.opts.servers
    if (!names || names.length === 0) {
      try {
        const fs = require('node:fs') as typeof import('node:fs')
        names = readResolvConf(fs.readFileSync(this.opts.resolvConf ?? '/etc/resolv.conf', 'utf8'))
      } catch {
        names = []
      }
    }
    const parsed = names.map(parseServerAddress).filter((s): s is Server => s !== null)
    this.servers = parsed.length > 0 ? parsed : [{ host: '127.0.0.1', port: 53, family: 4 }]
    return this.servers
  }

  stats(): { queries: number; cacheHits: number; timeouts: number; cacheEntries: number; sockets: number } {
    return { queries: this.queries, cacheHits: this.cacheHits, timeouts: this.timeouts, cacheEntries: this.cache.size, sockets: this.open.size }
  }

  cached(name: string, type: RrType): DnsAnswer | undefined {
    const hit = this.cache.get(`${type} ${name.replace(/\.$/, '').toLowerCase()}`)
    if (!hit || hit.expires <= this.now()) return undefined
    this.cacheHits++
    return hit.answer
  }

  async query(name: string, type: RrType): Promise<DnsAnswer> {
    const qname = name.replace(/\.$/, '').toLowerCase()
    const key = `${type} ${qname}`
    const hit = this.cache.get(key)
    if (hit && hit.expires > this.now()) {
      this.cacheHits++
      return hit.answer
    }
    if (hit) this.cache.delete(key)
    if (!isWireName(qname)) return { rcode: 'ERROR', records: [], mx: [] }
    if (this.closed) return { rcode: 'TIMEOUT', records: [], mx: [] }
    // A question already on the wire is not asked twice (a prefetch, or two identities of one domain).
    const flying = this.inFlight.get(key)
    if (flying) return flying
    const asked = this.lookup(qname, type).then(({ answer, ttl }) => {
      if (ttl > 0 && !this.closed) {
        this.cache.set(key, { expires: this.now() + ttl * 1000, answer })
        const max = this.opts.cacheMaxEntries ?? 1000
        while (this.cache.size > max) this.cache.delete(this.cache.keys().next().value as string)
      }
      return answer
    }).finally(() => this.inFlight.delete(key))
    this.inFlight.set(key, asked)
    return asked
  }

  private async lookup(qname: string, type: RrType): Promise<{ answer: DnsAnswer; ttl: number }> {
    const servers = this.serverList()
    const tries = Math.max(1, this.opts.tries ?? 2)
    let last: Rcode = 'TIMEOUT'
    for (let attempt = 0; attempt < tries * servers.length && !this.closed; attempt++) {
      const server = servers[attempt % servers.length]
      this.queries++
      let reply = await this.udpQuery(server, qname, type)
      if (reply && (reply as { flag_tc?: boolean }).flag_tc) reply = await this.tcpQuery(server, qname, type)
      if (!reply) {
        last = 'TIMEOUT'
        this.timeouts++
        continue
      }
      const rcode = String((reply as { rcode?: string }).rcode ?? 'NOERROR')
      if (rcode === 'NXDOMAIN') return { answer: { rcode, records: [], mx: [] }, ttl: negativeTtl(reply) }
      if (rcode === 'NOERROR') return toAnswer(reply, type)
      last = rcode === 'REFUSED' ? 'REFUSED' : 'SERVFAIL'
    }
    return { answer: { rcode: last, records: [], mx: [] }, ttl: 0 }
  }

  /** The socket for the next query to a server of `family`: a new one after QUERIES_PER_SOCKET queries. */
  private socketFor(family: 4 | 6): PooledSocket {
    const current = this.current[family]
    if (current && current.sent < QUERIES_PER_SOCKET) return current
    const dgram = require('node:dgram') as typeof Dgram
    // Servers are IP addresses: a lookup that hands them back spares node:dns
    // (loaded on a cold start otherwise).
    const lookup = (address: string, _options: unknown, callback: (err: null, address: string, family: number) => void): void => {
      process.nextTick(callback, null, address, family)
    }
    // Bound on the first send to port 0: Linux picks a random free ephemeral port.
    const socket = dgram.createSocket({ type: family === 4 ? 'udp4' : 'udp6', lookup: lookup as unknown as Dgram.SocketOptions['lookup'] })
    const pooled: PooledSocket = { socket, family, sent: 0, waiting: 0 }
    socket.on('message', (msg, from) => this.onDatagram(pooled, msg, from))
    // A socket in error takes no new query; those waiting on it time out.
    socket.on('error', () => {
      pooled.sent = QUERIES_PER_SOCKET
      this.closeIfDone(pooled)
    })
    socket.unref()
    this.open.add(pooled)
    this.current[family] = pooled
    return pooled
  }

  /** A socket that carried its share of queries is closed once none waits on it. */
  private closeIfDone(pooled: PooledSocket): void {
    if ((pooled.sent < QUERIES_PER_SOCKET && !this.closed) || pooled.waiting > 0 || !this.open.has(pooled)) return
    this.open.delete(pooled)
    if (this.current[pooled.family] === pooled) delete this.current[pooled.family]
    pooled.socket.close()
  }

  /** RFC 5452 §4: an answer counts only on the socket, from the address and port, with the id and question asked. */
  private onDatagram(via: PooledSocket, msg: Buffer, from: Dgram.RemoteInfo): void {
    if (msg.length < 12) return
    const query = this.pending.get(msg.readUInt16BE(0))
    if (!query || query.via !== via || from.port !== query.server.port || !sameAddress(from.address, query.server.host)) return
    let reply: DnsPacket.Packet
    try {
      reply = this.dns().decode(msg)
    } catch {
      return
    }
    if (answersQuestion(reply, query.qname, query.type)) query.settle(reply)
  }

  /**
   * Query ids must be unpredictable (an off-path attacker who guesses one
   * can forge the answer). They come from the kernel's random source, read
   * 128 at a time: node:crypto would cost milliseconds of every cold start.
   */
  private newId(): number {
    for (;;) {
      if (this.idPos >= this.idPool.length) {
        const fs = require('node:fs') as typeof import('node:fs')
        const fd = fs.openSync('/dev/urandom', 'r')
        try {
          fs.readSync(fd, this.idPool, 0, this.idPool.length, null)
        } finally {
          fs.closeSync(fd)
        }
        this.idPos = 0
      }
      const id = this.idPool.readUInt16BE(this.idPos)
      this.idPos += 2
      if (!this.pending.has(id)) return id
    }
  }

  private udpQuery(server: Server, qname: string, type: RrType): Promise<DnsPacket.Packet | null> {
    if (this.closed) return Promise.resolve(null)
    const id = this.newId()
    const msg = this.dns().encode({ type: 'query', id, flags: this.dns().RECURSION_DESIRED, questions: [{ type, name: qname, class: 'IN' }] })
    const via = this.socketFor(server.family)
    via.sent++
    via.waiting++
    return new Promise((resolve) => {
      const settle = (reply: DnsPacket.Packet | null): void => {
        if (this.pending.get(id) !== query) return
        clearTimeout(timer)
        this.pending.delete(id)
        via.waiting--
        this.closeIfDone(via)
        resolve(reply)
      }
      const query: PendingQuery = { via, server, qname, type, settle }
      const timer = setTimeout(settle, this.opts.timeoutMs ?? 2000, null)
      this.pending.set(id, query)
      via.socket.send(msg, server.port, server.host, (err) => {
        if (err) settle(null)
      })
    })
  }

  private tcpQuery(server: Server, qname: string, type: RrType): Promise<DnsPacket.Packet | null> {
    if (this.closed) return Promise.resolve(null)
    const net = require('node:net') as typeof import('node:net')
    const id = this.newId()
    const msg = this.dns().streamEncode({ type: 'query', id, flags: this.dns().RECURSION_DESIRED, questions: [{ type, name: qname, class: 'IN' }] })
    return new Promise((resolve) => {
      let buf = Buffer.alloc(0)
      const sock = net.connect({ host: server.host, port: server.port })
      const timer = setTimeout(() => finish(null), this.opts.timeoutMs ?? 2000)
      const abort = (): void => finish(null)
      this.tcpPending.add(abort)
      const finish = (reply: DnsPacket.Packet | null): void => {
        clearTimeout(timer)
        this.tcpPending.delete(abort)
        sock.destroy()
        resolve(reply)
      }
      sock.on('connect', () => sock.write(msg))
      sock.on('data', (d) => {
        buf = Buffer.concat([buf, d])
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          try {
            const reply = this.dns().streamDecode(buf)
            finish(reply.id === id && answersQuestion(reply, qname, type) ? reply : null)
          } catch {
            finish(null)
          }
        }
      })
      sock.on('error', () => finish(null))
      sock.on('close', () => finish(null))
    })
  }

  close(): void {
    this.closed = true
    for (const query of [...this.pending.values()]) query.settle(null)
    for (const abort of [...this.tcpPending]) abort()
    for (const pooled of [...this.open]) this.closeIfDone(pooled)
  }
}

/** An answer to our question: a response, same name (any case) and type. */
function answersQuestion(reply: DnsPacket.Packet, qname: string, type: RrType): boolean {
  const q = reply.questions?.[0]
  return reply.type === 'response' && q !== undefined && q.type === type && q.name.toLowerCase() === qname
}

/** The same IP address, however each is written (a server given as `2001:DB8::1`, rinfo as `2001:db8::1`). */
export function sameAddress(from: string, server: string): boolean {
  if (from === server) return true
  const a = parseIp(from.replace(/%.*$/, ''))
  return a !== null && a.text === parseIp(server)?.text
}

function negativeTtl(reply: DnsPacket.Packet): number {
  const soa = reply.authorities?.find((a) => a.type === 'SOA') as { ttl?: number; data?: { minimum?: number } } | undefined
  const fromSoa = soa ? Math.min(soa.ttl ?? NEGATIVE_TTL, soa.data?.minimum ?? NEGATIVE_TTL) : NEGATIVE_TTL
  return Math.max(1, Math.min(fromSoa, NEGATIVE_TTL))
}

function toAnswer(reply: DnsPacket.Packet, type: RrType): { answer: DnsAnswer; ttl: number } {
  const records: string[] = []
  const mx: MxRecord[] = []
  let ttl = MAX_TTL
  for (const a of reply.answers ?? []) {
    // The answer is only as fresh as each record of it: a CNAME on the way is one.
    if (a.type !== 'OPT') ttl = Math.min(ttl, a.ttl ?? 0)
    if (a.type !== type) continue
    if (a.type === 'TXT') {
      const data = a.data as Buffer | Buffer[] | string
      const parts = Array.isArray(data) ? data : [data]
      records.push(parts.map((p) => (Buffer.isBuffer(p) ? p.toString('latin1') : String(p))).join(''))
    } else if (a.type === 'MX') {
      const d = a.data as { preference: number; exchange: string }
      mx.push({ preference: d.preference, exchange: d.exchange })
    } else {
      records.push(String(a.data))
    }
  }
  if (records.length === 0 && mx.length === 0) ttl = negativeTtl(reply)
  return { answer: { rcode: 'NOERROR', records, mx }, ttl }
}
