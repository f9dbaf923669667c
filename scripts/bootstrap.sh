#!/usr/bin/env bash
# Create the project's virtualenv and install flowtape (editable) with its test tools.
# Usage: scripts/bootstrap.sh PYTHON VENV
set -euo pipefail
PY="${1:-python3}"
VENV="${2:-.venv}"

if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "bootstrap: $PY is missing or older than Python 3.11; install python3 (Debian 12: apt-get install python3)" >&2
    exit 1
fi
# Debian's python3 ships without venv/ensurepip until python3-venv is installed.
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing python3-venv"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
    else
        echo "bootstrap: $PY cannot create virtualenvs; run: sudo apt-get install python3-venv" >&2
        exit 1
    fi
fi
# A C compiler and Python's headers build capture/decode/_http1.c, _http2.c, _dns.c and _tls.c (the recorder's
# HTTP/1, HTTP/2, DNS and ClientHello decoders) and the ring and pcap loops. Without them the install still
# succeeds and slower pure-Python decoders are used.
PYINC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if ! command -v gcc >/dev/null || [ ! -f "$PYINC/Python.h" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing gcc and python3-dev (for capture/decode/_http1.c)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc python3-dev >/dev/null
    else
        echo "bootstrap: no gcc or $PYINC/Python.h: the compiled HTTP decoders will not be built (sudo apt-get install gcc python3-dev)" >&2
    fi
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q -e '.[test]'
echo "bootstrap: $VENV ready ($("$VENV/bin/flowtape" --version))"
