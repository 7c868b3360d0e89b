#!/usr/bin/env python3
"""Builds the tiny ONNX fixtures of trust-backends' `ort` tests and their reference outputs.

    python3 scripts/make_onnx_fixtures.py
    python3 scripts/make_onnx_fixtures.py --bert-base /tmp/trust-bert-base-onnx   # benchmark model

Writes trust-backends/tests/fixtures/onnx/{tiny-classifier,tiny-causal-lm}/. The script re-runs
itself inside a throwaway virtual environment under /tmp (created on first use, from PyPI) with
pinned `onnx`, `numpy`, `onnxruntime` and `tokenizers`; torch is not needed: the graphs are
written with the `onnx` helper API and the reference outputs are computed by an independent NumPy
implementation in float64 (then cross-checked against onnxruntime's Python package). The weights
come from a fixed NumPy seed, so the output is reproducible.

Both models use the byte-level BPE tokenizer of /work/shared/fixtures/hf/tiny-gpt-neox (vocab
1000, `<|endoftext|>` = 0, no special tokens added on encode).
"""

import json
import os
import shutil
import subprocess
import sys

VENV = "/tmp/trust-onnx-fixtures-venv"
PINNED = ["onnx==1.23.2", "numpy==2.4.6", "onnxruntime==1.31.1", "tokenizers==0.23.3"]
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(REPO, "trust-backends", "tests", "fixtures", "onnx")
TOKENIZER = os.environ.get("TRUST_TOKENIZER", "/work/shared/fixtures/hf/tiny-gpt-neox/tokenizer.json")


def ensure_venv():
    if os.environ.get("TRUST_FIXTURE_VENV") == "1":
        return
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINNED])
    env = dict(os.environ, TRUST_FIXTURE_VENV="1")
    os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], env)


ensure_venv()

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

OPSET = 17
IR_VERSION = 8
VOCAB = 1000
EPS = 1e-5
NEG = -1e9

# ----------------------------------------------------------------------------------------------
# Graph-building helpers
# ----------------------------------------------------------------------------------------------


class G:
    """A tiny graph builder: nodes, initializers, unique names."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def init(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(self, value, dtype):
        return self.init(self.name("c"), np.array(value, dtype=dtype))

    def op(self, op_type, inputs, out=None, **attrs):
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def linear(self, x, w, b=None):
        y = self.op("MatMul", [x, w])
        return self.op("Add", [y, b]) if b is not None else y

    def layer_norm(self, x, g, b):
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=EPS)

    def model(self, inputs, outputs, name):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="trust-fixtures")
        m.ir_version = IR_VERSION
        onnx.checker.check_model(m)
        return m


def split_heads(g, x, heads, head_dim, perm):
    r = g.op("Reshape", [x, g.const([0, 0, heads, head_dim], np.int64)])
    return g.op("Transpose", [r], perm=perm)


def merge_heads(g, x, hidden):
    t = g.op("Transpose", [x], perm=[0, 2, 1, 3])
    return g.op("Reshape", [t, g.const([0, 0, hidden], np.int64)])


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# NumPy references (float64) -------------------------------------------------------------------


def np_ln(x, g, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * g + b


def np_softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


def f64(d):
    return {k: v.astype(np.float64) for k, v in d.items()}


# ----------------------------------------------------------------------------------------------
# Tiny classifier: a one-layer BERT-style encoder with a pooler and a 6-label head (Detoxify labels)
# ----------------------------------------------------------------------------------------------

CLS_LABELS = ["toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack"]
CLS_HIDDEN, CLS_HEADS, CLS_MAXPOS = 32, 2, 64


def classifier_weights(rng):
    h, f = CLS_HIDDEN, 4 * CLS_HIDDEN
    w = {
        "word_emb": rand(rng, VOCAB, h, scale=0.5),
        "pos_emb": rand(rng, CLS_MAXPOS, h, scale=0.1),
        "type_emb": rand(rng, 2, h, scale=0.1),
        "ln0_g": 1 + rand(rng, h, scale=0.1), "ln0_b": rand(rng, h, scale=0.1),
        "ln1_g": 1 + rand(rng, h, scale=0.1), "ln1_b": rand(rng, h, scale=0.1),
        "ln2_g": 1 + rand(rng, h, scale=0.1), "ln2_b": rand(rng, h, scale=0.1),
        "wp": rand(rng, h, h, scale=h ** -0.5), "bp": rand(rng, h, scale=0.1),
        "wc": rand(rng, h, len(CLS_LABELS), scale=2 * h ** -0.5), "bc": rand(rng, len(CLS_LABELS), scale=0.5),
    }
    for n in ["q", "k", "v", "o"]:
        w["w" + n] = rand(rng, h, h, scale=h ** -0.5)
        w["b" + n] = rand(rng, h, scale=0.05)
    w["w1"], w["b1"] = rand(rng, h, f, scale=h ** -0.5), rand(rng, f, scale=0.05)
    w["w2"], w["b2"] = rand(rng, f, h, scale=f ** -0.5), rand(rng, h, scale=0.05)
    return w


def classifier_graph(w, input_ids_name="input_ids"):
    g = G()
    for k, v in w.items():
        g.init(k, v)
    hd = CLS_HIDDEN // CLS_HEADS
    shape = g.op("Shape", [input_ids_name])
    seq = g.op("Gather", [shape, g.const(1, np.int64)], axis=0)
    pos = g.op("Range", [g.const(0, np.int64), seq, g.const(1, np.int64)])
    e = g.op("Add", [g.op("Gather", ["word_emb", input_ids_name]), g.op("Gather", ["pos_emb", pos])])
    e = g.op("Add", [e, g.op("Gather", ["type_emb", "token_type_ids"])])
    x = g.layer_norm(e, "ln0_g", "ln0_b")
    q = split_heads(g, g.linear(x, "wq", "bq"), CLS_HEADS, hd, [0, 2, 1, 3])
    kt = split_heads(g, g.linear(x, "wk", "bk"), CLS_HEADS, hd, [0, 2, 3, 1])
    v = split_heads(g, g.linear(x, "wv", "bv"), CLS_HEADS, hd, [0, 2, 1, 3])
    scores = g.op("Mul", [g.op("MatMul", [q, kt]), g.const(hd ** -0.5, np.float32)])
    m = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    m = g.op("Unsqueeze", [m, g.const([1, 2], np.int64)])
    bias = g.op("Mul", [g.op("Sub", [g.const(1.0, np.float32), m]), g.const(NEG, np.float32)])
    probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
    ctx = merge_heads(g, g.op("MatMul", [probs, v]), CLS_HIDDEN)
    x1 = g.layer_norm(g.op("Add", [x, g.linear(ctx, "wo", "bo")]), "ln1_g", "ln1_b")
    ff = g.linear(g.op("Relu", [g.linear(x1, "w1", "b1")]), "w2", "b2")
    x2 = g.layer_norm(g.op("Add", [x1, ff]), "ln2_g", "ln2_b")
    cls = g.op("Gather", [x2, g.const(0, np.int64)], axis=1)
    pooled = g.op("Tanh", [g.linear(cls, "wp", "bp")])
    g.op("Add", [g.op("MatMul", [pooled, "wc"]), "bc"], out="logits")
    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"])
            for n in [input_ids_name, "attention_mask", "token_type_ids"]]
    outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", len(CLS_LABELS)])]
    return g.model(ints, outs, "tiny_classifier")


def classifier_ref(w, ids):
    """Logits of one unpadded sequence (float64)."""
    w = f64(w)
    s, hd = len(ids), CLS_HIDDEN // CLS_HEADS
    x = w["word_emb"][ids] + w["pos_emb"][:s] + w["type_emb"][0]
    x = np_ln(x, w["ln0_g"], w["ln0_b"])

    def heads(t):
        return t.reshape(s, CLS_HEADS, hd).transpose(1, 0, 2)

    q, k, v = (heads(x @ w["w" + n] + w["b" + n]) for n in "qkv")
    p = np_softmax(q @ k.transpose(0, 2, 1) * hd ** -0.5)
    ctx = (p @ v).transpose(1, 0, 2).reshape(s, CLS_HIDDEN)
    x1 = np_ln(x + ctx @ w["wo"] + w["bo"], w["ln1_g"], w["ln1_b"])
    ff = np.maximum(x1 @ w["w1"] + w["b1"], 0) @ w["w2"] + w["b2"]
    x2 = np_ln(x1 + ff, w["ln2_g"], w["ln2_b"])
    pooled = np.tanh(x2[0] @ w["wp"] + w["bp"])
    return pooled @ w["wc"] + w["bc"]


CLS_TEXTS = [
    "You are a wonderful person.",
    "I hate you, you stupid idiot!",
    "The weather is nice today and the birds are singing in the trees.",
    "a",
    "Numbers 12345 and symbols #$%&*() are text too.",
    "Ünïcödé — ✓ 漢字",
    "I will find where you live.",
]


def make_classifier(rng, tok):
    d = os.path.join(OUT, "tiny-classifier")
    os.makedirs(d, exist_ok=True)
    w = classifier_weights(rng)
    onnx.save(classifier_graph(w), os.path.join(d, "model.onnx"))
    # A broken export for the error tests: the token input is called `tokens`, not `input_ids`.
    onnx.save(classifier_graph(w, input_ids_name="tokens"), os.path.join(d, "bad_inputs.onnx"))
    shutil.copyfile(TOKENIZER, os.path.join(d, "tokenizer.json"))
    config = {
        "architectures": ["TinyBertForSequenceClassification"],
        "model_type": "bert",
        "hidden_size": CLS_HIDDEN,
        "num_attention_heads": CLS_HEADS,
        "num_hidden_layers": 1,
        "max_position_embeddings": CLS_MAXPOS,
        "vocab_size": VOCAB,
        "pad_token_id": 0,
        "problem_type": "multi_label_classification",
        "id2label": {str(i): l for i, l in enumerate(CLS_LABELS)},
        "label2id": {l: i for i, l in enumerate(CLS_LABELS)},
    }
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")

    cases = []
    for text in CLS_TEXTS:
        ids = tok.encode(text, add_special_tokens=True).ids
        assert 0 < len(ids) <= CLS_MAXPOS, (text, len(ids))
        logits = classifier_ref(w, ids)
        cases.append({
            "text": text,
            "input_ids": ids,
            "logits": logits.tolist(),
            "sigmoid": (1 / (1 + np.exp(-logits))).tolist(),
            "softmax": np_softmax(logits).tolist(),
        })

    # Cross-check the NumPy reference against onnxruntime, padded batch (right padding, pad id 0).
    sess = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
    n = max(len(c["input_ids"]) for c in cases)
    ids = np.zeros((len(cases), n), np.int64)
    mask = np.zeros((len(cases), n), np.int64)
    for i, c in enumerate(cases):
        ids[i, : len(c["input_ids"])] = c["input_ids"]
        mask[i, : len(c["input_ids"])] = 1
    got = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    want = np.array([c["logits"] for c in cases])
    diff = float(np.abs(got - want).max())
    assert diff < 1e-5, f"classifier: onnxruntime vs numpy differ by {diff}"
    probs = np.array([c["sigmoid"] for c in cases])
    assert probs.min() < 0.2 and probs.max() > 0.8, "want a spread of probabilities"

    expected = {
        "description": "Reference outputs of tiny-classifier (NumPy float64 forward pass; see README.md).",
        "labels": CLS_LABELS,
        "primary": "toxicity",
        "max_abs_diff_onnxruntime_python": diff,
        "cases": cases,
    }
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(f"tiny-classifier: {len(cases)} cases, onnxruntime vs numpy max |diff| = {diff:.2e}")


# ----------------------------------------------------------------------------------------------
# Tiny causal LM: 2 pre-LN decoder layers, learned positions, HF-optimum input/output names
# ----------------------------------------------------------------------------------------------

LM_HIDDEN, LM_HEADS, LM_LAYERS, LM_MAXPOS = 32, 2, 2, 128
LM_HEAD_DIM = LM_HIDDEN // LM_HEADS


def lm_weights(rng):
    h, f = LM_HIDDEN, 4 * LM_HIDDEN
    w = {
        "tok_emb": rand(rng, VOCAB, h, scale=1.0),
        "pos_emb": rand(rng, LM_MAXPOS, h, scale=0.3),
        "lnf_g": 1 + rand(rng, h, scale=0.1), "lnf_b": rand(rng, h, scale=0.1),
        "lm_head": rand(rng, h, VOCAB, scale=2.5 * h ** -0.5),
    }
    for l in range(LM_LAYERS):
        p = f"l{l}_"
        for n in ["q", "k", "v", "o"]:
            w[p + "w" + n] = rand(rng, h, h, scale=h ** -0.5)
            w[p + "b" + n] = rand(rng, h, scale=0.05)
        w[p + "ln1_g"], w[p + "ln1_b"] = 1 + rand(rng, h, scale=0.1), rand(rng, h, scale=0.1)
        w[p + "ln2_g"], w[p + "ln2_b"] = 1 + rand(rng, h, scale=0.1), rand(rng, h, scale=0.1)
        w[p + "w1"], w[p + "b1"] = rand(rng, h, f, scale=h ** -0.5), rand(rng, f, scale=0.05)
        w[p + "w2"], w[p + "b2"] = rand(rng, f, h, scale=f ** -0.5), rand(rng, h, scale=0.05)
    return w


def lm_graph(w, with_past):
    g = G()
    for k, v in w.items():
        g.init(k, v)
    hd = LM_HEAD_DIM
    one = g.const(1, np.int64)
    seq = g.op("Gather", [g.op("Shape", ["input_ids"]), one], axis=0)
    if with_past:
        pos_ids = "position_ids"
        past_len = g.op("Gather", [g.op("Shape", ["past_key_values.0.key"]), g.const(2, np.int64)], axis=0)
    else:
        # HF computes positions from the mask when the export has no position_ids input.
        cs = g.op("CumSum", ["attention_mask", one])
        pos_ids = g.op("Max", [g.op("Sub", [cs, one]), g.const(0, np.int64)])
        past_len = g.const(0, np.int64)
    total = g.op("Add", [past_len, seq])
    qpos = g.op("Unsqueeze", [g.op("Range", [past_len, total, one]), g.const([1], np.int64)])  # [s, 1]
    kpos = g.op("Unsqueeze", [g.op("Range", [g.const(0, np.int64), total, one]), g.const([0], np.int64)])  # [1, T]
    causal = g.op("Unsqueeze", [g.op("LessOrEqual", [kpos, qpos]), g.const([0, 1], np.int64)])  # [1,1,s,T]
    pad = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.BOOL), g.const([1, 2], np.int64)])
    allowed = g.op("And", [causal, pad])  # [b,1,s,T]
    bias = g.op("Where", [allowed, g.const(0.0, np.float32), g.const(NEG, np.float32)])

    x = g.op("Add", [g.op("Gather", ["tok_emb", "input_ids"]), g.op("Gather", ["pos_emb", pos_ids])])
    outputs = []
    for l in range(LM_LAYERS):
        p = f"l{l}_"
        h = g.layer_norm(x, p + "ln1_g", p + "ln1_b")
        q = split_heads(g, g.linear(h, p + "wq", p + "bq"), LM_HEADS, hd, [0, 2, 1, 3])
        k = split_heads(g, g.linear(h, p + "wk", p + "bk"), LM_HEADS, hd, [0, 2, 1, 3])
        v = split_heads(g, g.linear(h, p + "wv", p + "bv"), LM_HEADS, hd, [0, 2, 1, 3])
        if with_past:
            k = g.op("Concat", [f"past_key_values.{l}.key", k], out=f"present.{l}.key", axis=2)
            v = g.op("Concat", [f"past_key_values.{l}.value", v], out=f"present.{l}.value", axis=2)
            outputs += [f"present.{l}.key", f"present.{l}.value"]
        kt = g.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, kt]), g.const(hd ** -0.5, np.float32)]), bias])
        ctx = merge_heads(g, g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v]), LM_HIDDEN)
        x = g.op("Add", [x, g.linear(ctx, p + "wo", p + "bo")])
        h2 = g.layer_norm(x, p + "ln2_g", p + "ln2_b")
        x = g.op("Add", [x, g.linear(g.op("Relu", [g.linear(h2, p + "w1", p + "b1")]), p + "w2", p + "b2")])
    g.op("MatMul", [g.layer_norm(x, "lnf_g", "lnf_b"), "lm_head"], out="logits")

    dims = {"input_ids": ["batch_size", "sequence_length"],
            "attention_mask": ["batch_size", "past_sequence_length + sequence_length"],
            "position_ids": ["batch_size", "sequence_length"]}
    names = ["input_ids", "attention_mask"] + (["position_ids"] if with_past else [])
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dims[n]) for n in names]
    kv_dims = ["batch_size", LM_HEADS, "past_sequence_length", hd]
    present_dims = ["batch_size", LM_HEADS, "past_sequence_length + sequence_length", hd]
    if with_past:
        for l in range(LM_LAYERS):
            for kv in ["key", "value"]:
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{l}.{kv}", TensorProto.FLOAT, kv_dims))
    outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", VOCAB])]
    outs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, present_dims) for n in outputs]
    return g.model(inputs, outs, "tiny_causal_lm")


def lm_ref_logits(w, ids):
    """Logits [s, V] of one unpadded sequence, full causal attention (float64)."""
    w = f64(w)
    s, hd = len(ids), LM_HEAD_DIM
    x = w["tok_emb"][ids] + w["pos_emb"][:s]
    causal = np.tril(np.ones((s, s), bool))
    for l in range(LM_LAYERS):
        p = f"l{l}_"
        h = np_ln(x, w[p + "ln1_g"], w[p + "ln1_b"])

        def heads(t):
            return t.reshape(s, LM_HEADS, hd).transpose(1, 0, 2)

        q, k, v = (heads(h @ w[p + "w" + n] + w[p + "b" + n]) for n in "qkv")
        sc = np.where(causal, q @ k.transpose(0, 2, 1) * hd ** -0.5, -np.inf)
        ctx = (np_softmax(sc) @ v).transpose(1, 0, 2).reshape(s, LM_HIDDEN)
        x = x + ctx @ w[p + "wo"] + w[p + "bo"]
        h2 = np_ln(x, w[p + "ln2_g"], w[p + "ln2_b"])
        x = x + np.maximum(h2 @ w[p + "w1"] + w[p + "b1"], 0) @ w[p + "w2"] + w[p + "b2"]
    return np_ln(x, w["lnf_g"], w["lnf_b"]) @ w["lm_head"]


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# The sampler trust-backends' OrtCausalLm implements, mirrored exactly (SplitMix64 and derive_seed
# of trust_core::rng).
M64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & M64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def next_f64(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


def derive_seed(parent, key):
    import hashlib

    kb = key.encode()
    h = hashlib.sha256(parent.to_bytes(8, "little") + len(kb).to_bytes(8, "little") + kb).digest()
    return int.from_bytes(h[:8], "little")


def sample_token(logits, temperature, top_p, top_k, rng, margins):
    """Sorts by logit (descending, ties by id), keeps top_k (0 = all), softmax at `temperature`,
    keeps the smallest prefix with mass >= top_p, then draws u*mass over the cumulative sums."""
    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))
    if top_k > 0:
        order = order[:top_k]
    z = np.array([logits[i] for i in order]) / temperature
    p = np.exp(z - z.max())
    p = p / p.sum()
    if top_p < 1.0:
        cum, keep = 0.0, 0
        for keep, pi in enumerate(p, start=1):
            cum += pi
            if cum >= top_p:
                break
        order, p = order[:keep], p[:keep]
    cum = np.cumsum(p)
    u = rng.next_f64() * cum[-1]
    idx = int(np.searchsorted(cum, u, side="right"))
    idx = min(idx, len(order) - 1)
    # Distance of the draw from the edges of the chosen bucket: a port whose probabilities differ
    # by less than this picks the same token.
    lo = cum[idx - 1] if idx > 0 else 0.0
    margins.append(float(min(u - lo, cum[idx] - u)))
    return order[idx]


def lm_generate(w, prompt_ids, max_new, sampling=None, rng=None, margins=None):
    ids, new = list(prompt_ids), []
    for _ in range(max_new):
        last = lm_ref_logits(w, ids)[-1]
        if sampling is None:
            top2 = np.sort(last)[-2:]
            margins.append(float(top2[1] - top2[0]))
            t = int(np.argmax(last))
        else:
            t = sample_token(last, *sampling, rng, margins)
        ids.append(t)
        new.append(t)
    return new


LM_PROMPTS = [
    "The quick brown fox",
    "Hello",
    "In 1492, Columbus sailed across the ocean and",
    "Q: What is two plus two?\nA:",
]
LL_CASES = [
    ("The capital of France is", " Paris"),
    ("The capital of France is", " a city of lights and love"),
    ("Hello", " world"),
    ("Once upon a time", " there was a little girl"),
]
SAMPLE_CASES = [
    # prompt, temperature, top_p, top_k, n, seed
    ("Once upon a time", 1.0, 1.0, 0, 3, 11),
    ("Once upon a time", 0.8, 0.9, 0, 2, 1237),
    ("The quick brown fox", 1.3, 0.95, 20, 2, 102),
]


def make_causal_lm(rng, tok):
    d = os.path.join(OUT, "tiny-causal-lm")
    os.makedirs(d, exist_ok=True)
    w = lm_weights(rng)
    onnx.save(lm_graph(w, with_past=True), os.path.join(d, "model.onnx"))
    onnx.save(lm_graph(w, with_past=False), os.path.join(d, "model_no_past.onnx"))
    shutil.copyfile(TOKENIZER, os.path.join(d, "tokenizer.json"))
    config = {
        "architectures": ["TinyCausalLM"],
        "model_type": "tiny-causal-lm",
        "hidden_size": LM_HIDDEN,
        "num_attention_heads": LM_HEADS,
        "num_hidden_layers": LM_LAYERS,
        "max_position_embeddings": LM_MAXPOS,
        "vocab_size": VOCAB,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "use_cache": True,
    }
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")

    def enc(t):
        return tok.encode(t, add_special_tokens=False).ids

    max_new = 10
    greedy, margins = [], []
    for prompt in LM_PROMPTS:
        ids = enc(prompt)
        new = lm_generate(w, ids, max_new, margins=margins)
        greedy.append({
            "prompt": prompt,
            "prompt_ids": ids,
            "max_new_tokens": max_new,
            "last_logits": lm_ref_logits(w, ids)[-1].tolist(),
            "token_ids": new,
            "text": tok.decode(new, skip_special_tokens=True),
        })
    assert min(margins) > 1e-4, f"greedy argmax too close to a tie: {min(margins)}"

    ll = []
    for ctx, cont in LL_CASES:
        cids, kids = enc(ctx), enc(cont)
        full = cids + kids
        lp = log_softmax(lm_ref_logits(w, full))
        # logits at position t predict token t+1 (contexts are non-empty).
        assert cids, "an empty context has no prediction for the first continuation token"
        start = len(cids)
        toks = [float(lp[t - 1, full[t]]) for t in range(start, len(full))]
        greedy_ok = all(int(np.argmax(lp[t - 1])) == full[t] for t in range(start, len(full)))
        ll.append({"context": ctx, "continuation": cont, "context_ids": cids, "continuation_ids": kids,
                   "token_logprobs": toks, "sum": float(sum(toks)), "is_greedy": greedy_ok})
    # One continuation that is the model's own greedy output, so is_greedy = true is exercised:
    # the first greedy prefix whose decoded text tokenises back to the same ids.
    pick = next((c, k) for k in (4, 3, 2, 1) for c in greedy
                if enc(tok.decode(c["token_ids"][:k], skip_special_tokens=True)) == c["token_ids"][:k])
    ctx, cont_ids = pick[0]["prompt"], pick[0]["token_ids"][:pick[1]]
    cont = tok.decode(cont_ids, skip_special_tokens=True)
    full = enc(ctx) + cont_ids
    lp = log_softmax(lm_ref_logits(w, full))
    start = len(enc(ctx))
    toks = [float(lp[t - 1, full[t]]) for t in range(start, len(full))]
    ok = all(int(np.argmax(lp[t - 1])) == full[t] for t in range(start, len(full)))
    ll.append({"context": ctx, "continuation": cont, "context_ids": enc(ctx), "continuation_ids": cont_ids,
               "token_logprobs": toks, "sum": float(sum(toks)), "is_greedy": ok})
    assert any(c["is_greedy"] for c in ll) and not all(c["is_greedy"] for c in ll), [c["is_greedy"] for c in ll]

    sampled, smargins = [], []
    for prompt, temp, top_p, top_k, n, seed in SAMPLE_CASES:
        comps = []
        for i in range(n):
            r = SplitMix64(derive_seed(seed, f"completion/{i}"))
            comps.append(lm_generate(w, enc(prompt), 8, (temp, top_p, top_k), r, smargins))
        sampled.append({"prompt": prompt, "temperature": temp, "top_p": top_p, "top_k": top_k, "n": n,
                        "seed": seed, "max_new_tokens": 8, "token_ids": comps})
    assert min(smargins) > 5e-5, f"a sampled draw is too close to a bucket edge: {min(smargins)}"

    # Cross-check against onnxruntime: the no-past export on a left-padded batch, and the
    # with-past export fed the prompt then one token at a time.
    s_np = ort.InferenceSession(os.path.join(d, "model_no_past.onnx"), providers=["CPUExecutionProvider"])
    s_kv = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
    diff = 0.0
    prompts = [c["prompt_ids"] for c in greedy]
    n = max(map(len, prompts))
    ids = np.zeros((len(prompts), n), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, n - len(p):] = p
        mask[i, n - len(p):] = 1
    got = s_np.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0][:, -1]
    diff = max(diff, float(np.abs(got - np.array([c["last_logits"] for c in greedy])).max()))
    for c in greedy:
        seq = c["prompt_ids"] + c["token_ids"]
        past = {f"past_key_values.{l}.{kv}": np.zeros((1, LM_HEADS, 0, LM_HEAD_DIM), np.float32)
                for l in range(LM_LAYERS) for kv in ["key", "value"]}
        pos = 0
        for chunk in [c["prompt_ids"]] + [[t] for t in c["token_ids"]]:
            feed = {"input_ids": np.array([chunk], np.int64),
                    "attention_mask": np.ones((1, pos + len(chunk)), np.int64),
                    "position_ids": np.arange(pos, pos + len(chunk), dtype=np.int64)[None], **past}
            outs = s_kv.run(None, feed)
            names = [o.name for o in s_kv.get_outputs()]
            res = dict(zip(names, outs))
            pos += len(chunk)
            want = lm_ref_logits(w, seq[:pos])[-1]
            diff = max(diff, float(np.abs(res["logits"][0, -1] - want).max()))
            past = {k.replace("present", "past_key_values"): v for k, v in res.items() if k.startswith("present")}
    assert diff < 1e-4, f"causal lm: onnxruntime vs numpy differ by {diff}"

    expected = {
        "description": "Reference outputs of tiny-causal-lm (NumPy float64 forward pass; see README.md).",
        "eos_token_id": 0,
        "max_abs_diff_onnxruntime_python": diff,
        "greedy": greedy,
        "loglikelihood": ll,
        "sampling": {
            "algorithm": "per completion i: SplitMix64(derive_seed(seed, \"completion/{i}\")); sort by logit desc (ties by id), "
                         "top_k (0 = off), softmax(logits / temperature) in f64, smallest prefix with mass >= top_p, "
                         "u = next_f64() * mass, first index whose cumulative sum > u",
            "cases": sampled,
        },
    }
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(f"tiny-causal-lm: {len(greedy)} greedy, {len(ll)} loglikelihood, {len(sampled)} sampling cases; "
          f"onnxruntime vs numpy max |diff| = {diff:.2e}; min greedy margin {min(margins):.3g}; "
          f"min sampling margin {min(smargins):.3g}")


# ----------------------------------------------------------------------------------------------
# Benchmark model (not committed): a random BERT-base-shaped classifier, same graph layout as the
# tiny classifier but 12 layers x 768 hidden x 12 heads, 3072 FFN, 30522 x 768 embeddings, 512
# positions (about 110M parameters, ~440 MB). Only for trust-backends/benches/ort_classifier.rs.
# ----------------------------------------------------------------------------------------------


def make_bert_base(out_dir, layers=12, h=768, heads=12, vocab=30522, maxpos=512):
    rng = np.random.default_rng(7)
    f, hd = 4 * h, h // heads
    g = G()

    def w(name, *shape, scale=0.02):
        return g.init(name, rand(rng, *shape, scale=scale))

    def ln(name):
        return g.init(name + "_g", np.ones(h, np.float32)), g.init(name + "_b", np.zeros(h, np.float32))

    shape = g.op("Shape", ["input_ids"])
    seq = g.op("Gather", [shape, g.const(1, np.int64)], axis=0)
    pos = g.op("Range", [g.const(0, np.int64), seq, g.const(1, np.int64)])
    e = g.op("Add", [g.op("Gather", [w("word_emb", vocab, h), "input_ids"]), g.op("Gather", [w("pos_emb", maxpos, h), pos])])
    e = g.op("Add", [e, g.op("Gather", [w("type_emb", 2, h), "token_type_ids"])])
    x = g.layer_norm(e, *ln("ln0"))
    m = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    m = g.op("Unsqueeze", [m, g.const([1, 2], np.int64)])
    bias = g.op("Mul", [g.op("Sub", [g.const(1.0, np.float32), m]), g.const(NEG, np.float32)])
    for l in range(layers):
        p = f"l{l}_"
        lin = {n: (w(p + "w" + n, h, h), w(p + "b" + n, h)) for n in "qkvo"}
        q = split_heads(g, g.linear(x, *lin["q"]), heads, hd, [0, 2, 1, 3])
        kt = split_heads(g, g.linear(x, *lin["k"]), heads, hd, [0, 2, 3, 1])
        v = split_heads(g, g.linear(x, *lin["v"]), heads, hd, [0, 2, 1, 3])
        scores = g.op("Mul", [g.op("MatMul", [q, kt]), g.const(hd ** -0.5, np.float32)])
        probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
        ctx = merge_heads(g, g.op("MatMul", [probs, v]), h)
        x = g.layer_norm(g.op("Add", [x, g.linear(ctx, *lin["o"])]), *ln(p + "ln1"))
        ff = g.linear(g.op("Relu", [g.linear(x, w(p + "w1", h, f), w(p + "b1", f))]), w(p + "w2", f, h), w(p + "b2", h))
        x = g.layer_norm(g.op("Add", [x, ff]), *ln(p + "ln2"))
    cls = g.op("Gather", [x, g.const(0, np.int64)], axis=1)
    pooled = g.op("Tanh", [g.linear(cls, w("wp", h, h), w("bp", h))])
    g.op("Add", [g.op("MatMul", [pooled, w("wc", h, len(CLS_LABELS))]), w("bc", len(CLS_LABELS))], out="logits")
    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"])
            for n in ["input_ids", "attention_mask", "token_type_ids"]]
    outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", len(CLS_LABELS)])]
    model = g.model(ints, outs, "bert_base_shaped_random")
    os.makedirs(out_dir, exist_ok=True)
    onnx.save(model, os.path.join(out_dir, "model.onnx"))
    shutil.copyfile(TOKENIZER, os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump({"model_type": "bert", "max_position_embeddings": maxpos, "pad_token_id": 0,
                   "problem_type": "multi_label_classification",
                   "id2label": {str(i): l for i, l in enumerate(CLS_LABELS)}}, fh, indent=2)
    n = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"BERT-base-shaped random classifier ({n / 1e6:.1f}M parameters) written to {out_dir}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--bert-base":
        make_bert_base(sys.argv[2])
        return
    tok = Tokenizer.from_file(TOKENIZER)
    rng = np.random.default_rng(20261126)
    make_classifier(rng, tok)
    make_causal_lm(rng, tok)
    for sub in ["tiny-classifier", "tiny-causal-lm"]:
        for f in sorted(os.listdir(os.path.join(OUT, sub))):
            print(f"  {sub}/{f}: {os.path.getsize(os.path.join(OUT, sub, f))} bytes")


if __name__ == "__main__":
    main()
