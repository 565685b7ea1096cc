// The SPF policy keys as the check uses them (lib/spf/policy.ts), and
// policyd-spf's Per_User file: recipient,Key=value|Key=value lines.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { loadConfig, type Config } from '../lib/config'
import { createSpfContext } from '../lib/spf/context'
import { inDomainList, openPerUser, parsePerUser, toPolicy } from '../lib/spf/policy'

function config(cli: Record<string, string> = {}): Config {
  const l = loadConfig({ cli, configPath: '/dev/null', env: {}, readFile: () => '' })
  if (l.errors.length) throw new Error(l.errors.join('; '))
  return l.config
}

t.test('toPolicy: the keys in the form the check uses', async (t) => {
  const p = toPolicy(config({
    TestOnly: '0', Whitelist_Lookup_Time: '3', Domain_Whitelist: 'Example.COM., b.example', HELO_Whitelist: 'MX.Example.NET.',
    Domain_Whitelist_PTR: 'Relay.Example.', Reject_Not_Pass_Domains: 'Strict.Example.', skip_addresses: '127.0.0.0/8, ::1', Whitelist: '192.0.2.77/24',
  }))
  t.equal(p.dryRun, true, 'TestOnly = 0 is a dry run')
  t.equal(toPolicy(config({ TestOnly: '1' })).dryRun, false)
  t.equal(p.whitelistLookupMs, 3000)
  t.same(p.domainWhitelist, ['example.com', 'b.example'])
  t.same(p.heloWhitelist, ['mx.example.net'])
  t.same(p.domainWhitelistPtr, ['relay.example'])
  t.same(p.rejectNotPassDomains, ['strict.example'])
  t.same(p.skipAddresses.map((c) => `${c.net.text}/${c.prefix}`), ['127.0.0.0/8', '::1/128'])
  t.same(p.whitelist.map((c) => `${c.net.text}/${c.prefix}`), ['192.0.2.0/24'])
  // loadConfig drops such items already; a value given another way must not put a hole into the list.
  t.same(toPolicy({ ...config(), Whitelist: ['not-a-network', '198.51.100.7'] }).whitelist.map((c) => `${c.net.text}/${c.prefix}`), ['198.51.100.7/32'])
})

t.test('inDomainList: the domain itself or below it, on a label boundary, any case, a final dot ignored', async (t) => {
  const list = ['example.com']
  t.ok(inDomainList('example.com', list))
  t.ok(inDomainList('Mail.Example.COM.', list))
  t.notOk(inDomainList('badexample.com', list))
  t.notOk(inDomainList('example.com.evil', list))
  t.notOk(inDomainList('', ['']), 'an empty name is in no list')
  t.notOk(inDomainList('.', ['']))
})

t.test('Per_User lines: bad lines and values reported with their line, the rest counts', async (t) => {
  const base = config({ skip_addresses: '127.0.0.0/8' })
  const text = [
    '# comment line',
    'no comma here',
    'Strict@Example.ORG , Mail_From_reject=Softfail | Reason_Message=Strict: {spf}  # trailing comment',
    'strict@example.org,Mail_From_reject=Fail',
    'keys@example.org,|Lookup_Time=5|Mail_From_reject',
    'nets@example.org,skip_addresses=10.0.0.0/8|Whitelist=192.0.2.0/24',
    'badnet@example.org,Whitelist=not-a-network',
    '',
  ].join('\n')
  const { policies, errors } = parsePerUser(text, base, 'f')
  t.same(errors, [
    'f:2: expected recipient,Key=value|...: no comma here',
    'f:5: empty key',
    'f:5: Lookup_Time cannot be set per user',
    errors[3],
    'f:7: Whitelist holds an item that is not a network; the global value is used',
  ])
  t.match(errors[3], /^f:5: .*Mail_From_reject/, 'a key without a value is a bad value')
  t.same([...policies.keys()], ['strict@example.org', 'keys@example.org', 'nets@example.org', 'badnet@example.org'])
  const strict = policies.get('strict@example.org')!
  t.equal(strict.mailFromReject, 'Softfail', 'the first line of a recipient counts')
  t.equal(strict.reasonMessage, 'Strict: {spf}')
  t.same(strict.skipAddresses.map((c) => `${c.net.text}/${c.prefix}`), ['127.0.0.0/8'], 'unset keys keep the global value')
  t.same(policies.get('nets@example.org')!.skipAddresses.map((c) => `${c.net.text}/${c.prefix}`), ['10.0.0.0/8'])
  t.same(policies.get('badnet@example.org')!.whitelist, [], 'the global (empty) Whitelist')
})

t.test('Per_User file: read once a second at most, its problems logged, any case of recipient', async (t) => {
  const dir = t.testdir({ userconf: 'a@example.org,Mail_From_reject=Softfail\nbad line\n' })
  const file = path.join(dir, 'userconf')
  const logs: Array<[number, string]> = []
  let now = 10_000
  const per = openPerUser(config({ Per_User: `text, ${file}` }), (l, m) => logs.push([l, m]), () => now)
  t.equal(per.policyFor('A@Example.ORG')?.mailFromReject, 'Softfail')
  t.equal(per.policyFor('b@example.org'), null)
  t.same(logs, [[0, `Per_User: ${file}:2: expected recipient,Key=value|...: bad line`], [2, `Per_User file ${file} read: 1 recipients`]])
  logs.length = 0
  fs.writeFileSync(file, 'a@example.org,Mail_From_reject=Fail\n')
  fs.utimesSync(file, new Date(), new Date(Date.now() + 5000))
  now += 999
  t.equal(per.policyFor('a@example.org')?.mailFromReject, 'Softfail', 'not checked again within a second')
  now += 1
  t.equal(per.policyFor('a@example.org')?.mailFromReject, 'Fail')
  fs.rmSync(file)
  now += 1000
  t.equal(per.policyFor('a@example.org'), null)
  t.match(logs.at(-1), [0, `Per_User file ${file} unreadable, no per-user settings: `])
})

t.test('Per_User lines: blank and indented comment lines skipped; a key without "=" has the empty value', async (t) => {
  const base = config({ Reason_Message: 'Global: {spf}', Reject_Not_Pass_Domains: 'strict.example' })
  const text = ['   ', '\t# indented comment', 'a@example.org, Reason_Message | Reject_Not_Pass_Domains ', ''].join('\n')
  const { policies, errors } = parsePerUser(text, base, 'f')
  t.same(errors, [])
  t.same([...policies.keys()], ['a@example.org'])
  t.equal(policies.get('a@example.org')!.reasonMessage, '')
  t.same(policies.get('a@example.org')!.rejectNotPassDomains, [])
})

t.test('Per_User = text , /path: blanks on both sides of the comma', async (t) => {
  const dir = t.testdir({ userconf: 'a@example.org,Mail_From_reject=Softfail\n' })
  const file = path.join(dir, 'userconf')
  const logs: string[] = []
  const per = openPerUser(config({ Per_User: `text , ${file}` }), (_l, m) => logs.push(m), () => 0)
  t.equal(per.policyFor('a@example.org')?.mailFromReject, 'Softfail')
  t.same(logs, [`Per_User file ${file} read: 1 recipients`])
})

t.test('createSpfContext: a Per_User file only when Per_User is set', async (t) => {
  const dir = t.testdir({ userconf: 'a@example.org,Mail_From_reject=Softfail\n' })
  const make = (perUser: string): ReturnType<typeof createSpfContext> => {
    const ctx = createSpfContext(config({ Per_User: perUser, dns_servers: '127.0.0.1:53' }), { hostname: 'mx.example.org', log: () => {}, now: () => 0 })
    t.teardown(() => ctx.resolver.close())
    return ctx
  }
  t.equal(make('').perUser, null)
  t.equal(make(`text,${path.join(dir, 'userconf')}`).perUser?.policyFor('a@example.org')?.mailFromReject, 'Softfail')
})
