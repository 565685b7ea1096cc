// Drives the built bin/policyd-ts over stdio, as Postfix's spawn(8) would.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import path from 'node:path'

export const BIN = path.resolve(__dirname, '..', '..', 'bin', 'policyd-ts')

export interface PolicyProcess {
  child: ChildProcessWithoutNullStreams
  stdout(): string
  stderr(): string
  /** Resolves with the first `n` replies (each `action=...`), or rejects after `timeoutMs`. */
  replies(n: number, timeoutMs?: number): Promise<string[]>
  send(text: string | Buffer): void
  exited(timeoutMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

/** Options that keep a test away from the machine's files and network: a temp database, no syslog, a log file, no DNS. */
export function isolatedArgs(dir: string, extra: string[] = []): string[] {
  return [
    '--config', '/dev/null',
    '--db_path', path.join(dir, 'db', 'policyd-ts.sqlite'),
    '--syslog_socket', path.join(dir, 'no-syslog'),
    '--log_file', path.join(dir, 'policyd-ts.log'),
    '--greylist_whitelist_clients', '',
    '--greylist_whitelist_recipients', '',
    // SPF needs a DNS server: tests that check SPF turn it on with their own (helpers/dns-server.ts).
    '--spf_enabled', 'no',
    ...extra,
  ]
}

export function startPolicy(args: string[], env: NodeJS.ProcessEnv = {}): PolicyProcess {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { PATH: process.env.PATH, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  let out = ''
  let err = ''
  child.stdout.setEncoding('utf8')
  child.stderr.setEncoding('utf8')
  child.stdout.on('data', (d: string) => (out += d))
  child.stderr.on('data', (d: string) => (err += d))
  child.stdin.on('error', () => undefined)
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }))
  })
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    send: (text) => child.stdin.write(text),
    replies(n, timeoutMs = 10000) {
      return new Promise((resolve, reject) => {
        const started = Date.now()
        const poll = (): void => {
          const parts = out.split('\n\n').filter((p, i, all) => i < all.length - 1)
          if (parts.length >= n) return resolve(parts.slice(0, n))
          if (Date.now() - started > timeoutMs) return reject(new Error(`timeout waiting for ${n} replies; stdout=${JSON.stringify(out)} stderr=${JSON.stringify(err)}`))
          setTimeout(poll, 5)
        }
        poll()
      })
    },
    exited(timeoutMs = 10000) {
      let timer: NodeJS.Timeout | undefined
      return Promise.race([
        exit.finally(() => clearTimeout(timer)),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            child.kill('SIGKILL')
            reject(new Error(`process did not exit within ${timeoutMs} ms`))
          }, timeoutMs)
        }),
      ])
    },
  }
}

/** One spawned process answers `requests`, then its stdin closes and it exits: the replies. */
export async function serveRequests(args: string[], requests: string[]): Promise<string[]> {
  const p = startPolicy(args)
  p.send(requests.join(''))
  const replies = await p.replies(requests.length)
  p.child.stdin.end()
  await p.exited()
  return replies
}

let port = 40000
/** A complete RCPT-stage request as Postfix 3.7 sends it (29 attributes). */
export function rcptRequest(over: Record<string, string> = {}): string {
  const attrs: Record<string, string> = {
    request: 'smtpd_access_policy',
    protocol_state: 'RCPT',
    protocol_name: 'ESMTP',
    client_address: '192.0.2.10',
    client_name: 'mail.example.net',
    client_port: String(port++),
    reverse_client_name: 'mail.example.net',
    server_address: '127.0.0.1',
    server_port: '25',
    helo_name: 'mail.example.net',
    sender: 'alice@example.net',
    recipient: 'bob@example.org',
    recipient_count: '0',
    queue_id: '',
    instance: '1726.6b032613.c235c.0',
    size: '0',
    etrn_domain: '',
    stress: '',
    sasl_method: '',
    sasl_username: '',
    sasl_sender: '',
    ccert_subject: '',
    ccert_issuer: '',
    ccert_fingerprint: '',
    ccert_pubkey_fingerprint: '',
    encryption_protocol: '',
    encryption_cipher: '',
    encryption_keysize: '0',
    policy_context: '',
    ...over,
  }
  return `${Object.entries(attrs).map(([k, v]) => `${k}=${v}`).join('\n')}\n\n`
}

/** Every reply must be exactly `action=<one line>` followed by an empty line. */
export function assertWellFormed(stdout: string): string[] {
  if (!stdout.endsWith('\n\n') && stdout !== '') throw new Error(`output does not end with an empty line: ${JSON.stringify(stdout.slice(-80))}`)
  const replies = stdout === '' ? [] : stdout.slice(0, -2).split('\n\n')
  for (const r of replies) {
    if (!/^action=[^\n]+$/.test(r)) throw new Error(`malformed reply ${JSON.stringify(r)}`)
  }
  return replies
}
