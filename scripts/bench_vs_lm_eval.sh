#!/usr/bin/env bash
# trust against lm-evaluation-harness (PyPI lm_eval, `--model hf`) on TruthfulQA MC1 + MC2 with
# lm-eval's own task definitions, fed from data/ (see scripts/bench_vs_lm_eval.py for what is
# compared). Needs models/smollm2-135m-instruct (scripts/fetch-models.sh smollm2).
#
#   scripts/bench_vs_lm_eval.sh                      # 100 items (1,230 requests), lm-eval batch 8
#   scripts/bench_vs_lm_eval.sh --batch-sizes 1,8,32
#
# Environment: TRUST_LMEVAL_VENV (default /tmp/trust-lmeval-venv; created with the pinned
# packages below when it lacks them), PYTHON (interpreter that creates it, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TRUST_LMEVAL_VENV:-/tmp/trust-lmeval-venv}"
if ! "$VENV/bin/python" -c 'import torch, transformers, lm_eval, gguf, accelerate' 2>/dev/null; then
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch==2.15.0 transformers==5.25.0 lm_eval==0.4.13 accelerate==1.16.0 gguf==0.19.0 datasets==5.2.0
fi
test -f models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf || scripts/fetch-models.sh smollm2
cargo build --release -p trust-cli
uptime
status=0
"$VENV/bin/python" scripts/bench_vs_lm_eval.py "$@" || status=$?
uptime
exit $status
