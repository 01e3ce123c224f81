#!/usr/bin/env bash
# Start the services the test suite and the benchmarks talk to, each only if it is not
# already answering, and stop again only what this script started.
#   bash ops/services.sh up [NAME...]    start what is missing (default: postgres redis)
#   bash ops/services.sh down            stop what `up` started (nothing else)
#   bash ops/services.sh status          say what answers
# NAMEs: postgres redis s3 smtp. The test suite starts its own S3 (moto) and SMTP servers on
# free ports; `up s3 smtp` is for benchmarks and trying things by hand.
# Ports and folders come from the same variables the tests read (defaults below).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
S3_PORT=${GDPR_TEST_S3_PORT:-9000}
SMTP_PORT=${GDPR_TEST_SMTP_PORT:-8025}
SMTP_DIR=${GDPR_TEST_SMTP_DIR:-/tmp/gdpr-smtp}
RUN=${GDPR_TEST_RUN_DIR:-/tmp/gdpr-services}
STARTED="$RUN/started"
mkdir -p "$RUN"
touch "$STARTED"

remember() { grep -qx "$1" "$STARTED" || echo "$1" >>"$STARTED"; }

answers() { # host port
  "$PY" - "$1" "$2" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

cluster() { ls /etc/postgresql | head -1; } # the machine's PostgreSQL version

wait_for() { # name host port
  for _ in $(seq 1 60); do answers "$2" "$3" && { echo "$1: up on $2:$3"; return 0; }; sleep 0.5; done
  echo "$1: did not come up on $2:$3" >&2; return 1
}

start_postgres() {
  answers 127.0.0.1 5432 && { echo "postgres: already up"; return 0; }
  if ! command -v pg_ctlcluster >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    # A throwaway test server: let the tests connect over loopback as postgres without a password.
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
      sed -i -E 's/(peer|md5|scram-sha-256)$/trust/' "$hba"
    done
  fi
  pg_ctlcluster --skip-systemctl-redirect "$(cluster)" main start || true
  remember postgres
  wait_for postgres 127.0.0.1 5432
}

start_redis() {
  answers 127.0.0.1 6379 && { echo "redis: already up"; return 0; }
  if ! command -v redis-server >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  remember redis
  wait_for redis 127.0.0.1 6379
}

start_s3() {
  answers 127.0.0.1 "$S3_PORT" && { echo "s3: already up"; return 0; }
  nohup "$PY" -m moto.server -H 127.0.0.1 -p "$S3_PORT" >"$RUN/s3.log" 2>&1 &
  echo $! >"$RUN/s3.pid"
  remember s3
  wait_for s3 127.0.0.1 "$S3_PORT"
}

start_smtp() {
  answers 127.0.0.1 "$SMTP_PORT" && { echo "smtp: already up"; return 0; }
  nohup "$PY" ops/smtp_sink.py --port "$SMTP_PORT" --maildir "$SMTP_DIR" >"$RUN/smtp.log" 2>&1 &
  echo $! >"$RUN/smtp.pid"
  remember smtp
  wait_for smtp 127.0.0.1 "$SMTP_PORT"
}

stop_one() { # name
  case "$1" in
    postgres) pg_ctlcluster --skip-systemctl-redirect "$(cluster)" main stop ;;
    redis) "${REDIS_CLI:-redis-cli}" -p 6379 shutdown nosave >/dev/null 2>&1 ;;
    s3 | smtp) [ -f "$RUN/$1.pid" ] && kill "$(cat "$RUN/$1.pid")" 2>/dev/null; rm -f "$RUN/$1.pid" ;;
  esac
  echo "$1: stopped"
}

command=${1:-up}
shift || true
case "$command" in
  up)
    names=("$@")
    [ ${#names[@]} -eq 0 ] && names=(postgres redis)
    for name in "${names[@]}"; do
      case "$name" in
        postgres | redis | s3 | smtp) "start_$name" || exit 1 ;;
        *) echo "unknown service '$name': use postgres, redis, s3 or smtp" >&2; exit 2 ;;
      esac
    done ;;
  down)
    while read -r name; do [ -n "$name" ] && stop_one "$name"; done <"$STARTED"
    : >"$STARTED" ;;
  status)
    for svc in "postgres 5432" "redis 6379" "s3 $S3_PORT" "smtp $SMTP_PORT"; do
      set -- $svc; answers 127.0.0.1 "$2" && echo "$1: up" || echo "$1: down"
    done ;;
  *) echo "usage: $0 up [postgres|redis|s3|smtp...] | down | status" >&2; exit 2 ;;
esac
