// One racing process of test/blackbox/ratelimit-race.test.ts: opens the
// built SQLite store (dist/, as a spawned policyd-ts does), says "ready",
// and on the line "go" runs its bounded share of rate-limit steps on one
// identity, printing one JSON line per event and a summary at the end.
//
// argv[2]: JSON { db, lockWaits, id, limits, mode, attempts, prefix, now }
// modes:
//   hold-commit  each attempt holds a new message and, when held, commits it
//   hold         each attempt holds a new message; prints {"held": instance}
//   commit       commits each instance read from stdin after "go" (held elsewhere)
//   commit-new   each attempt commits a message that has no hold (tested)
'use strict'
const path = require('node:path')
const readline = require('node:readline')

const dist = path.resolve(__dirname, '..', '..', 'dist', 'lib')
const { SqliteStore } = require(path.join(dist, 'store', 'sqlite.js'))
const { parseLimit } = require(path.join(dist, 'ratelimit', 'limits.js'))

const cfg = JSON.parse(process.argv[2])
const store = new SqliteStore({ path: cfg.db, busyTimeoutMs: 30000, renameCorrupt: false, lockWaits: cfg.lockWaits, log: () => undefined })
const limits = cfg.limits.map((text) => parseLimit(text).limit)
const ONE = { rcpt: 1, msg: 1, bytes: 0 }
const NONE = { rcpt: 0, msg: 0, bytes: 0 }
const stats = { accepted: 0, refused: 0, hadHold: 0, committed: 0 }

const say = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`)
const step = (op, instance) =>
  store.rateLimit({ op, instance, now: cfg.now, identities: [{ id: cfg.id, limits, first: ONE, more: NONE }], slots: 60, holdTime: 3600, maxHolds: 100000, force: false })

async function commit(instance) {
  const r = await step('commit', instance)
  if (r.ok) stats.committed++
  if (r.hadHold) stats.hadHold++
  return r
}

async function run(lines) {
  if (cfg.mode === 'commit') {
    for await (const instance of lines) await commit(instance)
    return
  }
  for (let i = 0; i < cfg.attempts; i++) {
    const instance = `${cfg.prefix}-${i}`
    if (cfg.mode === 'commit-new') {
      const r = await commit(instance)
      r.ok ? stats.accepted++ : stats.refused++
      continue
    }
    const r = await step('hold', instance)
    if (!r.ok) {
      stats.refused++
      continue
    }
    stats.accepted++
    if (cfg.mode === 'hold') say({ held: instance })
    else await commit(instance)
  }
}

async function main() {
  await store.listOverrides(cfg.now) // opens the file
  const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]()
  say({ ready: true })
  const first = await lines.next()
  if (first.done || first.value !== 'go') throw new Error(`expected "go", got ${JSON.stringify(first.value)}`)
  await run({ [Symbol.asyncIterator]: () => lines })
  store.close()
  say({ done: true, ...stats })
}

main().catch((err) => {
  say({ error: String(err && err.stack) })
  process.exitCode = 1
})
