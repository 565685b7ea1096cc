// Store faults through the real binary: a corrupt file, whitelist files
// edited while a process runs, writers killed mid-stream.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
import { assertWellFormed, isolatedArgs, rcptRequest, startPolicy } from '../helpers/policy-process'
import { RECOUNT_EVERY, SqliteStore } from '../../lib/store/sqlite'

t.test('a corrupt database: that request gets fail_action, the file is renamed aside, the next request is greylisted again', async (t) => {
  const dir = t.testdir({ db: {} })
  fs.chmodSync(path.join(dir, 'db'), 0o700)
  const file = path.join(dir, 'db', 'policyd-ts.sqlite')
  fs.writeFileSync(file, Buffer.alloc(8192, 0x5a), { mode: 0o600 })
  const p = startPolicy(isolatedArgs(dir))
  p.send(rcptRequest({ sender: 'first@x.example' }))
  p.send(rcptRequest({ sender: 'second@x.example' }))
  const replies = await p.replies(2)
  t.match(replies[0], /^action=(DUNNO|DEFER_IF_PERMIT 4\.2\.0 Greylisted)/, 'fail_action, or served at once from the fresh file')
  t.match(replies[1], /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted/, 'a fresh database serves the next request')
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  t.equal(p.stderr(), '')
  assertWellFormed(p.stdout())
  t.equal(fs.readdirSync(path.join(dir, 'db')).filter((f) => f.includes('.corrupt-')).length, 1, 'the corrupt file kept aside')
  t.match(fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8'), /corrupt file renamed to .*policyd-ts\.sqlite\.corrupt-/)
})

t.test('a whitelist file edited while the process runs is picked up without a restart', async (t) => {
  const dir = t.testdir({ clients: '# nothing yet\n' })
  const list = path.join(dir, 'clients')
  const args = isolatedArgs(dir).map((a, i, all) => (all[i - 1] === '--greylist_whitelist_clients' ? list : a))
  const p = startPolicy(args)
  p.send(rcptRequest({ client_address: '198.51.100.7' }))
  t.match((await p.replies(1))[0], /^action=DEFER_IF_PERMIT/)
  fs.writeFileSync(list, '198.51.100.0/24\n')
  // The files are checked at most once a second.
  const end = Date.now() + 5000
  let answered = 1
  let last = ''
  while (Date.now() < end) {
    await new Promise((r) => setTimeout(r, 300))
    p.send(rcptRequest({ client_address: '198.51.100.7', sender: `s${answered}@x.example` }))
    answered++
    last = (await p.replies(answered))[answered - 1]
    if (last === 'action=DUNNO') break
  }
  t.equal(last, 'action=DUNNO', 'whitelisted after the edit')
  p.child.stdin.end()
  await p.exited()
  t.match(fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8'), /reason=client-whitelist .*whitelist=".*clients:1 198\.51\.100\.0\/24"/)
})

t.test('kill -9 of a writer mid-stream: the database stays sound and the next process serves', async (t) => {
  const dir = t.testdir()
  const args = isolatedArgs(dir, ['--debugLevel', '0'])
  const victim = startPolicy(args)
  let sent = 0
  // Keep it writing, then kill it without warning in the middle of the stream.
  for (; sent < 300; sent++) victim.send(rcptRequest({ sender: `k${sent}@kill.example`, instance: `k${sent}` }))
  await victim.replies(50)
  victim.child.kill('SIGKILL')
  t.equal((await victim.exited()).signal, 'SIGKILL')

  const next = startPolicy(args)
  next.send(rcptRequest({ sender: 'k0@kill.example' }))
  next.send(rcptRequest({ sender: 'after@kill.example' }))
  const replies = await next.replies(2)
  t.match(replies[0], /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted, please try again in (29\d|300) seconds$/, 'a triplet recorded before the kill is known (too early)')
  t.match(replies[1], /^action=DEFER_IF_PERMIT/)
  next.child.stdin.end()
  t.equal((await next.exited()).code, 0)
  const Database = (await import('better-sqlite3')).default
  const db = new Database(path.join(dir, 'db', 'policyd-ts.sqlite'))
  t.equal((db.prepare('PRAGMA integrity_check').get() as { integrity_check: string }).integrity_check, 'ok')
  const rows = (db.prepare("SELECT count(*) AS n FROM triplet WHERE key LIKE '%kill.example%'").get() as { n: number }).n
  // A decision is committed just after its reply: all answered ones are kept, but perhaps the very last.
  t.ok(rows >= 49, `${rows} triplets kept of the ${sent} sent before the kill (the 50 answered, less at most the last)`)
  db.close()
})

t.test('writers killed before handing over their counts: the count is exact again after RECOUNT_EVERY, and greylist_max_entries holds', async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, 'db', 'policyd-ts.sqlite')
  let killedSoFar = 0
  /** Writers that each answer 50 requests of 300 and are killed with SIGKILL, before any upkeep step (every 10 s). */
  const killWriters = async (count: number, maxEntries = 1000000): Promise<void> => {
    const writers = Array.from({ length: count }, () => startPolicy(isolatedArgs(dir, ['--debugLevel', '0', '--greylist_max_entries', String(maxEntries)])))
    writers.forEach((w, n) => {
      for (let i = 0; i < 300; i++) w.send(rcptRequest({ sender: `w${killedSoFar + n}s${i}@kill.example` }))
    })
    await Promise.all(writers.map((w) => w.replies(50)))
    for (const w of writers) w.child.kill('SIGKILL')
    for (const w of writers) t.equal((await w.exited()).signal, 'SIGKILL')
    killedSoFar += count
  }
  const inFile = (): { rows: number; counted: number } => {
    const db = new Database(file, { readonly: true })
    try {
      return {
        rows: db.prepare('SELECT count(*) FROM triplet').pluck().get() as number,
        counted: Number(db.prepare("SELECT value FROM meta WHERE name = 'triplet_count'").pluck().get()),
      }
    } finally {
      db.close()
    }
  }
  // The upkeep steps of another process, on an injected clock.
  const upkeeper = new SqliteStore({ path: file, busyTimeoutMs: 1000, renameCorrupt: false, log: () => undefined })
  t.teardown(() => upkeeper.close())
  const t0 = Date.now() / 1000
  await killWriters(3)
  const drifted = inFile()
  t.ok(drifted.rows >= 147 && drifted.counted < drifted.rows, `3 killed writers: ${drifted.rows} rows, counted ${drifted.counted}`)
  await upkeeper.purgeExpired(t0, 1000)
  t.same(inFile(), { rows: drifted.rows, counted: drifted.rows }, 'the first upkeep step recounts')

  await killWriters(2)
  const again = inFile()
  t.ok(again.counted < again.rows, `2 more killed: ${again.rows} rows, counted ${again.counted}`)
  await upkeeper.purgeExpired(t0 + RECOUNT_EVERY - 1, 1000)
  t.equal(inFile().counted, again.counted, 'no recount before RECOUNT_EVERY has passed')
  await upkeeper.purgeExpired(t0 + RECOUNT_EVERY, 1000)
  t.same(inFile(), { rows: again.rows, counted: again.rows }, `recounted ${RECOUNT_EVERY} s after the last recount`)

  // The bound now holds for the next process: with as many rows as greylist_max_entries, a new triplet passes unrecorded.
  const p = startPolicy(isolatedArgs(dir, ['--greylist_max_entries', String(again.rows)]))
  p.send(rcptRequest({ sender: 'one-too-many@kill.example' }))
  t.equal((await p.replies(1))[0], 'action=DUNNO', 'table full: the new triplet passes')
  p.child.stdin.end()
  t.equal((await p.exited()).code, 0)
  t.equal(inFile().rows, again.rows, 'and is not recorded')
  t.match(fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8'), new RegExp(`greylist table full \\(${again.rows} triplets, greylist_max_entries ${again.rows}\\)`))
})
