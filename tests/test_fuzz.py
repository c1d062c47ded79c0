"""Differential fuzzing: every public function against a float64 NumPy
formula, with hypothesis drawing shapes (0, 1, odd, across key-block and
chunk edges), memory layouts (negative, transposed, sliced and broadcast
zero strides), masks, valid_lens, dtypes, GQA, causal alignments, dropout,
scale, threads and kernel levels.

A short profile runs in CI (ATTNCORE_HYPOTHESIS_EXAMPLES, default 60 per
test); the long one is ATTNCORE_HYPOTHESIS_EXAMPLES=5000 python -m pytest
tests/test_fuzz.py (see README: Tests).
"""
import numpy as np
from hypothesis import given, note
from hypothesis import strategies as st

import attncore
from attncore import _config
from attncore import reference as R

from _tolerances import assert_close

from conftest import SUPPORTED_ISAS as LEVELS   # (not the emulated avx512bf16emu)
# sizes that sit on and around vector, tile, block and chunk edges
SEQ = [0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 131, 133, 255,
       256, 257, 300]
KEYS = SEQ + [511, 513, 1023, 1024, 1025, 1100, 1537]
HEAD = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 80, 127, 128, 129]
WORK_LIMIT = 3_000_000   # multiply-adds per example: keeps every example fast


# -- the float64 formulas -----------------------------------------------------------

MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix64(z):
    """splitmix64's finaliser, vectorised (csrc/driver/dropout.h)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def dropout_keep(seed, shape, p):
    """Which weights of a (..., Hq, Lq, Lk) problem survive (flat counters)."""
    counters = np.arange(int(np.prod(shape)), dtype=np.uint64).reshape(shape)
    bits = mix64(mix64(np.uint64(seed)) ^ counters) >> np.uint64(40)
    return bits >= np.uint64(int(round(p * (1 << 24))))


def softmax_attention(scores, v, visible, drop=None, p=0.0):
    """softmax over visible keys (rows with none give zeros), dropout, @ v."""
    s = np.where(visible, scores, -np.inf)
    top = s.max(-1, keepdims=True, initial=-np.inf)
    top = np.where(np.isneginf(top), 0, top)
    e = np.exp(s - top)
    total = e.sum(-1, keepdims=True)
    w = np.where(total > 0, e / np.where(total > 0, total, 1), 0)
    lse = np.where(total[..., 0] > 0, top[..., 0] + np.log(np.where(total[..., 0] > 0, total[..., 0], 1)),
                   -np.inf)
    if drop is not None:
        w = np.where(drop, w / (1 - p), 0)
    return w @ v, w, lse


def visible_mask(shape, Lq, Lk, mask, causal, valid_lens_full):
    vis = np.ones(shape, bool)
    if mask is not None and mask.dtype == np.bool_:
        vis = vis & mask
    if causal:
        offset = 0 if causal is True else Lk - Lq
        vis = vis & (np.arange(Lk)[None, :] <= np.arange(Lq)[:, None] + offset)
    if valid_lens_full is not None:
        vis = vis & (np.arange(Lk) < valid_lens_full[..., None])
    return vis


# -- strategies -----------------------------------------------------------------------

@st.composite
def layouts(draw, rng, shape, dtype, allow_broadcast=True):
    """An array of `shape` in one of several memory layouts."""
    mode = draw(st.sampled_from(["plain", "sliced", "transposed", "reversed", "broadcast", "fortran"]))
    if mode == "broadcast" and allow_broadcast and len(shape) >= 3:
        small = tuple(1 if i < len(shape) - 2 and draw(st.booleans()) else n for i, n in enumerate(shape))
        return np.broadcast_to(rng.standard_normal(small).astype(dtype), shape)
    if mode == "sliced" and shape[-1] > 0:
        big = rng.standard_normal(shape[:-1] + (2 * shape[-1] + 1,)).astype(dtype)
        return big[..., 1::2]                           # non-unit last stride: copied
    if mode == "transposed" and len(shape) >= 3:
        t = rng.standard_normal(shape[:-3] + (shape[-2], shape[-3], shape[-1])).astype(dtype)
        return np.swapaxes(t, -2, -3)                   # (..., L, H, D) storage
    if mode == "reversed" and len(shape) >= 2:
        axis = draw(st.integers(0, len(shape) - 1))
        return np.flip(rng.standard_normal(shape).astype(dtype), axis)   # negative stride
    if mode == "fortran":
        return np.asfortranarray(rng.standard_normal(shape).astype(dtype))
    return rng.standard_normal(shape).astype(dtype)


@st.composite
def sdpa_problems(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16]))
    nbatch = draw(st.integers(0, 2))
    batch = tuple(draw(st.lists(st.integers(0, 3) if nbatch else st.just(1), min_size=nbatch,
                                max_size=nbatch)))
    Hkv, G = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    Lq, Lk = draw(st.sampled_from(SEQ)), draw(st.sampled_from(KEYS))
    D, Dv = draw(st.sampled_from(HEAD)), draw(st.sampled_from(HEAD))
    nb = int(np.prod(batch)) if batch else 1
    if nb * Hkv * G * Lq * Lk * (D + Dv + 1) > WORK_LIMIT:
        Lk = draw(st.sampled_from(SEQ[:12]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    Hq = Hkv * G
    q = draw(layouts(rng, batch + (Hq, Lq, D), dtype))
    k = draw(layouts(rng, batch + (Hkv, Lk, D), dtype))
    v = draw(layouts(rng, batch + (Hkv, Lk, Dv), dtype))
    full = batch + (Hq, Lq, Lk)
    kw = {}
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    if mask_kind:
        start = draw(st.integers(0, len(full) - 1))
        mshape = tuple(draw(st.sampled_from([1, n])) for n in full)[start:]
        m = rng.random(mshape) > 0.3 if mask_kind == "bool" else rng.standard_normal(mshape).astype(dtype)
        if draw(st.booleans()) and m.ndim >= 2:
            m = np.swapaxes(np.ascontiguousarray(np.swapaxes(m, -1, -2)), -1, -2)   # strided mask
        kw["attn_mask"] = m
    kw["is_causal"] = draw(st.sampled_from([False, True, "bottom_right"]))
    vl_kind = draw(st.sampled_from([None, "batch", "row"])) if batch else None
    if vl_kind == "batch":
        kw["valid_lens"] = rng.integers(0, Lk + 1, batch)
    elif vl_kind == "row":
        kw["valid_lens"] = rng.integers(0, Lk + 1, batch + (Lq,))
    if draw(st.booleans()):
        kw["scale"] = draw(st.sampled_from([1.0, 0.3, -0.5, 2.0, 0.0]))
    if draw(st.integers(0, 3)) == 0:
        kw["dropout_p"] = draw(st.sampled_from([0.1, 0.5]))
        kw["seed"] = draw(st.integers(0, 2**64 - 1))
    kw["return_weights"] = draw(st.booleans())
    kw["return_lse"] = draw(st.booleans())
    kw["num_threads"] = draw(st.integers(1, 3))
    level = draw(st.sampled_from(LEVELS))
    return dtype, q, k, v, kw, level


def sdpa_formula(q, k, v, kw):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    Hq, Hkv = q.shape[-3], k.shape[-3]
    if Hq != Hkv:
        k, v = np.repeat(k, Hq // Hkv, axis=-3), np.repeat(v, Hq // Hkv, axis=-3)
    D = q.shape[-1]
    scale = kw.get("scale", 1 / np.sqrt(D) if D else 1.0)
    s = (q @ np.swapaxes(k, -1, -2)) * scale
    Lq, Lk = s.shape[-2:]
    mask = kw.get("attn_mask")
    if mask is not None and mask.dtype != np.bool_:
        s = s + np.asarray(mask, np.float64)
    vl = kw.get("valid_lens")
    if vl is not None:
        vl = np.asarray(vl)
        nb = q.ndim - 3
        vl = vl.reshape(vl.shape + (1, 1)) if vl.ndim == nb else vl.reshape(vl.shape[:-1] + (1, vl.shape[-1]))
        vl = np.broadcast_to(vl, s.shape[:-1])
    vis = visible_mask(s.shape, Lq, Lk, mask, kw.get("is_causal"), vl)
    drop = None
    if kw.get("dropout_p"):
        drop = dropout_keep(kw["seed"], s.shape, kw["dropout_p"])
    return softmax_attention(s, v, vis, drop, kw.get("dropout_p", 0.0)), s


def tolerance_scale(scores):
    """float32 error grows with the score magnitude (the softmax turns an
    absolute score error into a relative weight error)."""
    finite = scores[np.isfinite(scores)]
    return max(1.0, float(np.abs(finite).max())) if finite.size else 1.0


def assert_matches(got, ref, dtype, scale, what):
    if dtype == np.float16:
        np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=3e-3, atol=3e-3 * scale,
                                   err_msg=what)
    else:
        assert_close(got, ref, "sdpa" if what != "lse" else "lse", dtype, scale=scale, err_msg=what)


@given(sdpa_problems())
def test_sdpa_matches_formula(problem):
    dtype, q, k, v, kw, level = problem
    note(f"q {q.shape} {q.strides} k {k.shape} {k.strides} v {v.shape} {v.strides} level {level}")
    note({n: (x.shape if hasattr(x, "shape") else x) for n, x in kw.items()})
    with _config.use_isa(level):
        res = attncore.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
    (ref_out, ref_w, ref_lse), scores = sdpa_formula(q, k, v, kw)
    res = res if isinstance(res, tuple) else (res,)
    scale = tolerance_scale(scores)
    assert res[0].dtype == dtype and res[0].shape == ref_out.shape
    assert_matches(res[0], ref_out, dtype, scale, "out")
    n = 1
    if kw["return_weights"]:
        assert_matches(res[n], ref_w, dtype, scale, "weights")
        n += 1
    if kw["return_lse"]:
        lse = np.asarray(res[n], np.float64)
        np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))
        fin = np.isfinite(ref_lse)
        assert_matches(lse[fin], ref_lse[fin], np.float32 if dtype == np.float16 else dtype, scale, "lse")


@st.composite
def family_problems(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    B, Hh = draw(st.integers(0, 2)), draw(st.integers(1, 2))
    Lq, Lk = draw(st.sampled_from(SEQ[:22])), draw(st.sampled_from(SEQ[:24]))
    Dq, Dk, Dv = (draw(st.sampled_from(HEAD[1:16])) for _ in range(3))
    H = draw(st.sampled_from([1, 2, 3, 7, 16, 33]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = draw(layouts(rng, (B, Hh, Lq, Dq), dtype))
    k = draw(layouts(rng, (B, Hh, Lk, Dk), dtype))
    v = draw(layouts(rng, (B, Hh, Lk, Dv), dtype))
    kw = dict(is_causal=draw(st.sampled_from([False, True, "bottom_right"])))
    if draw(st.booleans()) and B:
        kw["valid_lens"] = rng.integers(0, Lk + 1, (B,))
    if draw(st.booleans()):
        kw["attn_mask"] = rng.random((Lq, Lk)) > 0.3
    magnitude = draw(st.sampled_from([0.3, 1.0, 30.0]))   # 30: the additive tanh form
    level = draw(st.sampled_from(LEVELS))
    return dtype, q, k, v, kw, H, magnitude, rng, level


def scores_formula(s, v, kw, Lq, Lk):
    vl = kw.get("valid_lens")
    vlf = None if vl is None else np.broadcast_to(np.asarray(vl)[:, None, None], s.shape[:-1])
    vis = visible_mask(s.shape, Lq, Lk, kw.get("attn_mask"), kw.get("is_causal"), vlf)
    return softmax_attention(s, np.asarray(v, np.float64), vis)[0]


@given(family_problems())
def test_general_additive_concat_match_formulas(problem):
    dtype, q, k, v, kw, H, magnitude, rng, level = problem
    Lq, Lk = q.shape[-2], k.shape[-2]
    q64, k64 = np.asarray(q, np.float64), np.asarray(k, np.float64)
    W = (rng.standard_normal((q.shape[-1], k.shape[-1])) / 3).astype(dtype)
    Wq = (rng.standard_normal((H, q.shape[-1])) * magnitude / np.sqrt(q.shape[-1])).astype(dtype)
    Wk = (rng.standard_normal((H, k.shape[-1])) / np.sqrt(k.shape[-1])).astype(dtype)
    w, b = rng.standard_normal(H).astype(dtype), rng.standard_normal(H).astype(dtype)
    wq, wk = rng.standard_normal(q.shape[-1]).astype(dtype), rng.standard_normal(k.shape[-1]).astype(dtype)
    with _config.use_isa(level):
        general = attncore.general_attention(q, k, v, W, scale=0.7, **kw)
        additive = attncore.additive_attention(q, k, v, Wq, Wk, w, b, **kw)
        concat = attncore.concat_attention(q, k, v, wq, wk, 0.25, **kw)
    s = 0.7 * (q64 @ np.asarray(W, np.float64)) @ np.swapaxes(k64, -1, -2)
    assert_close(general, scores_formula(s, v, kw, Lq, Lk), "sdpa", dtype, scale=tolerance_scale(s))
    s = np.tanh((q64 @ np.asarray(Wq, np.float64).T + np.asarray(b, np.float64))[..., :, None, :]
                + (k64 @ np.asarray(Wk, np.float64).T)[..., None, :, :]) @ np.asarray(w, np.float64)
    assert_close(additive, scores_formula(s, v, kw, Lq, Lk), "sdpa", dtype,
                 scale=np.sqrt(H) * max(1.0, float(np.abs(w).sum())) / 4)
    s = (q64 @ np.asarray(wq, np.float64))[..., :, None] + (k64 @ np.asarray(wk, np.float64))[..., None, :] + 0.25
    assert_close(concat, scores_formula(s, v, kw, Lq, Lk), "sdpa", dtype, scale=tolerance_scale(s))


@given(st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]), st.integers(1, 5),
       st.sampled_from(KEYS[1:]), st.sampled_from(LEVELS))
def test_merge_attention_of_shards_equals_whole(seed, dtype, shards, Lk, level):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 3, 4, 8)).astype(dtype)
    k, v = (rng.standard_normal((2, 3, Lk, 8)).astype(dtype) for _ in range(2))
    mask = rng.random((4, Lk)) > 0.5
    cuts = np.sort(rng.integers(0, Lk + 1, shards - 1)) if shards > 1 else np.array([], int)
    bounds = [0, *cuts.tolist(), Lk]
    with _config.use_isa(level):
        parts = [attncore.scaled_dot_product_attention(q, k[..., a:b, :], v[..., a:b, :],
                                                       attn_mask=mask[:, a:b], return_lse=True)
                 for a, b in zip(bounds[:-1], bounds[1:])]
        out, lse = attncore.merge_attention(parts)
    (ref, _, ref_lse), _ = sdpa_formula(q, k, v, dict(attn_mask=mask))
    assert_close(out, ref, "merge", dtype)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))


@given(st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]),
       st.sampled_from([(16, 4, 4), (16, 4, 2), (24, 6, 1), (8, 1, 1)]), st.booleans(), st.booleans(),
       st.integers(1, 9), st.integers(1, 9), st.sampled_from(LEVELS))
def test_multihead_attention_matches_reference(seed, dtype, dims, batch_first, causal, Lq, Lk, level):
    E, H, Hkv = dims
    rng = np.random.default_rng(seed)
    m = attncore.MultiHeadAttention(E, H, num_kv_heads=Hkv, batch_first=batch_first, dtype=dtype,
                                    seed=seed % 1000).eval()
    m.in_proj_bias[:] = rng.standard_normal(m.in_proj_bias.shape)
    shape = lambda L: (2, L, E) if batch_first else (L, 2, E)
    x, kv = rng.standard_normal(shape(Lq)).astype(dtype), rng.standard_normal(shape(Lk)).astype(dtype)
    kpm = rng.random((2, Lk)) > 0.7
    kw = dict(key_padding_mask=kpm, is_causal=causal and Lq == Lk)
    with _config.use_isa(level):
        out, w = m(x, kv, kv, **kw)
    ref, ref_w = R.MultiHeadAttention(m)(x, kv, kv, **kw)
    assert_close(out, ref, "sdpa", dtype)
    assert_close(w, ref_w, "weights", dtype)
