import t from 'tap'
import { encodeReply, MAX_ACTION_LENGTH, RequestFramer, type Frame } from '../lib/protocol'

const limits = { maxLineLength: 100, maxAttributes: 5, maxRequestBytes: 300 }

function frames(input: string | Buffer, chunkSize = 0, l = limits): Frame[] {
  const framer = new RequestFramer(l)
  const out: Frame[] = []
  const buf = Buffer.isBuffer(input) ? input : Buffer.from(input)
  if (chunkSize === 0) framer.push(buf, out)
  else for (let i = 0; i < buf.length; i += chunkSize) framer.push(buf.subarray(i, i + chunkSize), out)
  return out
}

function attrs(f: Frame): Record<string, string> {
  if (f.kind !== 'request') throw new Error(`expected a request, got ${f.kind}`)
  return Object.fromEntries(f.attrs)
}

t.test('one request, any chunking', async (t) => {
  const text = 'request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@b\n\n'
  for (const size of [0, 1, 2, 7]) {
    const out = frames(text, size)
    t.equal(out.length, 1, `chunk size ${size}`)
    t.same(attrs(out[0]), { request: 'smtpd_access_policy', protocol_state: 'RCPT', sender: 'a@b' })
  }
})

t.test('pipelined requests come out in order', async (t) => {
  const out = frames('n=1\n\nn=2\n\nn=3\n\n', 3)
  t.same(out.map((f) => attrs(f).n), ['1', '2', '3'])
})

t.test('value keeps everything after the first =', async (t) => {
  t.same(attrs(frames('ccert_subject=CN=x=y\nempty=\n\n')[0]), { ccert_subject: 'CN=x=y', empty: '' })
})

t.test('lines without = are kept aside as garbage, CR before LF is dropped', async (t) => {
  const [f] = frames('garbage line\n=novalue\na=1\r\n\n')
  t.equal(f.kind, 'request')
  if (f.kind !== 'request') return
  t.same(f.garbage, ['garbage line', '=novalue'])
  t.same(Object.fromEntries(f.attrs), { a: '1' })
})

t.test('the first of repeated names counts', async (t) => {
  const [f] = frames('a=1\na=2\n\n')
  if (f.kind !== 'request') throw new Error('not a request')
  t.equal(f.attrs.get('a'), '1')
  t.same(f.duplicates, ['a'])
})

t.test('line length bound: exactly at the bound passes, one byte over discards the request', async (t) => {
  const atBound = `a=${'x'.repeat(98)}`
  t.equal(atBound.length, 100)
  t.equal(frames(`${atBound}\n\n`)[0].kind, 'request')
  const out = frames(`${atBound}y\nb=2\n\nc=3\n\n`, 13)
  t.equal(out.length, 2, 'the discarded request still ends at its empty line')
  t.equal(out[0].kind, 'discarded')
  t.match((out[0] as { reason: string }).reason, /max_line_length 100/)
  t.same(attrs(out[1]), { c: '3' }, 'the next request is intact')
})

t.test('attribute count bound', async (t) => {
  const five = 'a=1\nb=2\nc=3\nd=4\ne=5\n'
  t.equal(frames(`${five}\n`)[0].kind, 'request')
  const [f] = frames(`${five}f=6\n\n`)
  t.equal(f.kind, 'discarded')
  t.match((f as { reason: string }).reason, /max_attributes 5/)
})

t.test('request size bound: exactly max_request_bytes (empty line included) passes, one byte more discards', async (t) => {
  const l = { maxLineLength: 100, maxAttributes: 100, maxRequestBytes: 50 }
  const request = (bytes: number): string => {
    const first = `a=${'x'.repeat(20)}\n` // 23 bytes with the newline
    const text = `${first}b=${'y'.repeat(bytes - first.length - 4)}\n\n`
    if (Buffer.byteLength(text) !== bytes) throw new Error(`built ${Buffer.byteLength(text)} bytes, not ${bytes}`)
    return text
  }
  for (const size of [0, 1, 7]) {
    t.equal(frames(request(50), size, l)[0].kind, 'request', `50 bytes, the largest accepted request (chunks of ${size || 'all'})`)
    const [over] = frames(request(51), size, l)
    t.equal(over.kind, 'discarded', `51 bytes (chunks of ${size || 'all'})`)
    t.match((over as { reason: string }).reason, /max_request_bytes 50/)
  }
  const out = frames(`${request(51)}${request(50)}`, 0, l)
  t.same(out.map((f) => f.kind), ['discarded', 'request'], 'the count starts afresh with the next request')
})

t.test('a 2 MiB line is dropped as it arrives: the framer holds no more than the bound', async (t) => {
  const framer = new RequestFramer(limits)
  const out: Frame[] = []
  const chunk = Buffer.alloc(64 * 1024, 0x41)
  framer.push(Buffer.from('a='), out)
  for (let i = 0; i < 32; i++) framer.push(chunk, out)
  const held = (framer as unknown as { parts: Buffer[] }).parts.reduce((n, b) => n + b.length, 0)
  t.ok(held <= limits.maxLineLength, `holds ${held} bytes`)
  t.ok(framer.pending)
  framer.push(Buffer.from('\n\n'), out)
  t.equal(out.length, 1)
  t.equal(out[0].kind, 'discarded')
  t.notOk(framer.pending)
})

t.test('invalid UTF-8 and NUL bytes do not break framing', async (t) => {
  const out = frames(Buffer.concat([Buffer.from('a='), Buffer.from([0xff, 0xfe, 0x00, 0xc3]), Buffer.from('\n\nb=1\n\n')]))
  t.equal(out.length, 2)
  t.same(attrs(out[1]), { b: '1' })
})

t.test('encodeReply: one line, control characters removed, bounded', async (t) => {
  const cases: Array<[string, string]> = [
    ['DUNNO', 'action=DUNNO\n\n'],
    ['  ', 'action=DUNNO\n\n'],
    ['PREPEND X-A: 1\r\nX-Injected: 2', 'action=PREPEND X-A: 1 X-Injected: 2\n\n'],
    ['REJECT a\0b\x7fc', 'action=REJECT a b c\n\n'],
  ]
  for (const [got, want] of cases) t.equal(encodeReply(got), want, JSON.stringify(got))
  const long = encodeReply(`PREPEND X: ${'é'.repeat(2000)}`)
  t.equal(long.length, 'action='.length + MAX_ACTION_LENGTH + 2)
  t.equal(long.split('\n').length, 3)
  const surrogate = encodeReply(`${'x'.repeat(MAX_ACTION_LENGTH - 1)}😀`)
  t.notOk(/[\ud800-\udbff]\n/.test(surrogate), 'no lone high surrogate')
})

t.test('CR LF line ends, split anywhere between chunks', async (t) => {
  for (const size of [0, 1, 2, 3, 5]) {
    const out = frames('a=1\r\n\r\nb=2\r\n\r\n', size)
    t.same(out.map(attrs), [{ a: '1' }, { b: '2' }], `chunk size ${size}`)
  }
})

t.test('a request of exactly max_request_bytes is accepted, one byte more is discarded', async (t) => {
  const l = { maxLineLength: 100, maxAttributes: 100, maxRequestBytes: 50 }
  const exact = `a=${'x'.repeat(20)}\nb=${'y'.repeat(23)}\n\n`
  t.equal(Buffer.byteLength(exact), 50, 'the request with its empty line')
  for (const size of [0, 1, 7]) {
    t.same(frames(exact, size, l).map((f) => f.kind), ['request'], `50 bytes, chunk size ${size}`)
    const over = frames(`a=${'x'.repeat(21)}\nb=${'y'.repeat(23)}\n\n`, size, l)
    t.same(over.map((f) => f.kind), ['discarded'], `51 bytes, chunk size ${size}`)
  }
})

t.test('the reason of a discarded request names the first bound it crossed', async (t) => {
  const l = { maxLineLength: 20, maxAttributes: 2, maxRequestBytes: 100 }
  const reason = (input: string, chunkSize = 0) => {
    const [f] = frames(input, chunkSize, l)
    return f.kind === 'discarded' ? f.reason : 'not discarded'
  }
  const long = `a=${'x'.repeat(30)}\n`
  t.match(reason(`a=1\nb=2\nc=3\n${long}\n`), /max_attributes 2/, 'too many lines, then a long one')
  t.match(reason(`${long}a=1\nb=2\nc=3\n\n`), /max_line_length 20/, 'a long line, then too many')
  // A line over both bounds at once, whole or still without its LF in this chunk, is an overlong line.
  const both = { maxLineLength: 40, maxRequestBytes: 40, maxAttributes: 100 }
  for (const size of [0, 41, 45]) {
    const [f] = frames(`a=${'x'.repeat(39)}\n\n`, size, both)
    t.match(f.kind === 'discarded' ? f.reason : '', /max_line_length 40/, `chunk size ${size}`)
  }
})

t.test('a one-byte line is an attribute line (garbage), not the end of the request', async (t) => {
  for (const size of [0, 1, 3]) {
    const out = frames('a=1\nx\nb=2\n\n', size)
    t.equal(out.length, 1, `chunk size ${size}`)
    const [f] = out
    if (f.kind !== 'request') throw new Error('not a request')
    t.same(Object.fromEntries(f.attrs), { a: '1', b: '2' })
    t.same(f.garbage, ['x'])
  }
})

t.test('a request is pending from its first byte until its empty line', async (t) => {
  const framer = new RequestFramer(limits)
  const out: Frame[] = []
  t.notOk(framer.pending, 'nothing read')
  framer.push(Buffer.from('a='), out)
  t.ok(framer.pending, 'half a line')
  framer.push(Buffer.from('1\n'), out)
  t.ok(framer.pending, 'a whole attribute line, no empty line yet')
  framer.push(Buffer.from('\n'), out)
  t.notOk(framer.pending, 'answered')
  t.equal(out.length, 1)
})

t.test('garbage and duplicate names are kept for the log: at most 4 each, long lines cut at 80 characters', async (t) => {
  const l = { maxLineLength: 200, maxAttributes: 20, maxRequestBytes: 500 }
  const [f] = frames(`${['g1', 'g2', 'g3', 'g4', 'g5'].join('\n')}\na=1\n${'a=2\n'.repeat(5)}\n`, 0, l)
  if (f.kind !== 'request') throw new Error('not a request')
  t.same(f.garbage, ['g1', 'g2', 'g3', 'g4'])
  t.same(f.duplicates, ['a', 'a', 'a', 'a'])
  t.equal(f.attrs.get('a'), '1')
  const [g] = frames(`${'y'.repeat(80)}\n${'z'.repeat(81)}\n\n`, 0, l)
  if (g.kind !== 'request') throw new Error('not a request')
  t.same(g.garbage, ['y'.repeat(80), `${'z'.repeat(80)}...`])
})

t.test('encodeReply cuts overlong text on a character boundary', async (t) => {
  const head = 'x'.repeat(MAX_ACTION_LENGTH - 1)
  // A pair cut in half loses its high surrogate, whichever pair it is.
  for (const pair of ['\ud800\udc00', '\udbff\udfff', '😀']) {
    t.equal(encodeReply(`${head}${pair}tail`), `action=${head}\n\n`, JSON.stringify(pair))
  }
  // A whole pair, or a character above the surrogates, at the cut is kept.
  t.equal(encodeReply(`${'x'.repeat(MAX_ACTION_LENGTH - 2)}😀tail`), `action=${'x'.repeat(MAX_ACTION_LENGTH - 2)}😀\n\n`)
  t.equal(encodeReply(`${head}\uff71tail`), `action=${head}\uff71\n\n`)
  // Exactly the bound is sent as it is.
  t.equal(encodeReply(`${head}y`), `action=${head}y\n\n`)
})
