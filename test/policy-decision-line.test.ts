// The decision line tells what happened to the request: the header a reply
// carries names the check that made it (it may come from an earlier request
// of the message, decided by another check), and greylisting skipped for a
// store failure says so whichever check wins.
import t from 'tap'
import path from 'node:path'
import { loadConfig, type Config } from '../lib/config'
import type { DecideContext } from '../lib/decide'
import { BoundedMap } from '../lib/bounded-map'
import { HeaderQueue } from '../lib/header-queue'
import type { Logger } from '../lib/log'
import { createPolicy } from '../lib/policy'
import type { Frame } from '../lib/protocol'
import { SqliteStore } from '../lib/store/sqlite'
import { StoreError, type GreylistStore } from '../lib/store/types'
import { createGreylistWhitelists } from '../lib/greylist/lists'
import { createSpfContext } from '../lib/spf/context'
import { startDnsServer, type DnsServer } from './helpers/dns-server'

let dns: DnsServer
t.before(async () => {
  dns = await startDnsServer({ 'pass.test': [{ TXT: 'v=spf1 ip4:192.0.2.0/24 -all' }] })
})
t.teardown(() => dns.close())

function config(over: Record<string, string> = {}): Config {
  const l = loadConfig({
    cli: {
      greylist_whitelist_clients: '', greylist_whitelist_recipients: '', hostname: 'mx.example.org',
      dns_servers: `127.0.0.1:${dns.port}`, Lookup_Time: '1', ...over,
    },
    configPath: '/dev/null', env: {}, readFile: () => '', parseDotenv: () => () => ({}),
  })
  if (l.errors.length) throw new Error(l.errors.join('; '))
  return l.config
}

/** A logger that keeps the lines, as the log would show them. */
function capturingLogger(lines: string[]): Logger {
  return {
    log: (_level, msg) => void lines.push(msg),
    logStateChange: (_topic, _state, _level, msg) => void lines.push(msg),
    enabled: () => true,
    setLevel: () => undefined,
    close: () => Promise.resolve(),
  }
}

const T0 = 1_800_000_000

function harness(t: Tap.Test, cfg: Config, store?: GreylistStore) {
  const lines: string[] = []
  const log = capturingLogger(lines)
  const logLine = (level: number, msg: string): void => log.log(level, msg)
  const s = store ?? new SqliteStore({ path: path.join(t.testdir(), 'db', 'g.sqlite'), busyTimeoutMs: 100, renameCorrupt: true, log: () => undefined })
  const spf = createSpfContext(cfg, { hostname: 'mx.example.org', log: logLine })
  t.teardown(() => {
    s.close()
    spf.resolver.close()
  })
  const context: DecideContext = {
    config: cfg,
    log: logLine,
    logStateChange: log.logStateChange,
    headers: new HeaderQueue(16, logLine),
    spf: () => spf,
    greylist: {
      config: cfg, store: s, whitelists: createGreylistWhitelists(cfg, logLine, () => 0), headerSent: new BoundedMap(16),
      version: () => '9.9.9', hostname: 'mx.example.org', log: logLine, logStateChange: log.logStateChange,
    },
  }
  let now = T0
  const handle = createPolicy({ config: cfg, configErrors: [], log, context: () => context, now: () => now })
  /** The reply and the decision line of one request at `at`. */
  const ask = async (over: Record<string, string>, at: number): Promise<{ action: string; line: string }> => {
    now = at
    const frame: Frame = {
      kind: 'request',
      attrs: new Map(Object.entries({
        request: 'smtpd_access_policy', protocol_state: 'RCPT', client_address: '192.0.2.10', client_name: 'mail.example.net',
        helo_name: 'mail.example.net', sender: 'alice@pass.test', recipient: 'bob@example.org', instance: 'm1', ...over,
      })),
      garbage: [],
      duplicates: [],
    }
    const before = lines.length
    const action = await handle(frame)
    // The decision line is written just after the reply.
    await new Promise((r) => setImmediate(r))
    const line = lines.slice(before).filter((l) => l.startsWith('decision '))
    if (line.length !== 1) throw new Error(`not one decision line: ${JSON.stringify(lines.slice(before))}`)
    return { action, line: line[0] }
  }
  return { ask, lines }
}

t.test('a header given with a later reply names the check that made it, not the winner of that reply', async (t) => {
  const { ask } = harness(t, config())
  t.match((await ask({ instance: 'm1' }, T0)).action, /^DEFER_IF_PERMIT /, 'greylisted first')
  t.match((await ask({ instance: 'm1', recipient: 'carol@example.org' }, T0)).action, /^DEFER_IF_PERMIT /)
  // The retry: SPF and greylisting both have a header; the RCPT reply carries the first, DATA the second.
  const rcpt = await ask({ instance: 'm2' }, T0 + 300)
  t.match(rcpt.action, /^PREPEND Received-SPF: Pass/)
  t.match(rcpt.line, /^decision action=PREPEND check=spf reason=mailfrom-pass .* header=Received-SPF header_check=spf /)
  const rcpt2 = await ask({ instance: 'm2', recipient: 'carol@example.org' }, T0 + 300)
  t.match(rcpt2.action, /^PREPEND X-Greylist: delayed 300 seconds/, 'the second recipient carries the greylist header')
  t.match(rcpt2.line, / header=X-Greylist header_check=greylist /)
  const data = await ask({ instance: 'm2', protocol_state: 'DATA', recipient: '' }, T0 + 300)
  t.equal(data.action, 'DUNNO', 'nothing left for DATA')
  t.notMatch(data.line, / header=/)
})

t.test('the greylist header given at DATA is said to come from greylisting', async (t) => {
  const { ask } = harness(t, config())
  await ask({ instance: 'm1' }, T0)
  await ask({ instance: 'm2' }, T0 + 300)
  const data = await ask({ instance: 'm2', protocol_state: 'DATA', recipient: '' }, T0 + 300)
  t.match(data.action, /^PREPEND X-Greylist: /)
  t.match(data.line, /^decision action=PREPEND check=spf reason=mailfrom-pass-header-given state=DATA .* header=X-Greylist header_check=greylist( |$)/)
})

t.test('a store failure says greylisting was skipped, whichever check wins', async (t) => {
  const failing: GreylistStore = {
    updateGreylist: () => Promise.reject(new StoreError('unavailable', 'unable to open database file')),
    purgeExpired: () => Promise.resolve(0),
    counts: () => Promise.resolve({ triplets: 0, clients: 0 }),
    close: () => undefined,
  }
  const withSpf = harness(t, config(), failing)
  const spfWins = await withSpf.ask({}, T0)
  t.match(spfWins.action, /^PREPEND Received-SPF: Pass/, 'fail_action DUNNO: SPF decides')
  t.match(spfWins.line, /^decision action=PREPEND check=spf reason=mailfrom-pass .* greylist=skipped-store-unavailable( |$)/)

  const alone = harness(t, config({ spf_enabled: 'no', fail_action: 'DEFER_IF_PERMIT 4.3.0 try later' }), failing)
  const failed = await alone.ask({}, T0)
  t.equal(failed.action, 'DEFER_IF_PERMIT 4.3.0 try later')
  t.match(failed.line, /^decision action=DEFER_IF_PERMIT check=greylist reason=store-unavailable .* greylist=skipped-store-unavailable( |$)/)
  t.match(alone.lines.join('\n'), /database unavailable, answering fail_action DEFER_IF_PERMIT 4\.3\.0 try later: unable to open database file/)
})
