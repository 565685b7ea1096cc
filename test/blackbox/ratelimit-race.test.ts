// 16 processes race for one rate-limited identity on one SQLite file, as
// spawned policyd-ts processes do (each runs the built store from dist/,
// test/helpers/ratelimit-racer.cjs): far more attempts than the limit,
// exactly L accepted and L counted. policyd-rate-limit's read-then-insert
// accepted L+2..L+4 here, postfixlimit's test-then-hit L+2..L+5 (research
// §3). Then a mix like Postfix's: RCPT processes only hold, and other
// processes commit those holds (END-OF-MESSAGE reaching another process),
// while others commit messages nobody held (tested at commit).
//
// Slow part: starting 16 node processes (~2-4 s on 2 busy cores) per
// scenario; the steps themselves take well under a second.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import readline from 'node:readline'
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { SqliteStore } from '../../lib/store/sqlite'

const RACER = path.resolve(__dirname, '..', 'helpers', 'ratelimit-racer.cjs')
const BUILT = path.resolve(__dirname, '..', '..', 'dist', 'lib', 'store', 'sqlite.js')
const PROCESSES = 16
const L = 200
const LIMITS = [`${L}msg/1h`, '100000rcpt/1d']
const ID = 'sasl:racer@example.org'
const NOW = 1_800_000_000
/** Each wait on the racers is bounded; the whole file takes a few seconds. */
const WAIT_MS = 30000

interface Summary {
  accepted: number
  refused: number
  hadHold: number
  committed: number
}

interface Racer {
  child: ChildProcessWithoutNullStreams
  ready: Promise<void>
  done: Promise<Summary>
  onHeld(cb: (instance: string) => void): void
}

type Mode = 'hold-commit' | 'hold' | 'commit' | 'commit-new'

function startRacer(t: tap.Test, db: string, n: number, mode: Mode, attempts: number): Racer {
  const cfg = { db, lockWaits: n % 2 === 0 ? 'block' : 'yield', id: ID, limits: LIMITS, mode, attempts, prefix: `p${n}`, now: NOW + n / 100 }
  const child = spawn(process.execPath, [RACER, JSON.stringify(cfg)], { stdio: ['pipe', 'pipe', 'pipe'] })
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
  let held: (instance: string) => void = () => undefined
  let readyResolve!: () => void
  let doneResolve!: (s: Summary) => void
  let fail!: (e: Error) => void
  const ready = new Promise<void>((resolve) => (readyResolve = resolve))
  const done = new Promise<Summary>((resolve, reject) => ((doneResolve = resolve), (fail = reject)))
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    const msg = JSON.parse(line) as { ready?: true; held?: string; done?: true; error?: string } & Summary
    if (msg.ready) readyResolve()
    else if (msg.held) held(msg.held)
    else if (msg.done) doneResolve(msg)
    else if (msg.error) fail(new Error(`racer ${n}: ${msg.error}`))
  })
  child.on('exit', (code) => fail(new Error(`racer ${n} exited ${code} before its summary: ${stderr}`)))
  return { child, ready, done, onHeld: (cb) => (held = cb) }
}

function within<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${WAIT_MS} ms`)), WAIT_MS)))
  return Promise.race([p, late]).finally(() => clearTimeout(timer))
}

/** A fresh database made by the parent, so that the racers meet one schema. */
async function freshDb(t: tap.Test): Promise<{ db: string; store: SqliteStore }> {
  const db = path.join(t.testdir(), 'db', 'policyd-ts.sqlite')
  const store = new SqliteStore({ path: db, busyTimeoutMs: 30000, renameCorrupt: false, log: () => undefined })
  t.teardown(() => store.close())
  await store.listOverrides(NOW)
  return { db, store }
}

/** Start every racer only when all have opened the file, so that they really overlap. */
async function go(racers: Racer[]): Promise<void> {
  await within(Promise.all(racers.map((r) => r.ready)), 'racers ready')
  for (const r of racers) r.child.stdin.write('go\n')
}

const sum = (list: Summary[], key: keyof Summary): number => list.reduce((total, s) => total + s[key], 0)

t.test('the built store is there', async (t) => {
  t.ok(fs.existsSync(BUILT), `${BUILT} (npm run build, or npx tsc, makes it)`)
})

t.test(`${PROCESSES} processes, hold then commit, ${PROCESSES * 30} attempts on ${L}msg/1h: exactly ${L}`, { timeout: 3 * WAIT_MS }, async (t) => {
  const { db, store } = await freshDb(t)
  const racers = Array.from({ length: PROCESSES }, (_, n) => startRacer(t, db, n, 'hold-commit', 30))
  await go(racers)
  const results = await within(Promise.all(racers.map((r) => r.done)), 'racers done')
  for (const r of racers) r.child.stdin.end()
  t.equal(sum(results, 'accepted'), L, 'accepted exactly L')
  t.equal(sum(results, 'refused'), PROCESSES * 30 - L, 'refused the rest')
  t.equal(sum(results, 'committed'), L, 'every accepted message committed')
  t.equal(sum(results, 'hadHold'), L, 'each commit found its hold')
  t.ok(results.filter((r) => r.accepted > 0).length > 1, 'more than one process got a share (they did overlap)')
  t.same(await store.listUsage(() => true, NOW + 1, 60), [
    { id: ID, unit: 'msg', window: 3600, used: L, held: 0 },
    { id: ID, unit: 'rcpt', window: 86400, used: L, held: 0 },
  ], `usage ${L}, no hold left`)
})

t.test(`a mix: RCPT processes hold, others commit those holds, others commit unheld mail: exactly ${L}`, { timeout: 3 * WAIT_MS }, async (t) => {
  const { db, store } = await freshDb(t)
  const PAIRS = 6
  const holders = Array.from({ length: PAIRS }, (_, n) => startRacer(t, db, n, 'hold', 60))
  const committers = Array.from({ length: PAIRS }, (_, n) => startRacer(t, db, PAIRS + n, 'commit', 0))
  const direct = Array.from({ length: PROCESSES - 2 * PAIRS }, (_, n) => startRacer(t, db, 2 * PAIRS + n, 'commit-new', 30))
  // Each held message's END-OF-MESSAGE goes to another process, as soon as it is held.
  holders.forEach((h, i) => h.onHeld((instance) => committers[i].child.stdin.write(`${instance}\n`)))
  await go([...holders, ...committers, ...direct])
  const held = await within(Promise.all(holders.map((h) => h.done)), 'holders done')
  for (const h of holders) h.child.stdin.end()
  for (const c of committers) c.child.stdin.end()
  const [committed, unheld] = await within(Promise.all([Promise.all(committers.map((c) => c.done)), Promise.all(direct.map((d) => d.done))]), 'committers done')
  for (const d of direct) d.child.stdin.end()
  const heldCount = sum(held, 'accepted')
  t.equal(heldCount + sum(unheld, 'accepted'), L, `accepted exactly L: ${heldCount} held at RCPT, ${sum(unheld, 'accepted')} tested at commit`)
  t.ok(heldCount > 0 && sum(unheld, 'accepted') > 0, 'both kinds got a share')
  t.equal(sum(held, 'refused') + sum(unheld, 'refused'), PAIRS * 60 + (PROCESSES - 2 * PAIRS) * 30 - L, 'refused the rest')
  t.same([sum(committed, 'committed'), sum(committed, 'hadHold')], [heldCount, heldCount], 'every hold committed by another process, each found')
  t.equal(sum(unheld, 'hadHold'), 0)
  t.same(await store.listUsage(() => true, NOW + 1, 60), [
    { id: ID, unit: 'msg', window: 3600, used: L, held: 0 },
    { id: ID, unit: 'rcpt', window: 86400, used: L, held: 0 },
  ], `usage ${L}, no hold left`)
})
