// One PREPEND per reply: the headers of a message wait for replies that can carry them.
import t from 'tap'
import { HeaderQueue } from '../lib/header-queue'

function queue() {
  const logs: string[] = []
  return { q: new HeaderQueue(4, (_l, m) => logs.push(m)), logs }
}
const rcpt = (instance: string) => ({ instance, protocolState: 'RCPT' })

t.test('one header per reply, in order, across recipients and DATA', async (t) => {
  const { q, logs } = queue()
  t.equal(q.take(rcpt('m1'), ['A: 1', 'B: 2'], true), 'A: 1')
  t.same(q.pending('m1'), ['B: 2'])
  t.equal(q.take(rcpt('m1'), ['C: 3'], true), 'B: 2', 'the older header first')
  t.equal(q.take({ instance: 'm1', protocolState: 'DATA' }, [], true), 'C: 3')
  t.equal(q.take({ instance: 'm1', protocolState: 'DATA' }, [], true), null)
  t.same(logs, [])
})

t.test('a reply that defers or rejects carries none; the header waits', async (t) => {
  const { q } = queue()
  t.equal(q.take(rcpt('m1'), ['A: 1'], false), null)
  t.equal(q.take(rcpt('m1'), [], true), 'A: 1')
})

t.test('END-OF-MESSAGE cannot carry a header; the loss is logged when the next message starts', async (t) => {
  const { q, logs } = queue()
  t.equal(q.take(rcpt('m1'), ['A: 1', 'B: 2'], true), 'A: 1')
  t.equal(q.take({ instance: 'm1', protocolState: 'END-OF-MESSAGE' }, [], true), null)
  t.same(logs, [])
  q.take(rcpt('m2'), [], true)
  t.equal(logs.length, 1)
  t.match(logs[0], /^header not added to message m1: no later request of it could carry it \(add check_policy_service to smtpd_data_restrictions\): B: 2$/)
})

t.test('a message no reply let through has no header to lose', async (t) => {
  const { q, logs } = queue()
  q.take(rcpt('m1'), ['A: 1'], false)
  q.take(rcpt('m1'), ['B: 2'], false)
  q.take(rcpt('m2'), [], true)
  t.same(logs, [])
})

t.test('without an instance nothing waits', async (t) => {
  const { q, logs } = queue()
  t.equal(q.take(rcpt(''), ['A: 1', 'B: 2'], true), 'A: 1')
  t.match(logs.join('\n'), /header not added \(no instance attribute to carry it to a later reply\): B: 2/)
  t.equal(q.take(rcpt(''), [], true), null)
  t.equal(q.take(rcpt(''), ['C: 3'], false), null)
  t.equal(logs.length, 1, 'a deferred reply without instance loses nothing worth a line')
})

t.test('bounded: a message is forgotten when the next one starts, whatever the size limit', async (t) => {
  // One smtpd sends its messages one after another, so at most one message
  // waits: memory is bounded by forgetting, not by the map's size limit
  // (a limit of 1e9 here, so the test fails if only the limit bounded it).
  const logs: string[] = []
  const q = new HeaderQueue(1e9, (_l, m) => logs.push(m))
  for (let i = 0; i < 10; i++) q.take(rcpt(`m${i}`), ['A: 1', 'B: 2'], false)
  for (let i = 0; i < 9; i++) t.same(q.pending(`m${i}`), [], `m${i} forgotten`)
  t.same(q.pending('m9'), ['A: 1', 'B: 2'], 'the current message keeps its headers')
  t.same(logs, [], 'none of them was let through: nothing lost worth a line')
})
