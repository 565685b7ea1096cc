// The I/O loop: any readable/writable pair (stdin/stdout under spawn(8), a
// socket later). Frames requests, hands them one at a time to `handle`, and
// writes exactly one reply per request, in order. Knows nothing of what a
// check decides.

import type { Readable, Writable } from 'node:stream'
import { encodeReply, RequestFramer, type Frame, type FramerLimits } from './protocol'

export type EndReason = 'eof' | 'idle' | 'lifetime' | 'output-closed' | 'input-error' | 'shutdown'

export interface ServeOptions {
  input: Readable
  output: Writable
  limits: FramerLimits
  /** Returns the action for one frame; must not throw (a throw is answered with failAction). */
  handle: (frame: Frame) => Promise<string> | string
  failAction: () => string
  log: (level: number, msg: string) => void
  /** At most 2^31-1 each (Node's longest timer; config.ts bounds max_idle and max_lifetime so). */
  maxIdleMs: number
  /** Infinity: no limit (the daemon's connections; Postfix's own max_ttl ends them). */
  maxLifetimeMs: number
  /** When aborted, stop reading, answer the requests already received, then end with 'shutdown'. */
  drain?: AbortSignal
  /** Time and timers: the real ones unless a test injects its own. */
  clock?: ServeClock
}

export interface ServeClock {
  now(): number
  setTimeout(fn: () => void, ms: number): unknown
  clearTimeout(timer: unknown): void
}

const REAL_CLOCK: ServeClock = {
  now: Date.now,
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout),
}

/** While draining, a connection this long without input (and nothing half-read) is closed. */
const DRAIN_QUIET_MS = 100

/** Frames queued beyond this pause the input, so pipelined floods cannot grow memory. */
const HIGH_WATER_FRAMES = 32

export function serve(opts: ServeOptions): Promise<EndReason> {
  const { input, output } = opts
  const clock = opts.clock ?? REAL_CLOCK
  const framer = new RequestFramer(opts.limits)
  const queue: Frame[] = []
  let busy = false
  let inputEnded = false
  let finished = false
  let lifetimeOver = false
  let paused = false
  /** Undefined while not armed: during a request, and after the end. */
  let idleTimer: unknown
  let resolveEnd!: (reason: EndReason) => void
  const ended = new Promise<EndReason>((resolve) => {
    resolveEnd = resolve
  })

  const finish = (reason: EndReason): void => {
    if (finished) return
    finished = true
    if (idleTimer !== undefined) clock.clearTimeout(idleTimer)
    clock.clearTimeout(lifetimeTimer)
    clock.clearTimeout(quietTimer)
    input.off('data', onData)
    input.off('end', onEnd)
    input.off('error', onInputError)
    output.off('error', onOutputError)
    input.on('error', () => undefined)
    output.on('error', () => undefined)
    input.pause()
    opts.drain?.removeEventListener('abort', onDrain)
    resolveEnd(reason)
  }

  // One timer for the idle limit, re-armed only when it fires: resetting a
  // timer on every request costs more than the rest of the loop. While a
  // request is under way the limit cannot apply: the timer then stays off
  // (it used to re-arm every millisecond) and pump() arms it again once the
  // queue is empty.
  let lastActivity = clock.now()
  const armIdle = (): void => {
    lastActivity = clock.now()
  }
  const checkIdle = (): void => {
    idleTimer = undefined
    if (finished || busy || queue.length > 0) return
    const idleFor = clock.now() - lastActivity
    if (idleFor >= opts.maxIdleMs) {
      finish('idle')
      return
    }
    idleTimer = clock.setTimeout(checkIdle, opts.maxIdleMs - idleFor)
  }
  const lifetimeTimer = Number.isFinite(opts.maxLifetimeMs)
    ? clock.setTimeout(() => {
        lifetimeOver = true
        if (!busy && queue.length === 0 && !framer.pending) finish('lifetime')
      }, opts.maxLifetimeMs)
    : undefined
  // Draining (the daemon stopping): every request that reaches us is
  // answered; the connection ends once it has been quiet for
  // DRAIN_QUIET_MS with nothing half-read. Postfix sends one request at a
  // time, so the one it has on the wire when TERM comes is answered, and
  // an idle connection closes at once.
  let draining = false
  let quietTimer: unknown
  const endWhenQuiet = (): void => {
    clock.clearTimeout(quietTimer)
    quietTimer = clock.setTimeout(() => {
      if (!finished && !busy && queue.length === 0 && !framer.pending) finish('shutdown')
    }, DRAIN_QUIET_MS)
  }
  const onDrain = (): void => {
    if (finished || draining) return
    draining = true
    void pump()
  }

  const onData = (chunk: Buffer | string): void => {
    framer.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk, queue)
    if (queue.length > HIGH_WATER_FRAMES && !paused) {
      paused = true
      input.pause()
    }
    void pump()
  }
  const onEnd = (): void => {
    inputEnded = true
    if (framer.pending) opts.log(0, 'input ended in the middle of a request; that request is not answered')
    void pump()
  }
  const onInputError = (err: Error): void => {
    opts.log(0, `input error: ${err.message}`)
    finish('input-error')
  }
  const onOutputError = (err: NodeJS.ErrnoException): void => {
    if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') opts.log(0, `output error: ${err.message}`)
    finish('output-closed')
  }

  // A reply goes straight to the file descriptor when the stream has
  // nothing queued: the stream machinery costs more than the write itself
  // (measured: +13% decisions/s). EAGAIN or a partial write hands the rest
  // to the stream, which keeps the order.
  const fd = typeof (output as { fd?: unknown }).fd === 'number' ? (output as unknown as { fd: number }).fd : -1
  const fs = fd >= 0 ? (require('node:fs') as typeof import('node:fs')) : null
  function writeReply(text: string): boolean {
    if (!fs || output.writableLength > 0) return output.write(text)
    const buf = Buffer.from(text)
    let written = 0
    try {
      written = fs.writeSync(fd, buf)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code !== 'EAGAIN' && code !== 'EWOULDBLOCK') {
        onOutputError(err as NodeJS.ErrnoException)
        return true
      }
    }
    return written === buf.length ? true : output.write(buf.subarray(written))
  }

  async function pump(): Promise<void> {
    if (busy || finished) return
    busy = true
    try {
      while (queue.length > 0 && !finished) {
        const frame = queue.shift()!
        let action: string
        try {
          action = await opts.handle(frame)
        } catch (err) {
          opts.log(0, `internal error, answering fail_action: ${(err as Error).stack ?? err}`)
          action = opts.failAction()
        }
        if (finished) return
        if (!writeReply(encodeReply(action))) {
          await new Promise<void>((resolve) => {
            const done = (): void => {
              output.off('drain', done)
              output.off('close', done)
              resolve()
            }
            output.on('drain', done)
            output.on('close', done)
          })
        }
        if (paused && queue.length <= HIGH_WATER_FRAMES / 2 && !finished) {
          paused = false
          input.resume()
        }
        armIdle()
      }
    } finally {
      busy = false
    }
    if (finished) return
    if (idleTimer === undefined) idleTimer = clock.setTimeout(checkIdle, opts.maxIdleMs)
    if (inputEnded) finish('eof')
    else if (draining && !framer.pending) endWhenQuiet()
    else if (lifetimeOver && !framer.pending) finish('lifetime')
  }

  input.on('data', onData)
  input.on('end', onEnd)
  input.on('error', onInputError)
  output.on('error', onOutputError)
  idleTimer = clock.setTimeout(checkIdle, opts.maxIdleMs)
  if (opts.drain?.aborted) onDrain()
  else opts.drain?.addEventListener('abort', onDrain, { once: true })
  return ended
}
