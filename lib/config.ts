// The one table of configuration keys. It drives the command line, the
// environment, the config file, --help, --test-mode and man/policyd-ts.conf.5
// (test/config-man.test.ts checks that the man page lists exactly these keys
// and defaults). Defaults are written as an admin would write them in the
// file and parsed by the same code as every other source.

import { parseServerAddress } from './dns/server-address'
import { parseHostPort, parseListen } from './listen-address'
import { recipientEntryProblem } from './greylist/whitelist'
import { parseCidr, parseIp } from './normalize'
import { parseLimitSet } from './ratelimit/limits'
import { redisUrlProblem } from './store/redis-url'

export type OptionType = 'int' | 'bool' | 'duration' | 'string' | 'list' | 'enum' | 'action'

export interface OptionSpec {
  type: OptionType
  default: string
  doc: string
  min?: number
  max?: number
  values?: readonly string[]
}

export interface Config {
  debugLevel: number
  fail_action: string
  syslog_socket: string
  syslog_facility: string
  log_file: string
  hostname: string
  max_line_length: number
  max_attributes: number
  max_request_bytes: number
  max_idle: number
  max_lifetime: number
  listen: string
  listen_mode: string
  listen_group: string
  max_connections: number
  metrics_listen: string
  db_path: string
  db_busy_timeout: number
  db_corrupt_action: string
  // ---- store = redis (issue 12, task HC): one block.
  store: string
  redis_url: string
  redis_password_file: string
  redis_sentinels: string[]
  redis_sentinel_name: string
  redis_prefix: string
  redis_timeout: number
  // ---- end of the store = redis block.
  greylist_enabled: boolean
  greylist_delay: number
  greylist_max_age: number
  greylist_retry_window: number
  greylist_auto_whitelist: number
  greylist_ipv4_prefix: number
  greylist_ipv6_prefix: number
  greylist_action: string
  greylist_text: string
  greylist_header: string
  greylist_learn_only: boolean
  greylist_privacy: boolean
  greylist_max_entries: number
  greylist_whitelist_clients: string[]
  greylist_whitelist_recipients: string[]
  greylist_whitelist_recipient_entries: string[]
  greylist_spf_key: boolean
  ratelimit_enabled: boolean
  ratelimit_sasl_limits: string
  ratelimit_sender_limits: string
  ratelimit_client_limits: string
  ratelimit_global_limits: string
  ratelimit_networks: string[]
  ratelimit_ipv4_prefix: number
  ratelimit_ipv6_prefix: number
  ratelimit_overrides: string
  ratelimit_exempt_recipients: string[]
  ratelimit_action: string
  ratelimit_text: string
  ratelimit_learn_only: boolean
  ratelimit_commit_at: string
  ratelimit_hold_time: number
  ratelimit_slots: number
  ratelimit_max_holds: number
  spf_enabled: boolean
  spf_check_authenticated: boolean
  dns_servers: string[]
  TestOnly: number
  HELO_reject: string
  Mail_From_reject: string
  PermError_reject: boolean
  TempError_Defer: boolean
  No_Mail: boolean
  Reject_Not_Pass_Domains: string[]
  HELO_pass_restriction: string
  Mail_From_pass_restriction: string
  skip_addresses: string[]
  Whitelist: string[]
  Domain_Whitelist: string[]
  HELO_Whitelist: string[]
  Domain_Whitelist_PTR: string[]
  Per_User: string
  Prospective: string
  Header_Type: string
  Hide_Receiver: boolean
  Authserv_Id: string
  SPF_Enhanced_Status_Codes: boolean
  Reason_Message: string
  Lookup_Time: number
  Whitelist_Lookup_Time: number
  Void_Limit: number
  Mock: boolean
}

export type ConfigKey = keyof Config

/**
 * Every duration has a largest value the code can honour. max_idle and
 * max_lifetime become Node timers, which take at most 2^31-1 ms (a longer
 * one fires after 1 ms: the process exited at start or spun). The busy
 * timeout and the lookup limits have their own, smaller bounds. Greylist
 * times are epoch-second arithmetic, exact far beyond ten years, but a
 * longer one is a typo, not a policy; and no mail server retries for a
 * month (Postfix gives up after 5 days), so a longer delay refuses all mail.
 */
const LONGEST_TIMER_S = Math.floor((2 ** 31 - 1) / 1000)
const LONGEST_GREYLIST_S = 3650 * 86400
const LONGEST_GREYLIST_DELAY_S = 30 * 86400

export const OPTIONS: { readonly [K in ConfigKey]: OptionSpec } = {
  debugLevel: {
    type: 'int', default: '1', min: -1, max: 5,
    doc: 'Log detail: 0 errors only, 1 one line per decision, 2 each check, 3 configuration and start/stop, 4 every input line (-1 nothing, 5 as 4: policyd-spf\'s range).',
  },
  fail_action: {
    type: 'action', default: 'DUNNO',
    doc: 'Action answered when a request cannot be decided (store unavailable, oversized request, internal error); a bad setting is not such a case: it is ignored and the checks run.',
  },
  syslog_socket: {
    type: 'string', default: '/dev/log',
    doc: 'Path of the syslog datagram socket; when it is missing, log lines go to log_file.',
  },
  syslog_facility: {
    type: 'enum', default: 'mail',
    values: ['mail', 'daemon', 'user', 'local0', 'local1', 'local2', 'local3', 'local4', 'local5', 'local6', 'local7'],
    doc: 'Syslog facility of every log line.',
  },
  log_file: {
    type: 'string', default: '',
    doc: 'File that receives log lines when syslog_socket is unusable; empty means such lines are dropped.',
  },
  hostname: {
    type: 'string', default: '',
    doc: 'Host name used in header texts (%h); empty means the system host name.',
  },
  max_line_length: {
    type: 'int', default: '4096', min: 64, max: 1048576,
    doc: 'Longest accepted attribute line in bytes; a request with a longer line is discarded and answered with fail_action.',
  },
  max_attributes: {
    type: 'int', default: '100', min: 1, max: 100000,
    doc: 'Most attribute lines accepted in one request; past it the request is discarded and answered with fail_action.',
  },
  max_request_bytes: {
    type: 'int', default: '65536', min: 256, max: 16777216,
    doc: 'Largest accepted request in bytes; past it the request is discarded and answered with fail_action.',
  },
  max_idle: {
    type: 'duration', default: '600s', min: 1, max: LONGEST_TIMER_S,
    doc: 'Spawn mode: exit after this long without a request; daemon: close a connection idle this long, which must be longer than Postfix\'s smtpd_policy_service_max_idle (300s by default, after which Postfix closes it itself); at most 24d 20h 31m 23s, the longest timer Node has.',
  },
  max_lifetime: {
    type: 'duration', default: '7200s', min: 1, max: LONGEST_TIMER_S,
    doc: 'Spawn mode: exit after this long in all, between two requests (Postfix does not enforce policy_time_limit on spawned children); not used by the daemon, whose connections Postfix ends after smtpd_policy_service_max_ttl; at most 24d 20h 31m 23s, the longest timer Node has.',
  },
  listen: {
    type: 'string', default: '',
    doc: 'Empty: serve one connection on stdin/stdout, as spawn(8) runs it. Otherwise run as a daemon for all smtpd processes, listening on unix:PATH, inet:HOST:PORT or systemd (the socket systemd passes, LISTEN_FDS).',
  },
  listen_mode: {
    type: 'string', default: '0660',
    doc: 'Permissions (octal) of a unix socket the daemon creates itself.',
  },
  listen_group: {
    type: 'string', default: 'postfix',
    doc: 'Group of a unix socket the daemon creates itself (Postfix\'s smtpd must be able to connect); empty keeps the daemon\'s own group.',
  },
  max_connections: {
    type: 'int', default: '1000', min: 1, max: 100000,
    doc: 'Daemon: most connections served at once; a connection beyond this is closed at once (Postfix then answers its default_action) and logged once.',
  },
  metrics_listen: {
    type: 'string', default: '',
    doc: 'Daemon: HOST:PORT on which GET /metrics serves Prometheus text (format 0.0.4); empty means off.',
  },
  db_path: {
    type: 'string', default: '/var/mta/policyd-ts.sqlite',
    doc: 'SQLite database file; its directory must exist or be creatable and must not be world-writable.',
  },
  db_busy_timeout: {
    type: 'duration', default: '5s', min: 0, max: 600,
    doc: 'How long a request waits for another process\'s lock on the database before fail_action is answered.',
  },
  db_corrupt_action: {
    type: 'enum', default: 'rename', values: ['rename', 'fail'],
    doc: 'What to do with a corrupt database file: rename it aside and start a fresh one, or keep answering fail_action.',
  },
  // ---- store = redis (issue 12, task HC): one block.
  store: {
    type: 'enum', default: 'sqlite', values: ['sqlite', 'redis'],
    doc: 'Where greylisting state lives: sqlite (the file db_path, one host) or redis (redis_url, shared by several MX hosts, which then need the same greylist_privacy; prefer the daemon there: it loads the client and connects once, a spawned process at each start).',
  },
  redis_url: {
    type: 'string', default: 'redis://127.0.0.1:6379/0',
    doc: 'store = redis: the server, as redis://[USER@]HOST[:PORT][/DB], rediss://... (TLS) or unix:///PATH[?db=DB]; no password here (redis_password_file). With redis_sentinels only its scheme, user and DB count.',
  },
  redis_password_file: {
    type: 'string', default: '',
    doc: 'store = redis: a file whose first line is the Redis password (keep it readable by the policy user only); read at each connection, so a new password needs no restart.',
  },
  redis_sentinels: {
    type: 'list', default: '',
    doc: 'store = redis: HOST:PORT of Redis Sentinels; when set, the master named redis_sentinel_name is asked of them and followed through a failover.',
  },
  redis_sentinel_name: {
    type: 'string', default: 'mymaster',
    doc: 'store = redis with redis_sentinels: the name under which the Sentinels monitor the master.',
  },
  redis_prefix: {
    type: 'string', default: 'pts:',
    doc: 'store = redis: the start of every key policyd-ts writes (letters, digits and _ . : -, at most 64), so that several installations can share one server.',
  },
  redis_timeout: {
    type: 'duration', default: '1s', min: 0.01, max: 60,
    doc: 'store = redis: how long a request waits for Redis, connecting included, before fail_action is answered.',
  },
  // ---- end of the store = redis block.
  greylist_enabled: {
    type: 'bool', default: 'yes',
    doc: 'Greylist (client network, sender, recipient) triplets at the RCPT stage.',
  },
  greylist_delay: {
    type: 'duration', default: '300s', min: 1, max: LONGEST_GREYLIST_DELAY_S,
    doc: 'How long a new triplet is deferred before a retry is accepted; at most 30d (no mail server retries that long).',
  },
  greylist_max_age: {
    type: 'duration', default: '35d', min: 1, max: LONGEST_GREYLIST_S,
    doc: 'A passed triplet or an auto-whitelisted client not seen for this long is forgotten; at most 3650d.',
  },
  greylist_retry_window: {
    type: 'duration', default: '2d', min: 1, max: LONGEST_GREYLIST_S,
    doc: 'A triplet whose first accepted retry comes later than this after its first attempt starts over; at most 3650d.',
  },
  greylist_auto_whitelist: {
    type: 'int', default: '5', min: 0, max: 1000000,
    doc: 'A client network that passed greylisting this many times (at most once an hour counted) is no longer greylisted; 0 disables.',
  },
  greylist_ipv4_prefix: {
    type: 'int', default: '24', min: 0, max: 32,
    doc: 'IPv4 clients are keyed by this network prefix length; 32 keys by host.',
  },
  greylist_ipv6_prefix: {
    type: 'int', default: '64', min: 0, max: 128,
    doc: 'IPv6 clients are keyed by this network prefix length; 128 keys by host.',
  },
  greylist_action: {
    type: 'enum', default: 'DEFER_IF_PERMIT', values: ['DEFER_IF_PERMIT', 'DEFER', '450', '451'],
    doc: 'Action that greylists a request; DEFER_IF_PERMIT lets later reject restrictions win.',
  },
  greylist_text: {
    type: 'string', default: '4.2.0 Greylisted, please try again in %s seconds',
    doc: 'Reply text of a greylisted request; %s is replaced by the seconds left, %r by the recipient domain.',
  },
  greylist_header: {
    type: 'string', default: 'X-Greylist: delayed %t seconds by policyd-ts-%v at %h; %d',
    doc: 'Header prepended once per message on the first accepted retry; %t delay, %v version, %h host name, %d date; empty disables.',
  },
  greylist_learn_only: {
    type: 'bool', default: 'no',
    doc: 'Record and log triplets but never defer (for trying greylisting on a live server).',
  },
  greylist_privacy: {
    type: 'bool', default: 'no',
    doc: 'Store SHA-256 hashes of the triplet and client keys instead of addresses.',
  },
  greylist_max_entries: {
    type: 'int', default: '1000000', min: 100,
    doc: 'Most triplets kept; when the table is full, new triplets pass unrecorded (logged once) until expiry makes room.',
  },
  greylist_whitelist_clients: {
    type: 'list', default: '/etc/policyd-ts/whitelist_clients, /etc/policyd-ts/whitelist_clients.local',
    doc: 'Client whitelist files in postgrey\'s format; changed files are reread without restart.',
  },
  greylist_whitelist_recipients: {
    type: 'list', default: '/etc/policyd-ts/whitelist_recipients, /etc/policyd-ts/whitelist_recipients.local',
    doc: 'Recipient whitelist files in postgrey\'s format; changed files are reread without restart.',
  },
  greylist_whitelist_recipient_entries: {
    type: 'list', default: 'postmaster@, abuse@',
    doc: 'Recipients never greylisted, as entries of a recipient whitelist file (user@ at any domain, user@domain, domain), in addition to the files: by default the addresses RFC 5321 and RFC 2142 require to accept mail; empty greylists them too.',
  },
  greylist_spf_key: {
    type: 'bool', default: 'yes',
    doc: 'When the MAIL FROM domain passes SPF (by a record narrower than the whole Internet), key the triplet by that domain instead of the client network, so a sender pool retrying from another address is not greylisted again.',
  },
  ratelimit_enabled: {
    type: 'bool', default: 'no',
    doc: 'Rate-limit mail by SASL user, sender, client and for the whole installation, with the limits below; the check must run before permit_sasl_authenticated and permit_mynetworks in smtpd_recipient_restrictions and last in smtpd_end_of_data_restrictions (see RATE LIMITING in policyd-ts(8)).',
  },
  ratelimit_sasl_limits: {
    type: 'string', default: '',
    doc: 'Limits of each SASL-authenticated user (sasl_username, lowercased), such as 30msg/1m, 1000rcpt/1d, 1GB/1d: COUNT[rcpt|msg|B|KB|MB|GB]/PERIOD, every one must pass; empty means none.',
  },
  ratelimit_sender_limits: {
    type: 'string', default: '',
    doc: 'Limits of each envelope sender (normalised as greylisting does; the null sender is counted per client address), for clients without SASL inside ratelimit_networks only.',
  },
  ratelimit_client_limits: {
    type: 'string', default: '',
    doc: 'Limits of each client address (or network, see ratelimit_ipv4_prefix and ratelimit_ipv6_prefix), for clients without SASL inside ratelimit_networks only.',
  },
  ratelimit_global_limits: {
    type: 'string', default: '',
    doc: 'Limits of all mail the rate-limit check sees together (one counter for the installation).',
  },
  ratelimit_networks: {
    type: 'list', default: '',
    doc: 'Your own client networks (CIDR, usually mynetworks): their mail without SASL is limited by sender and client (policyd-rate-limit\'s limited_networks) and, like SASL clients\' mail, never greylisted or SPF-checked; empty means none, and clients outside are never limited by sender, so that a forged sender cannot use up a real user\'s limit.',
  },
  ratelimit_ipv4_prefix: {
    type: 'int', default: '32', min: 0, max: 32,
    doc: 'IPv4 clients are counted by this network prefix length; 32 counts each address.',
  },
  ratelimit_ipv6_prefix: {
    type: 'int', default: '64', min: 0, max: 128,
    doc: 'IPv6 clients are counted by this network prefix length (a /64 is one host\'s usual share).',
  },
  ratelimit_overrides: {
    type: 'string', default: '',
    doc: 'File of per-key limits, one "CLASS:KEY LIMITS" line each (sasl:alice@example.org 5000rcpt/1d, sender:@example.com 100msg/1h, client:192.0.2.0/24 unlimited); the most specific entry wins, entries set with policyd-ts ratelimit set win over the file; reread when it changes.',
  },
  ratelimit_exempt_recipients: {
    type: 'list', default: 'postmaster@, abuse@',
    doc: 'Recipients that are never held or counted, as entries of a recipient whitelist file (user@ at any domain, user@domain, domain).',
  },
  ratelimit_action: {
    type: 'enum', default: 'DEFER_IF_PERMIT', values: ['DEFER_IF_PERMIT', 'DEFER', '450', '451'],
    doc: 'Action that refuses mail over a limit.',
  },
  ratelimit_text: {
    type: 'string', default: '4.7.1 Rate limit %l exceeded for %k, retry after %t',
    doc: 'Reply text of mail over a limit: %l the limit (30msg/1m), %k the key (its class only with greylist_privacy), %t the time from which it fits again (UTC), %s the seconds until then.',
  },
  ratelimit_learn_only: {
    type: 'bool', default: 'no',
    doc: 'Count and log, but never refuse (for trying limits on a live server).',
  },
  ratelimit_commit_at: {
    type: 'enum', default: 'end-of-message', values: ['end-of-message', 'data'],
    doc: 'When held mail is counted: at END-OF-MESSAGE, with the real recipient count and size (mail refused before then never counts); data counts at DATA as policyd-rate-limit\'s count_mode 1 does, for a Postfix without the check in smtpd_end_of_data_restrictions.',
  },
  ratelimit_hold_time: {
    type: 'duration', default: '1h', min: 60, max: 86400,
    doc: 'How long a message\'s hold (taken at RCPT, counted at END-OF-MESSAGE) counts against the limits when neither comes to an end (a dropped connection).',
  },
  ratelimit_slots: {
    type: 'int', default: '60', min: 1, max: 1440,
    doc: 'Each limit\'s period is counted in this many slots: what is counted leaves the window between period - period/slots and period after it.',
  },
  ratelimit_max_holds: {
    type: 'int', default: '1000', min: 1, max: 100000,
    doc: 'Most messages held at once on one key; one more counts as over the limit (bounds what a client opening many transactions can hold).',
  },
  spf_enabled: {
    type: 'bool', default: 'yes',
    doc: 'Check SPF (RFC 7208) of the HELO name and the MAIL FROM domain, with the options below (spelled as in policyd-spf.conf).',
  },
  spf_check_authenticated: {
    type: 'bool', default: 'no',
    doc: 'Check SPF also for SASL-authenticated clients (sasl_username set) and, with rate limiting, clients in ratelimit_networks; by default their mail is never SPF-checked or greylisted, only rate-limited.',
  },
  dns_servers: {
    type: 'list', default: '',
    doc: 'DNS servers for SPF, each ip, ip:port or [ipv6]:port, tried in order; empty means the nameservers of /etc/resolv.conf (127.0.0.1 when it names none).',
  },
  TestOnly: {
    type: 'int', default: '1', min: 0, max: 1,
    doc: 'As in policyd-spf: 1 acts on SPF results; 0 is a dry run in which no SPF result rejects or defers (and a result that would have gets no header), only logs.',
  },
  HELO_reject: {
    type: 'enum', default: 'Fail', values: ['Fail', 'SPF_Not_Pass', 'Softfail', 'Null', 'False', 'No_Check'],
    doc: 'HELO check policy: reject on Fail; SPF_Not_Pass also on Softfail and Neutral; Softfail on Fail and Softfail; Null on Fail of the null sender only; False never (header only); No_Check skips the HELO check.',
  },
  Mail_From_reject: {
    type: 'enum', default: 'Fail', values: ['Fail', 'SPF_Not_Pass', 'Softfail', 'False', 'No_Check'],
    doc: 'MAIL FROM check policy: reject on Fail; SPF_Not_Pass also on Softfail and Neutral; Softfail on Fail and Softfail; False never (header only); No_Check skips the MAIL FROM check.',
  },
  PermError_reject: {
    type: 'bool', default: 'no',
    doc: 'Reject (550 5.7.24) when the checked identity\'s SPF record is broken (permerror); otherwise the result only goes into the header.',
  },
  TempError_Defer: {
    type: 'bool', default: 'no',
    doc: 'Defer (DEFER_IF_PERMIT 4.7.24) when DNS fails during the check (temperror); otherwise the result only goes into the header.',
  },
  No_Mail: {
    type: 'bool', default: 'no',
    doc: 'Reject only for domains whose record is exactly "v=spf1 -all" (domains that send no mail); other results that would reject get a header.',
  },
  Reject_Not_Pass_Domains: {
    type: 'list', default: '',
    doc: 'Domains (and their subdomains) for which any result but Pass, None, TempError and PermError rejects, as with SPF_Not_Pass, with the text "Receiver policy for SPF <result>".',
  },
  HELO_pass_restriction: {
    type: 'string', default: '',
    doc: 'When the HELO check passes (and MAIL FROM does not reject), answer this access(5) restriction or restriction class instead of a header.',
  },
  Mail_From_pass_restriction: {
    type: 'string', default: '',
    doc: 'When the MAIL FROM check passes, answer this access(5) restriction or restriction class instead of a header.',
  },
  skip_addresses: {
    type: 'list', default: '127.0.0.0/8,::ffff:127.0.0.0/104,::1',
    doc: 'Client networks (CIDR) not checked for SPF: local connections; the header says "SPF check N/A for local connections".',
  },
  Whitelist: {
    type: 'list', default: '',
    doc: 'Client networks (CIDR) not checked for SPF, such as a secondary MX or a known forwarder.',
  },
  Domain_Whitelist: {
    type: 'list', default: '',
    doc: 'Domains whose SPF-authorised hosts are not checked: a client that passes SPF for one of them skips the checks.',
  },
  HELO_Whitelist: {
    type: 'list', default: '',
    doc: 'HELO names not checked, when the name\'s A/AAAA records contain the client address.',
  },
  Domain_Whitelist_PTR: {
    type: 'list', default: '',
    doc: 'Domains whose hosts are not checked: the client\'s forward-confirmed host name equals one or ends in "." plus one (unlike policyd-spf, which matched any suffix of an unconfirmed PTR name).',
  },
  Per_User: {
    type: 'string', default: '',
    doc: 'text,/path/to/file: per-recipient overrides of the SPF policy keys, one "recipient,Key=value|Key=value" line each (policyd-spf.peruser(5)); the file is reread when it changes.',
  },
  Prospective: {
    type: 'string', default: '',
    doc: 'Check as if the mail came from this IP address (outgoing mail): results that would reject still reject, no header is added.',
  },
  Header_Type: {
    type: 'enum', default: 'SPF', values: ['SPF', 'AR', 'None'],
    doc: 'Header added for results that let mail through: SPF a Received-SPF field (RFC 7208 9.1), AR an Authentication-Results field (RFC 8601), None no header.',
  },
  Hide_Receiver: {
    type: 'bool', default: 'no',
    doc: 'Write <UNKNOWN> instead of the recipient domain in headers and reply texts, so BCC recipients stay hidden from senders (the local decision log still names the recipient).',
  },
  Authserv_Id: {
    type: 'string', default: 'HOSTNAME',
    doc: 'The authserv-id of Authentication-Results fields; HOSTNAME means the system host name (or hostname, when set).',
  },
  SPF_Enhanced_Status_Codes: {
    type: 'bool', default: 'yes',
    doc: 'Use the RFC 7372 codes 5.7.23 (fail), 5.7.24 (permerror) and 4.7.24 (temperror) in replies; no gives a bare 550 and DEFER_IF_PERMIT.',
  },
  Reason_Message: {
    type: 'string', default: 'Message {rejectdefer} due to: {spf}. Please see {url}',
    doc: 'Text of SPF rejections and deferrals: {rejectdefer} is "rejected" or "deferred", {spf} the explanation, {url} a page that explains the result.',
  },
  Lookup_Time: {
    type: 'duration', default: '20s', min: 1, max: 300,
    doc: 'Time limit of each SPF check (HELO and MAIL FROM each) for all its DNS lookups together; past it the result is temperror.',
  },
  Whitelist_Lookup_Time: {
    type: 'duration', default: '10s', min: 1, max: 300,
    doc: 'Time limit of the DNS lookups of each of Domain_Whitelist, HELO_Whitelist and Domain_Whitelist_PTR.',
  },
  Void_Limit: {
    type: 'int', default: '2', min: 0, max: 100,
    doc: 'DNS lookups with an empty answer allowed in one SPF check before it is a permerror (RFC 7208 4.6.4).',
  },
  Mock: {
    type: 'bool', default: 'no',
    doc: 'Answer every request "DUNNO mock header field that should be ignored" without any check, as policyd-spf\'s Mock does (for a second service whose first header milters cannot see).',
  },
}

/**
 * Keys of policyd-spf.conf that policyd-ts reads without acting on them, so
 * that such a file works unchanged; each is logged once at start-up.
 */
export const IGNORED_KEYS: Readonly<Record<string, string>> = {
  defaultSeedOnly: 'deprecated in policyd-spf, which ignores it too; TestOnly decides',
  QueueID: 'the decision line always carries queue_id',
  Socket: 'pyspf-milter only',
  PidFile: 'pyspf-milter only',
  UserID: 'pyspf-milter only',
  UMask: 'pyspf-milter only',
  InternalHosts: 'pyspf-milter only',
  IntHosts: 'pyspf-milter only',
  MacroList: 'pyspf-milter only',
}

export const CONFIG_KEYS = Object.keys(OPTIONS) as ConfigKey[]
export const DEFAULT_CONFIG_FILE = '/etc/policyd-ts/policyd-ts.conf'
export const ENV_PREFIX = 'POLICYD_TS_'

/** Where the value in effect comes from; `fallback`: a safe value that stands in for a bad setting. */
export type Source = 'default' | 'file' | 'environment' | 'command line' | 'fallback'

export interface LoadedConfig {
  config: Config
  sources: Record<ConfigKey, Source>
  /** Configuration errors, each with where it was written and what is used instead; none of them stops a check. */
  errors: string[]
  /** Keys read but not acted on (IGNORED_KEYS) and keys set twice, one line each, for the log. */
  notices: string[]
  configFile: string
  configFileFound: boolean
}

/** Milliseconds per unit: durations are kept as whole milliseconds, which every timer and SQLite take. */
const DURATION_UNIT_MS: Record<string, number> = { '': 1000, ms: 1, s: 1000, m: 60000, h: 3600000, d: 86400000, w: 604800000 }
const BOOL_WORDS: Record<string, boolean> = {
  yes: true, true: true, on: true, '1': true, no: false, false: false, off: false, '0': false,
}

function expectedForm(spec: OptionSpec): string {
  switch (spec.type) {
    case 'int': return `an integer${range(spec)}`
    case 'bool': return 'yes or no'
    case 'duration': return `a duration such as 300, 300s, 5m, 2h, 35d or 1w${range(spec, 's')}`
    case 'enum': return `one of ${spec.values!.join(', ')}`
    case 'action': return 'a Postfix access(5) action such as DUNNO, DEFER_IF_PERMIT text, 450 text or REJECT text'
    case 'list': return 'a comma-separated list'
    case 'string': return 'a single-line string'
  }
}

function range(spec: OptionSpec, unit = ''): string {
  if (spec.min !== undefined && spec.max !== undefined) return ` from ${spec.min}${unit} to ${spec.max}${unit}`
  if (spec.min !== undefined) return ` of at least ${spec.min}${unit}`
  return ''
}

/** 2147483 -> "24d 20h 31m 23s", 1.5 -> "1s 500ms". */
function formatSeconds(seconds: number): string {
  let ms = Math.round(seconds * 1000)
  const parts: string[] = []
  for (const [unit, size] of [['d', 86400000], ['h', 3600000], ['m', 60000], ['s', 1000], ['ms', 1]] as const) {
    if (ms >= size) parts.push(`${Math.floor(ms / size)}${unit}`)
    ms %= size
  }
  return parts.length > 0 ? parts.join(' ') : '0s'
}

const ACTION_WORD = /^(DUNNO|OK|PERMIT|DEFER_IF_PERMIT|DEFER_IF_REJECT|DEFER|REJECT|WARN|INFO|HOLD|DISCARD|PREPEND|[45]\d\d)(\s|$)/i

/** Parse one value of `key`; returns the typed value or an error text naming the key and the expected form. */
export function parseValue(key: ConfigKey, raw: string): { value: unknown } | { error: string } {
  const spec = OPTIONS[key]
  const text = raw.trim()
  const bad = (): { error: string } => ({ error: `bad value ${JSON.stringify(raw)} for ${key}: expected ${expectedForm(spec)}` })
  if (/[\0\r\n]/.test(raw)) return bad()
  switch (spec.type) {
    case 'int': {
      if (!/^[+-]?\d{1,15}$/.test(text)) return bad()
      const n = Number(text)
      if ((spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) return bad()
      return { value: n }
    }
    case 'bool': {
      const b = BOOL_WORDS[text.toLowerCase()]
      return b === undefined ? bad() : { value: b }
    }
    case 'duration': {
      const m = /^(\d{1,12})(?:\.(\d+))?\s*(ms|s|m|h|d|w)?$/i.exec(text)
      if (!m) return bad()
      const unitMs = DURATION_UNIT_MS[(m[3] ?? '').toLowerCase()]
      // The fraction apart, so that 2147483.001 is exactly 2147483001 ms.
      const fractionMs = Number(`0.${m[2] ?? '0'}`) * unitMs
      if (Math.abs(fractionMs - Math.round(fractionMs)) > 1e-6) return { error: `bad value ${JSON.stringify(raw)} for ${key}: durations are whole milliseconds` }
      const ms = Number(m[1]) * unitMs + Math.round(fractionMs)
      const outside = (why: string): { error: string } => ({ error: `bad value ${JSON.stringify(raw)} for ${key}: ${why} (expected ${expectedForm(spec)})` })
      if (spec.max !== undefined && ms > spec.max * 1000) return outside(`too long, at most ${spec.max}s = ${formatSeconds(spec.max)}`)
      if (spec.min !== undefined && ms < spec.min * 1000) return outside(`too short, at least ${spec.min}s`)
      return { value: ms / 1000 }
    }
    case 'enum': {
      const v = spec.values!.find((x) => x.toLowerCase() === text.toLowerCase())
      return v === undefined ? bad() : { value: v }
    }
    case 'action':
      return ACTION_WORD.test(text) ? { value: text } : bad()
    case 'list':
      return { value: text === '' ? [] : text.split(/[,\s]+/).filter((x) => x !== '') }
    case 'string':
      return { value: text }
  }
}

/** One line of a config file that names a key; `problem` when the line is not a clean `key = value`. */
export interface ConfigLine {
  line: number
  key: string
  value: string
  problem?: string
}

/**
 * Read a config file as policyd-spf reads its own: `key = value` per line,
 * the key spelled exactly, blanks around `=` and at both ends dropped, blank
 * lines and lines whose first non-blank character is `#` skipped, quotes
 * kept as they are. Where policyd-spf would silently drop a line (no `=`)
 * or cut a value (at a `#`), the line comes back with its problem, so that
 * nothing the admin wrote vanishes unseen. A value may contain `=`.
 */
export function readConfigText(text: string): ConfigLine[] {
  const out: ConfigLine[] = []
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) return
    const eq = line.indexOf('=')
    if (eq === -1) {
      out.push({ line: i + 1, key: '', value: '', problem: `not a "key = value" line${missingEqualsHint(line)}: ${JSON.stringify(line)}` })
      return
    }
    const key = line.slice(0, eq).trim()
    const value = line.slice(eq + 1).trim()
    let problem: string | undefined
    if (key === '') problem = `no key before "=": ${JSON.stringify(line)}`
    else if (value.includes('#')) problem = `"#" inside the value of ${key}: policyd-spf would end the value there, so the line would mean two things; comments go on lines of their own`
    else if (/^(["']).*\1$/.test(value) && value.length >= 2) problem = `quotes around the value of ${key} would be part of it (policyd-spf keeps them too); write the value without them`
    out.push({ line: i + 1, key, value, problem })
  })
  return out
}

function missingEqualsHint(line: string): string {
  if (/^[\w.-]+\s*:/.test(line)) return ' (":" is not a separator; write key = value)'
  if (/^[\w.-]+\s+\S/.test(line)) return ' (the "=" between key and value is missing)'
  return ''
}

/** The key an admin probably meant: the same letters and digits, case and separators aside. */
function keyMeant(name: string): ConfigKey | undefined {
  const shape = (k: string): string => k.toLowerCase().replace(/[^a-z0-9]/g, '')
  return CONFIG_KEYS.find((k) => shape(k) === shape(name))
}

function unknownKey(name: string): string {
  const meant = keyMeant(name)
  const shown = /^[\w.-]+$/.test(name) ? name : JSON.stringify(name)
  return `unknown key ${shown}${meant !== undefined ? ` (did you mean ${meant}?)` : ''}`
}

export function isConfigKey(key: string): key is ConfigKey {
  return Object.prototype.hasOwnProperty.call(OPTIONS, key)
}

export interface ConfigInputs {
  /** Values given on the command line, keyed exactly as in the table. */
  cli: Record<string, string>
  /** The --config path if given; otherwise the default path is tried and may be absent. */
  configPath?: string
  env: NodeJS.ProcessEnv
  readFile: (path: string) => string
}

const DOMAIN_NAME = /^(?=.{1,253}\.?$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$/i
const REASON_FIELDS = new Set(['rejectdefer', 'spf', 'url'])

const notNetwork = (item: string): string | null => (parseCidr(item) ? null : 'is not an IP address or network (a.b.c.d/n, x:y::/n)')
const notDomain = (item: string): string | null => (DOMAIN_NAME.test(item) ? null : 'is not a domain name')

/** Rules on the items of lists: a bad item is skipped, the others are kept. */
const ITEM_RULES: Partial<Record<ConfigKey, (item: string) => string | null>> = {
  skip_addresses: notNetwork,
  Whitelist: notNetwork,
  Domain_Whitelist: notDomain,
  HELO_Whitelist: notDomain,
  Domain_Whitelist_PTR: notDomain,
  Reject_Not_Pass_Domains: notDomain,
  ratelimit_networks: notNetwork,
  ratelimit_exempt_recipients: (item) => {
    const problem = recipientEntryProblem(item)
    return problem === null ? null : `is ${problem.startsWith('not ') ? '' : 'not an entry: '}${problem}`
  },
  dns_servers: (item) => (parseServerAddress(item) ? null : 'is not ip, ip:port or [ipv6]:port'),
  redis_sentinels: (item) => (parseHostPort(item) ? null : 'is not HOST:PORT'), // store = redis (task HC)
  greylist_whitelist_recipient_entries: (item) => {
    const problem = recipientEntryProblem(item)
    return problem === null ? null : `is ${problem.startsWith('not ') ? '' : 'not an entry: '}${problem}`
  },
}

function limitsProblem(key: ConfigKey): (value: string) => string | null {
  return (v) => {
    if (v === '') return null
    const parsed = parseLimitSet(v)
    return 'error' in parsed ? `${key}: ${parsed.error}` : null
  }
}

/** Rules on whole values that the value forms alone cannot state. */
const VALUE_RULES: Partial<Record<ConfigKey, (value: string) => string | null>> = {
  listen: (v) => (v === '' || parseListen(v) ? null : `listen: ${JSON.stringify(v)} is not unix:PATH, inet:HOST:PORT or systemd`),
  listen_mode: (v) => (/^0?[0-7]{3}$/.test(v) ? null : `listen_mode: ${JSON.stringify(v)} is not an octal mode such as 0660`),
  metrics_listen: (v) => (v === '' || parseHostPort(v) ? null : `metrics_listen: ${JSON.stringify(v)} is not HOST:PORT`),
  Prospective: (v) => (v === '' || parseIp(v) ? null : `Prospective: ${JSON.stringify(v)} is not an IP address`),
  Per_User: (v) => (v === '' || /^text\s*,\s*\S/.test(v) ? null : `Per_User: ${JSON.stringify(v)} must be text,/path/to/file`),
  Reason_Message: (v) => {
    const unknown = [...v.matchAll(/\{([^}]*)\}/g)].map((m) => m[1]).filter((f) => !REASON_FIELDS.has(f))
    return unknown.length === 0 ? null : `Reason_Message: unknown field {${unknown[0]}} (known: {rejectdefer}, {spf}, {url})`
  },
  ratelimit_sasl_limits: limitsProblem('ratelimit_sasl_limits'),
  ratelimit_sender_limits: limitsProblem('ratelimit_sender_limits'),
  ratelimit_client_limits: limitsProblem('ratelimit_client_limits'),
  ratelimit_global_limits: limitsProblem('ratelimit_global_limits'),
  ratelimit_text: (v) => {
    const unknown = [...v.matchAll(/%(.)/g)].map((m) => m[1]).filter((c) => !'lkts%'.includes(c))
    return unknown.length === 0 ? null : `ratelimit_text: unknown field %${unknown[0]} (known: %l, %k, %t, %s)`
  },
  HELO_pass_restriction: (v) => (/[^\x20-\x7e]/.test(v) ? 'HELO_pass_restriction: only printable ASCII is allowed in a Postfix action' : null),
  Mail_From_pass_restriction: (v) => (/[^\x20-\x7e]/.test(v) ? 'Mail_From_pass_restriction: only printable ASCII is allowed in a Postfix action' : null),
  // ---- store = redis (issue 12, task HC)
  redis_url: (v) => redisUrlProblem(v),
  redis_prefix: (v) => (/^[A-Za-z0-9_.:-]{0,64}$/.test(v) ? null : `redis_prefix: ${JSON.stringify(v)} may hold only letters, digits and _ . : - (at most 64)`),
  redis_sentinel_name: (v) => (/^[!-~]{1,128}$/.test(v) ? null : `redis_sentinel_name: ${JSON.stringify(v)} is not a Sentinel master name`),
}

/**
 * A bad setting is ignored, as if it were absent; the few keys below, when
 * that leaves them at their default, take a safer value instead, because
 * what the default does could not be taken back.
 */
const SAFER_THAN_DEFAULT: Partial<Record<ConfigKey, { set: Partial<Record<ConfigKey, string>>; why: string }>> = {
  greylist_privacy: { set: { greylist_privacy: 'yes' }, why: 'addresses written to the database cannot be taken back' },
  Hide_Receiver: { set: { Hide_Receiver: 'yes' }, why: 'a recipient domain shown to a sender cannot be taken back' },
  Prospective: { set: { spf_enabled: 'no' }, why: 'checking the real clients of outgoing mail would reject your users\' own mail' },
}

interface Setting {
  key: ConfigKey
  raw: string
  source: Source
  /** `file:line`, `environment variable NAME` or `command line --key`, for messages. */
  where: string
}

function defaultValue(key: ConfigKey): unknown {
  const parsed = parseValue(key, OPTIONS[key].default)
  if ('error' in parsed) throw new Error(`default of ${key} does not parse: ${parsed.error}`)
  return parsed.value
}

/**
 * Merge defaults, config file, environment and command line (highest last)
 * into one Config. A bad setting never stops the rest: it is reported with
 * where it was written and what is used instead, and ignored (a bad list
 * item alone is skipped); see SAFER_THAN_DEFAULT for the exceptions.
 */
export function loadConfig(inputs: ConfigInputs): LoadedConfig {
  const merged = new MergedConfig()
  const configFile = inputs.configPath ?? inputs.env[`${ENV_PREFIX}CONFIG`] ?? DEFAULT_CONFIG_FILE
  let text: string | undefined
  try {
    text = inputs.readFile(configFile)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    const explicit = inputs.configPath !== undefined || inputs.env[`${ENV_PREFIX}CONFIG`] !== undefined
    if (explicit || code !== 'ENOENT') merged.errors.push(`cannot read config file ${configFile}: ${(err as Error).message} (its keys keep their defaults)`)
  }
  if (text !== undefined) merged.addFile(configFile, text)

  for (const [name, value] of Object.entries(inputs.env)) {
    if (!name.startsWith(ENV_PREFIX) || value === undefined || name === `${ENV_PREFIX}CONFIG`) continue
    const wanted = name.slice(ENV_PREFIX.length).toLowerCase()
    const key = CONFIG_KEYS.find((k) => k.toLowerCase() === wanted)
    if (key === undefined) merged.errors.push(`environment variable ${name}: unknown key (ignored)`)
    else merged.apply({ key, raw: value, source: 'environment', where: `environment variable ${name}` })
  }

  for (const [name, value] of Object.entries(inputs.cli)) {
    if (!isConfigKey(name)) merged.errors.push(`unknown option --${name} (ignored)`)
    else merged.apply({ key: name, raw: value, source: 'command line', where: `command line --${name}` })
  }

  const { config, sources, errors, notices } = merged.finish()
  return { config, sources, errors, notices, configFile, configFileFound: text !== undefined }
}

/** The settings of every source laid over the defaults, with what was wrong in them. */
class MergedConfig {
  readonly errors: string[] = []
  readonly notices: string[] = []
  private readonly config = {} as Record<ConfigKey, unknown>
  private readonly sources = {} as Record<ConfigKey, Source>
  /** Where the value in effect was written, for messages about rules between keys. */
  private readonly origin = {} as Record<ConfigKey, string>
  /** Errors whose text ends with what their key is once everything is read. */
  private readonly ignored: Array<{ index: number; key: ConfigKey }> = []
  /** Keys whose last setting was bad. */
  private readonly lastBad = new Set<ConfigKey>()

  constructor() {
    for (const key of CONFIG_KEYS) this.set(key, defaultValue(key), 'default', 'default')
  }

  private set(key: ConfigKey, value: unknown, source: Source, where: string): void {
    this.config[key] = value
    this.sources[key] = source
    this.origin[key] = where
  }

  /** Take one setting, or report why not and leave the key as it was. */
  apply(s: Setting): void {
    const parsed = parseValue(s.key, s.raw)
    if ('error' in parsed) return this.reject(s.key, s.where, parsed.error)
    let value = parsed.value
    const itemRule = ITEM_RULES[s.key]
    if (itemRule) {
      value = (value as string[]).filter((item) => {
        const problem = itemRule(item)
        if (problem !== null) this.errors.push(`${s.where}: ${s.key}: ${JSON.stringify(item)} ${problem} (entry skipped)`)
        return problem === null
      })
    }
    const valueProblem = VALUE_RULES[s.key]?.(value as string) ?? null
    if (valueProblem !== null) return this.reject(s.key, s.where, valueProblem)
    this.set(s.key, value, s.source, s.where)
    this.lastBad.delete(s.key)
  }

  private reject(key: ConfigKey, where: string, problem: string): void {
    this.ignored.push({ index: this.errors.push(`${where}: ${problem}`) - 1, key })
    this.lastBad.add(key)
  }

  addFile(file: string, text: string): void {
    const seenAt = new Map<string, number>()
    for (const { line, key, value, problem } of readConfigText(text)) {
      const where = `${file}:${line}`
      if (key === '') {
        this.errors.push(`${where}: ${problem} (line ignored)`)
      } else if (Object.prototype.hasOwnProperty.call(IGNORED_KEYS, key)) {
        this.notices.push(`${where}: ${key} = ${value} is read but not used: ${IGNORED_KEYS[key]}`)
      } else if (!isConfigKey(key)) {
        // A misspelt key is a bad setting of the key meant, so that its safe
        // value applies (Hide Receiver = yes hides the receiver).
        const meant = keyMeant(key)
        if (meant !== undefined) this.reject(meant, where, unknownKey(key))
        else this.errors.push(`${where}: ${unknownKey(key)} (line ignored)`)
      } else {
        const before = seenAt.get(key)
        if (before !== undefined) this.notices.push(`${where}: ${key} is set again (first at line ${before}); the last line counts, as in policyd-spf`)
        seenAt.set(key, line)
        if (problem !== undefined) this.reject(key, where, problem)
        else this.apply({ key, raw: value, source: 'file', where })
      }
    }
  }

  /** Safer values for bad settings that left their key at the default, then the rules between keys. */
  finish(): { config: Config; sources: Record<ConfigKey, Source>; errors: string[]; notices: string[] } {
    const safer = new Map<ConfigKey, string>()
    for (const key of this.lastBad) {
      const rule = SAFER_THAN_DEFAULT[key]
      if (!rule || this.sources[key] !== 'default') continue
      for (const [k, raw] of Object.entries(rule.set) as Array<[ConfigKey, string]>) {
        this.set(k, (parseValue(k, raw) as { value: unknown }).value, 'fallback', `instead of the bad ${key}`)
      }
      safer.set(key, `${Object.entries(rule.set).map(([k, v]) => `${k} = ${v}`).join(', ')} instead (${rule.why})`)
    }
    const config = this.config as unknown as Config
    for (const { index, key } of this.ignored) {
      const kept = `${key} = ${formatValue(key, config[key])}${this.sources[key] === 'default' ? ' (its default)' : ` (from the ${this.sources[key]})`}`
      this.errors[index] += `; ignored, so ${safer.get(key) ?? kept}`
    }
    this.errors.push(...crossCheck(config, this.sources, this.origin))
    return { config, sources: this.sources, errors: this.errors, notices: this.notices }
  }
}

/** Rules between keys: the keys of a broken rule go back to their defaults, which keep it. */
function crossCheck(c: Config, sources: Record<ConfigKey, Source>, origin: Record<ConfigKey, string>): string[] {
  const errors: string[] = []
  const reset = (...keys: ConfigKey[]): string => {
    for (const key of keys) {
      ;(c as unknown as Record<ConfigKey, unknown>)[key] = defaultValue(key)
      sources[key] = 'default'
      origin[key] = 'default'
    }
    return keys.map((k) => `${k} = ${formatValue(k, c[k])}`).join(', ')
  }
  if (c.listen !== '' && c.max_idle <= 300) {
    // Postfix closes an idle policy connection itself after
    // smtpd_policy_service_max_idle (300 s): the daemon closing it first
    // races with a request on its way.
    errors.push(`max_idle (${c.max_idle}s, ${origin.max_idle}) must be longer than Postfix's smtpd_policy_service_max_idle (300s) when listen is set; so ${reset('max_idle')} (its default)`)
  }
  if (c.greylist_retry_window <= c.greylist_delay) {
    const was = `greylist_retry_window (${c.greylist_retry_window}s, ${origin.greylist_retry_window}) must be longer than greylist_delay (${c.greylist_delay}s, ${origin.greylist_delay}), or no retry could ever pass`
    errors.push(`${was}; both ignored, so ${reset('greylist_delay', 'greylist_retry_window')} (their defaults)`)
  }
  if (c.Header_Type === 'AR' && c.Authserv_Id === '') {
    errors.push(`Header_Type AR needs an Authserv_Id; so ${reset('Authserv_Id')} (its default)`)
  }
  return errors
}

/** Render a value back into the form used in the config file. */
export function formatValue(key: ConfigKey, value: unknown): string {
  const spec = OPTIONS[key]
  if (spec.type === 'bool') return value ? 'yes' : 'no'
  if (spec.type === 'duration') return `${value}s`
  if (spec.type === 'list') return (value as string[]).join(', ')
  return String(value)
}
