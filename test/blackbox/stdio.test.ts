// The built binary over stdio: framing, bounds, EOF, broken pipe, garbage,
// and the promise that nothing but replies ever reaches stdout or stderr.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { assertWellFormed, isolatedArgs, rcptRequest, startPolicy } from '../helpers/policy-process'

t.test('pipelined requests: one reply each, in order; EOF exits 0 with nothing on stderr', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir))
  p.send(
    rcptRequest({ sender: 'a@x.example' }) +
      rcptRequest({ sender: 'a@x.example' }) +
      rcptRequest({ protocol_state: 'DATA', recipient: '' }) +
      rcptRequest({ sender: 'b@x.example', recipient: 'carol@example.org' }),
  )
  const replies = await p.replies(4)
  t.match(replies[0], /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted, please try again in 300 seconds$/)
  t.match(replies[1], /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted, please try again in (299|300) seconds$/)
  t.equal(replies[2], 'action=DUNNO', 'DATA stage is not greylisted')
  t.match(replies[3], /^action=DEFER_IF_PERMIT/)
  p.child.stdin.end()
  t.same(await p.exited(5000), { code: 0, signal: null })
  t.equal(p.stderr(), '')
  assertWellFormed(p.stdout())
})

t.test('garbage, NUL, CR, invalid UTF-8, empty requests and foreign request types each get a valid reply', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir, ['--debugLevel', '4']))
  const inputs: Array<string | Buffer> = [
    'this is not an attribute\n\n',
    Buffer.from([0x61, 0x3d, 0xff, 0x00, 0xfe, 0x0d, 0x0a, 0x0a]),
    '\n',
    'request=something_else\nprotocol_state=RCPT\n\n',
    rcptRequest({ client_address: 'not-an-ip' }),
    rcptRequest({ recipient: 'x@example.org\r' }),
  ]
  for (const i of inputs) p.send(i)
  const replies = await p.replies(inputs.length)
  t.same(replies, ['action=DUNNO', 'action=DUNNO', 'action=DUNNO', 'action=DUNNO', 'action=DUNNO', replies[5]])
  t.match(replies[5], /^action=DEFER_IF_PERMIT/)
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  t.equal(p.stderr(), '')
  assertWellFormed(p.stdout())
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  t.match(log, /ignoring a line without '=': "this is not an attribute"/)
  t.match(log, /unsupported request type something_else: answering DUNNO/)
  t.match(log, /read protocol_state=RCPT/, 'debugLevel 4 logs input lines')
})

t.test('a 2 MiB line: that request gets fail_action, the next one is served, memory stays bounded', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir, ['--fail_action', 'DEFER_IF_PERMIT 4.3.0 try later']))
  p.send(rcptRequest({ sender: 'warm@up.example' }))
  await p.replies(1)
  const rss = (): number => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${p.child.pid}/status`, 'utf8'))![1])
  const before = rss()
  const chunk = 'x'.repeat(64 * 1024)
  p.send('request=smtpd_access_policy\nsender=')
  for (let i = 0; i < 32; i++) p.send(chunk)
  p.send('\nrecipient=a@b\n\n')
  p.send(rcptRequest({ sender: 'after@big.example' }))
  const replies = await p.replies(3)
  t.equal(replies[1], 'action=DEFER_IF_PERMIT 4.3.0 try later')
  t.match(replies[2], /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted/)
  const grown = rss() - before
  t.ok(grown < 8 * 1024, `RSS grew by ${grown} kB for a 2 MiB line`)
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  t.equal(p.stderr(), '')
  t.match(fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8'), /request discarded: attribute line longer than max_line_length 4096 bytes/)
})

t.test('max_attributes and max_request_bytes boundaries through the binary', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir, ['--max_attributes', '29', '--max_request_bytes', '2000']))
  p.send(rcptRequest())
  p.send(rcptRequest().replace('\n\n', '\nextra=1\n\n'))
  p.send(rcptRequest({ policy_context: 'y'.repeat(1500) }))
  const replies = await p.replies(3)
  t.match(replies[0], /^action=DEFER_IF_PERMIT/, '29 attributes: served')
  t.equal(replies[1], 'action=DUNNO', '30 attributes: discarded, fail_action')
  t.equal(replies[2], 'action=DUNNO', 'over 2000 bytes: discarded, fail_action')
  p.child.stdin.end()
  await p.exited()
})

t.test('a request cut by EOF is not answered and the process exits 0', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir))
  p.send('request=smtpd_access_policy\nprotocol_state=RCPT\n')
  p.child.stdin.end()
  t.same(await p.exited(), { code: 0, signal: null })
  t.equal(p.stdout(), '')
  t.equal(p.stderr(), '')
})

t.test('broken pipe: stdout closed by the reader, the process exits quietly', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir))
  p.child.stdout.destroy()
  for (let i = 0; i < 5; i++) p.send(rcptRequest({ sender: `s${i}@x.example` }))
  const { code, signal } = await p.exited(5000)
  t.equal(signal, null)
  t.equal(code, 0)
  t.equal(p.stderr(), '')
})

t.test('max_idle: exits by itself after the idle time', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir, ['--max_idle', '1s']))
  p.send(rcptRequest())
  await p.replies(1)
  const started = Date.now()
  t.same(await p.exited(5000), { code: 0, signal: null })
  t.ok(Date.now() - started < 3000)
})

t.test('max_lifetime: exits between requests once the lifetime is over', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir, ['--max_lifetime', '1s', '--max_idle', '60s']))
  p.send(rcptRequest())
  await p.replies(1)
  t.same(await p.exited(5000), { code: 0, signal: null })
})

t.test('spawn mode with a bad argument and a config file: nothing on stderr, the argument is ignored, the file counts, errors logged', async (t) => {
  const dir = t.testdir({ 'p.conf': 'greylist_delay = 10\nfail_action = DEFER_IF_PERMIT 4.3.0 config problem\n' })
  const args = isolatedArgs(dir, ['--no_such_key', '1']).map((a) => (a === '/dev/null' ? path.join(dir, 'p.conf') : a))
  const p = startPolicy(args)
  p.send(rcptRequest())
  p.send(rcptRequest())
  const replies = await p.replies(2)
  t.same(replies, ['action=DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 10 seconds', 'action=DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 10 seconds'])
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  t.equal(p.stderr(), '')
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  t.match(log, /configuration error: unknown option --no_such_key \(ignored\)/)
})

t.test('a fresh install (no whitelist files): mail to postmaster@ and abuse@ is not greylisted, other recipients are', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir))
  p.send(
    rcptRequest({ recipient: 'postmaster@example.org' }) +
      rcptRequest({ recipient: 'abuse@example.org' }) +
      rcptRequest({ recipient: 'bob@example.org' }),
  )
  const replies = await p.replies(3)
  t.same(replies.slice(0, 2), ['action=DUNNO', 'action=DUNNO'])
  t.match(replies[2], /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted/)
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  t.match(log, /decision action=DUNNO check=greylist reason=recipient-whitelist .*recipient=postmaster@example\.org .*whitelist="greylist_whitelist_recipient_entries postmaster@"/)
})

t.test('unwritable database: mail flows with fail_action and the failure is logged once', async (t) => {
  const dir = t.testdir({ db: {} })
  fs.chmodSync(path.join(dir, 'db'), 0o777)
  const p = startPolicy(isolatedArgs(dir))
  for (let i = 0; i < 3; i++) p.send(rcptRequest({ sender: `s${i}@x.example` }))
  t.same(await p.replies(3), ['action=DUNNO', 'action=DUNNO', 'action=DUNNO'])
  p.child.stdin.end()
  await p.exited()
  t.equal(p.stderr(), '')
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  t.equal(log.match(/database unavailable, answering fail_action DUNNO: refusing database in world-writable directory/g)?.length, 1, 'logged once')
})

t.test('max_idle and max_lifetime of 25 days are refused, and the process still answers (it used to exit at start: the timer overflowed to 1 ms)', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir, ['--max_idle', '25d', '--max_lifetime', '25d']))
  await new Promise((r) => setTimeout(r, 300))
  p.send(rcptRequest())
  const [reply] = await p.replies(1, 10000)
  t.match(reply, /^action=/, 'answered')
  p.child.stdin.end()
  t.same(await p.exited(), { code: 0, signal: null })
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  t.match(log, /bad value "25d" for max_idle: too long, at most 2147483s = 24d 20h 31m 23s/)
  t.notMatch(log, /TimeoutOverflowWarning/)
})

t.test('max_idle and max_lifetime at their largest value: the process starts, answers, and Node takes both timers', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir, ['--max_idle', '2147483s', '--max_lifetime', '2147483s']))
  await new Promise((r) => setTimeout(r, 300))
  t.equal(p.child.exitCode, null, 'still running')
  p.send(rcptRequest())
  t.match((await p.replies(1))[0], /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted/)
  p.child.stdin.end()
  t.same(await p.exited(), { code: 0, signal: null })
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  t.notMatch(log, /node warning|configuration error/)
})

t.test('db_busy_timeout of 1.001s or 9ms: greylisting works (SQLite refused a timeout of 1000.9999999999999 ms, and every request got fail_action)', async (t) => {
  for (const timeout of ['1.001s', '9ms']) {
    const dir = t.testdir()
    const p = startPolicy(isolatedArgs(dir, ['--db_busy_timeout', timeout]))
    p.send(rcptRequest())
    t.match((await p.replies(1))[0], /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted/, timeout)
    p.child.stdin.end()
    await p.exited()
  }
})

t.test('a database directory that does not exist and cannot be created is logged as such, not as "readonly"', async (t) => {
  const { spawnSync } = await import('node:child_process')
  const dir = t.testdir({ logs: {}, locked: {} })
  fs.chmodSync(dir, 0o755)
  fs.chmodSync(path.join(dir, 'logs'), 0o777)
  // Root may create anything: as root the binary runs as nobody, under a directory of root's.
  const asRoot = process.getuid?.() === 0
  if (!asRoot) fs.chmodSync(path.join(dir, 'locked'), 0o555)
  const id = (flag: string): number => Number(spawnSync('id', [flag, 'nobody'], { encoding: 'utf8' }).stdout.trim())
  const missing = path.join(dir, 'locked', 'mta')
  const args = isolatedArgs(dir, ['--db_path', path.join(missing, 'p.sqlite'), '--log_file', path.join(dir, 'logs', 'p.log')])
  const r = spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'policyd-ts'), ...args], {
    input: rcptRequest(),
    encoding: 'utf8',
    env: { PATH: process.env.PATH },
    timeout: 20000,
    ...(asRoot ? { uid: id('-u'), gid: id('-g') } : {}),
  })
  t.equal(r.stdout, 'action=DUNNO\n\n')
  const log = fs.readFileSync(path.join(dir, 'logs', 'p.log'), 'utf8')
  t.match(log, `database unavailable, answering fail_action DUNNO: database directory ${missing} does not exist and cannot be created: EACCES: permission denied`)
  t.match(log, /reason=store-unavailable/)
  t.notMatch(log, /database readonly|store-readonly/)
})
