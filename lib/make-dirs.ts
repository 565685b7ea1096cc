// mkdir -p without Node's recursive mkdirSync, which loops for ever when
// mkdir(2) answers ENOENT for a directory whose parent exists (as /proc
// and other pseudo file systems do): a policy process would hang there
// instead of answering fail_action.

import fs = require('node:fs')
import path = require('node:path')

/** Create `dir` and its missing parents with `mode`; returns the first directory created, or undefined when it existed. Throws mkdir's error. */
export function makeDirs(dir: string, mode: number): string | undefined {
  const missing: string[] = []
  // Bounded by the depth of the path: each step goes one directory up.
  for (let d = path.resolve(dir); !fs.existsSync(d); d = path.dirname(d)) {
    missing.unshift(d)
    if (d === path.dirname(d)) break
  }
  for (const d of missing) {
    try {
      fs.mkdirSync(d, { mode })
    } catch (err) {
      // Another process made it between our look and our mkdir (spawned
      // processes starting together on a fresh install): it is there.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !fs.statSync(d).isDirectory()) throw err
    }
  }
  return missing[0]
}
