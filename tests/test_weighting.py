"""Other weightings than the softmax (attncore/weighting.py): sigmoid
attention -- against the pure-Python reference, the textbook NumPy formula
and torch's, on the panel, rows and split-K paths (asserted), with masks,
weights, dropout, fully masked rows, guard pages and thread counts."""
import numpy as np
import pytest

import attncore
from attncore import reference as R

from _guard import guarded_allocations, guarded_copy
from _paths import assert_plan
from _tolerances import assert_close

SIG = attncore.sigmoid_attention


def data(rng, dtype, B=2, Hq=4, Hkv=2, Lq=9, Lk=40, D=8, Dv=8):
    return (rng.standard_normal((B, Hq, Lq, D)).astype(dtype),
            rng.standard_normal((B, Hkv, Lk, D)).astype(dtype),
            rng.standard_normal((B, Hkv, Lk, Dv)).astype(dtype))


def sigmoid_formula(q, k, v, bias=0.0, mask=None, causal=False):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    G = q.shape[-3] // k.shape[-3]
    k, v = np.repeat(k, G, axis=-3), np.repeat(v, G, axis=-3)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1]) + bias
    w = 1 / (1 + np.exp(-s))
    if mask is not None:
        w = np.where(mask, w, 0)
    if causal:
        Lq, Lk = s.shape[-2:]
        w = np.where(np.arange(Lk)[None] <= np.arange(Lq)[:, None] + Lk - Lq, w, 0)
    return w @ v, w


@pytest.mark.parametrize("kw", [dict(), dict(bias=-2.0, is_causal=True), dict(mask=True),
                                dict(dropout_p=0.3, seed=5), dict(window=(5, 0), alibi_slopes=np.ones(4) / 8)])
@pytest.mark.parametrize("shape", [dict(Lq=9, Lk=40), dict(Lq=1, Lk=300), dict(Lq=70, Lk=300)],
                         ids=["small", "decode", "panel"])
def test_sigmoid_against_reference(isa, dtype, kw, shape):
    rng = np.random.default_rng(shape["Lk"])
    q, k, v = data(rng, dtype, **shape)
    kw = dict(kw)
    if kw.pop("mask", False):
        kw["attn_mask"] = rng.random((shape["Lq"], shape["Lk"])) > 0.5
    fast = SIG(q, k, v, enable_gqa=True, return_weights=True, **kw)
    ref = R.sigmoid_attention(q, k, v, enable_gqa=True, return_weights=True, **kw)
    # outputs are sums of up to Lk unnormalised terms: scale the tolerance
    assert_close(fast[0], ref[0], "sdpa", dtype, scale=np.sqrt(shape["Lk"]))
    assert_close(fast[1], ref[1], "weights", dtype)


@pytest.mark.parametrize("path", ["panel", "rows-split"])
def test_sigmoid_against_numpy_and_torch(isa, path):
    rng = np.random.default_rng(1)
    if path == "panel":
        q, k, v = data(rng, np.float32, B=1, Lq=257, Lk=513, D=64, Dv=64)
        expect = dict(path="panel")
    else:
        q, k, v = data(rng, np.float32, B=1, Hq=4, Hkv=2, Lq=1, Lk=3000, D=64, Dv=64)
        expect = dict(path="rows", split=True)
    kw = dict(bias=-np.log(k.shape[-2]), is_causal="bottom_right")
    assert_plan(SIG, q, k, v, enable_gqa=True, **expect, **kw)
    out = SIG(q, k, v, enable_gqa=True, **kw)
    ref, _ = sigmoid_formula(q, k, v, bias=kw["bias"], causal=True)
    assert_close(out, ref, "sdpa", np.float32, scale=4.0)
    torch = pytest.importorskip("torch")
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    G = q.shape[1] // k.shape[1]
    tk, tv = tk.repeat_interleave(G, 1), tv.repeat_interleave(G, 1)
    s = tq @ tk.transpose(-1, -2) / 8 + kw["bias"]
    Lq, Lk = s.shape[-2:]
    s = s.masked_fill(torch.arange(Lk)[None] > torch.arange(Lq)[:, None] + Lk - Lq, -torch.inf)
    assert_close(out, (torch.sigmoid(s) @ tv).double().numpy(), "sdpa", np.float32, scale=4.0)


def test_sigmoid_masked_rows_nan_and_threads():
    rng = np.random.default_rng(2)
    q, k, v = data(rng, np.float32, Lq=6, Lk=300)
    mask = np.ones((6, 300), bool)
    mask[2] = False
    out, w = SIG(q, k, v, enable_gqa=True, attn_mask=mask, return_weights=True)
    assert (out[:, :, 2] == 0).all() and (w[:, :, 2] == 0).all()
    q[0, 0, 4, 0] = np.nan
    out = SIG(q, k, v, enable_gqa=True)
    assert np.isnan(out[0, 0, 4]).all() and not np.isnan(out[0, 0, [0, 1, 2, 3, 5]]).any()
    q = q[:, :, :1]
    base = SIG(q, k, v, enable_gqa=True, num_threads=1)
    for n in (2, 3, 5):
        np.testing.assert_array_equal(SIG(q, k, v, enable_gqa=True, num_threads=n), base)


def test_sigmoid_guard_pages_and_errors(isa):
    rng = np.random.default_rng(3)
    for where in ("end", "start"):
        q, k, v = (guarded_copy(x, where) for x in data(rng, np.float32, Lq=3, Lk=131, D=5, Dv=7))
        with guarded_allocations():
            out, w = SIG(q, k, v, enable_gqa=True, return_weights=True, is_causal=True)
        assert_close(out, R.sigmoid_attention(q, k, v, enable_gqa=True, is_causal=True), "sdpa",
                     np.float32, scale=4.0)
    with pytest.raises(TypeError, match="bias"):
        SIG(q, k, v, enable_gqa=True, bias="x")
