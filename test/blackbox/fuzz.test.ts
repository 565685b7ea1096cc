// Protocol fuzzing of the built binary with a fixed seed: random bytes,
// NUL, CR, invalid UTF-8, long lines, many attributes, pipelined requests.
// Every empty line ends a request and must get exactly one well-formed
// reply; the process must not crash and its memory must stay bounded.
// POLICYD_TS_FUZZ_ROUNDS=N runs longer (default 3 rounds).
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { assertWellFormed, isolatedArgs, rcptRequest, startPolicy } from '../helpers/policy-process'
import { startDnsServer } from '../helpers/dns-server'

/** The client of the header-injection pieces (inside example.net's SPF record). */
const INJECTING_CLIENT = '192.0.2.99'

/** A small seeded generator (mulberry32), so a failing input can be reproduced. */
function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

function piece(rand: () => number): Buffer {
  const kind = Math.floor(rand() * 9)
  const n = (max: number): number => Math.floor(rand() * max)
  switch (kind) {
    case 0:
      return Buffer.from(Array.from({ length: n(200) }, () => n(256)))
    case 1:
      return Buffer.from(rcptRequest({ sender: `f${n(1e6)}@fuzz.example`, client_address: `203.0.113.${n(256)}` }))
    case 2:
      return Buffer.from(`request=smtpd_access_policy\nsender=${'x'.repeat(n(8000))}\n\n`)
    case 3:
      return Buffer.from(Array.from({ length: n(300) }, (_, i) => `a${i}=${i}\n`).join('') + '\n')
    case 4:
      return Buffer.from([0x00, 0x0d, 0x0a, 0xff, 0xfe, 0xc3, 0x28, 0x0a])
    case 5:
      return Buffer.from('\r\n\r\n')
    case 6:
      return Buffer.from(`protocol_state=RCPT\nrecipient=${'é'.repeat(n(100))}@x\nclient_address=::ffff:192.0.2.${n(256)}\n\n`)
    case 7:
      return Buffer.from('=\n==\nrequest\n\n')
    default: {
      // A header line smuggled in a value: after CR LF it is a line of its
      // own; after a bare CR it stays in the HELO name, which the SPF header
      // quotes (from INJECTING_CLIENT, which the SPF test does not greylist;
      // one message each, so each reply carries its header).
      const id = n(1e6)
      const breakLine = rand() < 0.5 ? '\r\n' : '\r'
      return Buffer.from(rcptRequest({ helo_name: `h${id}${breakLine}X-Injected: yes`, instance: `inject${id}`, client_address: INJECTING_CLIENT }))
    }
  }
}

/** A reply line that starts with the smuggled header: Postfix would read it as a header line (or a second reply). */
const INJECTED = /(^|[\r\n])X-Injected:/i

/** How many requests the input holds: empty lines (a lone CR counts as empty). */
function countRequests(input: Buffer): number {
  let count = 0
  let lineStart = 0
  for (let i = 0; i < input.length; i++) {
    if (input[i] !== 0x0a) continue
    const len = i - lineStart
    if (len === 0 || (len === 1 && input[i - 1] === 0x0d)) count++
    lineStart = i + 1
  }
  return count
}

const rounds = Number(process.env.POLICYD_TS_FUZZ_ROUNDS ?? 3)

t.test(`fuzzing, ${rounds} rounds with fixed seeds`, async (t) => {
  for (let round = 0; round < rounds; round++) {
    const seed = 0x5eed + round
    const rand = rng(seed)
    // Every round also carries a 10,000-attribute request and a 1.1 MiB line.
    const parts: Buffer[] = [
      Buffer.from(`${Array.from({ length: 10000 }, (_, i) => `attr${i}=${i}`).join('\n')}\n\n`),
      Buffer.from(`request=smtpd_access_policy\nsender=${'y'.repeat(1100 * 1024)}\n\n`),
    ]
    for (let i = 0; i < 400; i++) parts.push(piece(rand))
    const input = Buffer.concat(parts)
    const want = countRequests(input)
    const dir = t.testdir()
    const p = startPolicy(isolatedArgs(dir, ['--debugLevel', '0', '--max_line_length', '4096']))
    // Send in random-sized chunks, as a socket would deliver them.
    for (let off = 0; off < input.length; ) {
      const size = 1 + Math.floor(rand() * 9000)
      p.send(input.subarray(off, off + size))
      off += size
    }
    const replies = await p.replies(want, 30000)
    const rss = Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${p.child.pid}/status`, 'utf8'))![1])
    p.child.stdin.end()
    const exit = await p.exited(10000)
    t.same(exit, { code: 0, signal: null }, `seed ${seed}: clean exit`)
    t.equal(p.stderr(), '', `seed ${seed}: nothing on stderr`)
    // On the raw output, before the well-formedness check below (which
    // would stop at the first reply broken in two and hide what broke it).
    const raw = p.stdout()
    t.notOk(INJECTED.test(raw), `seed ${seed}: no injected header line`)
    t.notOk(/[\r\0]/.test(raw), `seed ${seed}: no CR or NUL in the output`)
    const all = assertWellFormed(raw)
    t.equal(all.length, want, `seed ${seed}: one reply per request (${want})`)
    t.equal(replies.length, want)
    t.ok(rss < 120 * 1024, `seed ${seed}: peak RSS ${Math.round(rss / 1024)} MB stays bounded`)
  }
})

t.test('SPF on: fuzzing with a DNS server on loopback, then 5,000 pipelined requests', async (t) => {
  const dns = await startDnsServer({
    'example.net': [{ TXT: 'v=spf1 ip4:192.0.2.0/24 -all' }],
    'mail.example.net': [{ TXT: 'v=spf1 a -all' }, { A: '192.0.2.10' }],
    'fuzz.example': [{ TXT: 'v=spf1 include:%{d2}.example ~all' }],
  })
  t.teardown(() => dns.close())
  const dir = t.testdir({ clients: `${INJECTING_CLIENT}\n` })
  // Not greylisted, the injection pieces get replies that let mail through: with their SPF header.
  const args = isolatedArgs(dir, ['--debugLevel', '0', '--spf_enabled', 'yes', '--dns_servers', `127.0.0.1:${dns.port}`, '--Lookup_Time', '1'])
  const p = startPolicy(args.map((a, i) => (args[i - 1] === '--greylist_whitelist_clients' ? path.join(dir, 'clients') : a)))
  const rand = rng(0xdecaf)
  const parts: Buffer[] = []
  for (let i = 0; i < 300; i++) parts.push(piece(rand))
  for (let i = 0; i < 5000; i++) parts.push(Buffer.from(rcptRequest({ sender: `s${i % 50}@example.net`, instance: `p${i}`, recipient: `r${i}@example.org` })))
  const input = Buffer.concat(parts)
  const want = countRequests(input)
  for (let off = 0; off < input.length; off += 65536) p.send(input.subarray(off, off + 65536))
  const replies = await p.replies(want, 120000)
  const rss = Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${p.child.pid}/status`, 'utf8'))![1])
  p.child.stdin.end()
  t.same(await p.exited(20000), { code: 0, signal: null })
  t.equal(p.stderr(), '')
  const raw = p.stdout()
  const attempts = raw.match(/helo="?h\d+[\s\S]X-Injected: yes/gi)?.length ?? 0
  t.ok(attempts > 0, `${attempts} replies quote a HELO name carrying a CR and a header line`)
  t.notOk(INJECTED.test(raw), 'none of them starts a line with it')
  t.notOk(/[\r\0]/.test(raw), 'no CR or NUL in the output')
  const all = assertWellFormed(raw)
  t.equal(all.length, want, `one reply per request (${want})`)
  t.equal(replies.length, want)
  t.ok(all.slice(-5000).every((r) => /^action=(PREPEND Received-SPF: Pass |DEFER_IF_PERMIT 4\.2\.0 Greylisted|DUNNO$)/.test(r)), 'the pipelined requests get SPF and greylisting answers')
  t.ok(rss < 160 * 1024, `peak RSS ${Math.round(rss / 1024)} MB stays bounded`)
})
