#!/usr/bin/env bash
# Installs the Apache Thrift peers for the thrift codec's interop tests (idempotent):
#   - Debian's thrift-compiler (the `thrift` IDL compiler), via apt-get;
#   - PyPI's `thrift` runtime in a venv at .interop/thrift/venv.
# Then generates the Python code for codecs/thrift/interop/interop.thrift into
# .interop/thrift/gen-py (generated code is never committed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$ROOT/.interop/thrift"
VENV="$DEST/venv"
IDL="$ROOT/codecs/thrift/interop/interop.thrift"
PY_THRIFT_VERSION="${PY_THRIFT_VERSION:-0.22.0}"

if ! command -v thrift >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends thrift-compiler; then
        apt-get update
        apt-get install -y --no-install-recommends thrift-compiler
    fi
fi

mkdir -p "$DEST"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import thrift, sys; from importlib.metadata import version; sys.exit(0 if version('thrift') == '$PY_THRIFT_VERSION' else 1)" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet "thrift==$PY_THRIFT_VERSION"
fi

rm -rf "$DEST/gen-py"
mkdir -p "$DEST/gen-py"
thrift --gen py -out "$DEST/gen-py" "$IDL"
echo "thrift interop peers ready: $(thrift --version); python thrift $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("thrift"))')"
