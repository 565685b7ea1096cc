// close() settles every pending query at once (as TIMEOUT, a temporary
// error to the SPF check) and frees the sockets and timers, however long
// the per-try timeout.
import t from 'tap'
import { createResolver, type DnsAnswer } from '../lib/dns/resolver'
import { responseTo, startScriptedDnsServer, type ReceivedQuery, type ScriptedDnsServer } from './helpers/dns-server'

const LONG_TIMEOUT_MS = 60_000
/** Far below LONG_TIMEOUT_MS: a query still open after this was not settled by close(). */
const BOUND_MS = 2000

async function received(server: ScriptedDnsServer, n: number): Promise<void> {
  for (let i = 0; i < 400 && server.received.length < n; i++) await new Promise((resolve) => setTimeout(resolve, 5))
  if (server.received.length < n) throw new Error(`the server received ${server.received.length} questions, not ${n}`)
}

/** The answers, or 'still pending' when they are not all in within BOUND_MS. */
async function within(answers: Promise<DnsAnswer>[]): Promise<DnsAnswer[] | 'still pending'> {
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<'still pending'>((resolve) => {
    timer = setTimeout(resolve, BOUND_MS, 'still pending')
  })
  return Promise.race([Promise.all(answers), bound]).finally(() => clearTimeout(timer))
}

function timers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
}

async function silentServer(t: Tap.Test, onQuery: (q: ReceivedQuery) => void = () => undefined): Promise<ScriptedDnsServer> {
  const server = await startScriptedDnsServer(onQuery)
  t.teardown(() => server.close())
  return server
}

t.test('close() settles UDP queries waiting on a server that never answers', async (t) => {
  const server = await silentServer(t)
  const r = createResolver({ servers: [`127.0.0.1:${server.port}`], timeoutMs: LONG_TIMEOUT_MS, tries: 2 })
  const timersBefore = timers()
  const pending = ['a.example', 'b.example', 'c.example'].map((name) => r.query(name, 'TXT'))
  await received(server, 3)
  t.equal(r.stats().sockets, 1)
  r.close()
  t.equal(timers(), timersBefore, 'their timers are cleared')
  t.equal(r.stats().sockets, 0, 'the socket is closed')
  const answers = await within(pending)
  t.not(answers, 'still pending', `settled at once, not after ${LONG_TIMEOUT_MS} ms`)
  if (answers === 'still pending') return
  t.same(answers.map((a) => a.rcode), ['TIMEOUT', 'TIMEOUT', 'TIMEOUT'], 'no answer: a temporary error to the callers')
  t.equal(server.received.length, 3, 'no second try after close()')
  t.equal(r.stats().queries, 3, 'nor one counted')
  t.equal(r.stats().cacheEntries, 0, 'nothing cached')
})

t.test('close() settles a query waiting for its TCP answer', async (t) => {
  // A truncated UDP answer sends the question over TCP, which is never answered.
  const server = await silentServer(t, (q) => {
    if (q.transport === 'udp') q.reply(responseTo(q, { flags: 1 << 9 }))
  })
  const r = createResolver({ servers: [`127.0.0.1:${server.port}`], timeoutMs: LONG_TIMEOUT_MS, tries: 1 })
  const pending = r.query('big.example', 'TXT')
  await received(server, 2)
  t.equal(server.received[1].transport, 'tcp')
  r.close()
  const answers = await within([pending])
  t.not(answers, 'still pending', `settled at once, not after ${LONG_TIMEOUT_MS} ms`)
  if (answers !== 'still pending') t.equal(answers[0].rcode, 'TIMEOUT')
})

t.test('after close(): cached answers still, no new query on the wire', async (t) => {
  const server = await silentServer(t, (q) => q.reply(responseTo(q, { answers: [{ type: 'A', name: q.question.name, ttl: 300, class: 'IN', data: '192.0.2.1' }] })))
  const r = createResolver({ servers: [`127.0.0.1:${server.port}`], timeoutMs: LONG_TIMEOUT_MS })
  t.same((await r.query('a.example', 'A')).records, ['192.0.2.1'])
  r.close()
  t.same((await r.query('a.example', 'A')).records, ['192.0.2.1'], 'from the cache')
  const queries = r.stats().queries
  const answers = await within([r.query('b.example', 'A')])
  t.not(answers, 'still pending')
  if (answers !== 'still pending') t.equal(answers[0].rcode, 'TIMEOUT')
  t.equal(r.stats().queries, queries, 'not sent')
  t.equal(server.received.length, 1)
  t.equal(r.stats().sockets, 0)
})
