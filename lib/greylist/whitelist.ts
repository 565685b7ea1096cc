// postgrey's whitelist files, read unchanged, and reread when they change.
//
// Client file: `/regex/` on the client host name; `a.b.c.d[/m]`; `a.b.c`
// (that /24); `a.b` (that /16); IPv6 `x::y[/m]`; anything else is a host
// name matching itself and every name below it (on a label boundary).
// Recipient file: `domain` (and its subdomains), `user@` (at any domain),
// `user@domain`, `/regex/` on the whole address; a `+extension` on the
// recipient is ignored for the first three.
// The host name is Postfix's client_name, which is forward-confirmed
// (`unknown` otherwise), so a PTR record alone cannot fake a name match.

import { maskIp, parseCidr, type ParsedIp } from '../normalize'
import { WatchedFile } from '../watched-file'

interface Entry {
  desc: string
}

function lines(text: string): Array<{ entry: string; line: number }> {
  const out: Array<{ entry: string; line: number }> = []
  text.split('\n').forEach((raw, i) => {
    const entry = raw.replace(/#.*/, '').trim()
    if (entry !== '') out.push({ entry, line: i + 1 })
  })
  return out
}

/**
 * `/pattern/` with a pattern of at least one character, as postgrey reads it:
 * `//` would match every name and address, so it is a bad line, not a regex.
 */
function isRegexEntry(entry: string): boolean {
  return entry.length > 2 && entry.startsWith('/') && entry.endsWith('/')
}

function parseRegex(entry: string): RegExp | string {
  try {
    return new RegExp(entry.slice(1, -1), 'i')
  } catch (err) {
    return (err as Error).message
  }
}

/** Walks `a.b.example.com`, `b.example.com`, `example.com`, `com`. */
function* suffixes(name: string): Generator<string> {
  let rest = name
  for (;;) {
    yield rest
    const dot = rest.indexOf('.')
    if (dot === -1) return
    rest = rest.slice(dot + 1)
  }
}

export class ClientWhitelist {
  readonly names = new Map<string, Entry>()
  /** family -> prefix length -> network text -> entry */
  readonly networks = new Map<number, Map<number, Map<string, Entry>>>()
  readonly regexes: Array<{ re: RegExp } & Entry> = []

  get size(): number {
    let n = this.names.size + this.regexes.length
    for (const byLen of this.networks.values()) for (const nets of byLen.values()) n += nets.size
    return n
  }

  addNetwork(family: number, prefix: number, network: string, entry: Entry): void {
    let byLen = this.networks.get(family)
    if (!byLen) this.networks.set(family, (byLen = new Map()))
    let nets = byLen.get(prefix)
    if (!nets) byLen.set(prefix, (nets = new Map()))
    nets.set(network, entry)
  }

  match(clientName: string, ip: ParsedIp | null): string | null {
    if (ip) {
      const byLen = this.networks.get(ip.family)
      if (byLen) {
        for (const [prefix, nets] of byLen) {
          const hit = nets.get(maskIp(ip, prefix).text)
          if (hit) return hit.desc
        }
      }
    }
    if (this.names.size === 0 && this.regexes.length === 0) return null
    const name = clientName.toLowerCase().replace(/\.$/, '')
    if (name !== '' && name !== 'unknown' && this.names.size > 0) {
      for (const suffix of suffixes(name)) {
        const hit = this.names.get(suffix)
        if (hit) return hit.desc
      }
    }
    for (const r of this.regexes) if (r.re.test(name)) return r.desc
    return null
  }

  merge(other: ClientWhitelist): void {
    for (const [k, v] of other.names) if (!this.names.has(k)) this.names.set(k, v)
    for (const [family, byLen] of other.networks) {
      for (const [prefix, nets] of byLen) {
        for (const [net, e] of nets) if (!this.networks.get(family)?.get(prefix)?.has(net)) this.addNetwork(family, prefix, net, e)
      }
    }
    this.regexes.push(...other.regexes)
  }
}

export function parseClientWhitelist(text: string, source: string): { list: ClientWhitelist; errors: string[] } {
  const list = new ClientWhitelist()
  const errors: string[] = []
  for (const { entry, line } of lines(text)) {
    const desc = `${source}:${line} ${entry}`
    const bad = (why: string): void => void errors.push(`${source}:${line}: ${why}: ${entry}`)
    if (isRegexEntry(entry)) {
      const re = parseRegex(entry)
      if (typeof re === 'string') bad(`bad regular expression (${re})`)
      else list.regexes.push({ re, desc })
      continue
    }
    let cidrText: string | null = null
    if (/^\d+\.\d+$/.test(entry)) cidrText = `${entry}.0.0/16`
    else if (/^\d+\.\d+\.\d+$/.test(entry)) cidrText = `${entry}.0/24`
    else if (/^[\d.]+(\/\d+)?$/.test(entry) || entry.includes(':')) cidrText = entry
    if (cidrText !== null) {
      const cidr = parseCidr(cidrText)
      if (!cidr) bad('bad IP address or network')
      else list.addNetwork(cidr.net.family, cidr.prefix, cidr.net.text, { desc })
      continue
    }
    if (/^\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$/i.test(entry)) {
      list.names.set(entry.toLowerCase().replace(/^\./, '').replace(/\.$/, ''), { desc })
      continue
    }
    bad('not a host name, address, network or /regex/')
  }
  return { list, errors }
}

export class RecipientWhitelist {
  readonly domains = new Map<string, Entry>()
  readonly localParts = new Map<string, Entry>()
  readonly addresses = new Map<string, Entry>()
  readonly regexes: Array<{ re: RegExp } & Entry> = []

  get size(): number {
    return this.domains.size + this.localParts.size + this.addresses.size + this.regexes.length
  }

  match(recipient: string): string | null {
    if (this.size === 0) return null
    const rcpt = recipient.toLowerCase()
    const at = rcpt.lastIndexOf('@')
    let local = at === -1 ? rcpt : rcpt.slice(0, at)
    const domain = at === -1 ? '' : rcpt.slice(at + 1).replace(/\.$/, '')
    const plus = local.indexOf('+')
    if (plus > 0) local = local.slice(0, plus)
    const hit = this.addresses.get(`${local}@${domain}`) ?? this.localParts.get(local)
    if (hit) return hit.desc
    if (domain !== '') {
      for (const suffix of suffixes(domain)) {
        const d = this.domains.get(suffix)
        if (d) return d.desc
      }
    }
    for (const r of this.regexes) if (r.re.test(rcpt)) return r.desc
    return null
  }

  merge(other: RecipientWhitelist): void {
    for (const [from, to] of [
      [other.domains, this.domains],
      [other.localParts, this.localParts],
      [other.addresses, this.addresses],
    ] as const) {
      for (const [k, v] of from) if (!to.has(k)) to.set(k, v)
    }
    this.regexes.push(...other.regexes)
  }
}

/** Add one entry of a recipient whitelist to `list`; returns why it is not an entry, or null. */
function addRecipientEntry(list: RecipientWhitelist, entry: string, desc: string): string | null {
  if (isRegexEntry(entry)) {
    const re = parseRegex(entry)
    if (typeof re === 'string') return `bad regular expression (${re})`
    list.regexes.push({ re, desc })
    return null
  }
  const lower = entry.toLowerCase()
  const at = lower.lastIndexOf('@')
  if (at === lower.length - 1 && at > 0) list.localParts.set(lower.slice(0, -1), { desc })
  else if (at > 0) list.addresses.set(lower, { desc })
  else if (at === -1 && /^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$/.test(lower)) list.domains.set(lower.replace(/\.$/, ''), { desc })
  else return 'not a domain, user@, user@domain or /regex/'
  return null
}

export function parseRecipientWhitelist(text: string, source: string): { list: RecipientWhitelist; errors: string[] } {
  const list = new RecipientWhitelist()
  const errors: string[] = []
  for (const { entry, line } of lines(text)) {
    const problem = addRecipientEntry(list, entry, `${source}:${line} ${entry}`)
    if (problem !== null) errors.push(`${source}:${line}: ${problem}: ${entry}`)
  }
  return { list, errors }
}

/** Why `entry` is not a recipient whitelist entry, or null (for entries given in the configuration). */
export function recipientEntryProblem(entry: string): string | null {
  return addRecipientEntry(new RecipientWhitelist(), entry, '')
}

/** Recipient entries given in the configuration (checked when it was loaded), each described as `source entry`. */
export function recipientWhitelistOf(entries: readonly string[], source: string): RecipientWhitelist {
  const list = new RecipientWhitelist()
  for (const entry of entries) addRecipientEntry(list, entry, `${source} ${entry}`)
  return list
}

export interface WhitelistFileStatus {
  path: string
  entries: number
  errors: string[]
  missing: boolean
}

export interface WhitelistFilesOptions {
  log: (level: number, msg: string) => void
  /** Milliseconds. */
  now: () => number
  checkIntervalMs?: number
  /** Paths whose absence is normal (shipped defaults): logged at level 3 instead of 0. */
  optional?: ReadonlySet<string>
}

type Kind = 'client' | 'recipient'
type ListOf<K extends Kind> = K extends 'client' ? ClientWhitelist : RecipientWhitelist

/** Several whitelist files of one kind, merged, each reread when its mtime, size or inode changes. */
export class WhitelistFiles<K extends Kind> {
  private readonly files: Array<WatchedFile<{ list: ListOf<K>; errors: string[] }>>
  private merged: ListOf<K> | null = null
  private checkedAt = -Infinity

  constructor(
    paths: readonly string[],
    private readonly kind: K,
    private readonly opts: WhitelistFilesOptions,
  ) {
    this.files = paths.map((path) => new WatchedFile(path, (text) => this.parse(text, path)))
  }

  private emptyList(): ListOf<K> {
    return (this.kind === 'client' ? new ClientWhitelist() : new RecipientWhitelist()) as ListOf<K>
  }

  private parse(text: string, source: string): { list: ListOf<K>; errors: string[] } {
    return (this.kind === 'client' ? parseClientWhitelist(text, source) : parseRecipientWhitelist(text, source)) as {
      list: ListOf<K>
      errors: string[]
    }
  }

  /** Reread changed files, at most once per checkIntervalMs. */
  refresh(): ListOf<K> {
    const now = this.opts.now()
    if (this.merged && now - this.checkedAt < (this.opts.checkIntervalMs ?? 1000)) return this.merged
    const firstRead = this.merged === null
    this.checkedAt = now
    let changed = firstRead
    for (const file of this.files) {
      if (!file.poll()) continue
      changed = true
      const { value, reason } = file.current
      if (value === null) {
        const level = this.opts.optional?.has(file.path) ? 3 : 0
        this.opts.log(level, `${this.kind} whitelist ${file.path} unreadable, treated as empty: ${reason}`)
        continue
      }
      for (const e of value.errors) this.opts.log(0, `${this.kind} whitelist: ${e} (line ignored)`)
      if (!firstRead) this.opts.log(2, `${this.kind} whitelist ${file.path} reread: ${value.list.size} entries`)
    }
    if (changed || !this.merged) {
      const merged = this.emptyList()
      for (const f of this.files) if (f.current.value) (merged as { merge(o: ListOf<K>): void }).merge(f.current.value.list)
      this.merged = merged
    }
    return this.merged
  }

  match(...args: K extends 'client' ? [clientName: string, ip: ParsedIp | null] : [recipient: string]): string | null {
    const list = this.refresh()
    return this.kind === 'client'
      ? (list as ClientWhitelist).match(args[0], (args[1] ?? null) as ParsedIp | null)
      : (list as RecipientWhitelist).match(args[0])
  }

  status(): WhitelistFileStatus[] {
    this.refresh()
    return this.files.map((f) => {
      const v = f.current.value
      return { path: f.path, entries: v ? v.list.size : 0, errors: v ? v.errors : [], missing: v === null }
    })
  }
}
