// Logging to syslog without a native module: one long-lived logger(1) child
// per process reads lines on its stdin (with a <PRI> prefix each) and sends
// them to the syslog socket. When the socket is missing or logger dies,
// lines go to log_file. When syslog stops taking lines, logger(1) blocks and
// its pipe fills: then lines wait in a bounded queue, and past it they are
// dropped and counted, never buffered without limit. Nothing is ever written
// to stdout or stderr: under spawn(8) both are the SMTP server's socket.

import type { Config } from './config'
import type { Writable } from 'node:stream'

export interface LogOptions {
  debugLevel: number
  syslogSocket: string
  facility: string
  logFile: string
  ident: string
  pid: number
  /** For tests: replaces the logger(1) child and the file. */
  sink?: (line: string, priority: number) => void
  /** For tests: starts something in place of logger(1) (e.g. one that stops reading). */
  startLogger?: () => LoggerChild
}

/** What is used of the logger(1) child: its stdin and its end. */
export interface LoggerChild {
  readonly stdin: Writable
  on(event: 'exit', listener: (code: number | null) => void): unknown
  on(event: 'error', listener: (err: Error) => void): unknown
  once(event: 'exit', listener: () => void): unknown
}

export interface Logger {
  /** Log `msg` when debugLevel >= level (0 errors, 1 decisions, 2 checks, 3 config/start/stop, 4 input lines). */
  log(level: number, msg: string): void
  /** Log once per state change of `topic`: a repeated (topic, state) pair is dropped. */
  logStateChange(topic: string, state: string, level: number, msg: string): void
  enabled(level: number): boolean
  setLevel(level: number): void
  /** Write out what waits for log_file and close it: the next line opens it afresh (after a rotation, the new file). */
  reopen(): void
  close(): Promise<void>
}

const FACILITIES: Record<string, number> = {
  user: 1, mail: 2, daemon: 3, local0: 16, local1: 17, local2: 18, local3: 19,
  local4: 20, local5: 21, local6: 22, local7: 23,
}
const LOG_ERR = 3
const LOG_INFO = 6
const LOG_DEBUG = 7
/** Lines waiting while logger(1) does not read (syslog stalled): past it they are dropped and counted. */
const MAX_QUEUED = 2000
const MAX_LINE = 4000
const FLUSH_MS = 50
const BATCH_LINES = 32

export function createLogger(opts: LogOptions): Logger {
  return new SyslogLogger(opts)
}

/** The log of this process as the configuration sets it up (syslog, log_file fallback, debugLevel). */
export function processLogger(config: Pick<Config, 'debugLevel' | 'syslog_socket' | 'syslog_facility' | 'log_file'>): Logger {
  return createLogger({
    debugLevel: config.debugLevel,
    syslogSocket: config.syslog_socket,
    facility: config.syslog_facility,
    logFile: config.log_file,
    ident: 'policyd-ts',
    pid: process.pid,
  })
}

class SyslogLogger implements Logger {
  private level: number
  private child: LoggerChild | null = null
  private childFailed = false
  /** The child's stdin took more than its buffer: nothing more is written until it drains. */
  private waitingForDrain = false
  private queue: string[] = []
  private flushTimer: NodeJS.Timeout | undefined
  private states = new Map<string, string>()
  private closed = false
  private dropped = 0
  private fileQueue: string[] = []
  private fileTimer: NodeJS.Timeout | undefined
  private fileFd: number | null = null

  constructor(private readonly opts: LogOptions) {
    this.level = opts.debugLevel
  }

  enabled(level: number): boolean {
    return level <= this.level
  }

  setLevel(level: number): void {
    this.level = level
  }

  log(level: number, msg: string): void {
    if (level > this.level || this.closed) return
    // One record per line whatever the message holds.
    // eslint-disable-next-line no-control-regex
    let text = msg.replace(/[\x00-\x1f\x7f]+/g, ' ')
    if (text.length > MAX_LINE) text = `${text.slice(0, MAX_LINE)}...`
    const priority = this.priority(level)
    if (this.opts.sink) {
      this.opts.sink(text, priority)
      return
    }
    if (this.childFailed) {
      this.writeFile(text)
      return
    }
    if (this.queue.length >= MAX_QUEUED) {
      this.dropped++
      return
    }
    this.queue.push(`<${priority}>${text}\n`)
    if (this.queue.length >= BATCH_LINES && this.child) this.flushQueue()
    else this.flushSoon()
  }

  logStateChange(topic: string, state: string, level: number, msg: string): void {
    const previous = this.states.get(topic)
    if (previous === state) return
    this.states.set(topic, state)
    // A healthy start is not news; only a recovery is.
    if (previous === undefined && state === 'ok') return
    this.log(level, msg)
  }

  // Lines are handed on in batches, at most FLUSH_MS or BATCH_LINES apart:
  // one pipe write (and one wake-up of logger) per batch instead of per
  // request, and few lines held long enough to outlive the young heap. The child is
  // started after the first reply has been written: a fork costs
  // milliseconds that the first reply should not wait for.
  private flushSoon(): void {
    if (this.flushTimer) return
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined
      if (!this.child && !this.childFailed) this.startChild()
      this.flushQueue()
    }, this.child ? FLUSH_MS : 0)
  }

  private startChild(): void {
    const child = this.opts.startLogger ? this.opts.startLogger() : this.spawnLogger()
    if (!child) return
    child.on('error', () => this.failOver('cannot run logger(1)'))
    child.on('exit', (code) => {
      if (this.child === child) {
        this.child = null
        if (!this.closed) this.failOver(`logger(1) exited with status ${code}`)
      }
    })
    child.stdin.on('error', () => undefined)
    this.child = child
  }

  private spawnLogger(): LoggerChild | null {
    const fs = require('node:fs') as typeof import('node:fs')
    const socket = this.opts.syslogSocket
    let usable = false
    try {
      usable = fs.statSync(socket).isSocket()
    } catch {
      usable = false
    }
    if (!usable) {
      this.failOver(`syslog socket ${socket} is not available`)
      return null
    }
    const { spawn } = require('node:child_process') as typeof import('node:child_process')
    try {
      return spawn(
        'logger',
        ['--socket-errors=on', '-u', socket, '-t', this.opts.ident, `--id=${this.opts.pid}`, '--prio-prefix'],
        { stdio: ['pipe', 'ignore', 'ignore'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } },
      )
    } catch {
      this.failOver('cannot run logger(1)')
      return null
    }
  }

  private failOver(reason: string): void {
    this.childFailed = true
    this.child = null
    this.waitingForDrain = false
    const pending = this.queue
    this.queue = []
    this.writeFile(`syslog unavailable (${reason}); logging to this file`)
    for (const entry of pending) this.writeFile(entry.replace(/^<\d+>/, '').replace(/\n$/, ''))
    if (this.dropped > 0) this.writeFile(this.droppedNotice())
  }

  private priority(level: number): number {
    const severity = level === 0 ? LOG_ERR : level === 1 ? LOG_INFO : LOG_DEBUG
    return (FACILITIES[this.opts.facility] ?? 2) * 8 + severity
  }

  private droppedNotice(): string {
    const text = `${this.dropped} log lines dropped: syslog not accepting`
    this.dropped = 0
    return text
  }

  // Backpressure: while logger(1) does not read (syslog stalled), nothing
  // more goes into its pipe; lines wait in the queue, up to MAX_QUEUED, and
  // past that are dropped and counted. When the pipe drains, the queue goes
  // out with one line saying how many were dropped.
  private flushQueue(): void {
    clearTimeout(this.flushTimer)
    this.flushTimer = undefined
    const child = this.child
    if (!child || this.waitingForDrain || (this.queue.length === 0 && this.dropped === 0)) return
    if (this.dropped > 0) this.queue.push(`<${this.priority(0)}>${this.droppedNotice()}\n`)
    const accepted = child.stdin.write(this.queue.join(''))
    this.queue = []
    if (accepted) return
    this.waitingForDrain = true
    child.stdin.once('drain', () => {
      this.waitingForDrain = false
      if (!this.closed) this.flushQueue()
    })
  }

  // Lines for the file are batched like those for syslog and appended
  // through one descriptor kept open.
  private writeFile(text: string): void {
    if (!this.opts.logFile) return
    this.fileQueue.push(`${new Date().toISOString()} ${this.opts.ident}[${this.opts.pid}]: ${text}\n`)
    if (this.fileQueue.length >= BATCH_LINES) this.flushFile()
    else this.fileTimer ??= setTimeout(() => this.flushFile(), FLUSH_MS)
  }

  private flushFile(): void {
    clearTimeout(this.fileTimer)
    this.fileTimer = undefined
    if (this.fileQueue.length === 0) return
    const data = this.fileQueue.join('')
    this.fileQueue = []
    const fs = require('node:fs') as typeof import('node:fs')
    try {
      if (this.fileFd === null) this.fileFd = fs.openSync(this.opts.logFile, 'a', 0o640)
      fs.writeSync(this.fileFd, data)
    } catch {
      // Nowhere left to report it: stdout and stderr belong to Postfix.
      // The file is opened afresh next time (it may have been rotated away).
      this.closeFile()
    }
  }

  reopen(): void {
    this.flushFile()
    this.closeFile()
  }

  private closeFile(): void {
    if (this.fileFd === null) return
    try {
      ;(require('node:fs') as typeof import('node:fs')).closeSync(this.fileFd)
    } catch {
      // already gone
    }
    this.fileFd = null
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve()
    clearTimeout(this.flushTimer)
    this.flushTimer = undefined
    if (!this.child && this.queue.length > 0 && !this.childFailed) this.startChild()
    if (this.waitingForDrain) {
      // Syslog still takes nothing: the lines waiting are lost. Say how many
      // where it can be read: the file.
      this.dropped += this.queue.length
      this.queue = []
      if (this.dropped > 0) this.writeFile(`${this.droppedNotice()} (at exit)`)
    } else this.flushQueue()
    this.flushFile()
    this.closeFile()
    this.closed = true
    const child = this.child
    if (!child) return Promise.resolve()
    return new Promise((resolve) => {
      const timer = setTimeout(done, 1000)
      function done(): void {
        clearTimeout(timer)
        resolve()
      }
      child.once('exit', done)
      child.stdin.end()
    })
  }
}
