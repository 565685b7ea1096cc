// Off-path forgery (RFC 5452): an answer counts only when it comes from the
// server's address and port, to the socket the question left from, with
// the question's id, name and type; the source port changes every
// QUERIES_PER_SOCKET queries.
import type dgram from 'node:dgram'
import fs from 'node:fs'
import type * as dnsPacket from 'dns-packet'
import t from 'tap'
import { createResolver, QUERIES_PER_SOCKET, sameAddress, type DnsAnswer } from '../lib/dns/resolver'
import { openUdpSender, responseTo, startScriptedDnsServer, type ReceivedQuery, type ScriptedDnsServer } from './helpers/dns-server'

function aRecord(name: string, address: string): dnsPacket.Answer {
  return { type: 'A', name, ttl: 300, class: 'IN', data: address }
}

function answerWith(q: ReceivedQuery, address: string): Buffer {
  return responseTo(q, { answers: [aRecord(q.question.name, address)] })
}

function send(sock: dgram.Socket, msg: Buffer, to: { address: string; port: number }): Promise<void> {
  return new Promise((resolve) => sock.send(msg, to.port, to.address, () => resolve()))
}

/** Waits (bounded) until the server has received `n` questions. */
async function received(server: ScriptedDnsServer, n: number): Promise<void> {
  for (let i = 0; i < 400 && server.received.length < n; i++) await new Promise((resolve) => setTimeout(resolve, 5))
  if (server.received.length < n) throw new Error(`the server received ${server.received.length} questions, not ${n}`)
}

async function resolverFor(t: Tap.Test, onQuery: (q: ReceivedQuery) => void): Promise<{ server: ScriptedDnsServer; resolver: ReturnType<typeof createResolver> }> {
  const server = await startScriptedDnsServer(onQuery)
  t.teardown(() => server.close())
  const resolver = createResolver({ servers: [`127.0.0.1:${server.port}`], timeoutMs: 2000, tries: 1 })
  t.teardown(() => resolver.close())
  return { server, resolver }
}

t.test('a forged answer from another port of the server address loses to the real one', async (t) => {
  const forger = await openUdpSender('127.0.0.1')
  if (!forger) throw new Error('cannot bind a UDP socket on 127.0.0.1')
  t.teardown(() => forger.close())
  const { resolver } = await resolverFor(t, (q) => {
    // The forged answer (right id and question) arrives first, then the server's own.
    void send(forger, answerWith(q, '198.51.100.66'), q.from).then(() => q.reply(answerWith(q, '192.0.2.1')))
  })
  const a = await resolver.query('victim.example', 'A')
  t.same(a.records, ['192.0.2.1'], 'the answer from the port the question went to')
})

// Linux routes all of 127.0.0.0/8 to loopback; elsewhere 127.0.0.2 may not exist.
const otherLoopback = process.platform === 'linux' ? false : 'needs 127.0.0.2 on loopback (Linux): the address check is untested here'

t.test('a forged answer from another address with the server port loses to the real one', { skip: otherLoopback }, async (t) => {
  const { server, resolver } = await resolverFor(t, (q) => {
    void send(forger!, answerWith(q, '198.51.100.66'), q.from).then(() => q.reply(answerWith(q, '192.0.2.1')))
  })
  // The same port on another loopback address: only the address tells them apart.
  const forger = await openUdpSender('127.0.0.2', server.port)
  if (!forger) throw new Error(`cannot bind 127.0.0.2:${server.port}`)
  t.teardown(() => forger.close())
  const a = await resolver.query('victim.example', 'A')
  t.same(a.records, ['192.0.2.1'], 'the answer from the address the question went to')
})

t.test('an answer must be to the question: its id, a response, the name (any case) and type asked', async (t) => {
  const { resolver } = await resolverFor(t, (q) => {
    const wrong = [
      responseTo({ ...q, packet: { ...q.packet, id: (q.packet.id! + 1) & 0xffff } }, { answers: [aRecord(q.question.name, '198.51.100.1')] }),
      responseTo(q, { type: 'query', answers: [aRecord(q.question.name, '198.51.100.2')] }),
      responseTo(q, { questions: [{ ...q.question, name: 'other.example' }], answers: [aRecord('other.example', '198.51.100.3')] }),
      responseTo(q, { questions: [{ ...q.question, type: 'AAAA' }], answers: [aRecord(q.question.name, '198.51.100.4')] }),
      Buffer.from([1, 2, 3]),
      Buffer.from([1]),
    ]
    for (const m of wrong) q.reply(m)
    // 0x20-style case changes in the echoed name are the same name.
    q.reply(responseTo(q, { questions: [{ ...q.question, name: q.question.name.toUpperCase() }], answers: [aRecord(q.question.name, '192.0.2.1')] }))
  })
  t.same((await resolver.query('victim.example', 'A')).records, ['192.0.2.1'])
})

t.test(`the source port changes every ${QUERIES_PER_SOCKET} queries, and a used socket is closed`, async (t) => {
  const { server, resolver } = await resolverFor(t, (q) => q.reply(answerWith(q, '192.0.2.1')))
  const ask = async (i: number): Promise<void> => {
    t.equal((await resolver.query(`q${i}.example`, 'A')).rcode, 'NOERROR')
  }
  for (let i = 0; i < QUERIES_PER_SOCKET; i++) await ask(i)
  t.equal(resolver.stats().sockets, 0, `closed after its ${QUERIES_PER_SOCKET}th answer`)
  await ask(QUERIES_PER_SOCKET)
  t.equal(resolver.stats().sockets, 1)
  for (let i = QUERIES_PER_SOCKET + 1; i < 2 * QUERIES_PER_SOCKET + 1; i++) await ask(i)
  const ports = server.received.map((q) => q.from.port)
  const first = ports.slice(0, QUERIES_PER_SOCKET)
  const second = ports.slice(QUERIES_PER_SOCKET, 2 * QUERIES_PER_SOCKET)
  t.same(new Set(first).size, 1, `the first ${QUERIES_PER_SOCKET} from one port`)
  t.same(new Set(second).size, 1, `the next ${QUERIES_PER_SOCKET} from one port`)
  // The kernel picks each new socket's port at random and may hand out the
  // one just freed (seen once in a few dozen runs): two reuses in a row would
  // be a resolver that keeps its socket.
  t.ok(new Set([first[0], second[0], ports[2 * QUERIES_PER_SOCKET]]).size >= 2, 'another port after the rotations')
})

t.test('queries in flight across a rotation: each answer only on its own socket', async (t) => {
  const n = QUERIES_PER_SOCKET + 1
  const { server, resolver } = await resolverFor(t, () => undefined)
  const answers = Array.from({ length: n }, (_, i) => resolver.query(`q${i}.example`, 'A'))
  await received(server, n)
  const [firstSocket, lastQuery] = [server.received[0].from, server.received[n - 1]]
  t.not(lastQuery.from.port, firstSocket.port, 'the last question left from a new socket')
  t.equal(resolver.stats().sockets, 2, 'the old socket stays open while answers are due on it')
  // From the server's address and port, with the right id and question, but to the old socket: not taken.
  lastQuery.reply(answerWith(lastQuery, '198.51.100.66'), firstSocket)
  for (let i = n - 1; i >= 0; i--) server.received[i].reply(answerWith(server.received[i], `192.0.2.${i + 1}`))
  const got = await Promise.all(answers)
  t.same(got.map((a) => a.records[0]), Array.from({ length: n }, (_, i) => `192.0.2.${i + 1}`))
  t.equal(resolver.stats().sockets, 1, 'the used socket is closed once its answers came')
})

t.test('query ids are random, also after the pool of random bytes is read again', async (t) => {
  const { server, resolver } = await resolverFor(t, (q) => q.reply(answerWith(q, '192.0.2.1')))
  // 128 ids per read of /dev/urandom: 300 queries read it three times.
  const n = 300
  const rcodes = new Set<string>()
  for (let i = 0; i < n; i++) rcodes.add((await resolver.query(`q${i}.example`, 'A')).rcode)
  t.same([...rcodes], ['NOERROR'], 'every query answered')
  const ids = new Set(server.received.map((q) => q.packet.id))
  // 300 random 16-bit ids share a value about 0.7 times on average (birthday bound); 10 repeats is far out.
  t.ok(ids.size > n - 10, `${ids.size} distinct ids of ${n}`)
})

t.test('the server address compared as an address, not as text', async (t) => {
  t.ok(sameAddress('2001:db8::1', '2001:DB8:0:0::1'), 'rinfo writes IPv6 compressed and in lower case')
  t.ok(sameAddress('fe80::1%eth0', 'fe80::1'), 'a zone index is not part of the address')
  t.ok(sameAddress('fe80::1%eth0', 'fe80::1%eth0'), 'the same text, zone index included')
  t.ok(sameAddress('127.0.0.1', '127.0.0.1'))
  t.notOk(sameAddress('127.0.0.2', '127.0.0.1'))
  t.notOk(sameAddress('2001:db8::2', '2001:db8::1'))
  t.notOk(sameAddress('not an address', '127.0.0.1'))
})

t.test('an id still pending is not given to another query', async (t) => {
  const held: ReceivedQuery[] = []
  const { server, resolver } = await resolverFor(t, (q) => held.push(q))
  // The random pool made to repeat its first id: the second query, asked while the first waits, must skip it.
  const realRead = fs.readSync
  fs.readSync = ((fd: number, buffer: NodeJS.ArrayBufferView) => {
    const pool = Buffer.from(buffer.buffer, buffer.byteOffset, buffer.byteLength)
    for (let i = 0; i < pool.length; i += 2) pool.writeUInt16BE(i === 0 ? 0x4242 : 0x4242 + i / 2 - 1, i)
    return pool.length
  }) as typeof fs.readSync
  let answers: Promise<DnsAnswer>[]
  try {
    answers = [resolver.query('first.example', 'A'), resolver.query('second.example', 'A')]
  } finally {
    fs.readSync = realRead
  }
  await received(server, 2)
  t.same(held.map((q) => q.packet.id), [0x4242, 0x4243], 'the repeated id skipped')
  for (const q of held) q.reply(answerWith(q, '192.0.2.1'))
  t.same((await Promise.all(answers)).map((a) => a.rcode), ['NOERROR', 'NOERROR'], 'each answered on its own id')
})

/** Open files of this process that are /dev/urandom (Linux). */
function urandomFds(): number {
  return fs.readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`) === '/dev/urandom'
    } catch {
      return false
    }
  }).length
}

t.test('the random source is closed after each read', { skip: process.platform === 'linux' ? false : 'needs /proc/self/fd (Linux)' }, async (t) => {
  const { resolver } = await resolverFor(t, (q) => q.reply(answerWith(q, '192.0.2.1')))
  const before = urandomFds()
  // The first query reads the pool.
  t.equal((await resolver.query('a.example', 'A')).rcode, 'NOERROR')
  t.equal(urandomFds(), before)
})

t.test('a used socket retired while a newer one takes the queries: the newer one stays in use', async (t) => {
  let late: ReceivedQuery | undefined
  const { server, resolver } = await resolverFor(t, (q) => {
    if (q.question.name === 'late.example') late = q
    else q.reply(answerWith(q, '192.0.2.1'))
  })
  const lateAnswer = resolver.query('late.example', 'A')
  for (let i = 1; i < QUERIES_PER_SOCKET; i++) await resolver.query(`q${i}.example`, 'A')
  // The first socket has carried its share but waits for late.example: the next query opens a new one.
  await resolver.query('new1.example', 'A')
  t.equal(resolver.stats().sockets, 2)
  await received(server, QUERIES_PER_SOCKET + 1)
  late!.reply(answerWith(late!, '192.0.2.1'))
  t.equal((await lateAnswer).rcode, 'NOERROR')
  t.equal(resolver.stats().sockets, 1, 'the first socket closed')
  await resolver.query('new2.example', 'A')
  t.equal(resolver.stats().sockets, 1, 'and the next query on the newer socket')
  const ports = server.received.slice(-2).map((q) => q.from.port)
  t.equal(ports[0], ports[1], 'from the same port')
})
