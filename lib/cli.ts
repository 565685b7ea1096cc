// Entry point. The spawn path (no flags) never loads yargs; --help (-h),
// --version (-V), --test-mode and spfquery go to ./interactive whatever
// stdin is, and so do argument errors at a terminal. This file is the root
// of the start-up bundle (see lib/boot.ts); ./interactive stays outside it,
// loaded by path at run time.

import { parseArgv } from './argv'

export async function main(argv: string[]): Promise<void> {
  const parsed = parseArgv(argv)
  const interactive = parsed.interactive.size > 0 || parsed.command !== undefined || (parsed.errors.length > 0 && isTerminal())
  if (!interactive) {
    const { runSpawn } = require('./spawn') as typeof import('./spawn')
    await runSpawn({ options: parsed.options, configPath: parsed.configPath, argvErrors: parsed.errors })
    return
  }
  process.exitCode = await loadInteractive().runInteractive(argv)
}

function isTerminal(): boolean {
  return (require('node:tty') as typeof import('node:tty')).isatty(0)
}

/** Required by a computed path, so that a bundler leaves it (and yargs behind it) out of the bundle. */
function loadInteractive(): typeof import('./interactive') {
  const path = require('node:path') as typeof import('node:path')
  const file = path.join(__dirname, 'interactive')
  return require(file) as typeof import('./interactive')
}
