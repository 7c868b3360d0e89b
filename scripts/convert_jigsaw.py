#!/usr/bin/env python3
"""Converts the Jigsaw toxicity BiLSTM of the PyPI wheel `toxic-comment-classifier==0.3.0` into
files trust reads without Python:

    OUT/model.safetensors   embedding, forward/backward LSTM kernels, the two dense layers (f32)
    OUT/vocab.json          the Keras Tokenizer's word_index (word -> id), ids < num_words only
    OUT/config.json         architecture and preprocessing (filters, lower, split, num_words,
                            maxlen, padding, truncating, labels)

Needs h5py and numpy (scripts/fetch-models.sh runs it in a small venv of its own). The tokenizer
pickle is read with a restricted unpickler that only admits `collections.OrderedDict` and a stand-in
for `keras.src.legacy.preprocessing.text.Tokenizer` (its attributes are copied, no Keras code runs);
any other class in the pickle is refused.

    python3 scripts/convert_jigsaw.py WHEEL_DIR OUT
"""

import collections
import json
import os
import pickle
import struct
import sys

import h5py
import numpy as np

LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]


class _Tokenizer:
    """Stand-in for the pickled Keras Tokenizer: keeps its state dict."""

    def __setstate__(self, state):
        self.__dict__.update(state)


class _Restricted(pickle.Unpickler):
    ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("builtins", "int"): int,
        ("builtins", "list"): list,
        ("keras.src.legacy.preprocessing.text", "Tokenizer"): _Tokenizer,
        ("keras_preprocessing.text", "Tokenizer"): _Tokenizer,
        ("keras.preprocessing.text", "Tokenizer"): _Tokenizer,
    }

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the tokenizer pickle")


def write_safetensors(path, tensors):
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    model_dir = os.path.join(src, "toxic_classifier", "model")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(model_dir, "tokenizer.pickle"), "rb") as f:
        tok = _Restricted(f).load()
    if not isinstance(tok, _Tokenizer):
        sys.exit("tokenizer.pickle does not hold a Keras Tokenizer")
    s = tok.__dict__
    num_words = s["num_words"]
    if s.get("char_level") or s.get("oov_token") is not None or s.get("analyzer") is not None:
        sys.exit(f"unsupported tokenizer settings: char_level={s.get('char_level')}, oov_token={s.get('oov_token')}")
    word_index = s["word_index"]
    vocab = {w: i for w, i in word_index.items() if i < num_words}
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, separators=(",", ":"))

    h = h5py.File(os.path.join(model_dir, "model.weights.h5"), "r")
    L = h["layers"]
    t = {
        "embedding": L["embedding/vars/0"][()],
        "forward.kernel": L["bidirectional/forward_layer/cell/vars/0"][()],
        "forward.recurrent_kernel": L["bidirectional/forward_layer/cell/vars/1"][()],
        "forward.bias": L["bidirectional/forward_layer/cell/vars/2"][()],
        "backward.kernel": L["bidirectional/backward_layer/cell/vars/0"][()],
        "backward.recurrent_kernel": L["bidirectional/backward_layer/cell/vars/1"][()],
        "backward.bias": L["bidirectional/backward_layer/cell/vars/2"][()],
        "dense.kernel": L["dense/vars/0"][()],
        "dense.bias": L["dense/vars/1"][()],
        "output.kernel": L["dense_1/vars/0"][()],
        "output.bias": L["dense_1/vars/1"][()],
    }
    vocab_size, dim = t["embedding"].shape
    units = t["forward.recurrent_kernel"].shape[0]
    write_safetensors(os.path.join(out, "model.safetensors"), t)
    config = {
        "format": "trust-jigsaw-bilstm/1",
        "source": "toxic-comment-classifier==0.3.0 (toxic_classifier/model/{model.weights.h5,tokenizer.pickle})",
        "architecture": "Embedding -> Bidirectional(LSTM, return_sequences, concat) -> GlobalMaxPooling1D -> Dense(relu) -> Dense(sigmoid)",
        "vocab_size": int(vocab_size),
        "embedding_dim": int(dim),
        "lstm_units": int(units),
        "lstm_gate_order": "ifco",
        "lstm_activation": "tanh",
        "lstm_recurrent_activation": "sigmoid",
        "dense_units": int(t["dense.kernel"].shape[1]),
        "labels": LABELS,
        "tokenizer": {
            "num_words": int(num_words),
            "filters": s["filters"],
            "lower": bool(s["lower"]),
            "split": s["split"],
        },
        "maxlen": 100,
        "padding": "pre",
        "truncating": "pre",
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(f"convert_jigsaw: {out}: {len(vocab)} words, embedding {vocab_size}x{dim}, LSTM {units} units")


if __name__ == "__main__":
    main()
