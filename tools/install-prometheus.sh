#!/usr/bin/env bash
# Installs a real Prometheus server (Debian package) for the monitoring tests.
# The package starts nothing by itself; tests start it with their own config.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  echo "prometheus: $(prometheus --version 2>&1 | head -1)"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package may try to start a service; make sure no system instance holds port 9090.
$SUDO systemctl stop prometheus 2>/dev/null || $SUDO service prometheus stop 2>/dev/null || true
$SUDO pkill -x prometheus 2>/dev/null || true
echo "prometheus: $(prometheus --version 2>&1 | head -1)"
