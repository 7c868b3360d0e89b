#!/usr/bin/env python3
"""Builds the tiny random reference models used by trust-backends/tests/candle_fixtures.rs.

Writes, under trust-backends/tests/fixtures/:

- tiny-qwen2/        Qwen2ForCausalLM (qkv bias, tied embeddings, GQA)            -- no shared fixture exists
- tiny-gpt-neox-seq/ GPTNeoXForCausalLM, sequential residual, gelu_new, rotary 0.5, tied embeddings
- tiny-llama3/       LlamaForCausalLM, llama3 rope scaling, attention_bias + mlp_bias, tied embeddings

with the same files and the same definitions as /work/shared/fixtures/hf (see its README.md):
config.json, model.safetensors, tokenizer.json (copied from the shared fixture), expected.jsonl and
expected_batch.json.

Usage (throwaway venv, CPU only, no model downloads):

    python3 -m venv /tmp/qwenvenv && /tmp/qwenvenv/bin/pip install torch transformers safetensors
    /tmp/qwenvenv/bin/python scripts/make_qwen2_fixture.py [--shared /work/shared/fixtures/hf]
"""

import argparse
import json
import math
import os
import shutil

import torch
import transformers
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "trust-backends", "tests", "fixtures")

CASES = [
    ("Hello, my name is", " John and I like to cook."),
    ("\n\nHuman: What is the capital of France?\n\nAssistant:", " The capital of France is Paris."),
    ("Ünïcödé café — naïve", " résumé, über straße 😀"),
    (
        "\n\nHuman: I have been feeling really stressed at work lately because my manager keeps giving me "
        "more projects than I can handle. Do you have any advice on how I could talk to her?\n\nAssistant:",
        " It sounds like a hard situation, and it is good that you want to talk about it.",
    ),
    ("def add(a, b):\n    return", " a + b\n"),
]
GREEDY_PROMPT = "The quick brown fox jumps over the lazy dog. Then the dog"


def models():
    common = dict(vocab_size=1000, bos_token_id=0, eos_token_id=0, initializer_range=0.2,
                  max_position_embeddings=256)
    return {
        "tiny-qwen2": (
            transformers.Qwen2Config(
                hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, hidden_act="silu", rms_norm_eps=1e-6, rope_theta=10000.0,
                tie_word_embeddings=True, use_sliding_window=False, **common),
            transformers.Qwen2ForCausalLM, 11),
        "tiny-gpt-neox-seq": (
            transformers.GPTNeoXConfig(
                hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                hidden_act="gelu_new", use_parallel_residual=False, rotary_pct=0.5, rotary_emb_base=500,
                layer_norm_eps=1e-5, tie_word_embeddings=True, **common),
            transformers.GPTNeoXForCausalLM, 12),
        "tiny-llama3": (
            transformers.LlamaConfig(
                hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                intermediate_size=96, hidden_act="silu", rms_norm_eps=1e-5, attention_bias=True, mlp_bias=True,
                tie_word_embeddings=True,
                rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                rope_theta=50000.0, **common),
            transformers.LlamaForCausalLM, 13),
    }


def f32(x):
    return float(torch.tensor(x, dtype=torch.float32).item())


def top5(row):
    v, i = torch.topk(row, 5)
    return [[int(a), float(b)] for a, b in zip(i.tolist(), v.tolist())]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared", "fixtures", "hf"))
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    tok_path = os.path.join(args.shared, "tiny-llama", "tokenizer.json")
    tok = Tokenizer.from_file(tok_path)
    for name, (cfg, cls, seed) in models().items():
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        torch.manual_seed(seed)
        model = cls(cfg).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith(".bias"):
                    p.copy_(torch.randn_like(p) * 0.1)
                elif "norm" in pname and pname.endswith(".weight"):
                    p.copy_(1 + torch.randn_like(p) * 0.1)
        model.save_pretrained(d, safe_serialization=True)
        shutil.copy(tok_path, os.path.join(d, "tokenizer.json"))
        model = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()

        def logits_of(ids):
            with torch.no_grad():
                return model(torch.tensor([ids])).logits[0].float()

        def greedy(ids, n=20):
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     do_sample=False, max_new_tokens=n, eos_token_id=None, pad_token_id=0)
            return out[0, len(ids):].tolist()

        cases = list(CASES)
        g_ids = tok.encode(GREEDY_PROMPT).ids
        g = greedy(g_ids, 8)
        cont = None
        for k in range(len(g), 0, -1):
            text = tok.decode(g[:k], skip_special_tokens=False)
            if text.isprintable() and tok.encode(text).ids == g[:k]:
                cont = text
                break
        cases.append((GREEDY_PROMPT, cont if cont is not None else " the"))

        lines = []
        for prompt, continuation in cases:
            p = tok.encode(prompt).ids
            c = tok.encode(continuation).ids
            logits = logits_of(p + c)
            lsm = torch.log_softmax(logits, dim=-1)
            lps = [float(lsm[len(p) - 1 + t, c[t]]) for t in range(len(c))]
            greedy_flag = all(int(torch.argmax(logits[len(p) - 1 + t])) == c[t] for t in range(len(c)))
            gi = greedy(p)
            lines.append({
                "prompt": prompt, "continuation": continuation, "prompt_ids": p, "continuation_ids": c,
                "continuation_logprobs": lps, "continuation_logprob_sum": sum(lps),
                "is_greedy": greedy_flag, "last_logits_top5": top5(logits_of(p)[-1]), "greedy_ids": gi,
                "greedy_text": tok.decode(gi, skip_special_tokens=False),
            })
        with open(os.path.join(d, "expected.jsonl"), "w") as f:
            for l in lines:
                f.write(json.dumps(l, ensure_ascii=False) + "\n")

        prompts = [l["prompt_ids"] for l in lines]
        L = max(len(p) for p in prompts)
        ids = [[0] * (L - len(p)) + p for p in prompts]
        mask = [[0] * (L - len(p)) + [1] * len(p) for p in prompts]
        m = torch.tensor(mask)
        pos = (m.cumsum(-1) - 1).masked_fill(m == 0, 1)
        with torch.no_grad():
            out = model(torch.tensor(ids), attention_mask=m, position_ids=pos).logits[:, -1].float()
        rows = [{"prompt": l["prompt"], "prompt_ids": l["prompt_ids"], "last_logits_top5": top5(out[i]),
                 "unbatched_last_logits_top5": l["last_logits_top5"]} for i, l in enumerate(lines)]
        with open(os.path.join(d, "expected_batch.json"), "w") as f:
            json.dump({"padding_side": "left", "pad_token_id": 0, "input_ids": ids, "attention_mask": mask,
                       "position_ids": pos.tolist(), "rows": rows}, f, ensure_ascii=False)
        for extra in ("generation_config.json",):
            pth = os.path.join(d, extra)
            if os.path.exists(pth):
                os.remove(pth)
        print(name, "torch", torch.__version__, "transformers", transformers.__version__)


if __name__ == "__main__" and not os.environ.get("BEAMS_ONLY"):
    main()
    # beam_fixture is defined below; run it after the models exist.


def beam_fixture(shared):
    """Deterministic beam search outputs (`num_beams > 1`, `do_sample=False`) for the beam-search
    port, written to trust-backends/tests/fixtures/beam_expected.json."""
    import transformers as tf
    out = []
    dirs = {
        "tiny-gpt-neox": os.path.join(shared, "tiny-gpt-neox"),
        "tiny-llama": os.path.join(shared, "tiny-llama"),
        "tiny-qwen2": os.path.join(OUT, "tiny-qwen2"),
    }
    for name, d in dirs.items():
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        model = tf.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        for prompt, _ in CASES[:3]:
            ids = tok.encode(prompt).ids
            greedy = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=3, eos_token_id=None,
                                    pad_token_id=0)[0, len(ids):].tolist()
            for beams, n, new, eos in [(3, 2, 8, None), (4, 4, 10, greedy[1])]:
                with torch.no_grad():
                    res = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                         do_sample=False, num_beams=beams, num_return_sequences=n,
                                         max_new_tokens=new, eos_token_id=eos,
                                         pad_token_id=eos if eos is not None else 0)
                seqs = []
                for row in res[:, len(ids):].tolist():
                    if eos is not None and eos in row:
                        row = row[:row.index(eos)]
                    seqs.append(row)
                out.append({"model": name, "prompt": prompt, "num_beams": beams, "n": n, "max_new_tokens": new,
                            "eos": eos, "sequences": seqs})
    with open(os.path.join(OUT, "beam_expected.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    beam_fixture(os.path.join(HERE, "..", "..", "shared", "fixtures", "hf"))
