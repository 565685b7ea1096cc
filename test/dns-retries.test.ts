// Tries over the servers: `tries` passes over the list, in order; a
// failure moves to the next server, an answer (NXDOMAIN included) ends
// the lookup; a truncated answer is asked again over TCP, whose answer
// must be to the question too.
import type * as dnsPacket from 'dns-packet'
import t from 'tap'
import { createResolver, type ResolverOptions } from '../lib/dns/resolver'
import { checkHost } from '../lib/spf/check-host'
import { responseTo, startScriptedDnsServer, type ReceivedQuery, type ScriptedDnsServer } from './helpers/dns-server'

const RCODE = { SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5, FORMERR: 1 } as const
const TRUNCATED = 1 << 9

/** What a server does with a question: a response's fields, or nothing (never answers). */
type Behaviour = (q: ReceivedQuery) => Partial<dnsPacket.Packet> | null

const silent: Behaviour = () => null
const rcode = (code: number): Behaviour => () => ({ flags: code })
const address: Behaviour = (q) => ({ answers: [{ type: 'A', name: q.question.name, ttl: 300, class: 'IN', data: '192.0.2.1' }] })

/** Servers that log, in one shared list, which of them got each question. */
async function servers(t: Tap.Test, behaviours: Behaviour[]): Promise<{ list: ScriptedDnsServer[]; order: number[] }> {
  const order: number[] = []
  const list = await Promise.all(
    behaviours.map((behave, i) =>
      startScriptedDnsServer((q) => {
        order.push(i)
        const fields = behave(q)
        if (fields) q.reply(responseTo(q, fields))
      }),
    ),
  )
  for (const s of list) t.teardown(() => s.close())
  return { list, order }
}

function resolver(t: Tap.Test, list: ScriptedDnsServer[], opts: ResolverOptions = {}): ReturnType<typeof createResolver> {
  const r = createResolver({ servers: list.map((s) => `127.0.0.1:${s.port}`), timeoutMs: 50, ...opts })
  t.teardown(() => r.close())
  return r
}

t.test('silent servers: `tries` passes over the list, in order, then TIMEOUT', async (t) => {
  const { list, order } = await servers(t, [silent, silent])
  const r = resolver(t, list, { tries: 3 })
  t.equal((await r.query('a.example', 'A')).rcode, 'TIMEOUT')
  t.same(order, [0, 1, 0, 1, 0, 1])
  t.equal(r.stats().queries, 6)
  t.equal(r.stats().timeouts, 6, 'each try unanswered counted')
})

t.test('two tries by default, at least one', async (t) => {
  const { list, order } = await servers(t, [silent])
  t.equal((await resolver(t, list).query('a.example', 'A')).rcode, 'TIMEOUT')
  t.equal(order.length, 2, 'default')
  t.equal((await resolver(t, list, { tries: 0 }).query('b.example', 'A')).rcode, 'TIMEOUT')
  t.equal(order.length, 3, 'tries: 0 is one try')
})

t.test('a failing server passes the question on to the next; an answer ends the lookup', async (t) => {
  for (const [name, code] of [['SERVFAIL', RCODE.SERVFAIL], ['REFUSED', RCODE.REFUSED]] as const) {
    const { list, order } = await servers(t, [rcode(code), address])
    t.same((await resolver(t, list).query('a.example', 'A')).records, ['192.0.2.1'], `${name}, then an answer`)
    t.same(order, [0, 1], name)
  }
  const { list, order } = await servers(t, [rcode(RCODE.NXDOMAIN), address])
  t.equal((await resolver(t, list).query('a.example', 'A')).rcode, 'NXDOMAIN')
  t.same(order, [0], 'NXDOMAIN is an answer: the next server is not asked')
})

t.test('every server failing: the last failure is the answer', async (t) => {
  const { list, order } = await servers(t, [silent, rcode(RCODE.REFUSED)])
  t.equal((await resolver(t, list).query('a.example', 'A')).rcode, 'REFUSED')
  t.same(order, [0, 1, 0, 1])
  const both = await servers(t, [rcode(RCODE.REFUSED), rcode(RCODE.SERVFAIL)])
  t.equal((await resolver(t, both.list).query('a.example', 'A')).rcode, 'SERVFAIL')
  const last = await servers(t, [rcode(RCODE.SERVFAIL), silent])
  const lastResolver = resolver(t, last.list)
  t.equal((await lastResolver.query('a.example', 'A')).rcode, 'TIMEOUT')
  t.equal(lastResolver.stats().timeouts, 2, 'only the unanswered tries count as timeouts')
})

t.test('a truncated answer is asked again over TCP; the TCP answer must be to the question', async (t) => {
  const truncatedThen = (tcp: Behaviour): Behaviour => (q) => (q.transport === 'udp' ? { flags: TRUNCATED } : tcp(q))
  const good = await servers(t, [truncatedThen(address)])
  t.same((await resolver(t, good.list, { tries: 1 }).query('a.example', 'A')).records, ['192.0.2.1'])
  t.same(good.list[0].received.map((q) => q.transport), ['udp', 'tcp'])
  const otherName = await servers(t, [truncatedThen((q) => ({ questions: [{ ...q.question, name: 'other.example' }], ...address(q) }))])
  t.equal((await resolver(t, otherName.list, { tries: 1 }).query('a.example', 'A')).rcode, 'TIMEOUT', 'another name over TCP')
  const otherId = await servers(t, [truncatedThen((q) => ({ id: (q.packet.id! + 1) & 0xffff, ...address(q) }))])
  t.equal((await resolver(t, otherId.list, { tries: 1 }).query('a.example', 'A')).rcode, 'TIMEOUT', 'another id over TCP')
})

t.test('any other error RCODE (FORMERR, NOTIMP) is SERVFAIL: the next server is tried, and SPF says temperror', async (t) => {
  for (const [name, code] of [['FORMERR', RCODE.FORMERR], ['NOTIMP', RCODE.NOTIMP]] as const) {
    const { list, order } = await servers(t, [rcode(code), rcode(code)])
    const r = resolver(t, list, { tries: 1 })
    t.equal((await r.query('a.example', 'TXT')).rcode, 'SERVFAIL', name)
    t.same(order, [0, 1], `${name}: both servers asked`)
    // RFC 7208 §4.4: an error RCODE other than NXDOMAIN is temperror, not "no SPF record".
    const spf = await checkHost({ ip: '192.0.2.1', domain: 'a.example', sender: 'x@a.example', helo: 'a.example' }, { resolver: r, lookupTimeMs: 2000, now: Date.now })
    t.equal(spf.result, 'temperror', `${name}: check_host()`)
  }
})
