#!/usr/bin/env python3
"""A small GGUF with a SentencePiece-style (`tokenizer.ggml.model = "llama"`) vocabulary and no
merges, and the token ids transformers gives for it (the ground truth for trust's
`gguf_tokenizer` on llama vocabularies: Metaspace, byte fallback, merges rebuilt from the scores).

Writes trust-backends/tests/fixtures/gguf-spm/{tokenizer.gguf, expected.jsonl}. The vocabulary is
built here, deterministically, from the most frequent character n-grams of ~400 real texts
(<unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, then pieces scored by frequency); the file
holds metadata only (no tensors).

    /tmp/trust-ref-venv/bin/python scripts/make_gguf_spm_fixture.py [--data ../shared/data]
"""

import argparse
import collections
import gzip
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
OUT = os.path.join(ROOT, "trust-backends", "tests", "fixtures", "gguf-spm")


def corpus(data):
    rng = random.Random(1)
    texts = []
    rows = [json.loads(l) for l in open(os.path.join(data, "toxicity", "nontoxic.jsonl"), encoding="utf-8")]
    for r in rng.sample(rows, 150):
        texts += [r["prompt"]["text"], r["continuation"]["text"]]
    hh = [json.loads(l) for l in gzip.open(os.path.join(data, "hh-rlhf", "harmless-base-test.jsonl.gz"), "rt", encoding="utf-8")]
    texts += [r["chosen"] for r in rng.sample(hh, 100)]
    return texts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    args = ap.parse_args()
    import gguf
    from transformers import AutoTokenizer

    texts = corpus(args.data)
    counts = collections.Counter()
    for t in texts:
        s = "\u2581" + t.replace(" ", "\u2581")
        for n in range(2, 7):
            for i in range(len(s) - n + 1):
                piece = s[i:i + n]
                if "\n" not in piece:
                    counts[piece] += 1
    chars = collections.Counter(c for t in texts for c in ("\u2581" + t.replace(" ", "\u2581")) if c != "\n")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    for c, _ in chars.most_common(120):
        tokens.append(c)
        types.append(1)
        scores.append(-100.0 - len(tokens))
    seen = set(tokens)
    for p, c in counts.most_common():
        if len(tokens) >= 1200:
            break
        if p in seen or c < 4:
            continue
        seen.add(p)
        tokens.append(p)
        types.append(1)
        scores.append(float(-len(tokens)))
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "tokenizer.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = AutoTokenizer.from_pretrained(OUT, gguf_file="tokenizer.gguf")
    probes = texts[:200] + [
        "Hello world", "  leading spaces", "trailing  ", "Ünïcödé café — naïve", "東京 😀", "a\tb\nc",
        "1234567890", "", " ", "<s> inside", "don't stop", "x" * 50,
    ]
    rng = random.Random(2)
    rows = [json.loads(l) for l in open(os.path.join(args.data, "toxicity", "toxic.jsonl"), encoding="utf-8")]
    probes += [r["prompt"]["text"] for r in rng.sample(rows, 100)]
    with open(os.path.join(OUT, "expected.jsonl"), "w", encoding="utf-8") as f:
        for t in probes:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            f.write(json.dumps({"text": t, "ids": ids}, ensure_ascii=False) + "\n")
    print(f"{path}: {len(tokens)} tokens; {len(probes)} probes in expected.jsonl; "
          f"{os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
