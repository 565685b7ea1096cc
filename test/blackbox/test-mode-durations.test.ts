// Every duration key has a largest value the code can honour (lib/config.ts):
// --test-mode takes each at its largest and refuses one millisecond more.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import path from 'node:path'
import { BIN } from '../helpers/policy-process'
import { CONFIG_KEYS, OPTIONS } from '../../lib/config'

const DURATIONS = CONFIG_KEYS.filter((k) => OPTIONS[k].type === 'duration')

function testMode(dir: string, args: string[]) {
  const r = spawnSync(process.execPath, [BIN, '--test-mode', '--config', '/dev/null', '--db_path', path.join(dir, 'db', 'p.sqlite'), ...args], {
    env: { PATH: process.env.PATH },
    encoding: 'utf8',
    timeout: 20000,
  })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

t.test('every duration key has a largest value; max_idle and max_lifetime fit a Node timer (2^31-1 ms)', async (t) => {
  t.ok(DURATIONS.length >= 8, DURATIONS.join(' '))
  for (const key of DURATIONS) t.type(OPTIONS[key].max, 'number', `${key} has a largest value`)
  for (const key of ['max_idle', 'max_lifetime'] as const) t.ok(OPTIONS[key].max! * 1000 <= 2 ** 31 - 1, key)
})

t.test('each duration key at its largest value is accepted', async (t) => {
  const dir = t.testdir()
  const r = testMode(dir, DURATIONS.flatMap((key) => [`--${key}`, `${OPTIONS[key].max}s`]))
  t.equal(r.code, 0, r.stderr)
  for (const key of DURATIONS) t.match(r.stdout, new RegExp(`^${key} += ${OPTIONS[key].max}s +# command line$`, 'm'))
})

t.test('one millisecond more is a configuration error that says the largest value', async (t) => {
  const dir = t.testdir()
  for (const key of DURATIONS) {
    const max = OPTIONS[key].max!
    const r = testMode(dir, [`--${key}`, `${max * 1000 + 1}ms`])
    t.equal(r.code, 78, key)
    t.match(r.stderr, `bad value "${max * 1000 + 1}ms" for ${key}: too long, at most ${max}s = `, key)
  }
  const r = testMode(dir, ['--max_idle', '25d'])
  t.match(r.stderr, 'bad value "25d" for max_idle: too long, at most 2147483s = 24d 20h 31m 23s')
})

t.test('durations are whole milliseconds', async (t) => {
  const dir = t.testdir()
  const r = testMode(dir, ['--db_busy_timeout', '0.5ms'])
  t.equal(r.code, 78)
  t.match(r.stderr, 'bad value "0.5ms" for db_busy_timeout: durations are whole milliseconds')
  const ok = testMode(dir, ['--db_busy_timeout', '1.001s', '--max_idle', '2147482.999'])
  t.equal(ok.code, 0, ok.stderr)
  t.match(ok.stdout, /^db_busy_timeout += 1\.001s /m)
  t.match(ok.stdout, /^max_idle += 2147482\.999s /m)
})
