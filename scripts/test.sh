#!/usr/bin/env bash
# The project's test command (README.md, .ci/run): installs the ONNX Runtime library from the
# PyPI wheel (sha256-checked, idempotent), then runs every test of the workspace with the
# ONNX Runtime backend enabled.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/install-onnxruntime.sh ]; then
  scripts/install-onnxruntime.sh
fi
exec cargo test --workspace --features trust-cli/ort "$@"
