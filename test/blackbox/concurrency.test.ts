// 8 policy processes on one database, as Postfix runs one per smtpd: every
// reply valid, every triplet recorded once, and every triplet passes once
// its delay is over.
import t from 'tap'
import path from 'node:path'
import Database from 'better-sqlite3'
import { assertWellFormed, isolatedArgs, rcptRequest, startPolicy } from '../helpers/policy-process'

const PROCESSES = 8
const TRIPLETS = 40 // shared by all processes: each is attempted 8 times at once

t.test('8 concurrent processes share one database without losing a triplet', async (t) => {
  const dir = t.testdir()
  const args = isolatedArgs(dir, ['--debugLevel', '0'])
  const requests = Array.from({ length: TRIPLETS }, (_, i) =>
    rcptRequest({ client_address: `198.51.100.${i + 1}`, sender: `s${i}@sender.example`, recipient: `r${i}@example.org`, instance: `i${i}` }),
  )

  const round = async (): Promise<string[][]> => {
    const procs = Array.from({ length: PROCESSES }, () => startPolicy(args))
    // Each process gets the triplets in another order, so writers collide.
    procs.forEach((p, n) => p.send(requests.map((_, i) => requests[(i * 7 + n * 5) % TRIPLETS]).join('')))
    const replies = await Promise.all(procs.map((p) => p.replies(TRIPLETS, 30000)))
    for (const p of procs) p.child.stdin.end()
    for (const p of procs) {
      t.equal((await p.exited(10000)).code, 0)
      t.equal(p.stderr(), '')
      t.equal(assertWellFormed(p.stdout()).length, TRIPLETS)
    }
    return replies
  }

  const first = (await round()).flat()
  t.equal(first.filter((r) => r.startsWith('action=DEFER_IF_PERMIT 4.2.0 Greylisted')).length, PROCESSES * TRIPLETS, 'every first-round attempt is greylisted')

  const file = path.join(dir, 'db', 'policyd-ts.sqlite')
  const db = new Database(file)
  t.teardown(() => db.close())
  const rows = db.prepare('SELECT key, count FROM triplet').all() as Array<{ key: string; count: number }>
  t.equal(rows.length, TRIPLETS, 'one row per triplet')
  t.ok(rows.every((r) => r.count === PROCESSES), 'every attempt counted exactly once')
  t.equal((db.prepare("SELECT value FROM meta WHERE name = 'triplet_count'").get() as { value: number }).value, TRIPLETS, 'row count handed in by every process at exit')

  // Advance the clock of the stored triplets instead of sleeping.
  db.prepare('UPDATE triplet SET first = first - 301, last = last - 301').run()

  const second = await round()
  const headers = second.flat().filter((r) => r.startsWith('action=PREPEND X-Greylist: delayed'))
  t.equal(headers.length, TRIPLETS, 'each triplet passed for the first time exactly once, with its header')
  const passed = db.prepare('SELECT count(*) AS n FROM triplet WHERE passed > 0 AND count = ?').get(2 * PROCESSES) as { n: number }
  t.equal(passed.n, TRIPLETS, 'every triplet recorded as passed, with all 16 attempts counted')
  t.equal(second.flat().filter((r) => r.startsWith('action=DEFER')).length, 0, 'nothing deferred after the delay')
  t.equal((db.prepare('PRAGMA integrity_check').get() as { integrity_check: string }).integrity_check, 'ok')
})
