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


# -- hard attention ---------------------------------------------------------------

HARD = attncore.hard_attention
HARD_CASES = [dict(mode="argmax"), dict(mode="topk", k=5), dict(mode="sample", seed=3),
              dict(mode="sample", k=4, seed=9), dict(mode="topk", k=3, is_causal=True, mask=True),
              dict(mode="argmax", window=(30, 0), is_causal="bottom_right")]


@pytest.mark.parametrize("kw", HARD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("shape", [dict(Lq=9, Lk=40), dict(Lq=1, Lk=300), dict(Lq=70, Lk=300)],
                         ids=["small", "decode", "panel"])
def test_hard_against_reference_float64(isa, kw, shape):
    """float64: the same keys as the reference (ties to the smaller key), the
    same values (argmax / sample) or softmax mix (topk)."""
    rng = np.random.default_rng(shape["Lk"] + len(kw))
    q, k, v = data(rng, np.float64, Dv=5, **shape)
    kw = dict(kw)
    if kw.pop("mask", False):
        kw["attn_mask"] = rng.random((shape["Lq"], shape["Lk"])) > 0.5
    out, idx = HARD(q, k, v, enable_gqa=True, return_indices=True, **kw)
    ref, ref_idx = R.hard_attention(q, k, v, enable_gqa=True, return_indices=True, **kw)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("mode", ["argmax", "topk"])
def test_hard_float32_picks_the_best_keys(isa, mode):
    """float32 scores round differently from float64 near ties: the kept keys
    are the best up to that rounding, and the output is their values' mix."""
    rng = np.random.default_rng(4)
    q, k, v = data(rng, np.float32, Lq=33, Lk=500, Dv=6)
    kk = 1 if mode == "argmax" else 4
    out, idx = HARD(q, k, v, mode=mode, k=kk, enable_gqa=True, return_indices=True)
    s = (q.astype(np.float64) @ np.repeat(k, 2, axis=1).astype(np.float64).swapaxes(-1, -2)) / np.sqrt(8)
    best = -np.sort(-s, axis=-1)[..., :kk]
    got = np.take_along_axis(s, idx, axis=-1)
    np.testing.assert_allclose(got, best, atol=1e-5)
    vv = np.repeat(v, 2, axis=1).astype(np.float64)
    picked = np.take_along_axis(vv[:, :, None], idx[..., None], axis=-2)   # (B, H, Lq, k, Dv)
    w = np.exp(got - got[..., :1]) if mode == "topk" else np.ones_like(got)
    w /= w.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, (w[..., None] * picked).sum(-2), rtol=1e-5, atol=1e-5)


def test_hard_topk_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    q, k, v = (torch.from_numpy(x) for x in data(rng, np.float64, B=1, Hq=2, Hkv=2, Lq=20, Lk=100, Dv=3))
    s = q @ k.transpose(-1, -2) / np.sqrt(8)
    top, ti = torch.topk(s, 6, dim=-1)
    ref = (torch.softmax(top, -1)[..., None] * v[:, :, None].expand(-1, -1, 20, -1, -1).gather(
        3, ti[..., None].expand(-1, -1, -1, -1, 3))).sum(-2)
    out, idx = HARD(q, k, v, mode="topk", k=6, return_indices=True)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(idx, ti)
    torch.testing.assert_close(out, ref)


def test_hard_sample_draws_from_the_softmax():
    """Gumbel-max with the counter RNG: over many rows with the same scores,
    the drawn keys follow softmax(scores) (within 4.5 sigma per key), and
    the draw depends only on (seed, row, key)."""
    n, logits = 40000, np.array([0.0, 1.0, 2.0, -1.0, 0.5])
    q = np.ones((1, 1, n, 1)) * np.sqrt(1.0)      # score = logits_j (scale 1, D 1)
    k = logits.reshape(1, 1, 5, 1)
    v = np.arange(5.0).reshape(1, 1, 5, 1)
    out, idx = HARD(q, k, v, mode="sample", seed=11, scale=1.0, return_indices=True)
    freq = np.bincount(idx.ravel(), minlength=5) / n
    p = np.exp(logits) / np.exp(logits).sum()
    assert (np.abs(freq - p) < 4.5 * np.sqrt(p * (1 - p) / n)).all(), (freq, p)
    np.testing.assert_array_equal(out[..., 0], idx[..., 0].astype(float))
    again = HARD(q[:, :, :100], k, v, mode="sample", seed=11, scale=1.0, return_indices=True, num_threads=1)
    np.testing.assert_array_equal(again[1], idx[:, :, :100])   # row counters, not call order
    other = HARD(q, k, v, mode="sample", seed=12, scale=1.0, return_indices=True)[1]
    assert (other != idx).mean() > 0.3


def test_hard_masked_rows_nan_threads_and_guard_pages():
    rng = np.random.default_rng(6)
    q, k, v = data(rng, np.float32, Lq=5, Lk=140, Dv=3)
    mask = np.ones((5, 140), bool)
    mask[1] = False
    out, idx = HARD(q, k, v, mode="topk", k=3, enable_gqa=True, attn_mask=mask, return_indices=True)
    assert (out[:, :, 1] == 0).all() and (idx[:, :, 1] == -1).all()
    few = np.zeros((5, 140), bool)
    few[:, :2] = True                                  # fewer visible keys than k
    _, idx = HARD(q, k, v, mode="topk", k=3, enable_gqa=True, attn_mask=few, return_indices=True)
    assert (idx[..., 2] == -1).all() and (idx[..., :2] >= 0).all()
    qn = q.copy()
    qn[0, 0, 2, 0] = np.nan
    out = HARD(qn, k, v, enable_gqa=True)
    assert np.isnan(out[0, 0, 2]).all() and not np.isnan(out[0, 0, [0, 1, 3, 4]]).any()
    base = HARD(q, k, v, mode="sample", k=2, seed=1, enable_gqa=True, num_threads=1)
    for n in (2, 3):
        np.testing.assert_array_equal(HARD(q, k, v, mode="sample", k=2, seed=1, enable_gqa=True,
                                           num_threads=n), base)
    for where in ("end", "start"):
        gq, gk, gv = (guarded_copy(x, where) for x in (q, k, v))
        with guarded_allocations():
            o, i = HARD(gq, gk, gv, mode="topk", k=4, enable_gqa=True, return_indices=True)
        r, ri = R.hard_attention(gq, gk, gv, mode="topk", k=4, enable_gqa=True, return_indices=True)
        assert_close(o, r, "sdpa", np.float32)


@pytest.mark.parametrize("bad,err,words", [
    (dict(mode="max"), ValueError, ["mode"]),
    (dict(mode="argmax", k=2), ValueError, ["topk", "k=2"]),
    (dict(mode="topk", k=0), ValueError, ["k must be an int in [1, 64]"]),
    (dict(mode="topk", k=65), ValueError, ["[1, 64]"]),
    (dict(mode="topk", k=2.0), TypeError, ["k must be an int", "float 2.0"]),
    (dict(mode="topk", k=True), TypeError, ["k must be an int", "bool"]),
    (dict(mode="sample", seed=-1), ValueError, ["seed"]),
])
def test_hard_errors(bad, err, words):
    q = k = v = np.ones((1, 2, 3, 4), np.float32)
    with pytest.raises(err) as info:
        HARD(q, k, v, **bad)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("mode,k", [("argmax", 1), ("topk", 2), ("sample", 2)])
def test_hard_nan_score_row_keeps_no_key(mode, k):
    """A row with a NaN score is NaN and its indices are -1, as in the
    reference (they were the best non-NaN keys, which are not its output);
    rows without NaN keep their keys."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, 3, 4)).astype(np.float32)
    kk = rng.standard_normal((1, 1, 6, 4)).astype(np.float32)
    v = rng.standard_normal((1, 1, 6, 2)).astype(np.float32)
    kk[0, 0, 3, 0] = np.nan          # every row sees key 3's NaN score...
    q[0, 0, 2] = 0.0
    q[0, 0, 2, 1] = 1.0              # ...but row 2 (q[0] = 0: 0 x NaN is NaN too)
    out, idx = attncore.hard_attention(q, kk, v, mode=mode, k=k, seed=1, return_indices=True)
    rout, ridx = R.hard_attention(q, kk, v, mode=mode, k=k, seed=1, return_indices=True)
    np.testing.assert_array_equal(idx, ridx)
    assert (idx == -1).all() and np.isnan(out).all()
    kk[0, 0, 3, 0] = 0.0             # no NaN: ordinary indices again
    out, idx = attncore.hard_attention(q, kk, v, mode=mode, k=k, seed=1, return_indices=True)
    assert (idx >= 0).all() and np.isfinite(out).all()


@pytest.mark.parametrize("mode", ["argmax", "topk"])
@pytest.mark.parametrize("seed", ["abc", -1, 2**70, 1.5, True])
def test_hard_seed_is_checked_in_every_mode(mode, seed):
    q = np.ones((1, 2, 3)); kv = np.ones((1, 4, 3))
    err = ValueError if isinstance(seed, int) and not isinstance(seed, bool) else TypeError
    with pytest.raises(err, match=r"seed must be an int in \[0, 2\*\*64\)"):
        attncore.hard_attention(q, kv, kv, mode=mode, k=1, seed=seed)


@pytest.mark.parametrize("fn", ["sigmoid_attention", "hard_attention"])
def test_no_heads_match_the_reference(fn):
    """(0, L, D) inputs: an empty result from both (the reference divided by Hkv = 0)."""
    x = np.ones((0, 2, 3), np.float32)
    got, want = getattr(attncore, fn)(x, x, x), getattr(R, fn)(x, x, x)
    assert got.shape == want.shape == (0, 2, 3)
