// What --test-mode says about rate limiting: limits per class, the override
// file, and where Postfix's restrictions put the check.
import t from 'tap'
import { loadConfig, type Config } from '../lib/config'
import { rateLimitNotes, type Postconf } from '../lib/ratelimit/test-mode'

function config(over: Record<string, string>): Config {
  const l = loadConfig({ cli: { ratelimit_enabled: 'yes', ...over }, configPath: '/dev/null', env: {}, readFile: () => '' })
  if (l.errors.length > 0) throw new Error(l.errors.join('; '))
  return l.config
}

const postfix = (values: Record<string, string>): Postconf => (name) => values[name] ?? ''
const GOOD = {
  smtpd_recipient_restrictions: 'check_policy_service { unix:private/policy, default_action=DUNNO }, permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination',
  smtpd_end_of_data_restrictions: 'check_policy_service unix:private/policy',
}
const noFile = (): string => {
  throw new Error('ENOENT: no such file')
}

t.test('off: one note, no warnings', async (t) => {
  t.same(rateLimitNotes(config({ ratelimit_enabled: 'no' }), postfix(GOOD), noFile), { notes: ['rate limiting is off'], warnings: [] })
})

t.test('a good placement: limits listed, no warning', async (t) => {
  const r = rateLimitNotes(config({ ratelimit_sasl_limits: '30msg/1m, 1GB/1d', ratelimit_networks: '192.0.2.0/24', ratelimit_client_limits: '100/1h' }), postfix(GOOD), noFile)
  t.same(r.warnings, [])
  t.ok(r.notes.includes('sasl limits: 30msg/1m, 1GB/1d'))
  t.ok(r.notes.includes('client limits: 100rcpt/1h'))
  t.ok(r.notes.includes('sender limits: none'))
  t.ok(r.notes.some((n) => n.startsWith('smtpd_end_of_data_restrictions has check_policy_service')))
})

t.test('the check after permit_sasl_authenticated, and no end-of-data check: both said', async (t) => {
  const r = rateLimitNotes(config({ ratelimit_sasl_limits: '30msg/1m' }), postfix({ smtpd_recipient_restrictions: 'permit_mynetworks permit_sasl_authenticated reject_unauth_destination check_policy_service unix:private/policy' }), noFile)
  t.equal(r.warnings.filter((w) => /comes before check_policy_service/.test(w)).length, 2, 'permit_mynetworks and permit_sasl_authenticated')
  t.ok(r.warnings.some((w) => /smtpd_end_of_data_restrictions has no check_policy_service: held mail is never counted/.test(w)))
  const atData = rateLimitNotes(config({ ratelimit_commit_at: 'data' }), postfix({ smtpd_recipient_restrictions: 'check_policy_service x' }), noFile)
  t.same(atData.warnings, [], 'counting at DATA needs no end-of-data check')
})

t.test('sender and client limits without ratelimit_networks limit nobody', async (t) => {
  const r = rateLimitNotes(config({ ratelimit_sender_limits: '10msg/1m' }), postfix(GOOD), noFile)
  t.ok(r.warnings.some((w) => /ratelimit_networks, which is empty/.test(w)))
})

t.test('the override file: entries counted, bad lines and an unreadable file reported; no postconf', async (t) => {
  const file = 'sasl:alice@example.org 5000rcpt/1d\nbogus line here\nclient:192.0.2.0/24 unlimited\n'
  const r = rateLimitNotes(config({ ratelimit_overrides: '/etc/o' }), () => null, () => file)
  t.ok(r.notes.includes('overrides /etc/o: 2 entries'))
  t.equal(r.warnings.length, 1)
  t.match(r.warnings[0], /^\/etc\/o:2: /)
  t.ok(r.notes.includes('postconf could not be run: the Postfix restrictions were not checked'))
  const missing = rateLimitNotes(config({ ratelimit_overrides: '/etc/o' }), postfix(GOOD), noFile)
  t.match(missing.warnings[0], /overrides \/etc\/o: ENOENT/)
})
