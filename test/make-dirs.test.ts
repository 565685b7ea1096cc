import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { makeDirs } from '../lib/make-dirs'

t.test('creates the missing parents with the mode, returns the first one created', async (t) => {
  const base = t.testdir()
  const target = path.join(base, 'a', 'b', 'c')
  t.equal(makeDirs(target, 0o700), path.join(base, 'a'))
  for (const d of ['a', 'a/b', 'a/b/c']) t.equal(fs.statSync(path.join(base, d)).mode & 0o777, 0o700 & ~process.umask(), d)
  t.equal(makeDirs(target, 0o700), undefined, 'an existing directory: nothing created')
})

t.test('a pseudo file system that answers ENOENT: an error at once, not a loop (Node recursive mkdirSync hangs there)', async (t) => {
  const started = Date.now()
  t.throws(() => makeDirs('/proc/policyd-ts-none/db', 0o700), { code: 'ENOENT' })
  t.ok(Date.now() - started < 1000)
})

t.test('a directory another process makes between the look and the mkdir is taken as made; a file there is not', async (t) => {
  const base = t.testdir({ file: 'x' })
  const target = path.join(base, 'db')
  fs.mkdirSync(target)
  // The look said "missing" (as it does for a process that looked just before another made it).
  const existsSync = fs.existsSync
  t.teardown(() => {
    fs.existsSync = existsSync
  })
  fs.existsSync = (p: fs.PathLike) => (String(p) === target || String(p) === path.join(base, 'file') ? false : existsSync(p))
  t.equal(makeDirs(target, 0o700), target, 'no EEXIST error')
  t.throws(() => makeDirs(path.join(base, 'file'), 0o700), { code: 'EEXIST' }, 'a file of that name is still an error')
})
