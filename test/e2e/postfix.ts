// End-to-end harness: a REAL private Postfix on 127.0.0.1 that runs the
// built bin/policyd-ts as a spawn(8) policy service (or talks to it as a
// daemon the harness runs: policyMode 'daemon'), driven by swaks and by
// a raw SMTP client. Follows ../shared/postfix-e2e.md (private instance in a
// temp dir, nothing in /etc/postfix used or changed, free ports, everything
// of the instance killed by PID and the temp dir removed at stop()).
//
// Needs root (Postfix's master starts as root), Debian's postfix and swaks
// (scripts/e2e-deps.sh) and a built checkout (npx tsc -p tsconfig.json).
//
//   const pf = await usePostfix(t, { policyArgs: ['--greylist_delay', '2s'] })
//   const r = await pf.swaks({ from: 'a@sender.example', to: 'b@example.test', xclient: { addr: '192.0.2.10' } })
//   r.rcpt[0].reply.code  // 450
//
// The client must claim an address outside mynetworks with XCLIENT:
// 127.0.0.0/8 is permitted by permit_mynetworks before the policy is asked
// (unless recipientPolicy: 'first' puts the policy before it, as rate
// limiting needs).

import { spawn, spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

export const ROOT = path.resolve(__dirname, '..', '..')
export const BIN = path.join(ROOT, 'bin', 'policyd-ts')
export const MASTER_CF_EXAMPLE = path.join(ROOT, 'master.cf.example')
/** The spawn user of master.cf.example, and the owner of what the policy process writes. */
export const SPAWN_USER = 'nobody'
export const SPAWN_GROUP = 'nogroup'
export const DOMAIN = 'example.test'
export const MYHOSTNAME = 'mx.example.test'
/** Maillog lines that mean smtpd did not get a proper answer from the policy service. */
export const POLICY_WARNING = /problem talking to server|missing attribute action|premature end-of-input/

const SYSTEM_PATH = '/usr/sbin:/usr/bin:/sbin:/bin'
const POSTFIX = '/usr/sbin/postfix'

export type Transport = 'unix' | 'inet'
/** spawn: master.cf.example's spawn(8) service. daemon: one policyd-ts --listen process the harness runs, no master.cf entry. */
export type PolicyMode = 'spawn' | 'daemon'

/** Daemon mode: the socket's directory under the queue directory and its name, as main.cf names it (unix:policyd-ts/policy). */
export const DAEMON_SOCKET_DIR = 'policyd-ts'
export const DAEMON_SOCKET_NAME = 'policy'
/** Daemon mode: the group smtpd runs as (mail_owner's group), given to the socket with --listen_group. */
export const DAEMON_SOCKET_GROUP = 'postfix'

export interface PostfixOptions {
  /**
   * How smtpd reaches the policy service. Spawn mode: the spawn entry of master.cf.example (unix) or its commented
   * TCP variant (inet). Daemon mode: unix:policyd-ts/policy (relative to the queue directory, as a chrooted smtpd
   * needs) or inet:127.0.0.1:PORT.
   */
  transport?: Transport
  /**
   * 'spawn' (default) or 'daemon': the harness starts bin/policyd-ts --listen itself (node flags of
   * scripts/node-flags.js, as the spawn user through setpriv, before Postfix) and main.cf says
   * `check_policy_service { SERVICE, default_action=DUNNO }` with no master.cf entry. policyArgs go to the daemon.
   */
  policyMode?: PolicyMode
  /**
   * Daemon mode: create the socket's directory (unix: <queue_directory>/policyd-ts, the daemon user's, set-group-ID
   * postfix, 2750) and start the daemon before Postfix. Default true; false leaves both to the test (daemon.start()).
   */
  prepareDaemon?: boolean
  /**
   * Run smtpd chrooted in the queue directory (master.cf chroot column y), as Debian's master.cf does: it then
   * reaches only sockets under the queue directory. Default false.
   */
  chrootSmtpd?: boolean
  /**
   * Appended to the policyd-ts command line in master.cf, after the isolating options (later options win).
   * A function gets the instance's paths (e.g. for whitelist files given in `files`).
   */
  policyArgs?: string[] | ((paths: InstancePaths) => string[])
  /**
   * Prepend options that keep policyd-ts away from the machine: --config /dev/null, the database in dbDir,
   * no syslog socket, the log in policyLogFile, no whitelist files. Default true.
   */
  isolate?: boolean
  /** Also consult the policy at DATA (smtpd_data_restrictions). Default true. */
  dataRestrictions?: boolean
  /**
   * Where check_policy_service goes in smtpd_recipient_restrictions. 'last' (default): after permit_mynetworks and
   * reject_unauth_destination, as for greylisting. 'first': before permit_mynetworks, as rate limiting needs it
   * (policyd-ts(8), RATE LIMITING: a check after permit_mynetworks never runs for those clients).
   */
  recipientPolicy?: 'first' | 'last'
  /** Also consult the policy at END-OF-MESSAGE (smtpd_end_of_data_restrictions), where rate limiting counts. Default false. */
  endOfDataRestrictions?: boolean
  /**
   * Envelope senders that another restriction refuses at DATA: `check_sender_access` after the policy check in
   * smtpd_data_restrictions answers REJECT (554 5.7.1 ... Sender address rejected: Access denied), so that the policy
   * has seen RCPT and DATA of such a message but never its END-OF-MESSAGE.
   */
  rejectAtData?: string[]
  /** main.cf parameters added or overriding the generated ones. */
  extraMain?: Record<string, string>
  /** Files written into the temp dir (relative paths), readable by the spawn user; see handle.file(). */
  files?: Record<string, string>
  /** Run `policyd-ts --test-mode` with the final arguments as the spawn user before starting, and fail on config errors. Default true. */
  checkConfig?: boolean
}

export interface SmtpReply {
  code: number
  /** The reply text without the code, lines joined with '\n' (for one line: e.g. `4.2.0 <x@y>: Recipient address rejected: ...`). */
  text: string
  lines: string[]
}

export interface SwaksOptions {
  from: string
  to: string | string[]
  helo?: string
  xclient?: { addr?: string; name?: string; helo?: string }
  /** Extra header lines (`Name: value`), added to swaks' default headers. */
  headers?: string[]
  body?: string
  /** Seconds for each SMTP step (swaks --timeout). Default 30 (the policy may take two tries of 10 s). */
  timeout?: number
  /** Extra swaks arguments. */
  args?: string[]
}

export interface SwaksResult {
  /** swaks exit status: 0 ok, 24 no recipient accepted, 25 DATA refused, 26 message refused... */
  exitCode: number | null
  transcript: string
  /** The X-E2E-Id header value given to this message, to find it in delivered(). */
  id: string
  banner: SmtpReply | null
  xclient: SmtpReply | null
  mail: SmtpReply | null
  rcpt: Array<{ to: string; reply: SmtpReply }>
  /** The reply to the DATA command (354 or a refusal); null when swaks did not get that far. */
  dataCommand: SmtpReply | null
  /** The reply after the message (the DATA result: 250 ... queued as ...); null when not sent. */
  data: SmtpReply | null
  queueId: string | null
  ms: number
}

export interface DeliveredMessage {
  raw: string
  /** The mbox `From ` line. */
  envelope: string
  /** Header fields, unfolded, in order. */
  headers: string[]
  body: string
  /** Values of every field named `name` (case-insensitive). */
  header(name: string): string[]
  /** The X-E2E-Id given by swaks(), if any. */
  e2eId: string | null
}

export interface InstancePaths {
  dir: string
  dbDir: string
  dbFile: string
  policyLogFile: string
  /** Absolute path of a file given in opts.files. */
  file(name: string): string
}

export interface PostfixInstance {
  dir: string
  etcDir: string
  /** smtpd's port on 127.0.0.1. */
  port: number
  transport: Transport
  policyMode: PolicyMode
  /** Daemon mode: the policyd-ts daemon the harness runs (started before Postfix, stopped by stop()); null in spawn mode. */
  daemon: PolicyDaemon | null
  /** `check_policy_service` target as written in main.cf. */
  policyService: string
  /** The policy port (inet transport only). */
  policyPort: number | null
  /** Owned by nobody:nogroup, mode 0700: for --db_path (isolate puts policyd-ts.sqlite here). */
  dbDir: string
  dbFile: string
  /** Pre-created, owned by nobody: for --log_file. */
  policyLogFile: string
  mboxFile: string
  maillogFile: string
  /** The master.cf policy entry actually used ('' in daemon mode: there is none). */
  policyEntry: string
  /** The policyd-ts arguments after bin/policyd-ts (spawn entry or daemon command line). */
  policyArgv: string[]
  /** What `--test-mode` said of the start-up, run as the spawn user with master.cf's command line. */
  startUp: string
  /** Absolute path of a file given in opts.files. */
  file(name: string): string
  swaks(opts: SwaksOptions): Promise<SwaksResult>
  /**
   * Runs `bin/policyd-ts ARGS` with this instance's policy arguments after them (its database, log and keys; not the
   * daemon's --listen options) as the spawn user, with MAIL_CONFIG naming the instance's configuration (postconf in
   * --test-mode reads its main.cf): as an admin runs the ops commands next to the policy service.
   */
  policyCommand(args: string[], timeoutMs?: number): { code: number | null; out: string; err: string }
  /** A raw SMTP session (banner already read); each read is bounded by timeoutMs (default 30 s). */
  smtp(opts?: { timeoutMs?: number }): Promise<SmtpSession>
  /** Messages in the mbox; waits (bounded) until at least `atLeast` are there, then returns what there is. */
  delivered(atLeast?: number, timeoutMs?: number): Promise<DeliveredMessage[]>
  maillog(): string
  policyWarnings(): string[]
  /** Every warning/fatal/panic line of the maillog, for diagnostics. */
  maillogProblems(): string[]
  policyLog(): string
  /** Waits (bounded) until the policy log matches, then returns its text (or throws with the text). */
  waitPolicyLog(re: RegExp, timeoutMs?: number): Promise<string>
  /** PIDs of this instance's running policyd-ts processes (not zombies): spawned ones, and the daemon in daemon mode. */
  policyPids(): number[]
  /** `postfix reload`; by default waits until the spawned policy processes running before it have exited (not the daemon: Postfix does not run it). Returns those PIDs. */
  reload(opts?: { waitPolicyExit?: boolean; timeoutMs?: number }): Promise<number[]>
  /** Text for a failure report: config, maillog, policy log. */
  diagnostics(): string
  /** Stops Postfix, kills leftovers of this instance by PID, removes the temp dir. Idempotent. */
  stop(): Promise<{ killed: number[] }>
}

// ---------------------------------------------------------------------------
// small helpers

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes (then returns the last value). */
export async function waitFor<T>(fn: () => T | Promise<T>, timeoutMs: number, everyMs = 50): Promise<T> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v || Date.now() >= end) return v
    await sleep(everyMs)
  }
}

function run(cmd: string, args: string[], opts: { timeoutMs?: number; input?: string } = {}): { code: number | null; out: string; err: string } {
  const r = spawnSync(cmd, args, {
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 30000,
    input: opts.input,
    env: { PATH: SYSTEM_PATH, LANG: 'C' },
    stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  })
  return { code: r.status, out: r.stdout ?? '', err: `${r.stderr ?? ''}${r.error ? `\n${r.error.message}` : ''}` }
}

function idOf(flag: '-u' | '-g', user: string): number {
  const r = run('id', [flag, user])
  const n = Number(r.out.trim())
  if (r.code !== 0 || !Number.isInteger(n)) throw new Error(`cannot find user ${user} (id ${flag}): ${r.err}`)
  return n
}

async function freePorts(n: number): Promise<number[]> {
  const servers: net.Server[] = []
  try {
    for (let i = 0; i < n; i++) {
      const s = net.createServer()
      servers.push(s)
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject)
        s.listen(0, '127.0.0.1', () => resolve())
      })
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port)
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))))
  }
}

function setOld(file: string): void {
  // Postfix rereads a config file until its mtime is over a second old (~2 s per command): pitfall 1.
  const past = new Date(Date.now() - 60000)
  fs.utimesSync(file, past, past)
}

// ---------------------------------------------------------------------------
// processes, by PID, through /proc

interface ProcInfo {
  pid: number
  ppid: number
  state: string
  start: string
}

function procInfo(pid: number): ProcInfo | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return { pid, ppid: Number(rest[1]), state: rest[0], start: rest[19] }
  } catch {
    return null
  }
}

function allPids(): number[] {
  return fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number)
}

function environHas(pid: number, entry: string): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').includes(entry)
  } catch {
    return false
  }
}

function cmdline(pid: number): string[] {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((x) => x !== '')
  } catch {
    return []
  }
}

const alive = (p: ProcInfo): boolean => {
  const now = procInfo(p.pid)
  return now !== null && now.start === p.start && now.state !== 'Z' && now.state !== 'X'
}

/** Every live process of the instance: descendants of its master, and anything whose environment names its config directory. */
function instanceProcesses(etcDir: string, masterPid: number | null): ProcInfo[] {
  const infos = allPids().map(procInfo).filter((p): p is ProcInfo => p !== null && p.state !== 'Z' && p.state !== 'X')
  const mine = new Map<number, ProcInfo>()
  const children = new Map<number, ProcInfo[]>()
  for (const p of infos) {
    if (!children.has(p.ppid)) children.set(p.ppid, [])
    children.get(p.ppid)!.push(p)
    if (p.pid !== process.pid && environHas(p.pid, `MAIL_CONFIG=${etcDir}`)) mine.set(p.pid, p)
  }
  if (masterPid !== null) {
    const master = infos.find((p) => p.pid === masterPid)
    const stack = master ? [master] : []
    while (stack.length > 0) {
      const p = stack.pop()!
      mine.set(p.pid, p)
      stack.push(...(children.get(p.pid) ?? []))
    }
  }
  return [...mine.values()]
}

// ---------------------------------------------------------------------------
// preconditions

function preflightMachine(): void {
  if (process.getuid?.() !== 0) throw new Error('the Postfix e2e tests must run as root (the master starts as root; the spawn user is nobody)')
  for (const [tool, hint] of [
    [POSTFIX, 'Postfix'],
    ['/usr/bin/swaks', 'swaks'],
    ['/usr/bin/setpriv', 'setpriv (util-linux)'],
  ]) {
    if (!fs.existsSync(tool)) throw new Error(`${tool} missing: install ${hint} (bash scripts/e2e-deps.sh)`)
  }
  if (!fs.existsSync(path.join(ROOT, 'dist', 'lib', 'cli.js'))) throw new Error(`${ROOT}/dist/lib/cli.js missing: build first (npx tsc -p tsconfig.json)`)
}

/**
 * Runs `argv` as the spawn user (with MAIL_CONFIG when `etcDir` is given, as spawn(8) sets it). env -i: tap adds
 * its NODE_OPTIONS to every child's environment, which would load tap's code into a node run as nobody.
 */
function asSpawnUser(argv: string[], timeoutMs = 30000, etcDir?: string): { code: number | null; out: string; err: string } {
  const environment = [`PATH=${SYSTEM_PATH}`, 'LANG=C', ...(etcDir === undefined ? [] : [`MAIL_CONFIG=${etcDir}`])]
  return run('/usr/bin/env', ['-i', ...environment, 'setpriv', `--reuid=${SPAWN_USER}`, `--regid=${SPAWN_GROUP}`, '--clear-groups', '--', ...argv], { timeoutMs })
}

/** The first component of `p` the spawn user cannot traverse or use as wanted ('r' read, 'x' execute, 'w' write). */
function spawnUserCannot(p: string, want: 'r' | 'x' | 'w' | 'rx'): string | null {
  const script = `
target=$1; want=$2; d=
for part in $(printf '%s' "$target" | tr '/' ' '); do
  d="$d/$part"
  [ "$d" = "$target" ] && break
  [ -x "$d" ] || { echo "$d (directory not searchable)"; exit 0; }
done
case $want in *r*) [ -r "$target" ] || { echo "$target (not readable)"; exit 0; } ;; esac
case $want in *x*) [ -x "$target" ] || { echo "$target (not executable)"; exit 0; } ;; esac
case $want in *w*) [ -w "$target" ] || { echo "$target (not writable)"; exit 0; } ;; esac
`
  const r = asSpawnUser(['/bin/sh', '-c', script, 'sh', p, want])
  if (r.code !== 0) throw new Error(`setpriv as ${SPAWN_USER} failed (${r.code}): ${r.err}`)
  return r.out.trim() === '' ? null : r.out.trim()
}

// ---------------------------------------------------------------------------
// daemon mode: one policyd-ts process for every smtpd, run by the harness

export interface DaemonExit {
  pid: number
  code: number | null
  signal: NodeJS.Signals | null
  /** True when it did not exit within the timeout and was killed with SIGKILL. */
  killed: boolean
}

export interface PolicyDaemon {
  /** The --listen value (an absolute unix: path, or inet:127.0.0.1:PORT). */
  listen: string
  /** unix: the socket file (<queue_directory>/policyd-ts/policy); null for inet. */
  socketPath: string | null
  /** The whole command run as the spawn user: node, the node flags of master.cf.example, bin/policyd-ts, its arguments. */
  argv: string[]
  /** PID of the running daemon; null when none runs. */
  pid(): number | null
  /** Starts it and waits (bounded) until it accepts connections; returns its PID. Throws (with its output) if it exits first. */
  start(timeoutMs?: number): Promise<number>
  /** Sends `signal` (default SIGTERM) and waits (bounded, default 15 s) for the exit, then SIGKILL. Null when none ran. */
  stop(opts?: { signal?: NodeJS.Signals; timeoutMs?: number }): Promise<DaemonExit | null>
  /** Everything every run wrote on stdout and stderr (a daemon writes there only when it cannot start). */
  output(): string
}

interface DaemonSpec {
  argv: string[]
  listen: string
  socketPath: string | null
  port: number | null
  /** Set in the daemon's environment as spawn(8) sets it for its children: stop() and the watchdog find the instance's processes by it. */
  etcDir: string
  log: () => string
}

function canConnect(where: { path: string } | { host: string; port: number }): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(where as net.NetConnectOpts)
    const done = (ok: boolean): void => {
      s.destroy()
      resolve(ok)
    }
    s.once('connect', () => done(true))
    s.once('error', () => done(false))
    s.setTimeout(1000, () => done(false))
  })
}

function policyDaemon(spec: DaemonSpec): PolicyDaemon {
  let child: ReturnType<typeof spawn> | null = null
  let exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | null = null
  let lastExit: DaemonExit | null = null
  let output = ''
  const where = spec.socketPath !== null ? { path: spec.socketPath } : { host: '127.0.0.1', port: spec.port! }

  const stop = async (o: { signal?: NodeJS.Signals; timeoutMs?: number } = {}): Promise<DaemonExit | null> => {
    if (child === null || exited === null) return lastExit
    const running = child
    const pid = running.pid!
    const ended = exited
    running.kill(o.signal ?? 'SIGTERM')
    const timeout = o.timeoutMs ?? 15000
    let timer: NodeJS.Timeout | undefined
    let result = await Promise.race([ended, new Promise<null>((r) => (timer = setTimeout(() => r(null), timeout)))])
    clearTimeout(timer)
    let killed = false
    if (result === null) {
      killed = true
      running.kill('SIGKILL')
      result = await Promise.race([ended, sleep(5000).then(() => ({ code: null, signal: null }))])
    }
    child = null
    exited = null
    lastExit = { pid, ...result, killed }
    return lastExit
  }

  return {
    listen: spec.listen,
    socketPath: spec.socketPath,
    argv: spec.argv,
    pid: () => child?.pid ?? null,
    output: () => output,
    stop,
    async start(timeoutMs = 15000): Promise<number> {
      if (child !== null) throw new Error(`the daemon already runs (pid ${child.pid})`)
      // env -i: tap adds its own NODE_OPTIONS to every child's environment (@tapjs/processinfo), which would load
      // tap's code into the daemon (and fail as nobody at exit). env and setpriv exec: the child's PID is the daemon's.
      const environment = [`PATH=${SYSTEM_PATH}`, 'LANG=C', `MAIL_CONFIG=${spec.etcDir}`]
      const setpriv = ['/usr/bin/setpriv', `--reuid=${SPAWN_USER}`, `--regid=${SPAWN_GROUP}`, '--clear-groups', '--']
      const c = spawn('/usr/bin/env', ['-i', ...environment, ...setpriv, ...spec.argv], { stdio: ['ignore', 'pipe', 'pipe'] })
      child = c
      for (const stream of [c.stdout!, c.stderr!]) {
        stream.setEncoding('utf8')
        stream.on('data', (d: string) => (output += d))
      }
      exited = new Promise((resolve) => c.once('exit', (code, signal) => resolve({ code, signal })))
      const early: { exit: { code: number | null; signal: NodeJS.Signals | null } | null } = { exit: null }
      void exited.then((e) => (early.exit = e))
      // Ready once it has logged its start (after the socket's group and mode are set) and a connection succeeds.
      const started = `policyd-ts[${c.pid}]: daemon started`
      const up = await waitFor(async () => early.exit !== null || (spec.log().includes(started) && (await canConnect(where))), timeoutMs, 50)
      if (!up || early.exit !== null) {
        const why = early.exit !== null ? `exited (${JSON.stringify(early.exit)})` : `does not accept connections on ${spec.listen} within ${timeoutMs} ms`
        await stop({ signal: 'SIGKILL', timeoutMs: 2000 })
        throw new Error(`the policyd-ts daemon ${why}:\n${spec.argv.join(' ')}\noutput: ${output}\nlog:\n${spec.log().split('\n').slice(-20).join('\n')}`)
      }
      return c.pid!
    },
  }
}

// ---------------------------------------------------------------------------
// master.cf: the policy entry comes from the project's master.cf.example

/** The logical entry (first line + continuation lines) starting at the line matching `head`; `commented` entries lose their leading '#'. */
function exampleEntry(text: string, head: RegExp, commented: boolean): string[] {
  const lines = text.split('\n')
  const i = lines.findIndex((l) => head.test(l))
  if (i === -1) throw new Error(`${MASTER_CF_EXAMPLE}: no entry matching ${head}: the harness derives the policy service from it; update the harness with the example`)
  const out = [commented ? lines[i].replace(/^#/, '') : lines[i]]
  for (let j = i + 1; j < lines.length; j++) {
    const l = commented ? (/^#\s/.test(lines[j]) ? lines[j].slice(1) : null) : lines[j]
    if (l === null || !/^\s+\S/.test(l)) break
    out.push(l)
  }
  return out
}

/** Build the master.cf policy entry from master.cf.example with real paths, the chosen port and the extra arguments. */
export function policyEntryFromExample(transport: Transport, policyPort: number | null, node: string, bin: string, args: string[]): { entry: string; argv: string[] } {
  const text = fs.readFileSync(MASTER_CF_EXAMPLE, 'utf8')
  const lines =
    transport === 'unix'
      ? exampleEntry(text, /^policy\s+unix\s+-\s+n\s+n\s+-\s+0\s+spawn\s*$/, false)
      : exampleEntry(text, /^#\s*127\.0\.0\.1:9998\s+inet\s+n\s+n\s+n\s+-\s+0\s+spawn\s*$/, true)
  if (transport === 'inet') {
    if (policyPort === null) throw new Error('inet transport needs a policy port')
    lines[0] = lines[0].replace('127.0.0.1:9998', `127.0.0.1:${policyPort}`)
    if (!lines.some((l) => /^\s+-o\s+command_time_limit=\S+\s*$/.test(l))) throw new Error(`${MASTER_CF_EXAMPLE}: the inet entry lost its -o command_time_limit line`)
  }
  const argvLine = lines.findIndex((l) => /\sargv=/.test(l))
  if (argvLine === -1 || argvLine !== lines.length - 1) throw new Error(`${MASTER_CF_EXAMPLE}: the ${transport} policy entry has no final argv= line`)
  const m = /^(\s+.*\buser=nobody\s+argv=)(\S+)((?:\s+\S+)*)\s*$/.exec(lines[argvLine])
  if (!m) throw new Error(`${MASTER_CF_EXAMPLE}: unexpected argv line ${JSON.stringify(lines[argvLine])} (expected user=nobody argv=NODE ... .../bin/policyd-ts)`)
  const tokens = m[3].trim().split(/\s+/)
  if (!tokens.includes('--single-threaded-gc')) throw new Error(`${MASTER_CF_EXAMPLE}: the ${transport} entry lost --single-threaded-gc`)
  const binAt = tokens.findIndex((tok) => /\/bin\/policyd-ts$/.test(tok))
  if (binAt === -1) throw new Error(`${MASTER_CF_EXAMPLE}: no .../bin/policyd-ts in the ${transport} entry`)
  for (const a of [node, bin, ...args]) {
    if (a === '' || /\s/.test(a)) {
      throw new Error(`master.cf cannot carry the argument ${JSON.stringify(a)} (empty or with white space): use --key=value forms and paths without spaces`)
    }
  }
  tokens[binAt] = bin
  const argv = [...tokens, ...args]
  lines[argvLine] = `${m[1]}${node} ${argv.join(' ')}`
  return { entry: lines.join('\n'), argv }
}

const MASTER_CF_BASE = `# private e2e instance (chroot n everywhere)
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
`

// ---------------------------------------------------------------------------
// swaks transcript parsing

export function parseSwaksTranscript(transcript: string): Omit<SwaksResult, 'exitCode' | 'transcript' | 'id' | 'ms'> {
  const pairs: Array<{ cmd: string | null; reply: SmtpReply }> = []
  let lastCmd: string | null = null
  let lines: string[] = []
  for (const line of transcript.split('\n')) {
    const sent = /^ -> (.*)$/.exec(line)
    if (sent) {
      lastCmd = sent[1]
      continue
    }
    const got = /^<(?:-|\*\*) {1,2}(.*)$/.exec(line)
    if (!got) continue
    const text = got[1]
    lines.push(text)
    if (/^\d{3}(?: |$)/.test(text)) {
      const code = Number(text.slice(0, 3))
      pairs.push({ cmd: lastCmd, reply: { code, lines, text: lines.map((l) => l.slice(4)).join('\n') } })
      lines = []
      lastCmd = null
    }
  }
  const find = (re: RegExp): SmtpReply | null => pairs.find((p) => p.cmd !== null && re.test(p.cmd))?.reply ?? null
  const rcpt = pairs
    .filter((p) => p.cmd !== null && /^RCPT TO:/i.test(p.cmd))
    .map((p) => ({ to: /<([^>]*)>/.exec(p.cmd!)?.[1] ?? p.cmd!, reply: p.reply }))
  const data = pairs.find((p) => p.cmd === '.')?.reply ?? null
  return {
    banner: pairs[0]?.cmd === null ? pairs[0].reply : null,
    xclient: find(/^XCLIENT /i),
    mail: find(/^MAIL FROM:/i),
    rcpt,
    dataCommand: find(/^DATA$/i),
    data,
    queueId: data ? (/queued as ([0-9A-Za-z]+)/.exec(data.text)?.[1] ?? null) : null,
  }
}

// ---------------------------------------------------------------------------
// the raw SMTP client

export class SmtpSession {
  readonly transcript: string[] = []
  private buf = ''
  private waiter: (() => void) | null = null
  private closed = false
  private closeError: Error | null = null

  private constructor(private readonly sock: net.Socket, readonly timeoutMs: number) {
    sock.setEncoding('latin1')
    sock.on('data', (d: string) => {
      this.buf += d
      this.waiter?.()
    })
    sock.on('close', () => {
      this.closed = true
      this.waiter?.()
    })
    sock.on('error', (err) => {
      this.closeError = err
    })
  }

  static async connect(port: number, timeoutMs = 30000): Promise<{ session: SmtpSession; banner: SmtpReply }> {
    const sock = net.connect({ host: '127.0.0.1', port })
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        sock.destroy()
        reject(new Error(`connect to 127.0.0.1:${port} timed out`))
      }, timeoutMs)
      sock.once('connect', () => {
        clearTimeout(timer)
        resolve()
      })
      sock.once('error', (err) => {
        clearTimeout(timer)
        reject(err)
      })
    })
    const session = new SmtpSession(sock, timeoutMs)
    const banner = await session.read()
    return { session, banner }
  }

  get isClosed(): boolean {
    return this.closed
  }

  /** Reads one (possibly multi-line) reply, bounded by the timeout. */
  async read(timeoutMs = this.timeoutMs): Promise<SmtpReply> {
    const end = Date.now() + timeoutMs
    for (;;) {
      const reply = this.takeReply()
      if (reply) return reply
      if (this.closed) throw new Error(`connection closed while waiting for a reply${this.closeError ? ` (${this.closeError.message})` : ''}; transcript:\n${this.transcript.join('\n')}`)
      const left = end - Date.now()
      if (left <= 0) throw new Error(`no complete SMTP reply within ${timeoutMs} ms; transcript:\n${this.transcript.join('\n')}\npartial: ${JSON.stringify(this.buf)}`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, left)
        const self = this
        function done(): void {
          clearTimeout(timer)
          self.waiter = null
          resolve()
        }
        this.waiter = done
      })
    }
  }

  private takeReply(): SmtpReply | null {
    const lines: string[] = []
    let pos = 0
    for (;;) {
      const nl = this.buf.indexOf('\n', pos)
      if (nl === -1) return null
      const line = this.buf.slice(pos, nl).replace(/\r$/, '')
      pos = nl + 1
      lines.push(line)
      if (!/^\d{3}-/.test(line)) {
        this.buf = this.buf.slice(pos)
        for (const l of lines) this.transcript.push(`S: ${l}`)
        const code = /^\d{3}/.test(line) ? Number(line.slice(0, 3)) : NaN
        return { code, lines, text: lines.map((l) => l.slice(4)).join('\n') }
      }
    }
  }

  private write(line: string): void {
    if (this.closed) throw new Error(`connection already closed; cannot send ${JSON.stringify(line)}; transcript:\n${this.transcript.join('\n')}`)
    this.transcript.push(`C: ${line}`)
    this.sock.write(`${line}\r\n`)
  }

  /** Sends one command line and reads its reply. */
  async command(line: string, timeoutMs?: number): Promise<SmtpReply> {
    this.write(line)
    return this.read(timeoutMs)
  }

  ehlo(name: string): Promise<SmtpReply> {
    return this.command(`EHLO ${name}`)
  }

  /** XCLIENT with xtext-encoded values; on success Postfix answers with a new 220 greeting and the client must EHLO again. */
  xclient(attrs: { addr?: string; name?: string; helo?: string; port?: string; proto?: string }): Promise<SmtpReply> {
    const xtext = (v: string): string => v.replace(/[^\x21-\x2a\x2c-\x3c\x3e-\x7e]/g, (c) => `+${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`)
    const parts = Object.entries(attrs)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k.toUpperCase()}=${xtext(v!)}`)
    return this.command(`XCLIENT ${parts.join(' ')}`)
  }

  mail(from: string): Promise<SmtpReply> {
    return this.command(`MAIL FROM:<${from}>`)
  }

  rcpt(to: string): Promise<SmtpReply> {
    return this.command(`RCPT TO:<${to}>`)
  }

  /** DATA, then the message (dot-stuffed) if the server says 354. */
  async data(message: string): Promise<{ command: SmtpReply; result: SmtpReply | null }> {
    const command = await this.command('DATA')
    if (command.code !== 354) return { command, result: null }
    const body = message.replace(/\r?\n/g, '\r\n').replace(/^\./gm, '..')
    this.transcript.push(`C: <message, ${body.length} bytes>`)
    this.sock.write(`${body}${body.endsWith('\r\n') ? '' : '\r\n'}.\r\n`)
    return { command, result: await this.read() }
  }

  async quit(): Promise<SmtpReply | null> {
    if (this.closed) return null
    try {
      return await this.command('QUIT', 5000)
    } finally {
      this.close()
    }
  }

  close(): void {
    this.sock.destroy()
    this.closed = true
  }
}

// ---------------------------------------------------------------------------
// mbox

export function parseMbox(text: string): DeliveredMessage[] {
  const lines = text.split('\n')
  const starts: number[] = []
  lines.forEach((l, i) => {
    if (l.startsWith('From ') && (i === 0 || lines[i - 1] === '')) starts.push(i)
  })
  return starts.map((s, k) => {
    const chunk = lines.slice(s, k + 1 < starts.length ? starts[k + 1] : lines.length)
    const envelope = chunk[0]
    const blank = chunk.indexOf('', 1)
    const headLines = chunk.slice(1, blank === -1 ? chunk.length : blank)
    const headers: string[] = []
    for (const l of headLines) {
      if (/^[ \t]/.test(l) && headers.length > 0) headers[headers.length - 1] += ` ${l.trim()}`
      else headers.push(l)
    }
    const body = blank === -1 ? '' : chunk.slice(blank + 1).join('\n')
    const header = (name: string): string[] =>
      headers.filter((h) => h.toLowerCase().startsWith(`${name.toLowerCase()}:`)).map((h) => h.slice(name.length + 1).trim())
    return { raw: chunk.join('\n'), envelope, headers, body, header, e2eId: header('X-E2E-Id')[0] ?? null }
  })
}

// ---------------------------------------------------------------------------
// the watchdog: cleans up if the test process dies without stop() (tap timeout, SIGKILL)

const WATCHDOG = `
const [testPid, dir, etc, postfix] = process.argv.slice(1)
const fs = require('fs'), cp = require('child_process')
const alive = (pid) => { try { process.kill(pid, 0); return true } catch (e) { return e.code === 'EPERM' } }
const timer = setInterval(() => {
  if (alive(Number(testPid))) return
  clearInterval(timer)
  try { cp.spawnSync(postfix, ['-c', etc, 'stop'], { stdio: 'ignore', timeout: 20000 }) } catch {}
  setTimeout(() => {
    for (const d of fs.readdirSync('/proc')) {
      if (!/^[0-9]+$/.test(d) || Number(d) === process.pid) continue
      try {
        if (fs.readFileSync('/proc/' + d + '/environ', 'latin1').split('\\0').includes('MAIL_CONFIG=' + etc)) process.kill(Number(d), 'SIGKILL')
      } catch {}
    }
    if (dir.startsWith(require('os').tmpdir()) && dir.includes('policyd-ts-e2e-')) fs.rmSync(dir, { recursive: true, force: true })
  }, 1000)
}, 500)
`

// ---------------------------------------------------------------------------

const running = new Set<PostfixInstance>()
const created: string[] = []

/** Temp dirs made by startPostfix() in this process (stop() removes them). */
export function createdDirs(): string[] {
  return [...created]
}

/** Live processes of any instance started by this process (should be none once every instance is stopped). */
export function leftoverProcesses(): number[] {
  return created.flatMap((dir) => instanceProcesses(path.join(dir, 'etc'), null).map((p) => p.pid))
}

/** Starts a private Postfix; on any failure everything started so far is stopped and removed before the error is thrown. */
export async function startPostfix(opts: PostfixOptions = {}): Promise<PostfixInstance> {
  preflightMachine()
  const transport = opts.transport ?? 'unix'
  const policyMode = opts.policyMode ?? 'spawn'
  const node = fs.realpathSync(process.execPath)
  const bin = fs.realpathSync(BIN)
  const nobodyUid = idOf('-u', SPAWN_USER)
  const nobodyGid = idOf('-g', SPAWN_USER)
  const postfixUid = idOf('-u', 'postfix')
  const postfixGid = idOf('-g', 'postfix')

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'policyd-ts-e2e-'))
  created.push(dir)
  const etcDir = path.join(dir, 'etc')
  let masterPid: number | null = null
  let watchdogPid: number | null = null
  let stopped = false
  let daemon: PolicyDaemon | null = null
  const sessions = new Set<SmtpSession>()

  const readMasterPid = (): number | null => {
    try {
      const n = Number(fs.readFileSync(path.join(dir, 'spool', 'pid', 'master.pid'), 'utf8').trim())
      return Number.isInteger(n) && n > 0 ? n : null
    } catch {
      return null
    }
  }

  const stop = async (): Promise<{ killed: number[] }> => {
    if (stopped) return { killed: [] }
    stopped = true
    running.delete(handle)
    for (const s of sessions) s.close()
    // The daemon is not Postfix's: TERM it (it answers what it was asked, then exits); whatever is left is killed below.
    await daemon?.stop({ timeoutMs: 12000 }).catch(() => undefined)
    masterPid ??= readMasterPid()
    const before = instanceProcesses(etcDir, masterPid)
    if (masterPid !== null || before.length > 0) run(POSTFIX, ['-c', etcDir, 'stop'], { timeoutMs: 20000 })
    // The daemons (and the policy processes, at EOF) go within ~0.1 s; zombies count as gone.
    const snapshot = [...before, ...instanceProcesses(etcDir, null)]
    await waitFor(() => snapshot.every((p) => !alive(p)) && instanceProcesses(etcDir, null).length === 0, 5000)
    const killed: number[] = []
    for (const p of [...snapshot, ...instanceProcesses(etcDir, null)]) {
      if (alive(p)) {
        try {
          process.kill(p.pid, 'SIGKILL')
          killed.push(p.pid)
        } catch {
          // gone meanwhile
        }
      }
    }
    if (killed.length > 0) await waitFor(() => snapshot.every((p) => !alive(p)), 2000)
    if (watchdogPid !== null) {
      try {
        process.kill(watchdogPid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
    fs.rmSync(dir, { recursive: true, force: true })
    return { killed: [...new Set(killed)] }
  }

  // A handle that exists before start so that stop() can run at any point.
  const handle = { stop } as PostfixInstance
  running.add(handle)
  try {
    fs.chmodSync(dir, 0o755) // mktemp makes 0700: the spawn user must reach the log file and the database (pitfall 3)
    for (const sub of ['etc', 'spool', 'data', 'mail', 'db']) fs.mkdirSync(path.join(dir, sub), { mode: 0o755 })
    fs.chownSync(path.join(dir, 'data'), postfixUid, postfixGid)
    fs.chownSync(path.join(dir, 'mail'), nobodyUid, nobodyGid)
    const dbDir = path.join(dir, 'db')
    fs.chownSync(dbDir, nobodyUid, nobodyGid)
    fs.chmodSync(dbDir, 0o700)
    const policyLogFile = path.join(dir, 'policyd-ts.log')
    fs.writeFileSync(policyLogFile, '', { mode: 0o644 })
    fs.chownSync(policyLogFile, nobodyUid, nobodyGid)
    const files: Record<string, string> = {}
    for (const [name, content] of Object.entries(opts.files ?? {})) {
      const p = path.resolve(dir, 'files', name)
      if (!p.startsWith(path.join(dir, 'files') + path.sep)) throw new Error(`files: ${name} leaves the temp dir`)
      fs.mkdirSync(path.dirname(p), { recursive: true, mode: 0o755 })
      fs.writeFileSync(p, content, { mode: 0o644 })
      files[name] = p
    }
    const file = (name: string): string => {
      if (!(name in files)) throw new Error(`no file ${name} was given in opts.files`)
      return files[name]
    }

    // The watchdog first: from here on the instance is cleaned up even if this process is killed.
    const watchdog = spawn(node, ['-e', WATCHDOG, String(process.pid), dir, etcDir, POSTFIX], { detached: true, stdio: 'ignore', env: { PATH: SYSTEM_PATH, TMPDIR: os.tmpdir() } })
    watchdog.unref()
    watchdogPid = watchdog.pid ?? null

    const dbFile = path.join(dbDir, 'policyd-ts.sqlite')
    const isolation = [
      '--config', '/dev/null',
      `--db_path=${dbFile}`,
      `--syslog_socket=${path.join(dir, 'no-syslog')}`,
      `--log_file=${policyLogFile}`,
      '--greylist_whitelist_clients=',
      '--greylist_whitelist_recipients=',
    ]
    const extra = typeof opts.policyArgs === 'function' ? opts.policyArgs({ dir, dbDir, dbFile, policyLogFile, file }) : (opts.policyArgs ?? [])
    const policyArgs = [...(opts.isolate === false ? [] : isolation), ...extra]

    // The spawn user must reach everything the policy process needs (CI clones into other paths).
    const problems = new Set<string>()
    const needs: Array<[string, 'r' | 'rx' | 'w', string]> = [
      [node, 'rx', 'the node interpreter (process.execPath)'],
      [bin, 'r', 'bin/policyd-ts of the checkout'],
      [path.join(ROOT, 'dist', 'lib', 'cli.js'), 'r', 'the built checkout (dist/)'],
      [path.join(ROOT, 'node_modules', 'better-sqlite3', 'build', 'Release', 'better_sqlite3.node'), 'r', 'the checkout\'s node_modules'],
      [dbDir, 'w', `the database directory in the temp dir (TMPDIR=${os.tmpdir()})`],
      [policyLogFile, 'w', `the policy log file in the temp dir (TMPDIR=${os.tmpdir()})`],
      ...Object.values(files).map((f): [string, 'r', string] => [f, 'r', 'a file given in opts.files']),
    ]
    for (const [p, want, label] of needs) {
      const why = spawnUserCannot(p, want)
      if (why) problems.add(`${why}: needed for ${label}`)
    }
    if (problems.size > 0) {
      throw new Error(
        `the spawn user ${SPAWN_USER} (master.cf user=${SPAWN_USER}) cannot use what the policy service needs:\n  ${[...problems].join('\n  ')}\n` +
          'Postfix would answer every RCPT with 451 4.3.5. Make the checkout, node and the temp dir readable and searchable by others ' +
          '(chmod o+rx on each parent directory), clone into such a path, or point TMPDIR at such a directory.',
      )
    }

    const [port, policyPortFree] = await freePorts(2)
    const policyPort = transport === 'inet' ? policyPortFree : null
    let entry = ''
    let argv: string[]
    let policyService: string
    if (policyMode === 'spawn') {
      ;({ entry, argv } = policyEntryFromExample(transport, policyPort, node, bin, policyArgs))
      policyService = transport === 'unix' ? 'unix:private/policy' : `inet:127.0.0.1:${policyPort}`
    } else {
      // The socket in a directory of its own under the queue directory: a chrooted smtpd (Debian's default) sees only
      // that tree, and main.cf names the socket relative to it. The directory is the daemon user's and set-group-ID
      // postfix, so the socket it creates is group postfix without that user being a member of group postfix.
      const socketDir = path.join(dir, 'spool', DAEMON_SOCKET_DIR)
      if (transport === 'unix' && opts.prepareDaemon !== false) {
        fs.mkdirSync(socketDir, { mode: 0o750 })
        fs.chownSync(socketDir, nobodyUid, postfixGid)
        fs.chmodSync(socketDir, 0o2750)
        const why = spawnUserCannot(socketDir, 'w')
        if (why) throw new Error(`the daemon user ${SPAWN_USER} cannot create its socket: ${why}`)
      }
      const socketPath = path.join(socketDir, DAEMON_SOCKET_NAME)
      const listen = transport === 'unix' ? `unix:${socketPath}` : `inet:127.0.0.1:${policyPort}`
      const { nodeFlags } = require(path.join(ROOT, 'scripts', 'node-flags.js')) as { nodeFlags(): string[] }
      argv = [...nodeFlags(), bin, '--listen', listen, '--listen_group', DAEMON_SOCKET_GROUP, '--listen_mode', '0660', ...policyArgs]
      // Only the service string says where the policy is: no master.cf entry; when the daemon is down, DUNNO.
      const target = transport === 'unix' ? `unix:${DAEMON_SOCKET_DIR}/${DAEMON_SOCKET_NAME}` : listen
      policyService = `{ ${target}, default_action=DUNNO }`
      daemon = policyDaemon({ argv: [node, ...argv], listen, socketPath: transport === 'unix' ? socketPath : null, port: policyPort, etcDir, log: () => readOr(policyLogFile) })
    }
    let startUp = ''

    if (opts.checkConfig !== false) {
      // As master.cf (or the daemon's command line) runs it, node flags too, plus --test-mode.
      const r = asSpawnUser([node, ...argv.slice(0, argv.indexOf(bin) + 1), '--test-mode', ...argv.slice(argv.indexOf(bin) + 1)])
      startUp = /^# start-up: (.*)$/m.exec(r.out)?.[1] ?? ''
      if (r.code !== 0) {
        const comments = r.out.split('\n').filter((l) => l.startsWith('#')).join('\n')
        throw new Error(`policyd-ts --test-mode as ${SPAWN_USER} exited ${r.code}: the policy arguments are not usable:\n${r.err.trim()}\n${comments}`)
      }
    }

    const mailboxLocal = 'mbox'
    const main: Record<string, string> = {
      compatibility_level: '3.7',
      queue_directory: path.join(dir, 'spool'),
      data_directory: path.join(dir, 'data'),
      mail_owner: 'postfix',
      setgid_group: 'postdrop',
      maillog_file: path.join(dir, 'maillog'),
      maillog_file_prefixes: dir,
      myhostname: MYHOSTNAME,
      mydomain: DOMAIN,
      myorigin: '$myhostname',
      mydestination: 'localhost',
      inet_interfaces: 'loopback-only',
      inet_protocols: 'ipv4',
      mynetworks: '127.0.0.0/8',
      alias_maps: '',
      alias_database: '',
      biff: 'no',
      smtputf8_enable: 'no',
      smtpd_peername_lookup: 'no',
      smtp_dns_support_level: 'disabled',
      virtual_mailbox_domains: DOMAIN,
      virtual_mailbox_base: path.join(dir, 'mail'),
      virtual_mailbox_maps: `static:${mailboxLocal}`,
      virtual_uid_maps: `static:${nobodyUid}`,
      virtual_gid_maps: `static:${nobodyGid}`,
      virtual_minimum_uid: '1',
      default_transport: 'discard',
      relay_transport: 'discard',
      smtpd_authorized_xclient_hosts: '127.0.0.0/8',
      // As master.cf.example advises: the policy after reject_unauth_destination. For an XCLIENT address outside
      // mynetworks the end of the list is an implicit permit, which makes DEFER_IF_PERMIT a 450.
      smtpd_recipient_restrictions: opts.recipientPolicy === 'first'
        ? `check_policy_service ${policyService}, permit_mynetworks, reject_unauth_destination`
        : `permit_mynetworks, reject_unauth_destination, check_policy_service ${policyService}`,
      smtpd_policy_service_timeout: '10s',
      // smtpd_policy_service_default_action stays at its default (451 4.3.5) so that any policy failure shows.
    }
    const dataChecks = opts.dataRestrictions !== false ? [`check_policy_service ${policyService}`] : []
    if ((opts.rejectAtData ?? []).length > 0) {
      const senders = opts.rejectAtData!
      if (senders.some((x) => !/^[^\s,{}=]+$/.test(x))) throw new Error(`rejectAtData: ${JSON.stringify(senders)}: plain addresses only`)
      dataChecks.push(`check_sender_access inline:{ ${senders.map((x) => `${x}=REJECT`).join(', ')} }`)
    }
    if (dataChecks.length > 0) main.smtpd_data_restrictions = dataChecks.join(', ')
    if (opts.endOfDataRestrictions) main.smtpd_end_of_data_restrictions = `check_policy_service ${policyService}`
    // The time limit of a spawn service is <service name>_time_limit: `policy` for the unix entry; the inet entry
    // carries -o command_time_limit instead (policy_time_limit would be an unused parameter there).
    if (policyMode === 'spawn' && transport === 'unix') main.policy_time_limit = '3600s'
    Object.assign(main, opts.extraMain ?? {})
    const mainCf = path.join(etcDir, 'main.cf')
    const masterCf = path.join(etcDir, 'master.cf')
    fs.writeFileSync(mainCf, `${Object.entries(main).map(([k, v]) => `${k} = ${v}`).join('\n')}\n`, { mode: 0o644 })
    fs.writeFileSync(masterCf, `127.0.0.1:${port} inet n - ${opts.chrootSmtpd ? 'y' : 'n'} - - smtpd\n${MASTER_CF_BASE}${entry === '' ? '' : `${entry}\n`}`, { mode: 0o644 })
    setOld(mainCf)
    setOld(masterCf)

    const check = run(POSTFIX, ['-c', etcDir, 'check'])
    if (check.code !== 0) throw new Error(`postfix check failed (${check.code}):\n${check.err}${check.out}${explain(['check'])}`)
    // Like policyd-ts.service (Before=postfix.service): the daemon runs before smtpd asks it.
    if (opts.prepareDaemon !== false) await daemon?.start()
    const start = run(POSTFIX, ['-c', etcDir, 'start'])
    if (start.code !== 0) throw new Error(`postfix start failed (${start.code}):\n${start.err}${start.out}${explain(['start'])}`)
    masterPid = readMasterPid()
    // smtpd must answer: read its banner (bounded).
    let bannerError = ''
    const up = await waitFor(async () => {
      try {
        const { session, banner } = await SmtpSession.connect(port, 5000)
        session.close()
        return banner.code === 220
      } catch (err) {
        bannerError = (err as Error).message
        return false
      }
    }, 10000, 100)
    if (!up) throw new Error(`smtpd on 127.0.0.1:${port} does not answer: ${bannerError}\n${readOr(path.join(dir, 'maillog'))}`)

    function explain(cmd: string[]): string {
      // Without a terminal Postfix prints its fatal errors nowhere (pitfall 11).
      const r = run('script', ['-qec', [POSTFIX, '-c', etcDir, ...cmd].join(' '), '/dev/null'])
      return `\n(under script: ${r.out}${r.err})\n${readOr(path.join(dir, 'maillog'))}`
    }

    const maillogFile = path.join(dir, 'maillog')
    const mboxFile = path.join(dir, 'mail', mailboxLocal)
    const maillog = (): string => readOr(maillogFile)
    const policyLog = (): string => readOr(policyLogFile)
    const policyPids = (): number[] =>
      instanceProcesses(etcDir, masterPid)
        .filter((p) => {
          // The node process itself; its spawn(8) parent carries the same words after `argv=`.
          const argv = cmdline(p.pid)
          return argv[0] === node && argv.includes(bin)
        })
        .map((p) => p.pid)
        .sort((a, b) => a - b)
    let swaksCount = 0

    Object.assign(handle, {
      dir,
      etcDir,
      port,
      transport,
      policyService,
      policyPort,
      dbDir,
      dbFile,
      policyLogFile,
      mboxFile,
      maillogFile,
      policyMode,
      daemon,
      policyEntry: entry,
      policyArgv: argv.slice(argv.indexOf(bin) + 1),
      startUp,
      file,
      maillog,
      policyLog,
      policyPids,
      policyWarnings: () => maillog().split('\n').filter((l) => POLICY_WARNING.test(l)),
      maillogProblems: () => maillog().split('\n').filter((l) => /\b(warning|fatal|panic|error):/.test(l)),
      async waitPolicyLog(re: RegExp, timeoutMs = 5000): Promise<string> {
        const ok = await waitFor(() => re.test(policyLog()), timeoutMs)
        if (!ok) throw new Error(`policy log does not match ${re} within ${timeoutMs} ms:\n${policyLog()}`)
        return policyLog()
      },
      async swaks(s: SwaksOptions): Promise<SwaksResult> {
        const id = `${path.basename(dir)}-${++swaksCount}-${crypto.randomBytes(3).toString('hex')}`
        const to = Array.isArray(s.to) ? s.to.join(',') : s.to
        const args = ['--server', `127.0.0.1:${port}`, '--timeout', `${s.timeout ?? 30}s`, '--from', s.from, '--to', to, '--helo', s.helo ?? 'client.example.net', '--add-header', `X-E2E-Id: ${id}`]
        if (s.xclient?.addr) args.push('--xclient-addr', s.xclient.addr)
        if (s.xclient?.name) args.push('--xclient-name', s.xclient.name)
        if (s.xclient?.helo) args.push('--xclient-helo', s.xclient.helo)
        for (const h of s.headers ?? []) args.push('--add-header', h)
        if (s.body !== undefined) args.push('--body', s.body)
        args.push(...(s.args ?? []))
        const started = Date.now()
        const { code, out } = await new Promise<{ code: number | null; out: string }>((resolve) => {
          // One stream for both, so that the transcript keeps its order.
          const child = spawn('/bin/sh', ['-c', 'exec /usr/bin/swaks "$@" 2>&1', 'sh', ...args], { stdio: ['ignore', 'pipe', 'ignore'], env: { PATH: SYSTEM_PATH, LANG: 'C' } })
          let text = ''
          child.stdout.setEncoding('utf8')
          child.stdout.on('data', (d: string) => (text += d))
          const hard = setTimeout(() => child.kill('SIGKILL'), ((s.timeout ?? 30) * 4 + 10) * 1000)
          child.on('close', (c) => {
            clearTimeout(hard)
            resolve({ code: c, out: text })
          })
        })
        return { exitCode: code, transcript: out, id, ms: Date.now() - started, ...parseSwaksTranscript(out) }
      },
      policyCommand(args: string[], timeoutMs = 30000): { code: number | null; out: string; err: string } {
        return asSpawnUser([node, bin, ...args, ...policyArgs], timeoutMs, etcDir)
      },
      async smtp(o: { timeoutMs?: number } = {}): Promise<SmtpSession> {
        const { session, banner } = await SmtpSession.connect(port, o.timeoutMs ?? 30000)
        sessions.add(session)
        if (banner.code !== 220) throw new Error(`unexpected banner ${banner.lines.join(' / ')}`)
        return session
      },
      async delivered(atLeast = 1, timeoutMs = 10000): Promise<DeliveredMessage[]> {
        const read = (): DeliveredMessage[] => parseMbox(readOr(mboxFile))
        await waitFor(() => read().length >= atLeast, timeoutMs)
        return read()
      },
      async reload(o: { waitPolicyExit?: boolean; timeoutMs?: number } = {}): Promise<number[]> {
        const old = policyPids().filter((p) => p !== daemon?.pid())
        const oldInfo = old.map(procInfo).filter((p): p is ProcInfo => p !== null)
        setOld(mainCf)
        setOld(masterCf)
        const r = run(POSTFIX, ['-c', etcDir, 'reload'])
        if (r.code !== 0) throw new Error(`postfix reload failed (${r.code}): ${r.err}${r.out}`)
        if (o.waitPolicyExit !== false) {
          const gone = await waitFor(() => oldInfo.every((p) => !alive(p)), o.timeoutMs ?? 10000)
          if (!gone) throw new Error(`policy processes ${old.join(', ')} still running ${o.timeoutMs ?? 10000} ms after postfix reload`)
        }
        return old
      },
      diagnostics(): string {
        return [
          `== instance ${dir} (smtpd 127.0.0.1:${port}, policy ${policyService})`,
          daemon
            ? `== policy daemon (pid ${daemon.pid() ?? 'none'}): ${daemon.argv.join(' ')}\n   its stdout/stderr: ${JSON.stringify(daemon.output())}`
            : `== master.cf policy entry:\n${entry}`,
          `== maillog (last 60 lines):\n${maillog().split('\n').slice(-60).join('\n')}`,
          `== policy log (last 40 lines):\n${policyLog().split('\n').slice(-40).join('\n')}`,
        ].join('\n')
      },
    })
    return handle
  } catch (err) {
    await stop()
    throw err
  }
}

function readOr(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8')
  } catch {
    return ''
  }
}

/** The subset of a tap Test the harness needs. */
export interface TapLike {
  teardown(fn: () => unknown): void
  passing(): boolean
  comment(...args: unknown[]): void
}

/** startPostfix() with stop() registered as the test's teardown; on failure the diagnostics go into the TAP output first. */
export async function usePostfix(t: TapLike, opts: PostfixOptions = {}): Promise<PostfixInstance> {
  const pf = await startPostfix(opts)
  t.teardown(async () => {
    if (!t.passing()) t.comment(pf.diagnostics())
    const { killed } = await pf.stop()
    if (killed.length > 0) t.comment(`stop(): killed leftover processes ${killed.join(', ')}`)
  })
  return pf
}

/** Instances not stopped yet (for a last-resort check in tests). */
export function runningInstances(): number {
  return running.size
}
