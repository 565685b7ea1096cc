// A DNS server address as dns_servers and /etc/resolv.conf give it. Kept
// apart from the resolver so that validating the configuration does not
// load the resolver.

export interface ServerAddress {
  host: string
  port: number
  family: 4 | 6
}

import { parseIp } from '../normalize'

function isV6(text: string): boolean {
  return text.includes(':') && parseIp(text)?.family === 6
}

const V4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/

function port(text: string | undefined): number | null {
  if (text === undefined) return 53
  const n = Number(text)
  return n >= 1 && n <= 65535 ? n : null
}

/** `ip`, `ip:port`, `[ipv6]:port` or a bare IPv6 address; null when it is none of them. */
export function parseServerAddress(text: string): ServerAddress | null {
  const t = text.trim()
  let m = /^\[([0-9a-fA-F:.]+)\](?::(\d{1,5}))?$/.exec(t)
  if (m && isV6(m[1])) {
    const p = port(m[2])
    return p === null ? null : { host: m[1], port: p, family: 6 }
  }
  m = /^([\d.]+)(?::(\d{1,5}))?$/.exec(t)
  if (m && V4.test(m[1])) {
    const p = port(m[2])
    return p === null ? null : { host: m[1], port: p, family: 4 }
  }
  if (m === null && isV6(t)) return { host: t, port: 53, family: 6 }
  return null
}
