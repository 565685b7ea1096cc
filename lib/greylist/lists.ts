// The configured whitelists of the greylist check (postgrey-format files, and
// recipient entries given in the configuration itself), and the report of
// the files for --test-mode.

import { OPTIONS, type Config } from '../config'
import type { ParsedIp } from '../normalize'
import type { GreylistWhitelists } from './check'
import { recipientWhitelistOf, WhitelistFiles } from './whitelist'

/** The shipped default paths: their absence is normal, not an error. */
function defaultPaths(key: 'greylist_whitelist_clients' | 'greylist_whitelist_recipients'): Set<string> {
  return new Set(OPTIONS[key].default.split(/[,\s]+/).filter(Boolean))
}

export function createGreylistWhitelists(config: Config, log: (level: number, msg: string) => void, now: () => number): GreylistWhitelists {
  const clients = new WhitelistFiles(config.greylist_whitelist_clients, 'client', { log, now, optional: defaultPaths('greylist_whitelist_clients') })
  const recipients = new WhitelistFiles(config.greylist_whitelist_recipients, 'recipient', { log, now, optional: defaultPaths('greylist_whitelist_recipients') })
  // postmaster@ and abuse@ by default: they must work on a fresh install,
  // before any file exists. The files come first, so that a site's own entry
  // is the one the decision log names.
  const entries = recipientWhitelistOf(config.greylist_whitelist_recipient_entries, 'greylist_whitelist_recipient_entries')
  return {
    matchClient: (clientName: string, ip: ParsedIp | null) => clients.match(clientName, ip),
    matchRecipient: (recipient: string) => recipients.match(recipient) ?? entries.match(recipient),
  }
}

/** One line per whitelist file: entries, errors, or absence. */
export function describeFiles(config: Config): string[] {
  const out: string[] = []
  const kinds = [
    ['client', config.greylist_whitelist_clients],
    ['recipient', config.greylist_whitelist_recipients],
  ] as const
  for (const [kind, paths] of kinds) {
    const files = new WhitelistFiles(paths, kind, { log: () => undefined, now: () => Date.now() })
    for (const s of files.status()) {
      out.push(`${kind} whitelist ${s.path}: ${s.missing ? 'missing (treated as empty)' : `${s.entries} entries`}${s.errors.length ? `, ${s.errors.length} bad lines (ignored):` : ''}`)
      for (const e of s.errors) out.push(`  ${e}`)
    }
  }
  return out
}
