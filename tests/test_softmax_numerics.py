"""docs/numerics.md, section "Softmax and kernel regression": one test per
statement (its number in the docstring). The oracles are exact enough to
measure the stated errors: float64 formulas for float32 results, x87
extended precision (np.longdouble) for float64 results.

`python tests/test_softmax_numerics.py` prints the measured table."""
import math

import numpy as np
import pytest

import attncore
from attncore import _config

from conftest import SUPPORTED_ISAS as LEVELS   # (not the emulated avx512bf16emu)
LONGDOUBLE_OK = np.finfo(np.longdouble).eps < np.finfo(np.float64).eps


def U(dtype):
    return 2.0 ** -24 if np.dtype(dtype) == np.float32 else 2.0 ** -53


def exact_softmax(x, mask=None):
    """Row softmax (last axis) in extended precision; masked -> 0."""
    wide = np.longdouble if LONGDOUBLE_OK else np.float64
    s = np.asarray(x).astype(wide)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    top = s.max(-1, keepdims=True)
    top = np.where(np.isneginf(top), 0, top)
    e = np.exp(s - top)
    total = e.sum(-1, keepdims=True)
    w = e / np.where(total == 0, 1, total)
    return w, np.where(np.isneginf(s), 0, s - top)


def rows(rng, dtype, n, L, scale):
    return (rng.standard_normal((n, L)) * scale).astype(dtype)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_s1_softmax_weight_bound(level, dtype):
    """(S1) every weight within u (3 |s_j - m| + 3 ln n + 48) w_j + 2^-125."""
    if dtype == np.float64 and not LONGDOUBLE_OK:
        pytest.skip("no extended precision on this platform")
    rng = np.random.default_rng(0)
    u = U(dtype)
    worst = 0.0
    for L in [1, 5, 33, 128, 1000, 4097, 20000]:
        for scale in [0.1, 3.0, 30.0]:
            x = rows(rng, dtype, 4, L, scale)
            m = rng.random(x.shape) > 0.2
            for axis, mask in ((-1, None), (-1, m), (0, None)):
                xx, mm = (x, mask) if axis == -1 else (np.ascontiguousarray(x.T), None)
                with _config.use_isa(level):
                    got = attncore.softmax(xx, axis, mask=mm)
                got = got if axis == -1 else got.T
                w, d = exact_softmax(x, mask)
                n = np.maximum(mask.sum(-1, keepdims=True) if mask is not None else np.full((4, 1), L), 1)
                bound = u * (3 * np.abs(d) + 3 * np.log(n) + 48) * w + 2.0 ** -125
                err = np.abs(got.astype(w.dtype) - w)
                assert (err <= bound).all(), (L, scale, axis, float((err / bound).max()))
                worst = max(worst, float((err / bound).max()))
    assert worst > 0.005     # the bound is not vacuous


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_s1_float_mask_adds_its_rounding(level, dtype):
    """(S1) with a float mask: x_j + mask_j is rounded to the dtype before the
    max is taken, adding (exp(u (|s_j| + max_k |s_k|)) - 1) w_j to the bound
    -- a term in |x| that rows without a float mask do not have (at 1e8 in
    float32 it is no longer small: the whole first-order term)."""
    if dtype == np.float64 and not LONGDOUBLE_OK:
        pytest.skip("no extended precision on this platform")
    rng = np.random.default_rng(5)
    u = U(dtype)
    wide = np.longdouble if LONGDOUBLE_OK else np.float64
    over_old = 0.0
    for offset in [0.0, 1e3, 1e6, 1e8]:
        for L in [2, 33, 1000]:
            x = (rng.standard_normal((4, L)) * 3 + offset).astype(dtype)
            fm = rng.standard_normal((4, L)).astype(dtype)
            with _config.use_isa(level):
                got = attncore.softmax(x, mask=fm)
            w, d = exact_softmax(x.astype(wide) + fm.astype(wide))
            s = np.abs(x.astype(wide) + fm.astype(wide))
            old = u * (3 * np.abs(d) + 3 * np.log(L) + 48) * w + 2.0 ** -125
            bound = old + np.expm1(u * (s + s.max(-1, keepdims=True))) * w
            err = np.abs(got.astype(w.dtype) - w)
            assert (err <= bound).all(), (offset, L, float((err / bound).max()))
            over_old = max(over_old, float((err / old).max()))
    assert over_old > 1   # the term is needed: the bound without it fails at the offsets


@pytest.mark.parametrize("level", LEVELS)
def test_s1_large_scores_no_magnitude_term(level):
    """(S1) the bound has no |x| term: rows offset by 1e30 (float32) or 1e300
    (float64) give the weights of the offset-free rows."""
    rng = np.random.default_rng(1)
    for dtype, big in ((np.float32, 1e30), (np.float64, 1e300)):
        x = np.array([[0.0, -1.0, -2.0, -50.0]], dtype)
        with _config.use_isa(level):
            a = attncore.softmax(x)
            b = attncore.softmax(x * 0 + np.array([[big, big, big, -big]], dtype))
        np.testing.assert_allclose(a[0, :3].sum(), 1, rtol=1e-6)
        np.testing.assert_allclose(b, [[1 / 3, 1 / 3, 1 / 3, 0]], rtol=4 * U(dtype) * 8)


@pytest.mark.parametrize("level", LEVELS)
def test_s2_masks_exact(level):
    """(S2) masked entries exactly 0; nothing kept -> zeros; NaN kept -> NaN
    row; weights of a row sum to 1 within (3 ln n + 48) u."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 300)).astype(np.float32) * 5
    m = rng.random(x.shape) > 0.5
    m[3] = False
    with _config.use_isa(level):
        w = attncore.softmax(x, mask=m)
        wv = attncore.softmax(x, valid_lens=np.arange(50) * 6)
        wn = attncore.softmax(np.where(np.eye(50, 300, dtype=bool), np.nan, x), mask=m)
    assert (w[~m] == 0).all() and (w[3] == 0).all()
    assert (wv[0] == 0).all() and all((wv[i, 6 * i:] == 0).all() for i in range(50))
    kept = m.sum(-1)
    s = w.astype(np.float64).sum(-1)
    ok = kept > 0
    assert (np.abs(s[ok] - 1) <= (3 * np.log(kept[ok]) + 48) * 2.0 ** -24).all()
    nan_rows = np.array([m[i, i] for i in range(50)])
    assert np.isnan(wn[nan_rows]).all(axis=-1).all() and not np.isnan(wn[~nan_rows]).any()


def test_s2_masked_softmax_is_exactly_d2l():
    """(S2) masked_softmax: the scores at j >= valid_len become -1e6 and take
    part as such: valid_len 0 gives exactly 1/K."""
    X = np.random.default_rng(3).standard_normal((3, 4, 7)).astype(np.float32)
    got = attncore.masked_softmax(X, np.array([0, 3, 7]))
    assert (got[0] == np.float32(1 / 7)).all()
    assert (got[1, :, 3:] == 0).all()


def regression_case(rng, dtype, n_train=2000, offset=0.0):
    x_train = np.sort(rng.random(n_train) * 5 + offset).astype(dtype)
    y_train = (2 * np.sin(x_train) + x_train ** 0.8).astype(dtype)
    x_test = np.linspace(offset, offset + 5, 300).astype(dtype)
    return x_test, x_train, y_train


def exact_regression(x_test, x_train, y_train, h):
    wide = np.longdouble if LONGDOUBLE_OK else np.float64
    q, k, y = (np.asarray(a).astype(wide) for a in (x_test, x_train, y_train))
    s = -(q[:, None] - k[None, :]) ** 2 / (2 * wide(h) * wide(h))
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return w @ y, s


@pytest.mark.parametrize("level", LEVELS)
def test_s3_kernel_regression_float32_bound(level):
    """(S3) float32: |out - exact| <= u (2 ln n + 10) Y, Y = max |y| (no term
    in the distances: they are exact differences, squared in float64)."""
    rng = np.random.default_rng(4)
    u = 2.0 ** -24
    for offset in (0.0, 100.0, 1e4):
        for h in (0.05, 0.5, 5.0):
            q, k, y = regression_case(rng, np.float32, offset=offset)
            with _config.use_isa(level):
                got = attncore.kernel_regression(q, k, y, h)
            exact, _ = exact_regression(q, k, y, h)
            bound = u * (2 * math.log(len(k)) + 10) * float(np.abs(y).max())
            err = float(np.abs(got.astype(exact.dtype) - exact).max())
            assert err <= bound, (offset, h, err, bound)


@pytest.mark.parametrize("level", LEVELS)
def test_s3_kernel_regression_float64_bound(level):
    """(S3) float64: |out - exact| <= u Y (2 (D + 3) S + 2 ln n + 12), S the
    largest |score| of the row's visible keys (the scores are rounded in
    float64 itself)."""
    if not LONGDOUBLE_OK:
        pytest.skip("no extended precision on this platform")
    rng = np.random.default_rng(5)
    u = 2.0 ** -53
    for offset in (0.0, 100.0):
        for h in (0.05, 0.5, 5.0):
            q, k, y = regression_case(rng, np.float64, offset=offset)
            with _config.use_isa(level):
                got = attncore.kernel_regression(q, k, y, h)
            exact, s = exact_regression(q, k, y, h)
            S = np.abs(s).max(-1).astype(np.float64)
            bound = u * float(np.abs(y).max()) * (2 * 4 * S + 2 * math.log(len(k)) + 12)
            err = np.abs(got - exact.astype(np.float64))
            assert (err <= bound).all(), (offset, h, float((err / bound).max()))


def test_s4_kernel_regression_beats_expansion_and_torch():
    """(S4) float32, d2l's data shifted to x in [20, 25], h = 0.2: attncore's
    error is at least 4x below the q = [x, 1], k = [x_i, -x_i^2/2] trick
    through SDPA, and below torch's float32 softmax formula."""
    rng = np.random.default_rng(6)
    q, k, y = regression_case(rng, np.float32, n_train=1000, offset=20.0)
    h = 0.2
    exact, _ = exact_regression(q, k, y, h)
    exact = exact.astype(np.float64)
    ours = float(np.abs(attncore.kernel_regression(q, k, y, h) - exact).max())
    qq = np.stack([q, np.ones_like(q)], -1)[None]
    kk = np.stack([k, -k ** 2 / 2], -1)[None]
    trick = attncore.scaled_dot_product_attention(qq, kk, y[None, :, None], scale=1 / h ** 2)[0, :, 0]
    assert 4 * ours < float(np.abs(trick - exact).max())
    torch = pytest.importorskip("torch", reason="torch is not installed")
    tq, tk, ty = (torch.from_numpy(a) for a in (q, k, y))
    ref = (torch.softmax(-(tq[:, None] - tk) ** 2 / (2 * h * h), 1) @ ty).numpy()
    assert ours < float(np.abs(ref - exact).max())


def test_s5_thread_count_bitwise():
    """(S5) results are bitwise the same for every num_threads."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 3000)).astype(np.float32)
    ref = attncore.softmax(x, 0, num_threads=1)
    for n in (2, 4):
        np.testing.assert_array_equal(attncore.softmax(x, 0, num_threads=n), ref)
    q, k, y = regression_case(rng, np.float32)
    ref = attncore.kernel_regression(q, k, y, 0.3, num_threads=1)
    np.testing.assert_array_equal(attncore.kernel_regression(q, k, y, 0.3, num_threads=3), ref)


def measured_table():
    """Max |error| against extended precision (the docs' table)."""
    import scipy.special
    import torch
    rng = np.random.default_rng(0)
    lines = []
    for shape, axis, scale in [((1024, 1024), -1, 1.0), ((1024, 1024), 0, 1.0), ((64, 8192), -1, 10.0)]:
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        ex, _ = exact_softmax(np.moveaxis(x, axis, -1))
        ex = np.moveaxis(ex, -1, axis).astype(np.float64)
        errs = dict(attncore=attncore.softmax(x, axis), scipy=scipy.special.softmax(x, axis=axis),
                    torch=torch.softmax(torch.from_numpy(x), axis).numpy())
        lines.append((f"softmax {shape} axis={axis} N(0,{scale**2:g})",
                      {k: float(np.abs(v - ex).max()) for k, v in errs.items()}))
    for offset in (0.0, 20.0):
        q, k, y = regression_case(rng, np.float32, n_train=1000, offset=offset)
        h = 0.2
        ex, _ = exact_regression(q, k, y, h)
        ex = ex.astype(np.float64)
        tq, tk, ty = (torch.from_numpy(a) for a in (q, k, y))
        qq, kk = np.stack([q, np.ones_like(q)], -1)[None], np.stack([k, -k ** 2 / 2], -1)[None]
        errs = dict(attncore=attncore.kernel_regression(q, k, y, h),
                    torch=(torch.softmax(-(tq[:, None] - tk) ** 2 / (2 * h * h), 1) @ ty).numpy(),
                    expansion=attncore.scaled_dot_product_attention(qq, kk, y[None, :, None],
                                                                    scale=1 / h ** 2)[0, :, 0])
        lines.append((f"kernel_regression d2l x in [{offset:g}, {offset + 5:g}] h=0.2",
                      {k: float(np.abs(v - ex).max()) for k, v in errs.items()}))
    return lines


if __name__ == "__main__":
    for name, errs in measured_table():
        print(name, "  ".join(f"{k} {v:.2e}" for k, v in errs.items()))
