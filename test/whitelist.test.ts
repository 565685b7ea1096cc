import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { parseIp } from '../lib/normalize'
import { parseClientWhitelist, parseRecipientWhitelist, WhitelistFiles } from '../lib/greylist/whitelist'
import { createGreylistWhitelists, describeFiles } from '../lib/greylist/lists'
import { loadConfig } from '../lib/config'

const fixtures = path.join(__dirname, 'fixtures')

t.test('client whitelist in postgrey format: got/want', async (t) => {
  const { list, errors } = parseClientWhitelist(fs.readFileSync(path.join(fixtures, 'whitelist_clients'), 'utf8'), 'whitelist_clients')
  t.same(errors, [])
  const cases: Array<[string, string, string | null]> = [
    ['mail.partner.example', '192.0.2.1', 'whitelist_clients:3 mail.partner.example'],
    ['MAIL.PARTNER.EXAMPLE.', '192.0.2.1', 'whitelist_clients:3 mail.partner.example'],
    ['a.outbound.bigmailer.example', '192.0.2.1', 'whitelist_clients:4 outbound.bigmailer.example'],
    ['evil-outbound.bigmailer.example', '192.0.2.1', null],
    ['xoutbound.bigmailer.example', '192.0.2.1', null],
    ['outbound.bigmailer.example.evil.example', '192.0.2.1', null],
    ['smtp-out12.pool.example', '192.0.2.1', 'whitelist_clients:6 /^smtp-out[0-9]+\\.pool\\.example$/'],
    ['smtp-outX.pool.example', '192.0.2.1', null],
    ['unknown', '192.0.2.17', 'whitelist_clients:8 192.0.2.17'],
    ['unknown', '::ffff:192.0.2.17', 'whitelist_clients:8 192.0.2.17'],
    ['unknown', '192.0.2.18', null],
    ['unknown', '198.51.100.127', 'whitelist_clients:9 198.51.100.0/25'],
    ['unknown', '198.51.100.128', null],
    ['unknown', '203.0.113.250', 'whitelist_clients:10 203.0.113'],
    ['unknown', '10.20.255.1', 'whitelist_clients:11 10.20'],
    ['unknown', '10.21.0.1', null],
    ['unknown', '2001:db8:5:ffff::1', 'whitelist_clients:12 2001:db8:5::/48'],
    ['unknown', '2001:db8:6::1', 'whitelist_clients:13 2001:db8:6::1'],
    ['unknown', '2001:db8:6::2', null],
    ['unknown', 'garbage', null],
  ]
  for (const [name, addr, want] of cases) t.equal(list.match(name, parseIp(addr)), want, `${name} ${addr}`)
})

t.test('bad client lines are reported with file and line, and skipped', async (t) => {
  const { list, errors } = parseClientWhitelist('good.example\n/unclosed(/\n300.1.2.3\n2001:db8::/200\nbad name!\n', 'f')
  t.equal(list.size, 1)
  t.match(errors[0], /^f:2: bad regular expression/)
  t.match(errors[1], /^f:3: bad IP address or network/)
  t.match(errors[2], /^f:4: bad IP address or network/)
  t.match(errors[3], /^f:5: not a host name/)
})

t.test('recipient whitelist in postgrey format: got/want', async (t) => {
  const { list, errors } = parseRecipientWhitelist(fs.readFileSync(path.join(fixtures, 'whitelist_recipients'), 'utf8'), 'whitelist_recipients')
  t.same(errors, [])
  const cases: Array<[string, string | null]> = [
    ['postmaster@anything.example', 'whitelist_recipients:2 postmaster@'],
    ['Postmaster+x@anything.example', 'whitelist_recipients:2 postmaster@'],
    ['abuse@example.org', 'whitelist_recipients:3 abuse@'],
    ['spamtrap@example.org', 'whitelist_recipients:4 spamtrap@example.org'],
    ['spamtrap+tag@example.org', 'whitelist_recipients:4 spamtrap@example.org'],
    ['spamtrap@example.com', null],
    ['anyone@lists.example.net', 'whitelist_recipients:5 lists.example.net'],
    ['anyone@sub.lists.example.net', 'whitelist_recipients:5 lists.example.net'],
    ['anyone@xlists.example.net', null],
    ['noreply-abc@example.com', 'whitelist_recipients:6 /^noreply-[a-z]+@example\\.com$/'],
    ['bob@example.org', null],
  ]
  for (const [rcpt, want] of cases) t.equal(list.match(rcpt), want, rcpt)
})

t.test('files: merged, reread when changed (at most once per interval), missing ones logged once', async (t) => {
  const dir = t.testdir({ a: '192.0.2.1\n', b: 'example.net\n' })
  const logs: Array<[number, string]> = []
  let now = 0
  const files = new WhitelistFiles([path.join(dir, 'a'), path.join(dir, 'b'), path.join(dir, 'missing')], 'client', {
    log: (level, msg) => logs.push([level, msg]),
    now: () => now,
    checkIntervalMs: 1000,
  })
  t.match(files.match('unknown', parseIp('192.0.2.1')), /a:1 192.0.2.1/)
  t.match(files.match('mx.example.net', null), /b:1 example.net/)
  t.equal(logs.filter(([, m]) => m.includes(`${path.join(dir, 'missing')} unreadable`)).length, 1)
  t.equal(logs.filter(([, m]) => m.includes(`${path.join(dir, 'missing')} unreadable`))[0][0], 0, 'a named missing file is an error line')

  fs.writeFileSync(path.join(dir, 'a'), '192.0.2.2\n# now another address, and a longer file\n')
  t.match(files.match('unknown', parseIp('192.0.2.1')), /192.0.2.1/, 'not rechecked within the interval')
  now += 1000
  t.equal(files.match('unknown', parseIp('192.0.2.1')), null, 'rewritten file picked up')
  t.match(files.match('unknown', parseIp('192.0.2.2')), /a:1 192.0.2.2/)

  fs.rmSync(path.join(dir, 'b'))
  now += 1000
  t.equal(files.match('mx.example.net', null), null, 'deleted file: empty')
  now += 1000
  files.match('mx.example.net', null)
  t.equal(logs.filter(([, m]) => m.includes(`${path.join(dir, 'b')} unreadable`)).length, 1, 'deletion logged once')
  t.equal(logs.filter(([, m]) => m.includes(`${path.join(dir, 'missing')} unreadable`)).length, 1, 'the missing file not logged again')

  const st = files.status()
  t.same(st.map((s) => [path.basename(s.path), s.entries, s.missing]), [['a', 1, false], ['b', 0, true], ['missing', 0, true]])
})

t.test('a missing optional (default) file is logged at level 3 only', async (t) => {
  const dir = t.testdir({})
  const logs: Array<[number, string]> = []
  const p = path.join(dir, 'absent')
  const files = new WhitelistFiles([p], 'recipient', { log: (l, m) => logs.push([l, m]), now: () => 0, optional: new Set([p]) })
  t.equal(files.match('x@example.org'), null)
  t.same(logs.map(([l]) => l), [3])
})

function configWith(cli: Record<string, string>) {
  return loadConfig({ cli, configPath: '/dev/null', env: {}, readFile: () => '' }).config
}

t.test('a fresh install (no whitelist file) lets mail to postmaster@ and abuse@ through; the key can empty that (issue 9 item 5)', async (t) => {
  const dir = t.testdir()
  const missing = { greylist_whitelist_recipients: path.join(dir, 'no-such-file') }
  const fresh = createGreylistWhitelists(configWith(missing), () => undefined, () => 0)
  t.equal(fresh.matchRecipient('postmaster@example.org'), 'greylist_whitelist_recipient_entries postmaster@')
  t.equal(fresh.matchRecipient('Abuse+report@Sub.Example.NET'), 'greylist_whitelist_recipient_entries abuse@')
  t.equal(fresh.matchRecipient('bob@example.org'), null)
  t.equal(fresh.matchRecipient('postmaster-not@example.org'), null)

  const emptied = createGreylistWhitelists(configWith({ ...missing, greylist_whitelist_recipient_entries: '' }), () => undefined, () => 0)
  t.equal(emptied.matchRecipient('postmaster@example.org'), null, 'an empty value greylists them too')

  const own = createGreylistWhitelists(configWith({ greylist_whitelist_recipients: path.join(fixtures, 'whitelist_recipients') }), () => undefined, () => 0)
  t.equal(own.matchRecipient('postmaster@example.org'), `${path.join(fixtures, 'whitelist_recipients')}:2 postmaster@`, 'a file entry is named first')
})

/** The example lines of a shipped file, with their "#" removed. */
function uncommented(text: string): string {
  return text.replace(/^#(?=[^\s#])/gm, '')
}

t.test('the shipped example whitelists are valid as they are and with their example entries in use', async (t) => {
  const examples = path.join(__dirname, '..', 'examples')
  for (const [name, parse] of [['whitelist_clients', parseClientWhitelist], ['whitelist_recipients', parseRecipientWhitelist]] as const) {
    const text = fs.readFileSync(path.join(examples, name), 'utf8')
    t.same(parse(text, name).errors, [], `${name} as shipped`)
    const inUse = parse(uncommented(text), name)
    t.same(inUse.errors, [], `${name} with its examples in use`)
    t.ok(inUse.list.size >= 2, `${name} shows entries (${inUse.list.size})`)
  }
})

t.test('client lines: what each is read as (regex, network, name or bad), and how it matches', async (t) => {
  const { list, errors } = parseClientWhitelist(
    [
      '/^Relay[0-9]\\.example$/  # a regex, case-insensitive, with a comment',
      '  .Dotted.Example.  ',
      '/', 'a/', '/b',
      '192.0.2', '192.0.22.1/24', 'mx1.2.3.4', '1.2.3.4/24x',
      '2001:db8::/32', '2001:db8:1::/48',
      '//', '198.51.100',
    ].join('\n'),
    'f',
  )
  t.same(errors, [
    'f:3: not a host name, address, network or /regex/: /',
    'f:4: not a host name, address, network or /regex/: a/',
    'f:5: not a host name, address, network or /regex/: /b',
    'f:9: not a host name, address, network or /regex/: 1.2.3.4/24x',
    'f:12: not a host name, address, network or /regex/: //',
  ])
  t.equal(list.size, 8, 'one regex, two names, five networks')
  const cases: Array<[string, string | null, string | null]> = [
    ['RELAY7.example', null, 'f:1 /^Relay[0-9]\\.example$/'],
    ['relay7.example.evil', null, null],
    ['mx.dotted.example', null, 'f:2 .Dotted.Example.'],
    ['dotted.example', null, 'f:2 .Dotted.Example.'],
    ['MX1.2.3.4', null, 'f:8 mx1.2.3.4'],
    ['unknown', '192.0.2.200', 'f:6 192.0.2'],
    ['unknown', '192.0.22.77', 'f:7 192.0.22.1/24'],
    ['unknown', '2001:db8:2::1', 'f:10 2001:db8::/32'],
    ['unknown', '2001:db8:1::1', 'f:10 2001:db8::/32'],
    ['unknown', '198.51.100.7', 'f:13 198.51.100'],
    ['anything.example', '203.0.113.1', null],
  ]
  for (const [name, addr, want] of cases) t.equal(list.match(name, addr === null ? null : parseIp(addr)), want, `${name} ${addr}`)
})

t.test('a regex needs a slash at both ends: longer lines with one slash are bad lines, not regexes', async (t) => {
  const clients = parseClientWhitelist('mx.example/\n/mx.example\n', 'f')
  t.same(clients.errors, ['f:1: not a host name, address, network or /regex/: mx.example/', 'f:2: not a host name, address, network or /regex/: /mx.example'])
  t.equal(clients.list.size, 0)
  t.equal(clients.list.match('mx.example', null), null, 'neither is read as a regex that matches mx.example')
  const rcpts = parseRecipientWhitelist('example.org/\n/example.org\n', 'f')
  t.same(rcpts.errors, ['f:1: not a domain, user@, user@domain or /regex/: example.org/', 'f:2: not a domain, user@, user@domain or /regex/: /example.org'])
  t.equal(rcpts.list.match('vip@example.org'), null)
})

t.test('a client name matches only a real, confirmed name; networks alone need no name', async (t) => {
  const names = parseClientWhitelist('unknown\nexample.com\n', 'f').list
  t.equal(names.match('unknown', null), null, "Postfix's 'unknown' (no confirmed name) matches no name entry")
  t.equal(names.match('', null), null)
  t.equal(names.match('mx.example.com', null), 'f:2 example.com')
  const regexOnly = parseClientWhitelist('/^$/\n/unknown/\n', 'f').list
  t.equal(regexOnly.match('unknown', null), 'f:2 /unknown/', 'a regex sees every name, unknown included')
  t.equal(regexOnly.match('', null), 'f:1 /^$/')
  const netOnly = parseClientWhitelist('192.0.2.0/24\n', 'f').list
  t.equal(netOnly.match('mx.example.com', parseIp('198.51.100.1')), null)
  t.equal(netOnly.size, 1)
})

t.test('merged files: the first file naming an entry is the one reported', async (t) => {
  const dir = t.testdir({ one: 'example.com\n192.0.2.0/24\n192.0.3.0/24\n', two: 'example.com\n192.0.2.0/24\n192.0.3.0/24\n/x/\n' })
  const clients = new WhitelistFiles([path.join(dir, 'one'), path.join(dir, 'two')], 'client', { log: () => undefined, now: () => 0 })
  t.equal(clients.match('example.com', null), `${path.join(dir, 'one')}:1 example.com`)
  t.equal(clients.match('unknown', parseIp('192.0.2.9')), `${path.join(dir, 'one')}:2 192.0.2.0/24`)
  t.equal(clients.match('unknown', parseIp('192.0.3.9')), `${path.join(dir, 'one')}:3 192.0.3.0/24`, 'a second network of the same length stays')
  t.equal(clients.match('x', null), `${path.join(dir, 'two')}:4 /x/`)
  const rdir = t.testdir({ one: 'example.com\nbob@\nann@example.org\n', two: 'example.com\nbob@\nann@example.org\n' })
  const rcpts = new WhitelistFiles([path.join(rdir, 'one'), path.join(rdir, 'two')], 'recipient', { log: () => undefined, now: () => 0 })
  for (const [rcpt, line] of [['x@example.com', 1], ['bob@example.net', 2], ['ann@example.org', 3]] as const) {
    t.equal(rcpts.match(rcpt), `${path.join(rdir, 'one')}:${line} ${rcpt === 'x@example.com' ? 'example.com' : rcpt === 'bob@example.net' ? 'bob@' : 'ann@example.org'}`, rcpt)
  }
  t.same(rcpts.status().map((s) => s.entries), [3, 3])
})

t.test('recipient lines: what each is read as, and how a recipient matches', async (t) => {
  const { list, errors } = parseRecipientWhitelist(['Sales@', '@', '@example.com', 'a/', '/b', '/', 'Example.NET.', '/^Info@/', 'x.example/path', '+Vip@', '//'].join('\n'), 'f')
  t.same(errors, [
    'f:2: not a domain, user@, user@domain or /regex/: @',
    'f:3: not a domain, user@, user@domain or /regex/: @example.com',
    'f:4: not a domain, user@, user@domain or /regex/: a/',
    'f:5: not a domain, user@, user@domain or /regex/: /b',
    'f:6: not a domain, user@, user@domain or /regex/: /',
    'f:9: not a domain, user@, user@domain or /regex/: x.example/path',
    'f:11: not a domain, user@, user@domain or /regex/: //',
  ])
  t.equal(list.size, 4)
  const cases: Array<[string, string | null]> = [
    ['+vip@example.org', 'f:10 +Vip@'],
    ['sales@anywhere.example', 'f:1 Sales@'],
    ['sales', 'f:1 Sales@', ],
    ['+sales@example.org', null],
    ['bob@mx.example.net.', 'f:7 Example.NET.'],
    ['example.net', null],
    ['INFO@example.org', 'f:8 /^Info@/'],
    ['bob@example.org', null],
  ]
  for (const [rcpt, want] of cases) t.equal(list.match(rcpt), want, rcpt)
  t.equal(parseRecipientWhitelist('', 'f').list.match(''), null, 'an empty list matches nothing')
})

t.test('a file is reread only after its interval; a reread is logged, the first read is not; bad lines are logged', async (t) => {
  const dir = t.testdir({ a: 'example.com\nbad name!\n' })
  const logs: Array<[number, string]> = []
  let now = 5000
  const files = new WhitelistFiles([path.join(dir, 'a')], 'client', { log: (l, m) => logs.push([l, m]), now: () => now })
  t.match(files.match('example.com', null), /a:1/)
  t.same(logs, [[0, `client whitelist: ${path.join(dir, 'a')}:2: not a host name, address, network or /regex/: bad name! (line ignored)`]])
  logs.length = 0
  fs.writeFileSync(path.join(dir, 'a'), 'example.org\n')
  now += 999
  t.match(files.match('example.com', null), /a:1/, 'within the default interval of 1 s: not checked')
  now += 1
  t.equal(files.match('example.com', null), null)
  t.same(logs, [[2, `client whitelist ${path.join(dir, 'a')} reread: 1 entries`]])
  logs.length = 0
  now += 1000
  t.match(files.match('example.org', null), /a:1/)
  t.same(logs, [], 'an unchanged file is not logged again')
})

t.test('--test-mode describes each whitelist file: entries, bad lines, absence', async (t) => {
  const dir = t.testdir({ clients: 'example.com\nbad name!\n192.0.2.0/24\n', recipients: 'postmaster@\n' })
  const lines = describeFiles(configWith({
    greylist_whitelist_clients: `${path.join(dir, 'clients')}, ${path.join(dir, 'absent')}`,
    greylist_whitelist_recipients: path.join(dir, 'recipients'),
  }))
  t.same(lines, [
    `client whitelist ${path.join(dir, 'clients')}: 2 entries, 1 bad lines (ignored):`,
    `  ${path.join(dir, 'clients')}:2: not a host name, address, network or /regex/: bad name!`,
    `client whitelist ${path.join(dir, 'absent')}: missing (treated as empty)`,
    `recipient whitelist ${path.join(dir, 'recipients')}: 1 entries`,
  ])
})

const DEFAULT_WHITELISTS = ['clients', 'clients.local', 'recipients', 'recipients.local'].map((f) => `/etc/policyd-ts/whitelist_${f}`)

t.test('the shipped default whitelist paths may be absent (level 3); any other missing path is an error (level 0)', {
  skip: DEFAULT_WHITELISTS.some((f) => fs.existsSync(f)) && 'a default whitelist file exists on this machine (/etc/policyd-ts)',
}, async (t) => {
  const dir = t.testdir()
  const levels = (cli: Record<string, string>): number[] => {
    const logs: number[] = []
    const lists = createGreylistWhitelists(configWith(cli), (level) => logs.push(level), () => 0)
    lists.matchClient('mx.example.com', null)
    lists.matchRecipient('bob@example.org')
    return logs
  }
  t.same(levels({}), [3, 3, 3, 3], 'the four default files, absent on a test machine')
  t.same(levels({ greylist_whitelist_clients: path.join(dir, 'gone'), greylist_whitelist_recipients: '' }), [0])
})
