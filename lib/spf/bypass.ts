// The lists that exempt a client from the SPF checks, tried in
// policyd-spf's order: skip_addresses, Whitelist, Domain_Whitelist,
// HELO_Whitelist, Domain_Whitelist_PTR.

import type { DnsAnswer, Resolver, RrType } from '../dns/resolver'
import { domainToALabels, ipInNetwork, parseIp, type ParsedIp } from '../normalize'
import { reverseName, type SpfResult } from './check-host'
import { inDomainList, type SpfPolicy } from './policy'

export type BypassList = 'skip_addresses' | 'Whitelist' | 'Domain_Whitelist' | 'HELO_Whitelist' | 'Domain_Whitelist_PTR'

/** The comment policyd-spf writes for each list. */
export const BYPASS_COMMENT: Record<BypassList, string> = {
  skip_addresses: 'SPF check N/A for local connections',
  Whitelist: 'SPF skipped for whitelisted relay',
  Domain_Whitelist: 'SPF skipped for whitelisted relay domain',
  HELO_Whitelist: 'SPF skipped for whitelisted HELO domain',
  Domain_Whitelist_PTR: 'SPF skipped for PTR whitelisted relay domain',
}

export interface Bypass {
  list: BypassList
  /** The entry that matched. */
  entry: string
}

export interface BypassDeps {
  resolver: Resolver
  /** check_host() of `domain` for the client, within `timeMs`. */
  checkDomain: (domain: string, timeMs: number) => Promise<SpfResult>
  /** Milliseconds. */
  now: () => number
}

const NO_ANSWER: DnsAnswer = { rcode: 'TIMEOUT', records: [], mx: [] }

/** One query, given up (as a timeout) when the method's time is over. */
function queryUntil(deps: BypassDeps, deadline: number, name: string, type: RrType): Promise<DnsAnswer> {
  const left = deadline - deps.now()
  if (left <= 0) return Promise.resolve(NO_ANSWER)
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    deps.resolver.query(name, type),
    new Promise<DnsAnswer>((resolve) => {
      timer = setTimeout(() => resolve(NO_ANSWER), left)
    }),
  ]).finally(() => clearTimeout(timer))
}

async function hasAddress(deps: BypassDeps, deadline: number, name: string, ip: ParsedIp): Promise<boolean> {
  const a = await queryUntil(deps, deadline, name, ip.family === 4 ? 'A' : 'AAAA')
  return a.records.some((addr) => parseIp(addr)?.text === ip.text)
}

/**
 * The client's host names that resolve back to its address. Postfix's
 * client_name is such a name already; without one (peer name lookups off,
 * or a temporary failure) the PTR names are confirmed here, at most 10.
 */
async function confirmedNames(deps: BypassDeps, deadline: number, ip: ParsedIp, clientName: string): Promise<string[]> {
  if (clientName !== '' && clientName !== 'unknown') return [clientName.toLowerCase().replace(/\.$/, '')]
  const ptr = await queryUntil(deps, deadline, reverseName(ip), 'PTR')
  const out: string[] = []
  for (const raw of ptr.records.slice(0, 10)) {
    const name = raw.toLowerCase().replace(/\.$/, '')
    if (await hasAddress(deps, deadline, name, ip)) out.push(name)
  }
  return out
}

/** The first list that exempts this client, or null. */
export async function findBypass(
  ip: ParsedIp,
  req: { helo: string; clientName: string },
  policy: SpfPolicy,
  deps: BypassDeps,
): Promise<Bypass | null> {
  for (const [list, nets] of [['skip_addresses', policy.skipAddresses], ['Whitelist', policy.whitelist]] as const) {
    const hit = nets.find((net) => ipInNetwork(ip, net))
    if (hit) return { list, entry: `${hit.net.text}/${hit.prefix}` }
  }
  if (policy.domainWhitelist.length > 0) {
    const deadline = deps.now() + policy.whitelistLookupMs
    for (const domain of policy.domainWhitelist) {
      const left = deadline - deps.now()
      if (left <= 0) break
      if ((await deps.checkDomain(domain, left)).result === 'pass') return { list: 'Domain_Whitelist', entry: domain }
    }
  }
  const heloGiven = req.helo.toLowerCase().replace(/\.$/, '')
  const helo = domainToALabels(heloGiven) ?? heloGiven
  if (policy.heloWhitelist.includes(helo)) {
    const deadline = deps.now() + policy.whitelistLookupMs
    if (await hasAddress(deps, deadline, helo, ip)) return { list: 'HELO_Whitelist', entry: helo }
  }
  if (policy.domainWhitelistPtr.length > 0) {
    const deadline = deps.now() + policy.whitelistLookupMs
    for (const name of await confirmedNames(deps, deadline, ip, req.clientName)) {
      const entry = policy.domainWhitelistPtr.find((d) => inDomainList(name, [d]))
      if (entry) return { list: 'Domain_Whitelist_PTR', entry }
    }
  }
  return null
}
