// The Prometheus text exposition of lib/metrics.ts.
import t from 'tap'
import { LATENCY_BUCKETS, Metrics } from '../lib/metrics'

t.test('counters: HELP and TYPE once, one line per label set, values added', async (t) => {
  const m = new Metrics()
  m.add('requests', { state: 'RCPT', action: 'DUNNO' })
  m.add('requests', { state: 'RCPT', action: 'DUNNO' })
  m.add('requests', { state: 'DATA', action: 'PREPEND' }, 3)
  const text = m.render()
  t.equal(text.match(/^# TYPE policyd_requests_total counter$/gm)?.length, 1)
  t.match(text, /^policyd_requests_total\{state="RCPT",action="DUNNO"\} 2$/m)
  t.match(text, /^policyd_requests_total\{state="DATA",action="PREPEND"\} 3$/m)
  t.ok(text.endsWith('\n'), 'ends with a newline')
  t.notMatch(text, /policyd_decisions_total/, 'a family without a sample is left out')
})

t.test('label values are escaped as the format requires', async (t) => {
  const m = new Metrics()
  m.add('decisions', { check: 'spf', result: 'a"b\\c\nd' })
  t.match(m.render(), /^policyd_decisions_total\{check="spf",result="a\\"b\\\\c\\nd"\} 1$/m)
})

t.test('histograms: cumulative buckets, +Inf, sum and count; a value on a bucket bound counts in it', async (t) => {
  const m = new Metrics()
  m.observe('requestSeconds', 0.0005)
  m.observe('requestSeconds', 0.003)
  m.observe('requestSeconds', 99)
  const text = m.render()
  const bucket = (le: string): number => Number(new RegExp(`^policyd_request_seconds_bucket\\{le="${le.replace('+', '\\+')}"\\} (\\d+)$`, 'm').exec(text)?.[1])
  t.equal(bucket('0.0005'), 1, 'le is inclusive')
  t.equal(bucket('0.001'), 1)
  t.equal(bucket('0.005'), 2)
  t.equal(bucket(String(LATENCY_BUCKETS[LATENCY_BUCKETS.length - 1])), 2, 'a value past the last bound only in +Inf')
  t.equal(bucket('+Inf'), 3)
  t.match(text, /^policyd_request_seconds_count 3$/m)
  t.match(text, /^policyd_request_seconds_sum 99\.0035/m)
  t.match(text, /^# TYPE policyd_request_seconds histogram$/m)
})

t.test('histogram labels go before le', async (t) => {
  const m = new Metrics()
  m.observe('storeSeconds', 0.0001, { op: 'greylist' })
  t.match(m.render(), /^policyd_store_seconds_bucket\{op="greylist",le="0.0005"\} 1$/m)
  t.match(m.render(), /^policyd_store_seconds_count\{op="greylist"\} 1$/m)
})

t.test('gauges are read when rendered; counter values for the store totals', async (t) => {
  const m = new Metrics()
  let open = 2
  m.gauge('connections', () => open)
  t.match(m.render(), /^policyd_connections 2$/m)
  open = 5
  t.match(m.render(), /^policyd_connections 5$/m)
  m.add('discarded')
  t.same([...m.counterValues()], [['policyd_requests_discarded_total', 1]])
})

t.test('collected counters (kept by another part, read when rendered) render and sum like counters', async (t) => {
  const m = new Metrics()
  let queries = 2
  m.collect('dns', () => [[{ outcome: 'query' }, queries], [{ outcome: 'timeout' }, 0]])
  t.match(m.render(), /^# TYPE policyd_dns_total counter\npolicyd_dns_total\{outcome="query"\} 2\npolicyd_dns_total\{outcome="timeout"\} 0$/m)
  queries = 5
  t.equal(m.counterValues().get('policyd_dns_total{outcome="query"}'), 5)
})
