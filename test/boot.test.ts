// The start-up bundle and its code cache: every way they can fail falls
// back, and a good cache is used (lib/boot.ts).
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { BUNDLE_NAME, loadBundle } from '../lib/boot'

// Each case compiles other source text: V8 keeps compiled scripts in memory and would not look at a cache again.
let n = 0
const bundleText = (): string => `exports.main = async (argv) => 'ran ' + argv.join(' ') // ${++n}\n`

function dirWith(t: Tap.Test, files: Record<string, string | Buffer>): string {
  const dir = t.testdir()
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), content)
  return dir
}

t.test('no bundle, or a bundle older than the modules: the modules are used', async (t) => {
  t.same(loadBundle(dirWith(t, { 'cli.js': '' })), { main: null, why: 'no bundle (npm run build makes it)' })
  const dir = dirWith(t, { [BUNDLE_NAME]: bundleText(), 'cli.js': '' })
  fs.utimesSync(path.join(dir, BUNDLE_NAME), new Date(1000), new Date(1000))
  t.same(loadBundle(dir), { main: null, why: 'the bundle is older than the modules (npm run build)' })
})

t.test('a bundle without a cache, with a cache V8 rejects, and with a good one', async (t) => {
  const plain = loadBundle(dirWith(t, { [BUNDLE_NAME]: bundleText() }))
  t.equal(plain.why, 'no code cache')
  t.equal(await plain.main?.(['a', 'b']), 'ran a b')

  const bad = loadBundle(dirWith(t, { [BUNDLE_NAME]: bundleText(), [`${BUNDLE_NAME}.cache`]: 'not a code cache' }))
  t.same([bad.main !== null, bad.why], [true, 'code cache rejected: made by another Node version or with other V8 flags'])
  t.equal(await bad.main?.([]), 'ran ')

  const text = bundleText()
  const dir = dirWith(t, { [BUNDLE_NAME]: text })
  const file = path.join(dir, BUNDLE_NAME)
  // Made in another process, as npm run build does: this one must not have compiled the text before.
  const { spawnSync } = await import('node:child_process')
  const made = spawnSync(process.execPath, ['-e', `
    const fs = require('fs'), vm = require('vm'), Module = require('module')
    const file = process.argv[1]
    fs.writeFileSync(file + '.cache', new vm.Script(Module.wrap(fs.readFileSync(file, 'utf8')), { filename: file }).createCachedData())
  `, file])
  t.equal(made.status, 0, String(made.stderr))
  const good = loadBundle(dir)
  t.same([good.main !== null, 'mode' in good ? good.mode : null, good.why], [true, 'bundle+cache', 'code cache accepted'])
})

t.test('a bundle without main() is not used', async (t) => {
  t.same(loadBundle(dirWith(t, { [BUNDLE_NAME]: 'exports.other = 1\n' })), { main: null, why: 'the bundle has no main()' })
})

t.test('the built binary, run with the node flags of master.cf.example, starts from the bundle with its cache', async (t) => {
  const { spawnSync } = await import('node:child_process')
  const { nodeFlags } = require('../scripts/node-flags.js') as { nodeFlags(): string[] }
  const run = (flags: string[]) => spawnSync(process.execPath, [...flags, path.join(__dirname, '..', 'bin', 'policyd-ts'), '--test-mode', '--config', '/dev/null', '--greylist_enabled', 'no'], { encoding: 'utf8', env: { PATH: process.env.PATH } })
  const r = run(nodeFlags())
  t.equal(r.status, 0, r.stderr)
  t.match(r.stdout, /^# start-up: bundle\+cache \(code cache accepted\)$/m, 'npm run build made both')
  t.match(run([...nodeFlags(), '--max-semi-space-size=2']).stdout, /^# start-up: bundle \(code cache rejected: made by another Node version or with other V8 flags\)$/m, 'other V8 flags: the bundle without its cache')
})
