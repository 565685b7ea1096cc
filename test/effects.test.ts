// Store effects proposed by checks (lib/verdict.ts Effect): kept when the
// combined verdict lets the mail through, given back when any check
// refuses it; a failing effect is logged and the reply stands.
import t from 'tap'
import { settleEffects, type DecideContext } from '../lib/decide'
import { combineVerdicts, letsThrough, type Verdict } from '../lib/verdict'

function recording() {
  const done: string[] = []
  const effect = (name: string, fail = false) => ({
    commit: async () => {
      if (fail) throw new Error(`${name} commit broke`)
      done.push(`commit ${name}`)
    },
    release: async () => {
      if (fail) throw new Error(`${name} release broke`)
      done.push(`release ${name}`)
    },
  })
  return { done, effect }
}

const logs: string[] = []
const ctx = { log: (_l: number, m: string) => logs.push(m) } as unknown as DecideContext

t.test('letsThrough: DUNNO, headers and restrictions let mail through; greylisting, defer and reject do not', async (t) => {
  const v = (severity: Verdict['severity']): Verdict => ({ check: 'x', severity, reason: 'r', action: 'A' })
  t.equal(letsThrough(combineVerdicts([])), true)
  for (const s of ['dunno', 'prepend', 'restriction'] as const) t.equal(letsThrough(combineVerdicts([v('dunno'), v(s)])), true, s)
  for (const s of ['greylist', 'defer', 'reject'] as const) t.equal(letsThrough(combineVerdicts([v('dunno'), v(s)])), false, s)
})

t.test('the combined verdict decides for every effect: all committed, or all released', async (t) => {
  const { done, effect } = recording()
  const verdicts: Verdict[] = [
    { check: 'ratelimit', severity: 'dunno', reason: 'under', effect: effect('a') },
    { check: 'other', severity: 'dunno', reason: 'fine' },
    { check: 'ratelimit2', severity: 'prepend', reason: 'under', headers: ['X: y'], effect: effect('b') },
  ]
  await settleEffects(verdicts, letsThrough(combineVerdicts(verdicts)), ctx)
  t.same(done, ['commit a', 'commit b'])
  done.length = 0
  const refused = [...verdicts, { check: 'greylist', severity: 'greylist' as const, reason: 'new', action: 'DEFER_IF_PERMIT x' }]
  await settleEffects(refused, letsThrough(combineVerdicts(refused)), ctx)
  t.same(done, ['release a', 'release b'], 'a refusal by any check gives every hold back')
})

t.test('a failing effect is logged; the others still run', async (t) => {
  const { done, effect } = recording()
  logs.length = 0
  await settleEffects([
    { check: 'one', severity: 'dunno', reason: 'r', effect: effect('one', true) },
    { check: 'two', severity: 'dunno', reason: 'r', effect: effect('two') },
  ], true, ctx)
  t.same(done, ['commit two'])
  t.match(logs, [/^one: commit failed, the reply stands: one commit broke$/])
})
