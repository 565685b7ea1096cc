// Framing of Postfix policy requests (name=value lines ended by an empty
// line) with hard bounds, and encoding of the one-line reply. Knows nothing
// of what a request means.

export interface FramerLimits {
  maxLineLength: number
  maxAttributes: number
  maxRequestBytes: number
}

export type Frame =
  | { kind: 'request'; attrs: Map<string, string>; garbage: string[]; duplicates: string[] }
  | { kind: 'discarded'; reason: string }

const LF = 0x0a

/**
 * Incremental parser. Memory is bounded by maxLineLength + maxRequestBytes
 * whatever the input: bytes of an over-long line are dropped as they arrive
 * and a request past a bound keeps being consumed (without storing it)
 * until its empty line, so that it still gets exactly one reply.
 */
export class RequestFramer {
  private parts: Buffer[] = []
  private lineBytes = 0
  private lineTooLong = false
  private attrs = new Map<string, string>()
  private garbage: string[] = []
  private duplicates: string[] = []
  private lines = 0
  private requestBytes = 0
  private discardReason: string | null = null

  constructor(private readonly limits: FramerLimits) {}

  /** True while part of a request has been read but not its end. */
  get pending(): boolean {
    return this.lines > 0 || this.lineBytes > 0
  }

  push(chunk: Buffer, out: Frame[]): void {
    let start = 0
    while (start < chunk.length) {
      const nl = chunk.indexOf(LF, start)
      const end = nl === -1 ? chunk.length : nl
      this.appendToLine(chunk, start, end)
      if (nl === -1) break
      this.endLine(out)
      start = nl + 1
    }
  }

  private appendToLine(chunk: Buffer, start: number, end: number): void {
    const n = end - start
    if (n === 0) return
    this.lineBytes += n
    this.requestBytes += n
    if (this.lineTooLong) return
    if (this.lineBytes > this.limits.maxLineLength) {
      this.lineTooLong = true
      this.parts = []
      return
    }
    this.parts.push(chunk.subarray(start, end))
  }

  private endLine(out: Frame[]): void {
    let line = this.takeLine()
    const tooLong = this.lineTooLong
    const bytes = this.lineBytes
    this.lineTooLong = false
    this.lineBytes = 0
    if (line !== null && line.endsWith('\r')) line = line.slice(0, -1)
    if (!tooLong && line === '') {
      out.push(this.finishRequest())
      return
    }
    this.requestBytes += 1
    this.lines += 1
    if (this.discardReason !== null) return
    if (tooLong) {
      this.discard(`attribute line of ${bytes} bytes exceeds max_line_length ${this.limits.maxLineLength}`)
    } else if (this.lines > this.limits.maxAttributes) {
      this.discard(`more than max_attributes ${this.limits.maxAttributes} attribute lines`)
    } else if (this.requestBytes > this.limits.maxRequestBytes) {
      this.discard(`request exceeds max_request_bytes ${this.limits.maxRequestBytes}`)
    } else {
      this.addAttribute(line!)
    }
  }

  private takeLine(): string | null {
    if (this.lineTooLong) return null
    const line = this.parts.length === 1 ? this.parts[0].toString('utf8') : Buffer.concat(this.parts).toString('utf8')
    this.parts = []
    return line
  }

  private addAttribute(line: string): void {
    const eq = line.indexOf('=')
    if (eq <= 0) {
      if (this.garbage.length < 4) this.garbage.push(line.length > 80 ? `${line.slice(0, 80)}...` : line)
      return
    }
    const name = line.slice(0, eq)
    // Postfix never repeats a name; when a client does, the first value counts.
    if (this.attrs.has(name)) {
      if (this.duplicates.length < 4) this.duplicates.push(name)
      return
    }
    this.attrs.set(name, line.slice(eq + 1))
  }

  private discard(reason: string): void {
    this.discardReason = reason
    this.attrs = new Map()
    this.garbage = []
  }

  private finishRequest(): Frame {
    const frame: Frame =
      this.discardReason !== null
        ? { kind: 'discarded', reason: this.discardReason }
        : { kind: 'request', attrs: this.attrs, garbage: this.garbage, duplicates: this.duplicates }
    this.attrs = new Map()
    this.garbage = []
    this.duplicates = []
    this.lines = 0
    this.requestBytes = 0
    this.discardReason = null
    return frame
  }
}

/** Longest action text sent back; a header line must stay under RFC 5322's 998 characters. */
export const MAX_ACTION_LENGTH = 990

/**
 * The reply for one request: exactly `action=<one line>` and an empty line.
 * Control characters (which could end the reply early or start a second
 * header line) become spaces; overlong text is cut on a character boundary.
 */
export function encodeReply(action: string): string {
  // eslint-disable-next-line no-control-regex
  let text = action.replace(/[\x00-\x1f\x7f]+/g, ' ').trim()
  if (text === '') text = 'DUNNO'
  if (text.length > MAX_ACTION_LENGTH) {
    text = text.slice(0, MAX_ACTION_LENGTH)
    const last = text.charCodeAt(text.length - 1)
    if (last >= 0xd800 && last <= 0xdbff) text = text.slice(0, -1)
  }
  return `action=${text}\n\n`
}
