#!/usr/bin/env python3
"""trust against lm-evaluation-harness itself on TruthfulQA MC1 + MC2 (lm-eval's own task
definitions, 6-shot primer), same model file, same machine.

lm-eval's `truthfulqa_mc1` / `truthfulqa_mc2` YAML files (and their utils.py) are copied from the
installed package with one change: the dataset comes from a local JSON file (the first --items
items of data/truthfulness/truth_mc.json in Hugging Face's `multiple_choice` layout) instead of
the hub, which this machine cannot reach. lm-eval runs `--model hf` on the GGUF file (transformers
dequantises it to float32, as trust does); trust runs `trust loglik` on lm-eval's exact requests
(the context and continuation of every logged request), with and without prefix sharing.

Checks (non-zero exit when one fails): per-item MC1 identical and MC2 within 1e-4 of lm-eval's
(recomputed from trust's log-likelihoods with lm-eval's formulas), every log-likelihood within
--tol (relative) of lm-eval's, prefix-shared equal to unshared scoring to the bit. Prints wall times and ratios; `uptime` before and after (run it on an idle machine).

    scripts/bench_vs_lm_eval.sh [--items 100] [--batch-sizes 8] [--trust-batch 8]
"""

import argparse
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
MODEL_DIR = os.path.join(ROOT, "models", "smollm2-135m-instruct")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TRUST = os.path.join(ROOT, "target", "release", "trust")


def hf_layout(items):
    rows = []
    for it in items:
        row = {"question": it["question"]}
        for key in ("mc1_targets", "mc2_targets"):
            opts = it[key]
            row[key] = {"choices": list(opts.keys()), "labels": [int(v) for v in opts.values()]}
        rows.append(row)
    return rows


def make_tasks(tmp, data_file):
    import lm_eval

    src = os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "truthfulqa")
    dst = os.path.join(tmp, "tasks")
    os.makedirs(dst)
    shutil.copy(os.path.join(src, "utils.py"), dst)
    for name in ("truthfulqa_mc1.yaml", "truthfulqa_mc2.yaml"):
        text = open(os.path.join(src, name), encoding="utf-8").read()
        text = re.sub(r"^dataset_path: .*$", "dataset_path: json", text, flags=re.M)
        text = re.sub(r"^dataset_name: .*$",
                      "dataset_kwargs:\n  data_files:\n    validation: " + json.dumps(data_file),
                      text, flags=re.M)
        text = re.sub(r"^task: truthfulqa_", "task: local_truthfulqa_", text, flags=re.M)
        text = re.sub(r"^tag:\n(  - .*\n)+", "", text, flags=re.M)
        text = text.replace("include: truthfulqa_mc1.yaml", "include: truthfulqa_mc1.yaml")
        open(os.path.join(dst, name), "w", encoding="utf-8").write(text)
    return dst


def run_lm_eval(tmp, tasks, batch, threads):
    out = os.path.join(tmp, f"lm_eval_b{batch}")
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={MODEL_DIR},gguf_file={GGUF},dtype=float32",
           "--tasks", "local_truthfulqa_mc1,local_truthfulqa_mc2", "--include_path", tasks,
           "--batch_size", str(batch), "--device", "cpu", "--log_samples", "--output_path", out]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t = time.time()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.time() - t
    samples = {}
    for task in ("mc1", "mc2"):
        (path,) = glob.glob(os.path.join(out, "**", f"samples_local_truthfulqa_{task}_*.jsonl"),
                            recursive=True)
        samples[task] = [json.loads(l) for l in open(path, encoding="utf-8")]
    return wall, samples


def requests_of(samples):
    reqs = []
    for task in ("mc1", "mc2"):
        for s in sorted(samples[task], key=lambda s: s["doc_id"]):
            args = s["arguments"]
            if isinstance(args, dict):  # {"gen_args_0": {"arg_0": ctx, "arg_1": cont}, ...}
                args = [args[k] for k in sorted(args, key=lambda k: int(k.rsplit("_", 1)[1]))]
            for a in args:
                ctx, cont = (a["arg_0"], a["arg_1"]) if isinstance(a, dict) else (a[0], a[1])
                reqs.append((task, s["doc_id"], ctx, cont))
    return reqs


def lm_eval_lls(samples):
    out = []
    for task in ("mc1", "mc2"):
        for s in sorted(samples[task], key=lambda s: s["doc_id"]):
            for r in s["resps"]:
                out.append(float(r[0][0]))
    return out


def run_trust(tmp, reqs, batch, sharing):
    inp = os.path.join(tmp, "trust_in.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for _, _, ctx, cont in reqs:
            f.write(json.dumps({"prompt": ctx, "continuation": cont}) + "\n")
    cmd = [TRUST, "loglik", "--model", os.path.join(MODEL_DIR, GGUF), "--input", inp,
           "--batch-size", str(batch)] + ([] if sharing else ["--no-prefix-sharing"])
    t = time.time()
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.time() - t
    return wall, [json.loads(l)["continuation_logprob_sum"] for l in res.stdout.splitlines()]


def per_item(reqs, lls):
    """lm-eval's acc for mc1 (argmax of the options' log-likelihoods is option 0) and mc2
    (utils.process_results_mc2: probability mass on the true options, split at the first 0 label)."""
    by = {}
    for (task, doc, _, _), ll in zip(reqs, lls):
        by.setdefault((task, doc), []).append(ll)
    return by


def mc_scores(items, by):
    out = []
    for doc, it in enumerate(items):
        l1 = by[("mc1", doc)]
        mc1 = 1.0 if max(range(len(l1)), key=lambda i: (l1[i], -i)) == 0 else 0.0
        labels = [int(v) for v in it["mc2_targets"].values()]
        split = labels.index(0)
        l2 = by[("mc2", doc)]
        p_true = [math.exp(x) for x in l2[:split]]
        p_false = [math.exp(x) for x in l2[split:]]
        s = sum(p_true) + sum(p_false)
        out.append((mc1, sum(p_true) / s if s > 0 else 0.0))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--batch-sizes", default="8", help="lm-eval batch sizes, comma-separated")
    p.add_argument("--trust-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    # Relative, on sums: both engines dequantise the GGUF file themselves, and per token they
    # differ by up to 6.6e-5 (BENCHMARKS.md, scripts/bench_gguf.py), which options of 10-60
    # tokens add up; the summed log-likelihoods reach -100.
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--skip-unshared", action="store_true")
    a = p.parse_args()
    items = json.load(open(os.path.join(ROOT, "data", "truthfulness", "truth_mc.json"),
                           encoding="utf-8"))[: a.items]
    tmp = tempfile.mkdtemp(prefix="trust-lmeval-")
    data_file = os.path.join(tmp, "truthfulqa_mc.jsonl")
    with open(data_file, "w", encoding="utf-8") as f:
        for row in hf_layout(items):
            f.write(json.dumps(row) + "\n")
    tasks = make_tasks(tmp, data_file)
    runs = []
    samples = None
    for b in [int(x) for x in a.batch_sizes.split(",")]:
        wall, samples = run_lm_eval(tmp, tasks, b, a.threads)
        runs.append((f"lm_eval --model hf --batch_size {b}", wall))
        print(f"lm_eval batch {b}: {wall:.1f} s", flush=True)
    reqs = requests_of(samples)
    ref = lm_eval_lls(samples)
    wall, lls = run_trust(tmp, reqs, a.trust_batch, True)
    runs.append((f"trust loglik --batch-size {a.trust_batch}", wall))
    print(f"trust (prefix sharing): {wall:.1f} s", flush=True)
    if not a.skip_unshared:
        wall_u, lls_u = run_trust(tmp, reqs, a.trust_batch, False)
        runs.append((f"trust loglik --batch-size {a.trust_batch} --no-prefix-sharing", wall_u))
        print(f"trust (no prefix sharing): {wall_u:.1f} s", flush=True)
        if lls_u != lls:
            print("FAIL: prefix-shared and unshared log-likelihoods differ")
            sys.exit(1)
    best = min(w for n, w in runs if n.startswith("lm_eval"))
    print(f"\n{len(reqs)} requests ({a.items} items), lm-eval tasks local_truthfulqa_mc1 + mc2")
    print("| run | wall s | lm-eval best / run |\n|---|---|---|")
    for n, w in runs:
        print(f"| `{n}` | {w:.1f} | {best / w:.2f}x |")
    diff = max(abs(x - y) for x, y in zip(lls, ref))
    rel = max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(lls, ref))
    ours = mc_scores(items, per_item(reqs, lls))
    theirs = mc_scores(items, per_item(reqs, ref))
    mc1_equal = sum(x[0] == y[0] for x, y in zip(ours, theirs))
    mc2_diff = max(abs(x[1] - y[1]) for x, y in zip(ours, theirs))
    # lm-eval's own per-item accuracies, as logged.
    logged = [(s["acc"]) for s in sorted(samples["mc1"], key=lambda s: s["doc_id"])]
    mc1_logged = sum(float(x) == y[0] for x, y in zip(logged, theirs))
    print(f"\nmax |log-likelihood difference| {diff:.2e}, relative {rel:.2e} (tolerance: relative {a.tol:g})")
    print(f"mc1 per item equal: {mc1_equal}/{len(items)} (lm-eval's logged acc reproduced "
          f"from its log-likelihoods: {mc1_logged}/{len(items)}); mc2 max difference {mc2_diff:.2e}")
    print(f"mc1 {sum(x[0] for x in ours) / len(ours):.4f} (lm-eval "
          f"{sum(x[0] for x in theirs) / len(theirs):.4f}), mc2 "
          f"{sum(x[1] for x in ours) / len(ours):.4f} (lm-eval {sum(x[1] for x in theirs) / len(theirs):.4f})")
    ok = rel <= a.tol and mc1_equal == len(items) and mc2_diff <= 1e-4
    print("agreement: OK" if ok else "agreement: FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
