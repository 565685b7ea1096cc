// Everything the SPF check needs, made once per process from the
// configuration: the policy, the Per_User file, the resolver with its
// cache, the per-message memory.

import { BoundedMap } from '../bounded-map'
import type { Config } from '../config'
import { createResolver } from '../dns/resolver'
import type { MessageSpf, SpfContext } from './check'
import { openPerUser, toPolicy } from './policy'

/** Messages remembered per process: one smtpd handles one message at a time. */
const MESSAGES = 64

export function createSpfContext(config: Config, deps: { hostname: string; log: (level: number, msg: string) => void; now?: () => number }): SpfContext {
  const now = deps.now ?? Date.now
  return {
    config,
    policy: toPolicy(config),
    perUser: config.Per_User === '' ? null : openPerUser(config, deps.log, now),
    resolver: createResolver({ servers: config.dns_servers, now }),
    authservId: config.Authserv_Id === 'HOSTNAME' ? deps.hostname : config.Authserv_Id,
    hostname: deps.hostname,
    messages: new BoundedMap<string, MessageSpf>(MESSAGES),
    log: deps.log,
    now,
  }
}
