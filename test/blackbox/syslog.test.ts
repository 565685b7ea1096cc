// Logging through logger(1) to a syslog datagram socket: facility mail,
// ident policyd-ts[pid], one line per decision, and a recovery to the file.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { isolatedArgs, rcptRequest, startPolicy } from '../helpers/policy-process'

async function until(check: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 20))
  }
}

t.test('decision lines reach the syslog socket with facility mail and ident policyd-ts[pid]', async (t) => {
  // A socket path must stay under 108 bytes: t.testdir() paths are longer.
  const dir = fs.mkdtempSync('/tmp/policyd-ts-syslog-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const socket = path.join(dir, 'log.sock')
  const out = path.join(dir, 'syslog.txt')
  const sink = spawn('python3', [path.join(__dirname, '..', 'fixtures', 'syslog-sink.py'), socket, out], { stdio: 'ignore' })
  t.teardown(() => {
    sink.kill()
  })
  await until(() => fs.existsSync(socket) && fs.existsSync(out))
  const p = startPolicy([
    '--config', '/dev/null', '--db_path', path.join(dir, 'db', 'p.sqlite'), '--syslog_socket', socket,
    '--log_file', path.join(dir, 'fallback.log'), '--greylist_whitelist_clients', '', '--greylist_whitelist_recipients', '',
    '--debugLevel', '3', '--greylist_delay', '1m',
  ])
  p.send(rcptRequest({ sender: 'syslog@example.net' }))
  await p.replies(1)
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  await until(() => fs.readFileSync(out, 'utf8').includes('exiting: eof'))
  const text = fs.readFileSync(out, 'utf8')
  const pid = p.child.pid
  t.match(text, new RegExp(`^<22>\\w{3} [ \\d]\\d \\d\\d:\\d\\d:\\d\\d policyd-ts\\[${pid}\\]: decision action=DEFER_IF_PERMIT check=greylist reason=new state=RCPT client=192\\.0\\.2\\.10 .*sender=syslog@example\\.net recipient=bob@example\\.org .*key=192\\.0\\.2\\.0/24 left=60$`, 'm'), 'mail.info decision line')
  t.match(text, new RegExp(`^<23>.* policyd-ts\\[${pid}\\]: starting, version`, 'm'), 'mail.debug start line at level 3')
  t.notOk(fs.existsSync(path.join(dir, 'fallback.log')), 'nothing went to the fallback file')
  t.equal(p.stderr(), '')
})

t.test('debugLevel 0 logs no decision line', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(['--config', '/dev/null', '--db_path', path.join(dir, 'db', 'p.sqlite'), '--syslog_socket', path.join(dir, 'none'),
    '--log_file', path.join(dir, 'f.log'), '--greylist_whitelist_clients', '', '--greylist_whitelist_recipients', '', '--debugLevel', '0'])
  p.send(rcptRequest())
  await p.replies(1)
  p.child.stdin.end()
  await p.exited()
  const log = fs.existsSync(path.join(dir, 'f.log')) ? fs.readFileSync(path.join(dir, 'f.log'), 'utf8') : ''
  t.notMatch(log, / decision action=/, "no decision line (the test directory name contains the word)")
})

t.test('a value with control bytes or other non-printable characters is one field of the decision line', async (t) => {
  const dir = t.testdir()
  const p = startPolicy(isolatedArgs(dir, ['--greylist_enabled', 'no', '--debugLevel', '4']))
  p.send(rcptRequest({ helo_name: 'evil\x01check', sender: 'a\x1b[31m@example.net', recipient: 'bob\u202e@example.org' }))
  await p.replies(1)
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  const decision = log.split('\n').find((l) => l.includes(': decision '))
  t.ok(decision, 'a decision line')
  t.match(decision, / helo="evil\\x01check" sender="a\\x1b\[31m@example\.net" recipient="bob\\u\{202e\}@example\.org" /)
  t.match(log, / read helo_name="evil\\x01check"$/m, 'input lines at debugLevel 4 too')
  t.equal(p.stderr(), '')
})

t.test('a decision made while the store is unusable says that greylisting was skipped', async (t) => {
  const dir = t.testdir({ 'not-a-directory': '' })
  const args = isolatedArgs(dir).map((a, i, all) => (all[i - 1] === '--db_path' ? path.join(dir, 'not-a-directory', 'p.sqlite') : a))
  const p = startPolicy(args)
  p.send(rcptRequest())
  t.same(await p.replies(1), ['action=DUNNO'], 'fail_action')
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  t.match(log, /: decision action=DUNNO check=greylist reason=store-(\w+) .* greylist=skipped-store-\1$/m)
  t.equal(p.stderr(), '')
})

t.test('a stalled syslog socket: the process keeps answering, drops past its queue and says how many once syslog reads again', async (t) => {
  const dir = fs.mkdtempSync('/tmp/policyd-ts-syslog-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const socket = path.join(dir, 'log.sock')
  const out = path.join(dir, 'syslog.txt')
  const sink = spawn('python3', [path.join(__dirname, '..', 'fixtures', 'syslog-stalled-sink.py'), socket, out], { stdio: 'ignore' })
  t.teardown(() => {
    sink.kill()
  })
  await until(() => fs.existsSync(socket) && fs.existsSync(out))
  const args = isolatedArgs(dir, ['--greylist_enabled', 'no', '--debugLevel', '1']).map((a, i, all) => (all[i - 1] === '--syslog_socket' ? socket : a))
  const p = startPolicy(args)
  t.teardown(() => {
    p.child.kill()
  })
  // Far more decision lines than the socket, logger's pipe and the queue together can hold.
  const REQUESTS = 6000
  const batch = Array.from({ length: 100 }, (_, i) => rcptRequest({ sender: `s${i}@stall.example` })).join('')
  for (let i = 0; i < REQUESTS / 100; i++) p.send(batch)
  t.equal((await p.replies(REQUESTS, 60000)).length, REQUESTS, 'every request answered while syslog stalls')
  sink.kill('SIGUSR1')
  await until(() => / log lines dropped: syslog not accepting$/m.test(fs.readFileSync(out, 'utf8')), 20000)
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  const text = fs.readFileSync(out, 'utf8')
  const dropped = Number(/^<19>.* policyd-ts\[\d+\]: (\d+) log lines dropped: syslog not accepting$/m.exec(text)?.[1])
  const decisions = text.split('\n').filter((l) => l.includes(': decision ')).length
  t.ok(dropped > 0, `${dropped} dropped, logged as mail.err`)
  t.equal(decisions + dropped, REQUESTS, `${decisions} decision lines delivered: each line delivered or counted`)
  t.notOk(fs.existsSync(path.join(dir, 'policyd-ts.log')), 'nothing went to the fallback file')
  t.equal(p.stderr(), '')
})
