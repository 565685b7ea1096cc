// 16 policy processes on one database, as Postfix runs one per smtpd, each
// sending 1,000 requests over the same 1,000 triplets in its own order:
// every reply valid, every triplet recorded once with all its attempts,
// every triplet passes once its delay is over, the file intact.
import t from 'tap'
import path from 'node:path'
import Database from 'better-sqlite3'
import { assertWellFormed, isolatedArgs, rcptRequest, startPolicy } from '../helpers/policy-process'

const PROCESSES = 16
const TRIPLETS = 1000

t.test(`${PROCESSES} concurrent processes x ${TRIPLETS} requests share one database without losing a triplet`, async (t) => {
  const dir = t.testdir()
  const args = isolatedArgs(dir, ['--debugLevel', '0', '--db_busy_timeout', '30s'])
  const requests = Array.from({ length: TRIPLETS }, (_, i) =>
    rcptRequest({
      client_address: `198.51.${100 + (i % 4)}.${(i % 250) + 1}`,
      sender: `s${i}@sender${i % 7}.example`,
      recipient: `r${i}@example.org`,
      instance: `i${i}`,
    }),
  )
  // Each process walks the triplets in another order (a stride coprime to 1,000), so writers collide all the time.
  const order = (n: number): string => requests.map((_, i) => requests[(i * 7 + n * 61) % TRIPLETS]).join('')

  const round = async (label: string): Promise<string[]> => {
    const procs = Array.from({ length: PROCESSES }, () => startPolicy(args))
    procs.forEach((p, n) => p.send(order(n)))
    const replies = await Promise.all(procs.map((p) => p.replies(TRIPLETS, 120000)))
    for (const p of procs) p.child.stdin.end()
    let invalid = 0
    for (const p of procs) {
      t.same(await p.exited(20000), { code: 0, signal: null }, `${label}: exit 0`)
      t.equal(p.stderr(), '', `${label}: nothing on stderr`)
      try {
        if (assertWellFormed(p.stdout()).length !== TRIPLETS) invalid++
      } catch {
        invalid++
      }
    }
    t.equal(invalid, 0, `${label}: 0 invalid replies from ${PROCESSES} x ${TRIPLETS} requests`)
    return replies.flat()
  }

  const first = await round('first round')
  t.equal(first.filter((r) => r.startsWith('action=DEFER_IF_PERMIT 4.2.0 Greylisted')).length, PROCESSES * TRIPLETS, 'every first-round attempt is greylisted')

  const db = new Database(path.join(dir, 'db', 'policyd-ts.sqlite'))
  t.teardown(() => db.close())
  const rows = db.prepare('SELECT count FROM triplet').all() as Array<{ count: number }>
  t.equal(rows.length, TRIPLETS, 'one row per triplet, none lost')
  t.equal(rows.filter((r) => r.count === PROCESSES).length, TRIPLETS, 'every attempt counted exactly once')
  // Every process hands its inserts to the kept count at exit; the first
  // upkeep step also recounts (no recount was ever made), and inserts that
  // live processes had not handed in by then are counted twice until the
  // next recount: never low, high by at most the inserts themselves.
  const kept = (db.prepare("SELECT value FROM meta WHERE name = 'triplet_count'").get() as { value: number }).value
  t.ok(kept >= TRIPLETS && kept <= 2 * TRIPLETS, `row count handed in by every process at exit (${kept} for ${TRIPLETS} rows)`)

  // Advance the stored clock instead of sleeping through the delay.
  db.prepare('UPDATE triplet SET first = first - 301, last = last - 301').run()

  const second = await round('second round')
  t.equal(second.filter((r) => r.startsWith('action=PREPEND X-Greylist: delayed')).length, TRIPLETS, 'each triplet passed for the first time exactly once, with its header')
  t.equal(second.filter((r) => r.startsWith('action=DEFER')).length, 0, 'nothing deferred after the delay')
  // 16 greylisted attempts, then the first pass; the 15 repeats that follow within minutes need no write.
  const passed = db.prepare('SELECT count(*) AS n FROM triplet WHERE passed > 0 AND count = ?').get(PROCESSES + 1) as { n: number }
  t.equal(passed.n, TRIPLETS, 'every triplet recorded as passed once, after all 16 greylisted attempts')
  t.equal((db.prepare('PRAGMA integrity_check').get() as { integrity_check: string }).integrity_check, 'ok')
})
