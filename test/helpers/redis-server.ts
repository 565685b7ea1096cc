// A private redis-server for a test: 127.0.0.1, a free port, its files in a
// temp dir, killed (and the dir removed) in teardown. Returns null (and the test is skipped with
// the reason) where redis-server is not installed; .ci/run installs it.
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'

export const REDIS_SERVER = '/usr/bin/redis-server'

export interface RedisServerOptions {
  appendonly?: boolean
  /** With appendonly: when the file is fsynced (redis-server's default: everysec). */
  appendfsync?: 'always' | 'everysec' | 'no'
  /** Start as a replica of the server on 127.0.0.1 at this port. */
  replicaOf?: number
  /** requirepass */
  password?: string
  /** Also listen on a unix socket (`socket` of the result). */
  unixSocket?: boolean
  /** Listen with TLS only (PEM files); the helper's own commands trust `ca`. */
  tls?: { cert: string; key: string; ca: string }
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
  // A dir of its own, short (a unix socket path has at most 107 bytes, less than a tap test dir's), and out of
  // the way of the test's t.testdir(), which each call empties.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pts-redis-'))
  const socket = path.join(dir, 'redis.sock')
  let port = 0
  let child: ChildProcess | null = null
  const args = (): string[] => [
    ...(opts.tls
      ? ['--port', '0', '--tls-port', String(port), '--tls-cert-file', opts.tls.cert, '--tls-key-file', opts.tls.key, '--tls-ca-cert-file', opts.tls.ca, '--tls-auth-clients', 'no']
      : ['--port', String(port)]),
    '--bind', '127.0.0.1', '--dir', dir, '--logfile', path.join(dir, 'redis.log'),
    '--save', '', '--appendonly', opts.appendonly ? 'yes' : 'no', '--daemonize', 'no', '--protected-mode', 'yes',
    ...(opts.appendfsync ? ['--appendfsync', opts.appendfsync] : []),
    ...(opts.replicaOf !== undefined ? ['--replicaof', '127.0.0.1', String(opts.replicaOf)] : []),
    ...(opts.password ? ['--requirepass', opts.password] : []),
    ...(opts.unixSocket ? ['--unixsocket', socket, '--unixsocketperm', '700'] : []),
  ]
  const start = async (): Promise<void> => {
    child = await launch(args(), port, opts, dir, 'redis-server')
  }
  port = await onFreePort(async (p) => {
    port = p
    await start()
  })
  const kill = (): Promise<void> => stop(child)
  t.teardown(async () => {
    await kill()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return {
    port,
    url: `${opts.tls ? 'rediss' : 'redis'}://127.0.0.1:${port}/0`,
    dir,
    socket,
    kill,
    restart: start,
    pause: () => child?.kill('SIGSTOP'),
    resume: () => child?.kill('SIGCONT'),
    command: (...words) => rawCommand(port, opts, words),
  }
}

/** Spawns redis-server with `argv`; resolves once it answers PING on `port` (bounded), else kills it and throws. */
async function launch(argv: string[], port: number, opts: RedisServerOptions, dir: string, what: string): Promise<ChildProcess> {
  const proc = spawn(REDIS_SERVER, argv, { stdio: 'ignore' })
  const started = Date.now()
  for (;;) {
    if (await answersPing(port, opts)) return proc
    if (proc.exitCode !== null || Date.now() - started > START_WAIT_MS) {
      await stop(proc)
      throw new Error(`${what} did not start on 127.0.0.1:${port}: ${readLog(dir)}`)
    }
    await new Promise((r) => setTimeout(r, 20))
  }
}

/** A free port can be taken by someone else before redis-server binds it: a few tries, each on a new port. */
async function onFreePort(start: (port: number) => Promise<void>): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort()
    try {
      await start(port)
      return port
    } catch (err) {
      if (attempt >= 3) throw err
    }
  }
}

/** SIGKILL (a stopped process too); resolves once it has exited. */
async function stop(proc: ChildProcess | null): Promise<void> {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()))
  proc.kill('SIGCONT')
  proc.kill('SIGKILL')
  await exited
}

export interface SentinelOptions {
  /** The name the master is monitored under (redis_sentinel_name). */
  name: string
  /** Sentinels that must agree the master is down. */
  quorum: number
  downAfterMs: number
  failoverTimeoutMs: number
}

export interface Sentinel {
  port: number
  command(...args: string[]): Promise<string>
  kill(): Promise<void>
}

/**
 * `count` Sentinels (redis-server --sentinel) on 127.0.0.1 monitoring the
 * master at `masterPort`, each with its own config file (Sentinel rewrites
 * it) in a temp dir; killed in teardown. Returns null (the test skipped)
 * where redis-server is not installed.
 */
export async function startSentinels(t: Tap.Test, masterPort: number, count: number, opts: SentinelOptions): Promise<Sentinel[] | null> {
  if (!fs.existsSync(REDIS_SERVER)) {
    t.skip(`${REDIS_SERVER} is not installed (apt-get install redis-server): Redis Sentinel is not tested here`)
    return null
  }
  const sentinels: Sentinel[] = []
  for (let i = 0; i < count; i++) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pts-sentinel-'))
    let child: ChildProcess | null = null
    t.teardown(async () => {
      await stop(child)
      fs.rmSync(dir, { recursive: true, force: true })
    })
    const port = await onFreePort(async (p) => {
      const conf = path.join(dir, 'sentinel.conf')
      fs.writeFileSync(conf, [
        `port ${p}`, 'bind 127.0.0.1', `dir ${dir}`, `logfile ${path.join(dir, 'redis.log')}`,
        `sentinel monitor ${opts.name} 127.0.0.1 ${masterPort} ${opts.quorum}`,
        `sentinel down-after-milliseconds ${opts.name} ${opts.downAfterMs}`,
        `sentinel failover-timeout ${opts.name} ${opts.failoverTimeoutMs}`,
        '',
      ].join('\n'))
      child = await launch([conf, '--sentinel'], p, {}, dir, 'redis-server --sentinel')
    })
    sentinels.push({ port, command: (...words) => rawCommand(port, {}, words), kill: () => stop(child) })
  }
  return sentinels
}

/** Sentinel's view of a master (SENTINEL MASTER NAME) as fields: num-other-sentinels, num-slaves, flags … */
export async function sentinelMaster(s: Sentinel, name: string): Promise<Record<string, string>> {
  const words = (await s.command('SENTINEL', 'MASTER', name)).split('\n')
  const out: Record<string, string> = {}
  for (let i = 0; i + 1 < words.length; i += 2) out[words[i]] = words[i + 1]
  return out
}

/** The master's port as this Sentinel names it now. */
export async function sentinelMasterPort(s: Sentinel, name: string): Promise<number> {
  const [, port] = (await s.command('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name)).split('\n')
  return Number(port)
}

function readLog(dir: string): string {
  try {
    return fs.readFileSync(path.join(dir, 'redis.log'), 'utf8').split('\n').slice(-5).join(' | ')
  } catch {
    return '(no log)'
  }
}

export async function freePort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

async function answersPing(port: number, opts: RedisServerOptions): Promise<boolean> {
  try {
    return (await rawCommand(port, opts, ['PING'], 500)) === 'PONG'
  } catch {
    return false
  }
}

/** RESP over a fresh socket: AUTH when needed, one command, its reply as text (an error reply rejects). */
function rawCommand(port: number, opts: RedisServerOptions, words: string[], timeoutMs = 5000): Promise<string> {
  const encode = (w: string[]): string => `*${w.length}\r\n${w.map((x) => `$${Buffer.byteLength(x)}\r\n${x}\r\n`).join('')}`
  const password = opts.password
  return new Promise((resolve, reject) => {
    const sock = opts.tls
      ? tls.connect({ port, host: '127.0.0.1', ca: fs.readFileSync(opts.tls.ca) })
      : net.connect(port, '127.0.0.1')
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
    sock.on(opts.tls ? 'secureConnect' : 'connect', () => sock.write((password ? encode(['AUTH', password]) : '') + encode(words)))
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
