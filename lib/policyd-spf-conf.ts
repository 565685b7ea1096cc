// Debian's postfix-policyd-spf-python reads this file when its master.cf
// line names none, and Debian's README gives a line that names none. An
// admin who replaces only the program in that line gets policyd-ts's own
// default file instead: every setting of policyd-spf.conf would be dropped
// without a word. This notices it, for a log line at each start and a line
// in --test-mode. Cheap enough for every cold start: one stat when the file
// is absent.

export const POLICYD_SPF_CONF = '/etc/postfix-policyd-spf-python/policyd-spf.conf'

export interface FileProbe {
  existsSync(file: string): boolean
  /** Throws when the file cannot be resolved. */
  realpathSync(file: string): string
}

export interface ConfigRead {
  configFile: string
  configFileFound: boolean
  config: { spf_enabled: boolean }
}

/**
 * Whether policyd-spf's file is on this machine but is not the file this
 * configuration was read from. With spf_enabled = no the file cannot
 * matter (policyd-spf may still check SPF beside a greylisting-only
 * policyd-ts).
 */
export function policydSpfConfUnread(read: ConfigRead, probe: FileProbe = require('node:fs') as FileProbe): boolean {
  if (!read.config.spf_enabled || !probe.existsSync(POLICYD_SPF_CONF)) return false
  return !(read.configFileFound && sameFile(read.configFile, POLICYD_SPF_CONF, probe))
}

/** The log line (and --test-mode line) for policydSpfConfUnread(); null when there is nothing to say. */
export function unreadPolicydSpfConf(read: ConfigRead, probe?: FileProbe): string | null {
  if (!policydSpfConfUnread(read, probe)) return null
  return (
    `${POLICYD_SPF_CONF} exists but is not read (the config file is ${read.configFile}` +
    `${read.configFileFound ? '' : ', not found'}): its settings do not apply. ` +
    "To use them, name it after bin/policyd-ts in master.cf's argv, as policyd-spf takes it; " +
    'if policyd-spf still checks SPF here, set spf_enabled = no'
  )
}

export function sameFile(a: string, b: string, probe: FileProbe): boolean {
  if (a === b) return true
  try {
    return probe.realpathSync(a) === probe.realpathSync(b)
  } catch {
    return false
  }
}
