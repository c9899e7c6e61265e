#!/usr/bin/env bash
# Installs what the dev stack and the tests need from the machine, when missing: PostgreSQL server binaries
# (Debian's postgresql), Java and Maven (Apache Kafka's jars are resolved from Maven Central by the dev stack),
# Chromium (the control panel's browser test drives it headless). Skipped for a server whose URL is given
# (DATABASE_URL, KAFKA_BOOTSTRAP).
set -euo pipefail

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
[ ${#missing[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  if [ ${#optional[@]} -ne 0 ]; then
    echo "not installed: ${optional[*]} (Debian: apt-get install ${optional[*]}); the browser test will be skipped" >&2
  fi
  [ ${#missing[@]} -eq 0 ] && exit 0
  echo "missing system packages: ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
  echo "or point DATABASE_URL / KAFKA_BOOTSTRAP at running servers." >&2
  exit 1
fi
missing+=("${optional[@]}")
echo "installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's package starts a cluster of its own; the dev stack runs its own throwaway one instead.
if command -v pg_ctlcluster >/dev/null; then service postgresql stop >/dev/null 2>&1 || true; fi
