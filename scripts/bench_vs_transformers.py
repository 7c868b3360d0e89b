#!/usr/bin/env python3
"""Side-by-side benchmark: trust (candle, release binary) vs Hugging Face transformers (PyTorch, CPU).

Both sides load the same checkpoint (a random Pythia-70m-shaped GPTNeoXForCausalLM saved by
transformers with safetensors) and the same tokenizer.json, do the same work, and the script checks
that they agree before printing the table:

- scoring: every TruthfulQA MC1 option of the first --mc1-items items as a log-likelihood pair
  (context = "Q: {question}\\nA:", continuation = " {option}"), tokenised separately without special
  tokens and concatenated (trust's rule). transformers runs the GPT-NeoX trunk on right-padded
  batches sorted by length and projects only the continuation positions through embed_out (the
  cheapest correct transformers usage; a full-logits forward would be slower). Agreement:
  |delta log-prob| <= --tol per token.
- generation: the first --tox-prompts toxicity prompts (prompt.text), greedy, exactly
  --new-tokens new tokens (EOS disabled on both sides: trust --stop never; transformers with
  eos_token_id=None and min_new_tokens = max_new_tokens), transformers `generate` on left-padded
  batches (sorted by length) with an attention mask. Agreement: identical token ids.

Checkpoint: hidden 512, 6 layers, 8 heads, intermediate 2048, rotary_pct 0.25, rotary base 10000,
max_position_embeddings 2048, parallel residual, untied embed_out, vocab_size 50304 (Pythia-70m's
padded vocabulary). Pythia's own tokenizer is not available offline, so both sides use the shared
fixture's byte-level BPE tokenizer (1000 ids; every id < 1000 is a valid row of the 50304-row
embedding, the remaining rows are never produced by the tokenizer but still take part in the
softmax and the argmax, exactly as in Pythia). Weights: transformers' init (std 0.02), seed 0.

Timing: trust is timed as the wall clock of the whole `trust loglik` / `trust generate` process
(load, tokenisation, JSON output included); transformers only around the compute loop (imports,
model load and tokenisation excluded). Peak RSS of each process from wait4(). Both sides use
--threads threads (RAYON_NUM_THREADS for trust, torch.set_num_threads for transformers).

Usage (normally via scripts/bench_vs_transformers.sh, which creates the venv and builds trust):

    python bench_vs_transformers.py [--mc1-items 817] [--tox-prompts 200] [--threads 2]
        [--trust-loglik-batch 8] [--hf-loglik-batch 8] [--trust-gen-batch 8] [--hf-gen-batch 8]

Batch-size options take comma-separated lists; every value is run and reported. Exit status 1 when
the two sides disagree.
"""

import argparse
import json
import re
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))


def ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="/tmp/trust-bench")
    p.add_argument("--data-dir", default="/work/shared/data")
    p.add_argument("--tokenizer", default="/work/shared/fixtures/hf/tiny-gpt-neox/tokenizer.json")
    p.add_argument("--trust-bin", default=os.path.join(ROOT, "target", "release", "trust"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mc1-items", type=int, default=817)
    p.add_argument("--tox-prompts", type=int, default=200)
    p.add_argument("--new-tokens", type=int, default=50)
    p.add_argument("--trust-loglik-batch", type=ints, default=[8])
    p.add_argument("--hf-loglik-batch", type=ints, default=[8])
    p.add_argument("--trust-gen-batch", type=ints, default=[8])
    p.add_argument("--hf-gen-batch", type=ints, default=[8])
    p.add_argument("--candle-threads", default="1",
                   help="comma-separated CANDLE_NUM_THREADS values for the trust runs ('default' = unset): "
                        "candle's element-wise ops use their own spinning thread pool of this size (matmuls "
                        "use RAYON_NUM_THREADS = --threads either way); every value is run and reported")
    p.add_argument("--only", choices=["all", "loglik", "generate"], default="all")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--json-out", default=None, help="also write the table as JSON here")
    # internal: run one transformers workload in this (child) process
    p.add_argument("--hf-worker", choices=["loglik", "generate"], default=None)
    p.add_argument("--hf-batch", type=int, default=8)
    p.add_argument("--hf-out", default=None)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# checkpoint and workloads


def model_dir(a):
    return os.path.join(a.work_dir, "pythia-70m-random")


def make_model(a):
    d = model_dir(a)
    if os.path.exists(os.path.join(d, "model.safetensors")):
        return d
    import shutil

    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPTNeoXConfig(
        vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
        intermediate_size=2048, hidden_act="gelu", rotary_pct=0.25, rotary_emb_base=10000,
        max_position_embeddings=2048, layer_norm_eps=1e-5, use_parallel_residual=True,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, initializer_range=0.02)
    model = transformers.GPTNeoXForCausalLM(cfg).eval()
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    shutil.copy(a.tokenizer, os.path.join(d, "tokenizer.json"))
    return d


def build_workloads(a):
    os.makedirs(a.work_dir, exist_ok=True)
    with open(os.path.join(a.data_dir, "truthfulness", "truth_mc.json")) as f:
        items = json.load(f)[: a.mc1_items]
    pairs = []
    for it in items:
        ctx = f"Q: {it['question']}\nA:"
        for opt in it["mc1_targets"]:
            pairs.append({"prompt": ctx, "continuation": " " + opt})
    prompts = []
    with open(os.path.join(a.data_dir, "toxicity", "toxic.jsonl")) as f:
        for line in f:
            if len(prompts) >= a.tox_prompts:
                break
            if line.strip():
                prompts.append({"prompt": json.loads(line)["prompt"]["text"]})
    ll = os.path.join(a.work_dir, "loglik.jsonl")
    gen = os.path.join(a.work_dir, "generate.jsonl")
    for path, rows in ((ll, pairs), (gen, prompts)):
        with open(path, "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return ll, gen, len(items)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


# ---------------------------------------------------------------------------------------------
# transformers worker (child process, so its peak RSS is its own)


def hf_worker(a):
    import resource

    import torch
    import transformers

    torch.set_num_threads(a.threads)
    d = model_dir(a)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"))
    model = transformers.GPTNeoXForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    out = {}
    if a.hf_worker == "loglik":
        rows = read_jsonl(os.path.join(a.work_dir, "loglik.jsonl"))
        data = []
        for i, r in enumerate(rows):
            c, t = enc(r["prompt"]), enc(r["continuation"])
            data.append((i, c + t, len(c)))
        order = sorted(data, key=lambda x: (-len(x[1]), x[0]))
        res = [None] * len(rows)
        trunk, head = model.get_decoder(), model.get_output_embeddings()
        tokens = sum(len(x[1]) for x in data)
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(order), a.hf_batch):
                chunk = order[s : s + a.hf_batch]
                L = max(len(x[1]) for x in chunk)
                ids = torch.zeros((len(chunk), L), dtype=torch.long)
                mask = torch.zeros((len(chunk), L), dtype=torch.long)
                for j, (_, seq, _) in enumerate(chunk):
                    ids[j, : len(seq)] = torch.tensor(seq)
                    mask[j, : len(seq)] = 1
                hidden = trunk(input_ids=ids, attention_mask=mask).last_hidden_state
                for j, (i, seq, plen) in enumerate(chunk):
                    h = hidden[j, plen - 1 : len(seq) - 1]
                    lp = torch.log_softmax(head(h).float(), dim=-1)
                    tgt = torch.tensor(seq[plen:])
                    res[i] = lp.gather(1, tgt[:, None])[:, 0].tolist()
        out["seconds"] = time.perf_counter() - t0
        out["tokens"] = tokens
        out["logprobs"] = res
    else:
        rows = read_jsonl(os.path.join(a.work_dir, "generate.jsonl"))
        data = sorted(((i, enc(r["prompt"])) for i, r in enumerate(rows)), key=lambda x: (-len(x[1]), x[0]))
        res = [None] * len(rows)
        gc = transformers.GenerationConfig(
            do_sample=False, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
            eos_token_id=None, pad_token_id=0, bos_token_id=None)
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(data), a.hf_batch):
                chunk = data[s : s + a.hf_batch]
                L = max(len(x[1]) for x in chunk)
                ids = torch.zeros((len(chunk), L), dtype=torch.long)
                mask = torch.zeros((len(chunk), L), dtype=torch.long)
                for j, (_, seq) in enumerate(chunk):
                    ids[j, L - len(seq) :] = torch.tensor(seq)
                    mask[j, L - len(seq) :] = 1
                gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
                for j, (i, _) in enumerate(chunk):
                    res[i] = gen[j, L:].tolist()
        out["seconds"] = time.perf_counter() - t0
        out["tokens"] = sum(len(x) for x in res)
        out["ids"] = res
    out["torch"] = torch.__version__
    out["transformers"] = transformers.__version__
    out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(a.hf_out, "w") as f:
        json.dump(out, f)


# ---------------------------------------------------------------------------------------------
# driver


def run_child(cmd, stdout_path, env=None, stderr_path=None):
    """Runs cmd, returns (wall seconds, peak RSS in MiB); raises on failure."""
    t0 = time.perf_counter()
    with open(stdout_path, "w") as so, open(stderr_path or os.devnull, "w") as se:
        p = subprocess.Popen(cmd, stdout=so, stderr=se if stderr_path else None, env=env)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}")
    return wall, ru.ru_maxrss / 1024.0


def run_hf(a, kind, batch):
    out = os.path.join(a.work_dir, f"hf_{kind}_b{batch}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--hf-worker", kind, "--hf-batch", str(batch),
           "--hf-out", out, "--work-dir", a.work_dir, "--threads", str(a.threads),
           "--new-tokens", str(a.new_tokens)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    wall, rss = run_child(cmd, out + ".stdout", env)
    with open(out) as f:
        r = json.load(f)
    r["wall"], r["rss_mib"] = wall, rss
    return r


def result_rows(workload, tokens, hf_runs, trust_runs):
    """Table rows of one workload: each transformers run, then each trust run (whole process and,
    when trust reported it, compute only), with the ratio to the best transformers run."""
    best_hf = max(tokens / h["seconds"] for h in hf_runs.values())
    rows = [(workload, "transformers", b, tokens, h["seconds"], tokens / h["seconds"], h["rss_mib"], None)
            for b, h in hf_runs.items()]
    for (batch, ct), t in trust_runs.items():
        timings = [(f"trust (CANDLE_NUM_THREADS={ct})", t["wall"])]
        if t["compute"]:
            timings.append((f"trust compute only (CANDLE_NUM_THREADS={ct})", t["compute"]))
        for side, sec in timings:
            rows.append((workload, side, batch, tokens, sec, tokens / sec, t["rss_mib"], tokens / sec / best_hf))
    return rows


def run_trust(a, kind, batch, inp, ct):
    out = os.path.join(a.work_dir, f"trust_{kind}_b{batch}_c{ct}.jsonl")
    cmd = [a.trust_bin, kind, "--model", model_dir(a), "--input", inp, "--batch-size", str(batch)]
    if kind == "generate":
        cmd += ["--max-new-tokens", str(a.new_tokens), "--greedy", "--stop", "never"]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    env.pop("CANDLE_NUM_THREADS", None)
    if ct != "default":
        env["CANDLE_NUM_THREADS"] = ct
    wall, rss = run_child(cmd, out, env, stderr_path=out + ".stderr")
    # `trust loglik|generate` print "... in X s (after loading)": the compute time, measured like
    # the transformers side (no process start, model load or weights hashing).
    compute = None
    with open(out + ".stderr") as f:
        for line in f:
            m = re.search(r" in ([0-9.]+) s \(after loading\)", line)
            if m:
                compute = float(m.group(1))
    return {"wall": wall, "compute": compute, "rss_mib": rss, "rows": read_jsonl(out)}


def main():
    a = parse_args()
    if a.hf_worker:
        hf_worker(a)
        return 0
    if not os.path.exists(a.trust_bin):
        raise SystemExit(f"{a.trust_bin} not found: cargo build --release -p trust-cli")
    make_model(a)
    ll_path, gen_path, n_items = build_workloads(a)
    load = os.getloadavg()
    print(f"# machine: {os.cpu_count()} CPUs, load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"# threads per side: {a.threads}; checkpoint {model_dir(a)}")
    table = []
    ok = True
    cts = [x.strip() for x in a.candle_threads.split(",") if x.strip()]
    if a.only in ("all", "loglik"):
        n_pairs = len(read_jsonl(ll_path))
        print(f"# scoring: {n_items} TruthfulQA items, {n_pairs} MC1 (context, option) pairs")
        hf_runs = {b: run_hf(a, "loglik", b) for b in a.hf_loglik_batch}
        trust_runs = {(b, ct): run_trust(a, "loglik", b, ll_path, ct) for b in a.trust_loglik_batch for ct in cts}
        ref = next(iter(hf_runs.values()))
        tokens = ref["tokens"]
        worst = 0.0
        for b, t in trust_runs.items():
            for i, (row, lp) in enumerate(zip(t["rows"], ref["logprobs"])):
                got = row["continuation_logprobs"]
                if len(got) != len(lp):
                    print(f"MISMATCH scoring row {i}: {len(got)} vs {len(lp)} tokens")
                    ok = False
                    continue
                for x, y in zip(got, lp):
                    worst = max(worst, abs(x - y))
        for b, h in hf_runs.items():
            for lp, lp0 in zip(h["logprobs"], ref["logprobs"]):
                for x, y in zip(lp, lp0):
                    worst = max(worst, abs(x - y))
        agree = worst <= a.tol
        ok &= agree
        print(f"# scoring agreement: max |delta log-prob| = {worst:.3g} (tolerance {a.tol}) -> {'OK' if agree else 'FAIL'}")
        table += result_rows("scoring", tokens, hf_runs, trust_runs)
    if a.only in ("all", "generate"):
        print(f"# generation: {len(read_jsonl(gen_path))} toxicity prompts x {a.new_tokens} greedy tokens")
        hf_runs = {b: run_hf(a, "generate", b) for b in a.hf_gen_batch}
        trust_runs = {(b, ct): run_trust(a, "generate", b, gen_path, ct) for b in a.trust_gen_batch for ct in cts}
        ref = next(iter(hf_runs.values()))
        tokens = ref["tokens"]
        bad = 0
        for b, t in trust_runs.items():
            for i, (row, ids) in enumerate(zip(t["rows"], ref["ids"])):
                if row["ids"] != ids:
                    bad += 1
                    if bad <= 5:
                        k = next((j for j, (x, y) in enumerate(zip(row["ids"], ids)) if x != y), None)
                        print(f"MISMATCH generation row {i} (trust batch {b[0]}, CANDLE_NUM_THREADS={b[1]}): first difference at token {k}")
        for b, h in hf_runs.items():
            for i, (ids, ids0) in enumerate(zip(h["ids"], ref["ids"])):
                if ids != ids0:
                    bad += 1
                    if bad <= 5:
                        print(f"MISMATCH generation row {i}: transformers batch {b} vs batch {a.hf_gen_batch[0]}")
        ok &= bad == 0
        print(f"# generation agreement: {bad} differing rows -> {'OK' if bad == 0 else 'FAIL'}")
        table += result_rows("generation", tokens, hf_runs, trust_runs)
    import torch
    import transformers

    print(f"# transformers {transformers.__version__}, torch {torch.__version__}; trust times are whole-process "
          "wall clock (and, on the 'compute only' rows, the time trust reports for the work after loading), "
          "transformers times exclude import/load/tokenisation; ratio = trust tokens/s over the best "
          "transformers tokens/s")
    print(f"| workload | side | batch | threads | tokens | seconds | tokens/s | peak RSS MiB | ratio vs best HF |")
    print(f"|---|---|---|---|---|---|---|---|---|")
    for w, side, b, tok, sec, tps, rss, ratio in table:
        r = f"{ratio:.2f}x" if ratio is not None else ""
        print(f"| {w} | {side} | {b} | {a.threads} | {tok} | {sec:.2f} | {tps:.1f} | {rss:.0f} | {r} |")
    load = os.getloadavg()
    print(f"# load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump([dict(zip(["workload", "side", "batch", "tokens", "seconds", "tokens_per_s", "rss_mib", "ratio"], r))
                       for r in table], f, indent=1)
    if not ok:
        print("FAIL: trust and transformers disagree")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
