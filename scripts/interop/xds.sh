#!/usr/bin/env bash
# Installs the independent xDS management server used by the xDS interop tests
# (idempotent): PyPI's `envoy-data-plane` (Envoy's published data-plane API types for
# Python) and `grpclib` (the gRPC server they are served with), in a venv at
# .interop/xds/venv. The server itself is xds/interop/ads_server.py in this repository.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$ROOT/.interop/xds"
VENV="$DEST/venv"
ENVOY_DATA_PLANE_VERSION="${ENVOY_DATA_PLANE_VERSION:-2.2.0}"

mkdir -p "$DEST"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import sys, grpclib, envoy_data_plane; from importlib.metadata import version; sys.exit(0 if version('envoy-data-plane') == '$ENVOY_DATA_PLANE_VERSION' else 1)" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet "envoy-data-plane==$ENVOY_DATA_PLANE_VERSION" grpclib
fi
echo "xds interop peers ready: python envoy-data-plane $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("envoy-data-plane"))'), grpclib $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("grpclib"))')"
