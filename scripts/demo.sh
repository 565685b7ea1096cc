#!/usr/bin/env bash
# The main job on a newcomer's machine: build, then feed policy requests to
# the real binary as Postfix would, with a temporary database, and show the
# replies and the log. Nothing outside a temp directory is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f dist/lib/cli.js ] || npx tsc -p tsconfig.json
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
request() {
  printf 'request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address=%s\nclient_name=mail.example.net\nhelo_name=mail.example.net\nsender=%s\nrecipient=%s\ninstance=%s\n\n' "$@"
}
run() {
  node bin/policyd-ts --config /dev/null --db_path "$dir/db/policyd-ts.sqlite" \
    --syslog_socket "$dir/none" --log_file "$dir/policyd-ts.log" \
    --greylist_whitelist_clients '' --greylist_whitelist_recipients '' \
    --spf_enabled no --greylist_delay 2s "$@"
}
echo "== first attempt of a new (client, sender, recipient) triplet:"
request 192.0.2.10 alice@example.net bob@example.org a1 | run
echo "== the same sender retrying at once from another address of the same /24:"
request 192.0.2.77 alice@example.net bob@example.org a2 | run
echo "== waiting 2 s (greylist_delay 2s), then the retry of a 2-recipient message:"
sleep 2.1
{ request 192.0.2.10 alice@example.net bob@example.org m1; request 192.0.2.10 alice@example.net carol@example.org m1; } | run
echo "== and later mail of the same triplet:"
request 192.0.2.10 alice@example.net bob@example.org m2 | run
echo "== the log (debugLevel 1: one line per decision):"
cat "$dir/policyd-ts.log"
