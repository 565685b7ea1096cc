// Daemon mode: one process for every smtpd, on a unix socket, a TCP port
// or the socket systemd passes. Each accepted connection is served by the
// same I/O loop and decision code as spawn mode, with its own framing,
// header queue and per-message memory. Signals: HUP rereads the
// configuration and lists without dropping connections (a bad one keeps
// the old), TERM/INT stop accepting, answer the requests already received
// and exit 0, USR1 logs counts.

import net = require('node:net')
import { setMaxListeners } from 'node:events'
import { App } from '../app'
import type { LoadedConfig } from '../config'
import { parseListen, formatListen } from '../listen-address'
import { processLogger } from '../log'
import { readConfig } from '../read-config'
import { unreadPolicydSpfConf } from '../policyd-spf-conf'
import { serve } from '../server'
import { exitOnUncaughtError, framerLimits } from '../spawn'
import { version } from '../version'
import { ListenError, openListener } from './listen'
import { startMetricsServer, type MetricsServer } from './metrics-server'
import { addProcessGauges } from '../metrics'

export const EX_CONFIG = 78
export const EX_UNAVAILABLE = 69

/** How long TERM waits for connections to finish the requests they received. */
const DRAIN_TIMEOUT_MS = 10_000
/** Keys whose change needs a restart (the store and the socket are opened once). */
const RESTART_KEYS = [
  'listen', 'listen_mode', 'listen_group', 'db_path', 'db_busy_timeout', 'db_corrupt_action', 'metrics_listen',
  // store = redis (task HC): the store is opened once too.
  'store', 'redis_url', 'redis_password_file', 'redis_sentinels', 'redis_sentinel_name', 'redis_prefix', 'redis_timeout',
] as const

export interface DaemonArgs {
  loaded: LoadedConfig
  options: Record<string, string>
  configPath?: string
  /** Tests: the environment (LISTEN_PID/LISTEN_FDS) and where errors go besides the log. */
  env?: NodeJS.ProcessEnv
  stderr?: (text: string) => void
}

export interface Daemon {
  /** Resolves with the exit code once the daemon has stopped. */
  stopped: Promise<number>
  where: string
  connections(): number
  reload(): void
  stop(): void
  /** Close the listening socket (connections stay). */
  stopAccepting(): void
  app: App
  metricsAddress: string | null
}

export async function runDaemon(args: DaemonArgs): Promise<number> {
  const daemon = await startDaemon(args)
  if (typeof daemon === 'number') return daemon
  // A crash of one connection's handler is answered with fail_action by the
  // I/O loop; an error outside any handler leaves the process in an
  // unknown state: logged, then exit 70 (systemd restarts it).
  exitOnUncaughtError(daemon.app.log, () => daemon.stopAccepting())
  process.on('SIGHUP', () => daemon.reload())
  process.once('SIGTERM', () => daemon.stop())
  process.once('SIGINT', () => daemon.stop())
  process.on('SIGUSR1', () => daemon.app.log.log(0, `connections=${daemon.connections()} rss_mb=${(process.memoryUsage.rss() / 1048576).toFixed(1)}`))
  return daemon.stopped
}

export async function startDaemon(args: DaemonArgs): Promise<Daemon | number> {
  const { loaded } = args
  const config = loaded.config
  const stderr = args.stderr ?? ((text: string) => process.stderr.write(text))
  const log = processLogger(config)
  const fatal = async (code: number, msg: string): Promise<number> => {
    log.log(0, msg)
    stderr(`policyd-ts: ${msg}\n`)
    await log.close()
    return code
  }
  const address = parseListen(config.listen)
  if (!address) {
    // A bad value was already reported and dropped by the loader: say that one.
    const reported = loaded.errors.find((e) => /: listen: /.test(e))
    return fatal(EX_CONFIG, reported ?? `listen: ${JSON.stringify(config.listen)} is not unix:PATH, inet:HOST:PORT or systemd`)
  }
  for (const e of loaded.errors) {
    log.log(0, `configuration error: ${e}`)
    stderr(`policyd-ts: configuration error: ${e}\n`)
  }
  for (const notice of loaded.notices) log.log(1, notice)
  const unreadSpfConf = unreadPolicydSpfConf(loaded)
  if (unreadSpfConf !== null) log.log(0, unreadSpfConf)

  const app = new App({ loaded, log, lockWaits: 'yield' })
  const server = net.createServer({ pauseOnConnect: false })
  let where: string
  try {
    where = await openListener(server, {
      address, mode: config.listen_mode, group: config.listen_group, env: args.env ?? process.env, pid: process.pid,
      log: (level, msg) => log.log(level, msg),
    })
  } catch (err) {
    app.close()
    if (err instanceof ListenError) return fatal(EX_UNAVAILABLE, err.message)
    throw err
  }
  const { metrics } = app
  addProcessGauges(metrics, Date.now() / 1000)
  let metricsServer: MetricsServer | null = null
  if (config.metrics_listen !== '') {
    try {
      metricsServer = await startMetricsServer(config.metrics_listen, metrics, (level, msg) => log.log(level, msg))
    } catch (err) {
      server.close()
      app.close()
      return fatal(EX_UNAVAILABLE, `cannot serve metrics on ${config.metrics_listen}: ${(err as Error).message}`)
    }
  }
  log.log(1, `daemon started, version ${version()}, listening on ${where}${metricsServer ? `, metrics on http://${metricsServer.address}/metrics` : ''}, config file ${loaded.configFile}${loaded.configFileFound ? '' : ' (not found)'}`)

  const sockets = new Set<net.Socket>()
  metrics.gauge('connections', () => sockets.size)
  const drain = new AbortController()
  // One listener per open connection: thousands are expected, not a leak.
  setMaxListeners(0, drain.signal)
  let stopping = false
  let full = false
  let resolveStopped!: (code: number) => void
  const stopped = new Promise<number>((resolve) => {
    resolveStopped = resolve
  })

  server.on('connection', (socket) => {
    const { max_connections: max, max_idle: maxIdle } = app.config
    if (stopping) {
      socket.destroy()
      return
    }
    if (sockets.size >= max) {
      metrics.add('connectionsRefused')
      full = true
      log.logStateChange('connections', 'full', 0, `too many connections (max_connections ${max}): closing new ones until some end; Postfix answers their requests with its default_action`)
      socket.destroy()
      return
    }
    sockets.add(socket)
    socket.setNoDelay(true)
    const connection = app.connection()
    void serve({
      input: socket,
      output: socket,
      limits: framerLimits(app.config),
      handle: connection.handle,
      failAction: () => app.config.fail_action,
      log: (level, msg) => log.log(level, msg),
      maxIdleMs: maxIdle * 1000,
      maxLifetimeMs: Infinity,
      drain: drain.signal,
    }).then((reason) => {
      log.log(3, `connection closed: ${reason}`)
      socket.end()
      // A peer that stopped reading must not keep the socket forever.
      setTimeout(() => socket.destroy(), 2000).unref()
      socket.once('close', () => {
        sockets.delete(socket)
        if (full && sockets.size < app.config.max_connections) {
          full = false
          log.logStateChange('connections', 'ok', 0, 'connections below max_connections again')
        }
        if (stopping && sockets.size === 0) void finish()
      })
    })
  })
  server.on('error', (err) => log.log(0, `listening socket error: ${err.message}`))

  const reload = (): void => {
    if (stopping) return
    // logrotate's postrotate sends HUP: lines from here on go to the new file.
    log.reopen()
    let next: LoadedConfig
    try {
      next = readConfig(args.options, args.configPath)
    } catch (err) {
      log.log(0, `reload failed, keeping the running configuration: ${(err as Error).message}`)
      return
    }
    if (next.errors.length > 0) {
      log.log(0, `reload refused, keeping the running configuration: ${next.errors.join('; ')}`)
      return
    }
    const needRestart = RESTART_KEYS.filter((k) => String(next.config[k]) !== String(app.config[k]))
    if (needRestart.length > 0) log.log(0, `reload: ${needRestart.join(', ')} changed; that takes effect at the next restart`)
    const kept = { ...next.config }
    for (const k of RESTART_KEYS) (kept as Record<string, unknown>)[k] = app.config[k]
    app.reload({ ...next, config: kept })
    log.log(1, `configuration reloaded from ${next.configFile}`)
  }

  let finishing = false
  const finish = async (): Promise<void> => {
    if (finishing) return
    finishing = true
    await metricsServer?.close()
    await app.flushStats()
    app.close()
    log.log(1, 'daemon stopped')
    await log.close()
    resolveStopped(0)
  }
  const stop = (): void => {
    if (stopping) return
    stopping = true
    log.log(1, `stopping: answering the requests received on ${sockets.size} connections`)
    server.close()
    drain.abort()
    if (sockets.size === 0) void finish()
    setTimeout(() => {
      for (const s of sockets) s.destroy()
      void finish()
    }, DRAIN_TIMEOUT_MS).unref()
  }

  return { stopped, where, connections: () => sockets.size, reload, stop, stopAccepting: () => server.close(), app, metricsAddress: metricsServer?.address ?? null }
}

export { formatListen }
