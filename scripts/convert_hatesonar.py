#!/usr/bin/env python3
"""Rewrites hatesonar's ONNX model (PyPI `hatesonar==0.1.0`, TF-IDF + logistic regression by
skl2onnx; classes hate_speech, offensive_language, neither) into one ONNX Runtime loads on any
machine and trust reads as a plain tensor:

- its StringNormalizer names no locale, so onnxruntime asks for en_US.UTF-8, which many machines
  lack (the session then fails to load): the locale is set to "C" (lowercasing is then ASCII-only;
  a non-ASCII capital letter stays as it is);
- the ZipMap at the end (a sequence of maps) is dropped: the output is the probability tensor
  before it, `probabilities` [N, 3] float32.

Writes OUT/model.onnx and OUT/config.json (labels, input and output names). Needs the `onnx`
package (scripts/fetch-models.sh runs it in a small venv of its own).

    python3 scripts/convert_hatesonar.py WHEEL_DIR OUT
"""

import json
import os
import sys

import onnx
from onnx import helper


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    m = onnx.load(os.path.join(src, "hatesonar", "model", "model.onnx"))
    g = m.graph
    norms = [n for n in g.node if n.op_type == "StringNormalizer"]
    zipmaps = [n for n in g.node if n.op_type == "ZipMap"]
    if len(norms) != 1 or len(zipmaps) != 1:
        sys.exit("unexpected hatesonar graph: expected one StringNormalizer and one ZipMap")
    norm = norms[0]
    kept = [a for a in norm.attribute if a.name != "locale"]
    del norm.attribute[:]
    norm.attribute.extend(kept + [helper.make_attribute("locale", "C")])
    zm = zipmaps[0]
    prob_name = zm.input[0]
    g.node.remove(zm)
    outputs = [o for o in g.output if o.name != zm.output[0]]
    del g.output[:]
    g.output.extend(outputs + [helper.make_tensor_value_info(prob_name, onnx.TensorProto.FLOAT, [None, 3])])
    onnx.checker.check_model(m)
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, "model.onnx.part")
    onnx.save(m, tmp)
    os.replace(tmp, os.path.join(out, "model.onnx"))
    config = {
        "format": "trust-onnx-text-classifier/1",
        "source": "hatesonar==0.1.0 (hatesonar/model/model.onnx), locale C, ZipMap removed",
        "input": g.input[0].name,
        "output": prob_name,
        "labels": ["hate_speech", "offensive_language", "neither"],
        "primary": "offensive_language",
        "activation": "identity",
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(f"convert_hatesonar: {out}/model.onnx (input `{config['input']}`, output `{prob_name}`)")


if __name__ == "__main__":
    main()
