// policyd-ts postfix-config (lib/postfix-config.ts): the text from given
// facts, the checks against a file system and user database held in
// memory, and the warning about an unread policyd-spf.conf
// (lib/policyd-spf-conf.ts).
import t from 'tap'
import path from 'node:path'
import {
  commandLine,
  gatherFacts,
  mayAccess,
  renderPostfixConfig,
  type Facts,
  type FileInfo,
  type PostfixConfigRequest,
  type System,
} from '../lib/postfix-config'
import { POLICYD_SPF_CONF, unreadPolicydSpfConf, type FileProbe } from '../lib/policyd-spf-conf'
import { parseArgv } from '../lib/argv'

const NODE = '/usr/bin/node'
const PKG = '/usr/lib/node_modules/policyd-ts'

function facts(over: Partial<Facts> = {}): Facts {
  return {
    mode: 'spawn',
    version: '9.9.9',
    service: 'policy',
    userName: 'nobody',
    nodePath: NODE,
    nodeVersion: 'v20.1.0',
    nodeFlags: ['--single-threaded-gc'],
    packageDir: PKG,
    programArgs: [],
    findings: [],
    userGroup: 'nogroup',
    dbDir: '/var/mta',
    units: null,
    ...over,
  }
}

/** The lines of one `# ---- title` section, without its comments. */
function section(text: string, title: string): string[] {
  const lines = text.split('\n')
  const start = lines.findIndex((l) => l.startsWith(`# ---- ${title}`))
  if (start === -1) throw new Error(`no section ${title}`)
  const end = lines.findIndex((l, i) => i > start && l.startsWith('# ---- '))
  return lines.slice(start + 1, end === -1 ? undefined : end).filter((l) => l !== '' && !l.startsWith('#'))
}

t.test('the master.cf entry names the given node, its flags, the package and the user', async (t) => {
  const text = renderPostfixConfig(facts())
  t.same(section(text, 'master.cf'), [
    'policy    unix  -       n       n       -       0       spawn',
    '  user=nobody argv=/usr/bin/node --single-threaded-gc /usr/lib/node_modules/policyd-ts/bin/policyd-ts',
  ])
  t.same(section(text, 'main.cf'), [
    'smtpd_recipient_restrictions =',
    '    permit_mynetworks,',
    '    permit_sasl_authenticated,',
    '    reject_unauth_destination,',
    '    check_policy_service unix:private/policy',
    'smtpd_data_restrictions =',
    '    check_policy_service unix:private/policy',
    'policy_time_limit = 3600s',
  ])
  t.match(text, /^# Add check_policy_service to your smtpd_recipient_restrictions AFTER\n# reject_unauth_destination/m, 'says where the check goes')
  t.same(section(text, 'then, as root'), [
    'runuser -u nobody -- /usr/bin/node --single-threaded-gc /usr/lib/node_modules/policyd-ts/bin/policyd-ts --test-mode',
    'postfix reload',
  ])
  for (const line of text.split('\n')) t.ok(line.length <= 80 || !line.startsWith('#'), `comment within 80 columns: ${line}`)
})

t.test('with rate limiting the check comes before the permit_* entries and into the end-of-data restrictions', async (t) => {
  const text = renderPostfixConfig(facts({ ratelimit: true }))
  t.same(section(text, 'main.cf'), [
    'smtpd_recipient_restrictions =',
    '    check_policy_service unix:private/policy,',
    '    permit_mynetworks,',
    '    permit_sasl_authenticated,',
    '    reject_unauth_destination',
    'smtpd_data_restrictions =',
    '    check_policy_service unix:private/policy',
    'smtpd_end_of_data_restrictions =',
    '    check_policy_service unix:private/policy',
    'policy_time_limit = 3600s',
  ])
  t.match(text, /^# Rate limiting is on: the check goes BEFORE permit_mynetworks/m)
  const facts2 = gatherFacts(request({}, { greylist_enabled: false, ratelimit_enabled: true }), fakeSystem(BASE_FILES, USERS))
  t.equal(facts2.ratelimit, true, 'taken from the configuration')
  t.notOk(facts2.findings.some((x) => x.text.includes('no database is needed')), 'rate limits need the database even without greylisting')
})

t.test('service name, user, config file and options go where Postfix and the shell read them', async (t) => {
  const f = facts({
    service: 'policyd-spf',
    userName: 'policyd-spf',
    nodeFlags: [],
    programArgs: ['--config', '/etc/postfix-policyd-spf-python/policyd-spf.conf', '--greylist_text=Come back later', "--x=it's"],
  })
  const text = renderPostfixConfig(f)
  t.same(section(text, 'master.cf'), [
    'policyd-spf unix  -       n       n       -       0       spawn',
    "  user=policyd-spf argv=/usr/bin/node /usr/lib/node_modules/policyd-ts/bin/policyd-ts --config /etc/postfix-policyd-spf-python/policyd-spf.conf { --greylist_text=Come back later } --x=it's",
  ])
  t.match(text, /^    check_policy_service unix:private\/policyd-spf$/m)
  t.match(text, /^policyd-spf_time_limit = 3600s$/m, 'the time limit is named after the service')
  t.match(text, /^runuser -u policyd-spf -- \/usr\/bin\/node \S+\/bin\/policyd-ts --config \S+ '--greylist_text=Come back later' '--x=it'\\''s' --test-mode$/m, 'quoted for the shell')
  t.same(commandLine(f).slice(0, 2), [NODE, path.join(PKG, 'bin', 'policyd-ts')])
})

t.test('findings: labelled comments; their fixes come as commands before the reload', async (t) => {
  const text = renderPostfixConfig(
    facts({
      findings: [
        { kind: 'ok', text: 'user nobody exists' },
        { kind: 'note', text: 'something to know' },
        { kind: 'problem', text: 'database directory /var/mta does not exist', fix: 'install -d -o nobody -g nogroup -m 0700 /var/mta' },
        { kind: 'problem', text: 'a problem without a safe fix '.repeat(4).trim() },
      ],
    }),
  )
  t.match(text, /^# ok: user nobody exists\n# note: something to know\n# PROBLEM: database directory \/var\/mta does not exist \(a command below fixes\n#   it\)\n# PROBLEM: a problem/m)
  t.notMatch(text, /^[^#]*a problem without/m, 'nothing but the fix becomes a command')
  const shell = section(text, 'then, as root')
  t.same(shell[0], 'install -d -o nobody -g nogroup -m 0700 /var/mta')
  t.equal(shell.at(-1), 'postfix reload')
})

t.test('daemon mode: no master.cf entry, the relative socket with default_action DUNNO, the shipped units for this machine', async (t) => {
  const fs = await import('node:fs')
  const shipped = (name: string): string => fs.readFileSync(path.join(__dirname, '..', 'systemd', name), 'utf8')
  const text = renderPostfixConfig(facts({
    mode: 'daemon', userName: 'policyd-ts', userGroup: 'policyd-ts', dbDir: '/srv/mta', programArgs: ['--config', '/etc/p.conf'],
    units: { socket: shipped('policyd-ts.socket'), service: shipped('policyd-ts.service') },
  }))
  t.notMatch(text, /master\.cf: add/, 'no master.cf entry')
  t.match(text, /^ {4}check_policy_service \{ unix:policyd-ts\/policy, default_action=DUNNO \}$/m)
  const socket = section(text, '/etc/systemd/system/policyd-ts.socket')
  t.ok(socket.includes('ListenStream=/var/spool/postfix/policyd-ts/policy'))
  t.ok(socket.includes('SocketUser=policyd-ts'))
  const service = section(text, '/etc/systemd/system/policyd-ts.service')
  t.ok(service.includes(`ExecStart=${NODE} --single-threaded-gc ${PKG}/bin/policyd-ts --config /etc/p.conf --listen systemd`), 'this node, this package, the given options')
  t.ok(service.includes('User=policyd-ts') && service.includes('Group=policyd-ts'))
  t.ok(service.includes('ReadWritePaths=/srv/mta'), 'the database directory of this configuration')
  t.same(section(text, 'then, as root').slice(0, 2), ['systemctl daemon-reload', 'systemctl enable --now policyd-ts.socket'])
  t.match(renderPostfixConfig(facts({ mode: 'daemon', units: null })), /cannot be read: the units ship there/)

  const redis = renderPostfixConfig(facts({ mode: 'daemon', dbDir: null, units: { socket: shipped('policyd-ts.socket'), service: shipped('policyd-ts.service') } }))
  const redisService = section(redis, '/etc/systemd/system/policyd-ts.service')
  t.notOk(redisService.some((l) => l.startsWith('ReadWritePaths=')), 'store = redis: no ReadWritePaths (a missing /var/mta would stop the unit)')
  t.ok(redisService.includes('ProtectSystem=strict'), 'the other settings stay')
})

t.test('store = redis: no database directory to check or to make', async (t) => {
  const f = gatherFacts(request({}, { store: 'redis' }), fakeSystem(BASE_FILES, USERS))
  t.same(problems(f), [], 'a missing /var/mta is no problem')
  t.same(fixes(f), [])
  t.ok(f.findings.some((x) => x.kind === 'ok' && /^store = redis: no database file on this host/.test(x.text)))
  t.equal(f.dbDir, null)
  t.equal(gatherFacts(request(), fakeSystem(BASE_FILES, USERS)).dbDir, '/var/mta', 'the SQLite store: the directory of db_path')
})

t.test('mayAccess decides by owner, then group, then others, as the kernel does', async (t) => {
  const nobody = { uid: 65534, gids: [65534] }
  const file = (uid: number, gid: number, mode: number): FileInfo => ({ uid, gid, mode, isDirectory: false })
  t.ok(mayAccess(file(0, 0, 0o644), nobody, 4))
  t.notOk(mayAccess(file(0, 0, 0o640), nobody, 4))
  t.ok(mayAccess(file(0, 65534, 0o640), nobody, 4), 'by group')
  t.notOk(mayAccess(file(65534, 0, 0o077), nobody, 4), 'the owner class decides even when others may')
  t.notOk(mayAccess(file(0, 0, 0o755), nobody, 2 | 1))
  t.ok(mayAccess(file(65534, 0, 0o700), nobody, 2 | 1))
  t.ok(mayAccess(file(1, 1, 0o000), { uid: 0, gids: [0] }, 4 | 2), 'root')
})

// ---- gatherFacts against a system in memory ---------------------------------

interface Entry {
  uid?: number
  gid?: number
  mode: number
  dir?: boolean
  /** A symbolic link to this absolute path. */
  link?: string
  text?: string
}

function fakeSystem(files: Record<string, Entry>, users: Record<string, { uid: number; gid: number; gids?: number[] }> = {}, mailOwner: string | null = 'postfix'): System {
  const groups: Record<number, string> = { 0: 'root', 65534: 'nogroup', 108: 'policyd-spf' }
  const resolve = (file: string): string => {
    // Resolve links of every prefix, as realpath(3) does.
    const parts = file.split('/').filter(Boolean)
    let cur = '/'
    for (const part of parts) {
      cur = path.join(cur, part)
      for (let hops = 0; files[cur]?.link !== undefined; hops++) {
        if (hops > 8) throw new Error('ELOOP')
        cur = files[cur].link!
      }
    }
    return cur
  }
  return {
    getent(database, key) {
      if (database === 'group') return groups[Number(key)] === undefined ? null : `${groups[Number(key)]}:x:${key}:`
      const byUid = Object.entries(users).find(([, u]) => String(u.uid) === key)
      const name = users[key] ? key : byUid?.[0]
      return name === undefined ? null : `${name}:x:${users[name].uid}:${users[name].gid}::/nonexistent:/usr/sbin/nologin`
    },
    groupIds: (user) => users[user]?.gids ?? (users[user] ? [users[user].gid] : []),
    mailOwner: () => mailOwner,
    stat(file) {
      const real = resolve(file)
      if (real === '/') return { uid: 0, gid: 0, mode: 0o40755, isDirectory: true }
      const e = files[real]
      if (e === undefined) return 'ENOENT'
      return { uid: e.uid ?? 0, gid: e.gid ?? 0, mode: e.mode | (e.dir ? 0o40000 : 0o100000), isDirectory: e.dir === true }
    },
    readdir(dir) {
      const real = resolve(dir)
      const prefix = real === '/' ? '/' : `${real}/`
      return Object.keys(files).filter((f) => f.startsWith(prefix) && !f.slice(prefix.length).includes('/')).map((f) => f.slice(prefix.length))
    },
    realpath(file) {
      const real = resolve(file)
      if (real !== '/' && files[real] === undefined) throw new Error(`ENOENT: ${file}`)
      return real
    },
    readFile: (file) => files[resolve(file)]?.text ?? null,
  }
}

const dir = (mode = 0o755, uid = 0, gid = 0): Entry => ({ mode, dir: true, uid, gid })
const BASE_FILES: Record<string, Entry> = {
  '/usr': dir(),
  '/usr/bin': dir(),
  '/usr/bin/node': { mode: 0o755 },
  '/usr/lib': dir(),
  '/usr/lib/node_modules': dir(),
  [PKG]: dir(),
  [`${PKG}/bin`]: dir(),
  [`${PKG}/bin/policyd-ts`]: { mode: 0o755 },
  [`${PKG}/dist`]: dir(),
  [`${PKG}/dist/lib`]: dir(),
  [`${PKG}/dist/lib/cli.js`]: { mode: 0o644 },
  '/var': dir(),
  '/etc': dir(),
}
const USERS = { nobody: { uid: 65534, gid: 65534 }, root: { uid: 0, gid: 0 }, postfix: { uid: 107, gid: 113 }, 'policyd-spf': { uid: 104, gid: 108 } }

function request(over: Partial<PostfixConfigRequest> = {}, config: Partial<PostfixConfigRequest['loaded']['config']> = {}): PostfixConfigRequest {
  return {
    mode: 'spawn',
    service: 'policy',
    userName: 'nobody',
    version: '9.9.9',
    nodePath: NODE,
    nodeVersion: 'v20.1.0',
    nodeFlags: ['--single-threaded-gc'],
    packageDir: PKG,
    options: {},
    loaded: {
      configFile: '/etc/policyd-ts/policyd-ts.conf',
      configFileFound: false,
      errors: [],
      config: { spf_enabled: true, greylist_enabled: true, db_path: '/var/mta/policyd-ts.sqlite', ...config },
    },
    ignoredEnv: [],
    ...over,
  }
}

const problems = (f: Facts): string[] => f.findings.filter((x) => x.kind === 'problem').map((x) => x.text)
const fixes = (f: Facts): string[] => f.findings.flatMap((x) => (x.fix === undefined ? [] : [x.fix]))

t.test('a fresh machine: everything fine but the database directory, which install -d makes', async (t) => {
  const f = gatherFacts(request(), fakeSystem(BASE_FILES, USERS))
  t.same(problems(f), ['database directory /var/mta does not exist'])
  t.same(fixes(f), ['install -d -o nobody -g nogroup -m 0700 /var/mta'])
  t.ok(f.findings.some((x) => x.kind === 'ok' && x.text === 'user nobody exists (uid 65534, group nogroup)'))
  t.ok(f.findings.some((x) => x.kind === 'ok' && x.text === `nobody can read the 2 files of ${PKG}`))
  t.ok(f.findings.some((x) => x.kind === 'note' && /config file \/etc\/policyd-ts\/policyd-ts.conf \(not found/.test(x.text)))
})

t.test('the database directory: writable, owned by another user, shared with other files, world-writable', async (t) => {
  const withMta = (entry: Entry, extra: Record<string, Entry> = {}): Facts => gatherFacts(request(), fakeSystem({ ...BASE_FILES, '/var/mta': entry, ...extra }, USERS))
  const good = withMta(dir(0o700, 65534, 65534))
  t.same(problems(good), [])
  t.ok(good.findings.some((x) => x.text === 'nobody can write the database directory /var/mta (owner nobody, mode 0700)'))

  const rootOwned = withMta(dir(0o755), { '/var/mta/policyd-ts.sqlite': { mode: 0o600 } })
  t.same(problems(rootOwned), ['nobody cannot write the database directory /var/mta (owner root, mode 0755)'])
  t.same(fixes(rootOwned), ['install -d -o nobody -g nogroup -m 0700 /var/mta'], 'install -d fixes owner and mode of an existing directory')

  const shared = withMta(dir(0o755), { '/var/mta/something-else': { mode: 0o644 } })
  t.match(problems(shared)[0], /which holds other files: give db_path a directory of its own/)
  t.same(fixes(shared), [], 'no chown of a directory other programs use')

  const open = withMta(dir(0o1777))
  t.match(problems(open)[0], /world-writable: policyd-ts refuses a database there/)
  t.same(fixes(open), [])

  const rootFiles = withMta(dir(0o700, 65534, 65534), {
    '/var/mta/policyd-ts.sqlite': { mode: 0o600 },
    '/var/mta/policyd-ts.sqlite-wal': { mode: 0o600, uid: 65534 },
    '/var/mta/policyd-ts.sqlite-shm': { mode: 0o644 },
  })
  t.same(problems(rootFiles), ['nobody cannot write /var/mta/policyd-ts.sqlite, /var/mta/policyd-ts.sqlite-shm'])
  t.same(fixes(rootFiles), ['chown nobody:nogroup /var/mta/policyd-ts.sqlite /var/mta/policyd-ts.sqlite-shm'])

  const blocked = gatherFacts(request({}, { db_path: '/srv/private/grey/db.sqlite' }), fakeSystem({ ...BASE_FILES, '/srv': dir(), '/srv/private': dir(0o700), '/srv/private/grey': dir(0o700, 65534) }, USERS))
  t.same(problems(blocked), ['nobody cannot enter /srv/private (owner root, mode 0700), above the database directory /srv/private/grey'])

  const off = gatherFacts(request({}, { greylist_enabled: false }), fakeSystem(BASE_FILES, USERS))
  t.same(problems(off), [], 'without greylisting no database is needed')
  t.ok(off.findings.some((x) => x.text === 'greylisting and rate limiting are off: no database is needed'))
})

t.test('the spawn user: missing, root, the mail system owner', async (t) => {
  const missing = gatherFacts(request({ userName: 'policyd-ts' }), fakeSystem(BASE_FILES, USERS))
  t.match(problems(missing)[0], /^user policyd-ts does not exist/)
  t.same(fixes(missing), [
    'useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin policyd-ts',
    'install -d -o policyd-ts -g policyd-ts -m 0700 /var/mta',
  ], 'the group useradd makes')
  for (const name of ['root', 'postfix']) {
    const f = gatherFacts(request({ userName: name }), fakeSystem({ ...BASE_FILES, '/var/mta': dir(0o700) }, USERS))
    t.match(problems(f)[0], /^spawn\(8\) refuses to run a command as root or as the mail system owner \(postfix\)/, name)
  }
  const otherOwner = gatherFacts(request({ userName: 'postfix' }), fakeSystem({ ...BASE_FILES, '/var/mta': dir(0o700, 107) }, USERS, 'mailowner'))
  t.same(problems(otherOwner), [], "postconf's mail_owner, not the usual name, is the one refused")
})

t.test('node and package the spawn user cannot reach', async (t) => {
  const nvm = gatherFacts(
    request({ nodePath: '/root/.nvm/versions/node/v20.1.0/bin/node' }),
    fakeSystem({ ...BASE_FILES, '/var/mta': dir(0o700, 65534), '/root': dir(0o700), '/root/.nvm': dir(), '/root/.nvm/versions': dir(), '/root/.nvm/versions/node': dir(), '/root/.nvm/versions/node/v20.1.0': dir(), '/root/.nvm/versions/node/v20.1.0/bin': dir(), '/root/.nvm/versions/node/v20.1.0/bin/node': { mode: 0o755 } }, USERS),
  )
  t.same(problems(nvm), ["nobody cannot run /root/.nvm/versions/node/v20.1.0/bin/node: cannot enter /root (owner root, mode 0700); use a node installed for all users (the distribution's, or NodeSource's)"])

  const umask077 = gatherFacts(request(), fakeSystem({ ...BASE_FILES, '/var/mta': dir(0o700, 65534), [`${PKG}/dist/lib/cli.js`]: { mode: 0o600 }, [`${PKG}/dist/lib/x`]: dir(0o700) }, USERS))
  t.same(problems(umask077), [`nobody cannot read 2 of the files or directories policyd-ts needs, e.g. ${PKG}/dist/lib/cli.js (owner root, mode 0600); ${PKG}/dist/lib/x (owner root, mode 0700)/`])
  t.same(fixes(umask077), [`chmod -R a+rX ${PKG}`])

  // A checkout whose node_modules links elsewhere: the link's target and the directories above it count too.
  const linked = gatherFacts(
    request(),
    fakeSystem({ ...BASE_FILES, '/var/mta': dir(0o700, 65534), [`${PKG}/node_modules`]: { mode: 0o777, link: '/home/dev/nm' }, '/home': dir(), '/home/dev': dir(0o750, 1000, 1000), '/home/dev/nm': dir(), '/home/dev/nm/dep.js': { mode: 0o644 } }, USERS),
  )
  t.same(problems(linked), ['nobody cannot read 1 of the files or directories policyd-ts needs, e.g. /home/dev (owner 1000, mode 0750), above /home/dev/nm; install the package where every user can read it'])
  t.same(fixes(linked), [], 'no chmod outside the package')

  const loop = gatherFacts(request(), fakeSystem({ ...BASE_FILES, '/var/mta': dir(0o700, 65534), [`${PKG}/self`]: { mode: 0o777, link: PKG } }, USERS))
  t.same(problems(loop), [], 'a link back into the package is walked once')
})

t.test('config: errors, the environment spawn(8) does not pass, options onto the command line', async (t) => {
  const f = gatherFacts(
    request({
      configPath: '/etc/policyd-ts/other.conf',
      options: { db_path: '/srv/grey/db.sqlite' },
      ignoredEnv: ['POLICYD_TS_DEBUGLEVEL'],
      loaded: { configFile: '/etc/policyd-ts/other.conf', configFileFound: true, errors: ['/etc/policyd-ts/other.conf:3: unknown key bogus'], config: { spf_enabled: false, greylist_enabled: true, db_path: '/srv/grey/db.sqlite' } },
    }),
    fakeSystem({ ...BASE_FILES, '/srv': dir(), '/srv/grey': dir(0o700, 65534) }, USERS),
  )
  t.same(f.programArgs, ['--config', '/etc/policyd-ts/other.conf', '--db_path=/srv/grey/db.sqlite'])
  t.same(problems(f), ['configuration error: /etc/policyd-ts/other.conf:3: unknown key bogus (policyd-ts --test-mode with the same arguments shows them all)'])
  t.ok(f.findings.some((x) => x.kind === 'note' && x.text.startsWith('POLICYD_TS_DEBUGLEVEL set in this shell: left out')))
})

t.test("policyd-spf's config file on the machine: not read, or read with greylisting on", async (t) => {
  const files = { ...BASE_FILES, '/var/mta': dir(0o700, 104, 108), '/etc/postfix-policyd-spf-python': dir(), [POLICYD_SPF_CONF]: { mode: 0o644 } }
  const unread = gatherFacts(request({ userName: 'policyd-spf' }), fakeSystem(files, USERS))
  t.match(problems(unread)[0], /^\/etc\/postfix-policyd-spf-python\/policyd-spf\.conf exists but would not be read \(the config file is \/etc\/policyd-ts\/policyd-ts\.conf\)\. In place of policyd-spf: policyd-ts postfix-config --config \/etc\/postfix-policyd-spf-python\/policyd-spf\.conf --service policyd-spf --user policyd-spf;/)

  const read = gatherFacts(
    request({ userName: 'policyd-spf', configPath: POLICYD_SPF_CONF, loaded: { configFile: POLICYD_SPF_CONF, configFileFound: true, errors: [], config: { spf_enabled: true, greylist_enabled: true, db_path: '/var/mta/policyd-ts.sqlite' } } }),
    fakeSystem(files, USERS),
  )
  t.same(problems(read), [])
  t.ok(read.findings.some((x) => x.kind === 'note' && x.text === `greylisting is on (the default), which policyd-spf did not do: greylist_enabled = no in ${POLICYD_SPF_CONF} keeps SPF only`))
})

t.test('the unread policyd-spf.conf warning of every start and of --test-mode', async (t) => {
  const probe = (existing: string[], links: Record<string, string> = {}): FileProbe => ({
    existsSync: (f) => existing.includes(f),
    realpathSync: (f) => {
      if (!existing.includes(f) && links[f] === undefined) throw new Error('ENOENT')
      return links[f] ?? f
    },
  })
  const read = (configFile: string, configFileFound = true, spf = true) => ({ configFile, configFileFound, config: { spf_enabled: spf } })
  t.equal(
    unreadPolicydSpfConf(read('/etc/policyd-ts/policyd-ts.conf', false), probe([POLICYD_SPF_CONF])),
    `${POLICYD_SPF_CONF} exists but is not read (the config file is /etc/policyd-ts/policyd-ts.conf, not found): its settings do not apply. To use them, name it after bin/policyd-ts in master.cf's argv, as policyd-spf takes it; if policyd-spf still checks SPF here, set spf_enabled = no`,
    "Debian's master.cf line with only the program replaced",
  )
  t.match(unreadPolicydSpfConf(read('/etc/policyd-ts/policyd-ts.conf'), probe([POLICYD_SPF_CONF, '/etc/policyd-ts/policyd-ts.conf'])), /exists but is not read \(the config file is \/etc\/policyd-ts\/policyd-ts\.conf\)/)
  t.equal(unreadPolicydSpfConf(read(POLICYD_SPF_CONF), probe([POLICYD_SPF_CONF])), null, 'read')
  t.equal(unreadPolicydSpfConf(read('/etc/policyd-ts/policyd-ts.conf'), probe([POLICYD_SPF_CONF], { '/etc/policyd-ts/policyd-ts.conf': POLICYD_SPF_CONF })), null, 'read through a link')
  t.equal(unreadPolicydSpfConf(read('/etc/policyd-ts/policyd-ts.conf', false), probe([])), null, 'no policyd-spf on the machine')
  t.equal(unreadPolicydSpfConf(read('/etc/policyd-ts/policyd-ts.conf', true, false), probe([POLICYD_SPF_CONF])), null, 'SPF is off here: policyd-spf may check it beside')
})

t.test('postfix-config is a command of the spawn path reader, so it never serves requests', async (t) => {
  const parsed = parseArgv(['postfix-config', '--user', 'policyd-spf', '--service', 'policyd-spf'])
  t.equal(parsed.command, 'postfix-config')
})
