// The spawn path reads the command line without yargs (see lib/argv.ts);
// these tables pin down that both readers give the same options.
import t from 'tap'
import { parseArgv } from '../lib/argv'

const agree: Array<[string[], Record<string, string>, string | undefined]> = [
  [[], {}, undefined],
  [['--greylist_delay', '60'], { greylist_delay: '60' }, undefined],
  [['--greylist_delay=60'], { greylist_delay: '60' }, undefined],
  [['--config', '/etc/x.conf', '--debugLevel', '2'], { debugLevel: '2' }, '/etc/x.conf'],
  [['--greylist_text=a=b c'], { greylist_text: 'a=b c' }, undefined],
  [['--greylist_whitelist_clients', ''], { greylist_whitelist_clients: '' }, undefined],
  [['--greylist_delay', '1', '--greylist_delay', '2'], { greylist_delay: '2' }, undefined],
]

t.test('fast reader', async (t) => {
  for (const [argv, options, configPath] of agree) {
    const got = parseArgv(argv)
    t.same(got.options, options, argv.join(' '))
    t.equal(got.configPath, configPath)
    t.same(got.errors, [])
  }
  t.same(parseArgv(['--nope', '1']).errors, ['unknown option --nope'])
  t.same(parseArgv(['--greylist_delay']).errors, ['option --greylist_delay needs a value'])
  t.same(parseArgv(['stray']).errors, ['unexpected argument "stray"'])
  t.same([...parseArgv(['--test-mode', '-h', '--version']).flags], ['test-mode', 'help', 'version'])
  t.equal(parseArgv(['spfquery', '--ip', '1.2.3.4']).command, 'spfquery')
})

t.test('yargs reads the same options', async (t) => {
  const { default: yargs } = (await import('yargs')) as { default: typeof import('yargs').default }
  const { CONFIG_KEYS } = require('../lib/config') as typeof import('../lib/config')
  for (const [argv, options, configPath] of agree) {
    const y = yargs(argv)
      .parserConfiguration({ 'camel-case-expansion': false, 'dot-notation': false, 'boolean-negation': false, 'duplicate-arguments-array': false, 'parse-numbers': false, 'parse-positional-numbers': false })
      .option('config', { type: 'string' })
      .strict()
      .exitProcess(false)
      .fail(false)
    for (const k of CONFIG_KEYS) y.option(k, { type: 'string' })
    const args = (await y.parseAsync()) as Record<string, unknown>
    const got: Record<string, string> = {}
    for (const k of CONFIG_KEYS) if (typeof args[k] === 'string') got[k] = args[k] as string
    t.same(got, options, argv.join(' '))
    t.equal(args.config, configPath)
  }
})

t.test("a config file as the one argument, as policyd-spf's master.cf line gives it", async (t) => {
  t.equal(parseArgv(['/etc/postfix-policyd-spf-python/policyd-spf.conf']).configPath, '/etc/postfix-policyd-spf-python/policyd-spf.conf')
  const both = parseArgv(['/etc/a.conf', '--config', '/etc/b.conf'])
  t.same(both.errors, ['a config file given both as an argument and with --config'])
  t.same(parseArgv(['/etc/a.conf', '/etc/b.conf']).errors, ['unexpected argument "/etc/b.conf"'])
})
