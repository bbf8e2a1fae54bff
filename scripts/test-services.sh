# Sourced by `make test`: makes a real Redis and a real PostgreSQL available to the tests and
# exports their URLs. Locally a missing server only skips its tests; with CI=true they fail.
# shellcheck shell=bash

export NPS_TEST_REDIS_URL="${NPS_TEST_REDIS_URL:-redis://127.0.0.1:6391/0}"
export NPS_TEST_POSTGRES_URL="${NPS_TEST_POSTGRES_URL:-postgresql+psycopg://nps:nps@127.0.0.1:5432/nps_test}"

_as_root() { [ "$(id -u)" = "0" ]; }

_apt_install() {
  if _as_root && command -v apt-get >/dev/null 2>&1; then
    if [ ! -f /tmp/.nps-apt-updated ]; then apt-get update -qq >/dev/null 2>&1 && touch /tmp/.nps-apt-updated; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 || echo "test-services: could not install $*" >&2
  fi
}

# --- Redis: our own instance on a private port, so a developer's Redis is never touched.
command -v redis-server >/dev/null 2>&1 || _apt_install redis-server
if command -v redis-server >/dev/null 2>&1; then
  if ! redis-cli -p 6391 ping >/dev/null 2>&1; then
    redis-server --port 6391 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
      --logfile /tmp/nps-test-redis.log >/dev/null
    for _ in 1 2 3 4 5 6 7 8 9 10; do redis-cli -p 6391 ping >/dev/null 2>&1 && break; sleep 0.3; done
  fi
fi

# --- PostgreSQL: Debian's cluster refuses to run as root, so pg_ctlcluster starts it as postgres.
if command -v pg_lsclusters >/dev/null 2>&1; then
  _pg=$(pg_lsclusters --no-header 2>/dev/null | head -n 1)
  if [ -n "$_pg" ]; then
    set -- $_pg
    [ "$4" = "online" ] || pg_ctlcluster "$1" "$2" start >/dev/null 2>&1 || true
    if _as_root; then
      runuser -u postgres -- psql -p "$3" -qtAc "SELECT 1 FROM pg_roles WHERE rolname='nps'" | grep -q 1 \
        || runuser -u postgres -- psql -p "$3" -qc "CREATE ROLE nps LOGIN SUPERUSER PASSWORD 'nps'" >/dev/null
      runuser -u postgres -- psql -p "$3" -qtAc "SELECT 1 FROM pg_database WHERE datname='nps_test'" | grep -q 1 \
        || runuser -u postgres -- createdb -p "$3" -O nps nps_test
    fi
    set --
  fi
fi

# --- Chromium for the answer-page browser test.
command -v chromium >/dev/null 2>&1 || _apt_install chromium chromium-driver
