// The node flags policyd-ts runs with, read from master.cf.example's spawn
// entry: the build makes its V8 code cache with them (V8 takes a cache
// only under the flags it was made with) and the benches run with them.
'use strict'
const fs = require('node:fs')
const path = require('node:path')

const EXAMPLE = path.join(__dirname, '..', 'master.cf.example')

/** The flags between the node binary and bin/policyd-ts on the `policy unix` entry's argv line. */
function nodeFlags(text = fs.readFileSync(EXAMPLE, 'utf8')) {
  const lines = text.split('\n')
  const entry = lines.findIndex((l) => /^policy\s+unix\s/.test(l))
  const argv = lines.slice(entry + 1).find((l) => /\sargv=/.test(l))
  const m = argv && /argv=\S+\s+(.*?)\s*\S+\/bin\/policyd-ts(\s|$)/.exec(argv)
  if (entry === -1 || !m) throw new Error(`${EXAMPLE}: no policy unix entry with argv=NODE [FLAGS] .../bin/policyd-ts`)
  return m[1] === '' ? [] : m[1].split(/\s+/)
}

module.exports = { nodeFlags }
