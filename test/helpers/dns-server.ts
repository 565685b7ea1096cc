// An authoritative DNS server on 127.0.0.1 for tests: serves a zone given
// as the RFC 7208 suite's `zonedata` (UDP, and TCP on the same port for
// answers too long for 512 bytes). Names listed with TIMEOUT never answer.
import dgram from 'node:dgram'
import net from 'node:net'
import * as dnsPacket from 'dns-packet'

export type ZoneRecord = string | Record<string, unknown>
export type Zone = Record<string, ZoneRecord[]>

export interface DnsServer {
  port: number
  address: string
  queries: number
  setZone(zone: Zone): void
  close(): Promise<void>
}

const TYPES = ['TXT', 'SPF', 'A', 'AAAA', 'MX', 'PTR', 'CNAME'] as const

function txtStrings(value: unknown): Buffer[] {
  const parts = Array.isArray(value) ? value : [value]
  // The suite writes raw bytes as \xNN escapes inside YAML double quotes: those arrive as latin1 code points.
  return parts.map((p) => Buffer.from(String(p), 'latin1'))
}

/** A zone's names in lower case, for lookups in constant time whatever its size (benches serve thousands). */
const indexes = new WeakMap<Zone, Map<string, ZoneRecord[]>>()
function lookupName(zone: Zone, name: string): ZoneRecord[] | undefined {
  let index = indexes.get(zone)
  if (!index) {
    index = new Map(Object.entries(zone).map(([k, v]) => [k.toLowerCase(), v]))
    indexes.set(zone, index)
  }
  return index.get(name.toLowerCase().replace(/\.$/, ''))
}

function answersFor(zone: Zone, qname: string, qtype: string, depth = 0): { timeout: boolean; nxdomain: boolean; answers: dnsPacket.Answer[] } {
  const records = lookupName(zone, qname)
  if (records === undefined) return { timeout: false, nxdomain: true, answers: [] }
  const answers: dnsPacket.Answer[] = []
  const hasTxt = records.some((r) => typeof r === 'object' && 'TXT' in r)
  for (const r of records) {
    if (typeof r !== 'object') continue
    const [type, value] = Object.entries(r)[0]
    if (!TYPES.includes(type as (typeof TYPES)[number])) continue
    const name = qname
    // Drivers copy SPF records to TXT when the name has no TXT entry.
    const effective = type === 'SPF' && qtype === 'TXT' && !hasTxt ? 'TXT' : type
    if (type === 'CNAME' && qtype !== 'CNAME') {
      const target = String(value)
      answers.push({ type: 'CNAME', name, ttl: 300, class: 'IN', data: target })
      // A CNAME loop is answered with the chain so far, as a real server would stop.
      if (depth < 8) answers.push(...answersFor(zone, target, qtype, depth + 1).answers)
      continue
    }
    if (effective !== qtype || value === 'NONE') continue
    if (effective === 'TXT' || effective === 'SPF') answers.push({ type: effective as 'TXT', name, ttl: 300, class: 'IN', data: txtStrings(value) })
    else if (effective === 'A' || effective === 'AAAA') answers.push({ type: effective, name, ttl: 300, class: 'IN', data: String(value) })
    else if (effective === 'MX') {
      const [preference, exchange] = value as [number, string]
      answers.push({ type: 'MX', name, ttl: 300, class: 'IN', data: { preference, exchange } })
    } else if (effective === 'PTR') answers.push({ type: 'PTR', name, ttl: 300, class: 'IN', data: String(value) })
  }
  // TIMEOUT: queries this name has no data for are never answered.
  if (answers.length === 0 && records.some((r) => r === 'TIMEOUT')) return { timeout: true, nxdomain: false, answers }
  return { timeout: false, nxdomain: false, answers }
}

/** Zone data a real server could not serve (a string over 255 bytes...) is answered SERVFAIL. */
function servfail(msg: Buffer): Buffer | null {
  try {
    const q = dnsPacket.decode(msg)
    return dnsPacket.encode({ type: 'response', id: q.id, flags: 2, questions: q.questions })
  } catch {
    return null
  }
}

/**
 * A TCP server and a UDP socket on one port of `host`: the TCP port is
 * taken first (port 0: the kernel picks one no socket uses, not even a
 * client's ephemeral port), then UDP on that number; when UDP is taken
 * there, both start over on another (bounded). Picking the UDP port first
 * collided with client connections of other tests holding that TCP port.
 * A fixed `port` gets one attempt.
 */
async function listenOnOnePort(
  tcp: net.Server,
  onMessage: (udp: dgram.Socket, msg: Buffer, rinfo: dgram.RemoteInfo) => void,
  host: string = '127.0.0.1',
  fixedPort: number = 0,
): Promise<{ udp: dgram.Socket; port: number }> {
  let lastError: Error | undefined
  for (let attempt = 0; attempt < (fixedPort === 0 ? 20 : 1); attempt++) {
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject)
      tcp.listen(fixedPort, host, () => (tcp.off('error', reject), resolve()))
    })
    const port = (tcp.address() as net.AddressInfo).port
    const udp = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4')
    udp.on('message', (msg, rinfo) => onMessage(udp, msg, rinfo))
    const bound = await new Promise<Error | null>((resolve) => {
      udp.once('error', resolve)
      udp.bind(port, host, () => resolve(null))
    })
    if (bound === null) return { udp, port }
    lastError = bound
    udp.close()
    await new Promise<void>((resolve) => tcp.close(() => resolve()))
  }
  throw lastError ?? new Error('no port free for both UDP and TCP')
}

export function startDnsServer(initial: Zone = {}): Promise<DnsServer> {
  let zone = initial
  let udp: dgram.Socket | undefined
  const sockets = new Set<net.Socket>()
  const tcp = net.createServer((sock) => {
    sockets.add(sock)
    sock.on('close', () => sockets.delete(sock))
    sock.on('error', () => undefined)
    let buf = Buffer.alloc(0)
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d])
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const len = buf.readUInt16BE(0)
        let reply: Buffer | null
        try {
          reply = answer(buf.subarray(2, 2 + len), false)
        } catch {
          reply = servfail(buf.subarray(2, 2 + len))
        }
        buf = buf.subarray(2 + len)
        if (reply) {
          const head = Buffer.alloc(2)
          head.writeUInt16BE(reply.length)
          sock.write(Buffer.concat([head, reply]))
        }
      }
    })
  })
  const server: DnsServer = {
    port: 0,
    address: '127.0.0.1',
    queries: 0,
    setZone: (z) => {
      zone = z
    },
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy()
        udp!.close(() => tcp.close(() => resolve()))
      }),
  }
  function answer(msg: Buffer, udpLimit: boolean): Buffer | null {
    let q: dnsPacket.Packet
    try {
      q = dnsPacket.decode(msg)
    } catch {
      return null
    }
    server.queries++
    const question = q.questions?.[0]
    if (!question) return null
    const { timeout, nxdomain, answers } = answersFor(zone, question.name, question.type)
    if (timeout) return null
    let reply = dnsPacket.encode({
      type: 'response', id: q.id, flags: dnsPacket.AUTHORITATIVE_ANSWER | (nxdomain ? 3 : 0), questions: [question], answers,
    })
    if (udpLimit && reply.length > 512) {
      reply = dnsPacket.encode({ type: 'response', id: q.id, flags: dnsPacket.AUTHORITATIVE_ANSWER | dnsPacket.TRUNCATED_RESPONSE, questions: [question], answers: [] })
    }
    return reply
  }
  const onMessage = (sock: dgram.Socket, msg: Buffer, rinfo: dgram.RemoteInfo): void => {
    let reply: Buffer | null
    try {
      reply = answer(msg, true)
    } catch {
      reply = servfail(msg)
    }
    if (reply) sock.send(reply, rinfo.port, rinfo.address)
  }
  return listenOnOnePort(tcp, onMessage).then(({ udp: bound, port }) => {
    udp = bound
    server.port = port
    return server
  })
}

/** A question as a scripted server received it. */
export interface ReceivedQuery {
  transport: 'udp' | 'tcp'
  packet: dnsPacket.Packet
  question: dnsPacket.Question
  /** The asker's address and (UDP) source port. */
  from: { address: string; port: number }
  /** Sends an encoded message from the server's own socket back to the asker, or (UDP) to `to`; TCP: on the question's connection. */
  reply(message: Buffer, to?: { address: string; port: number }): void
  /** TCP: the question's connection, for tests that write raw bytes, close or reset it. */
  connection?: net.Socket
}

export interface ScriptedDnsServer {
  port: number
  address: string
  /** Every question received, in order. */
  received: ReceivedQuery[]
  close(): Promise<void>
}

/** A response to `q` (same id and question) with `fields` over it: answers, rcode flags, another question... */
export function responseTo(q: ReceivedQuery, fields: Partial<dnsPacket.Packet> = {}): Buffer {
  return dnsPacket.encode({ type: 'response', id: q.packet.id, flags: dnsPacket.AUTHORITATIVE_ANSWER, questions: [q.question], ...fields })
}

/**
 * A DNS server on 127.0.0.1 (UDP, and TCP on the same port) whose test
 * decides what each question gets: an answer, nothing, a wrong answer, an
 * answer late or from elsewhere. `onQuery` runs for each question received.
 * `at`: another loopback address (`::1`) or a fixed port (53).
 */
export function startScriptedDnsServer(onQuery: (q: ReceivedQuery) => void, at: { host?: string; port?: number } = {}): Promise<ScriptedDnsServer> {
  const host = at.host ?? '127.0.0.1'
  let udp: dgram.Socket | undefined
  const connections = new Set<net.Socket>()
  const received: ReceivedQuery[] = []
  const take = (transport: 'udp' | 'tcp', msg: Buffer, from: { address: string; port: number }, reply: ReceivedQuery['reply'], connection?: net.Socket): void => {
    let packet: dnsPacket.Packet
    try {
      packet = dnsPacket.decode(msg)
    } catch {
      return
    }
    const question = packet.questions?.[0]
    if (!question) return
    const q: ReceivedQuery = { transport, packet, question, from, reply, connection }
    received.push(q)
    onQuery(q)
  }
  const onMessage = (sock: dgram.Socket, msg: Buffer, rinfo: dgram.RemoteInfo): void => {
    const from = { address: rinfo.address, port: rinfo.port }
    take('udp', msg, from, (m, to = from) => sock.send(m, to.port, to.address))
  }
  const tcp = net.createServer((sock) => {
    connections.add(sock)
    sock.on('close', () => connections.delete(sock))
    sock.on('error', () => undefined)
    let buf = Buffer.alloc(0)
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d])
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const msg = buf.subarray(2, 2 + buf.readUInt16BE(0))
        buf = buf.subarray(2 + msg.length)
        take('tcp', msg, { address: sock.remoteAddress ?? '', port: sock.remotePort ?? 0 }, (m) => {
          const head = Buffer.alloc(2)
          head.writeUInt16BE(m.length)
          sock.write(Buffer.concat([head, m]))
        }, sock)
      }
    })
  })
  const server: ScriptedDnsServer = {
    port: 0,
    address: host,
    received,
    close: () =>
      new Promise((resolve) => {
        for (const s of connections) s.destroy()
        udp!.close(() => tcp.close(() => resolve()))
      }),
  }
  return listenOnOnePort(tcp, onMessage, host, at.port).then(({ udp: bound, port }) => {
    udp = bound
    server.port = port
    return server
  })
}

/** A UDP socket bound to `address` (and `port`, else any free one), for sending forged answers; null when it cannot be bound there. */
export function openUdpSender(address: string, port = 0): Promise<dgram.Socket | null> {
  const sock = dgram.createSocket('udp4')
  return new Promise((resolve) => {
    sock.once('error', () => {
      sock.close()
      resolve(null)
    })
    sock.bind(port, address, () => resolve(sock))
  })
}
