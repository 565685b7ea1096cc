// `policyd-ts migrate policyd-rate-limit FILE` and `migrate postfixlimit
// FILE`: print the policyd-ts configuration equivalent to another rate
// limiter's (a policyd-ts.conf fragment, the ratelimit_overrides file for
// its per-key limits, and what has no equivalent). Nothing is written: the
// admin reads the comments and puts the parts where they go. Exit 0 when
// converted, notes or not; EX_DATAERR when the file cannot be read or is
// not such a configuration.

import type { Converted } from './migrate/output'

const EX_USAGE = 64
const EX_DATAERR = 65

export const MIGRATE_FROM = ['policyd-rate-limit', 'postfixlimit'] as const

export interface MigrateArgs {
  from: string
  source: string
  overridesFile: string
  json: boolean
}

export interface MigrateIo {
  out(text: string): void
  err(text: string): void
}

function convert(from: string, text: string): Converted | null {
  if (from === 'policyd-rate-limit') return (require('./migrate/policyd-rate-limit') as typeof import('./migrate/policyd-rate-limit')).convertPolicydRateLimit(text)
  if (from === 'postfixlimit') return (require('./migrate/postfixlimit') as typeof import('./migrate/postfixlimit')).convertPostfixlimit(text)
  return null
}

export function runMigration(args: MigrateArgs, io: MigrateIo, readFile: (path: string) => string): number {
  if (!(MIGRATE_FROM as readonly string[]).includes(args.from)) {
    io.err(`policyd-ts migrate: ${JSON.stringify(args.from)} is not one of ${MIGRATE_FROM.join(', ')}\n`)
    return EX_USAGE
  }
  if (!args.overridesFile.startsWith('/')) {
    io.err(`policyd-ts migrate: --overrides-file ${JSON.stringify(args.overridesFile)} is not an absolute path (policyd-ts reads ratelimit_overrides wherever it runs)\n`)
    return EX_USAGE
  }
  let text: string
  try {
    text = readFile(args.source)
  } catch (err) {
    io.err(`policyd-ts migrate: cannot read ${args.source}: ${(err as Error).message}\n`)
    return EX_DATAERR
  }
  const result = convert(args.from, text)!
  if ('error' in result) {
    io.err(`policyd-ts migrate: ${args.source}: ${result.error}\n`)
    return EX_DATAERR
  }
  const { migrationText, renderMigration } = require('./migrate/output') as typeof import('./migrate/output')
  const rendered = renderMigration(result.migration, args.source, args.overridesFile)
  io.out(args.json ? `${JSON.stringify(rendered)}\n` : migrationText(rendered))
  return 0
}
