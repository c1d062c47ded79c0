"""Differential fuzzing of softmax, masked_softmax and kernel_regression
against float64 NumPy formulas: hypothesis draws shapes (0, 1, odd, across
vector, block, chunk and panel edges), the axis, memory layouts (negative,
transposed, sliced, Fortran, zero-stride broadcast), masks, valid lengths,
dtypes, bandwidths, kernels, threads and kernel levels. Examples are kept
small (a profile of ATTNCORE_HYPOTHESIS_EXAMPLES per test)."""
import numpy as np
from hypothesis import given, note
from hypothesis import strategies as st

import attncore
from attncore import _config

from _softmax_oracle import check, d2l_masked_softmax, kernel_regression_np, softmax_np

from conftest import SUPPORTED_ISAS as LEVELS   # (not the emulated avx512bf16emu)
SIZES = [0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 300]
LONG = [1023, 1025, 4095, 4096, 4097, 5000]
ELEMENT_LIMIT = 60_000


@st.composite
def arrays(draw, rng, shape, dtype):
    mode = draw(st.sampled_from(["plain", "transposed", "reversed", "sliced", "broadcast", "fortran"]))
    if mode == "transposed" and len(shape) >= 2:
        return np.swapaxes(rng.standard_normal(shape[:-2] + shape[-2:][::-1]).astype(dtype), -1, -2)
    if mode == "reversed":
        axis = draw(st.integers(0, len(shape) - 1))
        return np.flip(rng.standard_normal(shape).astype(dtype), axis)
    if mode == "sliced" and shape[-1] > 0:
        return rng.standard_normal(shape[:-1] + (2 * shape[-1],)).astype(dtype)[..., ::2]
    if mode == "broadcast" and len(shape) >= 2:
        small = tuple(1 if k == 0 else n for k, n in enumerate(shape))
        return np.broadcast_to(rng.standard_normal(small).astype(dtype), shape)
    if mode == "fortran":
        return np.asfortranarray(rng.standard_normal(shape).astype(dtype))
    return rng.standard_normal(shape).astype(dtype)


@st.composite
def softmax_problems(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16]))
    ndim = draw(st.integers(1, 4))
    shape = [draw(st.sampled_from(SIZES[:12] if ndim > 2 else SIZES)) for _ in range(ndim)]
    axis = draw(st.integers(-ndim, ndim - 1))
    if draw(st.integers(0, 4)) == 0:
        shape[axis] = draw(st.sampled_from(LONG))
    while int(np.prod(shape)) > ELEMENT_LIMIT:
        k = int(np.argmax(shape))
        shape[k] = max(1, shape[k] // 4)
    shape = tuple(shape)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 8.0]))
    x = draw(arrays(rng, shape, dtype)) * dtype(scale)
    kw = {}
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    if mask_kind:
        start = draw(st.integers(0, ndim))
        mshape = tuple(draw(st.sampled_from([1, n])) for n in shape)[start:]
        m = rng.random(mshape) > 0.3 if mask_kind == "bool" else rng.standard_normal(mshape).astype(
            np.float32 if dtype == np.float16 else dtype)
        if draw(st.booleans()) and m.ndim >= 2:
            m = np.swapaxes(np.ascontiguousarray(np.swapaxes(m, -1, -2)), -1, -2)
        kw["mask"] = m
    a = axis % ndim
    vl_kind = draw(st.sampled_from([None, "rows", "keepdims", "scalar"]))
    rows = shape[:a] + shape[a + 1:]
    if vl_kind == "rows":
        kw["valid_lens"] = rng.integers(0, shape[a] + 1, tuple(draw(st.sampled_from([1, n])) for n in rows))
    elif vl_kind == "keepdims":
        kw["valid_lens"] = rng.integers(0, shape[a] + 1, shape[:a] + (1,) + shape[a + 1:])
    elif vl_kind == "scalar":
        kw["valid_lens"] = int(rng.integers(0, shape[a] + 1))
    threads = draw(st.integers(1, 3))
    level = draw(st.sampled_from(LEVELS))
    return dtype, x, axis, kw, threads, level, scale


@given(softmax_problems())
def test_softmax_matches_formula(problem):
    dtype, x, axis, kw, threads, level, scale = problem
    note(f"x {x.shape} {x.strides} axis {axis} level {level} "
         f"{ {k: np.shape(v) for k, v in kw.items()} }")
    with _config.use_isa(level):
        got = attncore.softmax(x, axis, num_threads=threads, **kw)
    ref = softmax_np(x, axis, **kw)
    assert got.shape == x.shape and got.dtype == x.dtype
    if dtype == np.float16:
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=2e-3, atol=1e-3)
    else:
        mscale = np.abs(np.asarray(kw.get("mask", 0.0), np.float64)).max(initial=0.0) \
            if kw.get("mask") is not None and np.asarray(kw["mask"]).dtype != np.bool_ else 0.0
        check(got, ref, dtype, scale=4 * scale + mscale)


@given(st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]),
       st.sampled_from(SIZES[1:16]), st.sampled_from(SIZES[1:16]), st.sampled_from(SIZES[1:]),
       st.sampled_from(["batch", "row", "scalar", None]), st.sampled_from(LEVELS))
def test_masked_softmax_matches_d2l(seed, dtype, B, Q, K, form, level):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((B, Q, K)) * 3).astype(dtype)
    vl = {"batch": rng.integers(0, K + 1, B), "row": rng.integers(0, K + 1, (B, Q)),
          "scalar": int(rng.integers(0, K + 1)), None: None}[form]
    with _config.use_isa(level):
        got = attncore.masked_softmax(X, vl)
    ref = d2l_masked_softmax(X, np.broadcast_to(vl, (B,)) if form == "scalar" else vl)
    check(got, ref, dtype, scale=3)


@st.composite
def regression_problems(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    form = draw(st.sampled_from(["d2l", "vector", "batched"]))
    Lq = draw(st.sampled_from(SIZES[:14]))
    Lk = draw(st.sampled_from(SIZES + [257, 513]))
    D, Dy = draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 2, 4]))
    spread = draw(st.sampled_from([1.0, 5.0, 50.0]))
    if form == "d2l":
        xq, xk = rng.random(Lq) * spread, rng.random(Lk) * spread
        y = rng.standard_normal(Lk if draw(st.booleans()) else (Lk, Dy))
        batch = ()
    else:
        batch = (draw(st.integers(1, 3)),) if form == "batched" else ()
        xq = rng.random(batch + (Lq, D)) * spread
        xk = rng.random(batch + (Lk, D)) * spread
        y = rng.standard_normal(batch + ((Lk,) if draw(st.booleans()) else (Lk, Dy)))
    if draw(st.booleans()) and xk.ndim >= 1:
        xk = np.flip(xk, 0)                                 # negative strides
    kernel = draw(st.sampled_from(["gaussian", "laplace", "epanechnikov"]))
    h = draw(st.sampled_from([0.05, 0.5, 2.0, 30.0]))
    kw = {}
    if draw(st.booleans()):
        kw["attn_mask"] = rng.random((Lq, Lk)) > 0.3
    elif kernel != "epanechnikov" and draw(st.booleans()):
        kw["attn_mask"] = rng.standard_normal((Lq, Lk)).astype(dtype)
    if draw(st.booleans()):
        kw["valid_lens"] = rng.integers(0, Lk + 1, batch + (Lq,))
    return (dtype, xq.astype(dtype), xk.astype(dtype), y.astype(dtype), h, kernel, kw,
            draw(st.integers(1, 3)), draw(st.sampled_from(LEVELS)))


@given(regression_problems())
def test_kernel_regression_matches_formula(problem):
    dtype, xq, xk, y, h, kernel, kw, threads, level = problem
    note(f"xq {xq.shape} xk {xk.shape} y {y.shape} h {h} {kernel} level {level} {list(kw)}")
    with _config.use_isa(level):
        out, w = attncore.kernel_regression(xq, xk, y, h, kernel=kernel, return_weights=True,
                                            num_threads=threads, **kw)
    ref, ref_w = kernel_regression_np(xq, xk, y, h, kernel, mask=kw.get("attn_mask"),
                                      valid_lens=kw.get("valid_lens"))
    assert out.shape == ref.shape and w.shape == ref_w.shape
    if dtype == np.float64:
        # docs/numerics.md (S3): in float64 the scores themselves are rounded,
        # so the bound grows with S, the largest |score| (natural units)
        D = 1 if xq.ndim == 1 else xq.shape[-1]
        u, n = 2.0**-53, max(xk.shape[0] if xk.ndim == 1 else xk.shape[-2], 2)
        bound = u * (2 * (D + 3) * score_scale(xq, xk, h, kernel) + 2 * np.log(n) + 12)
        Y = float(np.abs(y).max()) if y.size else 0.0
        np.testing.assert_allclose(w, ref_w, rtol=0, atol=max(bound, 1e-13))
        np.testing.assert_allclose(out, ref, rtol=0, atol=max(bound * Y, 4e-13))
        return
    check(w, ref_w, dtype)
    check(out, ref, dtype, scale=4)


def score_scale(xq, xk, h, kernel):
    """S of docs/numerics.md (S3): the largest |score| in natural units over
    all query/key pairs (a bound for every row's visible keys)."""
    q, k = np.asarray(xq, np.float64), np.asarray(xk, np.float64)
    if q.ndim == 1:                       # d2l's scalar points
        q, k = q[:, None], k[:, None]
    r2 = ((q[..., :, None, :] - k[..., None, :, :]) ** 2).sum(-1)
    if r2.size == 0:
        return 0.0
    if kernel == "laplace":
        return float(np.sqrt(r2.max()) / h)
    return float(r2.max() / (2 * h * h))   # gaussian (epanechnikov: no exp, a loose bound)
