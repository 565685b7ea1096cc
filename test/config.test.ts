import t from 'tap'
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
  const file = 'greylist_delay = 60\n# comment\ngreylist_max_age = 10d\ndebugLevel=3\n'
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

t.test('errors are collected with where they were written; a bad setting is ignored', async (t) => {
  const l = load({ file: 'greylist_delay = never\nno_such_key = 1\n', configPath: '/etc/x.conf', env: { POLICYD_TS_BOGUS: '1' }, cli: { nope: '1' } })
  t.equal(l.config.greylist_delay, 300)
  t.equal(l.sources.greylist_delay, 'default', 'the value in effect is labelled by where it comes from, not by the bad setting')
  const all = l.errors.join('\n')
  t.match(all, /\/etc\/x.conf:2: unknown key no_such_key \(line ignored\)/)
  t.match(all, /\/etc\/x.conf:1: bad value "never" for greylist_delay: expected a duration .*; ignored, so greylist_delay = 300s \(its default\)/)
  t.match(all, /POLICYD_TS_BOGUS: unknown key/)
  t.match(all, /unknown option --nope/)
})

t.test('lines the reader cannot take are errors naming file and line; nothing vanishes (issue 9 item 7)', async (t) => {
  const file = [
    '# a comment',
    'greylist_delay 60',
    'Hide Receiver = yes',
    'Reason_Message = Message {rejectdefer} due to: {spf} #see {url}',
    'greylist_max_age: 10d',
    'greylist_text = "4.2.0 come back later"',
    '= 5',
    'TestOnly = 0   # dry run first',
    '   # an indented comment',
    '',
  ].join('\n')
  const l = load({ file, configPath: '/etc/p.conf' })
  const at = (line: number): string => l.errors.find((e) => e.startsWith(`/etc/p.conf:${line}: `)) ?? `(no error at line ${line})`
  t.match(at(2), /not a "key = value" line \(the "=" between key and value is missing\): "greylist_delay 60" \(line ignored\)/)
  t.match(at(3), /unknown key "Hide Receiver" \(did you mean Hide_Receiver\?\)/)
  t.match(at(4), /"#" inside the value of Reason_Message: policyd-spf would end the value there/)
  t.match(at(5), /":" is not a separator/)
  t.match(at(6), /quotes around the value of greylist_text/)
  t.match(at(7), /no key before "="/)
  t.match(at(8), /"#" inside the value of TestOnly/)
  t.equal(l.errors.length, 7, l.errors.join('\n'))
  t.equal(l.config.greylist_delay, 300)
  t.equal(l.config.Reason_Message, OPTIONS.Reason_Message.default, 'not cut at the #')
  t.equal(l.config.greylist_max_age, 35 * 86400)
  t.equal(l.config.greylist_text, OPTIONS.greylist_text.default)
  t.equal(l.config.Hide_Receiver, true, 'a misspelt key counts as a bad setting of the key meant: Hide_Receiver takes its safe value')
})

t.test('values are read as policyd-spf reads them', async (t) => {
  const file = 'skip_addresses=127.0.0.0/8,10.0.0.0/8\r\n\tdebugLevel\t=\t2 \r\nfail_action = DEFER_IF_PERMIT see https://example.org/?a=b\nHELO_pass_restriction =\n'
  const l = load({ file, configPath: '/etc/p.conf' })
  t.same(l.errors, [])
  t.same(l.config.skip_addresses, ['127.0.0.0/8', '10.0.0.0/8'], 'no blanks around =, CRLF line ends')
  t.equal(l.config.debugLevel, 2, 'tabs around key and value')
  t.equal(l.config.fail_action, 'DEFER_IF_PERMIT see https://example.org/?a=b', 'the value runs to the end of the line, = included')
  t.equal(l.config.HELO_pass_restriction, '', 'an empty value')
  t.equal(l.sources.HELO_pass_restriction, 'file')
  const twice = load({ file: 'greylist_delay = 60\ngreylist_delay = 90\ngreylist_max_age = 1d\ngreylist_max_age = 1x\n', configPath: '/etc/p.conf' })
  t.equal(twice.config.greylist_delay, 90, 'the last line counts, as in policyd-spf')
  t.match(twice.notices.join('\n'), /\/etc\/p.conf:2: greylist_delay is set again \(first at line 1\)/)
  t.equal(twice.config.greylist_max_age, 86400, 'a bad last line is ignored: the line before counts')
})

t.test('one bad value leaves every other key as configured (issue 9 item 6)', async (t) => {
  const file = [
    'greylist_delay = 5x',
    'Mail_From_reject = Null',
    'Whitelist = 192.0.2.0/24, relay.example, 2001:db8::/32',
    'HELO_reject = SPF_Not_Pass',
    'fail_action = TEMPFAIL',
    'greylist_max_age = 10d',
  ].join('\n')
  const l = load({ file, configPath: '/etc/p.conf' })
  t.equal(l.config.greylist_delay, 300)
  t.equal(l.config.Mail_From_reject, 'Fail')
  t.same(l.config.Whitelist, ['192.0.2.0/24', '2001:db8::/32'], 'the bad entry is skipped, the good ones kept')
  t.equal(l.sources.Whitelist, 'file')
  t.equal(l.config.HELO_reject, 'SPF_Not_Pass')
  t.equal(l.config.fail_action, 'DUNNO')
  t.equal(l.config.greylist_max_age, 864000)
  const all = l.errors.join('\n')
  t.match(all, /^\/etc\/p.conf:1: bad value "5x" for greylist_delay: .*; ignored, so greylist_delay = 300s \(its default\)$/m)
  t.match(all, /^\/etc\/p.conf:2: bad value "Null" for Mail_From_reject: .*; ignored, so Mail_From_reject = Fail \(its default\)$/m)
  t.match(all, /^\/etc\/p.conf:3: Whitelist: "relay.example" is not an IP address or network .*\(entry skipped\)$/m)
  t.match(all, /^\/etc\/p.conf:5: bad value "TEMPFAIL" for fail_action: .*; ignored, so fail_action = DUNNO \(its default\)$/m)
  t.equal(l.errors.length, 4)
})

t.test('a bad setting falls back to a lower source, else to the default, else to a safer value', async (t) => {
  const lower = load({ file: 'greylist_delay = 60\n', configPath: '/etc/p.conf', env: { POLICYD_TS_GREYLIST_DELAY: 'soon' } })
  t.equal(lower.config.greylist_delay, 60)
  t.equal(lower.sources.greylist_delay, 'file')
  t.match(lower.errors[0], /^environment variable POLICYD_TS_GREYLIST_DELAY: bad value "soon" .*; ignored, so greylist_delay = 60s \(from the file\)$/)

  const privacy = load({ cli: { greylist_privacy: 'sure', Hide_Receiver: 'hidden' } })
  t.equal(privacy.config.greylist_privacy, true, 'storing addresses cannot be undone: hashes')
  t.equal(privacy.config.Hide_Receiver, true, 'a receiver shown to a sender cannot be undone: hidden')
  t.equal(privacy.sources.greylist_privacy, 'fallback')
  t.match(privacy.errors.join('\n'), /greylist_privacy: .*; ignored, so greylist_privacy = yes instead \(addresses written/)
  const keptNo = load({ file: 'greylist_privacy = no\n', configPath: '/etc/p.conf', cli: { greylist_privacy: 'sure' } })
  t.equal(keptNo.config.greylist_privacy, false, 'an explicit lower setting still counts')

  const prospective = load({ file: 'Prospective = 192.0.2.300\n', configPath: '/etc/p.conf' })
  t.equal(prospective.config.Prospective, '')
  t.equal(prospective.config.spf_enabled, false, 'checking the real client of outgoing mail would reject the users\' own mail')
  t.match(prospective.errors[0], /^\/etc\/p.conf:1: Prospective: "192.0.2.300" is not an IP address; ignored, so spf_enabled = no instead/)

  const window = load({ file: 'greylist_delay = 3d\n', configPath: '/etc/p.conf' })
  t.equal(window.config.greylist_delay, 300, 'a delay no retry could pass: both keys go back to their defaults')
  t.equal(window.config.greylist_retry_window, 2 * 86400)
  t.match(window.errors[0], /greylist_retry_window \(172800s, default\) must be longer than greylist_delay \(259200s, \/etc\/p.conf:1\).*; both ignored, so greylist_delay = 300s, greylist_retry_window = 172800s/)

  const ar = load({ cli: { Header_Type: 'AR', Authserv_Id: '' } })
  t.equal(ar.config.Header_Type, 'AR')
  t.equal(ar.config.Authserv_Id, 'HOSTNAME')
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
  const entries = load({ cli: { greylist_whitelist_recipient_entries: 'postmaster@, @example.org /(/, hostmaster@example.org example.net' } })
  t.same(entries.config.greylist_whitelist_recipient_entries, ['postmaster@', 'hostmaster@example.org', 'example.net'])
  t.match(entries.errors.join('\n'), /greylist_whitelist_recipient_entries: "@example.org" is not a domain, user@, user@domain or \/regex\/ \(entry skipped\)/)
  t.match(entries.errors.join('\n'), /greylist_whitelist_recipient_entries: "\/\(\/" is not an entry: bad regular expression/)
  t.equal(entries.errors.length, 2, entries.errors.join('\n'))
})

t.test('the shipped example config is valid as it is and with every setting in use; the package ships examples/', async (t) => {
  const root = require('node:path').join(__dirname, '..')
  const text: string = require('node:fs').readFileSync(require('node:path').join(root, 'examples', 'policyd-ts.conf'), 'utf8')
  const shipped = load({ file: text, configPath: '/etc/policyd-ts/policyd-ts.conf' })
  t.same(shipped.errors, [])
  t.ok(CONFIG_KEYS.every((k) => shipped.sources[k] === 'default'), 'as shipped it changes nothing')
  const inUse = load({ file: text.replace(/^#(?=\w+ = )/gm, ''), configPath: '/etc/policyd-ts/policyd-ts.conf' })
  t.same(inUse.errors, [])
  const set = CONFIG_KEYS.filter((k) => inUse.sources[k] === 'file')
  t.ok(set.length >= 20, `its settings are keys policyd-ts knows (${set.length})`)
  t.ok(set.includes('greylist_whitelist_recipient_entries'))
  const pkg = JSON.parse(require('node:fs').readFileSync(require('node:path').join(root, 'package.json'), 'utf8')) as { files: string[] }
  t.ok(pkg.files.includes('examples/'), 'package.json files lists examples/')
})
