"""The softmax stage on its own and Nadaraya-Watson kernel regression:
attncore vs scipy.special.softmax, torch.softmax and the textbook NumPy
formula; kernel_regression vs d2l's NumPy formula and torch. Peers of one
shape share a group; extra_info carries elements (or pairs) per second.

    pytest benchmarks/bench_softmax.py --benchmark-group-by=group --benchmark-columns=min,median
"""
import numpy as np
import pytest

import attncore

from benchutil import SMALL

# (shape, axis): attention-score rows, a strided axis, d2l's masked_softmax
# shape, many short rows, one long row
SOFTMAX_SHAPES = {
    "scores 8x12x512x512": ((8, 12, 512, 512), -1),
    "matrix 4096x1024 axis=-1": ((4096, 1024), -1),
    "matrix 4096x1024 axis=0": ((4096, 1024), 0),
    "short rows 200000x8": ((200000, 8), -1),
    "long rows 4x1048576": ((4, 1 << 20), -1),
}
SMALL_SHAPES = {
    "scores 8x12x512x512": ((1, 2, 33, 70), -1),
    "matrix 4096x1024 axis=-1": ((40, 33), -1),
    "matrix 4096x1024 axis=0": ((40, 33), 0),
    "short rows 200000x8": ((300, 8), -1),
    "long rows 4x1048576": ((2, 5000), -1),
}
SOFTMAX_IMPLS = ["attncore", "scipy", "torch", "numpy"]


def _torch(threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def softmax_fn(impl, x, axis, threads):
    if impl == "attncore":
        return lambda: attncore.softmax(x, axis, num_threads=threads)
    if impl == "scipy":
        try:
            from scipy.special import softmax
        except ImportError:
            return None
        return lambda: softmax(x, axis=axis)
    if impl == "torch":
        torch = _torch(threads)
        if torch is None:
            return None
        t = torch.from_numpy(x)

        def run():
            with torch.no_grad():
                return torch.softmax(t, axis)
        return run

    def textbook():
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
    return textbook


@pytest.mark.parametrize("impl", SOFTMAX_IMPLS)
@pytest.mark.parametrize("name", list(SOFTMAX_SHAPES))
def test_softmax(run_benchmark, threads, name, impl):
    shape, axis = (SMALL_SHAPES if SMALL else SOFTMAX_SHAPES)[name]
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    fn = softmax_fn(impl, x, axis, threads)
    if fn is None:
        pytest.skip(f"{impl} is not installed")
    run_benchmark(fn, f"softmax {name}", 0, impl=impl, shape=name, elements=x.size)


@pytest.mark.parametrize("impl", ["attncore", "numpy", "torch"])
def test_masked_softmax(run_benchmark, threads, impl):
    """d2l's masked_softmax on attention scores (B, Q, K) with one length per batch."""
    B, Q, K = (4, 9, 33) if SMALL else (64, 512, 512)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((B, Q, K), dtype=np.float32)
    lens = rng.integers(1, K + 1, B)
    if impl == "attncore":
        fn = lambda: attncore.masked_softmax(X, lens, num_threads=threads)
    elif impl == "numpy":
        def fn():
            Y = np.where(np.arange(K) < lens[:, None, None], X, np.float32(-1e6))
            e = np.exp(Y - Y.max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)
    else:
        torch = _torch(threads)
        if torch is None:
            pytest.skip("torch is not installed")
        tX, tl = torch.from_numpy(X), torch.from_numpy(lens)

        def fn():   # d2l's PyTorch code
            with torch.no_grad():
                vl = torch.repeat_interleave(tl, Q)
                Y = tX.reshape(-1, K).clone()
                Y[~(torch.arange(K)[None, :] < vl[:, None])] = -1e6
                return torch.softmax(Y.reshape(B, Q, K), dim=-1)
    run_benchmark(fn, f"masked_softmax B={B} Q={Q} K={K}", 0, impl=impl, elements=X.size)


KR_SHAPES = {"d2l 50x50": (50, 50, 1), "1-D 4096x4096": (4096, 4096, 1), "2-D 2048x8192": (2048, 8192, 2)}
KR_SMALL = {"d2l 50x50": (50, 50, 1), "1-D 4096x4096": (40, 70, 1), "2-D 2048x8192": (33, 65, 2)}


@pytest.mark.parametrize("impl", ["attncore", "numpy", "torch"])
@pytest.mark.parametrize("name", list(KR_SHAPES))
def test_kernel_regression(run_benchmark, threads, name, impl):
    Lq, Lk, D = (KR_SMALL if SMALL else KR_SHAPES)[name]
    rng = np.random.default_rng(2)
    shape_k, shape_q = ((Lk,), (Lq,)) if D == 1 else ((Lk, D), (Lq, D))
    x_train = (rng.random(shape_k) * 5).astype(np.float32)
    y_train = (2 * np.sin(x_train.sum(-1) if D > 1 else x_train) + 1).astype(np.float32)
    x_test = (rng.random(shape_q) * 5).astype(np.float32)
    h = np.float32(0.5)
    if impl == "attncore":
        fn = lambda: attncore.kernel_regression(x_test, x_train, y_train, h, num_threads=threads)
    elif impl == "numpy":
        def fn():   # d2l's formula: softmax(-(x - x_i)^2 / 2h^2) @ y
            q, k = (x_test[:, None], x_train[None]) if D == 1 else (x_test[:, None, :], x_train[None])
            d = q - k
            s = -(d * d if D == 1 else (d * d).sum(-1)) / (2 * h * h)
            w = np.exp(s - s.max(1, keepdims=True))
            return (w / w.sum(1, keepdims=True)) @ y_train
    else:
        torch = _torch(threads)
        if torch is None:
            pytest.skip("torch is not installed")
        tq, tk, ty = (torch.from_numpy(a) for a in (x_test, x_train, y_train))

        def fn():
            with torch.no_grad():
                d2 = (tq[:, None] - tk[None]) ** 2 if D == 1 else ((tq[:, None] - tk[None]) ** 2).sum(-1)
                return torch.softmax(-d2 / (2 * float(h) ** 2), dim=1) @ ty
    run_benchmark(fn, f"kernel_regression {name}", 0, impl=impl, pairs=Lq * Lk)
