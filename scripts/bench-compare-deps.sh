#!/bin/sh
# Installs the programs `npm run bench -- --compare` measures policyd-ts
# against: Debian's postgrey, postfix-policyd-spf-python (policyd-spf) and
# policyd-rate-limit, and redis-server (the bench starts a private one; the
# package's service is not started while it installs).
# The bench runs it itself when they are missing; the tests never do.
#
# The bench starts the programs on its own (postgrey on a free 127.0.0.1
# port with a temporary --dbdir, policyd-spf over pipes, policyd-rate-limit
# with its own config file and temporary directories): no system daemon
# is wanted. Service starts are blocked while the packages install, and a
# postgrey or Postfix daemon that is running afterwards but was not running
# before is stopped again (by the pid in its pid file) and, for a newly
# installed postgrey, disabled at boot.
set -eu

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-compare-deps: must run as root (apt-get)" >&2
  exit 1
fi

PKGS="postgrey postfix-policyd-spf-python policyd-rate-limit redis-server"

# pid of a running daemon from its pid file, or nothing; $1 is what its
# /proc/PID/cmdline must contain (a stale pid file may name another process).
running_pid() {
  what=$1
  shift
  for f in "$@"; do
    if [ -r "$f" ]; then
      pid=$(tr -dc '0-9' <"$f" | head -c 10)
      if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$what"; then
        echo "$pid"
        return 0
      fi
    fi
  done
  return 0
}
POSTGREY_PIDFILES="/run/postgrey.pid /var/run/postgrey.pid"
POSTFIX_PIDFILES="/var/spool/postfix/pid/master.pid"
RATELIMIT_PIDFILES="/run/policyd-rate-limit/policyd-rate-limit.pid /var/run/policyd-rate-limit/policyd-rate-limit.pid"

postgrey_before=$(running_pid postgrey $POSTGREY_PIDFILES)
postfix_before=$(running_pid master $POSTFIX_PIDFILES)
ratelimit_before=$(running_pid policyd-rate-limit $RATELIMIT_PIDFILES)
postgrey_installed_before=no
dpkg-query -W -f='${Status}' postgrey 2>/dev/null | grep -q 'install ok installed' && postgrey_installed_before=yes
ratelimit_installed_before=no
dpkg-query -W -f='${Status}' policyd-rate-limit 2>/dev/null | grep -q 'install ok installed' && ratelimit_installed_before=yes

# Block service starts during the install (invoke-rc.d honours policy-rc.d).
RCD=/usr/sbin/policy-rc.d
RCD_SAVED=""
restore_rcd() {
  if [ -n "$RCD_SAVED" ]; then
    mv -f "$RCD_SAVED" "$RCD"
  else
    rm -f "$RCD"
  fi
}
if [ -e "$RCD" ]; then
  RCD_SAVED=$(mktemp /usr/sbin/policy-rc.d.bench-saved.XXXXXX)
  cp -p "$RCD" "$RCD_SAVED"
fi
trap restore_rcd EXIT INT TERM
printf '#!/bin/sh\n# written by policyd-ts scripts/bench-compare-deps.sh for the time of an install\nexit 101\n' >"$RCD"
chmod 0755 "$RCD"

export DEBIAN_FRONTEND=noninteractive
# postfix-policyd-spf-python depends on postfix: if it gets pulled in, leave it unconfigured.
echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
apt-get update
apt-get install -y --no-install-recommends $PKGS

restore_rcd
trap - EXIT INT TERM

# Nothing the install started may stay running.
pid=$(running_pid postgrey $POSTGREY_PIDFILES)
if [ -n "$pid" ] && [ "$pid" != "$postgrey_before" ]; then
  echo "bench-compare-deps: stopping the system postgrey started by the install (pid $pid)"
  kill "$pid" || true
fi
pid=$(running_pid policyd-rate-limit $RATELIMIT_PIDFILES)
if [ -n "$pid" ] && [ "$pid" != "$ratelimit_before" ]; then
  echo "bench-compare-deps: stopping the system policyd-rate-limit started by the install (pid $pid)"
  kill "$pid" || true
fi
pid=$(running_pid master $POSTFIX_PIDFILES)
if [ -n "$pid" ] && [ "$pid" != "$postfix_before" ]; then
  echo "bench-compare-deps: stopping the Postfix master started by the install (pid $pid)"
  postfix stop 2>/dev/null || kill "$pid" || true
fi
if [ "$postgrey_installed_before" = no ]; then
  # Not started at boot either: the bench runs its own.
  # update-rc.d also removes the systemd unit's enablement symlinks.
  update-rc.d postgrey disable >/dev/null 2>&1 || true
  if [ -d /run/systemd/system ]; then systemctl disable postgrey.service >/dev/null 2>&1 || true; fi
fi
if [ "$ratelimit_installed_before" = no ]; then
  update-rc.d policyd-rate-limit disable >/dev/null 2>&1 || true
  if [ -d /run/systemd/system ]; then systemctl disable policyd-rate-limit.service >/dev/null 2>&1 || true; fi
fi

for prog in /usr/sbin/postgrey /usr/bin/policyd-spf /usr/bin/policyd-rate-limit; do
  if [ ! -x "$prog" ]; then
    echo "bench-compare-deps: $prog missing after the install" >&2
    exit 1
  fi
done
echo "bench-compare-deps: postgrey $(dpkg-query -W -f='${Version}' postgrey), postfix-policyd-spf-python $(dpkg-query -W -f='${Version}' postfix-policyd-spf-python), policyd-rate-limit $(dpkg-query -W -f='${Version}' policyd-rate-limit) installed"
