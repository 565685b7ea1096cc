// policyd-ts postfix-config through the built binary: the master.cf entry
// names this node and this checkout, resolved, and serves requests as it
// is printed; the database checks follow what is on the disk. And the
// warning about /etc/postfix-policyd-spf-python/policyd-spf.conf left
// unread, with that file made in a private mount namespace (the machine's
// /etc is not touched).
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { BIN, isolatedArgs, rcptRequest } from '../helpers/policy-process'

const ROOT = fs.realpathSync(path.resolve(__dirname, '..', '..'))
const NODE = fs.realpathSync(process.execPath)
const { nodeFlags } = require('../../scripts/node-flags.js') as { nodeFlags(): string[] }
const isRoot = process.getuid?.() === 0

function postfixConfig(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, 'postfix-config', ...args], { encoding: 'utf8', env: { PATH: process.env.PATH }, timeout: 60000 })
  // Comments wrapped at 76 columns, joined again: where a line breaks depends on the temp dir's name.
  return { code: r.status, stdout: r.stdout.replace(/\n# {3}/g, ' '), stderr: r.stderr }
}

/** A directory every user may enter (t.testdir() may sit below a private home). */
function openTempDir(t: Tap.Test): string {
  const dir = fs.mkdtempSync('/tmp/policyd-ts-postfix-config-')
  fs.chmodSync(dir, 0o755)
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

t.test('the master.cf entry names this node and this checkout, and runs as printed', async (t) => {
  const dir = openTempDir(t)
  const options = isolatedArgs(dir)
  const r = postfixConfig([...options, '--user', 'nobody'])
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stderr, '')
  t.match(r.stdout, `# \`policyd-ts postfix-config\`. node: ${NODE} (${process.version});\n# package: ${ROOT}; spawn user: nobody.\n`)
  const lines = r.stdout.split('\n')
  const entry = lines.findIndex((l) => /^policy +unix +- +n +n +- +0 +spawn$/.test(l))
  t.not(entry, -1, 'a policy unix spawn entry')
  const argvLine = lines[entry + 1]
  const program = [NODE, ...nodeFlags(), path.join(ROOT, 'bin', 'policyd-ts')].join(' ')
  t.ok(argvLine.startsWith(`  user=nobody argv=${program} --config /dev/null `), argvLine)
  t.ok(argvLine.includes(` --db_path=${path.join(dir, 'db', 'policyd-ts.sqlite')} `), 'the key options given go onto the command line')
  t.match(r.stdout, /^    check_policy_service unix:private\/policy$/m)
  t.match(r.stdout, /^policy_time_limit = 3600s$/m)
  t.match(r.stdout, `\nrunuser -u nobody -- ${program} --config /dev/null `)

  // The database directory does not exist yet: the command that makes it.
  const dbDir = path.join(dir, 'db')
  t.match(r.stdout, `# PROBLEM: database directory ${dbDir} does not exist`)
  t.match(r.stdout, new RegExp(`^install -d -o nobody -g \\S+ -m 0700 ${dbDir}$`, 'm'))

  // The printed argv, word by word as spawn(8) splits it, answers a request.
  const words = argvLine.slice(argvLine.indexOf('argv=') + 5).split(/\s+/)
  const served = spawnSync(words[0], words.slice(1), { input: rcptRequest(), encoding: 'utf8', env: { PATH: '/usr/bin:/bin' }, timeout: 30000 })
  t.equal(served.status, 0, served.stderr)
  t.match(served.stdout, /^action=DEFER_IF_PERMIT .*\n\n$/, 'a new triplet is greylisted')
  t.equal(served.stderr, '')
})

t.test('the database directory as it is on the disk: owned by root, then made by the printed command', { skip: isRoot ? false : 'needs root: it hands a directory to user nobody' }, async (t) => {
  const dir = openTempDir(t)
  const dbDir = path.join(dir, 'db')
  fs.mkdirSync(dbDir, { mode: 0o755 })
  fs.writeFileSync(path.join(dbDir, 'policyd-ts.sqlite'), '')
  const options = isolatedArgs(dir)
  const before = postfixConfig([...options, '--user', 'nobody'])
  t.match(before.stdout, `# PROBLEM: nobody cannot write the database directory ${dbDir} (owner root, mode 0755)`)
  const install = before.stdout.split('\n').find((l) => l.startsWith('install -d '))
  t.ok(install, 'the command that fixes it')
  const ran = spawnSync('sh', ['-c', install!], { encoding: 'utf8' })
  t.equal(ran.status, 0, ran.stderr)

  const after = postfixConfig([...options, '--user', 'nobody'])
  t.match(after.stdout, '# ok: nobody can write the database directory')
  t.match(after.stdout, '# PROBLEM: nobody cannot write', 'the file made by root still is not writable')
  t.match(after.stdout, new RegExp(`^chown nobody:\\S+ ${path.join(dbDir, 'policyd-ts.sqlite')}$`, 'm'))
})

t.test('the package ships what postfix-config reads at run time, and the LICENSE', async (t) => {
  const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8', timeout: 60000 })
  t.equal(r.status, 0, r.stderr)
  const files = (JSON.parse(r.stdout) as Array<{ files: Array<{ path: string }> }>)[0].files.map((f) => f.path)
  for (const file of ['LICENSE', 'scripts/node-flags.js', 'master.cf.example', 'dist/lib/postfix-config.js', 'dist/lib/policyd-spf-conf.js']) t.ok(files.includes(file), file)
})

t.test('usage errors: exit 64, nothing on stdout', async (t) => {
  for (const args of [['--user', 'no body'], ['--service', 'a/b'], ['--mode', 'inetd']]) {
    const r = postfixConfig(args)
    t.equal(r.code, 64, args.join(' '))
    t.equal(r.stdout, '')
  }
})

// ---- policyd-spf.conf left unread ------------------------------------------

/**
 * Runs node with `args` where /etc is an overlay holding `upper` on top of
 * the real one, in a mount namespace of its own; null when this system does
 * not allow it (not root, no unshare, no overlayfs).
 */
function withPrivateEtc(t: Tap.Test, upperFiles: Record<string, string>): ((args: string[], input?: string) => ReturnType<typeof spawnSync>) | null {
  if (!isRoot) return null
  const base = fs.mkdtempSync('/tmp/policyd-ts-etc-')
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }))
  const upper = path.join(base, 'upper')
  fs.mkdirSync(path.join(base, 'work'))
  for (const [file, text] of Object.entries(upperFiles)) {
    fs.mkdirSync(path.join(upper, path.dirname(file)), { recursive: true })
    fs.writeFileSync(path.join(upper, file), text)
  }
  const run = (command: string[], input = ''): ReturnType<typeof spawnSync> =>
    spawnSync('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-ec', `mount -t overlay overlay -o lowerdir=/etc,upperdir=${upper},workdir=${path.join(base, 'work')} /etc; exec "$@"`, 'sh', ...command], {
      input,
      encoding: 'utf8',
      env: { PATH: process.env.PATH },
      timeout: 30000,
    })
  const probe = run(['cat', '/etc/postfix-policyd-spf-python/policyd-spf.conf'])
  if (probe.status !== 0 || !String(probe.stdout).startsWith('# made by')) return null
  return (args, input) => run([process.execPath, BIN, ...args], input)
}

t.test("a policyd-spf.conf that is not read: an error line at every start, a --test-mode line", async (t) => {
  const run = withPrivateEtc(t, { 'postfix-policyd-spf-python/policyd-spf.conf': '# made by the test\nHELO_reject = False\n' })
  if (run === null) return t.skip('needs root, unshare(1) and overlayfs to show a policyd-spf.conf in /etc of one process only')
  const dir = t.testdir()
  // Debian's master.cf line with only the program replaced: no config file named, SPF on.
  const args = [...isolatedArgs(dir).filter((a, i, all) => a !== '--config' && all[i - 1] !== '--config'), '--spf_enabled', 'yes']
  const served = run(args, '')
  t.equal(served.status, 0, String(served.stderr))
  t.equal(served.stdout, '')
  const logFile = path.join(dir, 'policyd-ts.log')
  const log = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : ''
  t.match(log, /policyd-ts\[\d+\]: \/etc\/postfix-policyd-spf-python\/policyd-spf\.conf exists but is not read \(the config file is \/etc\/policyd-ts\/policyd-ts\.conf, not found\): its settings do not apply/)

  const testMode = run([...args, '--test-mode'])
  t.equal(testMode.status, 0, String(testMode.stderr))
  t.match(testMode.stdout, /^# warning: \/etc\/postfix-policyd-spf-python\/policyd-spf\.conf exists but is not read/m)

  // Named as policyd-spf takes it: read, no warning.
  const dir2 = t.testdir()
  const named = ['/etc/postfix-policyd-spf-python/policyd-spf.conf', ...isolatedArgs(dir2, ['--spf_enabled', 'yes', '--debugLevel', '3']).slice(2)]
  t.equal(run(named, '').status, 0)
  const log2 = fs.readFileSync(path.join(dir2, 'policyd-ts.log'), 'utf8')
  t.match(log2, /config file \/etc\/postfix-policyd-spf-python\/policyd-spf\.conf/, 'the file was read')
  t.notMatch(log2, /not read/)
  const testMode2 = run([...named, '--test-mode'])
  t.match(testMode2.stdout, /^HELO_reject += False +# file$/m)
  t.notMatch(testMode2.stdout, /# warning/)
})
