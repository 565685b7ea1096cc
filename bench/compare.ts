// npm run bench -- --compare: policyd-ts side by side with the programs
// it replaces, measured in the same run with the same request streams:
//   greylisting: policyd-ts (--spf_enabled no) vs postgrey (its own daemon on
//                a free 127.0.0.1 port, one TCP connection per simulated smtpd)
//   SPF:         policyd-ts (--greylist_enabled no) vs policyd-spf (spawned
//                over pipes like policyd-ts), both resolving through the
//                same loopback DNS server (test/helpers/dns-server.ts)
//
//   greylisting at scale: policyd-ts as one daemon (--listen unix:) vs spawn
//                mode (one process per connection, as Postfix's spawn(8)
//                would run it) vs postgrey, at 1, 8, 32 and 100 connections:
//                decisions/s, p50/p99 and the summed RSS and USS of every
//                server process
//   rate limiting: policyd-ts (spawn mode and daemon) vs policyd-rate-limit's
//                daemon at 1 and 8 connections, and a race of 16 clients
//                on one key (ratelimit.ts)
//   Redis:       greylisting and rate limiting in the policyd-ts daemon with
//                store = redis (a private redis-server) vs store = sqlite,
//                and greylisting vs postgrey, at 1, 8 and 32 connections
//                (redis.ts)
//
//   node dist/bench/bench.js --compare [--requests N] [--spf-requests N]
//       [--cold-requests N] [--cold-runs N] [--daemon-starts N] [--rounds N] [--warmup N]
//       [--warmup-many N] [--paced-interval-ms N] [--paced-requests N] [--greylist-only] [--daemon-cpu-prof DIR]
//       [--ratelimit-only] [--ratelimit-requests N] [--race-limit N] [--race-daemons N] [--redis-only]
//   Warm figures are taken after --warmup requests to every server process
//   (default 2000; a daemon's spread over its connections; --warmup-many,
//   default 500, each when more than 8 processes are spawned): a policy
//   process serves thousands of requests in its life, and fewer leave V8
//   compiling during the timed part. --greylist-only skips SPF, the cold
//   starts, rate limiting and Redis; --ratelimit-only runs rate limiting alone, --redis-only the Redis part alone. --paced-*: the second timed part at 100 connections, each
//   sending one request every N ms (see reportScale).
//
// Needs root: postgrey drops to its own user, and policyd-spf (pyspf reads
// /etc/resolv.conf, port 53) runs in a private mount namespace where a
// temporary resolv.conf is bind-mounted over /etc/resolv.conf. The machine's
// /etc/resolv.conf is never touched. Missing programs are installed with
// scripts/bench-compare-deps.sh.

import { spawn, spawnSync, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process'
import dgram from 'node:dgram'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { startDnsServer, type DnsServer, type Zone } from '../test/helpers/dns-server'
import { Connection, cpuTimeNs, latencyStats, median, msSince, peakRssKb, policyRequest, row, totalMemoryKb } from './driver'

const ROOT = path.resolve(__dirname, '..', '..')
const BIN = path.join(ROOT, 'bin', 'policyd-ts')
const DEPS = path.join(ROOT, 'scripts', 'bench-compare-deps.sh')
const POSTGREY = '/usr/sbin/postgrey'
const POLICYD_SPF = '/usr/bin/policyd-spf'
export const POLICYD_RATE_LIMIT = '/usr/bin/policyd-rate-limit'
// The flags of master.cf.example's entry, as Postfix would start it (scripts/node-flags.js).
const NODE_FLAGS = (require('../../scripts/node-flags.js') as { nodeFlags(): string[] }).nodeFlags()
// spawn(8) gives its children PATH=/usr/bin:/bin and exports TZ, MAIL_CONFIG and LANG only.
const CHILD_ENV: NodeJS.ProcessEnv = { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8' }

export function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`)
  if (i === -1) return fallback
  const n = Number(process.argv[i + 1])
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} needs a positive whole number`)
  return n
}
function stringArg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`)
  if (i === -1) return undefined
  const v = process.argv[i + 1]
  if (v === undefined || v.startsWith('--')) throw new Error(`--${name} needs a value`)
  return v
}
export const GL_REQUESTS = Math.ceil(arg('requests', 16000) / 80) * 80 // whole blocks of 10 on each of 8 connections
const SPF_REQUESTS = Math.ceil(arg('spf-requests', 8000) / 8) * 8
const COLD_REQUESTS = arg('cold-requests', 500)
const COLD_RUNS = arg('cold-runs', 21)
const DAEMON_STARTS = arg('daemon-starts', 7)
export const ROUNDS = arg('rounds', 2)
export const CONNS = 8
/** Greylisting at each of these numbers of connections: the daemon, spawn mode (a process per connection) and postgrey. */
const LEVELS = [1, CONNS, 32, 100]
const MOST = LEVELS[LEVELS.length - 1]
/** At MOST connections, a second timed part paced like smtpd processes with sessions in between. */
const PACED_INTERVAL_MS = arg('paced-interval-ms', 50)
const PACED_PER_CONN = Math.ceil(arg('paced-requests', 8000) / MOST)
export const WARMUP = arg('warmup', 2000)
/** Warm-up requests per spawned process when there are more than CONNS of them (100 x 2,000 would take minutes). */
const WARMUP_MANY = arg('warmup-many', 500)
/** Greylisting only (no SPF, no cold starts): to iterate on the daemon quickly. */
const GREYLIST_ONLY = process.argv.includes('--greylist-only')
/** Rate limiting only (ratelimit.ts): no greylisting, SPF or cold starts. */
const RATELIMIT_ONLY = process.argv.includes('--ratelimit-only')
/** The Redis part only (redis.ts). */
const REDIS_ONLY = process.argv.includes('--redis-only')
/** A directory for a CPU profile of the daemon (node --cpu-prof), written when it stops. */
const DAEMON_CPU_PROF = stringArg('daemon-cpu-prof')
// Seconds, both servers (postgrey's minimum is 1: `$opt{delay} || 300`). The early retry
// must stay early when 100 connections share 2 cores (2 requests took over 3 s there).
export const GL_DELAY = 30
const KNOWN = 200 // triplets that passed greylisting before the timed runs

// ---------------------------------------------------------------- resources

/** Everything this run made, undone on success, failure and Ctrl-C. */
class Resources {
  readonly children = new Set<ChildProcess>()
  readonly closers: Array<() => Promise<void>> = []
  readonly dirs: string[] = []
  /** Set once cleanup starts (or Ctrl-C): children ending now are expected. */
  stopping = false
  private done = false

  track<T extends ChildProcess>(child: T): T {
    this.children.add(child)
    child.once('exit', () => this.children.delete(child))
    child.once('error', () => this.children.delete(child))
    return child
  }

  async cleanup(): Promise<void> {
    if (this.done) return
    this.done = true
    this.stopping = true
    // Our own children only, by pid: TERM, then KILL whatever is left after 5 s.
    const left = [...this.children].filter((c) => c.exitCode === null && c.signalCode === null)
    await Promise.all(left.map((c) => stopChild(c, 5000)))
    for (const close of this.closers.reverse()) await close().catch(() => undefined)
    for (const d of this.dirs) fs.rmSync(d, { recursive: true, force: true })
  }
}

function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
    child.once('exit', () => {
      clearTimeout(timer)
      resolve()
    })
    child.kill('SIGTERM')
  })
}

export const res = new Resources()

// ---------------------------------------------------------------- servers

/** A server under test: how to open one smtpd's connection to it. */
export interface Subject {
  name: string
  /** One process per connection (spawned) or one daemon for all (postgrey, policyd-ts --listen). */
  perConnectionProcess: boolean
  open(): Promise<Connection>
  /** The daemon's pid (daemons only): its process tree is the server's memory. */
  daemonPid?: () => number | undefined
  /** Other processes serving it (a daemon's redis-server): counted in its CPU time and memory. */
  helperPids?: () => number[]
}

export function spawnServer(name: string, file: string, args: string[]): Connection {
  const child = res.track(spawn(file, args, { env: CHILD_ENV, stdio: ['pipe', 'pipe', 'pipe'] })) as ChildProcessWithoutNullStreams
  let err = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (d: string) => {
    if (err.length < 4000) err += d
  })
  child.once('exit', (code, signal) => {
    if (res.stopping) return
    if ((code !== 0 && code !== null) || (signal && signal !== 'SIGTERM' && signal !== 'SIGKILL')) {
      process.stderr.write(`${name}[${child.pid}] exited with ${code ?? signal}${err ? `; stderr: ${err.trim()}` : ''}\n`)
    }
  })
  return Connection.spawned(child, name)
}

export function policydDbPath(dir: string, name: string): string {
  return path.join(dir, `${name}-db`, 'policyd-ts.sqlite')
}

/** policyd-ts's options in every part: no config file, its own database and log `name` in `dir`, no syslog, empty whitelists. */
export function policydArgs(dir: string, name: string): string[] {
  return [
    '--config', '/dev/null', '--db_path', policydDbPath(dir, name),
    '--syslog_socket', path.join(dir, 'no-syslog'), '--log_file', path.join(dir, `${name}.log`), '--debugLevel', '1',
    '--greylist_whitelist_clients', '', '--greylist_whitelist_recipients', '',
  ]
}

export function policydTs(name: string, args: string[]): Subject {
  return {
    name,
    perConnectionProcess: true,
    open: async () => spawnServer(name, process.execPath, [...NODE_FLAGS, BIN, ...args]),
  }
}

/** Runs `file args` inside a private mount namespace whose /etc/resolv.conf is `resolvConf`. */
function inNamespace(resolvConf: string, file: string, args: string[]): [string, string[]] {
  // unshare --mount makes every mount private to the new namespace (util-linux default
  // --propagation private); sh execs the program, so the pid stays the program's.
  return ['/usr/bin/unshare', ['--mount', '/bin/sh', '-c', 'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolvConf, file, ...args]]
}

function policydSpf(resolvConf: string, conf: string): Subject {
  const [file, args] = inNamespace(resolvConf, POLICYD_SPF, [conf])
  return { name: 'policyd-spf', perConnectionProcess: true, open: async () => spawnServer('policyd-spf', file, args) }
}

export function connectTo(where: net.NetConnectOpts): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(where)
    sock.once('connect', () => {
      sock.removeAllListeners('error')
      resolve(sock)
    })
    sock.once('error', reject)
  })
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo
      srv.close(() => resolve(port))
    })
  })
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** A server that is one daemon for all connections: postgrey, or policyd-ts --listen. */
export interface Daemon {
  name: string
  child: ChildProcess
  /** Where it listens (for the report). */
  where: string
  connect(): Promise<net.Socket>
  /** Its stdout and stderr. */
  outFile: string
  /** How long TERM may take before KILL. */
  graceMs: number
  /** Set when we stop it: any other exit is reported. */
  stopping: boolean
}

export function startDaemonProcess(d: Omit<Daemon, 'child' | 'stopping'>, file: string, args: string[]): Daemon {
  const outFd = fs.openSync(d.outFile, 'a')
  const child = res.track(spawn(file, args, { env: CHILD_ENV, stdio: ['ignore', outFd, outFd] }))
  fs.closeSync(outFd)
  const daemon: Daemon = { ...d, child, stopping: false }
  child.once('exit', (code, signal) => {
    if (daemon.stopping || res.stopping) return
    let tail = ''
    try {
      tail = fs.readFileSync(d.outFile, 'utf8').trimEnd().split('\n').slice(-3).join('\n  ')
    } catch {
      // no output
    }
    process.stderr.write(`${d.name}[${child.pid}] exited unexpectedly (${code ?? signal}); end of its output:\n  ${tail}\n`)
  })
  return daemon
}

export function stopDaemon(d: Daemon): Promise<void> {
  d.stopping = true
  return stopChild(d.child, d.graceMs)
}

/** Makes `dir` ready for startPostgrey: its database directory (owned by postgrey's user) and the empty whitelist file. */
export function preparePostgreyDir(dir: string): void {
  const pgUser = userIds('postgrey')
  fs.mkdirSync(path.join(dir, 'postgrey-db'), { mode: 0o700 })
  fs.chownSync(path.join(dir, 'postgrey-db'), pgUser.uid, pgUser.gid)
  fs.writeFileSync(path.join(dir, 'empty'), '')
}

export function startPostgrey(dir: string, port: number): Daemon {
  const args = [
    `--inet=127.0.0.1:${port}`, `--dbdir=${path.join(dir, 'postgrey-db')}`, `--delay=${GL_DELAY}`,
    // The empty lists policyd-ts runs with (postgrey's defaults are its /etc/postgrey files).
    `--whitelist-clients=${path.join(dir, 'empty')}`, `--whitelist-recipients=${path.join(dir, 'empty')}`,
  ]
  // Not daemonized (no -d): it stays our child, logs to stderr (here a file) instead of syslog.
  // Net::Server::Multiplex takes up to about 2 s to act on SIGTERM.
  return startDaemonProcess({
    name: 'postgrey', where: `127.0.0.1:${port}`, connect: () => connectTo({ host: '127.0.0.1', port }),
    outFile: path.join(dir, 'postgrey.log'), graceMs: 10000,
  }, POSTGREY, args)
}

/**
 * policyd-ts as one daemon for all connections, on a unix socket in
 * `sockDir` (a short path: a socket address has at most 107 bytes), with
 * master.cf.example's node flags and `extraNodeFlags` (e.g. --cpu-prof).
 */
export function startPolicydDaemon(dir: string, sockDir: string, args: string[], extraNodeFlags: string[]): Daemon {
  const socketPath = path.join(sockDir, 'policy.sock')
  return startDaemonProcess({
    name: 'policyd-ts daemon', where: `unix:${socketPath}`, connect: () => connectTo({ path: socketPath }),
    outFile: path.join(dir, 'daemon.out'), graceMs: 15000,
  }, process.execPath, [...NODE_FLAGS, ...extraNodeFlags, BIN, '--listen', `unix:${socketPath}`, '--listen_group', '', ...args])
}

/** Connects as soon as the daemon listens; rejects if it exits or takes over `limitMs`. */
export async function connectWhenUp(d: Daemon, limitMs: number): Promise<net.Socket> {
  const t0 = Date.now()
  for (;;) {
    if (d.child.exitCode !== null || d.child.signalCode !== null) throw new Error(`${d.name} exited (${d.child.exitCode ?? d.child.signalCode}); see ${d.outFile}`)
    try {
      return await d.connect()
    } catch {
      if (Date.now() - t0 > limitMs) throw new Error(`${d.name} did not listen on ${d.where} within ${limitMs} ms`)
      await sleep(2)
    }
  }
}

export function daemonSubject(d: Daemon): Subject {
  return {
    name: d.name,
    perConnectionProcess: false,
    open: async () => Connection.socket(await d.connect(), d.name),
    daemonPid: () => d.child.pid,
  }
}

// ---------------------------------------------------------------- DNS

interface Relay {
  address: string
  close(): Promise<void>
}

/**
 * pyspf can only ask port 53 of the resolv.conf nameservers, and the test
 * DNS server listens on an ephemeral port of 127.0.0.1: this relay answers
 * on `host`:53 (UDP and TCP) and passes every query to it. Both policyd-ts
 * and policyd-spf are pointed at the relay, so both pay the same hop.
 */
async function startRelay(hosts: string[], target: DnsServer): Promise<Relay> {
  const up = dgram.createSocket('udp4')
  await new Promise<void>((resolve, reject) => {
    up.once('error', reject)
    up.bind(0, '127.0.0.1', () => resolve())
  })
  const pending = new Map<number, { id: number; port: number; address: string }>()
  let seq = 0
  for (const host of hosts) {
    const down = dgram.createSocket('udp4')
    try {
      await new Promise<void>((resolve, reject) => {
        down.once('error', reject)
        down.bind(53, host, () => resolve())
      })
    } catch {
      down.close()
      continue
    }
    const sockets = new Set<net.Socket>()
    const tcp = net.createServer((sock) => {
      const u = net.connect({ host: target.address, port: target.port })
      sockets.add(sock).add(u)
      const drop = (): void => {
        sock.destroy()
        u.destroy()
        sockets.delete(sock)
        sockets.delete(u)
      }
      sock.on('error', drop).on('close', drop)
      u.on('error', drop).on('close', drop)
      sock.pipe(u)
      u.pipe(sock)
    })
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject)
        tcp.listen(53, host, () => resolve())
      })
    } catch {
      down.close()
      continue
    }
    down.on('message', (msg, rinfo) => {
      if (msg.length < 12) return
      seq = (seq + 1) & 0xffff
      pending.set(seq, { id: msg.readUInt16BE(0), port: rinfo.port, address: rinfo.address })
      const out = Buffer.from(msg)
      out.writeUInt16BE(seq, 0)
      up.send(out, target.port, target.address)
    })
    up.on('message', (msg) => {
      if (msg.length < 12) return
      const p = pending.get(msg.readUInt16BE(0))
      if (!p) return
      pending.delete(msg.readUInt16BE(0))
      msg.writeUInt16BE(p.id, 0)
      down.send(msg, p.port, p.address)
    })
    return {
      address: host,
      close: () =>
        new Promise((resolve) => {
          for (const s of sockets) s.destroy()
          down.close(() => up.close(() => tcp.close(() => resolve())))
        }),
    }
  }
  up.close()
  throw new Error(`no free port 53 on ${hosts.join(', ')} for the DNS relay`)
}

/** Median round trip (µs) of a TXT query for `name` to host:port, from this process. */
async function dnsRttUs(host: string, port: number, name: string, n = 300): Promise<number> {
  const q = Buffer.concat([
    Buffer.from([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]),
    ...name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])),
    Buffer.from([0, 0, 16, 0, 1]),
  ])
  const sock = dgram.createSocket('udp4')
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()))
  const t: number[] = []
  try {
    for (let i = 0; i < n + 20; i++) {
      const t0 = process.hrtime.bigint()
      await new Promise<void>((resolve) => {
        sock.once('message', () => resolve())
        sock.send(q, port, host)
      })
      if (i >= 20) t.push(msSince(t0) * 1000)
    }
  } finally {
    sock.close()
  }
  return median(t)
}

// ---------------------------------------------------------------- streams

/** One request of a stream and the reply it must get. */
export interface Item {
  text: string
  expect: Expect
}
type Expect = 'greylist' | 'pass' | 'first-pass' | 'spf-pass'
export type Stream = (i: number) => Item

const EXPECT: Record<Expect, RegExp> = {
  greylist: /^action=DEFER_IF_PERMIT /i,
  pass: /^action=DUNNO$/i,
  'first-pass': /^action=(PREPEND X-Greylist: |DUNNO$)/i,
  'spf-pass': /^action=PREPEND Received-SPF: Pass /i,
}

/** A triplet that passed greylisting before the timed runs; each has its own client /24. */
function knownTriplet(k: number, instance: string): string {
  // Local parts without word boundaries around digits: postgrey turns every \b\d+\b into #.
  return policyRequest({
    client_address: `10.200.${k}.7`, sender: `k${k}x@known.example`, recipient: `r${k}x@example.org`, instance,
  })
}

export function newTriplet(tag: string, i: number, instance: string): string {
  const id = `${tag}q${i.toString(36)}`
  return policyRequest({
    client_address: `172.16.${(i >> 8) & 255}.${i & 255}`, sender: `n${id}x@new.example`, recipient: `bob@example.org`, instance,
  })
}

export const GREYLIST_MIX = 'each 10 requests: 2 new triplets, 1 early retry of one of them (2 requests later), 7 triplets that passed before (200 of them, each client its own /24)'

/** The greylisting stream `tag`: new triplets are new to the server only once per tag. */
export function greylistStream(tag: string, salt = 0): Stream {
  return (i) => {
    const instance = `${tag}.${i}`
    const slot = i % 10
    if (slot === 0 || slot === 5) return { text: newTriplet(tag, i, instance), expect: 'greylist' }
    if (slot === 7) return { text: newTriplet(tag, i - 2, instance), expect: 'greylist' }
    return { text: knownTriplet((i * 7919 + salt * 31) % KNOWN, instance), expect: 'pass' }
  }
}

const HELO = 'out.provider.bench'
const CLIENT = '192.0.2.10'
const KINDS = ['ip4', 'a', 'include', 'mixed'] as const
const WARM_DOMAINS = Array.from({ length: 8 }, (_, i) => `w${i}${KINDS[i % 4]}.warm.bench`)
const SPF_MIX = `sender domains that pass via ip4: / a: / include: / ip4+a+include (first two miss), HELO ${HELO} passes via ip4:, client ${CLIENT}`

/** The zone entries of a sender domain; its kind is the name's first label suffix. */
function domainRecords(domain: string, zone: Zone): void {
  const kind = KINDS.find((k) => domain.split('.')[0].endsWith(k)) ?? 'ip4'
  if (kind === 'ip4') zone[domain] = [{ TXT: 'v=spf1 ip4:192.0.2.0/24 -all' }]
  if (kind === 'a') {
    zone[domain] = [{ TXT: `v=spf1 a:mail.${domain} -all` }]
    zone[`mail.${domain}`] = [{ A: CLIENT }]
  }
  if (kind === 'include') zone[domain] = [{ TXT: 'v=spf1 include:_spf.provider.bench -all' }]
  if (kind === 'mixed') {
    zone[domain] = [{ TXT: `v=spf1 ip4:203.0.113.0/24 a:mx.${domain} include:_spf.provider.bench -all` }]
    zone[`mx.${domain}`] = [{ A: '203.0.113.25' }]
  }
}

function baseZone(): Zone {
  const zone: Zone = {
    [HELO]: [{ TXT: 'v=spf1 ip4:192.0.2.0/24 -all' }, { A: CLIENT }],
    '_spf.provider.bench': [{ TXT: 'v=spf1 ip4:198.51.100.0/24 ip4:192.0.2.0/24 -all' }],
  }
  for (const d of WARM_DOMAINS) domainRecords(d, zone)
  return zone
}

function coldDomain(tag: string, i: number): string {
  return `c${tag}n${i}${KINDS[i % 4]}.cold.bench`
}

/**
 * The zone while cold-stream requests `from`..`from + COLD_CHUNK - 1` run: the base plus
 * just their domains. The test server scans the zone's names linearly on every query,
 * so a zone holding the whole cold stream would make late names slower to answer.
 */
const COLD_CHUNK = 50
function coldZone(tag: string, from: number): Zone {
  const zone = baseZone()
  for (let i = from; i < from + COLD_CHUNK; i++) domainRecords(coldDomain(tag, i), zone)
  return zone
}

function spfRequest(domain: string, i: number, instance: string): string {
  return policyRequest({
    client_address: CLIENT, client_name: HELO, reverse_client_name: HELO, helo_name: HELO,
    sender: `u${i.toString(36)}x@${domain}`, recipient: 'bob@example.org', instance,
  })
}

/** The same handful of sender domains over and over (per-process DNS caches stay warm). */
function spfWarmStream(tag: string): Stream {
  return (i) => ({ text: spfRequest(WARM_DOMAINS[i % WARM_DOMAINS.length], i, `${tag}.${i}`), expect: 'spf-pass' })
}

/** Every request from a sender domain not seen before. */
function spfColdStream(tag: string): Stream {
  return (i) => ({ text: spfRequest(coldDomain(tag, i), i, `${tag}.${i}`), expect: 'spf-pass' })
}

// ---------------------------------------------------------------- measuring

export interface Check {
  mismatches: number
  firstMismatch: string
  sample: string
}

function verify(check: Check, item: Item, reply: string): void {
  check.sample = reply
  if (!EXPECT[item.expect].test(reply)) {
    if (check.mismatches === 0) check.firstMismatch = `expected ${item.expect}, got ${JSON.stringify(reply)} for ${JSON.stringify(item.text.split('\n').filter((l) => /^(client_address|sender|recipient|helo_name)=/.test(l)).join(' '))}`
    check.mismatches++
  }
}

export interface Result {
  rate: number
  p50: number
  p99: number
  /** Peak RSS (kB) of each serving process. */
  rssKb: number[]
  /** Every server process at the end of the timed part (connections still open): summed RSS and USS, kB. */
  server: { rssKb: number; ussKb: number; processes: number }
  requests: number
  mismatches: number
  firstMismatch: string
  sample: string
  dnsPerRequest?: number
  /** CPU time of this (the bench) process per timed request, µs: the client side, plus the DNS server and relay. */
  benchCpuUs: number
  /** CPU time of every server process per timed request, µs (all threads). */
  serverCpuUs: number
}

export function better(a: Result | undefined, b: Result): Result {
  if (!a) return b
  return {
    rate: Math.max(a.rate, b.rate), p50: Math.min(a.p50, b.p50), p99: Math.min(a.p99, b.p99),
    rssKb: a.rssKb.map((v, i) => Math.max(v, b.rssKb[i] ?? 0)),
    // Memory: the larger of the rounds (what has to be provisioned).
    server: { rssKb: Math.max(a.server.rssKb, b.server.rssKb), ussKb: Math.max(a.server.ussKb, b.server.ussKb), processes: Math.max(a.server.processes, b.server.processes) },
    requests: a.requests + b.requests,
    mismatches: a.mismatches + b.mismatches, firstMismatch: a.firstMismatch || b.firstMismatch, sample: b.sample,
    dnsPerRequest: a.dnsPerRequest === undefined || b.dnsPerRequest === undefined ? undefined : Math.min(a.dnsPerRequest, b.dnsPerRequest),
    benchCpuUs: Math.min(a.benchCpuUs, b.benchCpuUs),
    serverCpuUs: Math.min(a.serverCpuUs, b.serverCpuUs),
  }
}

interface MeasureOptions {
  dns?: DnsServer
  /** Called before each timed request is made. */
  before?: (n: number, i: number) => void
  /**
   * Paced instead of back to back: each connection sends one request every
   * `intervalMs` (connections staggered evenly), as smtpd processes with
   * SMTP sessions in between do; when a reply comes late the next request
   * goes at once. Latency is from the actual send.
   */
  intervalMs?: number
}

/** One timed part of a measurement: `perConn` requests of its own stream on each connection. */
interface Phase extends MeasureOptions {
  perConn: number
  stream: (n: number) => Stream
}

/**
 * `conns` connections each send `perConn` requests of their own stream one
 * at a time, after a warm-up stream; the rate is all timed requests over the
 * wall time of the timed part. Every server process gets `warmup` requests
 * first (WARMUP_MANY when more than CONNS are spawned): each connection of a
 * spawned process that many, the connections of a daemon their share.
 */
export async function measure(
  subject: Subject, conns: number, perConn: number, stream: (n: number) => Stream, warmup: number, warmStream: (n: number) => Stream,
  opts: MeasureOptions = {},
): Promise<Result> {
  return (await measurePhases(subject, conns, warmup, warmStream, [{ perConn, stream, ...opts }]))[0]
}

/** As measure(), with several timed parts one after the other on the same warmed-up connections. */
async function measurePhases(subject: Subject, conns: number, warmup: number, warmStream: (n: number) => Stream, phases: Phase[]): Promise<Result[]> {
  const cs = await Promise.all(Array.from({ length: conns }, () => subject.open()))
  const warmupPerConn = !subject.perConnectionProcess ? Math.ceil(warmup / conns) : conns > CONNS ? Math.min(warmup, WARMUP_MANY) : warmup
  try {
    // Warm-up (JIT, caches): its replies are not looked at; every timed one is checked.
    await Promise.all(cs.map(async (c, n) => {
      const s = warmStream(n)
      for (let i = 0; i < warmupPerConn; i++) await c.ask(s(i).text)
    }))
    const results: Result[] = []
    for (const phase of phases) results.push(await timed(subject, cs, phase))
    return results
  } finally {
    await Promise.all(cs.map((c) => c.close()))
  }
}

async function timed(subject: Subject, cs: Connection[], phase: Phase): Promise<Result> {
  const { perConn, stream, dns, before, intervalMs } = phase
  const check: Check = { mismatches: 0, firstMismatch: '', sample: '' }
  const lat: number[] = []
  const pids = [...(subject.perConnectionProcess ? cs.map((c) => c.pid) : [subject.daemonPid?.()]), ...(subject.helperPids?.() ?? [])].filter((p): p is number => p !== undefined)
  const serverNs0 = cpuTimeNs(pids)
  const q0 = dns?.queries ?? 0
  const cpu0 = process.cpuUsage()
  const t0 = process.hrtime.bigint()
  const start = performance.now()
  await Promise.all(cs.map(async (c, n) => {
    const s = stream(n)
    for (let i = 0; i < perConn; i++) {
      if (intervalMs !== undefined) {
        const wait = start + (n / cs.length + i) * intervalMs - performance.now()
        if (wait > 0) await sleep(wait)
      }
      before?.(n, i)
      const item = s(i)
      const t = process.hrtime.bigint()
      const reply = await c.ask(item.text)
      lat.push(msSince(t))
      verify(check, item, reply)
    }
  }))
  const seconds = msSince(t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  const serverNs = cpuTimeNs(pids) - serverNs0
  const queries = (dns?.queries ?? 0) - q0
  const rssKb = subject.perConnectionProcess ? cs.map((c) => c.peakRssKb()) : []
  const server = totalMemoryKb(pids)
  const { p50, p99 } = latencyStats(lat)
  return {
    rate: lat.length / seconds, p50, p99, rssKb, server, requests: lat.length, ...check,
    dnsPerRequest: dns ? queries / lat.length : undefined,
    benchCpuUs: (cpu.user + cpu.system) / lat.length,
    serverCpuUs: serverNs / 1000 / lat.length,
  }
}

/** Spawn → first reply, in ms. */
async function coldStart(subject: Subject, item: Item, check: Check): Promise<number> {
  const t0 = process.hrtime.bigint()
  const conn = await subject.open()
  try {
    const reply = await conn.ask(item.text)
    const ms = msSince(t0)
    verify(check, item, reply)
    return ms
  } finally {
    await conn.close()
  }
}

/** postgrey: daemon start → first reply, in ms (it is a daemon: started once, not per connection). */
async function postgreyStart(dir: string, item: Item, check: Check): Promise<number> {
  const port = await freePort()
  const t0 = process.hrtime.bigint()
  const pg = startPostgrey(dir, port)
  try {
    const conn = Connection.socket(await connectWhenUp(pg, 15000), 'postgrey')
    const reply = await conn.ask(item.text)
    const ms = msSince(t0)
    verify(check, item, reply)
    await conn.close()
    return ms
  } finally {
    await stopDaemon(pg)
  }
}

export async function seedKnown(subject: Subject, phase: 'new' | 'pass', tag: string): Promise<Check> {
  const conn = await subject.open()
  const check: Check = { mismatches: 0, firstMismatch: '', sample: '' }
  try {
    for (let k = 0; k < KNOWN; k++) {
      const item: Item = { text: knownTriplet(k, `${tag}.${k}`), expect: phase === 'new' ? 'greylist' : 'first-pass' }
      verify(check, item, await conn.ask(item.text))
    }
  } finally {
    await conn.close()
  }
  return check
}

// ---------------------------------------------------------------- output

type GreyKey = 'ts' | 'daemon' | 'pg'
const GREY_NAMES: Record<GreyKey, string> = { daemon: 'policyd-ts daemon', ts: 'policyd-ts spawn mode', pg: 'postgrey' }

/** The greylisting figures at every number of connections, and the daemon's targets. */
function reportScale(
  res: Record<GreyKey, Map<number, Result>>, paced: Partial<Record<GreyKey, Result>>, daemonPeakKb: number,
  daemonChecks: Check[], daemonNewSample: string, target: (ok: boolean, what: string) => string,
): void {
  const W = [6, 22, 12, 18, 11, 6, 10, 10]
  const keys: GreyKey[] = ['daemon', 'ts', 'pg']
  const line = (conns: string, key: GreyKey, r: Result): string =>
    row([conns, GREY_NAMES[key], fmtRate(r), `${r.p50.toFixed(3)} / ${r.p99.toFixed(3)}`, r.serverCpuUs.toFixed(1), r.server.processes, mb(r.server.rssKb), mb(r.server.ussKb)], W)
  out('== Greylisting at scale: policyd-ts as one daemon vs spawn mode vs postgrey')
  out(`stream: as above, each connection its own; ${GL_REQUESTS} timed requests per number of connections and round, split over the connections, after ${WARMUP} warm-up requests to every server process (a daemon's spread over its connections; ${Math.min(WARMUP, WARMUP_MANY)} each when more than ${CONNS} are spawned); best of ${ROUNDS} rounds`)
  out('CPU us/req: CPU time of every server process (all threads) over the timed part, per request (the least of the rounds)')
  out('memory: every server process at the end of the timed part with its connections open (the largest of the rounds): RSS and USS (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup), summed')
  out(row(['conns', 'server', 'decisions/s', 'p50 / p99 ms', 'CPU us/req', 'procs', 'RSS MB', 'USS MB'], W))
  for (const conns of LEVELS) {
    for (const key of keys) out(line(keys.indexOf(key) === 0 ? String(conns) : '', key, res[key].get(conns)!))
  }
  out(`paced: ${MOST} connections, each sending one request every ${PACED_INTERVAL_MS} ms (${((MOST * 1000) / PACED_INTERVAL_MS).toFixed(0)}/s offered; smtpd processes with SMTP sessions in between), ${PACED_PER_CONN} requests per connection and round:`)
  for (const key of keys) out(line(keys.indexOf(key) === 0 ? String(MOST) : '', key, paced[key]!))

  const d8 = res.daemon.get(CONNS)!
  const p8 = res.pg.get(CONNS)!
  const dMost = res.daemon.get(MOST)!
  const sMost = res.ts.get(MOST)!
  const dPaced = paced.daemon!
  const TW = [58, 44, 6]
  out(row(['target', 'measured', 'result'], TW))
  out(row([`daemon at ${CONNS} connections >= 10 x postgrey's decisions/s`, `${fmtRate(d8)} / ${fmtRate(p8)} = ${(d8.rate / p8.rate).toFixed(2)} x`, target(d8.rate >= 10 * p8.rate, `daemon ${CONNS} connections >= 10 x postgrey`)], TW))
  // Checked on the daemon's peak over the whole run: its heaviest part was at MOST connections.
  const dRssKb = Math.max(daemonPeakKb, dMost.server.rssKb, dPaced.server.rssKb)
  out(row([`daemon at ${MOST} connections: total RSS <= 100 MB`, `${mb(dRssKb)} MB peak (USS ${mb(Math.max(dMost.server.ussKb, dPaced.server.ussKb))} MB)`, target(dRssKb <= 100 * 1024, `daemon RSS at ${MOST} connections`)], TW))
  out(row([`  spawn mode at ${MOST} connections (${sMost.server.processes} processes)`, `${mb(sMost.server.rssKb)} MB (USS ${mb(sMost.server.ussKb)} MB)`, '(reported)'], TW))
  out(row([`daemon at ${MOST} connections, paced: p99 <= 5 ms`, `${dPaced.p99.toFixed(3)} ms at ${fmtRate(dPaced)}/s`, target(dPaced.p99 <= 5, `daemon p99 at ${MOST} paced connections`)], TW))
  // Back to back, N connections always have N requests waiting: the mean latency is N / rate
  // for any server (Little's law), so p99 <= 5 ms there would need over 20,000 decisions/s.
  out(row([`  back to back (N/rate: ${((MOST / dMost.rate) * 1000).toFixed(1)} ms)`, `${dMost.p99.toFixed(3)} ms at ${fmtRate(dMost)}/s`, '(reported)'], TW))
  out(`daemon peak RSS: VmHWM over the whole run; bench-side CPU us/request at ${MOST} connections: daemon ${dMost.benchCpuUs.toFixed(0)}, spawn mode ${sMost.benchCpuUs.toFixed(0)}, postgrey ${res.pg.get(MOST)!.benchCpuUs.toFixed(0)} (the bench shares the ${os.cpus().length} cores with the servers)`)
  const checks: Array<[string, Check]> = [['daemon seeding', daemonChecks[0]], ['daemon first pass', daemonChecks[1]]]
  for (const k of keys) {
    for (const [conns, r] of res[k]) checks.push([`${GREY_NAMES[k]} ${conns}`, r])
    checks.push([`${GREY_NAMES[k]} ${MOST} paced`, paced[k]!])
  }
  const unexpected = checks.reduce((n, [, c]) => n + c.mismatches, 0)
  out(`replies: ${unexpected === 0 ? 'all as expected' : 'NOT all as expected: figures unverified'} (daemon: new triplet ${JSON.stringify(daemonNewSample)}, first pass ${JSON.stringify(daemonChecks[1].sample)})`)
  for (const [who, c] of checks) if (c.mismatches > 0) out(`  ${who}: ${c.mismatches} unexpected, first: ${c.firstMismatch}`)
}

export const out = (s = ''): void => {
  process.stdout.write(`${s}\n`)
}

export function fmtRate(r: Result | undefined): string {
  return r ? r.rate.toFixed(0) : '-'
}

export function mb(kb: number): string {
  return (kb / 1024).toFixed(1)
}

function rssCell(r: Result): string {
  if (r.rssKb.length === 0) return '-'
  if (r.rssKb.length === 1) return mb(r.rssKb[0])
  return `${mb(Math.max(...r.rssKb))} / ${mb(r.rssKb.reduce((a, b) => a + b, 0))}`
}

export function verdict(ok: boolean): string {
  return ok ? 'PASS' : 'MISS'
}

export function tryVersion(pkg: string): string {
  const r = spawnSync('dpkg-query', ['-W', '-f=${Version}', pkg], { encoding: 'utf8' })
  return r.status === 0 ? r.stdout.trim() : '?'
}

export function userIds(name: string): { uid: number; gid: number } {
  const line = fs.readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(`${name}:`))
  if (!line) throw new Error(`no user ${name} (is ${name} installed?)`)
  const [, , uid, gid] = line.split(':')
  return { uid: Number(uid), gid: Number(gid) }
}

// ---------------------------------------------------------------- main

export async function main(): Promise<void> {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'lib', 'cli.js'))) throw new Error('build first: npx tsc -p tsconfig.json')
  if (process.getuid?.() !== 0) throw new Error('--compare needs root: postgrey drops to its own user and policyd-spf runs in a private mount namespace')
  const programs = [POSTGREY, POLICYD_SPF, POLICYD_RATE_LIMIT]
  if (!programs.every((p) => fs.existsSync(p))) {
    process.stderr.write(`postgrey, policyd-spf or policyd-rate-limit missing: running ${path.relative(ROOT, DEPS)}\n`)
    const r = spawnSync('sh', [DEPS], { stdio: ['ignore', 2, 2] })
    if (r.status !== 0 || !programs.every((p) => fs.existsSync(p))) throw new Error(`${DEPS} failed (exit ${r.status})`)
  }

  let interrupted = false
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) return
    interrupted = true
    res.stopping = true
    process.stderr.write(`\n${sig}: cleaning up\n`)
    void res.cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  try {
    await run()
  } catch (err) {
    // Interrupted: the requests in flight fail because their servers are being stopped; the signal handler exits.
    if (interrupted) return new Promise<void>(() => undefined)
    throw err
  } finally {
    await res.cleanup()
    if (!interrupted) {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    }
  }
}

async function run(): Promise<void> {
  const started = Date.now()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'policyd-ts-compare-'))
  res.dirs.push(dir)
  // postgrey and policyd-rate-limit drop to their users: they need to get through to their directories.
  fs.chmodSync(dir, 0o711)
  const misses: string[] = []
  const target = (ok: boolean, what: string): string => {
    if (!ok) misses.push(what)
    return verdict(ok)
  }
  const finish = (): void => {
    out(`targets: ${misses.length === 0 ? 'all met' : `NOT all met: ${misses.join('; ')}`}`)
    out(`(compare run: ${((Date.now() - started) / 1000).toFixed(0)} s; load average ${os.loadavg()[0].toFixed(2)} at the end)`)
  }
  // Required here, not imported: it imports this module.
  const rateLimit = (): Promise<void> => (require('./ratelimit') as typeof import('./ratelimit')).rateLimitPart(dir, target)
  if (RATELIMIT_ONLY) {
    await rateLimit()
    return finish()
  }
  const redis = (): Promise<void> => (require('./redis') as typeof import('./redis')).redisPart(dir, target)
  if (REDIS_ONLY) {
    await redis()
    return finish()
  }
  preparePostgreyDir(dir)

  // ---- DNS: the test server, reachable on <loopback>:53 for pyspf.
  const dns = await startDnsServer(baseZone())
  res.closers.push(() => dns.close())
  const relay = await startRelay(['127.0.0.153', '127.0.0.154', '127.0.0.155', '127.0.0.156'], dns)
  res.closers.push(() => relay.close())
  const resolvConf = path.join(dir, 'resolv.conf')
  fs.writeFileSync(resolvConf, `# policyd-ts bench --compare: bind-mounted over /etc/resolv.conf in policyd-spf's mount namespace only\nnameserver ${relay.address}\n`)
  const spfConf = path.join(dir, 'policyd-spf.conf')
  // Debian's shipped /etc/postfix-policyd-spf-python/policyd-spf.conf, spelled out.
  fs.writeFileSync(spfConf, [
    'debugLevel = 1', 'TestOnly = 1', 'HELO_reject = Fail', 'Mail_From_reject = Fail',
    'PermError_reject = False', 'TempError_Defer = False',
    'skip_addresses = 127.0.0.0/8,::ffff:127.0.0.0/104,::1', '',
  ].join('\n'))

  const common = (name: string): string[] => policydArgs(dir, name)
  const tsGrey = policydTs('policyd-ts', [...common('greylist'), '--spf_enabled', 'no', '--greylist_delay', `${GL_DELAY}s`])
  const tsSpf = policydTs('policyd-ts', [...common('spf'), '--greylist_enabled', 'no', '--spf_enabled', 'yes', '--dns_servers', relay.address])
  const spf = policydSpf(resolvConf, spfConf)
  // The same greylisting options as spawn mode, one process for all connections (socket path: < 108 bytes).
  const sockDir = fs.mkdtempSync('/tmp/pts-bench-')
  res.dirs.push(sockDir)
  const tsd = startPolicydDaemon(dir, sockDir, [...common('daemon'), '--spf_enabled', 'no', '--greylist_delay', `${GL_DELAY}s`],
    DAEMON_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', path.resolve(DAEMON_CPU_PROF)] : [])
  ;(await connectWhenUp(tsd, 15000)).destroy()
  const tsDaemon = daemonSubject(tsd)

  const pg = startPostgrey(dir, await freePort())
  ;(await connectWhenUp(pg, 15000)).destroy()
  const grey = daemonSubject(pg)

  out(`policyd-ts bench --compare: node ${process.version}, ${os.cpus().length} cores, load average ${os.loadavg()[0].toFixed(2)} at start; ${ROUNDS} interleaved rounds (best figure of each kept), same request streams for both sides`)
  out(`policyd-ts: node ${NODE_FLAGS.join(' ')} bin/policyd-ts --config /dev/null, temp db_path, no syslog (log_file, debugLevel 1), empty whitelists`)
  out(`policyd-ts daemon: the same, with --listen ${tsd.where} --listen_group '' (one process for all connections)${DAEMON_CPU_PROF ? `, --cpu-prof into ${path.resolve(DAEMON_CPU_PROF)}` : ''}`)
  out(`postgrey ${tryVersion('postgrey')}: ${POSTGREY} --inet=${pg.where} --dbdir=<temp> --delay=${GL_DELAY} --whitelist-clients=<empty> --whitelist-recipients=<empty>, foreground, log on stderr (file)`)
  out(`policyd-spf ${tryVersion('postfix-policyd-spf-python')} (pyspf ${tryVersion('python3-spf')}, pydns ${tryVersion('python3-dns')}): unshare --mount + bind-mounted resolv.conf, then ${POLICYD_SPF} <Debian default conf>, over pipes`)
  out(`DNS: test/helpers/dns-server.ts on ${dns.address}:${dns.port}, relayed on ${relay.address}:53 for both SPF servers`)
  out()

  // ---- First check the replies: no number counts before these hold.
  const samples: Record<string, string> = {}
  const greyProbe: Item = { text: newTriplet('probe', 0, 'probe.0'), expect: 'greylist' }
  for (const s of [tsGrey, tsDaemon, grey]) {
    const c = await s.open()
    const reply = await c.ask(greyProbe.text)
    await c.close()
    samples[`grey ${s.name}`] = reply
    if (!EXPECT.greylist.test(reply)) throw new Error(`${s.name} did not greylist a new triplet: ${JSON.stringify(reply)}`)
  }
  const spfProbe: Item = { text: spfRequest(WARM_DOMAINS[0], 0, 'probe.0'), expect: 'spf-pass' }
  for (const s of GREYLIST_ONLY ? [] : [tsSpf, spf]) {
    const c = await s.open()
    samples[`spf ${s.name}`] = await c.ask(spfProbe.text)
    await c.close()
  }
  if (!GREYLIST_ONLY && !EXPECT['spf-pass'].test(samples['spf policyd-spf'])) throw new Error(`policyd-spf did not answer Pass: ${JSON.stringify(samples['spf policyd-spf'])} (DNS through the relay not working?)`)
  const spfLive = /Received-SPF:/i.test(samples['spf policyd-ts'])
  const spfOk = EXPECT['spf-pass'].test(samples['spf policyd-ts'])

  // ---- Greylisting, part 1: the known triplets are seen once now, so that they pass after GL_DELAY.
  const seed1 = await Promise.all([seedKnown(tsGrey, 'new', 'seed1'), seedKnown(grey, 'new', 'seed1'), seedKnown(tsDaemon, 'new', 'seed1')])
  const seededAt = Date.now()

  // ---- SPF (also fills the greylisting wait).
  const spfRes: Record<string, { w1?: Result; w8?: Result; c1?: Result }> = { ts: {}, spf: {} }
  const probeZone = coldZone('probe', 0)
  dns.setZone(probeZone)
  const coldZoneNames = Object.keys(probeZone).length
  const coldNameUs = await dnsRttUs(dns.address, dns.port, coldDomain('probe', COLD_CHUNK - 1), 100)
  dns.setZone(baseZone())
  for (let r = 0; r < (GREYLIST_ONLY ? 0 : ROUNDS); r++) {
    for (const [key, s] of [['ts', tsSpf], ['spf', spf]] as const) {
      const x = spfRes[key]
      x.w1 = better(x.w1, await measure(s, 1, SPF_REQUESTS, () => spfWarmStream(`s${r}w1`), WARMUP, () => spfWarmStream(`s${r}u1`), { dns }))
      x.w8 = better(x.w8, await measure(s, CONNS, SPF_REQUESTS / CONNS, (n) => spfWarmStream(`s${r}w8c${n}`), WARMUP, (n) => spfWarmStream(`s${r}u8c${n}`), { dns }))
      // Cold cache: a warmed-up process (JIT), then only domains it has never seen.
      const tag = `r${r}`
      x.c1 = better(x.c1, await measure(s, 1, COLD_REQUESTS, () => spfColdStream(tag), WARMUP, () => spfWarmStream(`s${r}uc`), { dns, before: (_n, i) => {
        if (i % COLD_CHUNK === 0) dns.setZone(coldZone(tag, i))
      } }))
      dns.setZone(baseZone())
    }
  }
  dns.setZone(baseZone())
  // Cold starts, interleaved; the namespace wrapper's own cost is measured with cat.
  const coldCheck = { ts: { mismatches: 0, firstMismatch: '', sample: '' }, spf: { mismatches: 0, firstMismatch: '', sample: '' }, grey: { mismatches: 0, firstMismatch: '', sample: '' }, none: { mismatches: 0, firstMismatch: '', sample: '' } }
  const coldMs = { tsSpf: [] as number[], spf: [] as number[], tsGrey: [] as number[], cat: [] as number[], wrappedCat: [] as number[] }
  const [wrapFile, wrapArgs] = inNamespace(resolvConf, '/bin/cat', [])
  const cat: Subject = { name: 'cat', perConnectionProcess: true, open: async () => spawnServer('cat', '/bin/cat', []) }
  const wrappedCat: Subject = { name: 'cat (namespace)', perConnectionProcess: true, open: async () => spawnServer('cat', wrapFile, wrapArgs) }
  const echoItem = (i: number): Item => ({ text: spfRequest(WARM_DOMAINS[i % 8], i, `e.${i}`), expect: 'spf-pass' })
  for (let i = 0; i < (GREYLIST_ONLY ? 0 : COLD_RUNS); i++) {
    coldMs.tsSpf.push(await coldStart(tsSpf, { text: spfRequest(WARM_DOMAINS[i % 8], i, `cs.${i}`), expect: 'spf-pass' }, coldCheck.ts))
    coldMs.spf.push(await coldStart(spf, { text: spfRequest(WARM_DOMAINS[i % 8], i, `cs.${i}`), expect: 'spf-pass' }, coldCheck.spf))
    coldMs.cat.push(await coldStart(cat, echoItem(i), coldCheck.none))
    coldMs.wrappedCat.push(await coldStart(wrappedCat, echoItem(i), coldCheck.none))
  }

  // ---- Greylisting, part 2: the known triplets' first pass, then the timed runs.
  const wait = seededAt + (GL_DELAY + 1.2) * 1000 - Date.now()
  if (wait > 0) await sleep(wait)
  const seed2 = await Promise.all([seedKnown(tsGrey, 'pass', 'seed2'), seedKnown(grey, 'pass', 'seed2'), seedKnown(tsDaemon, 'pass', 'seed2')])
  // Every server at every number of connections; within a round the servers take turns at each level.
  const greySubjects = [['ts', tsGrey], ['daemon', tsDaemon], ['pg', grey]] as const
  const greyRes: Record<GreyKey, Map<number, Result>> = { ts: new Map(), daemon: new Map(), pg: new Map() }
  const pacedRes: Partial<Record<GreyKey, Result>> = {}
  for (let r = 0; r < ROUNDS; r++) {
    for (const conns of LEVELS) {
      for (const [key, s] of greySubjects) {
        const phases: Phase[] = [{ perConn: Math.ceil(GL_REQUESTS / conns / 10) * 10, stream: (n) => greylistStream(`g${r}c${conns}n${n}`, n) }]
        if (conns === MOST) phases.push({ perConn: PACED_PER_CONN, stream: (n) => greylistStream(`g${r}p${conns}n${n}`, n), intervalMs: PACED_INTERVAL_MS })
        const [all, paced] = await measurePhases(s, conns, WARMUP, (n) => greylistStream(`g${r}w${conns}n${n}`, n), phases)
        greyRes[key].set(conns, better(greyRes[key].get(conns), all))
        if (paced) pacedRes[key] = better(pacedRes[key], paced)
      }
    }
  }
  const daemonPeakKb = peakRssKb(tsd.child.pid ?? 0)
  await stopDaemon(tsd)
  if (tsd.child.exitCode !== 0) throw new Error(`the policyd-ts daemon did not exit 0 on TERM (${tsd.child.exitCode ?? tsd.child.signalCode}); see ${tsd.outFile}`)
  for (let i = 0; i < (GREYLIST_ONLY ? 0 : COLD_RUNS); i++) coldMs.tsGrey.push(await coldStart(tsGrey, { text: newTriplet('cold', i, `cold.${i}`), expect: 'greylist' }, coldCheck.grey))
  const pgRssKb = peakRssKb(pg.child.pid ?? 0)
  await stopDaemon(pg)
  const pgStarts: number[] = []
  for (let i = 0; i < (GREYLIST_ONLY ? 0 : DAEMON_STARTS); i++) pgStarts.push(await postgreyStart(dir, { text: newTriplet('pgcold', i, `pgcold.${i}`), expect: 'greylist' }, coldCheck.grey))

  // ---- Report.
  const W = [40, 20, 20, 9, 16, 6]
  const hdr = (a: string, b: string): string => row(['figure', a, b, 'ratio', 'target', 'result'], W)

  const g1 = greyRes.ts.get(1)!
  const g8 = greyRes.ts.get(CONNS)!
  const p1 = greyRes.pg.get(1)!
  const p8 = greyRes.pg.get(CONNS)!
  const greyVerified = g1.mismatches + g8.mismatches + p1.mismatches + p8.mismatches + seed1[0].mismatches + seed1[1].mismatches + seed2[0].mismatches + seed2[1].mismatches === 0
  out('== Greylisting: policyd-ts vs postgrey')
  out(`stream: ${GREYLIST_MIX}; delay ${GL_DELAY}s on both; ${g1.requests} timed requests at 1 connection, ${g8.requests} at ${CONNS} (over ${ROUNDS} rounds), ${WARMUP} warm-up requests first to every server process (a daemon's spread over its connections)`)
  out(hdr('policyd-ts', 'postgrey'))
  out(row([`warm decisions/s, 1 connection`, fmtRate(g1), fmtRate(p1), (g1.rate / p1.rate).toFixed(2), '>= 3.00 x', target(g1.rate >= 3 * p1.rate, 'greylisting 1 connection')], W))
  out(row([`warm decisions/s, ${CONNS} connections`, `${fmtRate(g8)} (8 procs)`, `${fmtRate(p8)} (1 daemon)`, (g8.rate / p8.rate).toFixed(2), '>= 3.00 x', target(g8.rate >= 3 * p8.rate, `greylisting ${CONNS} connections`)], W))
  out(row(['latency p50 / p99 ms, 1 connection', `${g1.p50.toFixed(3)} / ${g1.p99.toFixed(3)}`, `${p1.p50.toFixed(3)} / ${p1.p99.toFixed(3)}`, (g1.p50 / p1.p50).toFixed(2), '(reported)', ''], W))
  out(row([`latency p50 / p99 ms, ${CONNS} connections`, `${g8.p50.toFixed(3)} / ${g8.p99.toFixed(3)}`, `${p8.p50.toFixed(3)} / ${p8.p99.toFixed(3)}`, (g8.p50 / p8.p50).toFixed(2), '(reported)', ''], W))
  if (!GREYLIST_ONLY) out(row([`cold start to first reply ms, median`, `${median(coldMs.tsGrey).toFixed(1)} (spawn, n=${COLD_RUNS})`, `${median(pgStarts).toFixed(1)} (daemon, n=${DAEMON_STARTS})`, '-', '(not alike)', ''], W))
  out(row(['bench-side CPU us/request, 1 / 8 conns', `${g1.benchCpuUs.toFixed(0)} / ${g8.benchCpuUs.toFixed(0)}`, `${p1.benchCpuUs.toFixed(0)} / ${p8.benchCpuUs.toFixed(0)}`, '-', '(reported)', ''], W))
  out(row(['peak RSS MB, 1 connection', rssCell(g1), '-', '-', '(reported)', ''], W))
  out(row([`peak RSS MB, ${CONNS} conns: max / sum`, rssCell(g8), `${mb(pgRssKb)} (daemon)`, (g8.rssKb.reduce((a, b) => a + b, 0) / pgRssKb).toFixed(2), '(reported)', ''], W))
  if (!GREYLIST_ONLY) out(`postgrey's cold start is daemon start -> first reply (Perl, BerkeleyDB environment with recovery), paid once per daemon start, not per smtpd; policyd-ts's is spawn -> first reply, paid per smtpd process.`)
  out(`replies: ${greyVerified ? 'all as expected' : 'NOT all as expected: figures unverified'} (policyd-ts ${g1.mismatches + g8.mismatches} / postgrey ${p1.mismatches + p8.mismatches} unexpected timed replies; seeding ${seed1.map((c) => c.mismatches).join('/')} + ${seed2.map((c) => c.mismatches).join('/')}; cold starts ${coldCheck.grey.mismatches})`)
  for (const [who, r] of [['policyd-ts', g1], ['policyd-ts 8', g8], ['postgrey', p1], ['postgrey 8', p8], ['policyd-ts seeding', seed1[0]], ['postgrey seeding', seed1[1]], ['policyd-ts first pass', seed2[0]], ['postgrey first pass', seed2[1]]] as const) {
    if (r.mismatches > 0) out(`  ${who}: ${r.mismatches} unexpected, first: ${r.firstMismatch}`)
  }
  out(`  new triplet:  policyd-ts ${JSON.stringify(samples['grey policyd-ts'])}`)
  out(`                postgrey   ${JSON.stringify(samples['grey postgrey'])}`)
  out(`  first pass:   policyd-ts ${JSON.stringify(seed2[0].sample)}`)
  out(`                postgrey   ${JSON.stringify(seed2[1].sample)}`)
  out()
  reportScale(greyRes, pacedRes, daemonPeakKb, [seed1[2], seed2[2]], samples['grey policyd-ts daemon'], target)
  out()

  if (!GREYLIST_ONLY) {
    const st = spfRes.ts
    const ss = spfRes.spf
    const t1 = st.w1!
    const t8 = st.w8!
    const tc = st.c1!
    const s1 = ss.w1!
    const s8 = ss.w8!
    const sc = ss.c1!
    const wrapperMs = median(coldMs.wrappedCat) - median(coldMs.cat)
    const spfColdMs = median(coldMs.spf)
    const spfColdAdj = spfColdMs - Math.max(0, wrapperMs)
    const tsColdMs = median(coldMs.tsSpf)
    const ratio = (a: number, b: number): string => (spfOk ? (a / b).toFixed(2) : 'n/a')
    const spfTarget = (ok: boolean, what: string): string => (spfOk ? target(ok, what) : (misses.push(`${what} (not measurable)`), 'n/a'))
    out('== SPF: policyd-ts vs policyd-spf')
    out(`stream: ${SPF_MIX}; warm = ${WARM_DOMAINS.length} sender domains repeated (${SPF_REQUESTS} timed requests per round at 1 connection and at ${CONNS}), cold = a domain never seen before in every request (${COLD_REQUESTS} per round, after ${WARMUP} warm-up requests); ${WARMUP} warm-up requests on every connection first`)
    if (!spfLive) {
      out(`!! policyd-ts's SPF path is NOT live yet: with --spf_enabled yes it answered ${JSON.stringify(samples['spf policyd-ts'])} (no Received-SPF).`)
      out('!! Its figures below are for a process that does no SPF work: no ratio, no PASS/MISS for SPF.')
    } else if (!spfOk) {
      out(`!! policyd-ts's SPF reply is not a Pass header: ${JSON.stringify(samples['spf policyd-ts'])}: no ratio, no PASS/MISS for SPF.`)
    }
    out(hdr('policyd-ts', 'policyd-spf'))
    out(row(['warm decisions/s, 1 connection', fmtRate(t1), fmtRate(s1), ratio(t1.rate, s1.rate), '>= 5.00 x', spfTarget(t1.rate >= 5 * s1.rate, 'SPF warm 1 connection')], W))
    // The issue sets SPF's target per connection (one smtpd's policy process); with 8 processes on
    // 2 cores a warm policyd-ts is CPU-bound while policyd-spf mostly waits for DNS, which overlaps.
    out(row([`warm decisions/s, ${CONNS} processes`, fmtRate(t8), fmtRate(s8), ratio(t8.rate, s8.rate), '(reported)', ''], W))
    out(row(['cold-cache decisions/s, 1 connection', fmtRate(tc), fmtRate(sc), ratio(tc.rate, sc.rate), '(reported)', ''], W))
    out(row(['latency p50 / p99 ms, warm, 1 conn', `${t1.p50.toFixed(3)} / ${t1.p99.toFixed(3)}`, `${s1.p50.toFixed(3)} / ${s1.p99.toFixed(3)}`, ratio(t1.p50, s1.p50), '(reported)', ''], W))
    out(row([`latency p50 / p99 ms, warm, ${CONNS} procs`, `${t8.p50.toFixed(3)} / ${t8.p99.toFixed(3)}`, `${s8.p50.toFixed(3)} / ${s8.p99.toFixed(3)}`, ratio(t8.p50, s8.p50), '(reported)', ''], W))
    out(row(['latency p50 / p99 ms, cold cache', `${tc.p50.toFixed(3)} / ${tc.p99.toFixed(3)}`, `${sc.p50.toFixed(3)} / ${sc.p99.toFixed(3)}`, ratio(tc.p50, sc.p50), '(reported)', ''], W))
    out(row(['DNS queries per request, warm / cold', `${t1.dnsPerRequest!.toFixed(2)} / ${tc.dnsPerRequest!.toFixed(2)}`, `${s1.dnsPerRequest!.toFixed(2)} / ${sc.dnsPerRequest!.toFixed(2)}`, '-', '(reported)', ''], W))
    out(row(['bench-side CPU us/request, 1 / 8 / cold', `${t1.benchCpuUs.toFixed(0)} / ${t8.benchCpuUs.toFixed(0)} / ${tc.benchCpuUs.toFixed(0)}`, `${s1.benchCpuUs.toFixed(0)} / ${s8.benchCpuUs.toFixed(0)} / ${sc.benchCpuUs.toFixed(0)}`, '-', '(reported)', ''], W))
    out(row([`cold start to first reply ms, median`, `${tsColdMs.toFixed(1)}`, `${spfColdAdj.toFixed(1)} (raw ${spfColdMs.toFixed(1)})`, ratio(tsColdMs, spfColdAdj), '<= 1.00 x', spfTarget(tsColdMs <= spfColdAdj, 'SPF cold start')], W))
    out(row(['peak RSS MB, 1 connection', rssCell(t1), rssCell(s1), ratio(t1.rssKb[0], s1.rssKb[0]), '(reported)', ''], W))
    out(row([`peak RSS MB, ${CONNS} procs: max / sum`, rssCell(t8), rssCell(s8), ratio(t8.rssKb.reduce((a, b) => a + b, 0), s8.rssKb.reduce((a, b) => a + b, 0)), '(reported)', ''], W))
    out(`cold start: spawn -> first reply (first request needs DNS), median of ${COLD_RUNS} interleaved; policyd-spf's figure has the namespace wrapper (unshare + sh + mount: ${wrapperMs.toFixed(1)} ms, measured with cat) taken off.`)
    const direct = await dnsRttUs(dns.address, dns.port, HELO)
    const relayed = await dnsRttUs(relay.address, 53, HELO)
    out('bench-side CPU: this process (the smtpd side, and for SPF the DNS server and relay too) shares the 2 cores with the servers under test.')
    out(`DNS round trip from the bench process: ${direct.toFixed(0)} us direct, ${relayed.toFixed(0)} us through the relay (both SPF servers pay the hop on every query); the last name of a cold-stream zone (${coldZoneNames} names, scanned linearly by the test server; the zone follows the cold stream ${COLD_CHUNK} domains at a time): ${coldNameUs.toFixed(0)} us direct.`)
    const spfMis = t1.mismatches + t8.mismatches + tc.mismatches + coldCheck.ts.mismatches
    const anchorMis = s1.mismatches + s8.mismatches + sc.mismatches + coldCheck.spf.mismatches
    out(`replies: policyd-ts ${spfMis} / policyd-spf ${anchorMis} not "PREPEND Received-SPF: Pass" (timed runs and cold starts)${anchorMis > 0 || (spfOk && spfMis > 0) ? ': figures unverified' : ''}`)
    for (const [who, r] of [['policyd-ts warm', t1], ['policyd-ts warm 8', t8], ['policyd-ts cold cache', tc], ['policyd-ts cold start', coldCheck.ts], ['policyd-spf warm', s1], ['policyd-spf warm 8', s8], ['policyd-spf cold cache', sc], ['policyd-spf cold start', coldCheck.spf]] as const) {
      if (r.mismatches > 0) out(`  ${who}: ${r.mismatches} unexpected, first: ${r.firstMismatch}`)
    }
    out(`  policyd-ts  ${JSON.stringify(samples['spf policyd-ts'])}`)
    out(`  policyd-spf ${JSON.stringify(samples['spf policyd-spf'])}`)
    out()
  }
  if (!GREYLIST_ONLY) {
    await rateLimit()
    await redis()
  }
  finish()
}
