#!/usr/bin/env node
// npm run build, after tsc: the start-up bundle and its V8 code cache (see
// lib/boot.ts for why). esbuild bundles dist/lib/cli.js with its
// dependencies, except better-sqlite3 (a native addon) and lib/interactive
// (loaded by path, with yargs behind it). The code cache is written by the
// real binary after it has served a few requests against a DNS server on
// loopback, so that it holds the functions a request compiles as well,
// and with the node flags of master.cf.example (V8 refuses a cache made
// under other flags).
'use strict'
const fs = require('node:fs')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { nodeFlags } = require('./node-flags')

const root = path.resolve(__dirname, '..')
const lib = path.join(root, 'dist', 'lib')
const bundle = path.join(lib, 'policyd-ts.bundle.js')
const cache = `${bundle}.cache`

function removeOld() {
  for (const f of [bundle, cache]) fs.rmSync(f, { force: true })
}

async function makeCodeCache() {
  // Compiled by tsc (tsconfig.json includes it for this, the demo and the benches).
  const { startDnsServer } = require(path.join(root, 'dist', 'test', 'helpers', 'dns-server.js'))
  const dns = await startDnsServer({
    'example.net': [{ TXT: 'v=spf1 ip4:192.0.2.0/24 include:_spf.example.net -all' }],
    '_spf.example.net': [{ TXT: 'v=spf1 a:mx.example.net -all' }],
    'mx.example.net': [{ A: '198.51.100.1' }],
  })
  const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'policyd-ts-build-'))
  try {
    const request = (attrs) =>
      `${Object.entries({ request: 'smtpd_access_policy', protocol_state: 'RCPT', client_address: '192.0.2.10', client_name: 'unknown', helo_name: 'mail.example.net', ...attrs }).map(([k, v]) => `${k}=${v}`).join('\n')}\n\n`
    const input = [
      request({ sender: 'a@example.net', recipient: 'b@example.org', instance: 'm1' }),
      request({ sender: 'a@example.net', recipient: 'c@example.org', instance: 'm1' }),
      request({ sender: 'a@example.net', recipient: '', instance: 'm1', protocol_state: 'DATA' }),
      request({ sender: 'x@example.net', recipient: 'b@example.org', instance: 'm2', client_address: '203.0.113.9' }),
    ]
    const child = spawn(process.execPath, [
      ...nodeFlags(), path.join(root, 'bin', 'policyd-ts'),
      '--config', '/dev/null', '--db_path', path.join(dir, 'db', 'build.sqlite'), '--syslog_socket', path.join(dir, 'none'),
      '--log_file', path.join(dir, 'log'), '--greylist_whitelist_clients', '', '--greylist_whitelist_recipients', '',
      '--dns_servers', `127.0.0.1:${dns.port}`,
    ], { env: { PATH: process.env.PATH, BUILD_POLICYD_CODE_CACHE: cache }, stdio: ['pipe', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (d) => {
      out += d
      if (out.split('\n\n').length > input.length) child.stdin.end()
    })
    child.stdin.write(input.join(''))
    const code = await new Promise((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), 30000)
      child.on('exit', (c) => {
        clearTimeout(timer)
        resolve(c)
      })
    })
    if (code !== 0 || !fs.existsSync(cache)) throw new Error(`the code cache run failed (exit ${code}): ${out}`)
  } finally {
    await dns.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

async function main() {
  removeOld()
  let esbuild
  try {
    esbuild = require('esbuild')
  } catch {
    process.stderr.write('bundle.js: esbuild is not installed (a development dependency): no start-up bundle; policyd-ts starts from the modules\n')
    return
  }
  esbuild.buildSync({
    entryPoints: [path.join(lib, 'cli.js')],
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    external: ['better-sqlite3'],
    outfile: bundle,
    // Less text to read at every start; names are kept for stack traces in the log.
    minifyWhitespace: true,
    minifySyntax: true,
    logLevel: 'warning',
    logOverride: { 'unsupported-require-call': 'silent' },
  })
  await makeCodeCache()
  const kb = (f) => `${Math.round(fs.statSync(f).size / 1024)} kB`
  process.stdout.write(`bundle.js: ${path.relative(root, bundle)} (${kb(bundle)}), code cache (${kb(cache)})\n`)
}

main().catch((err) => {
  removeOld()
  process.stderr.write(`bundle.js: ${err.stack || err}\n`)
  process.exitCode = 1
})
