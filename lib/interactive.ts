// The interactive side of the command line: --help, --version, --test-mode,
// spfquery, and argument errors at a terminal. yargs costs ~70 ms to load,
// so only this path loads it (see lib/cli.ts).

import { DAEMON_FLAG, INTERACTIVE_OPTIONS, type InteractiveName, type InteractiveOption, type ParsedArgv } from './argv'
import { CONFIG_KEYS, DEFAULT_CONFIG_FILE, ENV_PREFIX, OPTIONS, formatValue } from './config'

export const EX_USAGE = 64
export const EX_CONFIG = 78

type YargsFactory = typeof import('yargs').default
type Cli = ReturnType<YargsFactory>

/**
 * The program's one yargs configuration: runInteractive parses with it, and
 * test/argv.test.ts checks that lib/argv.ts (the spawn path's reader) reads
 * every command line the same way.
 */
export function buildCli(yargs: YargsFactory, versionText: string): Cli {
  const cli = yargs([])
    .scriptName('policyd-ts')
    .usage('Usage: policyd-ts [--config FILE] [--KEY VALUE ...] [--test-mode [--user USER]]\n       policyd-ts spfquery --ip ADDR --sender ADDR --helo NAME\n\nPostfix SMTP access policy server (SPF and greylisting). Without options it\nserves policy requests on stdin/stdout, as Postfix spawn(8) runs it.')
    .parserConfiguration({
      'camel-case-expansion': false,
      'dot-notation': false,
      'boolean-negation': false,
      'duplicate-arguments-array': false,
      'parse-numbers': false,
      'parse-positional-numbers': false,
    })
    .option('config', {
      type: 'string',
      requiresArg: true,
      describe: `Config file (KEY = value lines); default ${DEFAULT_CONFIG_FILE}, or $${ENV_PREFIX}CONFIG`,
    })
    .command('$0 [file]', false, (y) => y.positional('file', { type: 'string', describe: 'config file, as policyd-spf takes it (same as --config)' }))
    .command('spfquery', 'Check SPF as the server would and print the result word, why, and the action', (y) =>
      y
        .option('ip', { type: 'string', demandOption: true, describe: 'client IP address' })
        .option('sender', { type: 'string', default: '', describe: 'envelope sender (empty: the null sender)' })
        .option('helo', { type: 'string', default: '', describe: 'HELO/EHLO name' })
        .option('recipient', { type: 'string', default: 'postmaster@localhost', describe: 'envelope recipient (for Per_User and receiver=)' }),
    )
    .command('postfix-config', 'Print the master.cf and main.cf lines for this machine (node, package, spawn user), with checks', (y) =>
      (require('./postfix-config') as typeof import('./postfix-config')).postfixConfigOptions(y),
    )
    .command('greylist <action> [kind] [value]', 'The greylisting state in the store: list, delete, whitelist [client|sender|recipient VALUE], unwhitelist client|sender|recipient VALUE', (y) =>
      y
        .positional('action', { choices: ['list', 'delete', 'whitelist', 'unwhitelist'] as const, describe: 'what to do' })
        .positional('kind', { type: 'string', choices: ['client', 'sender', 'recipient'], describe: 'whitelist, unwhitelist: what VALUE is' })
        .positional('value', { type: 'string', describe: 'an IP address or network (client), an address (sender, recipient)' })
        .option('client', { type: 'string', requiresArg: true, describe: 'list, delete: client network (or spf:domain) pattern; * and ? match' })
        .option('sender', { type: 'string', requiresArg: true, describe: 'list, delete: sender pattern' })
        .option('recipient', { type: 'string', requiresArg: true, describe: 'list, delete: recipient pattern' })
        .option('limit', { type: 'string', default: '1000', describe: 'list: at most this many triplets' })
        .option('all', { type: 'boolean', describe: 'delete: every triplet' })
        .option('ttl', { type: 'string', requiresArg: true, describe: 'whitelist: for this long (3600, 12h, 30d); default for ever' })
        .option('note', { type: 'string', requiresArg: true, describe: 'whitelist: why, shown by greylist whitelist' })
        .option('json', { type: 'boolean', describe: 'JSON instead of a table' }),
    )
    // [hb] the rate-limit ops commands (lib/ops/ratelimit.ts) and the migration commands (lib/migrate.ts).
    .command('ratelimit <action> [key] [limits]', 'The rate-limit state in the store: show KEY, list [--over], top, reset KEY|--all, set [KEY LIMITS], unset KEY, hits [--since]', (y) =>
      y
        .positional('action', { choices: ['show', 'list', 'top', 'reset', 'set', 'unset', 'hits'] as const, describe: 'what to do' })
        .positional('key', { type: 'string', describe: 'sasl:USER, sasl:@DOMAIN, sender:ADDRESS, sender:@DOMAIN, sender:<>, client:ADDRESS[/PREFIX] or global' })
        .positional('limits', { type: 'string', describe: 'set: the limits of KEY, such as "5000rcpt/1d, 100msg/1h", or unlimited' })
        .option('over', { type: 'boolean', describe: 'list: only identities that used up a limit' })
        .option('limit', { type: 'string', requiresArg: true, describe: 'list: at most this many identities (1000); top: this many (10)' })
        .option('all', { type: 'boolean', describe: 'reset: every identity' })
        .option('ttl', { type: 'string', requiresArg: true, describe: 'set: for this long (3600, 12h, 30d); default for ever' })
        .option('note', { type: 'string', requiresArg: true, describe: 'set: why, shown by ratelimit set and show' })
        .option('since', { type: 'string', requiresArg: true, describe: 'hits: since this long ago (12h, 7d) or this ISO time; default 1d. Prints nothing when there is none (for cron mail)' })
        .option('json', { type: 'boolean', describe: 'JSON instead of a table' }),
    )
    // The file is <source>: a positional named "file" would be read as the config file ($0 [file]).
    .command('migrate <from> <source>', 'Print the policyd-ts configuration equivalent to a policyd-rate-limit or postfixlimit configuration file, and what has no equivalent', (y) =>
      y
        .positional('from', { choices: ['policyd-rate-limit', 'postfixlimit'] as const, describe: 'the program the file belongs to' })
        .positional('source', { type: 'string', describe: 'its configuration file (/etc/policyd-rate-limit.yaml, /etc/postfixlimit.conf)' })
        .option('overrides-file', { type: 'string', requiresArg: true, default: '/etc/policyd-ts/ratelimit_overrides', describe: 'where the per-key limits are to be written (ratelimit_overrides)' })
        .option('json', { type: 'boolean', describe: 'JSON: the configuration, the overrides file and the notes apart' }),
    )
    // [/hb]
    .command('stats', 'The counters every process added to the store (requests, decisions, store errors), summed over hosts', (y) =>
      y.option('json', { type: 'boolean', describe: 'JSON, per host too' }).option('prometheus', { type: 'boolean', describe: "Prometheus text, for node_exporter's textfile collector" }),
    )
    .command('store <action>', 'The configured store: check (integrity, schema, row counts), purge (delete every expired row), migrate --from sqlite --to redis (copy the greylisting state of db_path to the redis_* store)', (y) =>
      y
        .positional('action', { choices: ['check', 'purge', 'migrate'] as const })
        .option('json', { type: 'boolean', describe: 'JSON instead of text' })
        // [hg] store migrate (lib/store/migrate.ts)
        .option('from', { type: 'string', requiresArg: true, choices: ['sqlite', 'redis'], describe: 'migrate: the store to copy from (sqlite: db_path)' })
        .option('to', { type: 'string', requiresArg: true, choices: ['sqlite', 'redis'], describe: 'migrate: the store to copy to (redis: redis_url, redis_prefix, ...)' })
        .option('dry-run', { type: 'boolean', describe: 'migrate: count what would be copied, write nothing' }),
    )
    .strict()
    .wrap(Math.min(100, process.stdout.columns || 100))
    .exitProcess(false)
  for (const [name, spec] of Object.entries(INTERACTIVE_OPTIONS) as Array<[InteractiveName, InteractiveOption]>) {
    if (name === 'help') cli.help(name, spec.describe)
    else if (name === 'version') cli.version(name, spec.describe, versionText)
    else if (spec.takes === 'flag') cli.option(name, { type: 'boolean', describe: spec.describe })
    else cli.option(name, { type: 'string', requiresArg: true, describe: spec.describe })
    if (spec.alias !== undefined) cli.alias(name, spec.alias)
  }
  cli.option(DAEMON_FLAG, { type: 'boolean', describe: 'Serve every smtpd as one daemon on the listen socket (default: the socket systemd passes, else unix:/var/spool/postfix/policyd-ts/policy) instead of one connection on stdin/stdout' })
  // --user belongs to --test-mode (and to postfix-config, which has its own).
  cli.check((args) => args.user === undefined || args['test-mode'] === true || (args._ as unknown[])[0] === 'postfix-config' || '--user is given only with --test-mode (or postfix-config)')
  // As lib/argv.ts reads it: a word that is not a command is the config file only when it is a path.
  cli.check((args) => typeof args.file !== 'string' || args.file.includes('/') || `unexpected argument ${JSON.stringify(args.file)} (a config file is given as a path: ./${args.file})`)
  // Every value is read as text and validated by config.ts, so that the
  // command line, the environment and the file share one parser.
  for (const key of CONFIG_KEYS) {
    const spec = OPTIONS[key]
    cli.option(key, { type: 'string', requiresArg: true, describe: `${spec.doc} [default: ${spec.default === '' ? '(empty)' : spec.default}]`, group: 'Configuration keys (also in the config file and as POLICYD_TS_<KEY>):' })
  }
  return cli
}

/** A yargs result of buildCli's configuration in the terms of lib/argv.ts's ParsedArgv. */
export function readArgs(args: Record<string, unknown>): Omit<ParsedArgv, 'errors'> {
  const options: Record<string, string> = {}
  for (const key of CONFIG_KEYS) if (typeof args[key] === 'string') options[key] = args[key] as string
  const interactive: ParsedArgv['interactive'] = new Map()
  for (const [name, spec] of Object.entries(INTERACTIVE_OPTIONS) as Array<[InteractiveName, InteractiveOption]>) {
    const value = args[name]
    if (spec.takes === 'flag' ? value === true : typeof value === 'string') interactive.set(name, value as string | true)
  }
  const configPath = typeof args.config === 'string' ? args.config : typeof args.file === 'string' ? args.file : undefined
  const command = (args._ as unknown[])[0]
  return { options, configPath, interactive, daemon: args.daemon === true, command: typeof command === 'string' ? command : undefined }
}

export async function runInteractive(argv: string[]): Promise<number> {
  const { default: yargs } = (await import('yargs')) as { default: YargsFactory }
  const { version } = require('./version') as typeof import('./version')
  let failure: string | null = null
  const cli = buildCli(yargs, version()).fail((msg, err) => {
    failure = msg ?? err?.message ?? 'bad arguments'
  })
  const args = (await cli.parseAsync(argv)) as Record<string, unknown>
  if (failure !== null) {
    process.stderr.write(`policyd-ts: ${failure}\nTry 'policyd-ts --help'.\n`)
    return EX_USAGE
  }
  if (args.help || args.version) return 0

  const { options, configPath, interactive, command } = readArgs(args)
  if (interactive.has('test-mode')) return testMode(options, configPath, interactive.get('user') as string | undefined)
  if (command === 'postfix-config') {
    const { runPostfixConfig } = require('./postfix-config') as typeof import('./postfix-config')
    return runPostfixConfig(args as unknown as import('./postfix-config').PostfixConfigArgs, options, configPath)
  }
  if (command === 'greylist' || command === 'stats' || command === 'store' || command === 'ratelimit') return runOps(command, args, options, configPath)
  if (command === 'migrate') return runMigrate(args) // [hb]
  if (command === 'spfquery') {
    return runSpfQuery({ ip: String(args.ip), sender: String(args.sender), helo: String(args.helo), recipient: String(args.recipient) }, options, configPath)
  }

  const { readConfig } = require('./read-config') as typeof import('./read-config')
  const { runSpawn } = require('./spawn') as typeof import('./spawn')
  await runSpawn({ loaded: readConfig(options, configPath), argvErrors: [] })
  return 0
}

/** greylist, stats, store: the ops commands on the configured store (lib/ops.ts). */
async function runOps(command: 'greylist' | 'stats' | 'store' | 'ratelimit', args: Record<string, unknown>, options: Record<string, string>, configPath: string | undefined): Promise<number> {
  const { readConfig } = require('./read-config') as typeof import('./read-config')
  const ops = require('./ops') as typeof import('./ops')
  const loaded = readConfig(options, configPath)
  if (loaded.errors.length > 0) {
    // db_path or a greylist_* key may be among them: acting on another store than meant would be worse.
    process.stderr.write(loaded.errors.map((e) => `policyd-ts: error: ${e}\n`).join(''))
    return EX_CONFIG
  }
  const io: import('./ops').OpsIo = {
    out: (text) => process.stdout.write(text),
    err: (text) => process.stderr.write(text),
    now: () => Date.now() / 1000,
  }
  const str = (name: string): string | undefined => (typeof args[name] === 'string' ? (args[name] as string) : undefined)
  const json = args.json === true
  if (command === 'store' && args.action === 'migrate') {
    // [hg] both stores come from the configuration, whichever `store` names
    const { runStoreMigrate } = require('./store/migrate') as typeof import('./store/migrate')
    return runStoreMigrate(loaded, { from: str('from'), to: str('to'), dryRun: args['dry-run'] === true, json }, io)
  }
  const store = ops.openOpsStore(loaded)
  try {
    if (command === 'stats') return await ops.stats(store, { json, prometheus: args.prometheus === true }, io)
    if (command === 'store') return await (args.action === 'check' ? ops.storeCheck(store, json, io) : ops.storePurge(store, json, io))
    if (command === 'ratelimit') {
      // [hb]
      const rl = require('./ops/ratelimit') as typeof import('./ops/ratelimit')
      const readFile = (path: string): string => (require('node:fs') as typeof import('node:fs')).readFileSync(path, 'utf8')
      return await rl.runRateLimit(rl.rateOpsStoreOf(store), loaded.config, args, io, readFile)
    }
    const filter = { client: str('client'), sender: str('sender'), recipient: str('recipient') }
    switch (args.action) {
      case 'list': {
        const limit = Number(str('limit'))
        if (!Number.isInteger(limit) || limit < 1) {
          io.err(`policyd-ts greylist list: --limit ${JSON.stringify(str('limit'))} is not a positive whole number\n`)
          return ops.EX_USAGE
        }
        return await ops.greylistList(store, loaded.config, { ...filter, limit, json }, io)
      }
      case 'delete':
        return await ops.greylistDelete(store, loaded.config, { ...filter, all: args.all === true, json }, io)
      case 'whitelist':
        return await ops.greylistWhitelist(store, loaded.config, { kind: str('kind'), value: str('value'), ttl: str('ttl'), note: str('note'), json }, io)
      default:
        return await ops.greylistUnwhitelist(store, loaded.config, { kind: str('kind'), value: str('value'), json }, io)
    }
  } catch (err) {
    process.stderr.write(`policyd-ts ${command}: ${(err as Error).message}\n`)
    return ops.EX_UNAVAILABLE
  } finally {
    store.close()
  }
}

/** migrate: no configuration of ours is read; the file named is the other program's. [hb] */
async function runMigrate(args: Record<string, unknown>): Promise<number> {
  const { runMigration } = require('./migrate') as typeof import('./migrate')
  const io = { out: (text: string) => process.stdout.write(text), err: (text: string) => process.stderr.write(text) }
  const readFile = (path: string): string => (require('node:fs') as typeof import('node:fs')).readFileSync(path, 'utf8')
  return runMigration({ from: String(args.from), source: String(args.source), overridesFile: String(args['overrides-file']), json: args.json === true }, io, readFile)
}

/** spfquery: exit 0 with a result, 64 for a bad address, 78 for a bad configuration. */
async function runSpfQuery(q: import('./spfquery').SpfQuery, options: Record<string, string>, configPath: string | undefined): Promise<number> {
  const { readConfig } = require('./read-config') as typeof import('./read-config')
  const { systemHostname } = require('./app') as typeof import('./app')
  const { parseIp } = require('./normalize') as typeof import('./normalize')
  if (!parseIp(q.ip)) {
    process.stderr.write(`policyd-ts spfquery: --ip ${JSON.stringify(q.ip)} is not an IP address\n`)
    return EX_USAGE
  }
  const loaded = readConfig(options, configPath)
  if (loaded.errors.length > 0) {
    process.stderr.write(loaded.errors.map((e) => `policyd-ts: error: ${e}\n`).join(''))
    return EX_CONFIG
  }
  const { spfQuery } = require('./spfquery') as typeof import('./spfquery')
  const lines = await spfQuery(q, loaded, systemHostname(loaded.config))
  process.stdout.write(`${lines.join('\n')}\n`)
  return 0
}

/** sysexits(3): --user names no user; --user without root; the database cannot be created or written. */
export const EX_NOUSER = 67
export const EX_CANTCREAT = 73
export const EX_NOPERM = 77

/**
 * Print the effective configuration, one `key = value  # source` line each,
 * then the checks of the files and the database it names, as the user this
 * runs as; with `user` (root only) all of it as that user.
 */
export async function testMode(options: Record<string, string>, configPath: string | undefined, user?: string): Promise<number> {
  if (user !== undefined) return testModeAs(user, options, configPath)
  const { readConfig } = require('./read-config') as typeof import('./read-config')
  const { version } = require('./version') as typeof import('./version')
  const { checkDatabase, currentUser } = require('./db-check') as typeof import('./db-check')
  const loaded = readConfig(options, configPath)
  const runAs = currentUser()
  const out: string[] = [
    `# policyd-ts ${version()} effective configuration`,
    `# config file: ${loaded.configFile} (${loaded.configFileFound ? 'read' : 'not found, defaults used'})`,
    `# checked as user ${runAs.name} (uid ${runAs.uid})`,
  ]
  const ignored = ignoredSettings(loaded.errors)
  const width = Math.max(...CONFIG_KEYS.map((k) => k.length))
  for (const key of CONFIG_KEYS) {
    const value = formatValue(key, loaded.config[key])
    out.push(`${key.padEnd(width)} = ${value}${' '.repeat(Math.max(1, 40 - value.length))}# ${loaded.sources[key]}`)
    const instead = loaded.sources[key] === 'default' ? 'the default' : `the value from the ${loaded.sources[key]}`
    for (const bad of ignored.get(key) ?? []) out.push(`#   ignored: ${key} = ${bad.value} (${bad.where}): ${bad.problem}; ${instead} is used instead`)
  }
  const { describeFiles } = require('./greylist/lists') as typeof import('./greylist/lists')
  out.push(...describeFiles(loaded.config).map((l) => `# ${l}`))
  out.push(...loaded.notices.map((n) => `# ${n}`))
  const unreadSpfConf = (require('./policyd-spf-conf') as typeof import('./policyd-spf-conf')).unreadPolicydSpfConf(loaded)
  if (unreadSpfConf !== null) out.push(`# warning: ${unreadSpfConf}`)
  const { rateLimitNotes, systemPostconf } = require('./ratelimit/test-mode') as typeof import('./ratelimit/test-mode')
  const rl = rateLimitNotes(loaded.config, systemPostconf, (file) => (require('node:fs') as typeof import('node:fs')).readFileSync(file, 'utf8'))
  out.push(...rl.notes.map((n) => `# rate limiting: ${n}`), ...rl.warnings.map((w) => `# rate limiting: warning: ${w}`))
  // store = redis (task HC): the server is checked instead of db_path.
  const db = loaded.config.store === 'redis'
    ? await (require('./store/redis') as typeof import('./store/redis')).checkRedisStore(loaded.config)
    : checkDatabase(loaded.config, runAs)
  out.push(...db.notes.map((n) => `# database: ${n}`), ...db.problems.map((p) => `# database: PROBLEM: ${p}`))
  if (runAs.uid === 0) out.push(...asSpawnUserAdvice(options, configPath))
  const { startUp } = require('./start-up') as typeof import('./start-up')
  out.push(`# start-up: ${startUp.mode} (${startUp.why})`)
  process.stdout.write(`${out.join('\n')}\n`)
  const errors = [...loaded.errors, ...db.problems.map((p) => `database: ${p}`)]
  process.stderr.write(errors.map((e) => `policyd-ts: error: ${e}\n`).join(''))
  return loaded.errors.length > 0 ? EX_CONFIG : db.problems.length > 0 ? EX_CANTCREAT : 0
}

/** The bad settings among the configuration errors (parseValue's "bad value" texts), by key. */
function ignoredSettings(errors: readonly string[]): Map<string, Array<{ value: string; where: string; problem: string }>> {
  const byKey = new Map<string, Array<{ value: string; where: string; problem: string }>>()
  for (const error of errors) {
    const m = /^(.*?): bad value ("(?:[^"\\]|\\.)*") for (\w+): (.*)$/.exec(error)
    if (!m) continue
    const list = byKey.get(m[3]) ?? []
    list.push({ where: m[1], value: m[2], problem: m[4].replace(/; ignored, so .*$/, '') })
    byKey.set(m[3], list)
  }
  return byKey
}

/** Root is not the user Postfix runs policyd-ts as: say so, and how to check as that user. */
function asSpawnUserAdvice(options: Record<string, string>, configPath: string | undefined): string[] {
  const args = optionArgs(options, configPath).map(shellWord)
  const rest = args.length > 0 ? ` ${args.join(' ')}` : ''
  return [
    '# This is root, not the user Postfix runs policyd-ts as (user= in its master.cf entry; nobody in',
    '# the examples): the files above were read as root and the database was not tried. To check it',
    '# all as that user:',
    `#   policyd-ts --test-mode --user nobody${rest}`,
    `# or: setpriv --reuid=nobody --regid=nogroup --clear-groups policyd-ts --test-mode${rest}`,
    `# or: su -s /bin/sh nobody -c ${shellWord(`policyd-ts --test-mode${rest}`)}`,
  ]
}

/** The options of this run as a command line gives them. */
function optionArgs(options: Record<string, string>, configPath: string | undefined): string[] {
  return [...(configPath !== undefined ? ['--config', configPath] : []), ...Object.entries(options).map(([k, v]) => `--${k}=${v}`)]
}

function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`
}

/** --test-mode --user NAME: run the whole test mode again as that user, as spawn(8) would start policyd-ts. */
async function testModeAs(user: string, options: Record<string, string>, configPath: string | undefined): Promise<number> {
  const { currentUser } = require('./db-check') as typeof import('./db-check')
  const self = currentUser()
  if (self.uid !== 0) {
    if (user === self.name || user === String(self.uid)) return testMode(options, configPath)
    process.stderr.write(`policyd-ts: --user ${user} needs root (this is user ${self.name}); run it as root, or run --test-mode as ${user} yourself\n`)
    return EX_NOPERM
  }
  const { execFileSync, spawnSync } = require('node:child_process') as typeof import('node:child_process')
  const id = (flag: string): number => Number(execFileSync('id', [flag, '--', user], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim())
  let uid: number
  let gid: number
  try {
    uid = id('-u')
    gid = id('-g')
  } catch {
    process.stderr.write(`policyd-ts: --user ${user}: no such user on this system\n`)
    return EX_NOUSER
  }
  const path = require('node:path') as typeof import('node:path')
  // Paths as this process sees them: the user may start elsewhere.
  const args = ['--test-mode', ...optionArgs(options, configPath === undefined ? undefined : path.resolve(configPath))]
  // As spawn(8) does: the user's uid and primary group, no other groups (Node drops them).
  const child = spawnSync(process.execPath, [...process.execArgv, process.argv[1], ...args], { uid, gid, stdio: 'inherit' })
  if (child.error) {
    process.stderr.write(`policyd-ts: --user ${user}: cannot start a process as that user: ${child.error.message}\n`)
    return EX_NOPERM
  }
  return child.status ?? 70
}
