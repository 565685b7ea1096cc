// Macro expansion (lib/spf/macro.ts) on its own: the letters, the
// transformers and delimiters, URL escaping, the macros only exp= may use,
// what a malformed macro is refused for, and truncation of a long name.
// The expected values are those of RFC 7208 §7.4 where it gives them.
import t from 'tap'
import { expandMacros, truncateDomain, type MacroContext } from '../lib/spf/macro'
import { SpfSyntaxError } from '../lib/spf/record'
import { parseIp } from '../lib/normalize'

function context(over: Partial<Omit<MacroContext, 'ip'>> & { ip?: string } = {}): MacroContext {
  const { ip = '192.0.2.3', ...rest } = over
  return {
    sender: 'strong-bad@email.example.com',
    domain: 'email.example.com',
    helo: 'mx.example.org',
    receiver: 'rx.example.net',
    now: 1_700_000_000.75,
    validatedName: async () => 'mx.example.org',
    ...rest,
    ip: parseIp(ip)!,
  }
}

async function refusal(text: string, ctx: MacroContext, explanation?: boolean): Promise<string> {
  try {
    return `accepted: ${await expandMacros(text, ctx, explanation)}`
  } catch (err) {
    return err instanceof SpfSyntaxError ? err.message : `not a syntax error: ${(err as Error).message}`
  }
}

t.test('letters, transformers and delimiters (RFC 7208 §7.4 examples)', async (t) => {
  const cases: Array<[string, string]> = [
    ['%{s}', 'strong-bad@email.example.com'],
    ['%{o}', 'email.example.com'],
    ['%{d}', 'email.example.com'],
    ['%{d4}', 'email.example.com'],
    ['%{d3}', 'email.example.com'],
    ['%{d2}', 'example.com'],
    ['%{d1}', 'com'],
    ['%{dr}', 'com.example.email'],
    ['%{d2r}', 'example.email'],
    ['%{l}', 'strong-bad'],
    ['%{l-}', 'strong.bad'],
    ['%{lr}', 'strong-bad'],
    ['%{lr-}', 'bad.strong'],
    ['%{l1r-}', 'strong'],
    ['%{ir}.%{v}._spf.%{d2}', '3.2.0.192.in-addr._spf.example.com'],
    ['%{lr-}.lp._spf.%{d2}', 'bad.strong.lp._spf.example.com'],
    ['%{lr-}.lp.%{ir}.%{v}._spf.%{d2}', 'bad.strong.lp.3.2.0.192.in-addr._spf.example.com'],
    ['%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}', '3.2.0.192.in-addr.strong.lp._spf.example.com'],
    ['%{d2}.trusted-domains.example.net', 'example.com.trusted-domains.example.net'],
    ['%{h}', 'mx.example.org'],
    ['%{p}', 'mx.example.org'],
    ['%{D}', 'email.example.com'],
    ['a%%b%_c%-d', 'a%b c%20d'],
  ]
  const ctx = context()
  for (const [macro, value] of cases) t.equal(await expandMacros(macro, ctx), value, macro)
})

t.test('each delimiter splits, alone or with others; only the given ones split', async (t) => {
  const ctx = context({ helo: 'a.b-c+d,e/f_g=h' })
  const cases: Array<[string, string]> = [
    ['%{h}', 'a.b-c+d,e/f_g=h'],
    ['%{h.}', 'a.b-c+d,e/f_g=h'],
    ['%{hr}', 'b-c+d,e/f_g=h.a'],
    ['%{h-}', 'a.b.c+d,e/f_g=h'],
    ['%{h+}', 'a.b-c.d,e/f_g=h'],
    ['%{h,}', 'a.b-c+d.e/f_g=h'],
    ['%{h/}', 'a.b-c+d,e.f_g=h'],
    ['%{h_}', 'a.b-c+d,e/f.g=h'],
    ['%{h=}', 'a.b-c+d,e/f_g.h'],
    ['%{h-+}', 'a.b.c.d,e/f_g=h'],
    ['%{h2-+}', 'c.d,e/f_g=h'],
    ['%{h1r.-+,/_=}', 'a'],
    ['%{h3.-+,/_=}', 'f.g.h'],
  ]
  for (const [macro, value] of cases) t.equal(await expandMacros(macro, ctx), value, macro)
  // A value made of the letters of an error text: none of them splits.
  const letters = context({ helo: 'Stryker-was-here!' })
  t.equal(await expandMacros('%{h-+}', letters), 'Stryker.was.here!')
  t.equal(await expandMacros('%{h,/}', letters), 'Stryker-was-here!')
})

t.test('the local part and the domain of the sender', async (t) => {
  const cases: Array<[string, string, string]> = [
    // sender, %{l}, %{o}
    ['a@example.com', 'a', 'example.com'],
    ['ab@example.com', 'ab', 'example.com'],
    ['@example.com', 'postmaster', 'example.com'],
    ['x@y@example.com', 'x@y', 'example.com'],
    ['nobody', 'postmaster', 'nobody'],
  ]
  for (const [sender, local, domain] of cases) {
    const ctx = context({ sender, domain: 'current.example' })
    t.equal(await expandMacros('%{l}', ctx), local, `%{l} of ${sender}`)
    t.equal(await expandMacros('%{o}', ctx), domain, `%{o} of ${sender}`)
    t.equal(await expandMacros('%{d}', ctx), 'current.example', `%{d} with ${sender}`)
  }
})

t.test('%{i} of IPv6: nibbles, lower case unless the client gave upper-case hex', async (t) => {
  const nibbles = '2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.b.0.1'
  t.equal(await expandMacros('%{i}', context({ ip: '2001:db8::cb01' })), nibbles)
  t.equal(await expandMacros('%{i}', context({ ip: '2001:DB8::CB01', upperHex: false })), nibbles)
  t.equal(await expandMacros('%{i}', context({ ip: '2001:DB8::CB01', upperHex: true })), nibbles.toUpperCase())
  t.equal(
    await expandMacros('%{ir}.%{v}._spf.%{d2}', context({ ip: '2001:db8::cb01' })),
    `${nibbles.split('.').reverse().join('.')}.ip6._spf.example.com`,
  )
  t.equal(await expandMacros('%{v}', context({ ip: '2001:db8::1' })), 'ip6')
  t.equal(await expandMacros('%{v}', context()), 'in-addr')
})

t.test('upper-case letters URL-escape the value, UTF-8 bytes each, two hex digits', async (t) => {
  const ctx = context({ sender: 'jörg+a b@email.example.com', helo: 'x\u0001y\u007fz~.-_' })
  t.equal(await expandMacros('%{L}', ctx), 'j%C3%B6rg%2Ba%20b')
  t.equal(await expandMacros('%{S}', ctx), 'j%C3%B6rg%2Ba%20b%40email.example.com')
  t.equal(await expandMacros('%{H}', ctx), 'x%01y%7Fz~.-_')
  t.equal(await expandMacros('%{h}', ctx), 'x\u0001y\u007fz~.-_')
})

t.test('%{c}, %{r} and %{t} only in an explanation (RFC 7208 §7.2)', async (t) => {
  const ctx = context({ ip: '2001:DB8::CB01', upperHex: true })
  t.equal(await expandMacros('%{c} %{r} %{t}', ctx, true), '2001:db8::cb01 rx.example.net 1700000000')
  t.equal(await expandMacros('%{C}', ctx, true), '2001%3Adb8%3A%3Acb01')
  t.equal(await expandMacros('%{c}', context(), true), '192.0.2.3')
  t.equal(await expandMacros('%{t2}', context({ now: 1234.5 }), true), '1234')
  for (const letter of ['c', 'r', 't', 'C', 'R', 'T']) {
    t.equal(await refusal(`%{${letter}}`, ctx), `macro letter ${letter} not allowed here`, `%{${letter}} outside an explanation`)
    t.equal(await refusal(`%{${letter}}`, ctx, false), `macro letter ${letter} not allowed here`, `%{${letter}}, explanation false`)
  }
  for (const letter of ['x', 'a', 'Z']) {
    t.equal(await refusal(`%{${letter}}`, ctx, true), `macro letter ${letter} not allowed here`, `%{${letter}} in an explanation`)
    t.equal(await refusal(`%{${letter}}`, ctx), `macro letter ${letter} not allowed here`, `%{${letter}} elsewhere`)
  }
})

t.test('a malformed macro is refused, and the reason says what is wrong', async (t) => {
  const ctx = context()
  const cases: Array<[string, string]> = [
    ['%{d', 'unterminated macro'],
    ['a.%{d2r', 'unterminated macro'],
    ['%x', 'bad macro %x'],
    ['%x}', 'bad macro %x'],
    ['%{d}.x%', 'bad macro %'],
    ['%', 'bad macro %'],
    ['%{xd}', 'bad macro %{xd}'],
    ['%{d1x}', 'bad macro %{d1x}'],
    ['%{}', 'bad macro %{}'],
    ['%{d.r}', 'bad macro %{d.r}'],
    ['%{d0}', 'macro transformer 0'],
    ['%{d00r}', 'macro transformer 0'],
  ]
  for (const [text, reason] of cases) t.equal(await refusal(text, ctx), reason, text)
  t.equal(await refusal('%{d10}', ctx), 'accepted: email.example.com', 'more parts asked for than there are')
})

t.test('a name longer than 253 characters loses labels on the left (RFC 7208 §7.3)', async (t) => {
  const label = 'a'.repeat(63)
  const exact = `${label}.${label}.${label}.${'b'.repeat(61)}`
  t.equal(exact.length, 253)
  t.equal(truncateDomain(exact), exact, '253 characters stay')
  t.equal(truncateDomain(`x${exact}`), `${label}.${label}.${'b'.repeat(61)}`, '254 characters lose the first label')
  t.equal(truncateDomain(`c.d.${exact}`), exact, 'as many labels as it takes')
  const oneLabel = 'c'.repeat(300)
  t.equal(truncateDomain(oneLabel), oneLabel, 'no dot: nothing to drop')
})
