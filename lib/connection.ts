// The state of one policy connection (one smtpd process's client): the
// header queue and the per-message memories. Two connections interleaving
// messages never see each other's headers or SPF results. The decision
// context is rebuilt when the application takes a new configuration.

import type { App, Runtime } from './app'
import { BoundedMap } from './bounded-map'
import type { DecideContext } from './decide'
import { HeaderQueue } from './header-queue'
import { createPolicy } from './policy'
import type { Frame } from './protocol'
import type { MessageSpf, SpfContext } from './spf/check'
import { version } from './version'

/** Messages remembered per connection: one smtpd handles one message at a time, so a few suffice. */
const MESSAGES = 64
const HEADER_MESSAGES = 64
const GREYLIST_HEADER_MESSAGES = 256

export class Connection {
  readonly headers: HeaderQueue
  /** Instances (messages) that already got the X-Greylist header. */
  private readonly greylistHeaderSent = new BoundedMap<string, true>(GREYLIST_HEADER_MESSAGES)
  private readonly spfMessages = new BoundedMap<string, MessageSpf>(MESSAGES)
  /** The last message this connection held against rate limits. */
  private readonly rateLimitMessage = { instance: '', ids: [] as string[] }
  private built: { runtime: Runtime; context: DecideContext; handle: (frame: Frame) => Promise<string> } | null = null

  constructor(private readonly app: App) {
    const log = app.log
    this.headers = new HeaderQueue(HEADER_MESSAGES, (level, msg) => log.log(level, msg))
  }

  /** The action for one frame (the server's `handle`). */
  handle = (frame: Frame): Promise<string> => this.current().handle(frame)

  /** The context of the next decision, for tests and spfquery. */
  context(): DecideContext {
    return this.current().context
  }

  private current(): NonNullable<Connection['built']> {
    const runtime = this.app.runtime
    if (this.built?.runtime === runtime) return this.built
    const context = this.makeContext(runtime)
    const handle = createPolicy({
      config: runtime.config,
      log: this.app.log,
      context: () => context,
      now: this.app.now,
      afterDecision: (now) => this.app.afterDecision(now),
      metrics: this.app.metrics,
    })
    this.built = { runtime, context, handle }
    return this.built
  }

  private makeContext(runtime: Runtime): DecideContext {
    const { config } = runtime
    const log = this.app.log
    const logLine = (level: number, msg: string): void => log.log(level, msg)
    const logStateChange = log.logStateChange.bind(log)
    let spf: SpfContext | undefined
    const app = this.app
    const rl = runtime.ratelimit
    const rateLimits = app.rateLimits
    return {
      ratelimit: rl && rateLimits
        ? {
            config,
            store: rateLimits,
            defaults: rl.defaults,
            exempt: rl.exempt,
            overrides: () => rl.overrides(),
            prepare: async () => {
              if (!rl.storedReady) await rl.refreshStored(rateLimits, app.now())
            },
            connection: this.rateLimitMessage,
            get endOfMessage() {
              return app.endOfMessage
            },
            log: logLine,
            logStateChange,
            countExpired: (n) => app.metrics.add('holdsExpired', {}, n),
          }
        : undefined,
      config,
      logStateChange,
      log: logLine,
      headers: this.headers,
      // The resolver, its cache and the policy are the process's; what one
      // message learnt is this connection's.
      spf: () => (spf ??= { ...runtime.spf(), messages: this.spfMessages }),
      greylist: {
        config,
        store: this.app.store,
        whitelists: runtime.whitelists,
        headerSent: this.greylistHeaderSent,
        recentPasses: runtime.recentPasses,
        version,
        hostname: runtime.hostname,
        log: logLine,
        logStateChange,
      },
    }
  }
}
