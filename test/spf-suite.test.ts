// The official RFC 7208 conformance suite (openspf.org, release 2014.04),
// run through lib/spf/check-host.ts and the project's own resolver against
// a DNS server on loopback that serves each scenario's zone data.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import yaml from 'js-yaml'
import { checkHost } from '../lib/spf/check-host'
import { createResolver } from '../lib/dns/resolver'
import { startDnsServer, type Zone } from './helpers/dns-server'

/** RFC 7208 conformance this project promises (issue 4): at least 202 of the 203 tests. */
const GOAL = 202

interface SuiteTest {
  host: string
  mailfrom: string
  helo: string
  result: string | string[]
  explanation?: string
  description?: string
}
interface Scenario {
  description: string
  tests: Record<string, SuiteTest>
  zonedata: Zone
}

const scenarios = yaml.loadAll(fs.readFileSync(path.join(__dirname, 'fixtures', 'rfc7208-tests.yml'), 'utf8')) as Scenario[]

t.test('rfc7208 suite', async (t) => {
  const server = await startDnsServer()
  t.teardown(() => server.close())
  let passed = 0
  let total = 0
  let explanations = 0
  let explanationsRight = 0
  const failed: string[] = []
  for (const scenario of scenarios) {
    server.setZone(scenario.zonedata ?? {})
    for (const [name, test] of Object.entries(scenario.tests)) {
      total++
      const resolver = createResolver({ servers: [`127.0.0.1:${server.port}`], timeoutMs: 150, tries: 1 })
      const mailfrom = String(test.mailfrom ?? '')
      const helo = String(test.helo ?? '')
      const domain = mailfrom === '' ? helo : mailfrom.slice(mailfrom.lastIndexOf('@') + 1)
      const sender = mailfrom === '' ? `postmaster@${helo}` : mailfrom
      const r = await checkHost({ ip: String(test.host), domain, sender, helo }, { resolver, lookupTimeMs: 5000, now: () => 1_700_000_000_000 })
      resolver.close()
      const wanted = Array.isArray(test.result) ? test.result : [test.result]
      const resultOk = wanted.includes(r.result)
      const expOk = test.explanation === undefined || (r.result === 'fail' && r.explanation === test.explanation)
      if (test.explanation !== undefined) {
        explanations++
        if (expOk) explanationsRight++
      }
      if (resultOk && expOk) passed++
      else failed.push(`${scenario.description} / ${name}: got ${r.result}${r.explanation ? ` (${r.explanation})` : ''} (${r.reason}), want ${wanted.join('|')}${test.explanation ? ` (${test.explanation})` : ''}`)
    }
  }
  t.comment(`rfc7208 suite: ${passed}/${total} passed; explanation texts ${explanationsRight}/${explanations}`)
  t.equal(explanations, 22, 'the suite has 22 explanation texts')
  t.equal(explanationsRight, explanations, 'every explanation text right')
  for (const f of failed) t.comment(`failed: ${f}`)
  t.equal(total, 203, 'the whole suite ran')
  t.ok(passed >= GOAL, `at least ${GOAL}/203 (got ${passed})`)
})
