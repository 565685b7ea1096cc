import t from 'tap'
import { PassThrough } from 'node:stream'
import { serve, type ServeClock } from '../lib/server'
import type { Frame } from '../lib/protocol'

const limits = { maxLineLength: 1000, maxAttributes: 50, maxRequestBytes: 10000 }

/** A clock that moves only when told; counts the timers that fire. */
function fakeClock() {
  let now = 1_000_000
  let fired = 0
  const timers = new Set<{ at: number; fn: () => void }>()
  const clock: ServeClock & { advance(ms: number): void; fired(): number; armed(): number[] } = {
    now: () => now,
    setTimeout: (fn, ms) => {
      const timer = { at: now + ms, fn }
      timers.add(timer)
      return timer
    },
    clearTimeout: (timer) => void timers.delete(timer as { at: number; fn: () => void }),
    /** Move time forward, firing each timer due on the way at its time (a timer may arm others); bounded. */
    advance(ms) {
      const end = now + ms
      for (let i = 0; i < 1_000_000; i++) {
        let next: { at: number; fn: () => void } | undefined
        for (const timer of timers) if (timer.at <= end && (!next || timer.at < next.at)) next = timer
        if (!next) break
        timers.delete(next)
        now = Math.max(now, next.at)
        fired++
        next.fn()
      }
      now = end
    },
    fired: () => fired,
    armed: () => [...timers].map((timer) => timer.at - now),
  }
  return clock
}

/** Let the streams and the promises of the loop run. */
const settle = async (): Promise<void> => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r))
}

function setup(handle: (f: Frame) => Promise<string> | string, extra: { maxIdleMs?: number; maxLifetimeMs?: number; clock?: ServeClock } = {}) {
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
    clock: extra.clock,
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

t.test('idle limit ends the loop between requests, counted from the last reply', async (t) => {
  const clock = fakeClock()
  const s = setup(() => 'DUNNO', { maxIdleMs: 30, clock })
  let end: string | undefined
  void s.ended.then((reason) => (end = reason))
  clock.advance(20)
  s.input.write('a=1\n\n')
  await settle()
  t.equal(s.out(), 'action=DUNNO\n\n')
  clock.advance(29)
  await settle()
  t.equal(end, undefined, 'not idle 29 ms after the reply')
  clock.advance(1)
  await settle()
  t.equal(end, 'idle')
})

t.test('lifetime limit waits for the request in progress', async (t) => {
  const clock = fakeClock()
  let answer!: (action: string) => void
  const s = setup(() => new Promise<string>((r) => (answer = r)), { maxLifetimeMs: 20, clock })
  let end: string | undefined
  void s.ended.then((reason) => (end = reason))
  s.input.write('a=1\n\n')
  await settle()
  clock.advance(60)
  await settle()
  t.equal(end, undefined, 'still answering past the lifetime')
  answer('DUNNO')
  await settle()
  t.equal(end, 'lifetime')
  t.equal(s.out(), 'action=DUNNO\n\n', 'the request under way was answered first')
})

t.test('the idle timer does not fire in a loop while a request takes longer than max_idle', async (t) => {
  const clock = fakeClock()
  let answer!: (action: string) => void
  const s = setup(() => new Promise<string>((r) => (answer = r)), { maxIdleMs: 1000, clock })
  let end: string | undefined
  void s.ended.then((reason) => (end = reason))
  s.input.write('a=1\n\n')
  await settle()
  clock.advance(5000)
  t.ok(clock.fired() <= 1, `the idle timer fired ${clock.fired()} times in 5 s of one request (it used to re-arm every millisecond)`)
  t.equal(end, undefined, 'a request under way is not ended by the idle limit')
  answer('DUNNO')
  await settle()
  t.same(clock.armed().filter((ms) => ms !== 60000 - 5000), [1000], 'after the reply the idle timer is armed with the whole max_idle')
  clock.advance(999)
  await settle()
  t.equal(end, undefined)
  clock.advance(1)
  await settle()
  t.equal(end, 'idle')
  t.equal(s.out(), 'action=DUNNO\n\n')
})

t.test('an output error ends the loop as output-closed', async (t) => {
  const s = setup(() => 'DUNNO')
  s.output.destroy(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }))
  s.input.write('a=1\n\n')
  t.equal(await s.ended, 'output-closed')
  t.equal(s.logs.length, 0, 'EPIPE is not worth a log line')
})
