#!/usr/bin/env bash
# Start every service the test suite talks to, each only if it is not already answering:
# PostgreSQL, Redis, a local S3/KMS-compatible server (moto) and a local SMTP server.
#   bash ops/services.sh up      start what is missing
#   bash ops/services.sh status  say what answers
# Ports and folders come from the same variables the tests read (defaults below).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
S3_PORT=${GDPR_TEST_S3_PORT:-9000}
SMTP_PORT=${GDPR_TEST_SMTP_PORT:-8025}
SMTP_DIR=${GDPR_TEST_SMTP_DIR:-/tmp/gdpr-smtp}
RUN=${GDPR_TEST_RUN_DIR:-/tmp/gdpr-services}
mkdir -p "$RUN"

answers() { # host port
  "$PY" - "$1" "$2" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

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
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
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
  wait_for redis 127.0.0.1 6379
}

start_s3() {
  answers 127.0.0.1 "$S3_PORT" && { echo "s3: already up"; return 0; }
  nohup "$PY" -m moto.server -H 127.0.0.1 -p "$S3_PORT" >"$RUN/s3.log" 2>&1 &
  echo $! >"$RUN/s3.pid"
  wait_for s3 127.0.0.1 "$S3_PORT"
}

start_smtp() {
  answers 127.0.0.1 "$SMTP_PORT" && { echo "smtp: already up"; return 0; }
  nohup "$PY" ops/smtp_sink.py --port "$SMTP_PORT" --maildir "$SMTP_DIR" >"$RUN/smtp.log" 2>&1 &
  echo $! >"$RUN/smtp.pid"
  wait_for smtp 127.0.0.1 "$SMTP_PORT"
}

case "${1:-up}" in
  up) start_postgres && start_redis && start_s3 && start_smtp ;;
  status)
    for svc in "postgres 5432" "redis 6379" "s3 $S3_PORT" "smtp $SMTP_PORT"; do
      set -- $svc; answers 127.0.0.1 "$2" && echo "$1: up" || echo "$1: down"
    done ;;
  *) echo "usage: $0 up|status" >&2; exit 2 ;;
esac
