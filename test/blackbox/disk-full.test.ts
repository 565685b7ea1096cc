// A full disk under the database, through the real binary: a small tmpfs
// holds the database; a filler file takes the rest of it. Mail keeps
// flowing with fail_action, every deferral whose record could not be
// written is logged, and when space comes back the same process greylists
// again and the file is intact. Mounting needs root (CI runs as root);
// where mount(8) is refused that test is skipped, saying why, and the same
// failure policy is still shown through the store interface.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Database from 'better-sqlite3'
import { assertWellFormed, isolatedArgs, rcptRequest, startPolicy } from '../helpers/policy-process'
import { loadConfig } from '../../lib/config'
import { decide, type DecideContext } from '../../lib/decide'
import { BoundedMap } from '../../lib/bounded-map'
import { HeaderQueue } from '../../lib/header-queue'
import { toPolicyRequest } from '../../lib/request'
import { StoreError, type GreylistStore } from '../../lib/store/types'

/** Mount a small tmpfs on `dir`; returns why it could not, or null when mounted. */
function mountRefused(dir: string, size: string): string | null {
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', dir], { encoding: 'utf8' })
  if (r.status === 0) return null
  return (r.error?.message ?? r.stderr.trim()) || `mount exited ${r.status}`
}

// Not t.testdir(): tap would remove it before the teardown unmounts.
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'policyd-ts-full-'))
const mountPoint = path.join(dir, 'db')
fs.mkdirSync(mountPoint)
const refused = mountRefused(mountPoint, '2m')
t.teardown(() => {
  if (refused === null) spawnSync('umount', ['-l', mountPoint])
  fs.rmSync(dir, { recursive: true, force: true })
})
const skip = refused === null ? false : `a full file system needs a tmpfs mount, refused here (uid ${process.getuid?.()}): ${refused}`

t.test('a full file system under the database', { skip }, async (t) => {
  const p = startPolicy(isolatedArgs(dir, ['--greylist_delay', '300']))
  let n = 0
  const ask = async (count: number): Promise<string[]> => {
    const start = n
    for (let i = 0; i < count; i++, n++) p.send(rcptRequest({ sender: `s${n}@full.example`, recipient: `r${n}@example.org`, instance: `f${n}` }))
    return (await p.replies(n, 30000)).slice(start)
  }
  const before = await ask(20)
  t.ok(before.every((r) => r.startsWith('action=DEFER_IF_PERMIT 4.2.0 Greylisted')), 'greylisting works while there is room')

  // Fill the file system to the last byte. (The COMMIT of the last request
  // above runs just after its reply: it may come before or after this.)
  const filler = path.join(mountPoint, 'filler')
  const fd = fs.openSync(filler, 'w')
  const block = Buffer.alloc(64 * 1024, 0x41)
  try {
    for (;;) fs.writeSync(fd, block)
  } catch (err) {
    t.equal((err as NodeJS.ErrnoException).code, 'ENOSPC', 'the file system is full')
  }
  try {
    for (;;) fs.writeSync(fd, Buffer.alloc(512, 0x41))
  } catch {
    /* full to the last block */
  }
  fs.closeSync(fd)

  const during = await ask(400)
  t.equal(during.filter((r) => !/^action=(DUNNO|DEFER_IF_PERMIT 4\.2\.0 Greylisted.*)$/.test(r)).length, 0, 'every reply is fail_action (DUNNO) or still a greylisting decision')
  t.ok(during.filter((r) => r === 'action=DUNNO').length > 300, 'once the disk is full, mail flows with fail_action')

  fs.rmSync(filler)
  const after = await ask(20)
  t.ok(after.every((r) => r.startsWith('action=DEFER_IF_PERMIT 4.2.0 Greylisted')), 'room again: the same process greylists again')

  p.child.stdin.end()
  t.same(await p.exited(), { code: 0, signal: null })
  t.equal(p.stderr(), '')
  const replies = assertWellFormed(p.stdout())
  const log = fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8')
  const commitFailures = log.match(/commit failed \(full\).*the next requests commit before their reply/g)?.length ?? 0
  t.ok(commitFailures >= 1, `a COMMIT that failed after its reply is logged (${commitFailures} times)`)
  // A full disk still takes a commit whose pages fit in the WAL's last
  // block (one page, not a split leaf): the store may come back for a
  // request and fail again. Each outage is logged once and its end too.
  const outages = log.match(/database full, answering fail_action DUNNO/g)?.length ?? 0
  t.ok(outages >= 1, `the condition is logged (${outages} times)`)
  t.equal(log.match(/database available again/g)?.length, outages, 'and each time its end, once')
  const db = new Database(path.join(mountPoint, 'policyd-ts.sqlite'), { readonly: true })
  t.teardown(() => db.close())
  t.equal((db.prepare('PRAGMA integrity_check').get() as { integrity_check: string }).integrity_check, 'ok')
  const recorded = (db.prepare("SELECT count(*) AS n FROM triplet WHERE key LIKE '%@full.example/%'").get() as { n: number }).n
  t.ok(recorded >= 39, `the triplets of before and after are there (${recorded} recorded)`)
  // No deferral goes unrecorded silently: each one is in the database, or
  // is the one whose COMMIT failed after its reply, logged just then.
  const deferred = replies.filter((r) => r.startsWith('action=DEFER')).length
  t.equal(deferred, recorded + commitFailures, `deferred: ${deferred} = ${recorded} recorded + ${commitFailures} logged commit failures`)
})

t.test('a full store, simulated through the store interface: fail_action, logged once, recovered', async (t) => {
  const l = loadConfig({ cli: { greylist_whitelist_clients: '', greylist_whitelist_recipients: '', spf_enabled: 'no' }, configPath: '/dev/null', env: {}, readFile: () => '', parseDotenv: () => () => ({}) })
  let full = true
  const store: GreylistStore = {
    updateGreylist: async (_t, _c, fn) => {
      if (full) throw new StoreError('full', 'database or disk is full')
      return fn({ triplet: null, client: null, tripletCount: 0 }).result
    },
    purgeExpired: async () => 0,
    counts: async () => ({ triplets: 0, clients: 0 }),
    close: () => undefined,
  }
  const logs: string[] = []
  const states = new Map<string, string>()
  const logStateChange = (topic: string, state: string, _l: number, msg: string): void => {
    if (states.get(topic) !== state) logs.push(msg)
    states.set(topic, state)
  }
  const ctx: DecideContext = {
    config: l.config, log: () => undefined, logStateChange, headers: new HeaderQueue(4, () => undefined),
    greylist: { config: l.config, store, whitelists: { matchClient: () => null, matchRecipient: () => null }, headerSent: new BoundedMap(4), version: () => '0', hostname: 'h', log: () => undefined, logStateChange },
  }
  const req = toPolicyRequest(new Map(Object.entries({ request: 'smtpd_access_policy', protocol_state: 'RCPT', client_address: '192.0.2.1', sender: 'a@b.example', recipient: 'c@d.example', instance: 'x' })))
  t.equal((await decide(req, ctx, 1)).action, 'DUNNO')
  t.equal((await decide(req, ctx, 2)).action, 'DUNNO')
  full = false
  t.match((await decide(req, ctx, 3)).action, /^DEFER_IF_PERMIT/)
  t.same(logs, ['database full, answering fail_action DUNNO: database or disk is full', 'database available again'])
})
