// A bug that escapes every handler (an uncaught exception, an unhandled
// rejection) ends the process, as in a Postfix daemon: logged at level 0
// with its stack, flushed, exit status 70, nothing on stdout or stderr (the
// SMTP socket). The fault comes from a test fixture preloaded with
// NODE_OPTIONS=--require and set off by SIGUSR2: the program has no way in
// for it.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { isolatedArgs, rcptRequest, startPolicy } from '../helpers/policy-process'

const FIXTURE = path.join(__dirname, '..', 'fixtures', 'fail-after-start.cjs')

function startFailing(args: string[], kind: 'exception' | 'rejection') {
  return startPolicy(args, { NODE_OPTIONS: `--require ${FIXTURE}`, POLICYD_TEST_FAIL: kind })
}

async function until(check: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 20))
  }
}

const EXPECTED = {
  exception: /^\S+ policyd-ts\[\d+\]: uncaught exception, exiting: Error: test fixture: thrown from a timer +at .*fail-after-start\.cjs:\d+/m,
  rejection: /^\S+ policyd-ts\[\d+\]: unhandled rejection, exiting: Error: test fixture: a promise rejected with nobody waiting +at .*fail-after-start\.cjs:\d+/m,
}

for (const kind of ['exception', 'rejection'] as const) {
  t.test(`an ${kind === 'exception' ? 'uncaught exception' : 'unhandled rejection'} is logged with its stack, and the process exits 70`, async (t) => {
    const dir = t.testdir()
    const p = startFailing(isolatedArgs(dir, ['--greylist_enabled', 'no', '--max_idle', '3600']), kind)
    t.teardown(() => {
      p.child.kill('SIGKILL')
    })
    p.send(rcptRequest())
    t.same(await p.replies(1), ['action=DUNNO'], 'it was serving')
    p.child.kill('SIGUSR2')
    const { code } = await p.exited(5000)
    t.equal(code, 70, 'exit status EX_SOFTWARE: spawn(8) starts another process for the next client')
    t.match(fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8'), EXPECTED[kind], 'logged, flushed to the file before the exit')
    t.equal(p.stderr(), '', 'nothing on stderr')
    t.equal(p.stdout(), 'action=DUNNO\n\n', 'nothing on stdout but the reply')
  })
}

t.test('the line goes out through logger(1) before the exit', async (t) => {
  // A socket path must stay under 108 bytes: t.testdir() paths are longer.
  const dir = fs.mkdtempSync('/tmp/policyd-ts-crash-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const socket = path.join(dir, 'log.sock')
  const out = path.join(dir, 'syslog.txt')
  const sink = spawn('python3', [path.join(__dirname, '..', 'fixtures', 'syslog-sink.py'), socket, out], { stdio: 'ignore' })
  t.teardown(() => {
    sink.kill()
  })
  await until(() => fs.existsSync(socket) && fs.existsSync(out))
  const args = isolatedArgs(dir, ['--greylist_enabled', 'no']).map((a, i, all) => (all[i - 1] === '--syslog_socket' ? socket : a))
  const p = startFailing(args, 'exception')
  t.teardown(() => {
    p.child.kill('SIGKILL')
  })
  p.send(rcptRequest())
  await p.replies(1)
  p.child.kill('SIGUSR2')
  t.equal((await p.exited(5000)).code, 70)
  // The sink writes what it receives at once; logger(1) has exited before we did.
  await until(() => fs.readFileSync(out, 'utf8').includes('uncaught exception'), 2000)
  t.match(fs.readFileSync(out, 'utf8'), /^<19>.* policyd-ts\[\d+\]: uncaught exception, exiting: Error: test fixture: thrown from a timer /m, 'mail.err')
  t.notOk(fs.existsSync(path.join(dir, 'policyd-ts.log')), 'not through the fallback file')
  t.equal(p.stderr(), '')
})
