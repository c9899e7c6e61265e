#!/usr/bin/env bash
# Installs what the dev stack and the tests need from the machine, when missing: PostgreSQL server binaries
# (Debian's postgresql), Java and Maven (Apache Kafka's jars are resolved from Maven Central by the dev stack),
# Chromium (the control panel's browser test drives it headless), Prometheus with promtool (`dev up --with
# prometheus`; the tests check the Prometheus configs and evaluate the dashboards' queries with it), and what
# building TimescaleDB from ../shared/vendor needs (the dev stack's second cluster; only when that source is
# there). Skipped for a server whose URL is given (DATABASE_URL, KAFKA_BOOTSTRAP, TIMESCALEDB_URL).
#
# Runs before any dev-stack cluster starts (CI: .ci/run; `make test`): installing postgresql-server-dev-N
# upgrades postgresql-N to the archive's newest minor, which a running server of the old binaries does not survive.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
if [ -z "${DATABASE_URL:-}" ] && ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ -z "${KAFKA_BOOTSTRAP:-}" ]; then
  command -v java >/dev/null || missing+=(default-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
fi
# Optional: without a browser only the control panel's browser test is skipped (it says so).
optional=()
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null; then
  optional+=(chromium)
fi
# Optional: without it the Prometheus tests are skipped (they say so); `dev up --with prometheus` says what is missing.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  optional+=(prometheus)
fi

# The TimescaleDB build (src/market_ingestor/devstack/timescaledb_build.py): the server headers of the newest
# installed PostgreSQL major (Debian's default major before PostgreSQL itself is installed), cmake, a C
# toolchain, and the OpenSSL and Kerberos headers its build links against.
timescaledb_build_packages() {
  [ -z "${TIMESCALEDB_URL:-}" ] && [ "${MARKET_INGESTOR_TIMESCALEDB:-}" != "off" ] || return 0
  [ -n "${MARKET_INGESTOR_TIMESCALEDB_SOURCE:-}" ] || ls ../shared/vendor/timescaledb-*.tar.gz >/dev/null 2>&1 || return 0
  local major dev
  major=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sed -E 's#.*/postgresql/([0-9]+)/bin/initdb#\1#' | sort -n | tail -1)
  dev=${major:+postgresql-server-dev-$major}
  for package in "${dev:-postgresql-server-dev-all}" cmake build-essential libssl-dev libkrb5-dev; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || echo "$package"
  done
}
mapfile -t build < <(command -v dpkg-query >/dev/null && timescaledb_build_packages)

[ ${#missing[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] && [ ${#build[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  if [ ${#optional[@]} -ne 0 ]; then
    echo "not installed: ${optional[*]} (Debian: apt-get install ${optional[*]}); the tests that need them" \
      "(browser, Prometheus) will be skipped" >&2
  fi
  if [ ${#build[@]} -ne 0 ]; then
    echo "not installed: ${build[*]} (Debian: apt-get install ${build[*]}); without them the dev stack cannot" \
      "build TimescaleDB and its tests are skipped" >&2
  fi
  [ ${#missing[@]} -eq 0 ] && exit 0
  echo "missing system packages: ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
  echo "or point DATABASE_URL / KAFKA_BOOTSTRAP at running servers." >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
missing+=("${optional[@]}")
if [ ${#missing[@]} -ne 0 ]; then
  echo "installing ${missing[*]} with apt-get"
  # --no-upgrade: a named package that is installed already (but not on PATH) is left as it is, not upgraded.
  apt-get install -y -qq --no-install-recommends --no-upgrade "${missing[@]}" >/dev/null
  mapfile -t build < <(timescaledb_build_packages)  # the server major is known now
fi
if [ ${#build[@]} -ne 0 ]; then
  echo "installing ${build[*]} with apt-get (to build TimescaleDB for the dev stack)"
  apt-get install -y -qq --no-install-recommends "${build[@]}" >/dev/null
fi
# Debian's packages start a cluster and a Prometheus of their own; the dev stack runs its own throwaway ones instead.
if command -v pg_ctlcluster >/dev/null; then service postgresql stop >/dev/null 2>&1 || true; fi
if [[ " ${missing[*]} " == *" prometheus "* ]]; then service prometheus stop >/dev/null 2>&1 || true; fi
