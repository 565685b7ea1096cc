// Spawn mode: Postfix's spawn(8) connects stdin, stdout AND stderr to the
// SMTP server's socket. This file wires config, log, store and checks to
// the I/O loop and makes sure nothing but replies ever reaches those fds.

import { loadConfig, type Config, type LoadedConfig } from './config'
import type { DecideContext } from './decide'
import { createLogger, type Logger } from './log'
import { BoundedMap } from './bounded-map'
import { HeaderQueue } from './header-queue'
import { createPolicy } from './policy'
import { serve, type EndReason } from './server'
import { SqliteStore } from './store/sqlite'
import { createGreylistWhitelists } from './greylist/lists'
import { version } from './version'

/** Seconds between two upkeep steps of one process, and rows looked at in each. */
const UPKEEP_EVERY = 10
const UPKEEP_ROWS = 1000

export interface SpawnArgs {
  options: Record<string, string>
  configPath?: string
  argvErrors: string[]
}

export function readConfig(options: Record<string, string>, configPath: string | undefined): LoadedConfig {
  const fs = require('node:fs') as typeof import('node:fs')
  return loadConfig({
    cli: options,
    configPath,
    env: process.env,
    readFile: (p) => fs.readFileSync(p, 'utf8'),
    parseDotenv: () => (require('dotenv') as typeof import('dotenv')).parse,
  })
}

export function systemHostname(config: Config): string {
  return config.hostname || (require('node:os') as typeof import('node:os')).hostname()
}

/** Route everything that could print (console, warnings, stray errors) into the log. */
function silenceStdio(log: Logger): void {
  const toLog = (...args: unknown[]): void => log.log(2, `console: ${args.map(String).join(' ')}`)
  console.log = toLog
  console.info = toLog
  console.warn = toLog
  console.error = toLog
  console.debug = toLog
  console.trace = toLog
  // Replaced before anything touches it: creating the real stream costs
  // milliseconds of every cold start, and nothing may be written to it.
  const { Writable } = require('node:stream') as typeof import('node:stream')
  const sink = new Writable({ write: (_chunk, _enc, done) => done() })
  Object.defineProperty(process, 'stderr', { configurable: true, enumerable: true, get: () => sink })
  process.removeAllListeners('warning')
  process.on('warning', (w) => log.log(0, `node warning: ${w.name}: ${w.message}`))
  // A bug left the process in a state nobody knows: log it and exit, as
  // Postfix daemons do; spawn(8) starts a fresh process for the next
  // connection. No more requests are read meanwhile, and the log is flushed
  // first (it batches lines). Node prints nothing itself: there is a handler.
  let failed = false
  const fail = (what: string, err: unknown): void => {
    if (failed) return
    failed = true
    // 70 is sysexits(3) EX_SOFTWARE, as bin/policyd-ts answers a failed start.
    const exit = (): never => process.exit(70)
    setTimeout(exit, 2000)
    try {
      process.stdin.removeAllListeners('data').removeAllListeners('end').pause()
      log.log(0, `${what}, exiting: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
      log.close().then(exit, exit)
    } catch {
      exit()
    }
  }
  process.on('uncaughtException', (err) => fail('uncaught exception', err))
  process.on('unhandledRejection', (err) => fail('unhandled rejection', err))
}

export async function runSpawn(args: SpawnArgs): Promise<void> {
  const loaded = readConfig(args.options, args.configPath)
  const config = loaded.config
  const log = createLogger({
    debugLevel: config.debugLevel,
    syslogSocket: config.syslog_socket,
    facility: config.syslog_facility,
    logFile: config.log_file,
    ident: 'policyd-ts',
    pid: process.pid,
  })
  silenceStdio(log)
  const configErrors = [...args.argvErrors, ...loaded.errors]
  log.log(3, `starting, version ${version()}, config file ${loaded.configFile}${loaded.configFileFound ? '' : ' (not found)'}`)
  for (const notice of loaded.notices) log.log(1, notice)

  const store = new SqliteStore({
    path: config.db_path,
    busyTimeoutMs: config.db_busy_timeout * 1000,
    renameCorrupt: config.db_corrupt_action === 'rename',
    log: (level, msg) => log.log(level, msg),
  })
  let context: DecideContext | undefined
  const logStateChange = log.logStateChange.bind(log)
  const logLine = (level: number, msg: string): void => log.log(level, msg)
  let spf: import('./spf/check').SpfContext | undefined
  const getContext = (): DecideContext => {
    context ??= {
      config,
      logStateChange,
      log: logLine,
      headers: new HeaderQueue(64, logLine),
      spf: () => {
        if (!spf) {
          const { createSpfContext } = require('./spf/context') as typeof import('./spf/context')
          spf = createSpfContext(config, { hostname: systemHostname(config), log: logLine })
        }
        return spf
      },
      greylist: {
        config,
        store,
        whitelists: createGreylistWhitelists(config, logLine, () => Date.now()),
        headerSent: new BoundedMap(256),
        recentPasses: new BoundedMap(4096),
        version,
        hostname: systemHostname(config),
        log: logLine,
        logStateChange,
      },
    }
    return context
  }

  let lastUpkeep = Date.now() / 1000
  const handle = createPolicy({
    config,
    configErrors,
    log,
    context: getContext,
    now: () => Date.now() / 1000,
    afterDecision: (now) => {
      if (!config.greylist_enabled || now - lastUpkeep < UPKEEP_EVERY) return
      lastUpkeep = now
      setImmediate(() => {
        store.purgeExpired(now, UPKEEP_ROWS).then(
          (n) => n > 0 && log.log(2, `purged ${n} expired greylist rows`),
          (err: Error) => log.log(2, `purge skipped: ${err.message}`),
        )
      })
    },
  })

  const onSignal = (): void => {
    log.log(3, 'terminated by signal')
    void shutdown('signal')
  }
  process.once('SIGTERM', onSignal)
  process.once('SIGINT', onSignal)

  let shuttingDown = false
  async function shutdown(reason: EndReason | 'signal'): Promise<void> {
    if (shuttingDown) return
    shuttingDown = true
    // Let the work queued behind the last reply (its commit, its log line) run first.
    await new Promise((resolve) => setImmediate(resolve))
    log.log(3, `exiting: ${reason}`)
    store.close()
    spf?.resolver.close()
    await log.close()
    const exit = (): never => process.exit(0)
    if (process.stdout.writableLength === 0 || reason === 'output-closed') exit()
    process.stdout.once('drain', exit)
    setTimeout(exit, 2000)
  }

  const reason = await serve({
    input: process.stdin,
    output: process.stdout,
    limits: {
      maxLineLength: config.max_line_length,
      maxAttributes: config.max_attributes,
      maxRequestBytes: config.max_request_bytes,
    },
    handle,
    failAction: () => config.fail_action,
    log: (level, msg) => log.log(level, msg),
    maxIdleMs: config.max_idle * 1000,
    maxLifetimeMs: config.max_lifetime * 1000,
  })
  await shutdown(reason)
}
