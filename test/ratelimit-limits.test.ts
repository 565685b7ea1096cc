// The limit syntax (lib/ratelimit/limits.ts): units and their defaults,
// byte multiples, durations, the bounds, lists, duplicates, `unlimited`, and
// the canonical text that replies, logs and hits show.
import t from 'tap'
import { formatDuration, formatLimit, formatLimitSet, LONGEST_WINDOW, parseLimit, parseLimitSet } from '../lib/ratelimit/limits'
import type { Limit } from '../lib/ratelimit/types'

function limit(text: string): Limit {
  const parsed = parseLimit(text)
  if ('error' in parsed) throw new Error(`${text}: ${parsed.error}`)
  return parsed.limit
}

function error(text: string): string {
  const parsed = parseLimit(text)
  return 'error' in parsed ? parsed.error : `parsed as ${parsed.limit.text}`
}

t.test('units: rcpt by default, msg, bytes in binary multiples, any case, blanks allowed', async (t) => {
  t.same(limit('30msg/1m'), { count: 30, unit: 'msg', window: 60, text: '30msg/1m' })
  t.same(limit('1000/1d'), { count: 1000, unit: 'rcpt', window: 86400, text: '1000rcpt/1d' }, 'a bare count is recipients')
  t.same(limit('1000rcpt/1d'), limit('1000/1d'))
  const bytes: Array<[string, number]> = [['100B/1h', 100], ['1KB/1h', 1024], ['3MB/1h', 3 * 1024 ** 2], ['1GB/1h', 1024 ** 3]]
  for (const [text, count] of bytes) t.same(limit(text), { count, unit: 'bytes', window: 3600, text }, text)
  t.same(limit(' 30 MSG / 1 M '), limit('30msg/1m'), 'case and blanks do not matter')
  t.equal(limit('2kb/1s').count, 2048)
})

t.test('durations: s, m, h, d, w; a bare number is seconds', async (t) => {
  const windows: Array<[string, number]> = [['5msg/90', 90], ['5msg/90s', 90], ['5msg/2m', 120], ['5msg/3h', 10800], ['5msg/1d', 86400], ['5msg/2w', 1209600]]
  for (const [text, window] of windows) t.equal(limit(text).window, window, text)
})

t.test('the canonical text: the largest unit that divides', async (t) => {
  const canonical: Array<[string, string]> = [
    ['10msg/3600s', '10msg/1h'],
    ['10msg/7d', '10msg/1w'],
    ['10msg/90s', '10msg/90s'],
    ['10msg/120', '10msg/2m'],
    ['2048KB/1d', '2MB/1d'],
    ['1536KB/1d', '1536KB/1d'],
    ['1024B/1d', '1KB/1d'],
    ['1023B/1d', '1023B/1d'],
    ['0B/1d', '0B/1d'],
    ['0msg/1d', '0msg/1d'],
  ]
  for (const [text, normal] of canonical) t.equal(limit(text).text, normal, text)
  t.equal(formatLimit(1024 ** 3 * 5, 'bytes', 86400 * 14), '5GB/2w')
  t.equal(formatDuration(86400 * 3), '3d')
  t.equal(formatDuration(61), '61s')
})

t.test('bounds: a period of at least 1 s and at most 366 d, counts up to 2^50', async (t) => {
  t.match(error('5msg/0s'), /at least one second/)
  t.match(error('5msg/0'), /at least one second/)
  t.equal(limit('5msg/366d').window, LONGEST_WINDOW)
  t.match(error('5msg/367d'), /longer than 366d/)
  t.match(error('5msg/53w'), /longer than 366d/)
  t.equal(limit('1048576GB/1d').count, 2 ** 50, '2^50 bytes is the largest count')
  t.match(error('1048577GB/1d'), /count is too large/)
  t.match(error('9999999999999999/1d'), /count is too large/)
})

t.test('what is not a limit says what one looks like', async (t) => {
  for (const text of ['', 'abc', '30msg', '30msg/', '/1m', '30 messages/1m', '30msg/1y', '-3msg/1m', '1.5msg/1m', '30msg/1m/1d', '30TB/1d', '12345678901234567/1s', '1msg/1234567890s']) {
    t.match(error(text), /is not a limit such as 30msg\/1m/, JSON.stringify(text))
  }
})

t.test('lists: commas or blanks between limits; every error is reported; empty is no limit', async (t) => {
  const three = parseLimitSet('30msg/1m, 1000rcpt/1d, 1GB/1d')
  t.same(three, { limits: [limit('30msg/1m'), limit('1000rcpt/1d'), limit('1GB/1d')] })
  t.same(parseLimitSet('30msg/1m 1000rcpt/1d,1GB/1d'), three, 'blanks separate limits as commas do')
  t.same(parseLimitSet('30 msg / 1 m, 1000 / 1 d'), { limits: [limit('30msg/1m'), limit('1000rcpt/1d')] }, 'a limit written with blanks is one limit')
  t.same(parseLimitSet(''), { limits: [] })
  t.same(parseLimitSet(' , '), { limits: [] })
  const bad = parseLimitSet('30msg/1m, 5msg/0s, nonsense')
  t.ok('error' in bad)
  if ('error' in bad) {
    t.match(bad.error, /"5msg\/0s": the period must be at least one second/)
    t.match(bad.error, /"nonsense" is not a limit/)
    t.equal(bad.error.split('; ').length, 2, 'both errors, one message')
  }
  const typo = parseLimitSet('30msg/1m 1000rpct/1d')
  t.match('error' in typo ? typo.error : '', /"30msg\/1m 1000rpct\/1d" is not a limit/, 'a typo among blank-separated limits is reported as written')
})

t.test('duplicates: one unit and period twice is an error, however written', async (t) => {
  t.same(parseLimitSet('30msg/1m, 40msg/60s'), { error: 'two limits on msg per 1m' })
  t.same(parseLimitSet('1000/1d, 2000rcpt/24h'), { error: 'two limits on rcpt per 1d' })
  t.same(parseLimitSet('1GB/1d, 2048MB/1d'), { error: 'two limits on bytes per 1d' })
  t.same(parseLimitSet('30msg/1m, 30rcpt/1m, 30msg/1h'), { limits: [limit('30msg/1m'), limit('30rcpt/1m'), limit('30msg/1h')] }, 'another unit or period is not a duplicate')
})

t.test('unlimited: alone, in any case; never beside limits', async (t) => {
  t.same(parseLimitSet('unlimited'), { limits: 'unlimited' })
  t.same(parseLimitSet(' Unlimited '), { limits: 'unlimited' })
  t.same(parseLimitSet('unlimited, 30msg/1m'), { error: '"unlimited" cannot be combined with limits' })
  t.same(parseLimitSet('30msg/1m unlimited'), { error: '"unlimited" cannot be combined with limits' })
  t.equal(formatLimitSet('unlimited'), 'unlimited')
})

t.test('formatting round trip: the canonical text parses back to the same limits', async (t) => {
  for (const text of ['30msg/1m, 1000rcpt/1d, 1GB/1d', '5/90, 3MB/3600s, 1msg/7d', '1536KB/2h 0msg/1s', 'unlimited']) {
    const first = parseLimitSet(text)
    if ('error' in first) {
      t.fail(`${text}: ${first.error}`)
      continue
    }
    const written = formatLimitSet(first.limits)
    t.same(parseLimitSet(written), first, `${text} -> ${written}`)
    t.equal(formatLimitSet((parseLimitSet(written) as { limits: Limit[] }).limits), written, 'and formats to the same text')
  }
  t.equal(formatLimitSet(limitsOf('5/90, 3MB/3600s, 1msg/7d')), '5rcpt/90s, 3MB/1h, 1msg/1w')
})

function limitsOf(text: string): Limit[] {
  const parsed = parseLimitSet(text)
  if ('error' in parsed || parsed.limits === 'unlimited') throw new Error(text)
  return [...parsed.limits]
}

t.test('errors quote the limit as written, without the blanks around it', async (t) => {
  const padded: Array<[string, RegExp]> = [
    ['  30 messages/1m\t', /^"30 messages\/1m" is not a limit/],
    [' 5msg/0s ', /^"5msg\/0s": the period must be at least one second$/],
    [' 5msg/367d ', /^"5msg\/367d": the period is longer than 366d$/],
    [' 1048577GB/1d ', /^"1048577GB\/1d": the count is too large$/],
  ]
  for (const [text, expected] of padded) t.match(error(text), expected, JSON.stringify(text))
})

t.test('lists: several blanks, or a tab, between limits separate them as one does', async (t) => {
  const two = { limits: [limit('30msg/1m'), limit('1000rcpt/1d')] }
  t.same(parseLimitSet('30msg/1m   1000rcpt/1d'), two)
  t.same(parseLimitSet('30msg/1m \t1000rcpt/1d, '), two)
})
