// The man pages agree with the option table and render without a warning.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { CONFIG_KEYS, OPTIONS } from '../lib/config'
import { renderKeys, withKeys } from '../lib/config-man'

const root = path.join(__dirname, '..')
const confPage = fs.readFileSync(path.join(root, 'man', 'policyd-ts.conf.5'), 'utf8')

/** Undo the escapes the pages use. */
function plain(text: string): string {
  return text.replace(/\\f[BIRP]/g, '').replace(/\\-/g, '-').replace(/\\e/g, '\\').replace(/\\&/g, '')
}

t.test('policyd-ts.conf(5) lists exactly the keys and defaults of lib/config.ts, in order', async (t) => {
  const entries: Array<{ key: string; def: string }> = []
  const lines = confPage.split('\n')
  for (let i = 0; i < lines.length; i++) {
    if (lines[i] === '.TP' && lines[i + 1]?.startsWith('.B ') && lines[i + 2]?.startsWith('Default: ')) {
      entries.push({ key: plain(lines[i + 1].slice(3)), def: plain(lines[i + 2].slice('Default: '.length)).replace(/\.$/, '') })
    }
  }
  t.same(entries.map((e) => e.key), CONFIG_KEYS)
  for (const e of entries) {
    const want = OPTIONS[e.key as keyof typeof OPTIONS].default
    t.equal(e.def, want === '' ? '(empty)' : want, `default of ${e.key}`)
  }
  t.equal(withKeys(confPage), confPage, 'the generated KEYS section is current (npm run man)')
  t.ok(renderKeys().includes('.B greylist_delay'))
})

t.test('both pages render with groff -man -ww -z without a warning', async (t) => {
  for (const page of ['policyd-ts.8', 'policyd-ts.conf.5']) {
    const r = spawnSync('groff', ['-man', '-ww', '-z', path.join(root, 'man', page)], { encoding: 'utf8' })
    t.equal(r.error, undefined, 'groff runs (CI installs groff-base)')
    t.equal(r.status, 0, page)
    t.equal(r.stderr, '', `${page}: no warnings`)
  }
})

t.test('policyd-ts(8) has the sections an admin looks for and names every key it documents', async (t) => {
  const page = fs.readFileSync(path.join(root, 'man', 'policyd-ts.8'), 'utf8')
  for (const section of ['NAME', 'SYNOPSIS', 'DESCRIPTION', 'POSTFIX SETUP', 'SPF', 'MIGRATING FROM POLICYD\\\\-SPF', 'GREYLISTING', 'HEADERS', 'FAILURE POLICY', 'LOGGING', 'DIAGNOSTICS', 'FILES', 'BUGS', 'SEE ALSO']) {
    t.match(page, new RegExp(`^\\.SH ${section}$`, 'm'), section)
  }
  const named = [...plain(page).matchAll(/\b((?:greylist|db|max|syslog|log|fail)_[a-z_0-9]+)\b/g)].map((m) => m[1])
  for (const key of new Set(named)) t.ok(key in OPTIONS || key === 'policy_time_limit', `${key} is a real key`)
})

t.test('master.cf.example has the spawn entries and the time limits', async (t) => {
  const ex = fs.readFileSync(path.join(root, 'master.cf.example'), 'utf8')
  t.match(ex, /^policy\s+unix\s+-\s+n\s+n\s+-\s+0\s+spawn$/m)
  t.match(ex, /^\s+user=nobody argv=\/usr\/bin\/node --single-threaded-gc \S+\/bin\/policyd-ts$/m)
  const { nodeFlags } = require('../scripts/node-flags.js') as { nodeFlags(text?: string): string[] }
  t.same(nodeFlags(), ['--single-threaded-gc'], 'the flags the build and the benches use')
  t.match(ex, /policy_time_limit = 3600s/)
  t.match(ex, /command_time_limit=3600s/)
  t.match(ex, /check_policy_service unix:private\/policy/)
  t.match(ex, /check_policy_service inet:127\.0\.0\.1:9998/)
  t.match(ex, /reject_unauth_destination,\s*\n#\s+check_policy_service/)
  t.match(ex, /smtpd_data_restrictions =\s*\n#\s+check_policy_service unix:private\/policy/, 'the DATA check that carries a second header')
  t.match(ex, /bin\/policyd-ts \/etc\/postfix-policyd-spf-python\/policyd-spf\.conf --greylist_enabled no$/m, 'the policyd-spf replacement line')
})

t.test('package.json installs the pages and the binary', async (t) => {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { man: string[]; bin: Record<string, string> }
  t.same(pkg.man, ['man/policyd-ts.8', 'man/policyd-ts.conf.5'])
  t.equal(pkg.bin['policyd-ts'], 'bin/policyd-ts')
})
