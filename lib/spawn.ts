// Spawn mode: Postfix's spawn(8) connects stdin, stdout AND stderr to the
// SMTP server's socket. This file wires config, log, store and checks to
// the I/O loop and makes sure nothing but replies ever reaches those fds.

import { App } from './app'
import type { Config, LoadedConfig } from './config'
import { processLogger, type Logger } from './log'
import type { FramerLimits } from './protocol'
import { serve, type EndReason } from './server'
import { unreadPolicydSpfConf } from './policyd-spf-conf'
import { version } from './version'

export interface SpawnArgs {
  loaded: LoadedConfig
  argvErrors: string[]
}

/** The framing bounds of every connection, from the configuration. */
export function framerLimits(config: Config): FramerLimits {
  return { maxLineLength: config.max_line_length, maxAttributes: config.max_attributes, maxRequestBytes: config.max_request_bytes }
}

/**
 * A bug left the process in a state nobody knows: log it and exit, as
 * Postfix daemons do; spawn(8) (or systemd, for the daemon) starts a fresh
 * process. `stopInput` stops reading requests meanwhile, and the log is
 * flushed first (it batches lines). Node prints nothing itself: there is
 * a handler.
 */
export function exitOnUncaughtError(log: Logger, stopInput: () => void): void {
  let failed = false
  const fail = (what: string, err: unknown): void => {
    if (failed) return
    failed = true
    // 70 is sysexits(3) EX_SOFTWARE, as bin/policyd-ts answers a failed start.
    const exit = (): never => process.exit(70)
    setTimeout(exit, 2000)
    try {
      stopInput()
      log.log(0, `${what}, exiting: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
      log.close().then(exit, exit)
    } catch {
      exit()
    }
  }
  process.on('uncaughtException', (err) => fail('uncaught exception', err))
  process.on('unhandledRejection', (err) => fail('unhandled rejection', err))
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
  exitOnUncaughtError(log, () => process.stdin.removeAllListeners('data').removeAllListeners('end').pause())
}

export async function runSpawn(args: SpawnArgs): Promise<void> {
  const { loaded } = args
  const config = loaded.config
  const log = processLogger(config)
  silenceStdio(log)
  log.log(3, `starting, version ${version()}, config file ${loaded.configFile}${loaded.configFileFound ? '' : ' (not found)'}`)
  // Logged by every process at its start, so that a bad setting shows up in
  // the log as long as it is there; each one is ignored (or stands in with a
  // safe value), and the other keys and checks work as configured.
  for (const error of [...args.argvErrors.map((e) => `${e} (ignored)`), ...loaded.errors]) log.log(0, `configuration error: ${error}`)
  for (const notice of loaded.notices) log.log(1, notice)
  const unreadSpfConf = unreadPolicydSpfConf(loaded)
  if (unreadSpfConf !== null) log.log(0, unreadSpfConf)

  const app = new App({ loaded, log })
  const connection = app.connection()

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
    await app.flushStats()
    app.close()
    await log.close()
    const exit = (): never => process.exit(0)
    if (process.stdout.writableLength === 0 || reason === 'output-closed') exit()
    process.stdout.once('drain', exit)
    setTimeout(exit, 2000)
  }

  const reason = await serve({
    input: process.stdin,
    output: process.stdout,
    limits: framerLimits(config),
    handle: connection.handle,
    failAction: () => app.config.fail_action,
    log: (level, msg) => log.log(level, msg),
    maxIdleMs: config.max_idle * 1000,
    maxLifetimeMs: config.max_lifetime * 1000,
  })
  await shutdown(reason)
}
