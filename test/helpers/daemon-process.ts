// Drives the built bin/policyd-ts as a daemon, and clients that talk to it
// as Postfix's smtpd does: one connection, requests one after another or
// pipelined, one reply each.
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { startPolicy, type PolicyProcess } from './policy-process'

export interface DaemonProcess extends PolicyProcess {
  socketPath: string
  log(): string
}

/** A directory for sockets: tap's test directories are too deep for a unix socket address (108 bytes). */
export function socketDir(t: { teardown(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pts-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** Starts the daemon on a unix socket in `sockDir`; resolves once it accepts connections. */
export async function startDaemon(sockDir: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<DaemonProcess> {
  const socketPath = path.join(sockDir, 'policy.sock')
  const p = startPolicy(['--listen', `unix:${socketPath}`, '--listen_group', '', ...args], env)
  const logFile = args[args.indexOf('--log_file') + 1]
  const started = Date.now()
  for (;;) {
    if (await canConnect(socketPath)) break
    if (p.child.exitCode !== null || Date.now() - started > 15000) {
      throw new Error(`daemon did not start: exit ${p.child.exitCode} stderr=${p.stderr()} log=${readLog(logFile)}`)
    }
    await new Promise((r) => setTimeout(r, 20))
  }
  return { ...p, socketPath, log: () => readLog(logFile) }
}

function readLog(file: string | undefined): string {
  try {
    return file ? fs.readFileSync(file, 'utf8') : ''
  } catch {
    return ''
  }
}

export function canConnect(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath)
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

export interface Client {
  socket: net.Socket
  /** Sends one request and resolves with its reply (without the trailing empty line). */
  ask(request: string, timeoutMs?: number): Promise<string>
  /** Sends raw bytes. */
  send(text: string | Buffer): void
  /** Resolves with the first `n` replies received in all. */
  replies(n: number, timeoutMs?: number): Promise<string[]>
  output(): string
  closed: Promise<void>
  end(): void
}

export function connect(socketPath: string): Promise<Client> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath)
    let out = ''
    let consumed = 0
    socket.setEncoding('utf8')
    socket.on('data', (d: string) => (out += d))
    const closed = new Promise<void>((r) => socket.once('close', () => r()))
    socket.on('error', () => undefined)
    const waitFor = (n: number, timeoutMs: number): Promise<string[]> =>
      new Promise((res, rej) => {
        const started = Date.now()
        const poll = (): void => {
          const parts = out.split('\n\n').slice(0, -1)
          if (parts.length >= n) return res(parts)
          if (Date.now() - started > timeoutMs || socket.destroyed) return rej(new Error(`waited for ${n} replies, have ${JSON.stringify(out)}`))
          setTimeout(poll, 2)
        }
        poll()
      })
    socket.once('error', reject)
    socket.once('connect', () => {
      socket.off('error', reject)
      resolve({
        socket,
        async ask(request, timeoutMs = 10000) {
          socket.write(request)
          const parts = await waitFor(consumed + 1, timeoutMs)
          return parts[consumed++]
        },
        send: (text) => socket.write(text),
        replies: (n, timeoutMs = 10000) => waitFor(n, timeoutMs).then((p) => p.slice(0, n)),
        output: () => out,
        closed,
        end: () => socket.end(),
      })
    })
  })
}
