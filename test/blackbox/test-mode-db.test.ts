// --test-mode tries the database for real, as the user Postfix runs
// policyd-ts as (--user, from root), and leaves it as it was; as root
// without --user it says that root proves nothing and how to check as that
// user. A bad value is shown as ignored, not as the value in effect.
import t from 'tap'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { BIN, rcptRequest } from '../helpers/policy-process'

const isRoot = process.getuid?.() === 0
const NOT_ROOT = 'needs root: --user and the checks as another user switch users (run npm test as root, as .ci/run does)'

function idOf(flag: '-u' | '-g', user: string): number {
  return Number(spawnSync('id', [flag, user], { encoding: 'utf8' }).stdout.trim())
}
const nobody = { uid: idOf('-u', 'nobody'), gid: idOf('-g', 'nobody') }

function run(args: string[], as?: { uid: number; gid: number }, input?: string) {
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { PATH: process.env.PATH }, encoding: 'utf8', timeout: 30000, input, ...as })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

/** A test directory that nobody can enter (tap makes them under the checkout, mode 0755 with umask 022). */
function place(t: Tap.Test): string {
  const dir = t.testdir()
  fs.chmodSync(dir, 0o755)
  return dir
}

function testMode(dir: string, dbPath: string, extra: string[] = []) {
  return run(['--test-mode', '--config', '/dev/null', '--db_path', dbPath, '--syslog_socket', path.join(dir, 'no-syslog'), '--greylist_whitelist_clients', '', '--greylist_whitelist_recipients', '', ...extra])
}

function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const name of fs.readdirSync(dir).sort()) {
    const file = path.join(dir, name)
    const st = fs.statSync(file)
    out[name] = `${st.uid}:${st.gid} ${(st.mode & 0o7777).toString(8)} ${st.isFile() ? crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex') : 'dir'}`
  }
  return out
}

t.test('as root without --user: the database is not tried, and the output says how to check as the spawn user', { skip: isRoot ? false : NOT_ROOT }, async (t) => {
  const dir = place(t)
  const db = path.join(dir, 'mta', 'p.sqlite')
  const r = testMode(dir, db, ['--greylist_delay', '2m'])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, /^# checked as user root \(uid 0\)$/m)
  t.match(r.stdout, `# database: ${db}: not tried: root may write anything, the user Postfix runs policyd-ts as may not`)
  t.match(r.stdout, /^# This is root, not the user Postfix runs policyd-ts as/m)
  const advice = r.stdout.split('\n').find((l) => l.startsWith('#   policyd-ts --test-mode --user nobody --config /dev/null '))
  t.ok(advice, 'the command that checks as nobody')
  t.match(advice, ` --db_path=${db} `)
  t.match(advice, ' --greylist_delay=2m ')
  t.match(r.stdout, /^# or: setpriv --reuid=nobody --regid=nogroup --clear-groups policyd-ts --test-mode --config \/dev\/null /m)
  t.match(r.stdout, /^# or: su -s \/bin\/sh nobody -c 'policyd-ts --test-mode --config \/dev\/null /m)
  t.notOk(fs.existsSync(path.join(dir, 'mta')), 'nothing created as root')
})

t.test('--user nobody: a missing directory nobody cannot create is named, with the command that makes it', { skip: isRoot ? false : NOT_ROOT }, async (t) => {
  const dir = place(t)
  const db = path.join(dir, 'mta', 'p.sqlite')
  const r = testMode(dir, db, ['--user', 'nobody'])
  t.equal(r.code, 73, 'EX_CANTCREAT')
  t.match(r.stdout, /^# checked as user nobody \(uid \d+\)$/m)
  const problem = `directory ${path.join(dir, 'mta')} does not exist, and user nobody cannot create it: ${dir} is not writable by nobody`
  t.match(r.stdout, `# database: PROBLEM: ${problem}`)
  t.match(r.stdout, `create it as root: install -d -o nobody -g `)
  t.match(r.stderr, `policyd-ts: error: database: ${problem}`)
  t.notOk(fs.existsSync(path.join(dir, 'mta')))
})

t.test('--user nobody: a directory nobody may create is tried and removed again', { skip: isRoot ? false : NOT_ROOT }, async (t) => {
  const dir = place(t)
  fs.chownSync(dir, nobody.uid, nobody.gid)
  const db = path.join(dir, 'a', 'mta', 'p.sqlite')
  const r = testMode(dir, db, ['--user', 'nobody'])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, `# database: directory ${path.join(dir, 'a', 'mta')} does not exist yet; user nobody can create it, and the first request will (tried, and removed again)`)
  t.match(r.stdout, `# database: ${db} does not exist yet; user nobody can create a database in ${path.join(dir, 'a', 'mta')} (tried, and removed again)`)
  t.same(fs.readdirSync(dir), [], 'no directory, database or trial file left')
})

t.test('--user nobody: a database nobody uses is written and rolled back, and left exactly as it was', { skip: isRoot ? false : NOT_ROOT }, async (t) => {
  const dir = place(t)
  const mta = path.join(dir, 'mta')
  fs.mkdirSync(mta, { mode: 0o700 })
  fs.chownSync(mta, nobody.uid, nobody.gid)
  const db = path.join(mta, 'p.sqlite')
  // Made by policyd-ts itself, as nobody, with one greylisted triplet in it.
  const served = run(['--config', '/dev/null', '--db_path', db, '--syslog_socket', path.join(dir, 'no-syslog'), '--greylist_whitelist_clients', '', '--greylist_whitelist_recipients', '', '--spf_enabled', 'no'], nobody, rcptRequest())
  t.match(served.stdout, /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted/)
  const before = snapshot(mta)
  const r = testMode(dir, db, ['--user', 'nobody'])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, `# database: ${db}: user nobody can write it (tried: a write, rolled back)`)
  t.same(snapshot(mta), before, 'same files, owners, modes and bytes')

  fs.chownSync(db, 0, 0)
  const rootOwned = testMode(dir, db, ['--user', 'nobody'])
  t.equal(rootOwned.code, 73)
  t.match(rootOwned.stdout, `# database: PROBLEM: ${db} (owner root, group root, mode 0600) is not writable by user nobody; as root: chown nobody:`)
})

t.test('--user: an unknown user, and --user when not root', { skip: isRoot ? false : NOT_ROOT }, async (t) => {
  const dir = place(t)
  const unknown = testMode(dir, path.join(dir, 'p.sqlite'), ['--user', 'no-such-user-here'])
  t.equal(unknown.code, 67, 'EX_NOUSER')
  t.match(unknown.stderr, 'policyd-ts: --user no-such-user-here: no such user on this system')
  const asNobody = run(['--test-mode', '--config', '/dev/null', '--user', 'daemon'], nobody)
  t.equal(asNobody.code, 77, 'EX_NOPERM')
  t.match(asNobody.stderr, 'policyd-ts: --user daemon needs root (this is user nobody)')
})

t.test('a bad value is shown as ignored, with where it was written; the key line names the source of the value in effect', async (t) => {
  const dir = t.testdir({ 'p.conf': '# greylisting\ngreylist_delay = 5x\n' })
  const conf = path.join(dir, 'p.conf')
  const r = run(['--test-mode', '--config', conf, '--greylist_enabled', 'no', '--max_idle', '30d'])
  t.equal(r.code, 78)
  t.match(r.stdout, /^greylist_delay += 300s +# default$/m, 'not "# file": the file\'s value is not the one in effect')
  t.match(r.stdout, new RegExp(`^#   ignored: greylist_delay = "5x" \\(${conf.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}(:2)?\\): expected a duration .*; the default is used instead$`, 'm'))
  t.match(r.stdout, /^max_idle += 600s +# default$/m)
  t.match(r.stdout, /^#   ignored: max_idle = "30d" \(command line[^)]*\): too long, at most 2147483s = 24d 20h 31m 23s .*; the default is used instead$/m)
})
