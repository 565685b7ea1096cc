// The texts an SPF result becomes (lib/spf/texts.ts): what each cleaning
// function keeps, escapes and cuts, at the bounds of its lengths.
import t from 'tap'
import { commentText, explanationOf, kvValue, MAX_VALUE, printable, whyUrl } from '../lib/spf/texts'

const x = (n: number): string => 'x'.repeat(n)
const e = (n: number): string => '\u00e9'.repeat(n) // 2 bytes each in UTF-8

t.test('printable: printable ASCII as it is, anything else ?, cut with ... beyond the maximum', async (t) => {
  const cases: Array<[string, number, string]> = [
    ['a\u0001b\u00e9c\u2028', MAX_VALUE, 'a?b?c?'],
    [x(MAX_VALUE), MAX_VALUE, x(MAX_VALUE)],
    [x(MAX_VALUE + 1), MAX_VALUE, `${x(MAX_VALUE - 3)}...`],
    ['abcdefghij', 10, 'abcdefghij'],
    ['abcdefghijk', 10, 'abcdefg...'],
  ]
  // The message names the case by its lengths: a control character in it would end the TAP line.
  for (const [text, max, want] of cases) t.equal(printable(text, max), want, `${text.length} characters, max ${max}`)
})

t.test('commentText: parentheses and backslashes quoted; cut on a character boundary at the byte maximum', async (t) => {
  t.equal(commentText('a (b) \\ c'), 'a \\(b\\) \\\\ c')
  const cases: Array<[string, number, string]> = [
    [x(MAX_VALUE), MAX_VALUE, x(MAX_VALUE)],
    [x(MAX_VALUE + 1), MAX_VALUE, `${x(MAX_VALUE - 3)}...`],
    [e(MAX_VALUE / 2), MAX_VALUE, e(MAX_VALUE / 2)],
    // 201 bytes: 'x' and 98 é are the 197 bytes that fit before '...'.
    [`x${e(MAX_VALUE / 2)}`, MAX_VALUE, `x${e(98)}...`],
    // 202 bytes: 98 é are 196 bytes, a 99th would be 198.
    [e(MAX_VALUE / 2 + 1), MAX_VALUE, `${e(98)}...`],
    [x(21), 20, `${x(17)}...`],
  ]
  for (const [text, max, want] of cases) {
    const got = commentText(text, max)
    t.equal(got, want, `${Buffer.byteLength(text)} bytes, max ${max}`)
    t.ok(Buffer.byteLength(got) <= max)
  }
})

t.test('kvValue: a dot-atom as it is, anything else quoted with its quotes and backslashes escaped', async (t) => {
  t.equal(kvValue('mail.example.org'), 'mail.example.org')
  t.equal(kvValue('a"b\\c d'), '"a\\"b\\\\c d"')
  t.equal(kvValue(x(MAX_VALUE)), x(MAX_VALUE), 'exactly the maximum is not cut')
})

t.test("explanationOf: a fail's own explanation without its final stops and blanks; pyspf's words for the rest", async (t) => {
  const cases: Array<[Parameters<typeof explanationOf>, string]> = [
    [['fail', { explanation: 'Not one of our servers. . \t', reason: 'r' }], 'Not one of our servers'],
    [['fail', { explanation: 'Not ours.', reason: 'r' }], 'Not ours'],
    [['fail', { explanation: ' .. ', reason: 'r' }], 'SPF fail - not authorized'],
    [['fail', { reason: 'r' }], 'SPF fail - not authorized'],
    [['softfail', { explanation: 'own text', reason: 'r' }], 'domain owner discourages use of this host'],
    [['pass', { reason: 'r' }], 'sender SPF authorized'],
    [['none', { reason: 'r' }], 'no SPF record'],
    [['permerror', { reason: 'bad mechanism foo:bar' }], 'SPF Permanent Error: bad mechanism foo:bar'],
  ]
  for (const [args, want] of cases) t.equal(explanationOf(...args), want, JSON.stringify(args))
})

t.test('whyUrl: controls %-escaped with two digits; each value cut at MAX_VALUE characters, never inside an escape', async (t) => {
  const why = (id: string): string => whyUrl('mfrom', id, '192.0.2.7', 'example.org')
  const idOf = (url: string): string => /;id=(.*);ip=/.exec(url)![1]
  t.equal(why('a\u0001b\u007f@fail.test'), 'http://www.openspf.net/Why?s=mfrom;id=a%01b%7F@fail.test;ip=192.0.2.7;r=example.org')
  const cases: Array<[string, string]> = [
    [x(MAX_VALUE), x(MAX_VALUE)],
    [x(MAX_VALUE + 1), x(MAX_VALUE)],
    [`${x(MAX_VALUE - 3)}%`, `${x(MAX_VALUE - 3)}%25`],
    [`${x(MAX_VALUE - 2)}%`, x(MAX_VALUE - 2)],
  ]
  for (const [id, want] of cases) t.equal(idOf(why(id)), want, `${id.length} characters, ending ${JSON.stringify(id.slice(-1))}`)
})
