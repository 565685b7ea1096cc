// Every value of a log line comes out as exactly one key=value field,
// whatever bytes the client sent: cleaned (escaped) first, then quoted.
import t from 'tap'
import { formatFields, logValue } from '../lib/policy'
import { createLogger } from '../lib/log'

/** Split a logged line into key=value fields the way a reader of the log does: bare words, or "..." with \-escapes. */
function parseFields(line: string): Array<[string, string]> {
  const fields: Array<[string, string]> = []
  const field = /([a-z_]+)=(?:"((?:[^"\\]|\\.)*)"|([^\s"]+))(?: |$)/y
  let end = 0
  let m: RegExpExecArray | null
  while (end < line.length && (m = field.exec(line)) !== null) {
    fields.push([m[1], m[2] ?? m[3]])
    end = field.lastIndex
  }
  if (end !== line.length) fields.push(['(unparsed)', line.slice(end)])
  return fields
}

/** What a line goes through before it reaches syslog or the file. */
function logged(text: string): string {
  const lines: string[] = []
  const log = createLogger({ debugLevel: 1, syslogSocket: '', facility: 'mail', logFile: '', ident: 't', pid: 1, sink: (line) => lines.push(line) })
  log.log(1, text)
  return lines[0]
}

t.test('plain values stay bare; spaces, quotes, = and backslashes are quoted', async (t) => {
  t.equal(logValue('mail.example.net'), 'mail.example.net')
  t.equal(logValue('bücher.example'), 'bücher.example', 'printable non-ASCII stays as it is')
  t.equal(logValue(42), '42')
  t.equal(logValue(''), '""')
  t.equal(logValue('a b'), '"a b"')
  t.equal(logValue('say "hi"'), '"say \\"hi\\""')
  t.equal(logValue('k=v'), '"k=v"')
  t.equal(logValue('C:\\x01'), '"C:\\\\x01"', 'a literal backslash cannot pass for an escape')
})

t.test('control and other non-printable characters are escaped inside quotes', async (t) => {
  t.equal(logValue('evil\x01check'), '"evil\\x01check"')
  t.equal(logValue('a\tb\nc\rd\x00e\x7f'), '"a\\x09b\\x0ac\\x0dd\\x00e\\x7f"')
  t.equal(logValue('c1\u0085x'), '"c1\\x85x"', 'C1 control (NEL)')
  t.equal(logValue('bidi\u202eevil'), '"bidi\\u{202e}evil"', 'format character (right-to-left override)')
  t.equal(logValue('ls\u2028ps\u2029'), '"ls\\u{2028}ps\\u{2029}"')
  t.equal(logValue('zw\u200bsp'), '"zw\\u{200b}sp"', 'zero-width space')
  t.equal(logValue('nb\u00a0sp'), '"nb\\xa0sp"', 'a space other than U+0020')
  t.equal(logValue('lone\ud800'), '"lone\\u{d800}"', 'lone surrogate')
  t.equal(logValue('a b\x01'), '"a b\\x01"', 'an ordinary space stays a space inside quotes')
})

t.test('a value with a control byte is one field after the logger has cleaned the line', async (t) => {
  const values = ['evil\x01check', 'evil\x01check=1 x', 'a\nrecipient=forged@example', 'x\x1f\x7f" sender=y', 'tab\there', 'q\\"', '\u202e=\u2028']
  // Names are escaped here too: a raw U+2028 would break the TAP stream of this very test.
  const shown = (s: string): string => s.replace(/[^ -~]/g, (c) => `<${c.codePointAt(0)!.toString(16)}>`)
  for (const value of values) {
    const line = logged(`decision ${formatFields({ action: 'DUNNO', helo: value, sender: 'a@b.example' })}`)
    t.notMatch(line, /[\x00-\x1f\x7f]/, `no control byte left: ${shown(value)}`)
    const fields = parseFields(line.slice('decision '.length))
    t.same(fields.map(([k]) => k), ['action', 'helo', 'sender'], `three fields for ${shown(value)}: ${shown(line)}`)
  }
})
