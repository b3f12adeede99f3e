#!/usr/bin/env bash
# planshift's two commands for a fresh machine:
#   ./dev.sh demo   set everything up, start a local Apache Kafka and run the demo
#   ./dev.sh test   set everything up and run the test suite (what CI runs)
# Setup is idempotent: a virtualenv in .venv with planshift installed, the Apache Kafka
# jars from Maven Central cached in ~/.cache/planshift/kafka (outside the work tree), and
# Debian's java, maven, postgresql, prometheus, prometheus-pushgateway, chromium and
# chromium-driver packages when they are missing.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv

need_system_packages() {
  local missing=()
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  # PostgreSQL's server programs, for the tests of the shared licence directory
  command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  # promtool (the alert rules' checks and tests) and a Pushgateway (the nightly job's metrics)
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v prometheus-pushgateway >/dev/null || missing+=(prometheus-pushgateway)
  # a real headless browser for the status page's tests (selenium drives it)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing ${missing[*]} from Debian's packages" >&2
      apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null
    else
      echo "planshift needs Java 17+, Maven, PostgreSQL's server programs, Prometheus' promtool and Pushgateway, and chromium with chromedriver (the status page's tests): install ${missing[*]}" >&2
      exit 1
    fi
  fi
}

setup() {
  need_system_packages
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.planshift-installed"
  local want
  want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing planshift and its Python packages into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e '.[dev,bench]'
    echo "$want" > "$stamp"
  fi
  "$VENV/bin/python" -c 'from planshift.ops.broker import ensure_kafka_jars; from planshift.settings import Settings; ensure_kafka_jars(Settings.from_env())'
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    setup
    exec "$VENV/bin/planshift" demo "$@"
    ;;
  test)
    setup
    # The suite starts and stops many short-lived brokers: the JIT's first tier is enough for
    # them, and on a small machine the suite runs about a sixth faster without the second
    # (measured: 118 s against 141 s for the broker-heaviest tests). Set it to "" for C2.
    export PLANSHIFT_KAFKA_JVM_OPTS="${PLANSHIFT_KAFKA_JVM_OPTS--XX:TieredStopAtLevel=1}"
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  setup)
    setup
    ;;
  *)
    echo "usage: ./dev.sh demo|test|setup [args]" >&2
    exit 2
    ;;
esac
