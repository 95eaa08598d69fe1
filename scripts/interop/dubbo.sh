#!/usr/bin/env bash
# Installs the independent Dubbo/hessian2 peers used by `cargo test -p metaproxy-dubbo
# --features interop` into .interop/dubbo/ (gitignored). Idempotent: re-running only
# installs what is missing.
#   - hessian.js (npm): encodes/decodes hessian2 values for the golden tests
#   - dubbo-ssl-python (PyPI), in a venv: a Python client of the Dubbo TCP protocol
#     (hessian2), behind codecs/dubbo/interop/client.py. (dubbo-python3 on PyPI is a
#     JSON-RPC-over-HTTP client, not the Dubbo protocol.)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$ROOT/.interop/dubbo"
HESSIAN_JS_VERSION="2.11.0"
DUBBO_PY_VERSION="0.9.6"

mkdir -p "$DEST"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "dubbo interop: node and npm are required" >&2
    exit 1
fi
if [ ! -f "$DEST/node_modules/hessian.js/package.json" ] ||
    ! grep -q "\"version\": \"$HESSIAN_JS_VERSION\"" "$DEST/node_modules/hessian.js/package.json"; then
    echo "dubbo interop: installing hessian.js@$HESSIAN_JS_VERSION into $DEST" >&2
    npm install --silent --no-audit --no-fund --prefix "$DEST" "hessian.js@$HESSIAN_JS_VERSION"
fi

if [ ! -x "$DEST/venv/bin/python" ]; then
    echo "dubbo interop: creating venv $DEST/venv" >&2
    python3 -m venv "$DEST/venv"
fi
if ! "$DEST/venv/bin/python" -c "import dubbo_ssl.client" 2>/dev/null; then
    echo "dubbo interop: installing dubbo-ssl-python==$DUBBO_PY_VERSION" >&2
    "$DEST/venv/bin/pip" install --quiet --disable-pip-version-check "dubbo-ssl-python==$DUBBO_PY_VERSION"
fi

echo "dubbo interop: ready in $DEST" >&2
