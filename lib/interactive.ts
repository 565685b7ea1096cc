// The interactive side of the command line: --help, --version, --test-mode,
// spfquery, and argument errors at a terminal. yargs costs ~70 ms to load,
// so only this path loads it (see lib/cli.ts).

import { CONFIG_KEYS, DEFAULT_CONFIG_FILE, ENV_PREFIX, OPTIONS, formatValue } from './config'

export const EX_USAGE = 64
export const EX_CONFIG = 78

export async function runInteractive(argv: string[]): Promise<number> {
  const { default: yargs } = (await import('yargs')) as { default: typeof import('yargs').default }
  const { version } = require('./version') as typeof import('./version')
  let failure: string | null = null
  const cli = yargs(argv)
    .scriptName('policyd-ts')
    .usage('Usage: policyd-ts [--config FILE] [--KEY VALUE ...] [--test-mode]\n       policyd-ts spfquery --ip ADDR --sender ADDR --helo NAME\n\nPostfix SMTP access policy server (SPF and greylisting). Without options it\nserves policy requests on stdin/stdout, as Postfix spawn(8) runs it.')
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
    .option('test-mode', { type: 'boolean', describe: 'Print the effective configuration with the source of each value and exit (0, or 78 on a bad configuration)' })
    .strict()
    .version(version())
    .alias('version', 'V')
    .help('help')
    .alias('help', 'h')
    .wrap(Math.min(100, process.stdout.columns || 100))
    .exitProcess(false)
    .fail((msg, err) => {
      failure = msg ?? err?.message ?? 'bad arguments'
    })
  // Every value is read as text and validated by config.ts, so that the
  // command line, the environment and the file share one parser.
  for (const key of CONFIG_KEYS) {
    const spec = OPTIONS[key]
    cli.option(key, { type: 'string', describe: `${spec.doc} [default: ${spec.default === '' ? '(empty)' : spec.default}]`, group: 'Configuration keys (also in the config file and as POLICYD_TS_<KEY>):' })
  }
  const args = (await cli.parseAsync()) as Record<string, unknown>
  if (failure !== null) {
    process.stderr.write(`policyd-ts: ${failure}\nTry 'policyd-ts --help'.\n`)
    return EX_USAGE
  }
  if (args.help || args.version) return 0

  const options: Record<string, string> = {}
  for (const key of CONFIG_KEYS) if (typeof args[key] === 'string') options[key] = args[key] as string
  const configPath = typeof args.config === 'string' ? args.config : typeof args.file === 'string' ? args.file : undefined
  if (args['test-mode']) return testMode(options, configPath)
  if ((args._ as unknown[])[0] === 'postfix-config') {
    const { runPostfixConfig } = require('./postfix-config') as typeof import('./postfix-config')
    return runPostfixConfig(args as unknown as import('./postfix-config').PostfixConfigArgs, options, configPath)
  }
  if ((args._ as unknown[])[0] === 'spfquery') {
    return runSpfQuery({ ip: String(args.ip), sender: String(args.sender), helo: String(args.helo), recipient: String(args.recipient) }, options, configPath)
  }

  const { readConfig } = require('./read-config') as typeof import('./read-config')
  const { runSpawn } = require('./spawn') as typeof import('./spawn')
  await runSpawn({ loaded: readConfig(options, configPath), argvErrors: [] })
  return 0
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

/** Print the effective configuration, one `key = value  # source` line each, then the checks of files it names. */
export async function testMode(options: Record<string, string>, configPath: string | undefined): Promise<number> {
  const { readConfig } = require('./read-config') as typeof import('./read-config')
  const { version } = require('./version') as typeof import('./version')
  const loaded = readConfig(options, configPath)
  const out: string[] = [
    `# policyd-ts ${version()} effective configuration`,
    `# config file: ${loaded.configFile} (${loaded.configFileFound ? 'read' : 'not found, defaults used'})`,
  ]
  const width = Math.max(...CONFIG_KEYS.map((k) => k.length))
  for (const key of CONFIG_KEYS) {
    const value = formatValue(key, loaded.config[key])
    out.push(`${key.padEnd(width)} = ${value}${' '.repeat(Math.max(1, 40 - value.length))}# ${loaded.sources[key]}`)
  }
  const { describeFiles } = require('./greylist/lists') as typeof import('./greylist/lists')
  out.push(...describeFiles(loaded.config).map((l) => `# ${l}`))
  out.push(...loaded.notices.map((n) => `# ${n}`))
  const unreadSpfConf = (require('./policyd-spf-conf') as typeof import('./policyd-spf-conf')).unreadPolicydSpfConf(loaded)
  if (unreadSpfConf !== null) out.push(`# warning: ${unreadSpfConf}`)
  const { startUp } = require('./start-up') as typeof import('./start-up')
  out.push(`# start-up: ${startUp.mode} (${startUp.why})`)
  process.stdout.write(`${out.join('\n')}\n`)
  if (loaded.errors.length > 0) {
    process.stderr.write(loaded.errors.map((e) => `policyd-ts: error: ${e}\n`).join(''))
    return EX_CONFIG
  }
  return 0
}
