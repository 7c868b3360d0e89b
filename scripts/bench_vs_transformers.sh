#!/usr/bin/env bash
# Side-by-side benchmark of trust (candle, release build) and Hugging Face transformers (PyTorch, CPU)
# on the same random Pythia-70m-shaped checkpoint. See scripts/bench_vs_transformers.py for the
# workloads, the agreement checks and the options (all arguments are passed through), and
# BENCHMARKS.md for recorded numbers.
#
#   scripts/bench_vs_transformers.sh                       # the issue's workload (817 items, 200 prompts)
#   scripts/bench_vs_transformers.sh --mc1-items 100 --tox-prompts 40 --trust-gen-batch 1,8
#
# Environment: TRUST_BENCH_VENV (default /tmp/trust-bench-venv; created with
# `pip install torch transformers safetensors` when it has no torch), PYTHON (interpreter used to
# create the venv, default python3). Exits non-zero when trust and transformers disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TRUST_BENCH_VENV:-/tmp/trust-bench-venv}"
if ! "$VENV/bin/python" -c 'import torch, transformers, safetensors' 2>/dev/null; then
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch transformers safetensors
fi
cargo build --release -p trust-cli
uptime
status=0
"$VENV/bin/python" scripts/bench_vs_transformers.py "$@" || status=$?
uptime
exit $status
