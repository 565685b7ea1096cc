// --test-mode's check of the database: done for real, as the user this
// process runs as, so that what Postfix's spawn user will meet (a missing
// directory, a file owned by root) shows before the first mail does.
// The database is opened, written and rolled back; a directory or file
// that had to be created for the try is removed again.

import fs = require('node:fs')
import path = require('node:path')
import type { Config } from './config'

export interface DatabaseCheck {
  /** What stops greylisting from working as this user, one sentence each. */
  problems: string[]
  /** What was tried and found fine, or is worth knowing. */
  notes: string[]
}

export interface RunAs {
  name: string
  uid: number
}

/** The user this process runs as (effective uid), by name when the system knows one. */
export function currentUser(): RunAs {
  const uid = process.geteuid?.() ?? -1
  let name = String(uid)
  try {
    name = (require('node:os') as typeof import('node:os')).userInfo().username
  } catch {
    // a uid without a passwd entry: its number names it
  }
  return { name, uid }
}

/** Try the database of `config` as the current user, leaving it as it was. */
export function checkDatabase(config: Config, user: RunAs = currentUser()): DatabaseCheck {
  const out: DatabaseCheck = { problems: [], notes: [] }
  if (!config.greylist_enabled && !config.ratelimit_enabled) {
    out.notes.push('not used (greylist_enabled = no, ratelimit_enabled = no)')
    return out
  }
  const file = path.resolve(config.db_path)
  const dir = path.dirname(file)
  const by = `user ${user.name}`
  if (user.uid === 0) {
    out.notes.push(`${file}: not tried: root may write anything, the user Postfix runs policyd-ts as may not`)
    return out
  }

  let created: string | undefined
  try {
    const dirState = reachDirectory(dir, by)
    if ('problem' in dirState) {
      out.problems.push(dirState.problem)
      return out
    }
    if (dirState.missing) {
      try {
        created = (require('./make-dirs') as typeof import('./make-dirs')).makeDirs(dir, 0o700)
      } catch (err) {
        const parent = nearestExisting(dir)
        const group = nameOf('group', process.getegid?.() ?? 0)
        out.problems.push(`directory ${dir} does not exist, and ${by} cannot create it: ${parent} is not writable by ${user.name} (${reason(err)}); create it as root: install -d -o ${user.name} -g ${group} -m 0700 ${dir}`)
        return out
      }
      out.notes.push(`directory ${dir} does not exist yet; ${by} can create it, and the first request will (tried, and removed again)`)
    }
    const st = fs.statSync(dir)
    if (st.mode & 0o002) {
      out.problems.push(`directory ${dir} is writable by everyone (mode ${mode(st)}): policyd-ts refuses a database there, as anyone could replace it; use a directory writable only by ${user.name}`)
      return out
    }
    tryFile(file, config, user, out)
  } finally {
    if (created !== undefined) removeCreated(created, dir)
  }
  return out
}

/** Whether the directory exists, or a sentence saying why it cannot be used. */
function reachDirectory(dir: string, by: string): { missing: boolean } | { problem: string } {
  try {
    if (!fs.statSync(dir).isDirectory()) return { problem: `${dir}, the directory of db_path, is not a directory` }
    return { missing: false }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') return { missing: true }
    if (code === 'EACCES') return { problem: `directory ${dir} cannot be reached by ${by}: a directory above it is not searchable (${reason(err)})` }
    if (code === 'ENOTDIR') return { problem: `directory ${dir} cannot exist: a file stands on its path` }
    return { problem: `directory ${dir} cannot be looked at: ${reason(err)}` }
  }
}

function tryFile(file: string, config: Config, user: RunAs, out: DatabaseCheck): void {
  const by = `user ${user.name}`
  const { classifyError, probeDatabase, SCHEMA_VERSION } = require('./store/sqlite') as typeof import('./store/sqlite')
  const busyTimeoutMs = config.db_busy_timeout * 1000
  if (!fs.existsSync(file)) {
    // A file of its own for the try: a spawned process may create the real
    // one meanwhile, and that one must not be removed under it.
    const trial = `${file}.test-mode-${process.pid}`
    try {
      probeDatabase(trial, { busyTimeoutMs, create: true })
      out.notes.push(`${file} does not exist yet; ${by} can create a database in ${path.dirname(file)} (tried, and removed again), and the first request will`)
    } catch (err) {
      out.problems.push(`${file} does not exist, and ${by} cannot create a database in ${path.dirname(file)}: ${reason(err)}`)
    } finally {
      for (const suffix of ['', '-wal', '-shm', '-journal']) fs.rmSync(trial + suffix, { force: true })
    }
    return
  }
  const unwritable = [file, `${file}-wal`, `${file}-shm`].filter((f) => fs.existsSync(f) && !canWrite(f))
  if (unwritable.length > 0) {
    const group = nameOf('group', process.getegid?.() ?? 0)
    out.problems.push(`${unwritable.map((f) => `${f} (${owner(f)})`).join(', ')} ${unwritable.length === 1 ? 'is' : 'are'} not writable by ${by}; as root: chown ${user.name}:${group} ${unwritable.join(' ')}`)
    return
  }
  try {
    const { schemaVersion } = probeDatabase(file, { busyTimeoutMs, create: false })
    out.notes.push(`${file}: ${by} can write it (tried: a write, rolled back)`)
    if (schemaVersion === 0) out.notes.push(`${file} has no tables yet; the first request creates them`)
    else if (schemaVersion < SCHEMA_VERSION) out.notes.push(`${file} has schema version ${schemaVersion}; the first request brings it to ${SCHEMA_VERSION}`)
    else if (schemaVersion > SCHEMA_VERSION) out.problems.push(`${file} has schema version ${schemaVersion}, newer than this policyd-ts supports (${SCHEMA_VERSION})`)
  } catch (err) {
    const failure = classifyError(err)
    if (failure === 'busy') out.notes.push(`${file}: not tried: another process held its lock for longer than db_busy_timeout (${config.db_busy_timeout}s)`)
    else if (failure === 'corrupt') {
      const text = `${file} is not a database or is corrupt (${reason(err)})`
      if (config.db_corrupt_action === 'rename') out.notes.push(`${text}; the first request renames it aside and starts a fresh one (db_corrupt_action = rename)`)
      else out.problems.push(`${text}; every request gets fail_action until it is replaced (db_corrupt_action = fail)`)
    }
    else if (failure === 'readonly') out.problems.push(`${file} cannot be written by ${by}: ${reason(err)}${canWrite(path.dirname(file)) ? '' : ` (SQLite needs to create ${path.basename(file)}-wal and -shm in ${path.dirname(file)}, which is not writable by ${user.name})`}`)
    else out.problems.push(`${file} cannot be used by ${by}: ${reason(err)}`)
  }
}

function canWrite(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.W_OK)
    return true
  } catch {
    return false
  }
}

function reason(err: unknown): string {
  return (err as Error).message
}

function mode(st: fs.Stats): string {
  return (st.mode & 0o7777).toString(8).padStart(4, '0')
}

function owner(file: string): string {
  const st = fs.statSync(file)
  return `owner ${nameOf('passwd', st.uid)}, group ${nameOf('group', st.gid)}, mode ${mode(st)}`
}

/** A user or group name for a number, as getent(1) finds it; the number when none. */
function nameOf(database: 'passwd' | 'group', id: number): string {
  try {
    const { execFileSync } = require('node:child_process') as typeof import('node:child_process')
    const line = execFileSync('getent', [database, String(id)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    return line.split(':')[0] || String(id)
  } catch {
    return String(id)
  }
}

function nearestExisting(dir: string): string {
  let at = path.dirname(dir)
  while (!fs.existsSync(at) && path.dirname(at) !== at) at = path.dirname(at)
  return at
}

/** Remove the directories the try created, from `dir` up to `top`, if they are still empty. */
function removeCreated(top: string, dir: string): void {
  for (let at = dir; ; at = path.dirname(at)) {
    try {
      fs.rmdirSync(at)
    } catch {
      return // not empty: someone else uses it now
    }
    if (at === top || path.dirname(at) === at) return
  }
}
