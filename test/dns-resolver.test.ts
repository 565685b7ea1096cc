import t from 'tap'
import { createResolver, isWireName, readResolvConf } from '../lib/dns/resolver'
import { parseServerAddress as parseServer } from '../lib/dns/server-address'
import { startDnsServer } from './helpers/dns-server'

t.test('server addresses and resolv.conf', async (t) => {
  t.same(parseServer('192.0.2.1'), { host: '192.0.2.1', port: 53, family: 4 })
  t.same(parseServer('127.0.0.1:5353'), { host: '127.0.0.1', port: 5353, family: 4 })
  t.same(parseServer('[2001:db8::1]:5353'), { host: '2001:db8::1', port: 5353, family: 6 })
  t.same(parseServer('2001:db8::1'), { host: '2001:db8::1', port: 53, family: 6 })
  t.equal(parseServer('dns.example'), null)
  t.same(readResolvConf('# comment\nnameserver 192.0.2.53\nsearch example\nnameserver fe80::1%eth0\n'), ['192.0.2.53', 'fe80::1'])
  t.ok(isWireName('a.example'))
  t.notOk(isWireName(`${'x'.repeat(64)}.example`))
  t.notOk(isWireName('a..example'))
})

t.test('boundaries: label and name lengths, ports, resolv.conf lines', async (t) => {
  t.ok(isWireName(`${'x'.repeat(63)}.example`), 'a label of 63 bytes')
  t.notOk(isWireName(`${'é'.repeat(32)}.example`), '32 two-byte characters are 64 bytes')
  const name = (bytes: number): string => `${'x'.repeat(63)}.`.repeat(4).slice(0, bytes - 1) + 'x'
  t.equal(name(253).length, 253)
  t.ok(isWireName(name(253)), 'a name of 253 bytes')
  t.ok(isWireName(`${name(253)}.`), 'and its final dot')
  t.notOk(isWireName(name(254)), 'a name of 254 bytes')
  t.notOk(isWireName(`${'é'.repeat(30)}.`.repeat(8).slice(0, -1)), '247 characters, 487 bytes')
  t.notOk(isWireName(''))
  t.notOk(isWireName('.'))
  t.notOk(isWireName('.example'))
  t.same(parseServer('127.0.0.1:65535'), { host: '127.0.0.1', port: 65535, family: 4 })
  t.same(parseServer('127.0.0.1:1'), { host: '127.0.0.1', port: 1, family: 4 })
  t.equal(parseServer('127.0.0.1:0'), null)
  t.equal(parseServer('127.0.0.1:65536'), null)
  t.equal(parseServer('[2001:db8::1]:0'), null)
  t.same(parseServer('[2001:db8::1]'), { host: '2001:db8::1', port: 53, family: 6 })
  t.same(parseServer(' 192.0.2.1 '), { host: '192.0.2.1', port: 53, family: 4 })
  t.equal(parseServer('256.0.0.1'), null)
  t.equal(parseServer('192.0.2.01'), null)
  t.equal(parseServer('[192.0.2.1]:53'), null, 'brackets are for IPv6')
  t.equal(parseServer('::ffff:192.0.2.1'), null, 'an IPv4-mapped address is not an IPv6 server')
  t.same(readResolvConf('  nameserver\t192.0.2.1  # a comment\n#nameserver 192.0.2.9\nnameservers 192.0.2.8\n'), ['192.0.2.1'])
})

t.test('TXT strings are bytes, given back as latin1', async (t) => {
  const server = await startDnsServer({ 'bytes.example': [{ TXT: 'v=spf1 \xe9\xff -all' }] })
  t.teardown(() => server.close())
  const r = createResolver({ servers: [`127.0.0.1:${server.port}`], timeoutMs: 1000 })
  t.teardown(() => r.close())
  t.same((await r.query('bytes.example', 'TXT')).records, ['v=spf1 \xe9\xff -all'])
})

t.test('answers, TTL cache with an injected clock, negative answers', async (t) => {
  const server = await startDnsServer({
    'txt.example': [{ TXT: ['v=spf1 ', '-all'] }],
    'a.example': [{ A: '192.0.2.1' }, { A: '192.0.2.2' }],
    'mx.example': [{ MX: [10, 'mail.example'] }],
  })
  t.teardown(() => server.close())
  let now = 1_000_000
  const r = createResolver({ servers: [`127.0.0.1:${server.port}`], timeoutMs: 500, now: () => now })
  t.teardown(() => r.close())
  t.same(await r.query('TXT.example.', 'TXT'), { rcode: 'NOERROR', records: ['v=spf1 -all'], mx: [] }, 'strings of one record joined')
  t.same((await r.query('a.example', 'A')).records.sort(), ['192.0.2.1', '192.0.2.2'])
  t.same((await r.query('mx.example', 'MX')).mx, [{ preference: 10, exchange: 'mail.example' }])
  t.equal((await r.query('missing.example', 'A')).rcode, 'NXDOMAIN')
  t.same(await r.query('a.example', 'TXT'), { rcode: 'NOERROR', records: [], mx: [] }, 'no data')
  const sent = server.queries
  await r.query('txt.example', 'TXT')
  t.equal(server.queries, sent, 'served from the cache within the TTL')
  now += 301_000
  await r.query('txt.example', 'TXT')
  t.equal(server.queries, sent + 1, 'asked again after the TTL (300 s)')
  t.equal(r.stats().cacheHits, 1)
})

t.test('a question on the wire is asked once, however many wait for it', async (t) => {
  const server = await startDnsServer({ 'txt.example': [{ TXT: 'v=spf1 -all' }], 'slow.example': ['TIMEOUT'] })
  t.teardown(() => server.close())
  const r = createResolver({ servers: [`127.0.0.1:${server.port}`], timeoutMs: 100, tries: 1 })
  t.teardown(() => r.close())
  const answers = await Promise.all([r.query('txt.example', 'TXT'), r.query('TXT.example.', 'TXT'), r.query('txt.example', 'TXT')])
  t.same(answers.map((a) => a.records), [['v=spf1 -all'], ['v=spf1 -all'], ['v=spf1 -all']])
  t.equal(server.queries, 1)
  const slow = await Promise.all([r.query('slow.example', 'TXT'), r.query('slow.example', 'TXT')])
  t.same(slow.map((a) => a.rcode), ['TIMEOUT', 'TIMEOUT'])
  t.equal(server.queries, 2, 'a timing-out question too')
  t.equal((await r.query('slow.example', 'TXT')).rcode, 'TIMEOUT')
  t.equal(server.queries, 3, 'and it is asked again afterwards (not cached, not stuck)')
})

t.test('a truncated UDP answer is asked again over TCP', async (t) => {
  const long = Array.from({ length: 12 }, (_, i) => `ip4:192.0.2.${i}/32 ip4:198.51.100.${i}/32`).join(' ')
  // Character-strings hold at most 255 bytes; the answer is well over 512.
  const server = await startDnsServer({ 'big.example': [{ TXT: [`v=spf1 ${long.slice(0, 200)}`, long.slice(200, 400)] }, { TXT: `v=other ${'x'.repeat(200)}` }] })
  t.teardown(() => server.close())
  const r = createResolver({ servers: [`127.0.0.1:${server.port}`], timeoutMs: 1000 })
  t.teardown(() => r.close())
  const a = await r.query('big.example', 'TXT')
  t.equal(a.rcode, 'NOERROR')
  t.equal(a.records.length, 2)
  t.ok(a.records.some((x) => x.startsWith('v=spf1 ip4:192.0.2.0/32')))
})

t.test('a name that never answers is TIMEOUT after the tries, and is not cached', async (t) => {
  const server = await startDnsServer({ 'slow.example': ['TIMEOUT'] })
  t.teardown(() => server.close())
  const r = createResolver({ servers: [`127.0.0.1:${server.port}`], timeoutMs: 100, tries: 2 })
  t.teardown(() => r.close())
  const started = Date.now()
  t.equal((await r.query('slow.example', 'TXT')).rcode, 'TIMEOUT')
  t.ok(Date.now() - started >= 190, 'two tries of 100 ms')
  t.equal(server.queries, 2)
  t.equal(r.stats().cacheEntries, 0)
})

t.test('names the wire format cannot carry are not sent', async (t) => {
  const r = createResolver({ servers: ['127.0.0.1:9'], timeoutMs: 50, tries: 1 })
  t.teardown(() => r.close())
  t.equal((await r.query(`${'x'.repeat(64)}.example`, 'A')).rcode, 'ERROR')
  t.equal(r.stats().queries, 0)
})

t.test('server lists: resolv.conf when none is given, its bad lines skipped, 127.0.0.1:53 when nothing is usable', async (t) => {
  t.same(readResolvConf('nameserver   192.0.2.1\nnameserver\t\t192.0.2.2\n'), ['192.0.2.1', '192.0.2.2'], 'any run of blanks after the keyword')
  const server = await startDnsServer({ 'a.example': [{ A: '192.0.2.7' }] })
  t.teardown(() => server.close())
  const dir = t.testdir({ 'resolv.conf': `nameserver dns.example\nnameserver 127.0.0.1:${server.port}\n` })
  const fromFile = createResolver({ servers: [], resolvConf: `${dir}/resolv.conf`, timeoutMs: 1000, tries: 1 })
  t.teardown(() => fromFile.close())
  t.same((await fromFile.query('a.example', 'A')).records, ['192.0.2.7'], 'the usable line of resolv.conf is used')
  const none = createResolver({ servers: ['dns.example'], timeoutMs: 50, tries: 1 })
  t.teardown(() => none.close())
  await none.query('nothing.example', 'A')
  t.equal(none.stats().queries, 1, 'asked 127.0.0.1:53 rather than nobody')
})

t.test('cached(): the same key as query(), and each hit counted', async (t) => {
  const server = await startDnsServer({ 'a.example': [{ A: '192.0.2.7' }] })
  t.teardown(() => server.close())
  const r = createResolver({ servers: [`127.0.0.1:${server.port}`], timeoutMs: 1000 })
  t.teardown(() => r.close())
  t.equal(r.cached('a.example', 'A'), undefined)
  await r.query('a.example', 'A')
  t.same(r.cached('A.Example.', 'A')?.records, ['192.0.2.7'])
  t.same(r.cached('a.example', 'A')?.records, ['192.0.2.7'])
  t.equal(r.stats().cacheHits, 2)
})

t.test('a name that is not sent, and any name after close(), come back with no record', async (t) => {
  const r = createResolver({ servers: ['127.0.0.1:9'], timeoutMs: 50, tries: 1 })
  t.same(await r.query(`${'x'.repeat(64)}.example`, 'TXT'), { rcode: 'ERROR', records: [], mx: [] })
  r.close()
  t.same(await r.query('after.example', 'TXT'), { rcode: 'TIMEOUT', records: [], mx: [] })
  t.equal(r.stats().queries, 0)
})

t.test('server addresses: each IPv4 octet 0-255, four of them, nothing else', async (t) => {
  for (const bad of ['..1.2.3', '1.2.3.260', '1.2.3.1.5', '1.2.3.10.', '1.2.3.4.']) t.equal(parseServer(bad), null, bad)
  for (const good of ['0.0.0.0', '10.199.249.255', '1.22.100.9']) t.same(parseServer(good), { host: good, port: 53, family: 4 }, good)
})

t.test('server addresses: the bracketed IPv6 form is the whole text', async (t) => {
  for (const bad of ['x[2001:db8::1]', 'x[2001:db8::1]:53', '[2001:db8::1]x', '[2001:db8::1]:53x', '[2001:db8::1]:123456']) t.equal(parseServer(bad), null, bad)
})
