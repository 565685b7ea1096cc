// Opening the daemon's listening socket: a unix socket it creates (mode and
// group applied before anyone can connect, a stale file replaced, a live
// one refused), a TCP port, or the socket systemd passes (LISTEN_FDS).

import fs = require('node:fs')
import net = require('node:net')
import os = require('node:os')
import path = require('node:path')
import { formatListen, isLoopback, type ListenAddress } from '../listen-address'

export interface ListenOptions {
  address: ListenAddress
  /** Octal text, e.g. 0660. */
  mode: string
  /** Group name; empty keeps the process's group. */
  group: string
  env: NodeJS.ProcessEnv
  pid: number
  log: (level: number, msg: string) => void
}

/** A problem that stops the daemon from starting, with the text an admin needs. */
export class ListenError extends Error {}

/** systemd passes its sockets from fd 3 on (sd_listen_fds(3)). */
const SD_LISTEN_FDS_START = 3

export async function openListener(server: net.Server, opts: ListenOptions): Promise<string> {
  const { address } = opts
  if (address.kind === 'systemd') {
    if (opts.env.LISTEN_PID !== String(opts.pid) || !(Number(opts.env.LISTEN_FDS) >= 1)) {
      throw new ListenError('listen = systemd, but systemd passed no socket (LISTEN_PID/LISTEN_FDS not set for this process): start policyd-ts.socket, or set listen to unix:PATH or inet:HOST:PORT')
    }
    await listenOn(server, { fd: SD_LISTEN_FDS_START })
    return 'systemd socket (fd 3)'
  }
  if (address.kind === 'inet') {
    if (!isLoopback(address.host)) {
      opts.log(0, `warning: listening on ${formatListen(address)}, not loopback: the policy protocol has no authentication, so anyone who can reach this port can query it; restrict it with a firewall`)
    }
    await listenOn(server, { host: address.host, port: address.port })
    return formatListen(address)
  }
  await listenUnix(server, address.path, opts)
  return formatListen(address)
}

type Where = net.ListenOptions | { fd: number }

function listenOn(server: net.Server, options: Where): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(new ListenError(`cannot listen on ${describe(options)}: ${err.message}`))
    server.once('error', onError)
    server.listen(options as net.ListenOptions, () => {
      server.off('error', onError)
      resolve()
    })
  })
}

function describe(o: Where): string {
  if ('fd' in o) return `fd ${o.fd}`
  if (o.path !== undefined) return `unix:${o.path}`
  return `inet:${o.host}:${o.port}`
}

/** sun_path holds 108 bytes with the terminating NUL (Linux). */
const MAX_SOCKET_PATH = 107

async function listenUnix(server: net.Server, file: string, opts: ListenOptions): Promise<void> {
  if (Buffer.byteLength(file) > MAX_SOCKET_PATH) {
    throw new ListenError(`cannot listen on unix:${file}: the path is ${Buffer.byteLength(file)} bytes long, more than a unix socket address holds (${MAX_SOCKET_PATH})`)
  }
  const dir = path.dirname(path.resolve(file))
  if (!isDirectory(dir)) {
    throw new ListenError(`cannot listen on unix:${file}: directory ${dir} does not exist; create it as root: ${installCommand(dir, opts.group)} (${WHERE_SMTPD_CONNECTS})`)
  }
  await removeStale(file)
  const mode = parseInt(opts.mode, 8)
  const gid = opts.group === '' ? -1 : groupId(opts.group)
  if (gid === null) opts.log(0, `warning: group ${opts.group} (listen_group) does not exist; the socket keeps the daemon's group`)
  // The socket must never be reachable with wider permissions than wanted,
  // not even between bind and chmod: bind under a umask that leaves none.
  const oldMask = process.umask(0o177)
  try {
    await listenOn(server, { path: file })
  } finally {
    process.umask(oldMask)
  }
  try {
    if (gid !== null && gid !== -1) fs.chownSync(file, -1, gid)
    fs.chmodSync(file, mode)
  } catch (err) {
    server.close()
    const notMember = (err as NodeJS.ErrnoException).code === 'EPERM' && gid !== null && gid !== -1
    const why = notMember
      ? `: ${userName()} is not a member of group ${opts.group} (listen_group), and only a member may give a file that group. Make the directory set-group-ID ${opts.group}, so that the socket gets that group as it is created: ${installCommand(dir, opts.group)}`
      : ''
    throw new ListenError(`cannot set owner group or mode of ${file}: ${(err as Error).message}${why}`)
  }
}

const WHERE_SMTPD_CONNECTS = "a chrooted smtpd, as on Debian, reaches only sockets under the queue directory: /var/spool/postfix/policyd-ts/policy is unix:policyd-ts/policy in main.cf"

/**
 * The directory for the socket: the daemon's user creates the socket there; set-group-ID listen_group, so that the
 * socket gets the group smtpd runs as without the daemon's user being a member of it; others kept out.
 */
function installCommand(dir: string, group: string): string {
  return group === '' ? `install -d -o ${userName()} -m 0755 ${dir}` : `install -d -o ${userName()} -g ${group} -m 2750 ${dir}`
}

/** The daemon's user, for the commands it suggests. */
function userName(): string {
  try {
    return os.userInfo().username
  } catch {
    return String(process.getuid?.() ?? 'the daemon user')
  }
}

function isDirectory(dir: string): boolean {
  try {
    return fs.statSync(dir).isDirectory()
  } catch {
    return false
  }
}

/** A socket file nobody listens on (left by a crash) is removed; a live one or another file is refused. */
async function removeStale(file: string): Promise<void> {
  let st: fs.Stats
  try {
    st = fs.lstatSync(file)
  } catch {
    return
  }
  if (!st.isSocket()) throw new ListenError(`cannot listen on unix:${file}: a file that is not a socket is in the way`)
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(file)
    const done = (alive: boolean): void => {
      probe.destroy()
      resolve(alive)
    }
    probe.once('connect', () => done(true))
    probe.once('error', () => done(false))
    probe.setTimeout(1000, () => done(true))
  })
  if (live) throw new ListenError(`cannot listen on unix:${file}: another process is listening on it (a policyd-ts daemon already running?)`)
  fs.unlinkSync(file)
}

/** The numeric id of a group, from /etc/group (Node has no getgrnam); null when there is none. */
export function groupId(name: string, groupFile = '/etc/group'): number | null {
  if (/^\d+$/.test(name)) return Number(name)
  let text: string
  try {
    text = fs.readFileSync(groupFile, 'utf8')
  } catch {
    return null
  }
  for (const line of text.split('\n')) {
    const [group, , gid] = line.split(':')
    if (group === name && /^\d+$/.test(gid ?? '')) return Number(gid)
  }
  return null
}
