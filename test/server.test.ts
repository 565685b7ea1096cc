import t from 'tap'
import { PassThrough } from 'node:stream'
import { serve } from '../lib/server'
import type { Frame } from '../lib/protocol'

const limits = { maxLineLength: 1000, maxAttributes: 50, maxRequestBytes: 10000 }

function setup(handle: (f: Frame) => Promise<string> | string, extra: { maxIdleMs?: number; maxLifetimeMs?: number } = {}) {
  const input = new PassThrough()
  const output = new PassThrough()
  let out = ''
  output.on('data', (d: Buffer) => (out += d.toString()))
  const logs: string[] = []
  const ended = serve({
    input,
    output,
    limits,
    handle,
    failAction: () => 'DEFER_IF_PERMIT fail',
    log: (_l, m) => logs.push(m),
    maxIdleMs: extra.maxIdleMs ?? 60000,
    maxLifetimeMs: extra.maxLifetimeMs ?? 60000,
  })
  return { input, output, ended, out: () => out, logs }
}

t.test('replies in order even when handling takes longer for earlier requests', async (t) => {
  const s = setup(async (f) => {
    const n = f.kind === 'request' ? Number(f.attrs.get('n')) : 0
    await new Promise((r) => setTimeout(r, (3 - n) * 5))
    return `OK ${n}`
  })
  s.input.end('n=1\n\nn=2\n\nn=3\n\n')
  t.equal(await s.ended, 'eof')
  t.equal(s.out(), 'action=OK 1\n\naction=OK 2\n\naction=OK 3\n\n')
})

t.test('a handler that throws is answered with fail_action and logged', async (t) => {
  const s = setup(() => {
    throw new Error('boom')
  })
  s.input.end('a=1\n\n')
  await s.ended
  t.equal(s.out(), 'action=DEFER_IF_PERMIT fail\n\n')
  t.match(s.logs.join('\n'), /internal error, answering fail_action: Error: boom/)
})

t.test('a flood of pipelined requests pauses the input and every one is answered', async (t) => {
  let sawPaused = false
  const s = setup(async () => {
    sawPaused ||= s.input.isPaused()
    await new Promise((r) => setImmediate(r))
    return 'DUNNO'
  })
  const n = 2000
  s.input.end('a=1\n\n'.repeat(n))
  t.equal(await s.ended, 'eof')
  t.equal(s.out().split('\n\n').length - 1, n)
  t.ok(sawPaused, 'input paused while frames were queued')
})

t.test('idle limit ends the loop between requests', async (t) => {
  const s = setup(() => 'DUNNO', { maxIdleMs: 30 })
  s.input.write('a=1\n\n')
  t.equal(await s.ended, 'idle')
  t.equal(s.out(), 'action=DUNNO\n\n')
})

t.test('lifetime limit waits for the request in progress', async (t) => {
  const s = setup(async () => {
    await new Promise((r) => setTimeout(r, 60))
    return 'DUNNO'
  }, { maxLifetimeMs: 20 })
  s.input.write('a=1\n\n')
  t.equal(await s.ended, 'lifetime')
  t.equal(s.out(), 'action=DUNNO\n\n', 'the request under way was answered first')
})

t.test('an output error ends the loop as output-closed', async (t) => {
  const s = setup(() => 'DUNNO')
  s.output.destroy(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }))
  s.input.write('a=1\n\n')
  t.equal(await s.ended, 'output-closed')
  t.equal(s.logs.length, 0, 'EPIPE is not worth a log line')
})
