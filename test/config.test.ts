import t from 'tap'
import { parse as parseDotenv } from 'dotenv'
import { CONFIG_KEYS, DEFAULT_CONFIG_FILE, OPTIONS, formatValue, loadConfig, parseValue, type ConfigKey } from '../lib/config'

function load(opts: { cli?: Record<string, string>; env?: Record<string, string>; file?: string; configPath?: string }) {
  return loadConfig({
    cli: opts.cli ?? {},
    configPath: opts.configPath,
    env: opts.env ?? {},
    readFile: (p) => {
      if (opts.file === undefined) throw Object.assign(new Error(`ENOENT: no such file, open '${p}'`), { code: 'ENOENT' })
      return opts.file
    },
    parseDotenv: () => parseDotenv,
  })
}

t.test('every default parses and round-trips through formatValue', async (t) => {
  for (const key of CONFIG_KEYS) {
    const parsed = parseValue(key, OPTIONS[key].default)
    t.notOk('error' in parsed, `${key} default parses`)
    if ('value' in parsed) t.same(parseValue(key, formatValue(key, parsed.value)), parsed, `${key} round-trips`)
    t.ok(OPTIONS[key].doc.length > 20, `${key} has a doc line`)
  }
})

t.test('defaults with no file, no env, no options', async (t) => {
  const l = load({})
  t.same(l.errors, [], 'a missing default config file is not an error')
  t.equal(l.configFile, DEFAULT_CONFIG_FILE)
  t.equal(l.configFileFound, false)
  t.equal(l.config.greylist_delay, 300)
  t.equal(l.config.greylist_max_age, 35 * 86400)
  t.equal(l.config.greylist_retry_window, 2 * 86400)
  t.equal(l.config.greylist_auto_whitelist, 5)
  t.equal(l.config.greylist_ipv4_prefix, 24)
  t.equal(l.config.greylist_ipv6_prefix, 64)
  t.equal(l.config.db_path, '/var/mta/policyd-ts.sqlite')
  t.equal(l.config.fail_action, 'DUNNO')
  t.equal(l.config.debugLevel, 1)
  t.ok(CONFIG_KEYS.every((k) => l.sources[k] === 'default'))
})

t.test('precedence: command line > environment > file > default', async (t) => {
  const file = 'greylist_delay = 60\ngreylist_max_age = 10d  # comment\ndebugLevel=3\n'
  const l = load({ file, env: { POLICYD_TS_GREYLIST_DELAY: '120', POLICYD_TS_debuglevel: '2' }, cli: { greylist_delay: '7m' } })
  t.same(l.errors, [])
  t.equal(l.config.greylist_delay, 420)
  t.equal(l.sources.greylist_delay, 'command line')
  t.equal(l.config.debugLevel, 2)
  t.equal(l.sources.debugLevel, 'environment')
  t.equal(l.config.greylist_max_age, 864000)
  t.equal(l.sources.greylist_max_age, 'file')
})

t.test('value forms', async (t) => {
  const cases: Array<[ConfigKey, string, unknown]> = [
    ['greylist_delay', '300', 300], ['greylist_delay', '5m', 300], ['greylist_delay', '1h', 3600],
    ['greylist_delay', '1500ms', 1.5], ['greylist_max_age', '1w', 604800], ['greylist_delay', ' 2D ', 172800],
    ['greylist_enabled', 'no', false], ['greylist_enabled', 'Yes', true], ['greylist_enabled', 'off', false], ['greylist_enabled', '1', true],
    ['greylist_whitelist_clients', 'a, b c', ['a', 'b', 'c']], ['greylist_whitelist_clients', '', []],
    ['greylist_action', 'defer', 'DEFER'], ['db_corrupt_action', 'FAIL', 'fail'],
    ['fail_action', 'DEFER_IF_PERMIT Service unavailable', 'DEFER_IF_PERMIT Service unavailable'], ['fail_action', '450 4.7.1 later', '450 4.7.1 later'],
    ['greylist_ipv4_prefix', '32', 32], ['greylist_ipv6_prefix', '0', 0],
  ]
  for (const [key, raw, want] of cases) t.same(parseValue(key, raw), { value: want }, `${key}=${raw}`)
})

t.test('bad values name the key and the expected form', async (t) => {
  const cases: Array<[ConfigKey, string, RegExp]> = [
    ['greylist_delay', 'soon', /greylist_delay: expected a duration/],
    ['greylist_delay', '0', /at least 1s/],
    ['greylist_ipv4_prefix', '33', /from 0 to 32/],
    ['debugLevel', '5', /debugLevel: expected an integer from 0 to 4/],
    ['debugLevel', '1.5', /integer/],
    ['greylist_enabled', 'maybe', /yes or no/],
    ['greylist_action', 'REJECT', /one of DEFER_IF_PERMIT, DEFER, 450, 451/],
    ['fail_action', 'ACCEPT', /access\(5\) action/],
    ['greylist_text', 'a\nb', /single-line/],
  ]
  for (const [key, raw, want] of cases) {
    const r = parseValue(key, raw)
    t.ok('error' in r && want.test(r.error), `${key}=${JSON.stringify(raw)} -> ${'error' in r ? r.error : 'accepted'}`)
  }
})

t.test('errors are collected, the default is used meanwhile', async (t) => {
  const l = load({ file: 'greylist_delay = never\nno_such_key = 1\n', configPath: '/etc/x.conf', env: { POLICYD_TS_BOGUS: '1' }, cli: { nope: '1' } })
  t.equal(l.config.greylist_delay, 300)
  t.match(l.errors.join('\n'), /\/etc\/x.conf:2: unknown key no_such_key/)
  t.match(l.errors.join('\n'), /\/etc\/x.conf: bad value "never" for greylist_delay/)
  t.match(l.errors.join('\n'), /POLICYD_TS_BOGUS: unknown key/)
  t.match(l.errors.join('\n'), /unknown option --nope/)
})

t.test('an explicit config file that is missing is an error', async (t) => {
  const l = load({ configPath: '/nonexistent.conf' })
  t.match(l.errors[0], /cannot read config file \/nonexistent.conf/)
  const e = load({ env: { POLICYD_TS_CONFIG: '/also-missing.conf' } })
  t.match(e.errors[0], /also-missing/)
})

t.test('greylist_retry_window shorter than greylist_delay is refused', async (t) => {
  const l = load({ cli: { greylist_delay: '1h', greylist_retry_window: '30m' } })
  t.match(l.errors.join('\n'), /greylist_retry_window .* must be longer than greylist_delay/)
})
