// The interactive side of the binary: --test-mode, --help, --version, usage errors.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import path from 'node:path'
import { BIN, startPolicy } from '../helpers/policy-process'
import { CONFIG_KEYS } from '../../lib/config'

function run(args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { PATH: process.env.PATH, ...env }, encoding: 'utf8', timeout: 20000 })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

t.test('--test-mode prints every key with its value and source, exit 0', async (t) => {
  const dir = t.testdir({ 'p.conf': '# comment\ngreylist_delay = 2m\n' })
  // Greylisting off: the default database (/var/mta) is not tried, which a non-root run could not create.
  const r = run(['--test-mode', '--config', path.join(dir, 'p.conf'), '--debugLevel', '3', '--greylist_enabled', 'no'], { POLICYD_TS_GREYLIST_MAX_AGE: '10d' })
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stderr, '')
  for (const key of CONFIG_KEYS) t.match(r.stdout, new RegExp(`^${key} += `, 'm'), `${key} listed`)
  t.match(r.stdout, /^greylist_delay += 120s +# file$/m)
  t.match(r.stdout, /^greylist_max_age += 864000s +# environment$/m)
  t.match(r.stdout, /^debugLevel += 3 +# command line$/m)
  t.match(r.stdout, /^db_path += \/var\/mta\/policyd-ts.sqlite +# default$/m)
})

t.test('--test-mode with a bad configuration exits 78 and names the problem', async (t) => {
  const dir = t.testdir({ 'p.conf': 'greylist_delay = soon\nbogus = 1\n' })
  const r = run(['--test-mode', '--config', path.join(dir, 'p.conf')])
  t.equal(r.code, 78)
  t.match(r.stderr, /bad value "soon" for greylist_delay: expected a duration/)
  t.match(r.stderr, /p\.conf:2: unknown key bogus/)
})

t.test('--help lists every key; --version prints the version', async (t) => {
  const h = run(['--help'])
  t.equal(h.code, 0)
  for (const key of CONFIG_KEYS) t.match(h.stdout, `--${key}`)
  const v = run(['--version'])
  t.equal(v.code, 0)
  t.match(v.stdout, /^\d+\.\d+\.\d+\n$/)
})

t.test('an unknown option with --test-mode is a usage error on stderr', async (t) => {
  const r = run(['--test-mode', '--nope', '1'])
  t.equal(r.code, 64)
  t.match(r.stderr, /Unknown argument|nope/)
})

t.test('-V, -h and every other interactive flag work with stdin a pipe that stays open (not only at a terminal)', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['-V'], /^\d+\.\d+\.\d+\n$/],
    [['--V'], /^\d+\.\d+\.\d+\n$/],
    [['--version'], /^\d+\.\d+\.\d+\n$/],
    [['-h'], /-V, --version/],
    [['-hV'], /-V, --version|^\d+\.\d+\.\d+\n$/],
    [['--test-mode', '--config', '/dev/null', '--greylist_enabled', 'no'], /^# start-up: /m],
  ]
  for (const [args, stdout] of cases) {
    // Postfix's spawn(8) gives a socket, sleep 3 | policyd-ts -V a pipe: either way not a terminal.
    const p = startPolicy(args)
    const { code } = await p.exited(15000)
    t.equal(code, 0, `${args.join(' ')}: exits at once, stderr=${p.stderr()}`)
    t.match(p.stdout(), stdout, `${args.join(' ')}: prints, does not serve requests`)
    p.child.stdin.destroy()
  }
})
