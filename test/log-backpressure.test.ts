// When syslog does not take lines (logger(1) blocked on a stalled socket),
// the logger neither buffers without limit nor loses lines silently: a
// bounded queue, then drops that are counted and logged once it drains.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { EventEmitter } from 'node:events'
import { Writable } from 'node:stream'
import { createLogger, type LoggerChild } from '../lib/log'

/** A logger(1) stand-in that reads nothing until released, as when the syslog socket is full. */
class StalledLogger extends EventEmitter implements LoggerChild {
  readonly received: string[] = []
  private stalled = true
  private held: Array<() => void> = []
  readonly stdin = new Writable({
    write: (chunk: Buffer, _encoding, done) => {
      const take = (): void => {
        this.received.push(chunk.toString())
        done()
      }
      if (this.stalled) this.held.push(take)
      else take()
    },
  })

  constructor() {
    super()
    // Like logger(1) told to stop: it goes at once, whatever it had not read yet.
    const end = this.stdin.end.bind(this.stdin)
    this.stdin.end = ((...args: Parameters<Writable['end']>) => {
      setImmediate(() => this.emit('exit', 0))
      return end(...args)
    }) as Writable['end']
  }

  release(): void {
    this.stalled = false
    for (const take of this.held.splice(0)) take()
  }

  lines(): string[] {
    return this.received.join('').split('\n').filter((l) => l !== '')
  }
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

async function stalledLogger(t: Tap.Test, logFile = '') {
  const child = new StalledLogger()
  const log = createLogger({ debugLevel: 1, syslogSocket: '', facility: 'mail', logFile, ident: 'policyd-ts', pid: 7, startLogger: () => child })
  t.teardown(() => log.close())
  log.log(1, 'line 0')
  // The child starts on the first flush, just after the first line.
  await new Promise((resolve) => setTimeout(resolve, 0))
  return { child, log }
}

const LINES = 10000
const text = (i: number): string => `line ${i} ${'x'.repeat(90)}`

t.test('a stalled syslog: the pipe is not filled past its buffer, the drop is counted and logged when it drains', async (t) => {
  const { child, log } = await stalledLogger(t)
  for (let i = 1; i < LINES; i++) log.log(1, text(i))
  const logged = LINES * text(LINES).length
  t.ok(child.stdin.writableLength < 64 * 1024, `the pipe holds ${child.stdin.writableLength} bytes of ${logged} logged`)

  child.release()
  for (let i = 0; i < 5; i++) await tick()
  const lines = child.lines()
  const notice = lines.at(-1)!
  const m = /^<19>(\d+) log lines dropped: syslog not accepting$/.exec(notice)
  t.ok(m, `the last line says how many were dropped, as mail.err: ${notice}`)
  const dropped = Number(m![1])
  const kept = lines.slice(0, -1)
  t.ok(kept.length <= 2000 + 1000, `at most the queue and what the pipe held came through: ${kept.length}`)
  t.equal(kept.length + dropped, LINES, 'every line is either delivered or counted')
  t.same(kept.map((l) => Number(/^<22>line (\d+)/.exec(l)?.[1])), kept.map((_, i) => i), 'the oldest lines are kept, in order')

  log.log(1, 'after the stall')
  await log.close()
  t.same(child.lines().slice(lines.length), ['<22>after the stall'], 'then lines go as before, with no second notice')
})

t.test('syslog still stalled at exit: how many lines were lost goes to the file', async (t) => {
  const logFile = path.join(t.testdir(), 'fallback.log')
  const { child, log } = await stalledLogger(t, logFile)
  for (let i = 1; i < LINES; i++) log.log(1, text(i))
  await log.close()
  const m = / policyd-ts\[7\]: (\d+) log lines dropped: syslog not accepting \(at exit\)$/m.exec(fs.readFileSync(logFile, 'utf8'))
  t.ok(m, 'the count is in the file')
  t.ok(Number(m![1]) > LINES - 1000 && Number(m![1]) < LINES, `all but what the pipe held: ${m![1]}`)
  t.same(child.lines(), [], 'nothing reached syslog')
})
