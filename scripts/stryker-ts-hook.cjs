// Loads the TypeScript of lib/ and test/ for `npm run mutate`: Stryker's tap
// runner starts `node <test file>` itself, without tap's ts-node loader.
// esbuild (already a dev dependency, for the start-up bundle) strips the types
// in ~1 ms a file where ts-node takes ~0.3 s a process, and every mutant's test
// run is a new process. It only strips types: `tsc` (Stryker's TypeScript
// checker, and `npm run build`) is what checks them.
'use strict'
const fs = require('node:fs')
const esbuild = require('esbuild')

require.extensions['.ts'] = function loadTypeScript(module, filename) {
  const source = fs.readFileSync(filename, 'utf8')
  const { code } = esbuild.transformSync(source, {
    loader: 'ts',
    format: 'cjs',
    target: 'node20',
    sourcefile: filename,
    sourcemap: 'inline',
  })
  module._compile(code, filename)
}
