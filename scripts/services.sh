#!/usr/bin/env bash
# Start the loopback services the tests use, if they are not already answering.
# PostgreSQL and Redis are preinstalled on these machines; elsewhere install them with apt.
set -euo pipefail

if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
if command -v redis-server >/dev/null 2>&1 && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
# PostgreSQL JDBC driver for the JVM Spark Connect server of the engine-parity tests
# (tests/fixtures/jvm_spark.py). Installed only if missing; a clean machine has no apt lists yet.
if [ ! -f /usr/share/java/postgresql.jar ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq libpostgresql-jdbc-java >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq libpostgresql-jdbc-java >/dev/null; }
  else
    echo "services: /usr/share/java/postgresql.jar missing; run as root: apt-get install -y libpostgresql-jdbc-java" >&2
  fi
fi
# promtool (Debian package prometheus) for tests/unit/test_prometheus_rules.py, which checks
# and unit-tests monitoring/prometheus/. Same pattern as above: only if missing, root only.
if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
  else
    echo "services: promtool missing; run as root: apt-get install -y --no-install-recommends prometheus" >&2
  fi
fi
# Pushgateway (Debian package prometheus-pushgateway) for tests/integration/test_prometheus_scrape.py,
# which starts it on a free loopback port itself: installed, not run as a service. Batch jobs
# push to it when monitoring.pushgateway_url is set. Same pattern: only if missing, root only.
if ! command -v prometheus-pushgateway >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends prometheus-pushgateway >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus-pushgateway >/dev/null; }
    # The package's postinst starts a system-wide instance on :9091 where an init system runs;
    # the tests never rely on it (they start their own on a free port).
  else
    echo "services: prometheus-pushgateway missing; run as root: apt-get install -y --no-install-recommends prometheus-pushgateway" >&2
  fi
fi
# Alertmanager (Debian package prometheus-alertmanager: prometheus-alertmanager and amtool)
# for tests/unit/test_alertmanager_config.py (amtool check-config) and
# tests/integration/test_alertmanager.py. Same pattern: only if missing, root only.
if ! command -v amtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null; }
  else
    echo "services: amtool missing; run as root: apt-get install -y --no-install-recommends prometheus-alertmanager" >&2
  fi
fi
# Chromium (Debian package chromium) for tests/integration/test_dashboard_e2e.py, which drives
# it headless through playwright-core (`npx playwright install` cannot download its own
# browsers here). Same pattern: only if missing, root only.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; }
  else
    echo "services: chromium missing; run as root: apt-get install -y chromium" >&2
  fi
fi
echo "services: ok"
