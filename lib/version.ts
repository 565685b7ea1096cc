let cached: string | undefined

/** The package version, read once from package.json (two levels above dist/lib or lib). */
export function version(): string {
  if (cached === undefined) {
    const path = require('node:path') as typeof import('node:path')
    const fs = require('node:fs') as typeof import('node:fs')
    let dir = __dirname
    for (let i = 0; i < 4 && cached === undefined; i++) {
      try {
        const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string }
        if (pkg.name === 'policyd-ts') cached = pkg.version ?? 'unknown'
      } catch {
        // not here: look one level up
      }
      dir = path.dirname(dir)
    }
    cached ??= 'unknown'
  }
  return cached
}
