// policyd-ts migrate: policyd-rate-limit's YAML (Debian's shipped file and
// one using every setting read) and postfixlimit's INI, converted to a
// policyd-ts.conf fragment that loads without an error, an overrides file
// that parses without one, and the list of what has no equivalent; and the
// exit codes of files that are not such configurations.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { loadConfig, type Config } from '../lib/config'
import { runMigration } from '../lib/migrate'
import { parseIni } from '../lib/migrate/ini'
import type { RenderedMigration } from '../lib/migrate/output'
import { parseRateString } from '../lib/migrate/postfixlimit'
import { parseOverrideFile } from '../lib/ratelimit/overrides'
import { formatLimitSet } from '../lib/ratelimit/limits'
import { BIN } from './helpers/policy-process'

const FIXTURES = path.join(__dirname, 'fixtures', 'migrate')
const DEBIAN = path.join(FIXTURES, 'policyd-rate-limit.debian.yaml')
const FULL = path.join(FIXTURES, 'policyd-rate-limit.full.yaml')
const POSTFIXLIMIT = path.join(FIXTURES, 'postfixlimit.conf')
const OV = '/etc/policyd-ts/ratelimit_overrides'

interface Outcome {
  code: number
  out: string
  err: string
}

function migrate(from: string, source: string, opts: { json?: boolean; overridesFile?: string; files?: Record<string, string> } = {}): Outcome {
  const out: string[] = []
  const err: string[] = []
  const readFile = (p: string): string => (opts.files && p in opts.files ? opts.files[p] : readFileSync(p, 'utf8'))
  const code = runMigration({ from, source, overridesFile: opts.overridesFile ?? OV, json: opts.json ?? false }, { out: (s) => void out.push(s), err: (s) => void err.push(s) }, readFile)
  return { code, out: out.join(''), err: err.join('') }
}

/** The parts of a migration, checked to be usable: the fragment loads and the overrides parse, without one error. */
function converted(t: Tap.Test, from: string, source: string, files?: Record<string, string>): RenderedMigration & { cfg: Config; entries: string[] } {
  const r = migrate(from, source, { json: true, files })
  t.equal(r.code, 0, r.err)
  t.equal(r.err, '', 'nothing on stderr')
  const parts = JSON.parse(r.out) as RenderedMigration
  const loaded = loadConfig({ cli: {}, configPath: '/x/policyd-ts.conf', env: {}, readFile: () => parts.config })
  t.same(loaded.errors, [], 'the fragment loads without an error')
  const parsed = parseOverrideFile(parts.overrides, OV, loaded.config)
  t.same(parsed.errors, [], 'the overrides file parses without an error')
  return { ...parts, cfg: loaded.config, entries: parsed.entries.map((e) => `${e.key.cls}:${e.key.value} ${formatLimitSet(e.limits)}`) }
}

const yaml = (text: string): Record<string, string> => ({ '/x/p.yaml': text })
const ini = (text: string): Record<string, string> => ({ '/x/p.conf': text })

t.test("Debian's shipped /etc/policyd-rate-limit.yaml", async (t) => {
  const m = converted(t, 'policyd-rate-limit', DEBIAN)
  t.equal(m.cfg.ratelimit_enabled, true)
  t.equal(m.cfg.ratelimit_sasl_limits, '10rcpt/1m, 150rcpt/1d', 'limits [10, 60], [150, 86400] per SASL user, counted per RCPT')
  t.same([m.cfg.ratelimit_sender_limits, m.cfg.ratelimit_client_limits, m.cfg.ratelimit_networks], ['', '', []], 'limit_by_sender and limit_by_ip are off')
  t.equal(m.cfg.ratelimit_commit_at, 'end-of-message')
  t.equal(m.cfg.ratelimit_action, 'DEFER_IF_PERMIT')
  t.equal(m.cfg.ratelimit_text, '4.7.1 Rate limit %l exceeded for %k, retry after %t', 'its own text kept')
  t.equal(m.cfg.fail_action, 'DUNNO', 'db_error_action dunno is the default already')
  t.same([m.overrides_file, m.overrides], [null, ''], 'limits_by_id is empty: no overrides file')
  t.notMatch(m.config, /ratelimit_overrides/)
  const notes = m.no_equivalent.join('\n')
  t.match(notes, /^backend \(sqlite3\): policyd-ts counts in its own SQLite database/m)
  t.match(notes, /^SOCKET "\/var\/spool\/postfix\/ratelimit\/policy", socket_permission: policyd-ts runs under spawn\(8\)/m)
  t.match(notes, /^user, group: /m)
  t.match(notes, /^debug: /m)
  t.match(notes, /--clean/)
  t.notMatch(notes, /report/, 'report: False: nothing to say about it')
  t.match(m.config, /# limits: \[\[10,60\],\[150,86400\]\], for each SASL user \(limit_by_sasl\); without count_mode, 1\.0 counted one per RCPT/, 'each setting says where it comes from')
})

t.test('policyd-rate-limit with limits_by_id, limit_by_ip, count_mode 2, a MySQL backend and the report', async (t) => {
  const m = converted(t, 'policyd-rate-limit', FULL)
  t.equal(m.cfg.ratelimit_sasl_limits, '10msg/1m, 150msg/1d', 'count_mode 2 counts messages; of 150 and 200 a day, 150 held')
  t.equal(m.cfg.ratelimit_client_limits, '10msg/1m, 150msg/1d')
  t.same(m.cfg.ratelimit_networks, ['192.0.2.0/24', '2001:db8::/32'])
  t.equal(m.cfg.ratelimit_ipv6_prefix, 128, 'each IPv6 address, as it counted')
  t.equal(m.cfg.ratelimit_commit_at, 'data')
  t.equal(m.cfg.ratelimit_action, '450')
  t.equal(m.cfg.ratelimit_text, '4.7.1 Slow down, you sent 100%% of your quota', 'a % of the text is no field')
  t.equal(m.cfg.fail_action, 'defer_if_permit Service temporarily unavailable', 'db_error_action')
  t.equal(m.cfg.ratelimit_overrides, OV)
  t.same(m.entries, [
    'sasl:alice@example.org unlimited',
    'sasl:bob@example.org 1000msg/1d',
    'client:192.0.2.25 5msg/1m',
    'client:2001:db8::25 unlimited',
    'sasl:backup-robot 50msg/1h',
  ])
  t.match(m.overrides, /^# limits_by_id bob@example\.org: \[\[1000,86400\]\]\nsasl:bob@example\.org 1000msg\/1d$/m, 'each line says which id it comes from')
  const notes = m.no_equivalent.join('\n')
  t.match(notes, /^limits: 200 per 86400 seconds is looser than 150 per the same period; left out$/m)
  t.match(notes, /^backend \(MySQL, shared by the hosts that used it\)/m)
  t.match(notes, /MAILTO=postmaster@example\.org,abuse@example\.org then "0 0 \* \* \* root policyd-ts ratelimit hits --since 1d"/)
  t.match(notes, /^SOCKET \["127\.0\.0\.1",8552\]/m)
})

t.test('policyd-rate-limit: settings left out take its defaults', async (t) => {
  const m = converted(t, 'policyd-rate-limit', '/x/p.yaml', yaml('limit_by_ip: yes\nlimited_networks: [10.0.0.0/8]\n'))
  t.equal(m.cfg.ratelimit_sasl_limits, '10rcpt/1m, 150rcpt/1d', 'the default limits, and limit_by_sasl on by default')
  t.equal(m.cfg.ratelimit_client_limits, '10rcpt/1m, 150rcpt/1d', 'YAML 1.1: yes is True, as PyYAML reads it')
  t.same(m.cfg.ratelimit_networks, ['10.0.0.0/8'])
  t.equal(m.cfg.ratelimit_action, 'DEFER_IF_PERMIT')
  const none = converted(t, 'policyd-rate-limit', '/x/p.yaml', yaml('limit_by_ip: True\nlimit_by_sasl: False\n'))
  t.equal(none.cfg.ratelimit_client_limits, '', 'no networks: no client is limited, there as here')
  t.equal(none.cfg.ratelimit_sasl_limits, '')
  t.match(none.no_equivalent.join('\n'), /limit_by_ip: True with an empty limited_networks limited no client address in policyd-rate-limit either/)
  const old = converted(t, 'policyd-rate-limit', '/x/p.yaml', yaml('limit_by_ip: True\nlimited_netword: ["192.0.2.0/24"]\n'))
  t.same(old.cfg.ratelimit_networks, ['192.0.2.0/24'], 'the old spelling limited_netword')
})

t.test('policyd-rate-limit: limit_by_sender, ids of each kind, count_mode 1', async (t) => {
  const m = converted(t, 'policyd-rate-limit', '/x/p.yaml', yaml([
    'limit_by_sender: True',
    'count_mode: 1',
    'limits: [[100, 3600]]',
    'limits_by_id:',
    '  carol@example.org: [[5, 60]]',
    '  dave: []',
    '  "@example.net": []',
    '  "bad id": []',
    '  old@example.org: [[1, 40000000]]',
  ].join('\n')))
  t.equal(m.cfg.ratelimit_sender_limits, '100rcpt/1h')
  t.same(m.cfg.ratelimit_networks, [], 'written empty, for the admin to fill')
  t.match(m.config, /# Sender and client limits apply only to clients inside these networks \(limited_networks was empty: list your own networks, as mynetworks\)\.\n# policyd-rate-limit limited the sender of any client without SASL, so a forged sender could use up a real user's limit\.\n(# .*\n)?ratelimit_networks =\n/)
  t.equal(m.cfg.ratelimit_commit_at, 'data', 'count_mode 1 counted at DATA')
  t.same(m.entries, ['sasl:carol@example.org 5rcpt/1m', 'sender:carol@example.org 5rcpt/1m', 'sasl:dave unlimited'], 'an address may be a SASL user or a sender; a bare name a SASL user')
  const notes = m.no_equivalent.join('\n')
  t.match(notes, /limits_by_id @example\.net: "@example\.net" was looked up as written, so no request ever matched it/)
  t.match(notes, /limits_by_id bad id: .*the value after the class is empty or has blanks; left out/)
  t.match(notes, /limits_by_id old@example\.org: 1 per 40000000 seconds: the period is longer than 366d; left out/)
  const noSasl = converted(t, 'policyd-rate-limit', '/x/p.yaml', yaml('limit_by_sasl: False\nlimits_by_id:\n  erin: []\n'))
  t.same(noSasl.entries, [])
  t.match(noSasl.no_equivalent.join('\n'), /limits_by_id erin: limit_by_sasl is off, so policyd-rate-limit never counted this id; left out/)
  t.equal(converted(t, 'policyd-rate-limit', '/x/p.yaml', yaml('count_mode: 0\n')).cfg.ratelimit_commit_at, 'end-of-message')
})

t.test('policyd-rate-limit: a fail_action or text policyd-ts cannot answer is listed, and the defaults stay', async (t) => {
  const reject = converted(t, 'policyd-rate-limit', '/x/p.yaml', yaml('fail_action: "REJECT 5.7.1 Too much mail # really"\nsuccess_action: permit\ndb_error_action: "bogus"\n'))
  t.equal(reject.cfg.ratelimit_action, 'DEFER_IF_PERMIT')
  t.equal(reject.cfg.ratelimit_text, '4.7.1 Rate limit %l exceeded for %k, retry after %t')
  t.equal(reject.cfg.fail_action, 'DUNNO')
  const notes = reject.no_equivalent.join('\n')
  t.match(notes, /fail_action: "REJECT 5\.7\.1 Too much mail # really": policyd-ts only defers/)
  t.match(notes, /a "#" cannot be written in a policyd-ts\.conf value/)
  t.match(notes, /success_action: "permit": policyd-ts answers DUNNO under the limits/)
  t.match(notes, /db_error_action: "bogus" is not an action/)
})

t.test('policyd-rate-limit: settings it does not know are listed as ignored', async (t) => {
  const m = converted(t, 'policyd-rate-limit', '/x/p.yaml', yaml('limit_by_sasl: True\nlimits_by_sasl: True\n'))
  t.match(m.no_equivalent.join('\n'), /^limits_by_sasl: not a policyd-rate-limit setting \(it ignored it too\)$/m)
})

t.test('policyd-rate-limit: a file it would refuse or misread is a data error, with the reason', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['limits: [[10, 60]\n', /not valid YAML: /],
    ['- limits\n', /not a policyd-rate-limit configuration: a YAML mapping of settings/],
    ['', /not a policyd-rate-limit configuration: the file has no settings/],
    ['# only a comment\n', /not a policyd-rate-limit configuration: the file has no settings/],
    ['limits: [10, 60]\n', /limits: item 1, 10, is not a \[number of mails, number of seconds\] pair/],
    ['limits: "10/60"\n', /limits: "10\/60" is not a list of \[number of mails, number of seconds\] pairs/],
    ['limits: [[10.5, 60]]\n', /limits: item 1, \[10\.5,60\]/],
    ['limits_by_id: [alice]\n', /limits_by_id: \["alice"\] is not a mapping/],
    ['limits_by_id:\n  alice: 5\n', /limits_by_id alice: 5 is not a list/],
    ['limit_by_sasl: "yes please"\n', /limit_by_sasl: "yes please" is not True or False/],
    ['count_mode: 3\n', /count_mode: 3 is not 0, 1 or 2/],
    ['limited_networks: ["192.0.2.0/33"]\n', /limited_networks: \["192\.0\.2\.0\/33"\] is not a list of networks/],
    ['fail_action: 5\n', /fail_action: 5 is not an action/],
  ]
  for (const [text, why] of cases) {
    const r = migrate('policyd-rate-limit', '/x/p.yaml', { files: yaml(text) })
    t.equal(r.code, 65, JSON.stringify(text))
    t.equal(r.out, '', 'nothing half-converted on stdout')
    t.match(r.err, new RegExp(`^policyd-ts migrate: /x/p\\.yaml: ${why.source}`), JSON.stringify(text))
  }
  const missing = migrate('policyd-rate-limit', '/nonexistent/policyd-rate-limit.yaml')
  t.equal(missing.code, 65)
  t.match(missing.err, /^policyd-ts migrate: cannot read \/nonexistent\/policyd-rate-limit\.yaml: ENOENT/)
})

t.test("postfixlimit's example configuration", async (t) => {
  const m = converted(t, 'postfixlimit', POSTFIXLIMIT)
  t.equal(m.cfg.ratelimit_sender_limits, '20rcpt/10m, 200rcpt/1d', 'field = sender; "200/day; 20 per 10 minutes", one hit per RCPT')
  t.same(m.cfg.ratelimit_networks, [])
  t.equal(m.cfg.ratelimit_commit_at, 'end-of-message')
  t.equal(m.cfg.ratelimit_action, 'DEFER')
  t.equal(m.cfg.ratelimit_text, '4.7.1 Limit (%l) exceeded for %k, 100%% sure', '{limit} and {field}={key} as %l and %k; % escaped')
  t.equal(m.cfg.ratelimit_learn_only, false, 'transparent = no')
  t.same(m.entries, ['sender:newsletter@example.com 5000rcpt/1d', 'sender:alerts@example.com 100rcpt/1h'])
  const notes = m.no_equivalent.join('\n')
  t.match(notes, /^\[limits\] @partner\.example: "@partner\.example" was looked up as written, so no request ever matched it/m)
  t.match(notes, /^storage = redis:\/\/localhost:6379\/0: policyd-ts counts in its own SQLite database/m)
  t.match(notes, /^strategy = moving-window: policyd-ts counts each period in ratelimit_slots slots/m)
  t.match(notes, /^field = sender for every client: policyd-ts limits by sender only inside ratelimit_networks, and counts the null sender per client address/m)
  t.match(notes, /^address, port \(127\.0\.0\.1:4455\)/m)
  t.match(notes, /^dump_period, dump_file: /m)
  t.match(notes, /^log_file: /m)
})

t.test('postfixlimit: each field, transparent, REJECT, an unknown field of action_text', async (t) => {
  const client = converted(t, 'postfixlimit', '/x/p.conf', ini('[server]\nfield = client_address\ndefault_limit = 10 per 2 hours | 1000/month\ntransparent = yes\naction = REJECT\naction_text = Over {limit} for {field} {key} from {client}\n[limits]\n192.0.2.7 = 1/year\n'))
  t.equal(client.cfg.ratelimit_client_limits, '10rcpt/2h, 1000rcpt/30d', 'a month is 30 days, as the limits library counts')
  t.equal(client.cfg.ratelimit_ipv6_prefix, 128)
  t.equal(client.cfg.ratelimit_learn_only, true)
  t.equal(client.cfg.ratelimit_action, 'DEFER_IF_PERMIT')
  t.same(client.entries, ['client:192.0.2.7 1rcpt/360d'], 'a year is 360 days')
  t.equal(client.cfg.ratelimit_text, '4.7.1 Rate limit %l exceeded for %k, retry after %t')
  const notes = client.no_equivalent.join('\n')
  t.match(notes, /action = REJECT: policyd-ts only defers/)
  t.match(notes, /action_text: \{client\} has no equivalent field/)
  t.match(notes, /^storage = memory:\/\/: counts lived in postfixlimit's memory/m, 'the default storage')
  t.match(notes, /^strategy = fixed-window: .*twice the limit/m, 'the default strategy')
  const sasl = converted(t, 'postfixlimit', '/x/p.conf', ini('[server]\nfield = sasl_username\n[limits]\nAlice = 50/hour\n[extra]\nx = 1\n'))
  t.equal(sasl.cfg.ratelimit_sasl_limits, '10rcpt/1h', 'the default 10/hour')
  t.same(sasl.entries, ['sasl:alice 50rcpt/1h'])
  t.notMatch(sasl.config, /ratelimit_networks/)
  t.match(sasl.no_equivalent.join('\n'), /field = sasl_username: postfixlimit counted all mail without SASL under one key ""/)
  t.match(sasl.no_equivalent.join('\n'), /^\[extra\]: not a postfixlimit section/m)
  t.match(converted(t, 'postfixlimit', '/x/p.conf', ini('[server]\nfield: sender\naction_text = {field} {key} over\n')).cfg.ratelimit_text, /^sender %k over$/, '{field} alone is the field name')
})

t.test('postfixlimit: a file it would refuse is a data error, with the line', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['[limits]\na@b.c = 1/day\n', /no \[server\] section: not a postfixlimit configuration/],
    ['field = sender\n[server]\n', /not an INI file as postfixlimit reads it: line 1: a setting before any \[section\] header/],
    ['[server]\nfield = recipient\n', /line 2: field = "recipient" is not sender, sasl_username or client_address/],
    ['[server]\ndefault_limit = lots\n', /line 2: default_limit: "lots" is not a rate such as 100\/day/],
    ['[server]\n[limits]\na@b.c = 5 per fortnight\n', /line 3: \[limits\] a@b\.c: "5 per fortnight" is not a rate/],
    ['[server]\nfield = sender\nFIELD = sender\n', /not an INI file as postfixlimit reads it: line 3: field is set twice in one section/],
    ['[server]\n[server]\n', /not an INI file as postfixlimit reads it: line 2: section \[server\] appears twice/],
    ['[server]\ntransparent = maybe\n', /line 2: transparent = "maybe" is not yes or no/],
    ['[server]\njust words\n', /not an INI file as postfixlimit reads it: line 2: not a "key = value" line/],
  ]
  for (const [text, why] of cases) {
    const r = migrate('postfixlimit', '/x/p.conf', { files: ini(text) })
    t.equal(r.code, 65, JSON.stringify(text))
    t.equal(r.out, '')
    t.match(r.err, new RegExp(`^policyd-ts migrate: /x/p\\.conf: ${why.source}`), JSON.stringify(text))
  }
})

t.test("parseRateString: the limits library's notation", async (t) => {
  t.same(parseRateString('100/day'), { limits: [{ count: 100, seconds: 86400 }] })
  t.same(parseRateString('10 per 2 hours; 5/Second, 1 per year'), { limits: [{ count: 10, seconds: 7200 }, { count: 5, seconds: 1 }, { count: 1, seconds: 360 * 86400 }] })
  t.same(parseRateString('100 / 1 day'), { limits: [{ count: 100, seconds: 86400 }] })
  for (const bad of ['', '100', 'per day', '100/fortnight', '100 day', '-1/day']) t.match(parseRateString(bad), { error: /is not a rate/ }, JSON.stringify(bad))
})

t.test("parseIni: configparser's reading", async (t) => {
  const r = parseIni('# c\n; c\n[s]\nKey: a = b\n  more\n\n[t]\nx=1\n')
  if ('error' in r) throw new Error(r.error)
  t.same([...r.ini.get('s')!], [['key', { value: 'a = b\nmore', line: 4 }]], 'the first of : and = separates; keys lower case; an indented line continues')
  t.same([...r.ini.get('t')!], [['x', { value: '1', line: 8 }]])
})

t.test('the rendered text: each part under a marker saying where it goes', async (t) => {
  const r = migrate('policyd-rate-limit', FULL, { overridesFile: '/srv/pts/overrides' })
  t.equal(r.code, 0)
  t.match(r.out, /^# ==== policyd-ts\.conf ====\n# policyd-ts configuration converted from policyd-rate-limit's .*policyd-rate-limit\.full\.yaml by policyd-ts migrate\.\n/)
  t.match(r.out, /\nratelimit_overrides = \/srv\/pts\/overrides\n\n# ==== write the lines below to \/srv\/pts\/overrides ====\n# limits_by_id Alice@Example\.org: \[\]\nsasl:alice@example\.org unlimited\n/)
  t.match(r.out, /\n# ==== end of \/srv\/pts\/overrides ====\n\n# ==== not converted: no equivalent in policyd-ts, or nothing to do ====\n# - limits: 200 per 86400/)
  const relative = migrate('policyd-rate-limit', FULL, { overridesFile: 'overrides' })
  t.same([relative.code, relative.out], [64, ''])
  t.match(relative.err, /--overrides-file "overrides" is not an absolute path/)
  t.equal(migrate('policyd-weight', FULL).code, 64)
})

t.test('the built binary: migrate through the command line; js-yaml loads for policyd-rate-limit only', async (t) => {
  const bin = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { PATH: process.env.PATH }, timeout: 30000 })
  const ok = bin(['migrate', 'policyd-rate-limit', DEBIAN, '--overrides-file', '/srv/ov'])
  t.equal(ok.status, 0, ok.stderr)
  t.match(ok.stdout, /^ratelimit_sasl_limits = 10rcpt\/1m, 150rcpt\/1d$/m)
  t.equal(ok.stderr, '')
  const json = bin(['migrate', 'postfixlimit', POSTFIXLIMIT, '--json'])
  t.equal(json.status, 0, json.stderr)
  t.equal(JSON.parse(json.stdout).overrides_file, '/etc/policyd-ts/ratelimit_overrides', 'the default --overrides-file')
  const missing = bin(['migrate', 'postfixlimit', 'no-such.conf'])
  t.same([missing.status, missing.stdout], [65, ''])
  t.match(missing.stderr, /cannot read no-such\.conf/, 'a relative path is the file, not a config file of ours')
  t.equal(bin(['migrate', 'policyd-weight', DEBIAN]).status, 64)
  t.equal(bin(['migrate', 'postfixlimit']).status, 64)
  const dist = path.join(path.dirname(BIN), '..', 'dist', 'lib')
  const probe = (from: string, file: string): string => spawnSync(process.execPath, ['-e', [
    `require(${JSON.stringify(path.join(dist, 'interactive'))})`,
    `require(${JSON.stringify(path.join(dist, 'migrate'))}).runMigration({ from: ${JSON.stringify(from)}, source: ${JSON.stringify(file)}, overridesFile: '/x', json: true }, { out() {}, err() {} }, (p) => require('fs').readFileSync(p, 'utf8'))`,
    "process.stdout.write(String(Object.keys(require.cache).some((k) => k.includes('js-yaml'))))",
  ].join(';')], { encoding: 'utf8', timeout: 30000 }).stdout
  t.equal(probe('postfixlimit', POSTFIXLIMIT), 'false', 'the command line and postfixlimit do not load js-yaml')
  t.equal(probe('policyd-rate-limit', DEBIAN), 'true', 'policyd-rate-limit does')
})
