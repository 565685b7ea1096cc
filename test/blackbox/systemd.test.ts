// The shipped systemd units and socket activation (listen = systemd): the
// socket is made by the parent (here a small python3 stand-in for systemd,
// which keeps its pid across exec as systemd's LISTEN_PID requires) and
// passed as fd 3.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { spawn, spawnSync } from 'node:child_process'
import { BIN, assertWellFormed, isolatedArgs, rcptRequest } from '../helpers/policy-process'
import { connect, socketDir, canConnect } from '../helpers/daemon-process'
import { defaultListen } from '../../lib/cli'

const ROOT = path.resolve(__dirname, '..', '..')
const unit = (name: string): string => fs.readFileSync(path.join(ROOT, 'systemd', name), 'utf8')
const setting = (text: string, key: string): string | undefined => new RegExp(`^${key}=(.*)$`, 'm').exec(text)?.[1]

t.test('the units agree with the daemon: socket path, user, group, mode, ExecStart', async (t) => {
  const socket = unit('policyd-ts.socket')
  const service = unit('policyd-ts.service')
  t.equal(`unix:${setting(socket, 'ListenStream')}`, defaultListen({}), 'the socket is where --daemon listens without systemd')
  t.equal(setting(socket, 'SocketUser'), setting(service, 'User'))
  t.equal(setting(socket, 'SocketGroup'), 'postfix')
  t.equal(setting(socket, 'SocketMode'), '0660')
  const exec = setting(service, 'ExecStart') ?? ''
  const { nodeFlags } = require('../../scripts/node-flags.js') as { nodeFlags(): string[] }
  t.match(exec, new RegExp(`^\\S+/node ${nodeFlags().join(' ')} \\S+/policyd-ts/bin/policyd-ts --listen systemd$`), 'node with the flags of master.cf.example')
  t.equal(setting(service, 'ExecReload'), '/bin/kill -HUP $MAINPID', 'reload is HUP')
  t.match(setting(service, 'ReadWritePaths') ?? '', '/var/mta', 'the default db_path directory is writable under ProtectSystem=strict')
})

t.test('systemd-analyze verify accepts the units', async (t) => {
  const which = spawnSync('sh', ['-c', 'command -v systemd-analyze'], { encoding: 'utf8' })
  if (which.status !== 0) {
    t.skip('systemd-analyze is not installed on this machine')
    return
  }
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', path.join(ROOT, 'systemd', 'policyd-ts.socket')], { encoding: 'utf8', timeout: 30000 })
  t.equal(r.status, 0, r.stderr)
})

const ACTIVATE = `
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(16)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ['LISTEN_FDS'] = '1'
os.environ['LISTEN_PID'] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
`

t.test('socket activation: fd 3 served, TERM exits 0', async (t) => {
  const dir = t.testdir()
  const sock = path.join(socketDir(t), 'policy')
  const child = spawn('python3', ['-c', ACTIVATE, sock, process.execPath, BIN, '--listen', 'systemd', ...isolatedArgs(dir)], {
    env: { PATH: process.env.PATH },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  t.teardown(() => child.kill('SIGKILL'))
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  for (let i = 0; i < 500 && !(await canConnect(sock)); i++) await new Promise((r) => setTimeout(r, 20))
  const c = await connect(sock)
  t.match(await c.ask(rcptRequest()), /^action=DEFER_IF_PERMIT 4\.2\.0 Greylisted/)
  child.kill('SIGTERM')
  t.equal(await exited, 0)
  // Read after the exit: log lines are written in batches.
  t.match(fs.readFileSync(path.join(dir, 'policyd-ts.log'), 'utf8'), /listening on systemd socket \(fd 3\)/)
  assertWellFormed(c.output())
  t.equal(stderr, '')
})
