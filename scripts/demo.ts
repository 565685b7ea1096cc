// npm run demo: the main job on a newcomer's machine. A DNS server on
// loopback serves two sender domains' SPF records; the real bin/policyd-ts
// gets policy requests as Postfix would send them (one process, one request
// at a time) with a temporary database. Nothing outside a temp directory
// and 127.0.0.1 is touched.

import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { startDnsServer } from '../test/helpers/dns-server'

const BIN = path.resolve(__dirname, '..', '..', 'bin', 'policyd-ts')
const DELAY = 2

function request(attrs: Record<string, string>): string {
  const all: Record<string, string> = {
    request: 'smtpd_access_policy', protocol_state: 'RCPT', client_name: 'unknown', helo_name: 'mail.example.com', ...attrs,
  }
  return `${Object.entries(all).map(([k, v]) => `${k}=${v}`).join('\n')}\n\n`
}

async function main(): Promise<void> {
  const dns = await startDnsServer({
    // A sender pool in two networks, and a domain that sends no mail at all.
    'example.net': [{ TXT: 'v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all' }],
    'bank.example': [{ TXT: 'v=spf1 -all' }],
  })
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'policyd-ts-demo-'))
  const child = spawn(process.execPath, [
    BIN, '--config', '/dev/null', '--db_path', path.join(dir, 'db', 'policyd-ts.sqlite'),
    '--syslog_socket', path.join(dir, 'none'), '--log_file', path.join(dir, 'policyd-ts.log'),
    '--greylist_whitelist_clients', '', '--greylist_whitelist_recipients', '',
    '--dns_servers', `127.0.0.1:${dns.port}`, '--greylist_delay', `${DELAY}s`, '--hostname', 'mx.example.org',
  ], { stdio: ['pipe', 'pipe', 'pipe'] })
  let buffered = ''
  const waiting: Array<(reply: string) => void> = []
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (d: string) => {
    buffered += d
    for (let end = buffered.indexOf('\n\n'); end !== -1 && waiting.length > 0; end = buffered.indexOf('\n\n')) {
      const reply = buffered.slice(0, end)
      buffered = buffered.slice(end + 2)
      waiting.shift()!(reply)
    }
  })
  const ask = (what: string, attrs: Record<string, string>): Promise<void> =>
    new Promise((resolve) => {
      waiting.push((reply) => {
        console.log(`  ${what}\n    -> ${reply}`)
        resolve()
      })
      child.stdin.write(request(attrs))
    })

  console.log('== a forged sender: bank.example publishes "v=spf1 -all"')
  await ask('RCPT from 203.0.113.5, MAIL FROM <ceo@bank.example>', { client_address: '203.0.113.5', sender: 'ceo@bank.example', recipient: 'bob@example.org', instance: 'm1' })
  console.log('== the first attempt of a new (sender, recipient) pair: SPF passes, greylisting defers')
  await ask('RCPT from 192.0.2.10, MAIL FROM <news@example.net>', { client_address: '192.0.2.10', sender: 'news@example.net', recipient: 'bob@example.org', instance: 'm2' })
  console.log(`== ${DELAY} s later the pool retries from another network; SPF keys the triplet by domain, so it passes`)
  await new Promise((resolve) => setTimeout(resolve, DELAY * 1000 + 100))
  await ask('RCPT from 198.51.100.7, MAIL FROM <news@example.net>, 1st recipient', { client_address: '198.51.100.7', sender: 'news@example.net', recipient: 'bob@example.org', instance: 'm3' })
  await ask('DATA of the same message: the second header', { client_address: '198.51.100.7', sender: 'news@example.net', recipient: 'bob@example.org', instance: 'm3', protocol_state: 'DATA' })
  console.log('== later mail of the same pair')
  await ask('RCPT from 192.0.2.11, MAIL FROM <news@example.net>', { client_address: '192.0.2.11', sender: 'news@example.net', recipient: 'bob@example.org', instance: 'm4' })

  child.stdin.end()
  await new Promise((resolve) => child.on('exit', resolve))
  console.log('== the log (debugLevel 1: one line per decision)')
  process.stdout.write(fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8'))
  await dns.close()
  fs.rmSync(dir, { recursive: true, force: true })
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
