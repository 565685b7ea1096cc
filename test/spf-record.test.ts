// The SPF record parser (lib/spf/record.ts) on its own: what each malformed
// record is refused for (the reason a permerror logs), which macro letters
// only exp= may use, and that records are remembered parsed, errors too.
import t from 'tap'
import { checkMacroString, parseRecord, parseRecordOnce, SpfSyntaxError } from '../lib/spf/record'

function refusal(text: string): string {
  try {
    parseRecord(text)
    return 'accepted'
  } catch (err) {
    return err instanceof SpfSyntaxError ? err.message : `not a syntax error: ${(err as Error).message}`
  }
}

t.test('a malformed record is refused, and the reason says what is wrong', async (t) => {
  const cases: Array<[string, string]> = [
    ['v=spf2 -all', 'not an SPF record'],
    ['v=spf1x -all', 'not an SPF record'],
    ['v=spf1 -all redirect=a.example redirect=b.example', 'redirect= given twice'],
    ['v=spf1 9bad=x', 'bad term "9bad=x"'],
    ['v=spf1 foo', 'unknown mechanism foo'],
    ['v=spf1 ptrx', 'unknown mechanism ptrx'],
    ['v=spf1 all:x', 'bad term all:x'],
    ['v=spf1 include', 'include needs a domain: include'],
    ['v=spf1 exists', 'exists needs a domain: exists'],
    ['v=spf1 include:', 'empty domain-spec'],
    ['v=spf1 exp=', 'empty domain-spec'],
    ['v=spf1 a:%{z}.example', 'bad macro %{z}'],
    ['v=spf1 a:%x.example', 'bad macro in "%x.example"'],
    ['v=spf1 a:%{d.example', 'unterminated macro in "%{d.example"'],
    ['v=spf1 a:exa\u00e9mple.com', 'invalid character in "exa\u00e9mple.com"'],
    ['v=spf1 a/33', 'CIDR length /33 out of range'],
    ['v=spf1 a//129', 'CIDR length /129 out of range'],
    ['v=spf1 ip4:192.0.2.1/33', 'CIDR length /33 out of range'],
    ['v=spf1 a:nodot', 'domain-spec "nodot" has no top label'],
    ['v=spf1 a:example.123', 'domain-spec "example.123" has an invalid top label'],
    ['v=spf1 a:ex.-bad', 'domain-spec "ex.-bad" has an invalid top label'],
    ['v=spf1 ip4:300.1.2.3', 'bad ip4 in ip4:300.1.2.3'],
    ['v=spf1 ip4', 'bad ip4 in ip4'],
    ['v=spf1 ip6:zz::1', 'bad ip6 in ip6:zz::1'],
    ['v=spf1 ip6:192.0.2.1', 'bad ip6 in ip6:192.0.2.1'],
    ['v=spf1 ip6', 'bad ip6 in ip6'],
  ]
  for (const [record, reason] of cases) t.equal(refusal(record), reason, record)
  // Unknown modifiers are ignored (RFC 7208 §6), a name with a hyphen is a domain name.
  t.equal(refusal('v=spf1 mx=x -all'), 'accepted')
  t.equal(refusal('v=spf1 a:-bad.example -all'), 'accepted')
})

t.test('%{c}, %{r} and %{t} only in an exp= text (RFC 7208 §7.2)', async (t) => {
  for (const letter of ['c', 'r', 't', 'C']) {
    t.doesNotThrow(() => checkMacroString(`%{${letter}}`, true), `%{${letter}} in exp=`)
    t.throws(() => checkMacroString(`%{${letter}}`), new SpfSyntaxError(`bad macro %{${letter}}`), `%{${letter}} elsewhere`)
  }
  t.throws(() => checkMacroString('x%', true), new SpfSyntaxError('bad macro in "x%"'), 'a lone % at the end')
})

t.test('a macro is a letter, digits, r and delimiters, in that order, in either case', async (t) => {
  for (const body of ['d', 'dr', 'd2', 'DR', 'd2R', 'D10r.-+,/_=', 'l-', 'iR']) {
    t.doesNotThrow(() => checkMacroString(`x.%{${body}}.example`), `%{${body}}`)
  }
  for (const body of ['d1x', 'dx', 'd-2', 'dr2', 'd r', 'x', '2d', '']) {
    t.throws(() => checkMacroString(`x.%{${body}}.example`), new SpfSyntaxError(`bad macro %{${body}}`), `%{${body}}`)
  }
})

t.test('records are remembered parsed: the same object, and the same error again', async (t) => {
  const text = 'v=spf1 ip4:192.0.2.0/24 -all'
  t.equal(parseRecordOnce(text), parseRecordOnce(text), 'parsed once')
  t.not(parseRecord(text), parseRecord(text), 'parseRecord itself makes a new one')
  const bad = 'v=spf1 foo:bar.example'
  let first: unknown
  try {
    parseRecordOnce(bad)
  } catch (err) {
    first = err
  }
  t.type(first, SpfSyntaxError)
  let again: unknown
  try {
    parseRecordOnce(bad)
  } catch (err) {
    again = err
  }
  t.equal(again, first, 'the remembered error itself, not a new parse')
})

t.test('the edges of what a record may contain', async (t) => {
  const cases: Array<[string, string]> = [
    ['xv=spf1 -all', 'not an SPF record'],
    ['v=spf1 a!x', 'bad term a!x'],
    ['v=spf1 mx,x', 'bad term mx,x'],
    ['v=spf1 a:/24', 'empty domain in a:/24'],
    ['v=spf1 mx://64', 'empty domain in mx://64'],
    ['v=spf1 ptr/24', 'bad term ptr/24'],
    ['v=spf1 ptr.x:example.com', 'unknown mechanism ptr.x'],
    ['v=spf1 a/024', 'bad CIDR length /024'],
    ['v=spf1 a:ex\tample.com', 'invalid character in "ex\\tample.com"'],
    ['v=spf1 a:ex\u007fample.com', 'invalid character in "ex\u007fample.com"'],
    ['v=spf1 a:ex.-a-b', 'domain-spec "ex.-a-b" has an invalid top label'],
    ['v=spf1 a:ex.a-b-', 'domain-spec "ex.a-b-" has an invalid top label'],
    ['v=spf1 ip4:256.1.2.3', 'bad ip4 in ip4:256.1.2.3'],
    ['v=spf1 ip4:1.2.3.256', 'bad ip4 in ip4:1.2.3.256'],
    ['v=spf1 ip4!:192.0.2.1', 'bad ip4 in ip4!:192.0.2.1'],
    ['v=spf1 ip6!:2001:db8::1', 'bad ip6 in ip6!:2001:db8::1'],
    ['v=spf1 ip6:2001:db8::1x', 'bad ip6 in ip6:2001:db8::1x'],
  ]
  for (const [record, reason] of cases) t.equal(refusal(record), reason, record)
  // Characters at the ends of the allowed range (0x21 and 0x7e), top labels
  // with a digit first or a letter last, addresses with 255 in them.
  for (const record of [
    'v=spf1 exists:!.example.com',
    'v=spf1 exists:~.example.com',
    'v=spf1 a:example.1a',
    'v=spf1 a:example.12a',
    'v=spf1 a:example.a-1.',
    'v=spf1 ip4:255.1.2.3 ip4:1.2.3.255',
  ]) {
    t.equal(refusal(record), 'accepted', record)
  }
})

t.test('an ip6 network of an IPv4-mapped address (RFC 4291 §2.5.5.2)', async (t) => {
  const network = (term: string): string => {
    const net = parseRecord(`v=spf1 ${term}`).mechanisms[0].net!
    return `${net.net.text}/${net.prefix}`
  }
  const cases: Array<[string, string]> = [
    // /96 and longer: the IPv4 network those clients come as.
    ['ip6:::ffff:192.0.2.1', '192.0.2.1/32'],
    ['ip6:::ffff:192.0.2.1/120', '192.0.2.0/24'],
    ['ip6:::ffff:192.0.2.1/97', '128.0.0.0/1'],
    ['ip6:::ffff:192.0.2.1/96', '0.0.0.0/0'],
    // Shorter: an IPv6 network, the ffff of the mapped range inside it.
    ['ip6:::ffff:192.0.2.1/95', '::fffe:0:0/95'],
    ['ip6:::ffff:192.0.2.1/88', '::ff00:0:0/88'],
    ['ip6:::ffff:192.0.2.1/80', '::/80'],
    ['ip6:2001:db8::1/32', '2001:db8::/32'],
  ]
  for (const [term, net] of cases) t.equal(network(term), net, term)
})

t.test('remembered records: at most 512, the oldest forgotten first', async (t) => {
  const a = parseRecordOnce('v=spf1 a:one.cache.example -all')
  const b = parseRecordOnce('v=spf1 a:two.cache.example -all')
  t.equal(parseRecordOnce('v=spf1 a:one.cache.example -all'), a, 'a second record does not push out the first')
  t.equal(parseRecordOnce('v=spf1 a:two.cache.example -all'), b)
  // 512 new records fill the memory with themselves alone, whatever was there.
  const filler = (n: number): string => `v=spf1 ip4:10.${n >> 8}.${n & 255}.0/24 -all`
  const first = parseRecordOnce(filler(0))
  const second = parseRecordOnce(filler(1))
  for (let n = 2; n < 512; n++) parseRecordOnce(filler(n))
  t.equal(parseRecordOnce(filler(0)), first, '512 remembered: the first still there')
  t.equal(parseRecordOnce(filler(1)), second)
  parseRecordOnce('v=spf1 a:three.cache.example -all')
  t.equal(parseRecordOnce(filler(1)), second, 'the 513th pushed out only the oldest')
  const again = parseRecordOnce(filler(0))
  t.not(again, first, 'the oldest was forgotten and is parsed anew')
  t.same(again, first)
})
