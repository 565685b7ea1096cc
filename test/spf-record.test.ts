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
