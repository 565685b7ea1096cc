// How a question travels: the TCP framing of a truncated answer's retry
// (a length prefix and a reply that arrive in pieces, an empty reply, a
// server that closes, resets or never answers), an IPv6 server, a send
// that fails, a UDP socket that cannot be opened, and which server is
// asked when none is configured.
import fs from 'node:fs'
import type * as dnsPacket from 'dns-packet'
import t from 'tap'
import { createResolver, QUERIES_PER_SOCKET, type DnsAnswer, type ResolverOptions } from '../lib/dns/resolver'
import { responseTo, startScriptedDnsServer, type ReceivedQuery, type ScriptedDnsServer } from './helpers/dns-server'

const TRUNCATED = 1 << 9
/** Far longer than any test here waits: a query settled sooner was not settled by its timer. */
const LONG_TIMEOUT_MS = 10_000
/** How long a query the resolver should settle at once may take (2 shared cores). */
const BOUND_MS = 2000

function addressAnswer(q: ReceivedQuery): Buffer {
  const answers: dnsPacket.Answer[] = [{ type: 'A', name: q.question.name, ttl: 300, class: 'IN', data: '192.0.2.1' }]
  return responseTo(q, { answers })
}

function framed(message: Buffer): Buffer {
  const head = Buffer.alloc(2)
  head.writeUInt16BE(message.length)
  return Buffer.concat([head, message])
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** A server that truncates every UDP answer, so that the question comes again over TCP, where `overTcp` decides. */
async function truncatingServer(t: Tap.Test, overTcp: (q: ReceivedQuery, socket: NonNullable<ReceivedQuery['connection']>) => void): Promise<ScriptedDnsServer> {
  const server = await startScriptedDnsServer((q) => {
    if (q.transport === 'udp') q.reply(responseTo(q, { flags: TRUNCATED }))
    else if (q.connection) overTcp(q, q.connection)
  })
  t.teardown(() => server.close())
  return server
}

function resolverFor(t: Tap.Test, server: ScriptedDnsServer, opts: ResolverOptions = {}): ReturnType<typeof createResolver> {
  const host = server.address.includes(':') ? `[${server.address}]` : server.address
  const r = createResolver({ servers: [`${host}:${server.port}`], timeoutMs: LONG_TIMEOUT_MS, tries: 1, ...opts })
  t.teardown(() => r.close())
  return r
}

/** The answer and how long it took, or 'still pending' after BOUND_MS. */
async function timed(answer: Promise<DnsAnswer>): Promise<{ answer: DnsAnswer; ms: number } | 'still pending'> {
  const started = Date.now()
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<'still pending'>((resolve) => {
    timer = setTimeout(resolve, BOUND_MS, 'still pending')
  })
  const got = await Promise.race([answer, bound]).finally(() => clearTimeout(timer))
  return got === 'still pending' ? got : { answer: got, ms: Date.now() - started }
}

t.test('TCP: a length prefix and a reply that arrive in pieces are put together', async (t) => {
  const server = await truncatingServer(t, (q, socket) => {
    socket.setNoDelay(true)
    const bytes = framed(addressAnswer(q))
    // One byte of the prefix, then the other with part of the message, then the rest.
    const pieces = [bytes.subarray(0, 1), bytes.subarray(1, 8), bytes.subarray(8)]
    void (async () => {
      for (const piece of pieces) {
        socket.write(piece)
        await pause(20)
      }
    })()
  })
  const a = await resolverFor(t, server).query('split.example', 'A')
  t.same(a, { rcode: 'NOERROR', records: ['192.0.2.1'], mx: [] })
  t.same(server.received.map((q) => q.transport), ['udp', 'tcp'])
})

t.test('TCP: an empty reply (length 0) ends the query at once', async (t) => {
  const server = await truncatingServer(t, (_q, socket) => {
    socket.write(Buffer.from([0, 0]))
  })
  const got = await timed(resolverFor(t, server).query('empty.example', 'A'))
  t.not(got, 'still pending', `settled at once, not after ${LONG_TIMEOUT_MS} ms`)
  if (got !== 'still pending') t.equal(got.answer.rcode, 'TIMEOUT')
})

t.test('TCP: a reply that is no DNS message ends the query at once', async (t) => {
  const server = await truncatingServer(t, (_q, socket) => {
    socket.write(framed(Buffer.from('not a DNS message')))
  })
  const got = await timed(resolverFor(t, server).query('garbage.example', 'A'))
  t.not(got, 'still pending', `settled at once, not after ${LONG_TIMEOUT_MS} ms`)
  if (got !== 'still pending') t.equal(got.answer.rcode, 'TIMEOUT')
})

t.test('TCP: a server that closes the connection without an answer ends the query at once', async (t) => {
  const server = await truncatingServer(t, (_q, socket) => socket.end())
  const got = await timed(resolverFor(t, server).query('closed.example', 'A'))
  t.not(got, 'still pending', `settled at once, not after ${LONG_TIMEOUT_MS} ms`)
  if (got !== 'still pending') t.equal(got.answer.rcode, 'TIMEOUT')
})

t.test('TCP: a server that resets the connection ends the query at once', async (t) => {
  const server = await truncatingServer(t, (_q, socket) => socket.resetAndDestroy())
  const got = await timed(resolverFor(t, server).query('reset.example', 'A'))
  t.not(got, 'still pending', `settled at once, not after ${LONG_TIMEOUT_MS} ms`)
  if (got !== 'still pending') t.equal(got.answer.rcode, 'TIMEOUT')
})

t.test('TCP: a server that never answers is given timeoutMs', async (t) => {
  const server = await truncatingServer(t, () => undefined)
  const got = await timed(resolverFor(t, server, { timeoutMs: 100 }).query('silent.example', 'A'))
  t.not(got, 'still pending')
  if (got === 'still pending') return
  t.equal(got.answer.rcode, 'TIMEOUT')
  // The UDP answer comes at once; the TCP try is the 100 ms (the default is 2000).
  t.ok(got.ms >= 90 && got.ms < 1500, `${got.ms} ms`)
})

t.test('an IPv6 server is asked from an IPv6 socket', async (t) => {
  let server: ScriptedDnsServer
  try {
    server = await startScriptedDnsServer((q) => q.reply(addressAnswer(q)), { host: '::1' })
  } catch (err) {
    t.skip(`no IPv6 loopback here: ${(err as Error).message}`)
    return
  }
  t.teardown(() => server.close())
  const r = resolverFor(t, server)
  const got = await timed(r.query('v6.example', 'A'))
  t.not(got, 'still pending')
  if (got !== 'still pending') t.same(got.answer.records, ['192.0.2.1'])
  t.equal(server.received[0]?.from.address, '::1')
})

t.test('a send that fails settles its query at once', async (t) => {
  // Linux refuses a datagram to the broadcast address from a socket without SO_BROADCAST (EACCES).
  const r = createResolver({ servers: ['255.255.255.255'], timeoutMs: LONG_TIMEOUT_MS, tries: 1 })
  t.teardown(() => r.close())
  const got = await timed(r.query('broadcast.example', 'A'))
  t.not(got, 'still pending', `settled at once, not after ${LONG_TIMEOUT_MS} ms`)
  if (got === 'still pending') return
  t.equal(got.answer.rcode, 'TIMEOUT')
  t.equal(r.stats().timeouts, 1)
})

/** The soft limit on open files, from /proc (Linux); null elsewhere. */
function openFileLimit(): number | null {
  try {
    const line = fs.readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'))
    const soft = Number(line?.trim().split(/\s+/)[3])
    return Number.isInteger(soft) ? soft : null
  } catch {
    return null
  }
}

const fdLimit = openFileLimit()
const noFdExhaustion = fdLimit === null ? 'needs /proc/self/limits (Linux)' : fdLimit > 65_536 ? `the open file limit (${fdLimit}) is too high to use up` : false

t.test('no file descriptor left for a UDP socket: the query times out, the process lives on, the socket is retired', { skip: noFdExhaustion }, async (t) => {
  const server = await startScriptedDnsServer((q) => q.reply(addressAnswer(q)))
  t.teardown(() => server.close())
  const r = resolverFor(t, server, { timeoutMs: 100 })
  // Ids are read from /dev/urandom 128 at a time, and a socket is retired after QUERIES_PER_SOCKET
  // queries: after these the next query needs a new socket, but no file for its id.
  for (let i = 0; i < QUERIES_PER_SOCKET; i++) await r.query(`warm${i}.example`, 'A')
  t.equal(r.stats().sockets, 0)
  const held: number[] = []
  const release = (): void => {
    for (const fd of held.splice(0)) fs.closeSync(fd)
  }
  t.teardown(release)
  let answer: Promise<DnsAnswer>
  try {
    for (let i = 0; i <= fdLimit!; i++) held.push(fs.openSync('/dev/null', 'r'))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EMFILE') throw err
  } finally {
    // The socket is bound on its first send, a tick later: the fds are given back once that failed.
    answer = r.query('no-fd.example', 'A')
    await new Promise((resolve) => setImmediate(resolve))
    release()
  }
  t.equal((await answer).rcode, 'TIMEOUT')
  t.equal(server.received.length, QUERIES_PER_SOCKET, 'not sent')
  t.equal(r.stats().sockets, 0, 'the socket in error is closed once its query is settled')
  t.same((await r.query('after.example', 'A')).records, ['192.0.2.1'], 'the next query opens a new socket')
})

t.test('no server configured, or none usable: 127.0.0.1:53 is asked', async (t) => {
  let server: ScriptedDnsServer
  try {
    server = await startScriptedDnsServer((q) => q.reply(addressAnswer(q)), { port: 53 })
  } catch (err) {
    t.skip(`cannot listen on 127.0.0.1:53: ${(err as Error).message}`)
    return
  }
  t.teardown(() => server.close())
  const dir = t.testdir({ 'resolv.conf': 'search example\nnameserver dns.example\n' })
  const none = createResolver({ resolvConf: `${dir}/resolv.conf`, timeoutMs: 1000, tries: 1 })
  t.teardown(() => none.close())
  t.same((await none.query('fallback.example', 'A')).records, ['192.0.2.1'], 'answered by 127.0.0.1:53')
  const missing = createResolver({ resolvConf: `${dir}/absent`, timeoutMs: 1000, tries: 1 })
  t.teardown(() => missing.close())
  t.same((await missing.query('absent.example', 'A')).records, ['192.0.2.1'], 'no resolv.conf at all: 127.0.0.1:53 too')
})

t.test('the nameservers of /etc/resolv.conf by default', async (t) => {
  const server = await startScriptedDnsServer((q) => q.reply(addressAnswer(q)))
  t.teardown(() => server.close())
  const r = createResolver({ timeoutMs: 1000, tries: 1 })
  t.teardown(() => r.close())
  // The system's file, read here with other contents: the test asks no server but its own.
  const realRead = fs.readFileSync
  const read: string[] = []
  fs.readFileSync = ((path: fs.PathOrFileDescriptor, options?: unknown) => {
    read.push(String(path))
    return path === '/etc/resolv.conf' ? `nameserver 127.0.0.1:${server.port}\n` : realRead(path, options as BufferEncoding)
  }) as typeof fs.readFileSync
  let answer: Promise<DnsAnswer>
  try {
    // The server list is read on the first query, before it returns its promise.
    answer = r.query('default.example', 'A')
  } finally {
    fs.readFileSync = realRead
  }
  t.same(read, ['/etc/resolv.conf'])
  t.same((await answer).records, ['192.0.2.1'])
  t.equal(server.received.length, 1)
})
