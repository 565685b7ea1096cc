// What --test-mode says about rate limiting: limits per class, the override
// file, and where Postfix's restrictions put the check.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { loadConfig, type Config } from '../lib/config'
import { rateLimitNotes, systemPostconf, type Postconf } from '../lib/ratelimit/test-mode'

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

t.test('postconf: the value of one parameter, trimmed; null when postconf fails', async (t) => {
  // A postconf of our own first on PATH: it echoes its arguments, and fails for one name.
  const dir = t.testdir({ postconf: '#!/bin/sh\n[ "$2" = missing ] && exit 1\necho "  $1 $2  "\n' })
  fs.chmodSync(path.join(dir, 'postconf'), 0o755)
  const saved = process.env.PATH
  process.env.PATH = `${dir}:${saved}`
  t.teardown(() => void (process.env.PATH = saved))
  t.equal(systemPostconf('smtpd_recipient_restrictions'), '-h smtpd_recipient_restrictions')
  t.equal(systemPostconf('missing'), null)
})

t.test('restrictions: options in braces stay with their entry; a permit after the check is fine', async (t) => {
  const r = rateLimitNotes(config({ ratelimit_sasl_limits: '30msg/1m' }), postfix({
    smtpd_recipient_restrictions: 'reject_non_fqdn_sender,check_policy_service {unix:private/policy, permit_mynetworks}, permit_mynetworks,permit_sasl_authenticated',
    smtpd_end_of_data_restrictions: 'permit_mynetworks,\n check_policy_service\tunix:private/policy',
  }), noFile)
  t.same(r.warnings, [], 'permit_mynetworks inside the braces is an option, not an entry before the check')
  const before = rateLimitNotes(config({ ratelimit_sasl_limits: '30msg/1m' }), postfix({
    smtpd_recipient_restrictions: 'permit_sasl_authenticated,check_policy_service {unix:private/policy}',
    smtpd_end_of_data_restrictions: 'check_policy_service unix:private/policy',
  }), noFile)
  t.same(before.warnings, ['smtpd_recipient_restrictions: permit_sasl_authenticated comes before check_policy_service, so those clients are never rate-limited; put the check first'])
  const none = rateLimitNotes(config({}), postfix({ smtpd_recipient_restrictions: 'permit_mynetworks, reject_unauth_destination' }), noFile)
  t.same(none.warnings, [
    'smtpd_recipient_restrictions has no check_policy_service: nothing is held at RCPT',
    'smtpd_end_of_data_restrictions has no check_policy_service: held mail is never counted; add: smtpd_end_of_data_restrictions = check_policy_service <the same service as in smtpd_recipient_restrictions> (or set ratelimit_commit_at = data)',
  ])
  const noEod = rateLimitNotes(config({}), (name) => (name === 'smtpd_recipient_restrictions' ? 'check_policy_service x' : null), noFile)
  t.same(noEod.warnings.length, 1, 'postconf failing for the end-of-data parameter: no check there')
  t.same(none.notes, ['sasl limits: none', 'sender limits: none', 'client limits: none', 'global limits: none'])
})

t.test('limits per class: unlimited is said; sender or client limits alone warn without ratelimit_networks', async (t) => {
  const r = rateLimitNotes(config({ ratelimit_sasl_limits: 'unlimited', ratelimit_client_limits: '5msg/1m' }), postfix(GOOD), noFile)
  t.same(r.notes.slice(0, 4), ['sasl limits: unlimited', 'sender limits: none', 'client limits: 5msg/1m', 'global limits: none'])
  t.same(r.warnings, ['ratelimit_sender_limits and ratelimit_client_limits apply only to clients in ratelimit_networks, which is empty: they limit nobody'])
  const unlimitedSender = rateLimitNotes(config({ ratelimit_sender_limits: 'unlimited' }), postfix(GOOD), noFile)
  t.same(unlimitedSender.warnings, [], 'unlimited limits nobody anyway')
  const withNetworks = rateLimitNotes(config({ ratelimit_sender_limits: '5msg/1m', ratelimit_networks: '192.0.2.0/24' }), postfix(GOOD), noFile)
  t.same(withNetworks.warnings, [])
})

t.test('restrictions: what stands in braces, nested or glued, names no entry', async (t) => {
  const warnings = (recipient: string, eod = 'check_policy_service unix:private/policy'): string[] =>
    rateLimitNotes(config({ ratelimit_sasl_limits: '30msg/1m' }), postfix({ smtpd_recipient_restrictions: recipient, smtpd_end_of_data_restrictions: eod }), noFile).warnings
  // An inline access table before the check: its values may be restriction names.
  t.same(warnings('check_sender_access inline:{ { postmaster@example.org = permit_mynetworks } }, check_policy_service unix:private/policy'), [], 'nested braces')
  t.same(warnings('check_sender_access inline:{ { a@example.org = OK }, b@example.org = permit_sasl_authenticated }, check_policy_service unix:private/policy'), [], 'an outer group around an inner one')
  t.same(warnings('check_client_access { hash:/etc/postfix/clients, permit_mynetworks } check_policy_service unix:private/policy'), [], 'a group of several words')
  t.same(warnings('check_policy_service{ unix:private/policy }permit_sasl_authenticated'), [], 'a group ends its entry')
  t.same(warnings('permit_mynetworks { x } check_policy_service unix:private/policy'), [
    'smtpd_recipient_restrictions: permit_mynetworks comes before check_policy_service, so those clients are never rate-limited; put the check first',
  ], 'the entries around a group still count')
  t.same(warnings('check_policy_service x', 'reject_unauth_pipelining, check_policy_service'), [], 'the last entry counts')
})

t.test('client limits unlimited and sender limits none: nobody to warn about', async (t) => {
  const r = rateLimitNotes(config({ ratelimit_client_limits: 'unlimited' }), postfix(GOOD), noFile)
  t.same(r.warnings, [])
})
