// npm run bench: speed and memory of bin/policyd-ts beside a bare Node
// stdin echo driven by the same client in the same run (this machine is
// noisy: only ratios measured together mean something).
//
//   node dist/bench/bench.js [--requests N] [--cold-runs N]
//   node dist/bench/bench.js --compare [...]   (beside postgrey and policyd-spf: compare.ts)

import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Connection, percentile, policyRequest, request, row } from './driver'

const ROOT = path.resolve(__dirname, '..', '..')
const BIN = path.join(ROOT, 'bin', 'policyd-ts')
const ECHO = path.join(__dirname, 'echo.js')

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`)
  return i === -1 ? fallback : Number(process.argv[i + 1])
}
const REQUESTS = arg('requests', 3000)
const COLD_RUNS = arg('cold-runs', 15)
const PROCS = 8
// The flags of master.cf.example's entry, as Postfix would start it (scripts/node-flags.js).
const NODE_FLAGS = (require('../../scripts/node-flags.js') as { nodeFlags(): string[] }).nodeFlags()
const WARMUP = 500

interface Server {
  name: string
  argv: (dir: string) => string[]
}

function start(server: Server, dir: string): Connection {
  return Connection.spawned(spawn(process.execPath, server.argv(dir), { stdio: ['pipe', 'pipe', 'pipe'] }), server.name)
}

async function warm(server: Server, dir: string, tag: string): Promise<{ rate: number; p50: number; p99: number; rssKb: number; sample: string }> {
  const conn = start(server, dir)
  // Warm up (JIT, caches) before measuring: Postfix reuses a process for
  // many requests, so the steady state is what counts here.
  for (let i = 0; i < WARMUP; i++) await conn.ask(request(i, `${tag}w`))
  const lat: number[] = []
  let sample = ''
  const t0 = process.hrtime.bigint()
  for (let i = 1; i <= REQUESTS; i++) {
    const s = process.hrtime.bigint()
    sample = await conn.ask(request(i, tag))
    lat.push(Number(process.hrtime.bigint() - s) / 1e6)
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  const rssKb = conn.peakRssKb()
  await conn.close()
  lat.sort((a, b) => a - b)
  return { rate: REQUESTS / seconds, p50: percentile(lat, 50), p99: percentile(lat, 99), rssKb, sample }
}

async function concurrent(server: Server, dir: string, tag: string): Promise<number> {
  const conns = Array.from({ length: PROCS }, () => start(server, dir))
  await Promise.all(conns.map(async (c, n) => {
    for (let i = 0; i < WARMUP / 5; i++) await c.ask(request(i, `${tag}w${n}`))
  }))
  const per = Math.ceil(REQUESTS / PROCS)
  const t0 = process.hrtime.bigint()
  await Promise.all(
    conns.map(async (c, n) => {
      for (let i = 0; i < per; i++) await c.ask(request(n * per + i, `${tag}c`))
    }),
  )
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  await Promise.all(conns.map((c) => c.close()))
  return (per * PROCS) / seconds
}

async function cold(server: Server, dir: string, tag: string): Promise<number> {
  const times: number[] = []
  for (let i = 0; i < COLD_RUNS; i++) {
    const t0 = process.hrtime.bigint()
    const conn = start(server, dir)
    await conn.ask(request(i, `${tag}cold${i}`))
    times.push(Number(process.hrtime.bigint() - t0) / 1e6)
    await conn.close()
  }
  times.sort((a, b) => a - b)
  return percentile(times, 50)
}

/** SPF through policyd-ts (greylisting off) against a DNS server on loopback: warm cache, then a domain never seen in every request. */
async function spf(policyArgs: (d: string) => string[], dir: string): Promise<string[]> {
  const { startDnsServer } = require('../test/helpers/dns-server') as typeof import('../test/helpers/dns-server')
  const helo = 'out.provider.bench'
  const zone: Record<string, Array<Record<string, unknown>>> = {
    [helo]: [{ TXT: 'v=spf1 ip4:192.0.2.0/24 -all' }],
    '_spf.provider.bench': [{ TXT: 'v=spf1 ip4:198.51.100.0/24 ip4:192.0.2.0/24 -all' }],
  }
  const record = (i: number): string => (i % 2 === 0 ? 'v=spf1 ip4:192.0.2.0/24 -all' : 'v=spf1 include:_spf.provider.bench -all')
  const warmDomains = Array.from({ length: 8 }, (_, i) => `w${i}.warm.bench`)
  warmDomains.forEach((d, i) => (zone[d] = [{ TXT: record(i) }]))
  for (let i = 0; i < REQUESTS; i++) zone[`c${i}.cold.bench`] = [{ TXT: record(i) }]
  const dns = await startDnsServer(zone)
  const conn = Connection.spawned(spawn(process.execPath, [
    ...policyArgs(dir), '--greylist_enabled', 'no', '--spf_enabled', 'yes', '--dns_servers', `127.0.0.1:${dns.port}`, '--hostname', 'mx.bench',
  ], { stdio: ['pipe', 'pipe', 'pipe'] }), 'policyd-ts spf')
  const ask = (domain: string, i: number): Promise<string> =>
    conn.ask(policyRequest({ client_address: '192.0.2.10', helo_name: helo, sender: `u${i}@${domain}`, recipient: 'bob@example.org', instance: `s${i}` }))
  const run = async (domain: (i: number) => string): Promise<{ rate: number; p50: number; p99: number; queries: number; sample: string }> => {
    const q0 = dns.queries
    const lat: number[] = []
    let sample = ''
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < REQUESTS; i++) {
      const t = process.hrtime.bigint()
      sample = await ask(domain(i), i)
      lat.push(Number(process.hrtime.bigint() - t) / 1e6)
    }
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9
    lat.sort((a, b) => a - b)
    return { rate: REQUESTS / seconds, p50: percentile(lat, 50), p99: percentile(lat, 99), queries: (dns.queries - q0) / REQUESTS, sample }
  }
  try {
    for (let i = 0; i < WARMUP; i++) await ask(warmDomains[i % 8], i)
    const warm = await run((i) => warmDomains[i % 8])
    const cold = await run((i) => `c${i}.cold.bench`)
    const rssKb = conn.peakRssKb()
    if (!/^action=PREPEND Received-SPF: Pass /.test(warm.sample) || !/^action=PREPEND Received-SPF: Pass /.test(cold.sample)) {
      throw new Error(`SPF replies are not a pass: ${warm.sample} / ${cold.sample}`)
    }
    const widths = [34, 14, 14, 14, 18]
    return [
      row(['SPF (greylisting off)', 'decisions/s', 'p50 ms', 'p99 ms', 'DNS queries/req'], widths),
      row(['warm per-process DNS cache', warm.rate.toFixed(0), warm.p50.toFixed(3), warm.p99.toFixed(3), warm.queries.toFixed(2)], widths),
      row(['cold cache (a new domain each)', cold.rate.toFixed(0), cold.p50.toFixed(3), cold.p99.toFixed(3), cold.queries.toFixed(2)], widths),
      `peak RSS ${(rssKb / 1024).toFixed(1)} MB; DNS server on 127.0.0.1 in the bench process; last reply: ${cold.sample}`,
    ]
  } finally {
    await conn.close()
    await dns.close()
  }
}

async function main(): Promise<void> {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'lib', 'cli.js'))) throw new Error('build first: npm run build')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'policyd-ts-bench-'))
  // policyd-ts runs as master.cf.example starts it, with its node flags.
  const policyArgs = (d: string): string[] => [
    ...NODE_FLAGS, BIN, '--config', '/dev/null', '--db_path', path.join(d, 'db', 'bench.sqlite'),
    '--syslog_socket', path.join(d, 'no-syslog'), '--log_file', path.join(d, 'bench.log'), '--debugLevel', '1',
    '--greylist_whitelist_clients', '', '--greylist_whitelist_recipients', '',
  ]
  const echo: Server = { name: 'bare node echo', argv: () => [ECHO] }
  const greylist: Server = { name: 'policyd-ts greylist', argv: (d) => [...policyArgs(d), '--spf_enabled', 'no'] }
  try {
    process.stdout.write(`policyd-ts bench: ${REQUESTS} requests per run after ${WARMUP} warm-up requests, ${PROCS} processes for the concurrent run, ${COLD_RUNS} cold starts; node ${process.version}, ${os.cpus().length} cores\n`)
    process.stdout.write(`policyd-ts runs as node ${NODE_FLAGS.join(' ')} bin/policyd-ts (master.cf.example); the echo as plain node\n\n`)
    const results: Record<string, { rate: number; p50: number; p99: number; rssKb: number; conc: number; cold: number; sample: string }> = {}
    for (const s of [echo, greylist, echo, greylist]) {
      const tag = `${s === echo ? 'e' : 'g'}${Object.keys(results).length}`
      const w = await warm(s, dir, tag)
      const conc = await concurrent(s, dir, tag)
      const c = await cold(s, dir, tag)
      const prev = results[s.name]
      // Two rounds interleaved; keep the better figure of each to damp noise.
      results[s.name] = prev
        ? { rate: Math.max(prev.rate, w.rate), p50: Math.min(prev.p50, w.p50), p99: Math.min(prev.p99, w.p99), rssKb: Math.max(prev.rssKb, w.rssKb), conc: Math.max(prev.conc, conc), cold: Math.min(prev.cold, c), sample: w.sample }
        : { ...w, conc, cold: c }
    }
    const e = results[echo.name]
    const g = results[greylist.name]
    const widths = [34, 14, 14, 10, 22]
    const lines = [
      row(['figure', 'bare echo', 'greylist', 'ratio', 'target'], widths),
      row(['warm decisions/s, 1 connection', e.rate.toFixed(0), g.rate.toFixed(0), (g.rate / e.rate).toFixed(2), '>= 0.60 x echo'], widths),
      row([`warm decisions/s, ${PROCS} processes`, e.conc.toFixed(0), g.conc.toFixed(0), (g.conc / e.conc).toFixed(2), '(reported)'], widths),
      row(['latency p50 ms', e.p50.toFixed(3), g.p50.toFixed(3), (g.p50 / e.p50).toFixed(2), '(reported)'], widths),
      row(['latency p99 ms', e.p99.toFixed(3), g.p99.toFixed(3), (g.p99 / e.p99).toFixed(2), '(reported)'], widths),
      row(['cold start to first reply ms', e.cold.toFixed(1), g.cold.toFixed(1), (g.cold / e.cold).toFixed(2), '<= 1.30 x echo'], widths),
      row(['peak RSS MB', (e.rssKb / 1024).toFixed(1), (g.rssKb / 1024).toFixed(1), (g.rssKb / e.rssKb).toFixed(2), '<= 60 MB'], widths),
    ]
    process.stdout.write(`${lines.join('\n')}\n\nlast greylist reply: ${g.sample}\n\n`)
    process.stdout.write(`${(await spf(policyArgs, dir)).join('\n')}\n\n`)
    const ok = g.rate / e.rate >= 0.6 && g.cold / e.cold <= 1.3 && g.rssKb / 1024 <= 60
    process.stdout.write(`targets: ${ok ? 'all met' : 'NOT all met'}\n`)
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

if (process.argv.includes('--compare')) {
  // Required here, not imported: plain npm run bench does not load it.
  Promise.resolve()
    .then(() => (require('./compare') as typeof import('./compare')).main())
    .catch((err: Error) => {
      process.stderr.write(`bench --compare failed: ${err.stack}\n`)
      process.exitCode = 1
    })
} else {
  main().catch((err: Error) => {
    process.stderr.write(`bench failed: ${err.stack}\n`)
    process.exitCode = 1
  })
}
