// The configuration of this process, from its real sources: the command
// line's options, POLICYD_TS_* variables and the config file. Shared by
// spawn mode, the daemon and the command-line tools.

import { loadConfig, type LoadedConfig } from './config'

export function readConfig(options: Record<string, string>, configPath: string | undefined): LoadedConfig {
  const fs = require('node:fs') as typeof import('node:fs')
  return loadConfig({
    cli: options,
    configPath,
    env: process.env,
    readFile: (p) => fs.readFileSync(p, 'utf8'),
  })
}
