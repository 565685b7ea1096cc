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
    ['debugLevel', '-1', -1], ['debugLevel', '5', 5],
    ['HELO_reject', 'spf_not_pass', 'SPF_Not_Pass'], ['Mail_From_reject', 'NO_CHECK', 'No_Check'],
    ['PermError_reject', 'True', true], ['Hide_Receiver', 'Yes', true], ['SPF_Enhanced_Status_Codes', 'No', false],
    ['Lookup_Time', '20', 20], ['Header_Type', 'ar', 'AR'],
    ['skip_addresses', '127.0.0.0/8,::ffff:127.0.0.0/104,::1', ['127.0.0.0/8', '::ffff:127.0.0.0/104', '::1']],
  ]
  for (const [key, raw, want] of cases) t.same(parseValue(key, raw), { value: want }, `${key}=${raw}`)
})

t.test('bad values name the key and the expected form', async (t) => {
  const cases: Array<[ConfigKey, string, RegExp]> = [
    ['greylist_delay', 'soon', /greylist_delay: expected a duration/],
    ['greylist_delay', '0', /at least 1s/],
    ['greylist_ipv4_prefix', '33', /from 0 to 32/],
    ['debugLevel', '6', /debugLevel: expected an integer from -1 to 5/],
    ['HELO_reject', 'Reject', /one of Fail, SPF_Not_Pass, Softfail, Null, False, No_Check/],
    ['Mail_From_reject', 'Null', /one of Fail, SPF_Not_Pass, Softfail, False, No_Check/],
    ['TestOnly', '2', /from 0 to 1/],
    ['Lookup_Time', '0', /from 1s to 300s/],
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

const fixture = (name: string): string => require('node:fs').readFileSync(require('node:path').join(__dirname, 'fixtures', name), 'utf8')

t.test("Debian's default policyd-spf.conf is read unchanged", async (t) => {
  const l = load({ file: fixture('policyd-spf.debian.conf'), configPath: '/etc/postfix-policyd-spf-python/policyd-spf.conf' })
  t.same(l.errors, [])
  t.same(l.notices, [])
  t.equal(l.config.debugLevel, 1)
  t.equal(l.config.TestOnly, 1)
  t.equal(l.config.HELO_reject, 'Fail')
  t.equal(l.config.Mail_From_reject, 'Fail')
  t.equal(l.config.PermError_reject, false)
  t.equal(l.config.TempError_Defer, false)
  t.same(l.config.skip_addresses, ['127.0.0.0/8', '::ffff:127.0.0.0/104', '::1'])
  for (const key of ['debugLevel', 'TestOnly', 'HELO_reject', 'Mail_From_reject', 'PermError_reject', 'TempError_Defer', 'skip_addresses'] as const) {
    t.equal(l.sources[key], 'file', `${key} from the file`)
  }
})

t.test('a policyd-spf.conf with every option is read, the milter-only keys noted', async (t) => {
  const l = load({ file: fixture('policyd-spf.every-option.conf'), configPath: '/etc/x/policyd-spf.conf' })
  t.same(l.errors, [])
  const c = l.config
  t.same(
    [c.debugLevel, c.TestOnly, c.HELO_reject, c.Mail_From_reject, c.PermError_reject, c.TempError_Defer],
    [2, 0, 'SPF_Not_Pass', 'Softfail', true, true],
  )
  t.equal(c.HELO_pass_restriction, 'helo_passed_spf')
  t.equal(c.Mail_From_pass_restriction, 'spf_fin, passed_spf')
  t.equal(c.No_Mail, true)
  t.same(c.Reject_Not_Pass_Domains, ['aol.com', 'hotmail.com'])
  t.equal(c.Prospective, '192.168.0.4')
  t.same(c.skip_addresses, ['127.0.0.0/8', '::ffff:127.0.0.0/104', '::1', '10.0.0.0/8'])
  t.same(c.Whitelist, ['192.168.0.0/31', '192.168.1.12'])
  t.same(c.HELO_Whitelist, ['relay.example.com', 'sender.example.org'])
  t.same(c.Domain_Whitelist, ['pobox.com', 'trustedforwarder.org'])
  t.same(c.Domain_Whitelist_PTR, ['yahoo.com'])
  t.equal(c.Per_User, 'text,/etc/postfix-policyd-spf-python/userconf')
  t.equal(c.SPF_Enhanced_Status_Codes, false)
  t.equal(c.Header_Type, 'AR')
  t.equal(c.Hide_Receiver, true)
  t.equal(c.Authserv_Id, 'mx.example.com')
  t.same([c.Lookup_Time, c.Whitelist_Lookup_Time, c.Void_Limit], [30, 5, 3])
  t.equal(c.Reason_Message, 'Message {rejectdefer} by SPF: {spf} ({url})')
  t.equal(c.Mock, false)
  t.equal(l.notices.length, 8, 'each key read but not used is noted')
  t.match(l.notices.join('\n'), /policyd-spf.conf:30: defaultSeedOnly = 1 is read but not used: deprecated/)
  t.match(l.notices.join('\n'), /Socket = \/var\/run\/pyspf-milter.sock is read but not used: pyspf-milter only/)
})

t.test('list items and rules between keys are checked', async (t) => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ skip_addresses: '127.0.0.0/8, 10.0.0.0/33' }, /skip_addresses: "10.0.0.0\/33" is not an IP address or network/],
    [{ Whitelist: 'relay.example' }, /Whitelist: "relay.example" is not an IP address/],
    [{ Domain_Whitelist: 'ok.example, bad_domain..example' }, /Domain_Whitelist: "bad_domain..example" is not a domain name/],
    [{ HELO_Whitelist: 'a b@c' }, /HELO_Whitelist: "b@c" is not a domain name/],
    [{ dns_servers: '127.0.0.1:99999' }, /dns_servers: "127.0.0.1:99999" is not ip/],
    [{ dns_servers: 'ns.example' }, /dns_servers: "ns.example"/],
    [{ Prospective: '192.0.2.300' }, /Prospective: "192.0.2.300" is not an IP address/],
    [{ Per_User: '/etc/userconf' }, /Per_User: .* must be text,\/path/],
    [{ Header_Type: 'AR', Authserv_Id: '' }, /Header_Type AR needs an Authserv_Id/],
    [{ Reason_Message: 'Rejected: {reason}' }, /Reason_Message: unknown field \{reason\}/],
  ]
  for (const [cli, want] of cases) t.match(load({ cli }).errors.join('\n'), want, JSON.stringify(cli))
  const ok = load({ cli: { dns_servers: '127.0.0.1:5353, [2001:db8::53]:53, 2001:db8::1, 192.0.2.53', Header_Type: 'AR' } })
  t.same(ok.errors, [])
})
