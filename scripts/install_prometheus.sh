#!/usr/bin/env bash
# Put Debian's prometheus and promtool binaries into .tools/bin/ of this project and print that folder.
#
# The observability test scrapes a live `elo run` with a real Prometheus and checks the chart's alert rules with
# promtool. Debian packages both (package `prometheus`: static Go binaries); `apt-get download` fetches the .deb
# without installing it and `dpkg-deb -x` unpacks it here, so nothing is installed outside .tools/. Idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${ELO_TOOLS_BIN:-$ROOT/.tools/bin}"

ok() { [ -x "$BIN/prometheus" ] && [ -x "$BIN/promtool" ] && "$BIN/promtool" --version >/dev/null 2>&1; }

if ok; then
    echo "$BIN"
    exit 0
fi
for tool in apt-get dpkg-deb; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install_prometheus.sh: needs $tool (Debian/Ubuntu); or put prometheus and promtool into $BIN" >&2
        exit 1
    fi
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download prometheus >&2 2>"$work/err"; then
    # No package lists yet (a fresh container): read them once, then try again.
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >&2
        apt-get download prometheus >&2
    else
        cat "$work/err" >&2
        echo "install_prometheus.sh: apt-get download prometheus failed (try 'sudo apt-get update' first)" >&2
        exit 1
    fi
fi
dpkg-deb -x prometheus_*.deb unpacked
mkdir -p "$BIN"
install -m 0755 unpacked/usr/bin/prometheus unpacked/usr/bin/promtool "$BIN/"
ok || { echo "install_prometheus.sh: the unpacked promtool does not run" >&2; exit 1; }
echo "$BIN"
