// The 550 texts of SPF rejections, byte for byte as postfix-policyd-spf-python
// writes them: the built binary against a DNS server on loopback, and, when
// policyd-spf is installed, the real policyd-spf against the same server.
// policyd-spf writes the Why link's values unescaped; policyd-ts writes them
// so too, except the characters that would break the link (space, '"',
// '%', '#', controls, non-ASCII), which it %-escapes.
import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import path from 'node:path'
import { isolatedArgs, rcptRequest, startPolicy } from './helpers/policy-process'
import { startDnsServer, type DnsServer } from './helpers/dns-server'

const PYTHON = '/usr/bin/python3'
const LOOPBACK_POLICYD_SPF = path.join(__dirname, 'fixtures', 'policyd-spf-loopback.py')

let dns: DnsServer
t.before(async () => {
  dns = await startDnsServer({ 'fail.test': [{ TXT: 'v=spf1 ip4:198.51.100.1 -all' }] })
})
t.teardown(() => dns.close())

const WHY = 'action=550 5.7.23 Message rejected due to: SPF fail - not authorized. Please see http://www.openspf.net/Why?'

/** Requests whose texts policyd-spf and policyd-ts write alike, with policyd-spf's text for each. */
const ALIKE: Array<[Record<string, string>, string]> = [
  [{ sender: 'prvs=1234abcdef=alice@fail.test', client_address: '2001:db8::1:2' }, `${WHY}s=mfrom;id=prvs=1234abcdef=alice@fail.test;ip=2001:db8::1:2;r=example.org`],
  [{ sender: "a!$&'()*+,;=:/?~b@fail.test", client_address: '192.0.2.7' }, `${WHY}s=mfrom;id=a!$&'()*+,;=:/?~b@fail.test;ip=192.0.2.7;r=example.org`],
  // The address as Postfix gave it, as policyd-spf writes it (Postfix itself gives the short form).
  [{ sender: 'srs0=ab12=cd=example.com=user@fail.test', client_address: '2001:db8:0:0:1::7' }, `${WHY}s=mfrom;id=srs0=ab12=cd=example.com=user@fail.test;ip=2001:db8:0:0:1::7;r=example.org`],
  [{ sender: '', helo_name: 'fail.test', client_address: '192.0.2.7' }, `${WHY}s=helo;id=fail.test;ip=192.0.2.7;r=example.org`],
]

async function policydTs(t: Tap.Test, requests: Array<Record<string, string>>): Promise<string[]> {
  const p = startPolicy([
    ...isolatedArgs(t.testdir(), ['--greylist_enabled', 'no']),
    '--spf_enabled', 'yes', '--dns_servers', `127.0.0.1:${dns.port}`, '--Lookup_Time', '2', '--hostname', 'mx.example.org',
  ])
  p.send(requests.map((r, i) => rcptRequest({ instance: `why${i}`, ...r })).join(''))
  const replies = await p.replies(requests.length, 15000)
  p.child.stdin.end()
  await p.exited()
  return replies
}

t.test("policyd-ts writes policyd-spf's Why link: ':', '=' and the other query characters unescaped", async (t) => {
  const replies = await policydTs(t, ALIKE.map(([r]) => r))
  ALIKE.forEach(([request, want], i) => t.equal(replies[i], want, JSON.stringify(request)))
})

t.test('characters that would break the link stay %-escaped', async (t) => {
  const [reply] = await policydTs(t, [{ sender: '"a b"#%^\\`{|}[]x\u00e9@fail.test', client_address: '192.0.2.7' }])
  t.equal(reply, `${WHY}s=mfrom;id=%22a%20b%22%23%25%5E%5C%60%7B%7C%7D%5B%5Dx%C3%A9@fail.test;ip=192.0.2.7;r=example.org`)
})

function policydSpfInstalled(): string | null {
  const r = spawnSync(PYTHON, ['-c', 'import spf_engine.policyd_spf'], { encoding: 'utf8', timeout: 20000 })
  return r.status === 0 ? null : `${PYTHON} cannot import spf_engine (install postfix-policyd-spf-python): ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`
}

t.test('the real policyd-spf, against the same DNS server, writes the same bytes', async (t) => {
  const missing = policydSpfInstalled()
  if (missing) {
    t.skip(`policyd-spf is not installed, only the fixed texts above are compared: ${missing}`)
    return
  }
  const requests = ALIKE.map(([r]) => r)
  const theirs = await new Promise<string[]>((resolve, reject) => {
    const child = spawn(PYTHON, [LOOPBACK_POLICYD_SPF, String(dns.port), '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: process.env.PATH, LANG: 'C.UTF-8' } })
    let out = ''
    let err = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`policyd-spf did not finish in 30 s: ${out} ${err}`))
    }, 30000)
    child.on('close', () => {
      clearTimeout(timer)
      resolve(out.split('\n\n').filter((r) => r !== ''))
    })
    child.stdin.end(requests.map((r, i) => rcptRequest({ instance: `why${i}`, ...r })).join(''))
  })
  const ours = await policydTs(t, requests)
  t.equal(theirs.length, requests.length, 'policyd-spf answered every request')
  requests.forEach((r, i) => t.equal(ours[i], theirs[i], `byte for byte: ${JSON.stringify(r)}`))
  ALIKE.forEach(([request, want], i) => t.equal(theirs[i], want, `policyd-spf's text as written above: ${JSON.stringify(request)}`))
})
