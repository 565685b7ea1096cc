// The command-line reader of the spawn path. yargs costs ~70 ms to load,
// more than a whole cold start should take, so the hot path reads
// `--key value` / `--key=value` itself over the same option table; anything
// interactive (--help, --version, --test-mode, subcommands, errors at a
// terminal) goes to yargs in cli.ts. test/argv.test.ts checks that both
// readers agree.

import { isConfigKey } from './config'

export const FLAGS = ['help', 'version', 'test-mode', 'daemon'] as const
export type Flag = (typeof FLAGS)[number]
export const COMMANDS = ['spfquery', 'postfix-config'] as const

export interface ParsedArgv {
  /** Config keys given on the command line, spelled as in the table. */
  options: Record<string, string>
  configPath?: string
  flags: Set<Flag>
  command?: string
  errors: string[]
}

export function parseArgv(argv: readonly string[]): ParsedArgv {
  const out: ParsedArgv = { options: {}, flags: new Set(), errors: [] }
  let positionalConfig = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '-h') {
      out.flags.add('help')
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
    if ((FLAGS as readonly string[]).includes(name) && eq === -1) {
      out.flags.add(name as Flag)
      continue
    }
    let value: string
    if (eq !== -1) value = arg.slice(eq + 1)
    else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) value = argv[++i]
    else {
      out.errors.push(`option --${name} needs a value`)
      continue
    }
    if (name === 'config') {
      if (positionalConfig) out.errors.push('a config file given both as an argument and with --config')
      out.configPath = value
    }
    else if (isConfigKey(name)) out.options[name] = value
    else out.errors.push(`unknown option --${name}`)
  }
  return out
}
