#!/usr/bin/env python3
"""Side-by-side benchmark on SmolLM2-135M-Instruct (GGUF Q4_1): trust (release build; dequantised
f32 and --quantized) against Hugging Face transformers on the same GGUF (dequantised to float32).

Workloads (the same inputs for every engine):
- loglik: N (prompt, continuation) pairs from the TruthfulQA MC1 data ("Q: {question}\\nA:" + " {option}").
- generate: M prompts from the toxicity data, greedy, G new tokens each, no EOS stop.

Reports per engine: load time, wall time and tokens/s per workload, peak RSS; for trust also its
log-prob agreement with transformers (max |difference|) and greedy agreement. Prints `uptime`
before and after; run it on an otherwise idle machine. Usage:

    cargo build --release -p trust-cli
    /tmp/trust-ref-venv/bin/python scripts/bench_gguf.py [--loglik 200] [--prompts 32] [--new-tokens 32]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
MODEL_DIR = os.path.join(ROOT, "models", "smollm2-135m-instruct")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TRUST = os.path.join(ROOT, "target", "release", "trust")


def workloads(data, n_ll, n_gen):
    mc = json.load(open(os.path.join(data, "truthfulness", "truth_mc.json"), encoding="utf-8"))
    ll = []
    for item in mc:
        for opt in item["mc1_targets"]:
            ll.append((f"Q: {item['question']}\nA:", f" {opt}"))
            if len(ll) == n_ll:
                break
        if len(ll) == n_ll:
            break
    rows = [json.loads(l) for l in open(os.path.join(data, "toxicity", "nontoxic.jsonl"), encoding="utf-8")]
    gen = [r["prompt"]["text"] for r in rows[:n_gen]]
    return ll, gen


def run_trust(ll, gen, new_tokens, threads, quantized, batch):
    tmp = tempfile.mkdtemp()
    ll_in = os.path.join(tmp, "ll.jsonl")
    gen_in = os.path.join(tmp, "gen.jsonl")
    with open(ll_in, "w") as f:
        for p, c in ll:
            f.write(json.dumps({"prompt": p, "continuation": c}) + "\n")
    with open(gen_in, "w") as f:
        for p in gen:
            f.write(json.dumps({"prompt": p}) + "\n")
    env = dict(os.environ, CANDLE_NUM_THREADS=str(threads), RAYON_NUM_THREADS=str(threads))
    model = os.path.join(MODEL_DIR, GGUF)
    q = ["--quantized"] if quantized else []
    res = {}
    for kind, args in (
        ("loglik", ["loglik", "--model", model, "--input", ll_in, "--batch-size", str(batch)] + q),
        ("generate", ["generate", "--model", model, "--input", gen_in, "--batch-size", str(batch),
                      "--max-new-tokens", str(new_tokens), "--greedy", "--stop", "never",
                      "--chat-template", "none"] + q),
    ):
        t0 = time.time()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", TRUST] + args, env=env, capture_output=True, text=True)
        wall = time.time() - t0
        if p.returncode != 0:
            sys.exit(f"trust {kind} failed: {p.stderr[-2000:]}")
        err = p.stderr.strip().splitlines()
        rss_kb = int(err[-1])
        compute = next((float(l.split(" in ")[1].split(" s")[0]) for l in err if l.startswith("trust:")), wall)
        res[kind] = {"wall_s": wall, "compute_s": compute, "load_s": wall - compute, "peak_rss_mib": rss_kb / 1024,
                     "out": [json.loads(l) for l in p.stdout.splitlines()]}
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--loglik", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    subprocess.run(["uptime"])
    ll, gen = workloads(args.data, args.loglik, args.prompts)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF, dtype=torch.float32)
    model.eval()
    hf_load = time.time() - t0

    # transformers: log-likelihood, batches of --batch right-padded rows.
    enc = [(tok(p, add_special_tokens=False)["input_ids"], tok(c, add_special_tokens=False)["input_ids"]) for p, c in ll]
    t0 = time.time()
    hf_ll = []
    n_ll_tokens = 0
    with torch.no_grad():
        for i in range(0, len(enc), args.batch):
            chunk = enc[i:i + args.batch]
            L = max(len(p) + len(c) for p, c in chunk)
            ids = torch.zeros(len(chunk), L, dtype=torch.long)
            mask = torch.zeros(len(chunk), L, dtype=torch.long)
            for r, (p, c) in enumerate(chunk):
                ids[r, :len(p) + len(c)] = torch.tensor(p + c)
                mask[r, :len(p) + len(c)] = 1
                n_ll_tokens += len(p) + len(c)
            lp = torch.log_softmax(model(ids, attention_mask=mask).logits.float(), -1)
            for r, (p, c) in enumerate(chunk):
                hf_ll.append([lp[r, len(p) - 1 + j, c[j]].item() for j in range(len(c))])
    hf_ll_s = time.time() - t0

    # transformers: greedy generation, left-padded batches.
    tok.padding_side = "left"
    t0 = time.time()
    hf_gen = []
    with torch.no_grad():
        for i in range(0, len(gen), args.batch):
            chunk = gen[i:i + args.batch]
            b = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**b, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
            hf_gen += out[:, b["input_ids"].shape[1]:].tolist()
    hf_gen_s = time.time() - t0
    hf_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_gen_tokens = len(gen) * args.new_tokens

    rows = [("transformers f32", hf_load, hf_ll_s, hf_gen_s, hf_rss, "reference", "reference")]
    for quantized in (False, True):
        r = run_trust(ll, gen, args.new_tokens, args.threads, quantized, args.batch)
        worst = max(abs(a - b) for got, want in zip(r["loglik"]["out"], hf_ll)
                    for a, b in zip(got["continuation_logprobs"], want))
        same = sum(g["ids"] == w for g, w in zip(r["generate"]["out"], hf_gen))
        rows.append((
            "trust --quantized" if quantized else "trust f32",
            r["loglik"]["load_s"], r["loglik"]["compute_s"], r["generate"]["compute_s"],
            max(r["loglik"]["peak_rss_mib"], r["generate"]["peak_rss_mib"]),
            f"max |Δ| {worst:.2e}", f"{same}/{len(gen)} equal",
        ))
    print(f"\nSmolLM2-135M-Instruct {GGUF}, {args.threads} threads, batch {args.batch}; transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"loglik: {len(ll)} pairs, {n_ll_tokens} tokens; generate: {len(gen)} prompts x {args.new_tokens} greedy tokens")
    print("| engine | load s | loglik s | loglik tok/s | vs HF | generate s | gen tok/s | vs HF | peak RSS MiB | log-probs | greedy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, load, lls, gens, rss, agree, greedy in rows:
        print(f"| {name} | {load:.2f} | {lls:.2f} | {n_ll_tokens / lls:.0f} | {hf_ll_s / lls:.2f}x | {gens:.2f} | "
              f"{n_gen_tokens / gens:.1f} | {hf_gen_s / gens:.2f}x | {rss:.0f} | {agree} | {greedy} |")
    subprocess.run(["uptime"])


if __name__ == "__main__":
    main()
