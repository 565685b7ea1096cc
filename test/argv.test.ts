// The spawn path reads the command line without yargs (lib/argv.ts); the
// interactive side parses it with the program's own yargs configuration
// (buildCli in lib/interactive.ts). Both must read every command line alike,
// and every option or alias that yargs knows must send the spawn reader to
// the interactive side, whatever stdin is.
import t from 'tap'
import { DAEMON_FLAG, parseArgv, type ParsedArgv } from '../lib/argv'
import { buildCli, readArgs } from '../lib/interactive'
import { CONFIG_KEYS } from '../lib/config'

type YargsFactory = typeof import('yargs').default

async function loadYargs(): Promise<YargsFactory> {
  return ((await import('yargs')) as { default: YargsFactory }).default
}

/** Parse with the real configuration; output (help, version) is captured rather than printed. */
async function yargsRead(argv: string[]): Promise<{ error: string | null; read: ReturnType<typeof readArgs>; args: Record<string, unknown>; output: string }> {
  const yargs = await loadYargs()
  return new Promise((resolve) => {
    void buildCli(yargs, '9.8.7').parse(argv, {}, (err, args, output) => {
      resolve({ error: err ? String(err.message ?? err) : null, read: readArgs(args as Record<string, unknown>), args: args as Record<string, unknown>, output })
    })
  })
}

function comparable(p: Omit<ParsedArgv, 'errors'>): unknown {
  return { options: p.options, configPath: p.configPath, interactive: Object.fromEntries(p.interactive), daemon: p.daemon, command: p.command }
}

const agree: string[][] = [
  [],
  ['--greylist_delay', '60'],
  ['--greylist_delay=60'],
  ['--config', '/etc/x.conf', '--debugLevel', '2'],
  ['--greylist_text=a=b c'],
  ['--greylist_whitelist_clients', ''],
  ['--greylist_delay', '1', '--greylist_delay', '2'],
  ['/etc/postfix-policyd-spf-python/policyd-spf.conf'],
  ['--test-mode'],
  ['--test-mode=true'],
  ['--test-mode', '--user', 'nobody', '--config', '/dev/null'],
  ['--test-mode', '--user=nobody'],
  ['-V'],
  ['--V'],
  ['--version'],
  ['-h'],
  ['--h'],
  ['-hV'],
  ['--help', '--max_idle', '5s'],
  ['spfquery', '--ip', '192.0.2.1', '--debugLevel', '2'],
  ['--debugLevel', '-1'],
  ['--daemon'],
  ['--daemon', '--listen', 'unix:/run/p', '--config', '/dev/null'],
]

t.test('the spawn reader and the real yargs configuration read the same command lines', async (t) => {
  for (const argv of agree) {
    const fast = parseArgv(argv)
    const slow = await yargsRead(argv)
    t.equal(slow.error, null, `yargs accepts ${JSON.stringify(argv)}`)
    // spfquery's own options (--ip ...) are the subcommand's: only yargs knows them.
    if (fast.command === undefined) t.same(fast.errors, [], `the spawn reader accepts ${JSON.stringify(argv)}`)
    t.same(comparable(fast), comparable(slow.read), JSON.stringify(argv))
  }
})

t.test('command lines both readers refuse', async (t) => {
  for (const argv of [['--nope', '1'], ['--greylist_delay'], ['stray'], ['/etc/a.conf', '/etc/b.conf'], ['-x'],
    ['--greylist_delay', '--debugLevel', '2'], ['--greylist_text', '-x'], ['--test-mode', '--user']]) {
    t.not(parseArgv(argv).errors.length, 0, `spawn reader: ${JSON.stringify(argv)}`)
    t.not((await yargsRead(argv)).error, null, `yargs: ${JSON.stringify(argv)}`)
  }
  t.same(parseArgv(['--nope', '1']).errors, ['unknown option --nope'])
  t.same(parseArgv(['--greylist_delay']).errors, ['option --greylist_delay needs a value'])
  t.same(parseArgv(['stray']).errors, ['unexpected argument "stray"'])
  t.same(parseArgv(['-x']).errors, ['unknown option -x'])
})

t.test('every option and alias yargs knows leads the spawn reader to the interactive side', async (t) => {
  const cli = buildCli(await loadYargs(), '9.8.7')
  const known = (cli as unknown as { getOptions(): { key: Record<string, unknown>; alias: Record<string, string[]>; boolean: string[] } }).getOptions()
  const spellings: Array<[string, string]> = []
  for (const name of Object.keys(known.key)) {
    spellings.push([name, name])
    for (const alias of known.alias[name] ?? []) spellings.push([alias, name])
  }
  t.ok(spellings.some(([s]) => s === 'V') && spellings.some(([s]) => s === 'h'), 'yargs knows -V and -h')
  for (const [spelling, name] of spellings) {
    const forms = spelling.length === 1 ? [`-${spelling}`, `--${spelling}`] : [`--${spelling}`]
    for (const form of forms) {
      const argv = known.boolean.includes(name) ? [form] : [form, 'x/y']
      const fast = parseArgv(argv)
      t.same(fast.errors, [], `${form} is known to the spawn reader`)
      if (name === 'config') t.equal(fast.configPath, 'x/y', form)
      else if ((CONFIG_KEYS as string[]).includes(name)) t.equal(fast.options[name], 'x/y', form)
      // The one flag that is not interactive: it picks the daemon over stdin.
      else if (name === DAEMON_FLAG) t.ok(fast.daemon && fast.interactive.size === 0, `${form} asks for the daemon`)
      else t.ok(fast.interactive.has(name as never), `${form} is interactive, whatever stdin is`)
    }
  }
})

t.test('-V and -h print through the real configuration', async (t) => {
  const v = await yargsRead(['-V'])
  t.equal(v.output, '9.8.7')
  t.equal(v.args.version, true)
  const h = await yargsRead(['-h'])
  t.match(h.output, /-V, --version/)
  t.match(h.output, /--user/)
})

t.test("a config file as the one argument, as policyd-spf's master.cf line gives it", async (t) => {
  t.equal(parseArgv(['/etc/postfix-policyd-spf-python/policyd-spf.conf']).configPath, '/etc/postfix-policyd-spf-python/policyd-spf.conf')
  const both = parseArgv(['/etc/a.conf', '--config', '/etc/b.conf'])
  t.same(both.errors, ['a config file given both as an argument and with --config'])
  t.same(parseArgv(['/etc/a.conf', '/etc/b.conf']).errors, ['unexpected argument "/etc/b.conf"'])
})
