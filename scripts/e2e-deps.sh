#!/usr/bin/env bash
# What the end-to-end tests (test/e2e/*.e2e.ts) need from Debian: postfix and
# swaks. Installed only when missing, without any Postfix configuration
# ("No configuration": no /etc/postfix/main.cf is written). The tests run a
# private Postfix instance in a temp dir and need nothing in /etc/postfix.
# Afterwards no system Postfix that this script could have started is running.
#
#   bash scripts/e2e-deps.sh && npx tsc -p tsconfig.json && npx tap --jobs 1 --timeout 600 test/e2e/*.e2e.ts
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

if [ "$(id -u)" != 0 ]; then
  echo "e2e-deps.sh: run as root (apt-get, and the tests start Postfix's master as root)" >&2
  exit 2
fi

# The system instance's master, if one runs: its pid file under the default queue directory.
system_master_pid() {
  local pidfile=/var/spool/postfix/pid/master.pid pid
  [ -r "$pidfile" ] || return 1
  pid=$(tr -dc 0-9 <"$pidfile")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in
    */postfix/*master*|*/master) echo "$pid" ;;
    *) return 1 ;;
  esac
}

running_before=$(system_master_pid || true)

missing=()
command -v postfix >/dev/null 2>&1 || missing+=(postfix)
command -v swaks >/dev/null 2>&1 || missing+=(swaks)

if [ "${#missing[@]}" -gt 0 ]; then
  echo "e2e-deps.sh: installing ${missing[*]}"
  # Keep the package's maintainer scripts from starting any service on a
  # machine that has no policy-rc.d of its own (container images have one).
  made_policy_rc=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from policyd-ts scripts/e2e-deps.sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy_rc=1
    trap '[ "$made_policy_rc" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -q
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

command -v postfix >/dev/null 2>&1 || { echo "e2e-deps.sh: postfix still missing after the install" >&2; exit 1; }
command -v swaks >/dev/null 2>&1 || { echo "e2e-deps.sh: swaks still missing after the install" >&2; exit 1; }

# No system Postfix left running: one that was already running before this
# script (the machine's own MTA) is left alone; any other is stopped.
now=$(system_master_pid || true)
if [ -n "$now" ] && [ "$now" != "$running_before" ]; then
  echo "e2e-deps.sh: stopping the system Postfix master (pid $now) started by the install"
  if [ -f /etc/postfix/main.cf ]; then postfix stop || true; else kill -TERM "$now" 2>/dev/null || true; fi
  for _ in $(seq 1 50); do [ -d "/proc/$now" ] || break; sleep 0.1; done
  if [ -d "/proc/$now" ] && [ "$(cut -d' ' -f3 "/proc/$now/stat" 2>/dev/null)" != Z ]; then
    echo "e2e-deps.sh: the system Postfix master (pid $now) does not stop" >&2
    exit 1
  fi
elif [ -n "$now" ]; then
  echo "e2e-deps.sh: note: a system Postfix (pid $now) was already running before this script; left alone"
fi

echo "e2e-deps.sh: $(postconf -d -h mail_version 2>/dev/null | sed 's/^/postfix /'), swaks $(swaks --version 2>/dev/null | head -n 1 | grep -oE '[0-9]{8}|[0-9]+\.[0-9.]+' | head -n 1)"
