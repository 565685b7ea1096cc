// What bin/policyd-ts runs first. Postfix pays the start-up of every policy
// process, so the code of lib/ and its dependencies comes as one file
// (dist/lib/policyd-ts.bundle.js, made by scripts/bundle.js) compiled with
// a V8 code cache made at build time: measured, that takes a third off the
// time from spawn to the first SPF reply. Every way this can fail ends in
// the plain modules: a missing or stale bundle (older than dist/lib/cli.js),
// or a cache V8 rejects (another Node version) costs time, never a reply.
// Nothing here may print: under spawn(8) stdout and stderr are the socket.

import fs = require('node:fs')
import path = require('node:path')
import { startUp, type StartUp } from './start-up'

export const BUNDLE_NAME = 'policyd-ts.bundle.js'

type Main = (argv: string[]) => Promise<void>


function mtime(file: string): number {
  try {
    return fs.statSync(file).mtimeMs
  } catch {
    return -1
  }
}

/** The bundle in `dir` compiled (with its code cache when V8 takes it) and run; null with the reason when it cannot be used. */
export function loadBundle(dir: string): { main: Main; mode: StartUp; why: string } | { main: null; why: string } {
  const bundle = path.join(dir, BUNDLE_NAME)
  const cacheFile = `${bundle}.cache`
  const bundleTime = mtime(bundle)
  if (bundleTime < 0) return { main: null, why: 'no bundle (npm run build makes it)' }
  if (bundleTime < mtime(path.join(dir, 'cli.js'))) return { main: null, why: 'the bundle is older than the modules (npm run build)' }
  const vm = require('node:vm') as typeof import('node:vm')
  const Module = require('node:module') as typeof import('node:module') & {
    wrap(src: string): string
    _nodeModulePaths(dir: string): string[]
  }
  let cachedData: Buffer | undefined
  try {
    cachedData = fs.readFileSync(cacheFile)
  } catch {
    cachedData = undefined
  }
  const script = new vm.Script(Module.wrap(fs.readFileSync(bundle, 'utf8')), { filename: bundle, cachedData })
  const mod = new Module(bundle, module) as NodeJS.Module & { paths: string[] }
  mod.filename = bundle
  mod.paths = Module._nodeModulePaths(dir)
  const wrapper = script.runInThisContext() as (e: unknown, r: NodeJS.Require, m: unknown, f: string, d: string) => void
  wrapper(mod.exports, ((id: string) => mod.require(id)) as NodeJS.Require, mod, bundle, dir)
  const main = (mod.exports as { main?: unknown }).main
  if (typeof main !== 'function') return { main: null, why: 'the bundle has no main()' }
  if (process.env.BUILD_POLICYD_CODE_CACHE === cacheFile) {
    // scripts/bundle.js: the cache is written after a few requests ran, so
    // that it holds the functions a request compiles too.
    process.once('exit', () => fs.writeFileSync(cacheFile, script.createCachedData()))
  }
  if (cachedData === undefined) return { main: main as Main, mode: 'bundle', why: 'no code cache' }
  if (script.cachedDataRejected) return { main: main as Main, mode: 'bundle', why: 'code cache rejected: made by another Node version or with other V8 flags' }
  return { main: main as Main, mode: 'bundle+cache', why: 'code cache accepted' }
}

export function run(argv: string[]): Promise<void> {
  let main: Main
  try {
    const loaded = loadBundle(__dirname)
    startUp.why = loaded.why
    if (loaded.main) {
      startUp.mode = loaded.mode
      main = loaded.main
    } else main = (require('./cli') as typeof import('./cli')).main
  } catch (err) {
    startUp.why = `the bundle failed to load: ${(err as Error).message}`
    main = (require('./cli') as typeof import('./cli')).main
  }
  return main(argv)
}
