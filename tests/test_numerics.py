"""docs/numerics.md, statement by statement: the forward error bounds (as a
function of D, the score magnitude and the key block, not of Lk), long key
ranges, attncore's error against torch's on the reference shapes, and the
guarantees for masks, -inf, NaN, fully masked rows and dropout."""
import math

import numpy as np
import pytest

import attncore
from attncore import _config
from attncore._engine import plan_info

from conftest import is_pair_level

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (pip install '.[compare]')")

U = {np.float32: 2.0**-24, np.float64: 2.0**-53}
SDPA = attncore.scaled_dot_product_attention


def exact(q, k, v, scale, mask=None):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = q @ np.swapaxes(k, -1, -2) * scale
    if mask is not None:
        s = s + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p @ v) / p.sum(-1, keepdims=True), s


def bound(q, k, v, scale, dtype, key_block, mask=None):
    """docs/numerics.md, (1): per row, u V (2 S (ceil(D/2) + 4) + 1.5 Bk + 8)."""
    q, k, v = (np.abs(np.asarray(x, np.float64)) for x in (q, k, v))
    D = q.shape[-1]
    S = abs(scale) * (q @ np.swapaxes(k, -1, -2)).max(-1)          # |scale| max_j sum_d |q k|
    if mask is not None:
        S = S + np.abs(mask).max(-1)
    V = v.max(axis=(-1, -2))[..., None]
    return U[dtype] * V * (2 * S * (math.ceil(D / 2) + 4) + 1.5 * key_block + 8)


@pytest.mark.parametrize("D", [1, 2, 3, 8, 17, 64, 80, 128, 256])
@pytest.mark.parametrize("kind", ["random", "large-scores", "one-dominant-key", "additive-mask"])
def test_forward_error_bound(isa, dtype, D, kind):
    """(1) holds row by row on every level and path."""
    rng = np.random.default_rng(D)
    Lq, Lk, scale = 37, 700, 1 / math.sqrt(D)
    q = rng.standard_normal((2, 2, Lq, D)).astype(dtype)
    k = rng.standard_normal((2, 2, Lk, D)).astype(dtype)
    v = rng.standard_normal((2, 2, Lk, D)).astype(dtype)
    mask = None
    if kind == "large-scores":
        q *= 4
        k *= 4
    elif kind == "one-dominant-key":
        k[..., 3, :] = q[..., :1, :].mean(-2) * 6
    elif kind == "additive-mask":
        mask = (rng.standard_normal((Lq, Lk)) * 3).astype(dtype)
    plan = plan_info(SDPA, q, k, v, attn_mask=mask)
    out = SDPA(q, k, v, attn_mask=mask)
    ref, _ = exact(q, k, v, scale, mask)
    err = np.abs(out - ref).max(-1)
    b = bound(q, k, v, scale, dtype, plan["key_block"], mask)
    assert (err <= b).all(), f"worst err/bound {np.max(err / b):.3f}"


@pytest.mark.parametrize("path", ["rows-split", "panel"])
def test_long_key_ranges_do_not_accumulate_error(isa, path):
    """(2) All keys and values identical: the exact output is the value row.
    The relative error stays at a few ulp of the block sums however long
    the key range (it grew linearly with Lk before compensated sums)."""
    rng = np.random.default_rng(22)
    D = 16
    krow, vrow = rng.standard_normal(D).astype(np.float32), rng.standard_normal(D).astype(np.float32)
    if path == "rows-split":
        Lk, q = 2**22, rng.standard_normal((1, 1, 2, D)).astype(np.float32)
        expect = dict(path="rows")
    else:     # 16 query heads of 40 rows share one kv head: 32 units, no split
        Lk, q = 2**20, rng.standard_normal((1, 16, 40, D)).astype(np.float32)
        expect = dict(path="panel", chunks=1)
    k = np.ascontiguousarray(np.broadcast_to(krow, (1, 1, Lk, D)))
    v = np.ascontiguousarray(np.broadcast_to(vrow, (1, 1, Lk, D)))
    plan = plan_info(SDPA, q, k, v, enable_gqa=True)
    assert all(plan[key] == value for key, value in expect.items()), plan
    assert (plan["chunks"] > 1) == (path == "rows-split"), plan
    out = SDPA(q, k, v, enable_gqa=True)
    rel = np.abs(out - vrow) / np.abs(vrow)
    assert rel.max() <= 1e-5, rel.max()


def test_lse_and_weights_bounds(isa, dtype):
    """(3) lse and weights: u (2 S (ceil(D/2) + 4) + 1.5 Bk + 8), absolute for
    lse (plus u |lse|), relative for each weight."""
    rng = np.random.default_rng(3)
    D, scale = 48, 1 / math.sqrt(48)
    q = rng.standard_normal((1, 3, 20, D)).astype(dtype)
    k, v = (rng.standard_normal((1, 3, 300, D)).astype(dtype) for _ in range(2))
    plan = plan_info(SDPA, q, k, v, return_weights=True)
    out, w, lse = SDPA(q, k, v, return_weights=True, return_lse=True)
    _, s = exact(q, k, v, scale)
    top = s.max(-1, keepdims=True)
    ref_lse = top[..., 0] + np.log(np.exp(s - top).sum(-1))
    ref_w = np.exp(s - ref_lse[..., None])
    S = scale * (np.abs(q.astype(np.float64)) @ np.abs(k.astype(np.float64)).swapaxes(-1, -2)).max(-1)
    eps = U[dtype] * (2 * S * (math.ceil(D / 2) + 4) + 1.5 * plan["key_block"] + 8)
    assert (np.abs(lse - ref_lse) <= eps + U[dtype] * np.abs(ref_lse)).all()
    assert (np.abs(w - ref_w) <= eps[..., None] * ref_w + 1e-300).all()


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_inputs(half):
    """(4) float16/bfloat16: float32 computation on the exact inputs, then one
    rounding to the output format (2^-11 / 2^-8 relative); (4b) on a native
    pairs level bfloat16 adds 2^-8 V (weights rounded before P V)."""
    if half == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dt, rel = ml_dtypes.bfloat16, 2.0**-8
    else:
        dt, rel = np.float16, 2.0**-11
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((1, 2, 30, 32)).astype(dt) for _ in range(3))
    out = SDPA(q, k, v)
    assert out.dtype == dt
    pairs = plan_info(SDPA, q, k, v)["native_pairs"]
    assert pairs == (half == "bfloat16" and is_pair_level(_config.active_isa_name()))
    V = np.abs(v.astype(np.float64)).max() if pairs else 0.0
    ref, _ = exact(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), 1 / math.sqrt(32))
    f32 = bound(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), 1 / math.sqrt(32),
                np.float32, 256)
    assert (np.abs(out.astype(np.float64) - ref).max(-1) <= f32 + rel * np.abs(ref).max(-1) + 2.0**-8 * V).all()


def test_additive_bound():
    """(5) additive attention: each of the H tanh terms is within 4e-7
    (float32), so a score is within 4e-7 sum_h |w_h| + u (H + 2) sum_h |w_h|,
    and the output within twice that (times V) plus the P V terms of (1)."""
    rng = np.random.default_rng(5)
    H, D = 64, 16
    q, k, v = (rng.standard_normal((2, 1, 30, D)).astype(np.float32) for _ in range(3))
    Wq, Wk = ((rng.standard_normal((H, D)) / 4).astype(np.float32) for _ in range(2))
    w = rng.standard_normal(H).astype(np.float32)
    out = attncore.additive_attention(q, k, v, Wq, Wk, w)
    qp = q.astype(np.float64) @ Wq.T
    kp = k.astype(np.float64) @ Wk.T
    s = np.tanh(qp[..., :, None, :] + kp[..., None, :, :]) @ w.astype(np.float64)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = (p @ v.astype(np.float64)) / p.sum(-1, keepdims=True)
    wsum = np.abs(w).sum()
    # the projections' own rounding (a K=16 GEMM) moves each tanh argument by
    # at most (D+2) u sum|x||W|, which moves the score by that times sum|w|
    proj = (D + 2) * U[np.float32] * ((np.abs(q) @ np.abs(Wq).T).max() + (np.abs(k) @ np.abs(Wk).T).max())
    ds = 4e-7 * wsum + U[np.float32] * (H + 2) * wsum + proj * wsum
    V = np.abs(v).max()
    assert np.abs(out - ref).max() <= 2 * ds * V + U[np.float32] * V * (1.5 * 256 + 8)


REFERENCE = {"S1": (1, 8, 8, 512, 512, 64, False), "S2": (4, 12, 12, 512, 512, 64, False),
             "S3": (1, 16, 16, 2048, 2048, 64, False), "S4": (1, 8, 8, 4096, 4096, 128, False),
             "S5": (1, 16, 16, 2048, 2048, 64, True), "S6": (1, 32, 8, 1, 8192, 128, False)}


@needs_torch
@pytest.mark.parametrize("name", list(REFERENCE))
def test_error_at_most_torch_on_reference_shapes(name):
    """(6) max |error| against float64 at most torch SDPA's (float32), on
    every reference shape, with the best kernel level."""
    B, Hq, Hkv, Lq, Lk, D, causal = REFERENCE[name]
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, Hq, Lq, D), dtype=np.float32)
    k = rng.standard_normal((B, Hkv, Lk, D), dtype=np.float32)
    v = rng.standard_normal((B, Hkv, Lk, D), dtype=np.float32)
    ours = SDPA(q, k, v, is_causal=causal, enable_gqa=True)
    with torch.no_grad():
        theirs = torch.nn.functional.scaled_dot_product_attention(
            *(torch.from_numpy(x) for x in (q, k, v)), is_causal=causal, enable_gqa=True).numpy()
    G = Hq // Hkv
    err_ours = err_theirs = 0.0
    for b in range(B):
        for h in range(Hq):
            s = q[b, h].astype(np.float64) @ k[b, h // G].astype(np.float64).T / math.sqrt(D)
            if causal:
                s = np.where(np.tril(np.ones((Lq, Lk), bool)), s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            ref = (p @ v[b, h // G].astype(np.float64)) / p.sum(-1, keepdims=True)
            err_ours = max(err_ours, np.abs(ours[b, h] - ref).max())
            err_theirs = max(err_theirs, np.abs(theirs[b, h] - ref).max())
    print(f"{name}: attncore {err_ours:.3e} torch {err_theirs:.3e} ({_config.active_isa_name()})")
    assert err_ours <= err_theirs


# -- guarantees ----------------------------------------------------------------------

def test_masked_keys_get_exactly_zero_weight_and_dead_rows_zeros(isa, dtype):
    """(7) A masked key's weight is exactly 0; a row with no visible key gives
    zeros, weights 0 and lse -inf (never NaN)."""
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((1, 1, 4, 8)).astype(dtype) for _ in range(3))
    k = np.repeat(k, 100, axis=2)
    v = np.repeat(v, 100, axis=2)
    mask = rng.random((4, 400)) > 0.5
    mask[2] = False
    out, w, lse = SDPA(q, k, v, attn_mask=mask, return_weights=True, return_lse=True)
    assert (w[..., ~mask] == 0).all()
    assert (out[0, 0, 2] == 0).all() and np.isneginf(lse[0, 0, 2])
    assert not np.isnan(out).any()
    np.testing.assert_allclose(w.sum(-1)[0, 0, [0, 1, 3]], 1, rtol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("path", ["panel", "rows", "rows-split"])
@pytest.mark.parametrize("masked", [False, True])
def test_huge_scores_keep_a_finite_exact_softmax(isa, dtype, path, masked):
    """(10) Scores so large that half an ulp of the running max exceeds 1
    (|scale| log2e max s >= 2^24 in float32, 2^53 in float64; here about
    2^32 and 2^72) still give the softmax of the rounded scores: the
    exponent's one-FMA form would overflow exp2 there (the rows became inf
    and NaN, or picked the wrong keys). The scores are far apart, so the
    exact answer is the mean of each row's tied top keys' values."""
    rng = np.random.default_rng(10)
    mag = 1e4 if dtype == np.float32 else 1e10
    Lq, Lk = {"panel": (40, 300), "rows": (1, 300), "rows-split": (1, 40000)}[path]
    D = 64
    q = (rng.standard_normal((1, 1, Lq, D)) * mag).astype(dtype)
    k = (rng.standard_normal((1, 1, Lk, D)) * mag).astype(dtype)
    v = rng.standard_normal((1, 1, Lk, D)).astype(dtype)
    k[0, 0, 5:9] = q[0, 0, 0]   # row 0: four tied top keys
    mask = None
    if masked:   # a prep pass (log2 units first) runs on every block
        mask = rng.random((Lq, Lk)) < 0.9
        mask[:, 5:9] = True
    plan = plan_info(SDPA, q, k, v, scale=1.0, attn_mask=mask)
    assert plan["path"] == path.split("-")[0] and (plan["chunks"] > 1) == (path == "rows-split"), plan
    out, lse = SDPA(q, k, v, scale=1.0, attn_mask=mask, return_lse=True)
    s = q[0, 0].astype(np.float64) @ k[0, 0].astype(np.float64).T
    if masked:
        s = np.where(mask, s, -np.inf)
    top = s.max(-1, keepdims=True)
    tied = s >= top - 1e-6 * np.abs(top)
    expect = (tied[:, :, None] * v[0, 0].astype(np.float64)).sum(1) / tied.sum(1, keepdims=True)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    assert np.abs(out[0, 0] - expect).max() <= (1e-5 if dtype == np.float32 else 1e-13)
    assert tied[0].sum() == 4


@pytest.mark.parametrize("path", ["panel", "rows", "rows-split"])
@pytest.mark.parametrize("extra", ["none", "float-mask", "softcap"])
@pytest.mark.parametrize("scale", [3e38, 1e39, -5e41])
def test_finite_scale_past_the_exponent_factor_range(isa, path, extra, scale):
    """float32: a finite scale with |scale| log2 e above FLT_MAX (|scale| >=
    2.36e38) on small scores is an ordinary softmax; the factor overflowed
    to inf and every output was NaN. A power of two of it now goes into Q
    (exact): 4 for 3e38, and more past 9.4e38 (where 4 did not bring the
    factor into range: NaN rows until session 18)."""
    rng = np.random.default_rng(12)
    Lq, Lk = {"panel": (40, 300), "rows": (1, 300), "rows-split": (1, 40000)}[path]
    q = (rng.standard_normal((1, 1, Lq, 16)) * 1e-20).astype(np.float32)
    k = (rng.standard_normal((1, 1, Lk, 16)) * (1e-20 * 3e38 / abs(scale))).astype(np.float32)
    v = rng.standard_normal((1, 1, Lk, 4)).astype(np.float32)
    kw = {}
    mask = None
    if extra == "float-mask":
        mask = (rng.standard_normal((Lq, Lk)) * 0.5).astype(np.float32)
        mask[:, ::3] = -np.inf
        kw["attn_mask"] = mask
    elif extra == "softcap":
        kw["softcap"] = 0.5
    plan = plan_info(SDPA, q, k, v, scale=scale, **kw)
    assert plan["path"] == path.split("-")[0] and (plan["chunks"] > 1) == (path == "rows-split"), plan
    out, lse = SDPA(q, k, v, scale=scale, return_lse=True, **kw)
    s = q[0, 0].astype(np.float64) @ k[0, 0].astype(np.float64).T * scale
    if extra == "softcap":
        s = 0.5 * np.tanh(s / 0.5)
    if mask is not None:
        s = s + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p @ v[0, 0].astype(np.float64)) / p.sum(-1, keepdims=True)
    want_lse = np.log(p.sum(-1)) + s.max(-1)
    assert np.abs(s[np.isfinite(s)]).max() < 20 and np.isfinite(out).all()
    np.testing.assert_allclose(out[0, 0], want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(lse[0, 0], want_lse, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("scale", [3e38, -1e39])
def test_scale_past_the_range_in_bfloat16_panels(isa, scale):
    """bfloat16 queries with a scale past float32's factor range: on the
    levels with native bfloat16 pairs the pair kernels stage Q with the
    sign only, so the plan must not take them when Q holds a power of two
    (the scores came out p times too small there); everywhere, the softmax
    of the exact scores."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    rng = np.random.default_rng(13)
    q = (rng.standard_normal((1, 2, 64, 32)) * 1e-20).astype(bf16)
    k = (rng.standard_normal((1, 2, 200, 32)) * (1e-20 * 3e38 / abs(scale))).astype(bf16)
    v = rng.standard_normal((1, 2, 200, 8)).astype(bf16)
    plan = plan_info(SDPA, q, k, v, scale=scale)
    assert plan["path"] == "panel" and not plan["native_pairs"], plan
    out = SDPA(q, k, v, scale=scale).astype(np.float64)
    want, s = exact(q, k, v, scale)
    assert np.abs(s).max() < 40
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-2)   # bfloat16 output: 2^-8 relative


@pytest.mark.parametrize("path", ["panel", "rows"])
def test_scale_past_the_range_with_a_small_softcap(isa, path):
    """With a soft-cap, |scale| / cap must stay finite too: 3e38 / 1e-3
    overflowed to inf, and a row of zero scores gave 0 x inf = NaN. Q takes
    a power of two large enough for both factors."""
    rng = np.random.default_rng(14)
    Lq = {"panel": 40, "rows": 1}[path]
    q = (rng.standard_normal((1, 1, Lq, 16)) * 1e-20).astype(np.float32)
    q[0, 0, 0] = 0   # a row of zero scores
    k = (rng.standard_normal((1, 1, 300, 16)) * 1e-24).astype(np.float32)
    v = rng.standard_normal((1, 1, 300, 4)).astype(np.float32)
    scale, cap = 3e38, 1e-3
    plan = plan_info(SDPA, q, k, v, scale=scale, softcap=cap)
    assert plan["path"] == path, plan
    out = SDPA(q, k, v, scale=scale, softcap=cap)
    s = q[0, 0].astype(np.float64) @ k[0, 0].astype(np.float64).T * scale
    s = cap * np.tanh(s / cap)
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p @ v[0, 0].astype(np.float64)) / p.sum(-1, keepdims=True)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, 0], want, rtol=0, atol=1e-5)


def test_huge_scores_leave_the_other_lanes_bit_for_bit(isa, dtype):
    """(10) In a panel, only the lanes (rows) of huge scores take the scores
    to log2 units first: the other rows of the panel are bitwise unchanged."""
    rng = np.random.default_rng(11)
    q = rng.standard_normal((1, 1, 40, 64)).astype(dtype)
    k = rng.standard_normal((1, 1, 300, 64)).astype(dtype)
    v = rng.standard_normal((1, 1, 300, 64)).astype(dtype)
    assert plan_info(SDPA, q, k, v)["path"] == "panel"
    base = SDPA(q, k, v)
    q2 = q.copy()
    q2[0, 0, 3] *= 1e5 if dtype == np.float32 else 1e11   # one row of huge scores
    out = SDPA(q2, k, v)
    others = np.arange(40) != 3
    assert np.array_equal(out[0, 0, others], base[0, 0, others])
    assert np.isfinite(out).all()


def test_nan_scores_poison_only_their_row(isa, dtype):
    """(8) A NaN in a visible score makes its row NaN (out and lse), nothing else."""
    q = np.ones((1, 1, 3, 4), dtype)
    k = np.ones((1, 1, 6, 4), dtype)
    v = np.ones((1, 1, 6, 2), dtype)
    q[0, 0, 1, 2] = np.nan
    out, lse = SDPA(q, k, v, return_lse=True)
    assert np.isnan(out[0, 0, 1]).all() and np.isnan(lse[0, 0, 1])
    assert not np.isnan(out[0, 0, [0, 2]]).any()


@pytest.mark.parametrize("Lq", [1, 40])               # rows path / panel path
@pytest.mark.parametrize("storage", [None, "float32", "bfloat16", "int8"])
def test_overflowing_value_sums_give_inf_not_nan(isa, Lq, storage):
    """(8) Range: value sums past FLT_MAX (every value 1e36 over 400 and 5000
    keys) give +-inf, as torch, never NaN; a row whose sums stay finite is
    unchanged (128 keys)."""
    for Lk, want in ((128, "finite"), (400, "inf"), (5000, "inf")):
        q = np.ones((1, 2, Lq, 64), np.float32)
        k = np.zeros((1, 2, Lk, 64), np.float32)
        v = np.full((1, 2, Lk, 64), 1e36, np.float32)
        v[:, 1] *= -1
        if storage is None:
            out = SDPA(q, k, v)
        else:
            if Lq != 1:
                continue
            cache = attncore.KVCache(Lk, 2, 64, dtype=storage)
            cache.append(k, v)
            out = cache.attend(q)
        if want == "finite":   # (bfloat16 stores 1e36 to 8 bits)
            rtol = 4e-3 if storage == "bfloat16" else 1e-5
            np.testing.assert_allclose(out[0, 0], 1e36, rtol=rtol)
            np.testing.assert_allclose(out[0, 1], -1e36, rtol=rtol)
        else:
            assert np.isposinf(out[0, 0]).all() and np.isneginf(out[0, 1]).all()


def test_dropout_is_exactly_the_counter_rng(isa, dtype):
    """(9) The kept weights are those whose counter draw passes the threshold,
    scaled by 1/(1-p); the pattern depends only on (seed, b, h, i, j)."""
    rng = np.random.default_rng(9)
    q, k, v = (rng.standard_normal((2, 2, 5, 8)).astype(dtype) for _ in range(3))
    _, w0 = SDPA(q, k, v, return_weights=True)
    _, w = SDPA(q, k, v, dropout_p=0.3, seed=11, return_weights=True)
    from attncore import reference as R
    keep = np.array([R.dropout_keep(11, c, 0.3) for c in range(w.size)]).reshape(w.shape)
    assert (w[~keep] == 0).all()
    np.testing.assert_allclose(w[keep], w0[keep] / 0.7, rtol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("bias", [-2.0, -60.0])
def test_sigmoid_attention_bound(isa, bias):
    """(11) sigmoid attention: relative to sum_j w_j |v_j|, no Lk term; S_i
    counts |bias|."""
    rng = np.random.default_rng(11)
    D, scale = 32, 1 / math.sqrt(32)
    q = rng.standard_normal((1, 2, 16, D)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 3000, D)).astype(np.float32) for _ in range(2))
    plan = plan_info(attncore.sigmoid_attention, q, k, v, bias=bias)
    out = attncore.sigmoid_attention(q, k, v, bias=bias)
    s = q.astype(np.float64) @ k.astype(np.float64).swapaxes(-1, -2) * scale + bias
    w = 1 / (1 + np.exp(-s))
    ref = w @ v.astype(np.float64)
    S = scale * (np.abs(q.astype(np.float64)) @ np.abs(k.astype(np.float64)).swapaxes(-1, -2)).max(-1) + abs(bias)
    mag = w @ np.abs(v.astype(np.float64))
    bound = U[np.float32] * mag * (2 * S[..., None] * (math.ceil(D / 2) + 4) + 1.5 * plan["key_block"] + 12)
    assert (np.abs(out - ref) <= bound).all()


@pytest.mark.parametrize("dtype,bias", [(np.float32, -79.5), (np.float64, -48.0)])
def test_sigmoid_weights_carry_the_bias_rounding(isa, dtype, bias):
    """(11) each weight within u (S_i (ceil(D/2) + 4) + 6) with S_i counting
    |bias|: at q = k = 0 the score is the bias alone, whose rounding into log2
    units the weight carries (without |bias| in S_i the bound would be 6 u)."""
    q, k, v = np.zeros((8, 4), dtype), np.zeros((3, 4), dtype), np.ones((3, 1), dtype)
    _, w = attncore.sigmoid_attention(q, k, v, bias=bias, return_weights=True)
    exact = 1 / (1 + math.exp(-bias))
    rel = np.abs(w.astype(np.float64) - exact) / exact / U[dtype]
    assert (rel <= abs(bias) * (math.ceil(4 / 2) + 4) + 6).all(), rel.max()
    assert rel.max() > 6, rel.max()   # the |bias| term is needed


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_weights_below_the_smallest_normal(isa, dtype):
    """(11) float32 weights hold their bound down to 2^-126 and are 0 below
    it (the exp2 flushes); float64 keeps subnormal weights."""
    q, k, v = np.zeros((1, 4), dtype), np.zeros((2, 4), dtype), np.full((2, 1), 1e30, dtype)
    for bias in (-87.0, -88.0, -100.0, -740.0):
        _, w = attncore.sigmoid_attention(q, k, v, bias=bias, return_weights=True)
        exact = math.exp(bias) / (1 + math.exp(bias))
        if dtype == np.float32 and exact < 2.0 ** -126:
            assert not w.any(), (bias, w)
        elif exact >= (2.0 ** -126 if dtype == np.float32 else 2.0 ** -1022):
            rel = abs(float(w[0, 0]) - exact) / exact / U[dtype]
            assert rel <= abs(bias) * (math.ceil(4 / 2) + 4) + 6, (bias, rel)
        else:   # float64 subnormal weights: within a few of the smallest subnormals
            assert abs(float(w[0, 0]) - exact) <= 2.0 ** -1074 * (abs(bias) * 6 + 8) + exact * 1e-12, bias


def test_hard_attention_keeps_the_best_keys_up_to_score_rounding(isa):
    """(12) a key is kept over a better one only when their exact scores are
    within twice the score error."""
    rng = np.random.default_rng(12)
    D, scale = 64, 1 / 8
    q = rng.standard_normal((1, 2, 40, D)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 2000, D)).astype(np.float32) for _ in range(2))
    out, idx = attncore.hard_attention(q, k, v, mode="topk", k=5, return_indices=True)
    s = q.astype(np.float64) @ k.astype(np.float64).swapaxes(-1, -2) * scale
    err = U[np.float32] * scale * (math.ceil(D / 2) + 4) * (
        np.abs(q.astype(np.float64)) @ np.abs(k.astype(np.float64)).swapaxes(-1, -2))
    kth_best = -np.sort(-s, axis=-1)[..., 4:5]
    kept = np.take_along_axis(s, idx, axis=-1)
    kept_err = np.take_along_axis(err, idx, axis=-1)
    assert (kept >= kth_best - 2 * kept_err.max(-1, keepdims=True) - 2 * err.max(-1, keepdims=True)).all()
    a, ai = attncore.hard_attention(q, k, v, return_indices=True)
    picked = np.take_along_axis(v, ai, axis=-2)   # the argmax keys' value rows, exactly
    np.testing.assert_array_equal(a, picked)
