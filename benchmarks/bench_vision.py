"""Channel and spatial attention for images (attncore.vision) vs the textbook
NumPy formula and torch eager, at a ResNet-ish shape: N=32, C=256, H=W=28,
r=16, k=7 (a stage-3 feature map with an SE / CBAM block), in NCHW and in
channels-last (NHWC arrays; torch.channels_last tensors).

Memory-bound: extra_info["gbytes"] is the minimum traffic (read x once,
write the output once), so GB/s = gbytes / time; the rate column of
pytest-benchmark stays 0 (no flops). Groups: one per (operation, shape,
layout), so the three implementations sit side by side:

    pytest benchmarks/bench_vision.py --benchmark-group-by=group --benchmark-columns=min,median
"""
import numpy as np
import pytest

import attncore
from attncore import _peers

from benchutil import SMALL

SHAPES = {"resnet-s3": dict(N=32, C=256, H=28, W=28, r=16, k=7)}
if SMALL:
    SHAPES = {"small": dict(N=2, C=16, H=9, W=7, r=4, k=3)}
OPS = ["se", "channel avg+max", "spatial", "cbam", "reverse"]
IMPLS = ["attncore", "numpy", "torch"]


def inputs(N, C, H, W, r, k, layout):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w1 = (rng.uniform(-1, 1, (C // r, C)) / np.sqrt(C)).astype(np.float32)
    w2 = (rng.uniform(-1, 1, (C, C // r)) / np.sqrt(C // r)).astype(np.float32)
    b1 = np.zeros(C // r, np.float32)
    b2 = np.zeros(C, np.float32)
    cw = (rng.uniform(-1, 1, (1, 2, k, k)) / k).astype(np.float32)
    lshape = (N, 1, H, W) if layout == "NCHW" else (N, H, W, 1)
    lg = rng.standard_normal(lshape, dtype=np.float32)
    return x, (w1, b1, w2, b2), cw, lg


def attncore_fn(op, x, mlp, cw, lg, layout, threads):
    kw = dict(layout=layout, num_threads=threads)
    return {
        "se": lambda: attncore.channel_attention(x, *mlp, **kw),
        "channel avg+max": lambda: attncore.channel_attention(x, *mlp, pooling="avg+max", **kw),
        "spatial": lambda: attncore.spatial_attention(x, cw, **kw),
        "cbam": lambda: attncore.cbam(x, *mlp, cw, **kw),
        "reverse": lambda: attncore.reverse_attention(x, lg, **kw),
    }[op]


def numpy_fn(op, x, mlp, cw, lg, layout, threads):
    """The textbook formulas, written the way the tutorials write them."""
    w1, b1, w2, b2 = mlp
    sp = (2, 3) if layout == "NCHW" else (1, 2)      # pixel axes
    ch = 1 if layout == "NCHW" else 3                 # channel axis
    k = cw.shape[-1]

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    def expand(s):                                    # (N, C) -> broadcast over pixels
        return s[:, :, None, None] if layout == "NCHW" else s[:, None, None, :]

    def mlp_(v):
        return np.maximum(v @ w1.T + b1, 0) @ w2.T + b2

    def channel(x, pooling):
        y = mlp_(x.mean(sp)) if pooling == "avg" else mlp_(x.mean(sp)) + mlp_(x.max(sp))
        return x * expand(sigmoid(y))

    def spatial(x):
        maps = np.stack([x.mean(ch), x.max(ch)], 1)   # (N, 2, H, W)
        p = k // 2
        pad = np.pad(maps, ((0, 0), (0, 0), (p, p), (p, p)))
        H, W = maps.shape[2:]
        z = sum(cw[0, m, i, j] * pad[:, m, i:i + H, j:j + W]
                for m in range(2) for i in range(k) for j in range(k))
        t = sigmoid(z)
        return x * (t[:, None] if layout == "NCHW" else t[..., None])

    return {
        "se": lambda: channel(x, "avg"),
        "channel avg+max": lambda: channel(x, "avg+max"),
        "spatial": lambda: spatial(x),
        "cbam": lambda: spatial(channel(x, "avg+max")),
        "reverse": lambda: x * (1 - sigmoid(lg)),
    }[op]


def torch_fn(op, x, mlp, cw, lg, layout, threads):
    """torch eager, the way SE / CBAM modules compute (NHWC: a channels_last tensor)."""
    if not _peers.installed("torch"):
        return None
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    if layout == "NHWC":
        tx = torch.from_numpy(x).permute(0, 3, 1, 2)               # channels_last memory
        tl = torch.from_numpy(lg).permute(0, 3, 1, 2)
    else:
        tx, tl = torch.from_numpy(x), torch.from_numpy(lg)
    w1, b1, w2, b2 = (torch.from_numpy(a) for a in mlp)
    tcw = torch.from_numpy(cw)
    k = cw.shape[-1]

    def mlp_(v):
        return F.linear(torch.relu(F.linear(v, w1, b1)), w2, b2)

    def channel(x, pooling):
        y = mlp_(x.mean((2, 3))) if pooling == "avg" else mlp_(x.mean((2, 3))) + mlp_(x.amax((2, 3)))
        return x * torch.sigmoid(y)[:, :, None, None]

    def spatial(x):
        maps = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(F.conv2d(maps, tcw, padding=k // 2))

    body = {
        "se": lambda: channel(tx, "avg"),
        "channel avg+max": lambda: channel(tx, "avg+max"),
        "spatial": lambda: spatial(tx),
        "cbam": lambda: spatial(channel(tx, "avg+max")),
        "reverse": lambda: tx * (1 - torch.sigmoid(tl)),
    }[op]

    def fn():
        with torch.no_grad():
            return body()
    return fn


BUILDERS = {"attncore": attncore_fn, "numpy": numpy_fn, "torch": torch_fn}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_vision(run_benchmark, threads, name, op, layout, impl):
    s = SHAPES[name]
    x, mlp, cw, lg = inputs(layout=layout, **s)
    fn = BUILDERS[impl](op, x, mlp, cw, lg, layout, threads)
    if fn is None:
        pytest.skip(f"{impl} is not installed")
    label = f"{op} {name} N={s['N']} C={s['C']} H={s['H']} W={s['W']} r={s['r']} k={s['k']} {layout}"
    run_benchmark(fn, label, 0, impl=impl, threads=threads, gbytes=2 * x.nbytes / 1e9)
