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
const CR = 0x0d

/**
 * Incremental parser. Memory is bounded by maxRequestBytes whatever the
 * input: bytes of a request past a bound are dropped as they arrive, and
 * such a request keeps being consumed (without storing it) until its empty
 * line, so that it still gets exactly one reply. Bounds are checked on raw
 * bytes; the text of a request is decoded once, when it is complete.
 */
export class RequestFramer {
  /** Raw bytes of the current request's complete lines (each with its LF). */
  private parts: Buffer[] = []
  private lineBytes = 0
  private lines = 0
  private requestBytes = 0
  private discardReason: string | null = null
  /** Last byte of the previous chunk, for a CR LF split between chunks. */
  private lastByte = -1

  constructor(private readonly limits: FramerLimits) {}

  /** True while part of a request has been read but not its end. */
  get pending(): boolean {
    return this.lines > 0 || this.lineBytes > 0
  }

  push(chunk: Buffer, out: Frame[]): void {
    let start = 0
    while (start < chunk.length) {
      const nl = chunk.indexOf(LF, start)
      const end = nl === -1 ? chunk.length : nl + 1
      const n = end - start
      this.lineBytes += n
      this.requestBytes += n
      if (this.discardReason === null) this.keep(chunk, start, end)
      if (nl === -1) {
        this.lastByte = chunk[chunk.length - 1]
        break
      }
      this.endLine(nl > start ? chunk[nl - 1] : this.lastByte, out)
      start = end
    }
  }

  private keep(chunk: Buffer, start: number, end: number): void {
    // The LF is not counted in the line length.
    const length = chunk[end - 1] === LF ? this.lineBytes - 1 : this.lineBytes
    if (length > this.limits.maxLineLength) {
      this.discard(`attribute line longer than max_line_length ${this.limits.maxLineLength} bytes`)
    } else if (this.requestBytes > this.limits.maxRequestBytes) {
      this.discard(`request exceeds max_request_bytes ${this.limits.maxRequestBytes}`)
    } else {
      this.parts.push(chunk.subarray(start, end))
    }
  }

  private endLine(byteBeforeLf: number, out: Frame[]): void {
    const length = this.lineBytes - 1
    this.lineBytes = 0
    const empty = length === 0 || (length === 1 && byteBeforeLf === CR)
    if (empty) {
      out.push(this.finishRequest())
      return
    }
    this.lines += 1
    if (this.discardReason === null && this.lines > this.limits.maxAttributes) {
      this.discard(`more than max_attributes ${this.limits.maxAttributes} attribute lines`)
    }
  }

  private discard(reason: string): void {
    this.discardReason = reason
    this.parts = []
  }

  private finishRequest(): Frame {
    let frame: Frame
    if (this.discardReason !== null) {
      frame = { kind: 'discarded', reason: this.discardReason }
    } else {
      const text = this.parts.length === 1 ? this.parts[0].toString('utf8') : Buffer.concat(this.parts).toString('utf8')
      frame = parseAttributes(text)
    }
    this.parts = []
    this.lines = 0
    this.requestBytes = 0
    this.discardReason = null
    return frame
  }
}

function parseAttributes(text: string): Frame {
  const attrs = new Map<string, string>()
  const garbage: string[] = []
  const duplicates: string[] = []
  const lines = text.split('\n')
  // The text ends with the empty line and its LF: the last two elements.
  for (let i = 0; i < lines.length - 2; i++) {
    let line = lines[i]
    if (line.endsWith('\r')) line = line.slice(0, -1)
    const eq = line.indexOf('=')
    if (eq <= 0) {
      if (garbage.length < 4) garbage.push(line.length > 80 ? `${line.slice(0, 80)}...` : line)
      continue
    }
    const name = line.slice(0, eq)
    // Postfix never repeats a name; when a client does, the first value counts.
    if (attrs.has(name)) {
      if (duplicates.length < 4) duplicates.push(name)
      continue
    }
    attrs.set(name, line.slice(eq + 1))
  }
  return { kind: 'request', attrs, garbage, duplicates }
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
