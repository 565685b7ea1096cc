// The daemon through the built binary: many connections at once, each with
// its own framing and headers, bad input on some while others are served,
// HUP and TERM under load, the socket file's life, max_connections.
import t from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { assertWellFormed, isolatedArgs, rcptRequest, startPolicy } from '../helpers/policy-process'
import { connect, socketDir, startDaemon, type Client } from '../helpers/daemon-process'
import { responseTo, startScriptedDnsServer } from '../helpers/dns-server'

const GREYLISTED = /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted, please try again in \d+ seconds$/

function args(dir: string, extra: string[] = []): string[] {
  return isolatedArgs(dir, ['--greylist_delay', '1s', '--debugLevel', '1', ...extra])
}

t.test('200 connections with interleaved two-recipient messages: well-formed replies, one header per message, nothing crossed', async (t) => {
  const dir = t.testdir()
  const d = await startDaemon(socketDir(t), args(dir))
  t.teardown(() => d.child.kill('SIGKILL'))
  const clients: Client[] = await Promise.all(Array.from({ length: 200 }, () => connect(d.socketPath)))
  // Connections 0 and 1 share one instance id: their header memories must still be their own.
  const instance = (i: number): string => (i < 2 ? 'shared.1' : `m.${i}`)
  const message = (c: Client, i: number) => async () => {
    const r1 = await c.ask(rcptRequest({ instance: instance(i), client_address: `198.51.${i % 250}.7`, recipient: `a${i}@example.org` }))
    const r2 = await c.ask(rcptRequest({ instance: instance(i), client_address: `198.51.${i % 250}.7`, recipient: `b${i}@example.org` }))
    return [r1, r2]
  }
  const first = await Promise.all(clients.map((c, i) => message(c, i)()))
  t.same(first.flat().filter((r) => !GREYLISTED.test(r)), [], 'every first attempt greylisted')
  await new Promise((r) => setTimeout(r, 1100))
  const again = await Promise.all(clients.map((c, i) => message(c, i)()))
  let headers = 0
  again.forEach((replies, i) => {
    const withHeader = replies.filter((r) => r.startsWith('action=PREPEND X-Greylist: delayed '))
    if (withHeader.length !== 1) t.fail(`connection ${i}: ${JSON.stringify(replies)}`)
    headers += withHeader.length
    if (replies[1] !== 'action=DUNNO') t.fail(`connection ${i}: the second recipient got ${replies[1]}`)
  })
  t.equal(headers, 200, 'one X-Greylist header per message, on every connection (also the two sharing an instance id)')
  for (const c of clients) assertWellFormed(c.output())
  await Promise.all(clients.map((c) => (c.end(), c.closed)))
})

t.test('twelve kinds of bad input, each on its own connection, while others keep being served', async (t) => {
  const dir = t.testdir()
  const d = await startDaemon(socketDir(t), args(dir, ['--max_line_length', '1024', '--max_attributes', '40', '--max_request_bytes', '8192']))
  t.teardown(() => d.child.kill('SIGKILL'))
  const good = await Promise.all(Array.from({ length: 8 }, () => connect(d.socketPath)))
  // [what, bytes, replies expected (each well formed), then the connection goes on (true) or is closed by the client]
  const cases: Array<[string, string | Buffer, number]> = [
    ['a 2 MiB line', `${'x'.repeat(2 * 1024 * 1024)}\n\n`, 1],
    ['NUL, invalid UTF-8, CR', Buffer.from([0x00, 0xff, 0xfe, 0x0d, 0x0a, 0x0a]), 1],
    ['too many attributes', `${Array.from({ length: 100 }, (_, i) => `a${i}=b`).join('\n')}\n\n`, 1],
    ['a request past max_request_bytes', `${Array.from({ length: 30 }, (_, i) => `k${i}=${'v'.repeat(500)}`).join('\n')}\n\n`, 1],
    ['lines without "="', 'garbage without equals\nmore\n\n', 1],
    ['a foreign request type', 'request=junk_policy\nprotocol_state=RCPT\n\n', 1],
    ['an empty request', '\n', 1],
    ['repeated attributes', `${rcptRequest().replace('\n\n', '\nsender=other@example.net\nrecipient=x@y\n\n')}`, 1],
    ['an attribute with an empty name', '=value\nrequest=smtpd_access_policy\n\n', 1],
    ['control bytes in values', rcptRequest({ helo_name: 'evil\u0001\u001b[2Jhelo', sender: 'a\u007fb@example.net' }), 1],
    ['a request cut by EOF', 'request=smtpd_access_policy\nprotocol_state=RC', 0],
    ['the client gone without reading', rcptRequest({ instance: 'gone' }), 0],
  ]
  const bad = await Promise.all(cases.map(() => connect(d.socketPath)))
  cases.forEach(([, bytes], i) => bad[i].send(bytes))
  bad[10].end()
  bad[11].socket.destroy()
  const rounds = await Promise.all(good.map(async (c, i) => {
    const out: string[] = []
    for (let k = 0; k < 20; k++) out.push(await c.ask(rcptRequest({ instance: `g${i}.${k}`, recipient: `r${k}@example.org` })))
    return out
  }))
  t.same(rounds.flat().filter((r) => !GREYLISTED.test(r)), [], 'every request of the well-behaved connections answered')
  for (const [i, [what, , n]] of cases.entries()) {
    if (n > 0) {
      const replies = await bad[i].replies(n)
      t.equal(replies.length, n, what)
      assertWellFormed(bad[i].output())
    } else if (i === 10) {
      await bad[i].closed
      t.equal(bad[i].output(), '', `${what}: not answered`)
    }
  }
  t.match((await bad[0].replies(1))[0], /^action=DUNNO$/, 'an oversized line: fail_action')
  // The connection that sent bad input still serves a good request afterwards.
  bad[4].send(rcptRequest({ instance: 'after-garbage', recipient: 'after@example.org' }))
  t.match((await bad[4].replies(2))[1], GREYLISTED)
  t.equal(d.child.exitCode, null, 'the daemon is still running')
})

t.test('HUP during load: configuration reread, no request fails; a bad new configuration keeps the old one', async (t) => {
  const dir = t.testdir()
  const conf = path.join(dir, 'policyd-ts.conf')
  fs.writeFileSync(conf, 'greylist_text = 4.2.0 first text %s\n')
  const a = args(dir)
  a[a.indexOf('--config') + 1] = conf
  const d = await startDaemon(socketDir(t), a)
  t.teardown(() => d.child.kill('SIGKILL'))
  const clients = await Promise.all(Array.from({ length: 8 }, () => connect(d.socketPath)))
  let stop = false
  const seen = new Set<string>()
  const load = clients.map(async (c, i) => {
    for (let k = 0; k < 2000 && !stop; k++) {
      const r = await c.ask(rcptRequest({ instance: `h${i}.${k}`, recipient: `r${i}.${k}@example.org` }), 5000)
      seen.add(r.replace(/\d+$/, 'N'))
    }
  })
  await new Promise((r) => setTimeout(r, 200))
  fs.writeFileSync(conf, 'greylist_text = 4.2.0 second text %s\n')
  d.child.kill('SIGHUP')
  await new Promise((r) => setTimeout(r, 300))
  fs.writeFileSync(conf, 'greylist_max_age = 5x\n')
  d.child.kill('SIGHUP')
  await new Promise((r) => setTimeout(r, 300))
  stop = true
  await Promise.all(load)
  t.same([...seen].sort(), ['action=DEFER_IF_PERMIT 4.2.0 first text N', 'action=DEFER_IF_PERMIT 4.2.0 second text N'], 'every request answered, first with the old text, then the new one, never the bad file\'s')
  for (const c of clients) assertWellFormed(c.output())
  t.match(d.log(), /configuration reloaded/)
  t.match(d.log(), /reload refused, keeping the running configuration: .*greylist_max_age/)
})

t.test('HUP after log_file was rotated away: the lines that follow go to a new file, none is lost', async (t) => {
  const dir = t.testdir()
  const d = await startDaemon(socketDir(t), args(dir))
  t.teardown(() => d.child.kill('SIGKILL'))
  const logFile = path.join(dir, 'policyd-ts.log')
  const c = await connect(d.socketPath)
  await c.ask(rcptRequest({ instance: 'before.1', recipient: 'before@example.org' }))
  await waitUntil(() => /recipient=before@example\.org/.test(d.log()), 5000)
  fs.renameSync(logFile, `${logFile}.1`) // what logrotate does, then its postrotate sends HUP
  await c.ask(rcptRequest({ instance: 'between.1', recipient: 'between@example.org' }))
  d.child.kill('SIGHUP')
  await waitUntil(() => /configuration reloaded/.test(d.log()), 5000)
  await c.ask(rcptRequest({ instance: 'after.1', recipient: 'after@example.org' }))
  await waitUntil(() => /recipient=after@example\.org/.test(d.log()), 5000)
  const rotated = fs.readFileSync(`${logFile}.1`, 'utf8')
  const fresh = d.log()
  t.match(rotated, /recipient=before@example\.org/, 'the rotated file keeps the lines before the rotation')
  t.match(rotated, /recipient=between@example\.org/, 'a line written before the HUP is in the rotated file, not lost')
  t.notMatch(rotated, /recipient=after@example\.org/, 'nothing after the HUP goes to the rotated file')
  t.match(fresh, /recipient=after@example\.org/, 'the lines after the HUP are in the new file')
  t.notMatch(fresh, /recipient=before@example\.org/)
})

async function waitUntil(ok: () => boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!ok() && Date.now() < end) await new Promise((r) => setTimeout(r, 20))
}

t.test('TERM during load: the request in flight on every connection is answered, then exit 0', async (t) => {
  const dir = t.testdir()
  const d = await startDaemon(socketDir(t), args(dir))
  const clients = await Promise.all(Array.from({ length: 16 }, () => connect(d.socketPath)))
  // Like smtpd, each client has one request on the wire at a time. TERM
  // comes once every connection has been answered at least once (a
  // connection still in the listen queue is not the daemon's yet).
  const current: Array<Promise<string>> = []
  let term = false
  const servedOnce: Array<Promise<void>> = []
  const answered = clients.map(async (c, i) => {
    let n = 0
    let first!: () => void
    servedOnce.push(new Promise<void>((r) => (first = r)))
    for (let k = 0; k < 100000 && !term; k++) {
      current[i] = c.ask(rcptRequest({ instance: `t${i}.${k}`, recipient: `r${k}@example.org` }), 5000)
      if ((await current[i].catch(() => '')).startsWith('action=')) {
        n++
        first()
      }
    }
    return n
  })
  await Promise.all(servedOnce)
  await new Promise((r) => setTimeout(r, 100))
  term = true
  const inFlight = [...current]
  d.child.kill('SIGTERM')
  const last = await Promise.allSettled(inFlight)
  const counts = await Promise.all(answered)
  t.ok(counts.every((n) => n > 0), 'every connection was served before TERM')
  t.same(last.map((r) => (r.status === 'fulfilled' ? r.value.slice(0, 14) : String(r.reason))), Array(16).fill('action=DEFER_I'), 'the request in flight on each of the 16 connections is answered')
  const exit = await d.exited(15000)
  t.same(exit, { code: 0, signal: null }, 'exit 0')
  for (const c of clients) {
    await c.closed
    assertWellFormed(c.output())
  }
  t.equal(d.stderr(), '')
  t.notOk(fs.existsSync(d.socketPath), 'the socket file is removed')
})

t.test('the socket file: stale one replaced, live one refused, missing directory named', async (t) => {
  const dir = t.testdir()
  const sdir = socketDir(t)
  const sock = path.join(sdir, 'policy.sock')
  // A stale socket: bound, then the process "crashed" (closed without unlinking).
  const stale = net.createServer()
  await new Promise<void>((r) => stale.listen(sock, r))
  const tmp = `${sock}.keep`
  fs.linkSync(sock, tmp)
  await new Promise<void>((r) => stale.close(() => r()))
  fs.renameSync(tmp, sock)
  t.ok(fs.lstatSync(sock).isSocket(), 'a stale socket file is in place')
  const d = await startDaemon(sdir, args(dir))
  t.teardown(() => d.child.kill('SIGKILL'))
  t.equal(fs.lstatSync(sock).mode & 0o777, 0o660, 'mode listen_mode (0660)')

  const second = startPolicy(['--listen', `unix:${sock}`, '--listen_group', '', ...args(dir)])
  const exit = await second.exited()
  t.equal(exit.code, 69, 'a second daemon on a live socket exits EX_UNAVAILABLE')
  t.match(second.stderr(), /another process is listening on it/)
  t.ok(await (await connect(sock)).ask(rcptRequest()), 'the first daemon still serves')

  const missing = startPolicy(['--listen', `unix:${path.join(sdir, 'nope', 'policy')}`, ...args(dir)])
  t.equal((await missing.exited()).code, 69)
  t.match(missing.stderr(), /directory .*nope does not exist/)
})

t.test('max_connections: connections past it are closed at once and logged once', async (t) => {
  const dir = t.testdir()
  const d = await startDaemon(socketDir(t), args(dir, ['--max_connections', '3']))
  t.teardown(() => d.child.kill('SIGKILL'))
  const held = await Promise.all(Array.from({ length: 3 }, () => connect(d.socketPath)))
  for (const c of held) t.match(await c.ask(rcptRequest()), /^action=/)
  const extra = await Promise.all(Array.from({ length: 4 }, () => connect(d.socketPath)))
  for (const c of extra) {
    c.send(rcptRequest())
    await c.closed
    t.equal(c.output(), '', 'a connection past max_connections gets no reply (Postfix uses its default_action)')
  }
  held[0].end()
  await held[0].closed
  await new Promise((r) => setTimeout(r, 100))
  const later = await connect(d.socketPath)
  t.match(await later.ask(rcptRequest()), /^action=/, 'served again once a connection ended')
  await new Promise((r) => setTimeout(r, 100))
  const log = d.log()
  t.equal(log.match(/too many connections/g)?.length, 1, 'logged once, not per refused connection')
  t.match(log, /connections below max_connections again/)
})

t.test('a socket path too long for a unix address: a clear error', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(['--listen', `unix:/tmp/${'x'.repeat(120)}`, ...args(dir)])
  t.equal((await p.exited()).code, 69)
  t.match(p.stderr(), /more than a unix socket address holds/)
})

t.test('listen = systemd without a socket from systemd: a clear error', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(['--listen', 'systemd', ...args(dir)])
  t.equal((await p.exited()).code, 69)
  t.match(p.stderr(), /systemd passed no socket/)
})

t.test('metrics_listen: GET /metrics in Prometheus text format, counting the requests served', async (t) => {
  const dir = t.testdir()
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port
      s.close(() => resolve(p))
    })
  })
  const d = await startDaemon(socketDir(t), args(dir, ['--metrics_listen', `127.0.0.1:${port}`]))
  t.teardown(() => d.child.kill('SIGKILL'))
  const c = await connect(d.socketPath)
  for (let i = 0; i < 3; i++) await c.ask(rcptRequest({ instance: `x${i}`, recipient: `r${i}@example.org` }))
  c.send(`${'y'.repeat(70000)}\n\n`)
  await c.replies(4)
  const res = await fetch(`http://127.0.0.1:${port}/metrics`)
  t.equal(res.status, 200)
  t.equal(res.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8')
  const text = await res.text()
  t.match(text, /^policyd_requests_total\{state="RCPT",action="DEFER_IF_PERMIT"\} 3$/m)
  t.match(text, /^policyd_decisions_total\{check="greylist",result="new"\} 3$/m)
  t.match(text, /^policyd_requests_discarded_total 1$/m)
  t.match(text, /^policyd_request_seconds_count 3$/m)
  t.match(text, /^policyd_store_seconds_count\{op="greylist"\} 3$/m)
  t.match(text, /^policyd_connections 1$/m)
  t.match(text, /^process_resident_memory_bytes \d+$/m)
  t.equal((await fetch(`http://127.0.0.1:${port}/other`)).status, 404)
})

t.test('an error outside any connection handler: logged with its stack, exit 70 (systemd restarts the daemon)', async (t) => {
  const dir = t.testdir()
  const fixture = path.join(__dirname, '..', 'fixtures', 'fail-after-start.cjs')
  const d = await startDaemon(socketDir(t), args(dir), { NODE_OPTIONS: `--require ${fixture}`, POLICYD_TEST_FAIL: 'exception' })
  t.teardown(() => d.child.kill('SIGKILL'))
  const c = await connect(d.socketPath)
  t.match(await c.ask(rcptRequest()), /^action=/)
  d.child.kill('SIGUSR2')
  t.same(await d.exited(), { code: 70, signal: null })
  t.match(d.log(), /uncaught exception, exiting: Error: test fixture: thrown from a timer/)
})

t.test('a bad listen value: the daemon stops with that value named, never serves stdin', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(['--listen', 'unx:/tmp/x', ...args(dir)])
  t.equal((await p.exited()).code, 78)
  t.match(p.stderr(), /listen: "unx:\/tmp\/x" is not unix:PATH, inet:HOST:PORT or systemd/)
  t.equal(p.stdout(), '')
})

t.test('HUP while an SPF check waits for DNS: it finishes on the old resolver, not as temperror', async (t) => {
  const dir = t.testdir()
  // Every answer comes 600 ms late: the HUP arrives while the check waits.
  const dns = await startScriptedDnsServer((q) => {
    const answers = q.question.type === 'TXT' && q.question.name === 'slow.example' ? [{ type: 'TXT' as const, name: 'slow.example', ttl: 60, data: 'v=spf1 -all' }] : []
    setTimeout(() => q.reply(responseTo(q, { answers })), 600)
  })
  t.teardown(() => dns.close())
  const a = args(dir, ['--spf_enabled', 'yes', '--dns_servers', `127.0.0.1:${dns.port}`, '--greylist_enabled', 'no'])
  const d = await startDaemon(socketDir(t), a)
  t.teardown(() => d.child.kill('SIGKILL'))
  const c = await connect(d.socketPath)
  const reply = c.ask(rcptRequest({ sender: 'x@slow.example', helo_name: 'slow.example', client_address: '192.0.2.1' }))
  await new Promise((r) => setTimeout(r, 200))
  d.child.kill('SIGHUP')
  t.match(await reply, /^action=550 5\.7\.23 /, 'the -all record still rejects')
})

t.test('metrics: DNS questions of the SPF check are counted (queries, cache hits)', async (t) => {
  const dir = t.testdir()
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port
      s.close(() => resolve(p))
    })
  })
  const dns = await startScriptedDnsServer((q) => q.reply(responseTo(q, { answers: q.question.type === 'TXT' ? [{ type: 'TXT', name: q.question.name, ttl: 300, data: 'v=spf1 ip4:192.0.2.0/24 -all' }] : [] })))
  t.teardown(() => dns.close())
  const d = await startDaemon(socketDir(t), args(dir, ['--spf_enabled', 'yes', '--dns_servers', `127.0.0.1:${dns.port}`, '--greylist_enabled', 'no', '--metrics_listen', `127.0.0.1:${port}`]))
  t.teardown(() => d.child.kill('SIGKILL'))
  const c = await connect(d.socketPath)
  for (let i = 0; i < 3; i++) await c.ask(rcptRequest({ instance: `d${i}`, sender: 'a@pass.example', helo_name: 'pass.example', client_address: '192.0.2.9' }))
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  const value = (outcome: string): number => Number(new RegExp(`^policyd_dns_total\\{outcome="${outcome}"\\} (\\d+)$`, 'm').exec(text)?.[1])
  t.equal(value('query'), dns.received.length, 'one per question the DNS server received')
  t.ok(value('cache_hit') >= 2, 'the later requests are answered from the cache')
  t.equal(value('timeout'), 0)
})
