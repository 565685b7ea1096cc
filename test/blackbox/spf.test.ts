// SPF through the built binary, with a DNS server on loopback: replies over
// stdio, policyd-spf.conf files read unchanged, the spfquery command.
import t from 'tap'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { assertWellFormed, BIN, isolatedArgs, rcptRequest, startPolicy } from '../helpers/policy-process'
import { startDnsServer, type DnsServer } from '../helpers/dns-server'

let dns: DnsServer
t.before(async () => {
  dns = await startDnsServer({
    'pass.test': [{ TXT: 'v=spf1 ip4:192.0.2.0/24 -all' }],
    'fail.test': [{ TXT: 'v=spf1 ip4:198.51.100.1 -all' }],
    'mail.example.net': [{ TXT: 'v=spf1 a -all' }, { A: '192.0.2.10' }],
    'slow.test': ['TIMEOUT'],
    // bücher.test and mail-bücher.test, by their A-labels.
    'xn--bcher-kva.test': [{ TXT: 'v=spf1 ip4:192.0.2.0/24 -all' }],
    'xn--mail-bcher-feb.test': [{ TXT: 'v=spf1 a -all' }, { A: '192.0.2.10' }],
  })
})
t.teardown(() => dns.close())

const fixtures = path.join(__dirname, '..', 'fixtures')
const spfArgs = (): string[] => ['--spf_enabled', 'yes', '--dns_servers', `127.0.0.1:${dns.port}`, '--Lookup_Time', '1', '--hostname', 'mx.example.org']

t.test('pipelined SPF decisions: header once per message, rejection, decision log', async (t) => {
  const dir = t.testdir()
  const p = startPolicy([...isolatedArgs(dir, ['--greylist_enabled', 'no']), ...spfArgs()])
  p.send(
    rcptRequest({ sender: 'a@pass.test', instance: 'm1', recipient: 'one@example.org' }) +
      rcptRequest({ sender: 'a@pass.test', instance: 'm1', recipient: 'two@example.org' }) +
      rcptRequest({ sender: 'b@fail.test', instance: 'm2' }) +
      rcptRequest({ sender: '', instance: 'm3' }) +
      rcptRequest({ sender: 'c@slow.test', instance: 'm4' }),
  )
  const replies = await p.replies(5, 15000)
  t.equal(replies[0], 'action=PREPEND Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.10; helo=mail.example.net; envelope-from="a@pass.test"; receiver=example.org')
  t.equal(replies[1], 'action=DUNNO')
  t.equal(replies[2], 'action=550 5.7.23 Message rejected due to: SPF fail - not authorized. Please see http://www.openspf.net/Why?s=mfrom;id=b@fail.test;ip=192.0.2.10;r=example.org')
  t.equal(replies[3], 'action=PREPEND Received-SPF: Pass (sender SPF authorized) identity=helo; client-ip=192.0.2.10; helo=mail.example.net; envelope-from="<>"; receiver=example.org')
  t.match(replies[4], /^action=PREPEND Received-SPF: Temperror \(mailfrom\)/, 'DNS timing out: the result goes into the header, mail flows')
  p.child.stdin.end()
  t.same(await p.exited(), { code: 0, signal: null })
  t.equal(p.stderr(), '')
  assertWellFormed(p.stdout())
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  t.match(log, /decision action=PREPEND check=spf reason=mailfrom-pass .*spf_helo=pass spf_mailfrom=pass/)
  t.match(log, /decision action=550 check=spf reason=mailfrom-fail /)
  t.match(log, /decision action=PREPEND check=spf reason=mailfrom-temperror /)
})

t.test("policyd-spf's files and argv work unchanged; nothing reaches stderr", async (t) => {
  const dir = t.testdir()
  // The config file as policyd-spf's master.cf line gives it: the one argument.
  const debian = startPolicy([path.join(fixtures, 'policyd-spf.debian.conf'), ...isolatedArgs(dir, ['--greylist_enabled', 'no']).slice(2), ...spfArgs()])
  debian.send(rcptRequest({ sender: 'b@fail.test' }) + rcptRequest({ sender: 'a@pass.test', instance: 'x2' }))
  const replies = await debian.replies(2)
  t.match(replies[0], /^action=550 5\.7\.23 /)
  t.match(replies[1], /^action=PREPEND Received-SPF: Pass/)
  debian.child.stdin.end()
  t.equal((await debian.exited()).code, 0)
  t.equal(debian.stderr(), '')

  const every = startPolicy(['--config', path.join(fixtures, 'policyd-spf.every-option.conf'), ...isolatedArgs(dir, ['--greylist_enabled', 'no']).slice(2), ...spfArgs()])
  every.send(rcptRequest({ sender: 'b@fail.test' }))
  const [reply] = await every.replies(1)
  // TestOnly = 0 in that file: nothing is rejected.
  t.equal(reply, 'action=DUNNO')
  every.child.stdin.end()
  t.equal((await every.exited()).code, 0)
  t.equal(every.stderr(), '')
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  t.match(log, /policyd-spf\.every-option\.conf:30: defaultSeedOnly = 1 is read but not used/)
  t.match(log, /Per_User file \/etc\/postfix-policyd-spf-python\/userconf unreadable/)
  t.notMatch(log, /configuration error/)
})

function spfquery(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'spfquery', ...args], { env: { PATH: process.env.PATH }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d))
    child.stderr.on('data', (d: Buffer) => (stderr += d))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error('spfquery did not finish in 20 s'))
    }, 20000)
    child.on('exit', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

t.test('policyd-ts spfquery: the result word first, then why and the action', async (t) => {
  const common = ['--config', '/dev/null', ...spfArgs()]
  const pass = await spfquery(['--ip', '192.0.2.10', '--sender', 'a@pass.test', '--helo', 'mail.example.net', ...common])
  t.equal(pass.code, 0, pass.stderr)
  const lines = pass.stdout.split('\n')
  t.equal(lines[0], 'pass')
  t.equal(lines[1], 'explanation: sender SPF authorized')
  t.match(pass.stdout, /^mailfrom: pass for a@pass\.test \(mechanism ip4:192\.0\.2\.0\/24 matched\) record "v=spf1 ip4:192\.0\.2\.0\/24 -all"$/m)
  t.match(pass.stdout, /^helo: pass for mail\.example\.net \(mechanism a matched\)/m)
  t.match(pass.stdout, /^policy: mailfrom-pass$/m)
  t.match(pass.stdout, /^action: PREPEND Received-SPF: Pass \(mailfrom\) identity=mailfrom; client-ip=192\.0\.2\.10;/m)

  const helo = await spfquery(['--ip', '192.0.2.7', '--sender', 'a@pass.test', '--helo', 'mail.example.net', ...common])
  t.equal(helo.stdout.split('\n')[0], 'fail', 'a HELO fail decides before MAIL FROM')
  t.match(helo.stdout, /^mailfrom: pass for a@pass\.test/m)
  t.match(helo.stdout, /^action: 550 5\.7\.23 .*s=helo;id=mail\.example\.net;ip=192\.0\.2\.7;/m)

  const fail = await spfquery(['--ip', '192.0.2.7', '--sender', 'b@fail.test', ...common])
  t.equal(fail.stdout.split('\n')[0], 'fail')
  t.match(fail.stdout, /^action: 550 5\.7\.23 Message rejected due to: SPF fail - not authorized\./m)

  const bounce = await spfquery(['--ip', '192.0.2.10', '--helo', 'mail.example.net', ...common])
  t.equal(bounce.stdout.split('\n')[0], 'pass', 'the null sender: the HELO identity decides')

  const bad = await spfquery(['--ip', 'nonsense', ...common])
  t.equal(bad.code, 64)
  t.match(bad.stderr, /--ip "nonsense" is not an IP address/)
  const badConfig = await spfquery(['--ip', '192.0.2.7', ...common, '--HELO_reject', 'Sometimes'])
  t.equal(badConfig.code, 78)
  t.match(badConfig.stderr, /bad value "Sometimes" for HELO_reject/)
  const missing = await spfquery(['--sender', 'a@pass.test', ...common])
  t.equal(missing.code, 64)
  t.match(missing.stderr, /ip/)
})

t.test('header injection attempts through the binary never make a second header line', async (t) => {
  const dir = t.testdir()
  const p = startPolicy([...isolatedArgs(dir, ['--greylist_enabled', 'no']), ...spfArgs()])
  const attempts: Array<Record<string, string>> = [
    { helo_name: 'evil.example\rX-Injected: yes' },
    { helo_name: 'evil.example\u0000X-Injected: yes' },
    { helo_name: 'a\u0001\u001b[31m\u007fb' },
    { helo_name: `${'h'.repeat(3000)}.example` },
    { sender: `${'s'.repeat(3000)}@nospf.test` },
    { sender: 'm\u00fcller@nospf.test', helo_name: 'b\u00fccher.example' },
    { sender: '"quoted\\" \\\\ local"@nospf.test' },
    { helo_name: 'x; receiver=forged.example (comment' },
  ]
  for (const [i, a] of attempts.entries()) p.send(rcptRequest({ instance: `inj${i}`, sender: 'a@nospf.test', ...a }))
  const replies = await p.replies(attempts.length, 20000)
  for (const [i, r] of replies.entries()) {
    t.match(r, /^action=PREPEND Received-SPF: None \(mailfrom\) identity=mailfrom; /, `attempt ${i}: one Received-SPF field`)
    // A SMTPUTF8 local part has no ASCII form: it alone stays UTF-8 (RFC 6532).
    if (i !== 5) t.notOk(/[^\x20-\x7e]/.test(r), `attempt ${i}: printable ASCII only`)
    t.equal(r.split('Received-SPF:').length, 2, `attempt ${i}: no second field`)
    t.notMatch(r, /[\r\n\0]/, `attempt ${i}: one line`)
    t.ok(r.length < 998, `attempt ${i}: under the header line limit (${r.length})`)
  }
  t.match(replies[0], /helo="evil\.example\?x-injected: yes"; /, 'a CR stays inside the quoted value, as a ?')
  t.match(replies[5], /; helo=xn--bcher-kva\.example; envelope-from="müller@nospf\.test"; /, 'an IDN HELO name as A-labels, a UTF-8 local part as it is')
  t.match(replies[7], /helo="x; receiver=forged\.example \(comment"; envelope-from="a@nospf\.test"; receiver=example\.org$/, 'a fake key=value stays inside the quoted value')
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  t.equal(p.stderr(), '')
  assertWellFormed(p.stdout())
})

t.test('internationalised domains through the binary: looked up by their A-labels, never written as ?', async (t) => {
  const dir = t.testdir()
  const p = startPolicy([...isolatedArgs(dir, ['--greylist_enabled', 'no']), ...spfArgs()])
  p.send(
    rcptRequest({ instance: 'idn1', sender: 'jörg@bücher.test' }) +
      rcptRequest({ instance: 'idn2', sender: 'jörg@bücher.test', helo_name: 'client.example.net', client_address: '203.0.113.5' }) +
      rcptRequest({ instance: 'idn3', sender: '', helo_name: 'mail-bücher.test', client_address: '203.0.113.5' }) +
      rcptRequest({ instance: 'idn4', sender: 'x@a\u200db.test' }),
  )
  const replies = await p.replies(4, 15000)
  t.equal(replies[0], 'action=PREPEND Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.10; helo=mail.example.net; envelope-from="jörg@xn--bcher-kva.test"; receiver=example.org')
  t.equal(replies[1], 'action=550 5.7.23 Message rejected due to: SPF fail - not authorized. Please see http://www.openspf.net/Why?s=mfrom;id=j%C3%B6rg@xn--bcher-kva.test;ip=203.0.113.5;r=example.org', 'a forged IDN sender is rejected')
  t.equal(replies[2], 'action=550 5.7.23 Message rejected due to: SPF fail - not authorized. Please see http://www.openspf.net/Why?s=helo;id=xn--mail-bcher-feb.test;ip=203.0.113.5;r=example.org', 'an IDN HELO name')
  t.match(replies[3], /^action=PREPEND Received-SPF: None \(mailfrom\) /, 'a domain without an A-label form: none')
  p.child.stdin.end()
  t.same(await p.exited(), { code: 0, signal: null })
  t.equal(p.stderr(), '')
  assertWellFormed(p.stdout())

  const q = await spfquery(['--ip', '203.0.113.5', '--sender', 'jörg@bücher.test', '--helo', 'mail-bücher.test', '--config', '/dev/null', ...spfArgs()])
  t.equal(q.stdout.split('\n')[0], 'fail', `spfquery: ${q.stdout}`)
  t.match(q.stdout, /^helo: fail for /m)
})
