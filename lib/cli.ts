// Entry point. The spawn path (no flags) never loads yargs; --help (-h),
// --version (-V), --test-mode and the commands go to ./interactive whatever
// stdin is, and so do argument errors at a terminal; --daemon or a listen
// key goes to ./daemon. This file is the root of the start-up bundle (see
// lib/boot.ts); ./interactive and ./daemon stay outside it, loaded by path.

import { parseArgv } from './argv'

export async function main(argv: string[]): Promise<void> {
  const parsed = parseArgv(argv)
  const daemonFlag = parsed.daemon
  const interactive = parsed.interactive.size > 0 || parsed.command !== undefined || (parsed.errors.length > 0 && isTerminal())
  if (!interactive) {
    const { readConfig } = require('./read-config') as typeof import('./read-config')
    const loaded = readConfig(parsed.options, parsed.configPath)
    // A listen value that is given but bad still means a daemon was wanted:
    // it must stop with the error, not serve stdin.
    const badListen = loaded.errors.some((e) => /: listen: /.test(e))
    if (daemonFlag || loaded.config.listen !== '' || badListen) {
      if (parsed.errors.length > 0) {
        process.stderr.write(parsed.errors.map((e) => `policyd-ts: ${e}\n`).join(''))
        process.exitCode = 64
        return
      }
      if (loaded.config.listen === '' && !badListen) loaded.config.listen = defaultListen(process.env)
      const { runDaemon } = loadByPath('daemon/daemon') as typeof import('./daemon/daemon')
      process.exitCode = await runDaemon({ loaded, options: parsed.options, configPath: parsed.configPath })
      return
    }
    const { runSpawn } = require('./spawn') as typeof import('./spawn')
    await runSpawn({ loaded, argvErrors: parsed.errors })
    return
  }
  process.exitCode = await (loadByPath('interactive') as typeof import('./interactive')).runInteractive(argv)
}

/** --daemon without listen: the socket systemd passes, else the path Postfix's chrooted smtpd reaches as unix:policyd-ts/policy. */
export function defaultListen(env: NodeJS.ProcessEnv): string {
  return env.LISTEN_FDS !== undefined ? 'systemd' : 'unix:/var/spool/postfix/policyd-ts/policy'
}

function isTerminal(): boolean {
  return (require('node:tty') as typeof import('node:tty')).isatty(0)
}

/**
 * Required by a computed path, so that a bundler leaves it out of the
 * start-up bundle: the command line (yargs behind it) and the daemon are
 * never needed by a spawned process.
 */
function loadByPath(name: 'interactive' | 'daemon/daemon'): unknown {
  const path = require('node:path') as typeof import('node:path')
  return require(path.join(__dirname, name))
}
