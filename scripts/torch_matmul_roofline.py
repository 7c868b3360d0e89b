"""Matmul ceiling of PyTorch (MKL) on this machine for a Pythia-70m-shaped model, the twin of
`cargo bench -p trust-backends --bench matmul_roofline`: GFLOP/s of each projection of one
decoder step and of the whole token (6 layers + output layer) at several row counts.

    OMP_NUM_THREADS=2 /tmp/qwenvenv/bin/python scripts/torch_matmul_roofline.py
"""
import time

import torch

torch.set_num_threads(2)
print("torch", torch.__version__, "threads", torch.get_num_threads())
shapes = [("qkv", 512, 1536, 6), ("dense", 512, 512, 6), ("mlp_up", 512, 2048, 6),
          ("mlp_down", 2048, 512, 6), ("embed_out", 512, 50304, 1)]
W = [torch.randn(o, i) * 0.02 for _, i, o, _ in shapes]
print(f"{'rows':>5}" + "".join(f"{n:>10}" for n, _, _, _ in shapes) + f"{'token GF/s':>12}{'tok/s':>10}")
for m in [1, 8, 40, 64, 128, 256]:
    line = f"{m:>5}"
    ts = 0.0
    tf = 0.0
    for (n, i, o, c), w in zip(shapes, W):
        x = torch.randn(m, i)
        torch.nn.functional.linear(x, w)
        reps = max(3, min(200, int(2e9 / (2 * m * i * o))))
        t = time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.linear(x, w)
        s = (time.perf_counter() - t) / reps
        f = 2 * m * i * o
        line += f"{f / s / 1e9:>10.1f}"
        ts += s * c
        tf += f * c
    line += f"{tf / ts / 1e9:>12.1f}{m / ts:>10.0f}"
    print(line)
