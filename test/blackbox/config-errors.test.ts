// A bad setting through the built binary (issue 9 items 6 and 7): it is
// logged at every start and shown by --test-mode with file and line, and
// ignored; SPF and greylisting keep working as configured.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { BIN, isolatedArgs, rcptRequest, startPolicy } from '../helpers/policy-process'
import { startDnsServer, type DnsServer } from '../helpers/dns-server'

let dns: DnsServer
t.before(async () => {
  dns = await startDnsServer({
    'fail.test': [{ TXT: 'v=spf1 ip4:198.51.100.1 -all' }],
    'pass.test': [{ TXT: 'v=spf1 ip4:192.0.2.0/24 -all' }],
  })
})
t.teardown(() => dns.close())

/** isolatedArgs with SPF on against the loopback DNS server, reading `conf` instead of /dev/null. */
function argsWith(dir: string, conf: string, extra: string[] = []): string[] {
  const args = isolatedArgs(dir, ['--spf_enabled', 'yes', '--dns_servers', `127.0.0.1:${dns.port}`, '--Lookup_Time', '2', ...extra])
  return args.map((a) => (a === '/dev/null' ? conf : a))
}

function readLog(dir: string): string {
  return fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
}

t.test('greylist_delay = 5x: a -all sender is still rejected by SPF, greylisting runs with its default delay', async (t) => {
  const dir = t.testdir({ 'p.conf': '# site settings\ngreylist_delay = 5x\n' })
  const conf = path.join(dir, 'p.conf')
  const p = startPolicy(argsWith(dir, conf))
  p.send(rcptRequest({ sender: 'b@fail.test', instance: 'm1' }) + rcptRequest({ sender: 'a@pass.test', instance: 'm2' }))
  const replies = await p.replies(2, 15000)
  t.match(replies[0], /^action=550 5\.7\.23 Message rejected due to: SPF fail - not authorized\./)
  t.equal(replies[1], 'action=DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 300 seconds')
  p.child.stdin.end()
  t.same(await p.exited(), { code: 0, signal: null })
  t.equal(p.stderr(), '')
  const log = readLog(dir)
  t.match(log, new RegExp(`configuration error: ${conf.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2: bad value "5x" for greylist_delay: .*; ignored, so greylist_delay = 300s \\(its default\\)`))
  t.notMatch(log, /answering fail_action/)
})

t.test('the errors are logged at every start, before any request, at level 0', async (t) => {
  const dir = t.testdir({ 'p.conf': 'greylist_delay 60\nReason_Message = Rejected #see {url}\n' })
  for (let run = 0; run < 2; run++) {
    const p = startPolicy(argsWith(dir, path.join(dir, 'p.conf'), ['--debugLevel', '0']))
    p.child.stdin.end()
    t.same(await p.exited(), { code: 0, signal: null })
  }
  const log = readLog(dir)
  t.equal(log.match(/configuration error: .*p\.conf:1: not a "key = value" line/g)?.length, 2, 'once per start')
  t.equal(log.match(/configuration error: .*p\.conf:2: "#" inside the value of Reason_Message/g)?.length, 2)
})

t.test('a bad Whitelist entry is skipped, the other entries still work; an unknown key leaves the rest working', async (t) => {
  const dir = t.testdir({ 'p.conf': 'Whitelist = relay.example, 192.0.2.0/24\nHide Receiver = yes\ngreylist_enabled = no\n' })
  const p = startPolicy(argsWith(dir, path.join(dir, 'p.conf'), ['--debugLevel', '2']))
  p.send(rcptRequest({ sender: 'b@fail.test', client_address: '192.0.2.10', instance: 'w1' }) + rcptRequest({ sender: 'b@fail.test', client_address: '203.0.113.9', instance: 'w2' }))
  const replies = await p.replies(2, 15000)
  t.match(replies[0], /^action=PREPEND X-Comment: SPF skipped for whitelisted relay - client-ip=192\.0\.2\.10;/, 'a client of the good entry is whitelisted')
  t.match(replies[1], /^action=550 5\.7\.23 .*r=<UNKNOWN>$/, 'another client is checked and rejected; Hide Receiver took the safe value')
  p.child.stdin.end()
  t.same(await p.exited(), { code: 0, signal: null })
  const log = readLog(dir)
  t.match(log, /configuration error: .*p\.conf:1: Whitelist: "relay\.example" is not an IP address or network .*\(entry skipped\)/)
  t.match(log, /configuration error: .*p\.conf:2: unknown key "Hide Receiver" \(did you mean Hide_Receiver\?\); ignored, so Hide_Receiver = yes instead/)
})

t.test('--test-mode exits 78 and names file and line of every bad setting', async (t) => {
  const dir = t.testdir({ 'p.conf': '# comment\ndebugLevel = 2\ngreylist_delay = 5x\nWhitelist = 192.0.2.0/24, relay.example\ngreylist_delay 60\n' })
  const conf = path.join(dir, 'p.conf')
  const r = spawnSync(process.execPath, [BIN, '--test-mode', '--config', conf], { env: { PATH: process.env.PATH }, encoding: 'utf8', timeout: 20000 })
  t.equal(r.status, 78)
  t.match(r.stderr, `${conf}:3: bad value "5x" for greylist_delay`)
  t.match(r.stderr, `${conf}:4: Whitelist: "relay.example" is not an IP address`)
  t.match(r.stderr, `${conf}:5: not a "key = value" line`)
  t.match(r.stdout, /^greylist_delay += 300s /m, 'the value in effect')
  t.notMatch(r.stdout, /^greylist_delay .*# file$/m, 'not labelled as coming from the file')
  t.match(r.stdout, /^Whitelist += 192\.0\.2\.0\/24 +# file$/m)
  t.match(r.stdout, /^debugLevel += 2 +# file$/m)
})
