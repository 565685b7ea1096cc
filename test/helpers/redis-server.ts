// A private redis-server for a test: 127.0.0.1, a free port, its files in a
// temp dir, killed in teardown. Returns null (and the test is skipped with
// the reason) where redis-server is not installed; .ci/run installs it.
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

export const REDIS_SERVER = '/usr/bin/redis-server'

export interface RedisServerOptions {
  appendonly?: boolean
  /** requirepass */
  password?: string
  /** Also listen on a unix socket (`socket` of the result). */
  unixSocket?: boolean
}

export interface RedisServer {
  port: number
  url: string
  dir: string
  socket: string
  /** SIGKILL: no shutdown save; resolves once it has exited. */
  kill(): Promise<void>
  /** Start again on the same port and dir (after kill). */
  restart(): Promise<void>
  /** SIGSTOP / SIGCONT: a server that accepts nothing and answers nothing. */
  pause(): void
  resume(): void
  /** One command through a raw connection (no client library), for set-up and checks: the reply's text. */
  command(...args: string[]): Promise<string>
}

const START_WAIT_MS = 10_000

export async function startRedisServer(t: Tap.Test, opts: RedisServerOptions = {}): Promise<RedisServer | null> {
  if (!fs.existsSync(REDIS_SERVER)) {
    t.skip(`${REDIS_SERVER} is not installed (apt-get install redis-server): the Redis store is not tested here`)
    return null
  }
  const dir = t.testdir()
  // A unix socket path has at most 107 bytes, less than a test dir's: the socket gets a short dir of its own.
  const socketDir = opts.unixSocket ? fs.mkdtempSync(path.join(os.tmpdir(), 'pts-redis-')) : dir
  if (opts.unixSocket) t.teardown(() => fs.rmSync(socketDir, { recursive: true, force: true }))
  const socket = path.join(socketDir, 'redis.sock')
  let port = 0
  let child: ChildProcess | null = null
  const args = (): string[] => [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--logfile', path.join(dir, 'redis.log'),
    '--save', '', '--appendonly', opts.appendonly ? 'yes' : 'no', '--daemonize', 'no', '--protected-mode', 'yes',
    ...(opts.password ? ['--requirepass', opts.password] : []),
    ...(opts.unixSocket ? ['--unixsocket', socket, '--unixsocketperm', '700'] : []),
  ]
  const start = async (): Promise<void> => {
    const proc = spawn(REDIS_SERVER, args(), { stdio: 'ignore' })
    child = proc
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()))
    const started = Date.now()
    for (;;) {
      if (await answersPing(port, opts.password)) return
      if (proc.exitCode !== null || Date.now() - started > START_WAIT_MS) {
        proc.kill('SIGKILL')
        await exited
        throw new Error(`redis-server did not start on 127.0.0.1:${port}: ${readLog(dir)}`)
      }
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  // A free port can be taken by someone else before redis-server binds it: a few tries.
  for (let attempt = 1; ; attempt++) {
    port = await freePort()
    try {
      await start()
      break
    } catch (err) {
      if (attempt >= 3) throw err
    }
  }
  const kill = async (): Promise<void> => {
    const proc = child
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()))
    proc.kill('SIGCONT')
    proc.kill('SIGKILL')
    await exited
  }
  t.teardown(kill)
  return {
    port,
    url: `redis://127.0.0.1:${port}/0`,
    dir,
    socket,
    kill,
    restart: start,
    pause: () => child?.kill('SIGSTOP'),
    resume: () => child?.kill('SIGCONT'),
    command: (...words) => rawCommand(port, opts.password, words),
  }
}

function readLog(dir: string): string {
  try {
    return fs.readFileSync(path.join(dir, 'redis.log'), 'utf8').split('\n').slice(-5).join(' | ')
  } catch {
    return '(no log)'
  }
}

async function freePort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

async function answersPing(port: number, password?: string): Promise<boolean> {
  try {
    return (await rawCommand(port, password, ['PING'], 500)) === 'PONG'
  } catch {
    return false
  }
}

/** RESP over a fresh socket: AUTH when needed, one command, its reply as text (an error reply rejects). */
function rawCommand(port: number, password: string | undefined, words: string[], timeoutMs = 5000): Promise<string> {
  const encode = (w: string[]): string => `*${w.length}\r\n${w.map((x) => `$${Buffer.byteLength(x)}\r\n${x}\r\n`).join('')}`
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1')
    let buf = ''
    let skip = password ? 1 : 0
    const timer = setTimeout(() => (sock.destroy(), reject(new Error('redis: no reply'))), timeoutMs)
    const done = (err: Error | null, value?: string): void => {
      clearTimeout(timer)
      sock.destroy()
      if (err) reject(err)
      else resolve(value!)
    }
    sock.on('error', (err) => done(err))
    sock.on('connect', () => sock.write((password ? encode(['AUTH', password]) : '') + encode(words)))
    sock.setEncoding('utf8')
    sock.on('data', (d: string) => {
      buf += d
      for (;;) {
        const reply = parseReply(buf)
        if (!reply) return
        buf = buf.slice(reply.length)
        if (skip > 0) {
          skip--
          continue
        }
        if (reply.error) return done(new Error(reply.text))
        return done(null, reply.text)
      }
    })
  })
}

/** The first whole reply in `buf`: simple, error, integer, bulk, or an array (its items joined by newlines). */
function parseReply(buf: string): { text: string; error: boolean; length: number } | null {
  const eol = buf.indexOf('\r\n')
  if (eol < 0) return null
  const kind = buf[0]
  const head = buf.slice(1, eol)
  if (kind === '+' || kind === ':') return { text: head, error: false, length: eol + 2 }
  if (kind === '-') return { text: head, error: true, length: eol + 2 }
  if (kind === '$') {
    const n = Number(head)
    if (n < 0) return { text: '', error: false, length: eol + 2 }
    if (buf.length < eol + 2 + n + 2) return null
    return { text: buf.slice(eol + 2, eol + 2 + n), error: false, length: eol + 2 + n + 2 }
  }
  if (kind === '*') {
    const n = Number(head)
    const items: string[] = []
    let at = eol + 2
    for (let i = 0; i < n; i++) {
      const item = parseReply(buf.slice(at))
      if (!item) return null
      items.push(item.text)
      at += item.length
    }
    return { text: items.join('\n'), error: false, length: at }
  }
  throw new Error(`redis: unexpected reply ${JSON.stringify(buf.slice(0, 40))}`)
}
