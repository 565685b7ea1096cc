// policyd-ts postfix-config: the master.cf and main.cf lines for THIS
// machine. Where npm puts a global package depends on how Node was
// installed (Debian's node: /usr/local/lib/node_modules; NodeSource's:
// /usr/lib/node_modules), and a wrong path in master.cf shows only as an
// opaque "451 4.3.5 Server configuration problem" in Postfix's log. So the
// lines name the running node and package, resolved, and come with checks
// of what the spawn user needs: to exist, to be allowed by spawn(8), to run
// node, to read the package, to write the database directory.
//
// gatherFacts() looks at the system through an injected System;
// renderPostfixConfig() is a pure function of what it found. What differs
// between ways of running policyd-ts (the master.cf entry, the endpoint
// main.cf names) comes from MODE_LINES: a daemon mode adds its entry there.

import path = require('node:path')
import { POLICYD_SPF_CONF, policydSpfConfUnread, sameFile } from './policyd-spf-conf'

/**
 * How Postfix reaches policyd-ts: spawn(8) starts one process per smtpd; or
 * one daemon, started by systemd on its socket, serves them all.
 */
export const MODES = ['spawn', 'daemon'] as const
export type Mode = (typeof MODES)[number]

/** The user of each mode when --user is not given. */
export const DEFAULT_USERS: Record<Mode, string> = { spawn: 'nobody', daemon: 'policyd-ts' }
export const DEFAULT_USER = DEFAULT_USERS.spawn
/** Where policyd-ts.socket puts the daemon's socket; main.cf names it relative to the queue directory. */
export const DAEMON_SOCKET = '/var/spool/postfix/policyd-ts/policy'
export const DEFAULT_SERVICE = 'policy'

export interface SpawnUser {
  name: string
  uid: number
  gid: number
  /** Name of the primary group (its number when it has none). */
  group: string
  /** Every group the user is in, for permission checks. */
  gids: number[]
}

export interface Finding {
  /** problem: Postfix or policyd-ts would fail; note: worth knowing; ok: checked and fine. */
  kind: 'ok' | 'problem' | 'note'
  text: string
  /** A command (as root) that fixes it, given only when it is safe to run as printed. */
  fix?: string
}

export interface Facts {
  mode: Mode
  version: string
  service: string
  userName: string
  nodePath: string
  nodeVersion: string
  nodeFlags: string[]
  packageDir: string
  /** After bin/policyd-ts on the command line: the config file and the key options postfix-config was given. */
  programArgs: string[]
  findings: Finding[]
  /** The user's primary group (daemon mode's Group=). */
  userGroup: string
  /** The directory of db_path, which the daemon's unit must be allowed to write; null with store = redis (no file). */
  dbDir: string | null
  /** The shipped systemd units (daemon mode), or null when they cannot be read. */
  units: { socket: string; service: string } | null
  /** Rate limiting is on: the check goes before the permit_* entries and into smtpd_end_of_data_restrictions. */
  ratelimit?: boolean
}

interface ModeLines {
  /** The master.cf entry; empty when Postfix starts nothing. */
  masterCf: string[]
  /** What check_policy_service names in main.cf. */
  endpoint: string
  /** main.cf lines of this mode besides the restriction lists. */
  mainCf: string[]
  /** Further files to write: a heading and their lines. */
  files: Array<{ title: string; lines: string[] }>
  /** Commands (as root) after the files are written. */
  steps: string[]
}

const MODE_LINES: Record<Mode, (f: Facts) => ModeLines> = {
  spawn: (f) => ({
    masterCf: [
      '# spawn(8) runs the command with PATH=/usr/bin:/bin: the paths are absolute.',
      `${f.service.padEnd(9)} unix  -       n       n       -       0       spawn`,
      `  user=${f.userName} argv=${commandLine(f).map(masterCfWord).join(' ')}`,
    ],
    endpoint: `unix:private/${f.service}`,
    mainCf: [
      '# The lifetime spawn(8) allows the command (default 1000s); at least as',
      '# long as an smtpd process lives:',
      `${f.service}_time_limit = 3600s`,
    ],
    files: [],
    steps: [],
  }),
  daemon: (f) => ({
    masterCf: [],
    // Relative to the queue directory, so that a chrooted smtpd reaches it;
    // DUNNO when the daemon is down: mail flows instead of 451 4.3.5.
    endpoint: '{ unix:policyd-ts/policy, default_action=DUNNO }',
    mainCf: ['# No master.cf entry: systemd starts the daemon on the first connection.'],
    files: f.units === null
      ? [{ title: 'systemd units', lines: [`# ${path.join(f.packageDir, 'systemd')} cannot be read: the units ship there`] }]
      : [
          { title: '/etc/systemd/system/policyd-ts.socket', lines: unitLines(f.units.socket, { SocketUser: f.userName }) },
          {
            title: '/etc/systemd/system/policyd-ts.service',
            lines: unitLines(f.units.service, {
              User: f.userName,
              Group: f.userGroup,
              ExecStart: [...commandLine(f), '--listen', 'systemd'].map(shellWord).join(' '),
              // null drops the line: a missing directory there would stop the unit from starting.
              ReadWritePaths: f.dbDir,
            }),
          },
        ],
    steps: ['systemctl daemon-reload', 'systemctl enable --now policyd-ts.socket'],
  }),
}

/** A shipped unit without its comment lines (a blank line before each [Section]), `key=value` settings replaced (null: removed). */
function unitLines(text: string, set: Record<string, string | null>): string[] {
  return text
    .split('\n')
    .filter((l) => !l.startsWith('#') && l.trim() !== '')
    .flatMap((l, i) => (l.startsWith('[') && i > 0 ? ['', l] : [l]))
    .flatMap((l) => {
      const key = /^(\w+)=/.exec(l)?.[1]
      if (key === undefined || set[key] === undefined) return [l]
      return set[key] === null ? [] : [`${key}=${set[key]}`]
    })
}

/** node, its flags, the program and its arguments, as the service runs them. */
export function commandLine(f: Pick<Facts, 'nodePath' | 'nodeFlags' | 'packageDir' | 'programArgs'>): string[] {
  return [f.nodePath, ...f.nodeFlags, path.join(f.packageDir, 'bin', 'policyd-ts'), ...f.programArgs]
}

/** An argument as master.cf(5) takes it: blanks need { } (Postfix 3.0 and later). */
function masterCfWord(word: string): string {
  return /\s/.test(word) || word === '' ? `{ ${word} }` : word
}

function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`
}

function heading(title: string): string {
  return `# ---- ${title} `.padEnd(76, '-')
}

/** `text` as comment lines of at most 76 columns, the first after `first`. */
function comment(first: string, text: string): string[] {
  const lines: string[] = []
  let line = `# ${first}`
  for (const word of text.split(' ')) {
    if (line.length + 1 + word.length > 76 && line.trim() !== '#') {
      lines.push(line)
      line = '#   '
    }
    line += line.endsWith(' ') ? word : ` ${word}`
  }
  lines.push(line)
  return lines
}

/**
 * With rate limiting the check must see the mail of SASL users and of
 * mynetworks, so it comes before the permit_* entries (policyd-ts itself
 * neither greylists nor SPF-checks those clients), and it must see the end
 * of each message, where held mail is counted.
 */
function rateLimitRestrictions(endpoint: string): string[] {
  return [
    '# Rate limiting is on: the check goes BEFORE permit_mynetworks and',
    '# permit_sasl_authenticated (after them it never runs for those clients;',
    '# policyd-ts only rate-limits SASL clients and clients in ratelimit_networks,',
    '# it never greylists or SPF-checks them), in smtpd_data_restrictions, and',
    '# LAST in smtpd_end_of_data_restrictions (held mail is counted there, with',
    '# its real recipient count and size). For example:',
    'smtpd_recipient_restrictions =',
    `    check_policy_service ${endpoint},`,
    '    permit_mynetworks,',
    '    permit_sasl_authenticated,',
    '    reject_unauth_destination',
    'smtpd_data_restrictions =',
    `    check_policy_service ${endpoint}`,
    'smtpd_end_of_data_restrictions =',
    `    check_policy_service ${endpoint}`,
  ]
}

const LABEL: Record<Finding['kind'], string> = { ok: 'ok:', note: 'note:', problem: 'PROBLEM:' }

export function renderPostfixConfig(f: Facts): string {
  const mode = MODE_LINES[f.mode](f)
  const out: string[] = [
    `# policyd-ts ${f.version}: Postfix settings for this machine (${f.mode} mode), from`,
    `# \`policyd-ts postfix-config\`. node: ${f.nodePath} (${f.nodeVersion});`,
    `# package: ${f.packageDir}; ${f.mode === 'spawn' ? 'spawn user' : 'daemon user'}: ${f.userName}.`,
    '',
    heading(`checks, for user ${f.userName}`),
  ]
  for (const finding of f.findings) {
    out.push(...comment(LABEL[finding.kind], finding.fix === undefined ? finding.text : `${finding.text} (a command below fixes it)`))
  }
  if (mode.masterCf.length > 0) out.push('', heading('master.cf: add this entry (or replace the one of that name)'), ...mode.masterCf)
  for (const file of mode.files) out.push('', heading(file.title), ...file.lines)
  out.push(
    '',
    heading('main.cf'),
    ...(f.ratelimit ? rateLimitRestrictions(mode.endpoint) : [
      '# Add check_policy_service to your smtpd_recipient_restrictions AFTER',
      '# reject_unauth_destination (relay attempts are then refused before they',
      '# cost DNS lookups and a database write, and no policy answer can open a',
      '# relay), and to smtpd_data_restrictions (Postfix takes one header per',
      "# reply: the DATA check carries a message's second one). For example:",
      'smtpd_recipient_restrictions =',
      '    permit_mynetworks,',
      '    permit_sasl_authenticated,',
      '    reject_unauth_destination,',
      `    check_policy_service ${mode.endpoint}`,
      'smtpd_data_restrictions =',
      `    check_policy_service ${mode.endpoint}`,
    ]),
    ...mode.mainCf,
    '',
    heading('then, as root'),
  )
  for (const finding of f.findings) if (finding.fix !== undefined) out.push(finding.fix)
  out.push(...mode.steps)
  out.push(
    '# Check the configuration as the user policyd-ts runs as (78 on errors):',
    ['runuser', '-u', f.userName, '--', ...commandLine(f), '--test-mode'].map(shellWord).join(' '),
    'postfix reload',
  )
  return `${out.join('\n')}\n`
}

// ---- looking at the system -------------------------------------------------

export interface FileInfo {
  uid: number
  gid: number
  mode: number
  isDirectory: boolean
}

export interface System {
  /** The line getent(1) prints for `key` in `database`, or null. */
  getent(database: 'passwd' | 'group', key: string): string | null
  /** Every group id of `user` (id -G), empty when unknown. */
  groupIds(user: string): number[]
  /** Postfix's mail_owner (postconf -h mail_owner), null without postconf. */
  mailOwner(): string | null
  /** stat(2) following links, or the error code (ENOENT, EACCES ...). */
  stat(file: string): FileInfo | string
  readdir(dir: string): string[]
  /** Throws when the file cannot be resolved. */
  realpath(file: string): string
  /** A text file's contents, or null when it cannot be read. */
  readFile(file: string): string | null
}

export interface PostfixConfigRequest {
  mode: Mode
  service: string
  userName: string
  version: string
  nodePath: string
  nodeVersion: string
  nodeFlags: string[]
  packageDir: string
  /** The config file given to postfix-config (absolute), if any. */
  configPath?: string
  /** Key options given to postfix-config; they go onto the service's command line. */
  options: Record<string, string>
  /** The configuration as the service will read it. */
  loaded: {
    configFile: string
    configFileFound: boolean
    errors: string[]
    config: { spf_enabled: boolean; greylist_enabled: boolean; ratelimit_enabled?: boolean; db_path: string; store?: string }
  }
  /** POLICYD_TS_ variables of this shell that the service will not have. */
  ignoredEnv: string[]
}

const R = 4
const W = 2
const X = 1

/** Whether `user` may read/write/search (`want`, rwx bits) a file, by its owner, group and mode as the kernel decides (ACLs aside). */
export function mayAccess(info: FileInfo, user: Pick<SpawnUser, 'uid' | 'gids'>, want: number): boolean {
  if (user.uid === 0) return true
  const shift = info.uid === user.uid ? 6 : user.gids.includes(info.gid) ? 3 : 0
  return ((info.mode >> shift) & want) === want
}

export function gatherFacts(req: PostfixConfigRequest, sys: System): Facts {
  const programArgs = req.configPath === undefined ? [] : ['--config', req.configPath]
  for (const [key, value] of Object.entries(req.options)) programArgs.push(`--${key}=${value}`)
  const findings: Finding[] = [...checkConfig(req, sys)]
  const user = lookUpUser(req.userName, sys)
  findings.push(...checkUser(req.userName, user, sys))
  if (user !== null) {
    findings.push(...checkNode(req.nodePath, user, sys))
    findings.push(...checkPackage(req.packageDir, user, sys))
  }
  findings.push(...checkDatabase(req.loaded.config, req.userName, user, sys))
  const socket = sys.readFile(path.join(req.packageDir, 'systemd', 'policyd-ts.socket'))
  const service = sys.readFile(path.join(req.packageDir, 'systemd', 'policyd-ts.service'))
  return {
    mode: req.mode,
    version: req.version,
    service: req.service,
    userName: req.userName,
    nodePath: req.nodePath,
    nodeVersion: req.nodeVersion,
    nodeFlags: req.nodeFlags,
    packageDir: req.packageDir,
    programArgs,
    findings,
    userGroup: user?.group ?? req.userName,
    dbDir: req.loaded.config.store === 'redis' ? null : path.dirname(path.resolve(req.loaded.config.db_path)),
    units: socket !== null && service !== null ? { socket, service } : null,
    ratelimit: req.loaded.config.ratelimit_enabled === true,
  }
}

function checkConfig(req: PostfixConfigRequest, sys: System): Finding[] {
  const { loaded } = req
  const findings: Finding[] = [
    { kind: loaded.configFileFound ? 'ok' : 'note', text: `config file ${loaded.configFile} (${loaded.configFileFound ? 'read' : 'not found: the defaults apply'})` },
  ]
  for (const error of loaded.errors) findings.push({ kind: 'problem', text: `configuration error: ${error} (policyd-ts --test-mode with the same arguments shows them all)` })
  const probe = { existsSync: (f: string) => typeof sys.stat(f) !== 'string', realpathSync: (f: string) => sys.realpath(f) }
  if (policydSpfConfUnread(loaded, probe)) {
    findings.push({
      kind: 'problem',
      text:
        `${POLICYD_SPF_CONF} exists but would not be read (the config file is ${loaded.configFile}). ` +
        `In place of policyd-spf: policyd-ts postfix-config --config ${POLICYD_SPF_CONF} --service policyd-spf --user policyd-spf; ` +
        'beside policyd-spf, which checks SPF: set spf_enabled = no',
    })
  }
  const readsPolicydSpfConf = loaded.configFileFound && sameFile(loaded.configFile, POLICYD_SPF_CONF, probe)
  if (readsPolicydSpfConf && loaded.config.greylist_enabled) {
    findings.push({ kind: 'note', text: `greylisting is on (the default), which policyd-spf did not do: greylist_enabled = no in ${loaded.configFile} keeps SPF only` })
  }
  if (req.ignoredEnv.length > 0) {
    findings.push({ kind: 'note', text: `${req.ignoredEnv.join(', ')} set in this shell: left out, as spawn(8) does not pass them on` })
  }
  return findings
}

function lookUpUser(name: string, sys: System): SpawnUser | null {
  const fields = sys.getent('passwd', name)?.split(':')
  if (fields === undefined || fields.length < 4) return null
  const uid = Number(fields[2])
  const gid = Number(fields[3])
  const group = sys.getent('group', String(gid))?.split(':')[0] || String(gid)
  const gids = sys.groupIds(name)
  return { name, uid, gid, group, gids: gids.includes(gid) ? gids : [gid, ...gids] }
}

function checkUser(name: string, user: SpawnUser | null, sys: System): Finding[] {
  if (user === null) {
    return [
      {
        kind: 'problem',
        text: `user ${name} does not exist (getent passwd ${name}); the other checks need it: run postfix-config again once it does`,
        fix: `useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ${name}`,
      },
    ]
  }
  const mailOwner = sys.mailOwner() ?? 'postfix'
  if (user.uid === 0 || name === mailOwner) {
    return [{ kind: 'problem', text: `spawn(8) refuses to run a command as root or as the mail system owner (${mailOwner}), and the daemon should run as neither: choose another user with --user` }]
  }
  return [{ kind: 'ok', text: `user ${name} exists (uid ${user.uid}, group ${user.group})` }]
}

/** The directories above `file`, from / down. */
function ancestors(file: string): string[] {
  const out: string[] = []
  for (let dir = path.dirname(file); ; dir = path.dirname(dir)) {
    out.unshift(dir)
    if (dir === path.dirname(dir)) return out
  }
}

function describe(file: string, info: FileInfo, sys: System): string {
  const owner = sys.getent('passwd', String(info.uid))?.split(':')[0] || String(info.uid)
  return `${file} (owner ${owner}, mode ${(info.mode & 0o7777).toString(8).padStart(4, '0')})`
}

/** The first directory above `file` that `user` cannot search, described; null when every one lets it through. */
function blockedAbove(file: string, user: SpawnUser, sys: System, checked = new Set<string>()): string | null {
  for (const dir of ancestors(file)) {
    if (checked.has(dir)) continue
    checked.add(dir)
    const info = sys.stat(dir)
    if (typeof info !== 'string' && !mayAccess(info, user, X)) return describe(dir, info, sys)
  }
  return null
}

function checkNode(nodePath: string, user: SpawnUser, sys: System): Finding[] {
  const blocked = blockedAbove(nodePath, user, sys)
  const info = sys.stat(nodePath)
  if (blocked !== null || typeof info === 'string' || !mayAccess(info, user, R | X)) {
    const why = blocked !== null ? `cannot enter ${blocked}` : typeof info === 'string' ? info : `may not run ${describe(nodePath, info, sys)}`
    return [{ kind: 'problem', text: `${user.name} cannot run ${nodePath}: ${why}; use a node installed for all users (the distribution's, or NodeSource's)` }]
  }
  return [{ kind: 'ok', text: `${user.name} can run ${nodePath}` }]
}

/** Files looked at in a package at most: its production tree has a few hundred, a development checkout some ten thousand. */
const WALK_LIMIT = 100_000

function checkPackage(packageDir: string, user: SpawnUser, sys: System): Finding[] {
  const denied: string[] = []
  const enteredAbove = new Set<string>()
  const seen = new Set<string>()
  const stack = [packageDir]
  let files = 0
  while (stack.length > 0 && files < WALK_LIMIT) {
    let dir: string
    try {
      dir = sys.realpath(stack.pop()!)
    } catch {
      continue
    }
    if (seen.has(dir)) continue
    seen.add(dir)
    const blocked = blockedAbove(dir, user, sys, enteredAbove)
    if (blocked !== null) denied.push(`${blocked}, above ${dir}`)
    const info = sys.stat(dir)
    if (typeof info === 'string') continue
    if (!mayAccess(info, user, R | X)) {
      denied.push(`${describe(dir, info, sys)}/`)
      continue
    }
    for (const name of sys.readdir(dir)) {
      const entry = path.join(dir, name)
      const entryInfo = sys.stat(entry)
      if (typeof entryInfo === 'string') continue
      if (entryInfo.isDirectory) stack.push(entry)
      else {
        files++
        if (!mayAccess(entryInfo, user, R)) denied.push(describe(entry, entryInfo, sys))
      }
    }
  }
  if (denied.length === 0) return [{ kind: 'ok', text: `${user.name} can read the ${files} files of ${packageDir}` }]
  const examples = denied.slice(0, 3).join('; ')
  const text = `${user.name} cannot read ${denied.length} of the files or directories policyd-ts needs, e.g. ${examples}`
  const insidePackage = denied.every((d) => d.startsWith(`${packageDir}/`))
  return [insidePackage ? { kind: 'problem', text, fix: `chmod -R a+rX ${packageDir}` } : { kind: 'problem', text: `${text}; install the package where every user can read it` }]
}

function checkDatabase(config: PostfixConfigRequest['loaded']['config'], userName: string, user: SpawnUser | null, sys: System): Finding[] {
  if (!config.greylist_enabled && !config.ratelimit_enabled) return [{ kind: 'ok', text: 'greylisting and rate limiting are off: no database is needed' }]
  if (config.store === 'redis') return [{ kind: 'ok', text: 'store = redis: no database file on this host (policyd-ts store check asks the Redis server)' }]
  const file = path.resolve(config.db_path)
  const dir = path.dirname(file)
  const install = `install -d -o ${userName} -g ${user?.group ?? userName} -m 0700 ${dir}`
  const info = sys.stat(dir)
  if (info === 'ENOENT') return [{ kind: 'problem', text: `database directory ${dir} does not exist`, fix: install }]
  if (typeof info === 'string') return [{ kind: 'problem', text: `cannot look at database directory ${dir}: ${info}` }]
  if (!info.isDirectory) return [{ kind: 'problem', text: `${dir}, the directory of db_path, is not a directory` }]
  if (info.mode & 0o002) {
    return [{ kind: 'problem', text: `${describe(dir, info, sys)} is world-writable: policyd-ts refuses a database there (anyone could replace it); give db_path a directory of its own` }]
  }
  if (user === null) return []
  const blocked = blockedAbove(dir, user, sys)
  if (blocked !== null) return [{ kind: 'problem', text: `${userName} cannot enter ${blocked}, above the database directory ${dir}` }]
  if (!mayAccess(info, user, W | X)) {
    // Handing the directory to the spawn user is safe only when it holds nothing but the database.
    const base = path.basename(file)
    const ownDir = sys.readdir(dir).every((name) => name.startsWith(base))
    const text = `${userName} cannot write the database directory ${describe(dir, info, sys)}`
    return [ownDir ? { kind: 'problem', text, fix: install } : { kind: 'problem', text: `${text}, which holds other files: give db_path a directory of its own` }]
  }
  const findings: Finding[] = [{ kind: 'ok', text: `${userName} can write the database directory ${describe(dir, info, sys)}` }]
  const unwritable = [file, `${file}-wal`, `${file}-shm`].filter((f) => {
    const fileInfo = sys.stat(f)
    return typeof fileInfo !== 'string' && !mayAccess(fileInfo, user, R | W)
  })
  if (unwritable.length > 0) {
    findings.push({ kind: 'problem', text: `${userName} cannot write ${unwritable.join(', ')}`, fix: `chown ${userName}:${user.group} ${unwritable.join(' ')}` })
  }
  return findings
}

// ---- the command -----------------------------------------------------------

function nodeSystem(): System {
  const fs = require('node:fs') as typeof import('node:fs')
  const { execFileSync } = require('node:child_process') as typeof import('node:child_process')
  const run = (command: string, args: string[]): string | null => {
    try {
      return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
    } catch {
      return null
    }
  }
  return {
    getent: (database, key) => run('getent', [database, key])?.split('\n')[0] || null,
    groupIds: (user) => (run('id', ['-G', user]) ?? '').split(/\s+/).filter(Boolean).map(Number),
    mailOwner: () => run('postconf', ['-h', 'mail_owner']) || null,
    stat: (file) => {
      try {
        const s = fs.statSync(file)
        return { uid: s.uid, gid: s.gid, mode: s.mode, isDirectory: s.isDirectory() }
      } catch (err) {
        return (err as NodeJS.ErrnoException).code ?? String(err)
      }
    },
    readdir: (dir) => {
      try {
        return fs.readdirSync(dir)
      } catch {
        return []
      }
    },
    realpath: (file) => fs.realpathSync(file),
    readFile: (file) => {
      try {
        return fs.readFileSync(file, 'utf8')
      } catch {
        return null
      }
    },
  }
}

export interface PostfixConfigArgs {
  /** Absent: the mode's default user (DEFAULT_USERS). */
  user?: string
  service: string
  mode: Mode
}

/** The command's options, for yargs in lib/interactive.ts. */
export function postfixConfigOptions<T>(y: import('yargs').Argv<T>) {
  return y
    .option('user', { type: 'string', describe: `The user policyd-ts runs as (default: ${MODES.map((m) => `${DEFAULT_USERS[m]} in ${m} mode`).join(', ')})` })
    .option('service', { type: 'string', default: DEFAULT_SERVICE, describe: 'The master.cf service name; main.cf names it unix:private/NAME' })
    .option('mode', { type: 'string', choices: MODES, default: 'spawn', describe: 'How Postfix runs policyd-ts: spawn(8) per smtpd, or one daemon started by systemd' })
}

/** Print the lines and checks; exit 0, or 64 for an unusable user or service name. */
export function runPostfixConfig(args: PostfixConfigArgs, options: Record<string, string>, configPath: string | undefined): number {
  const userName = args.user ?? DEFAULT_USERS[args.mode]
  // Names that master.cf and the shell commands printed can carry as they are.
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(userName)) return usage(`--user ${JSON.stringify(userName)} is not a user name`)
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(args.service)) return usage(`--service ${JSON.stringify(args.service)} is not a master.cf service name`)
  const fs = require('node:fs') as typeof import('node:fs')
  const { ENV_PREFIX } = require('./config') as typeof import('./config')
  // This process reads the configuration in the service's place, and
  // spawn(8) gives the service none of these variables.
  const ignoredEnv = Object.keys(process.env).filter((name) => name.startsWith(ENV_PREFIX))
  for (const name of ignoredEnv) delete process.env[name]
  const absoluteConfig = configPath === undefined ? undefined : path.resolve(configPath)
  const { readConfig } = require('./read-config') as typeof import('./read-config')
  const { version } = require('./version') as typeof import('./version')
  // Run from dist/lib of the package (bin/policyd-ts loads nothing else).
  const packageDir = fs.realpathSync(path.resolve(__dirname, '..', '..'))
  const { nodeFlags } = require(path.join(packageDir, 'scripts', 'node-flags.js')) as { nodeFlags(): string[] }
  const facts = gatherFacts(
    {
      mode: args.mode,
      service: args.service,
      userName,
      version: version(),
      nodePath: fs.realpathSync(process.execPath),
      nodeVersion: process.version,
      nodeFlags: nodeFlags(),
      packageDir,
      configPath: absoluteConfig,
      options,
      loaded: readConfig(options, absoluteConfig),
      ignoredEnv,
    },
    nodeSystem(),
  )
  process.stdout.write(renderPostfixConfig(facts))
  return 0
}

function usage(message: string): number {
  process.stderr.write(`policyd-ts postfix-config: ${message}\n`)
  return 64
}
