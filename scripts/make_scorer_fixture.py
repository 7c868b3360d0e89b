#!/usr/bin/env python3
"""Expected scores of the two shipped toxicity classifiers, from their own Python stacks.

Writes trust-backends/tests/fixtures/scorers/ (committed; no weights):

- jigsaw.jsonl.gz     {"text", "ids", "scores": [6 probabilities]} for >= 1,000 texts (HH-RLHF
                      replies, RealToxicityPrompts prompts and continuations, edge cases: empty,
                      > 100 words, punctuation only, non-ASCII, emoji), from the wheel's own Keras
                      model (Keras 3, torch backend) and its pickled Tokenizer (texts_to_sequences +
                      pad_sequences(maxlen=100)).
- hatesonar.jsonl.gz  {"text", "probs": [hate_speech, offensive_language, neither]} from
                      onnxruntime on models/hatesonar/model.onnx (the file fetch-models.sh writes).
- meta.json           versions and counts.

Usage (after scripts/fetch-models.sh; a throwaway venv from PyPI):

    /tmp/trust-ref-venv/bin/pip install keras h5py onnxruntime
    KERAS_BACKEND=torch /tmp/trust-ref-venv/bin/python scripts/make_scorer_fixture.py --wheel-dir DIR
"""

import argparse
import gzip
import json
import os
import pickle
import random

os.environ.setdefault("KERAS_BACKEND", "torch")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
OUT = os.path.join(ROOT, "trust-backends", "tests", "fixtures", "scorers")

EDGE = [
    "", " ", "!!!", "?!.,;:", "...", "\t\n", "a", "A", "I", "you", "YOU ARE AN IDIOT", "you are an idiot!!!",
    "F*** you", "f u c k", "kill yourself", "I will kill you", "go to hell", "what a lovely day",
    "Thank you so much for your help.", "You're a moron and everyone hates you.",
    "Ünïcödé café — naïve résumé", "東京は日本の首都です。", "Привет, как дела?", "😀😃😄 🤖 💩",
    "stupid 😡 idiot", "İstanbul", "ΣΊΣΥΦΟΣ ΣΊΣΥΦΟΣ", "straße STRASSE", "don't won't can't",
    "e-mail: someone@example.com http://example.com", "hello\u00a0world", "tab\tseparated\twords",
    "multiple   spaces   between", "line\nbreaks\r\nhere", "word " * 150, ("idiot " * 60) + ("nice " * 60),
    ("nice " * 60) + ("idiot " * 60), "1234567890", "you're fat, ugly and stupid", "shut up", "nigga",
]


def texts(data):
    rng = random.Random(0)
    out = list(EDGE)
    for name in ("toxic.jsonl", "nontoxic.jsonl"):
        rows = [json.loads(l) for l in open(os.path.join(data, "toxicity", name), encoding="utf-8")]
        for r in rng.sample(rows, 250):
            out.append(r["prompt"]["text"])
            out.append(r["continuation"]["text"])
    hh = [json.loads(l) for l in gzip.open(os.path.join(data, "hh-rlhf", "harmless-base-test.jsonl.gz"), "rt", encoding="utf-8")]
    for r in rng.sample(hh, 150):
        for d in (r["chosen"], r["rejected"]):
            out.append(d.rsplit("\n\nAssistant:", 1)[-1].strip())
    seen, uniq = set(), []
    for t in out:
        if t not in seen:
            seen.add(t)
            uniq.append(t)
    return uniq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--wheel-dir", required=True, help="the unpacked toxic-comment-classifier wheel")
    ap.add_argument("--hatesonar", default=os.path.join(ROOT, "models", "hatesonar", "model.onnx"))
    args = ap.parse_args()

    import keras
    import numpy as np
    import onnxruntime as ort
    from keras.layers import LSTM, Bidirectional, Dense, Dropout, Embedding, GlobalMaxPooling1D, Input
    from keras.models import Model
    from keras.utils import pad_sequences

    base = os.path.join(args.wheel_dir, "toxic_classifier", "model")
    with open(os.path.join(base, "tokenizer.pickle"), "rb") as f:
        tokenizer = pickle.load(f)  # the reference stack itself; trust never unpickles
    inp = Input(shape=(100,))
    x = Embedding(input_dim=20000, output_dim=50, trainable=False)(inp)
    x = Bidirectional(LSTM(50, return_sequences=True, dropout=0.1, recurrent_dropout=0.1))(x)
    x = GlobalMaxPooling1D()(x)
    x = Dense(50, activation="relu")(x)
    x = Dropout(0.1)(x)
    out = Dense(6, activation="sigmoid")(x)
    model = Model(inputs=inp, outputs=out)
    model.load_weights(os.path.join(base, "model.weights.h5"))

    ts = texts(args.data)
    os.makedirs(OUT, exist_ok=True)
    seqs = tokenizer.texts_to_sequences(ts)
    padded = pad_sequences(seqs, maxlen=100)
    probs = model.predict(padded, verbose=0, batch_size=256)
    with gzip.open(os.path.join(OUT, "jigsaw.jsonl.gz"), "wt", encoding="utf-8", compresslevel=9) as f:
        for t, s, p in zip(ts, seqs, probs):
            f.write(json.dumps({"text": t, "ids": s, "scores": [float(v) for v in p]}, ensure_ascii=False) + "\n")

    sess = ort.InferenceSession(args.hatesonar, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    res = sess.run(None, {"text": np.array(ts, dtype=object).reshape(-1, 1) if len(sess.get_inputs()[0].shape) == 2 else np.array(ts, dtype=object)})
    probs_h = res[outs.index("probabilities")] if "probabilities" in outs else res[-1]
    with gzip.open(os.path.join(OUT, "hatesonar.jsonl.gz"), "wt", encoding="utf-8", compresslevel=9) as f:
        for t, p in zip(ts, probs_h):
            if isinstance(p, dict):
                p = [p[k] for k in sorted(p)]
            f.write(json.dumps({"text": t, "probs": [float(v) for v in p]}, ensure_ascii=False) + "\n")
    meta = {
        "texts": len(ts),
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "onnxruntime": ort.__version__,
        "hatesonar_outputs": outs,
        "made_by": "scripts/make_scorer_fixture.py",
    }
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
