// The command-line reader of the spawn path. yargs costs ~70 ms to load,
// more than a whole cold start should take, so the hot path reads
// `--key value` / `--key=value` itself over the same option tables; anything
// interactive (--help, --version, --test-mode, subcommands, errors at a
// terminal) goes to yargs in interactive.ts, which builds its options from
// INTERACTIVE_OPTIONS below. test/argv.test.ts checks that both readers
// agree on that real yargs configuration.

import { isConfigKey } from './config'

export interface InteractiveOption {
  /** A flag takes no value (a yargs boolean); a value option takes one. */
  takes: 'flag' | 'value'
  /** The one-letter spelling (-h), as yargs knows it. */
  alias?: string
  describe: string
}

/** The options besides the config keys and --config. Any of them means an interactive run, whatever stdin is. */
export const INTERACTIVE_OPTIONS = {
  'test-mode': {
    takes: 'flag',
    describe: 'Print the effective configuration with the source of each value, check the database and the files it names, and exit (0, or 78 on a bad configuration)',
  },
  user: {
    takes: 'value',
    describe: 'With --test-mode, run as root: check as this user (user= of the master.cf entry), as Postfix runs policyd-ts',
  },
  version: { takes: 'flag', alias: 'V', describe: 'Print the version and exit' },
  help: { takes: 'flag', alias: 'h', describe: 'Show this help and exit' },
} as const satisfies Record<string, InteractiveOption>

export type InteractiveName = keyof typeof INTERACTIVE_OPTIONS
export const COMMANDS = ['spfquery', 'postfix-config', 'greylist', 'stats', 'store', 'ratelimit', 'migrate'] as const
/** Serve as one daemon for every smtpd instead of one stdin/stdout connection (not interactive). */
export const DAEMON_FLAG = 'daemon'

const BY_ALIAS: Record<string, InteractiveName> = {}
for (const [name, spec] of Object.entries(INTERACTIVE_OPTIONS) as Array<[InteractiveName, InteractiveOption]>) {
  if (spec.alias) BY_ALIAS[spec.alias] = name
}

function interactiveName(name: string): InteractiveName | undefined {
  if (Object.prototype.hasOwnProperty.call(INTERACTIVE_OPTIONS, name)) return name as InteractiveName
  return BY_ALIAS[name]
}

export interface ParsedArgv {
  /** Config keys given on the command line, spelled as in the table. */
  options: Record<string, string>
  configPath?: string
  /** Interactive options given (true for a flag, the text for a value option). */
  interactive: Map<InteractiveName, string | true>
  /** --daemon was given. */
  daemon: boolean
  command?: string
  errors: string[]
}

/** As yargs decides: a following word is the value unless it looks like an option (a negative number is a value). */
function isValue(word: string): boolean {
  return !word.startsWith('-') || word === '-' || /^-(\d+(\.\d+)?|\.\d+)$/.test(word)
}

export function parseArgv(argv: readonly string[]): ParsedArgv {
  const out: ParsedArgv = { options: {}, interactive: new Map(), daemon: false, errors: [] }
  let positionalConfig = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (/^-[^-]/.test(arg)) {
      // One-letter options, grouped as yargs reads them: -h, -V, -hV.
      for (const letter of arg.slice(1)) {
        const name = BY_ALIAS[letter]
        if (name !== undefined && INTERACTIVE_OPTIONS[name].takes === 'flag') out.interactive.set(name, true)
        else out.errors.push(`unknown option -${letter}`)
      }
      continue
    }
    if (!arg.startsWith('--')) {
      if (i === 0 && (COMMANDS as readonly string[]).includes(arg)) out.command = arg
      // policyd-spf takes its config file as the one argument: the same
      // master.cf argv works with policyd-ts in its place.
      else if (arg.includes('/') && !positionalConfig && out.command === undefined) {
        positionalConfig = true
        out.configPath ??= arg
      } else out.errors.push(`unexpected argument ${JSON.stringify(arg)}`)
      continue
    }
    const eq = arg.indexOf('=')
    const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq)
    if (name === DAEMON_FLAG && eq === -1) {
      out.daemon = true
      continue
    }
    const interactive = interactiveName(name)
    // A flag given as --flag=value is yargs's to judge: still interactive.
    if (interactive !== undefined && INTERACTIVE_OPTIONS[interactive].takes === 'flag') {
      out.interactive.set(interactive, true)
      continue
    }
    let value: string
    if (eq !== -1) value = arg.slice(eq + 1)
    else if (i + 1 < argv.length && isValue(argv[i + 1])) value = argv[++i]
    else {
      out.errors.push(`option --${name} needs a value`)
      if (interactive !== undefined) out.interactive.set(interactive, '')
      continue
    }
    if (interactive !== undefined) out.interactive.set(interactive, value)
    else if (name === 'config') {
      if (positionalConfig) out.errors.push('a config file given both as an argument and with --config')
      out.configPath = value
    }
    else if (isConfigKey(name)) out.options[name] = value
    else out.errors.push(`unknown option --${name}`)
  }
  return out
}
