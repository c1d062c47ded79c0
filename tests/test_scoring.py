"""general / additive / concat attention against attncore.reference and a
float64 NumPy formula, on every ISA and dtype; the vector tanh's bound."""
import numpy as np
import pytest

import attncore
from attncore import _config, _core
from attncore import reference as R

from _oracle import sdpa_numpy
from _paths import assert_plan
from _tolerances import assert_close
from conftest import SUPPORTED_ISAS


def data(rng, dtype, B=(2,), H=2, Lq=5, Lk=7, Dq=6, Dk=4, Dv=3):
    return (rng.standard_normal(B + (H, Lq, Dq)).astype(dtype),
            rng.standard_normal(B + (H, Lk, Dk)).astype(dtype),
            rng.standard_normal(B + (H, Lk, Dv)).astype(dtype))


def compare(fast, ref, dtype, op="sdpa"):
    kinds = ["sdpa", "weights", "lse"]
    fast = fast if isinstance(fast, tuple) else (fast,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    for n, (a, b) in enumerate(zip(fast, ref)):
        assert a.shape == b.shape and a.dtype == dtype
        assert_close(a, b, kinds[n] if op == "sdpa" else op, dtype, err_msg=f"output {n}")


OPTIONS = [dict(), dict(is_causal=True), dict(is_causal="bottom_right"), dict(valid_lens="batch"),
           dict(valid_lens="row"), dict(attn_mask="bool"), dict(attn_mask="float")]


def options(rng, opts, dtype, B=2, Lq=5, Lk=7):
    opts = dict(opts)
    if opts.get("valid_lens") == "batch":
        opts["valid_lens"] = np.array([Lk, 2][:B])
    elif opts.get("valid_lens") == "row":
        opts["valid_lens"] = rng.integers(0, Lk + 1, size=(B, Lq))
    if opts.get("attn_mask") == "bool":
        opts["attn_mask"] = rng.random((Lq, Lk)) > 0.3
    elif opts.get("attn_mask") == "float":
        opts["attn_mask"] = rng.standard_normal((B, 1, Lq, Lk)).astype(dtype)
    return opts


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_general_matches_reference(isa, dtype, rng, opts):
    q, k, v = data(rng, dtype)
    W = rng.standard_normal((6, 4)).astype(dtype)
    kw = options(rng, opts, dtype)
    fast = attncore.general_attention(q, k, v, W, scale=0.7, return_weights=True, return_lse=True, **kw)
    ref = R.general_attention(q, k, v, W, scale=0.7, return_weights=True, return_lse=True, **kw)
    compare(fast, ref, dtype)


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("magnitude", [1.0, 30.0], ids=["product-form", "tanh-form"])
def test_additive_matches_reference(isa, dtype, rng, opts, magnitude):
    """magnitude 30 pushes |W_q q| past the product form's range, so the
    kernel takes its general tanh path; both are checked."""
    q, k, v = data(rng, dtype, Lk=40)
    Wq = (rng.standard_normal((9, 6)) * magnitude).astype(dtype)
    Wk = rng.standard_normal((9, 4)).astype(dtype)
    w, b = rng.standard_normal(9).astype(dtype), rng.standard_normal(9).astype(dtype)
    kw = options(rng, opts, dtype, Lk=40)
    assert_plan(attncore.additive_attention, q, k, v, Wq, Wk, w, b, return_weights=True,
                additive="product" if magnitude == 1.0 else "tanh", **kw)
    fast = attncore.additive_attention(q, k, v, Wq, Wk, w, b, return_weights=True, return_lse=True, **kw)
    ref = R.additive_attention(q, k, v, Wq, Wk, w, b, return_weights=True, return_lse=True, **kw)
    compare(fast, ref, dtype)


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_concat_matches_reference(isa, dtype, rng, opts):
    q, k, v = data(rng, dtype)
    wq, wk = rng.standard_normal(6).astype(dtype), rng.standard_normal(4).astype(dtype)
    kw = options(rng, opts, dtype)
    fast = attncore.concat_attention(q, k, v, wq, wk, 0.25, return_weights=True, return_lse=True, **kw)
    ref = R.concat_attention(q, k, v, wq, wk, 0.25, return_weights=True, return_lse=True, **kw)
    compare(fast, ref, dtype)


def additive_numpy(q, k, v, Wq, Wk, w, b):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    qp = q @ np.asarray(Wq, np.float64).T + b
    kp = k @ np.asarray(Wk, np.float64).T
    s = np.tanh(qp[..., :, None, :] + kp[..., None, :, :]) @ np.asarray(w, np.float64)
    s = np.exp(s - s.max(-1, keepdims=True))
    return (s / s.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("shape", [(1, 1, 300, 257, 64, 64), (2, 2, 33, 130, 16, 100)])
def test_additive_larger_against_numpy(isa, dtype, shape):
    B, Hh, Lq, Lk, D, H = shape
    rng = np.random.default_rng(7)
    q = rng.standard_normal((B, Hh, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, Hh, Lk, D)).astype(dtype)
    v = rng.standard_normal((B, Hh, Lk, D)).astype(dtype)
    Wq, Wk = ((rng.standard_normal((H, D)) / np.sqrt(D)).astype(dtype) for _ in range(2))
    w, b = rng.standard_normal(H).astype(dtype), rng.standard_normal(H).astype(dtype)
    out = attncore.additive_attention(q, k, v, Wq, Wk, w, b)
    ref = additive_numpy(q, k, v, Wq, Wk, w, b)
    # scores sum H terms with an absolute tanh error each: scale by sqrt(H) |w|
    assert_close(out, ref, "sdpa", dtype, scale=np.sqrt(H))


def test_general_and_concat_against_sdpa_formula(isa, dtype, rng):
    q, k, v = data(rng, dtype, B=(1,), Lq=200, Lk=301, Dq=32, Dk=16, Dv=8)
    W = rng.standard_normal((32, 16)).astype(dtype) / 8
    out = attncore.general_attention(q, k, v, W, is_causal=True)
    ref, _, _ = sdpa_numpy(q.astype(np.float64) @ W, k, v, causal_offset=0, scale=1.0)
    assert_close(out, ref, "sdpa", dtype)
    wq, wk = rng.standard_normal(32).astype(dtype), rng.standard_normal(16).astype(dtype)
    out = attncore.concat_attention(q, k, v, wq, wk, 2.0)
    c = k.astype(np.float64) @ wk
    w = np.exp(c - c.max(-1, keepdims=True))
    ref = (w / w.sum(-1, keepdims=True))[..., None, :] @ v
    assert_close(out, np.broadcast_to(ref, out.shape), "sdpa", dtype)


def test_general_infinite_key_matches_the_reference(isa, dtype, rng):
    """An infinite key component gives the score (q W) k = +-inf, as the
    definition (SDPA on the projected query) says: -inf hides the key in
    its row, +inf makes the row NaN. The reference projects the query first
    too (it used to form W k first: inf - inf, NaN everywhere)."""
    q, k, v = data(rng, dtype, B=(1,), H=1, Lq=8, Lk=5, Dq=4, Dk=4)
    W = rng.standard_normal((4, 4)).astype(dtype)
    k[0, 0, 2, 1] = np.inf
    out, lse = attncore.general_attention(q, k, v, W, return_lse=True)
    ref, ref_lse = R.general_attention(q, k, v, W, return_lse=True)
    nan = np.isnan(ref)
    assert nan.any(axis=-1).any() and (~nan).all(axis=-1).any()   # both kinds of rows
    np.testing.assert_array_equal(np.isnan(out), nan)
    np.testing.assert_array_equal(np.isnan(lse), np.isnan(ref_lse))
    assert_close(out[~nan], ref[~nan], "sdpa", dtype)


def test_additive_nan_and_inf_propagate(isa, dtype, rng):
    q, k, v = data(rng, dtype, B=(1,), Lq=3, Lk=4)
    Wq, Wk = rng.standard_normal((5, 6)).astype(dtype), rng.standard_normal((5, 4)).astype(dtype)
    w = rng.standard_normal(5).astype(dtype)
    q[0, 0, 1, 2] = np.nan
    k[0, 1, 2, 0] = np.inf
    out = attncore.additive_attention(q, k, v, Wq, Wk, w)
    ref = R.additive_attention(q, k, v, Wq, Wk, w)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    fin = ~np.isnan(ref)
    np.testing.assert_allclose(out[fin], ref[fin], rtol=1e-4, atol=1e-5)


def test_additive_does_not_materialise(dtype):
    """B=2, Lq=Lk=1024, H=256 would need 2 GiB (float32) for (Lq, Lk, H)."""
    import resource
    import subprocess
    import sys
    code = f"""
import resource, numpy as np, attncore
rng = np.random.default_rng(0)
q = rng.standard_normal((2, 1, 1024, 64)).astype(np.{np.dtype(dtype).name})
Wq = rng.standard_normal((256, 64)).astype(q.dtype) / 8
w = rng.standard_normal(256).astype(q.dtype)
attncore.additive_attention(q[:, :, :8], q[:, :, :8], q[:, :, :8], Wq, Wq, w)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
attncore.additive_attention(q, q, q, Wq, Wq, w)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) < 64, f"peak memory grew by {r.stdout.strip()} MiB"


@pytest.mark.parametrize("level", SUPPORTED_ISAS)
def test_vector_tanh_error_bound(level):
    """vmath.h: absolute error <= 4e-7 over the real line; exact at 0, +-inf; NaN kept."""
    isa = _config.ISA_NAMES.index(level)
    x = np.concatenate([np.linspace(-30, 30, 1_200_001, dtype=np.float32),
                        np.float32(np.random.default_rng(0).standard_normal(500_000) * 3)])
    y = np.empty_like(x)
    _core.vtanh_f32(isa, x, y)
    err = np.abs(y - np.tanh(x.astype(np.float64)))
    assert err.max() <= 4e-7, f"max error {err.max():.2e} at x={x[err.argmax()]}"
    special = np.array([np.inf, -np.inf, 0.0, -0.0, 23.0, -23.0, 1e30, -1e30, np.nan], np.float32)
    y = np.empty_like(special)
    _core.vtanh_f32(isa, special, y)
    np.testing.assert_array_equal(y[:8], [1, -1, 0, 0, 1, -1, 1, -1])
    assert np.isnan(y[8])


@pytest.mark.parametrize("fn,args,exc,words", [
    ("general", dict(weight=np.ones((5, 4))), ValueError, ["weight", "(6, 4)", "(5, 4)"]),
    ("general", dict(weight=np.ones((6, 4), np.float32)), TypeError, ["mixed"]),
    ("additive", dict(w_query=np.ones((9, 5)), w_key=np.ones((9, 4)), w_score=np.ones(9)), ValueError, ["w_query"]),
    ("additive", dict(w_query=np.ones((9, 6)), w_key=np.ones((8, 4)), w_score=np.ones(9)), ValueError, ["w_key", "(9, 4)"]),
    ("additive", dict(w_query=np.ones((9, 6)), w_key=np.ones((9, 4)), w_score=np.ones(8)), ValueError, ["w_score", "(9,)"]),
    ("additive", dict(w_query=np.ones((9, 6)), w_key=np.ones((9, 4)), w_score=np.ones(9), bias=np.ones(3)), ValueError, ["bias", "(9,)"]),
    ("additive", dict(w_query=np.ones(9), w_key=np.ones((9, 4)), w_score=np.ones(9)), ValueError, ["w_query"]),
    ("concat", dict(w_query=np.ones(5), w_key=np.ones(4)), ValueError, ["w_query", "(6,)"]),
    ("concat", dict(w_query=np.ones(6), w_key=np.ones(4), bias="x"), TypeError, ["bias"]),
    ("concat", dict(w_query=np.ones(6), w_key=np.ones(4), valid_lens=np.array([9, 1])), ValueError, ["valid_lens"]),
])
def test_bad_weights(fn, args, exc, words):
    q, k, v = np.ones((2, 2, 5, 6)), np.ones((2, 2, 7, 4)), np.ones((2, 2, 7, 3))
    f = {"general": attncore.general_attention, "additive": attncore.additive_attention,
         "concat": attncore.concat_attention}[fn]
    with pytest.raises(exc) as info:
        f(q, k, v, **args)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("fn", ["general", "additive", "concat"])
def test_dropout_and_scale_across_the_family(isa, dtype, rng, fn):
    """dropout_p / seed on every scoring function (the counter RNG of SDPA:
    the reference reproduces it bit for bit), scale on additive and concat."""
    q, k, v = data(rng, dtype, Lk=40)
    kw = dict(dropout_p=0.3, seed=7, return_weights=True, is_causal=True)
    if fn == "general":
        W = rng.standard_normal((6, 4)).astype(dtype)
        args, kw["scale"] = (q, k, v, W), 0.5
        fast, ref = attncore.general_attention(*args, **kw), R.general_attention(*args, **kw)
    elif fn == "additive":
        Wq, Wk = rng.standard_normal((9, 6)).astype(dtype), rng.standard_normal((9, 4)).astype(dtype)
        w = rng.standard_normal(9).astype(dtype)
        args, kw["scale"] = (q, k, v, Wq, Wk, w), 1.7
        fast, ref = attncore.additive_attention(*args, **kw), R.additive_attention(*args, **kw)
    else:
        wq, wk = rng.standard_normal(6).astype(dtype), rng.standard_normal(4).astype(dtype)
        args, kw["scale"] = (q, k, v, wq, wk, 0.25), -0.8
        fast, ref = attncore.concat_attention(*args, **kw), R.concat_attention(*args, **kw)
    compare(fast, ref, dtype)
    assert (fast[1] == 0).any()   # some weights were dropped


def test_empty_feature_dims_match_the_reference():
    """Dq = Dk = 0 (every score is the empty sum, or the bias): as SDPA and the
    reference take it, not numpy's reshape error."""
    rng = np.random.default_rng(5)
    q0 = rng.standard_normal((2, 3, 5, 0)).astype(np.float32)
    k0 = rng.standard_normal((2, 3, 7, 0)).astype(np.float32)
    k = rng.standard_normal((2, 3, 7, 4)).astype(np.float32)
    v = rng.standard_normal((2, 3, 7, 3)).astype(np.float32)
    none = np.zeros((8, 0), np.float32)
    calls = [("general_attention", (q0, k, v, np.zeros((0, 4), np.float32))),
             ("additive_attention", (q0, k0, v, none, none, np.ones(8, np.float32))),
             ("concat_attention", (q0, k0, v, np.zeros(0, np.float32), np.zeros(0, np.float32)))]
    for name, args in calls:
        got = getattr(attncore, name)(*args)
        np.testing.assert_allclose(got, getattr(attncore.reference, name)(*args), atol=1e-6)


def test_a_transposed_weight_is_named_as_such():
    rng = np.random.default_rng(6)
    q = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    k = rng.standard_normal((2, 3, 7, 4)).astype(np.float32)
    v = rng.standard_normal((2, 3, 7, 3)).astype(np.float32)
    Wq, Wk, w = (rng.standard_normal(s).astype(np.float32) for s in ((8, 6), (8, 4), (8,)))
    with pytest.raises(ValueError, match=r"w_query must have shape \(8, 6\); got \(6, 8\) \(its transpose: pass w_query.T\)"):
        attncore.additive_attention(q, k, v, Wq.T, Wk, w)


@pytest.mark.parametrize("shift", ["bias", "query"])
def test_concat_large_row_term_does_not_swamp_the_keys(shift):
    """The softmax cancels a_i + b: the weights depend on c_j = k_j . w_key
    only, however large a_i + b is (it used to be added to c_j in float32
    first: bias 1e8 gave uniform weights); lse still carries it."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    k = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    v = rng.standard_normal((1, 2, 5, 3)).astype(np.float32)
    wq, wk = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    bias = 1e8 if shift == "bias" else 0.5
    if shift == "query":
        q = q * np.float32(1e6)
    out, w, lse = attncore.concat_attention(q, k, v, wq, wk, bias, return_weights=True,
                                            return_lse=True)
    c = k.astype(np.float64) @ wk.astype(np.float64)              # (1, 2, 5)
    a = q.astype(np.float64) @ wq.astype(np.float64) + bias       # (1, 2, 3)
    want_w = np.exp(c - c.max(-1, keepdims=True))
    want_w = np.broadcast_to((want_w / want_w.sum(-1, keepdims=True))[:, :, None, :], w.shape)
    np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, want_w @ v.astype(np.float64), rtol=1e-5, atol=1e-5)
    want_lse = a + np.log(np.exp(c - c.max(-1, keepdims=True)).sum(-1))[:, :, None] + c.max(-1)[:, :, None]
    np.testing.assert_allclose(lse, want_lse, rtol=1e-6)


@pytest.mark.parametrize("scale", [1.0, -1.0])
def test_concat_non_finite_row_term_is_not_cancelled(scale):
    """A non-finite a_i + b reaches the kernel as it is: a score of -inf on
    every key is a row that sees no key (zeros, lse -inf), +inf or NaN a
    NaN row, as the reference gives; other rows are untouched, and nothing
    warns."""
    q = np.array([[[1.0, 0.0], [np.inf, 0.0], [-np.inf, 0.0], [np.nan, 0.0]]], np.float32)
    k = np.array([[[1.0, 2.0], [0.0, -1.0]]], np.float32)
    v = np.array([[[1.0], [3.0]]], np.float32)
    wq, wk = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, lse = attncore.concat_attention(q, k, v, wq, wk, scale=scale, return_lse=True)
    rout, rlse = R.concat_attention(q, k, v, wq, wk, scale=scale, return_lse=True)
    hidden, nan = (2, 1) if scale > 0 else (1, 2)
    assert (out[0, hidden] == 0).all() and lse[0, hidden] == -np.inf
    assert np.isnan(out[0, nan]).all() and np.isnan(out[0, 3]).all()
    np.testing.assert_allclose(out, rout, rtol=1e-6)
    np.testing.assert_allclose(lse, rlse, rtol=1e-6)


def test_concat_lse_of_a_row_without_keys_stays_minus_inf():
    """A masked-out row has lse -inf whatever a_i + b adds (not NaN)."""
    q = np.ones((1, 2, 2), np.float32); k = np.ones((1, 3, 2), np.float32)
    v = np.ones((1, 3, 1), np.float32)
    out, lse = attncore.concat_attention(q, k, v, np.ones(2, np.float32), np.ones(2, np.float32),
                                         bias=5.0, valid_lens=np.array([0]), return_lse=True)
    assert (lse == -np.inf).all() and not out.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_concat_lse_of_a_row_without_keys_stays_minus_inf_when_the_shift_overflows(dtype):
    """scale x (a_i + b) past float64's range is inf: a row with keys has lse
    inf (its true lse is past the range too), a row without keys keeps -inf
    (-inf + inf made it NaN)."""
    q = np.ones((1, 2, 3), dtype); k = np.ones((1, 4, 3), dtype); v = np.ones((1, 4, 2), dtype)
    mask = np.array([[True] * 4, [False] * 4])
    out, lse = attncore.concat_attention(q, k, v, np.ones(3, dtype), np.ones(3, dtype), bias=1e300,
                                         scale=1e10, attn_mask=mask, return_lse=True)
    assert lse[0, 0] == np.inf and lse[0, 1] == -np.inf
    assert not out[0, 1].any() and (out[0, 0] == 1).all()


def test_additive_scale_beyond_float32_folds_in_float64():
    """scale x w_score is formed in float64: scale = 1e39 with a subnormal
    w_score is an ordinary product of about 1 (scale cast to float32 first
    was inf, and the output NaN)."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 3, 4)).astype(np.float32)
    k = rng.standard_normal((1, 5, 4)).astype(np.float32)
    v = rng.standard_normal((1, 5, 2)).astype(np.float32)
    Wq, Wk = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(2))
    w = np.full(3, 1e-39, np.float32)
    got = attncore.additive_attention(q, k, v, Wq, Wk, w, scale=1e39)
    np.testing.assert_allclose(got, R.additive_attention(q, k, v, Wq, Wk, w, scale=1e39), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_additive_scale_times_w_score_range(dtype):
    """Each |scale w_h| below L = finfo.max / (2 log2 e) and sum_h |scale w_h|
    below 2L (less the sum's rounding) runs and matches the reference; past
    either (or with an infinite w_h) it is a ValueError, where the kernel's
    log2-unit factors or scores overflowed (rows of zeros or NaN)."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in ((1, 1, 3, 4), (1, 1, 6, 4), (1, 1, 6, 2)))
    Wq, Wk = (rng.standard_normal((2, 4)).astype(dtype) for _ in range(2))
    limit = float(np.finfo(dtype).max) / (2 * np.log2(np.e))
    w = np.array([0.99, 0.99], dtype) * dtype(limit)   # each below the limit, the sum below twice it
    got = attncore.additive_attention(q, k, v, Wq, Wk, w)
    want = R.additive_attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                                Wq.astype(np.float64), Wk.astype(np.float64), w.astype(np.float64))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for bad, scale in ((np.array([1.01, 0.0], dtype) * dtype(limit), 1.0), (np.array([1.0, 1.0], dtype), 1.01 * limit),
                       (np.array([np.inf, 1.0], dtype), 1.0)):
        with pytest.raises(ValueError, match="scale \\* w_score is too large"):
            attncore.additive_attention(q, k, v, Wq, Wk, bad, scale=scale)
    # heads of both signs: |sum_h w_h| is small, but a key whose tanh takes
    # each head's sign scores sum_h |w_h| (its row was NaN inside the old
    # limits, which bounded |sum_h w_h|)
    q1, k1, v1 = np.ones((1, 1, 1, 1), dtype), np.array([1.0, -1.0], dtype).reshape(1, 1, 2, 1), \
        np.array([1.0, 2.0], dtype).reshape(1, 1, 2, 1)
    W = np.array([[5.0], [5.0], [5.0], [-5.0]], dtype)
    for m in (0.45, 0.55):
        w = np.array([m, m, m, -m]) * limit        # sum |w_h| = 4m L, |sum w_h| = 2m L
        if 4 * m < 2:
            got = attncore.additive_attention(q1, k1, v1, W, W, w.astype(dtype))
            assert np.array_equal(got, np.ones_like(got)), got   # key 0 takes every weight
        else:
            with pytest.raises(ValueError, match="sum_h \\|scale w_h\\| = "):
                attncore.additive_attention(q1, k1, v1, W, W, w.astype(dtype))
