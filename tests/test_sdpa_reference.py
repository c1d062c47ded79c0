"""scaled_dot_product_attention / dot_attention against the pure-Python
reference, feature by feature, on small shapes, for every ISA and dtype."""
import numpy as np
import pytest

import attncore
from attncore._engine import plan_info
from attncore import reference as R

from _paths import assert_plan
from _tolerances import assert_close


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def qkv(rng, dtype, B=(2,), Hq=3, Hkv=None, Lq=5, Lk=7, D=4, Dv=None):
    Dv = D if Dv is None else Dv
    Hkv = Hq if Hkv is None else Hkv
    return (randn(rng, B + (Hq, Lq, D), dtype), randn(rng, B + (Hkv, Lk, D), dtype),
            randn(rng, B + (Hkv, Lk, Dv), dtype))


KIND_OP = {"o": "sdpa", "w": "weights", "l": "lse"}


def check_all(fast, ref, dtype, kinds="o"):
    """Compare results; `kinds` names them in order: o = out, w = weights, l = lse."""
    if len(kinds) == 1:
        fast, ref = (fast,), (ref,)
    assert len(fast) == len(ref) == len(kinds)
    for kind, a, b in zip(kinds, fast, ref):
        assert a.shape == b.shape, (kind, a.shape, b.shape)
        assert a.dtype == dtype
        assert_close(a, b, KIND_OP[kind], dtype, err_msg=f"output {kind}")


@pytest.mark.parametrize("shape", [
    dict(B=(), Hq=1, Lq=1, Lk=1, D=1),
    dict(B=(2,), Hq=3, Lq=5, Lk=7, D=4),
    dict(B=(2, 2), Hq=2, Lq=9, Lk=3, D=3, Dv=5),
    dict(B=(1,), Hq=2, Lq=33, Lk=270, D=8, Dv=2),    # panel path: panel and key-block edges
    dict(B=(1,), Hq=1, Lq=2, Lk=600, D=5),           # rows path: key-block edges
])
def test_basic(isa, dtype, rng, shape):
    q, k, v = qkv(rng, dtype, **shape)
    fast = attncore.scaled_dot_product_attention(q, k, v, return_weights=True, return_lse=True)
    check_all(fast, R.scaled_dot_product_attention(q, k, v, return_weights=True, return_lse=True), dtype, "owl")


def test_basic_shapes_reach_their_paths(isa):
    q, k, v = qkv(np.random.default_rng(0), np.float32, B=(1,), Hq=2, Lq=33, Lk=270, D=8, Dv=2)
    plan = assert_plan(attncore.scaled_dot_product_attention, q, k, v, path="panel",
                       return_weights=True)
    assert plan["key_block"] < 270 and 33 > plan["rows_per_unit"] or isa == "portable"
    q, k, v = qkv(np.random.default_rng(0), np.float32, B=(1,), Hq=1, Lq=2, Lk=600, D=5)
    plan = assert_plan(attncore.scaled_dot_product_attention, q, k, v, path="rows", split=False,
                       return_weights=True)
    assert plan["key_block"] < 600


@pytest.mark.parametrize("how", ["plain", "causal", "valid_lens", "mask"])
def test_split_decode_path(isa, dtype, rng, how):
    """Keys split into chunks and merged (no weights requested: weights turn
    the split off), with chunks that are fully masked for some rows."""
    q, k, v = qkv(rng, dtype, B=(2,), Hq=4, Hkv=2, Lq=1, Lk=1100, D=5, Dv=3)
    kw = dict(enable_gqa=True, return_lse=True)
    if how == "causal":
        q, k, v = qkv(rng, dtype, B=(1,), Hq=1, Hkv=1, Lq=2, Lk=1100, D=5, Dv=3)
        kw["is_causal"] = "top_left"   # rows see 1 and 2 keys: later chunks fully masked
    elif how == "valid_lens":
        kw["valid_lens"] = np.array([0, 700])   # batch 0 sees nothing, batch 1 two chunks
    elif how == "mask":
        mask = rng.random((2, 4, 1, 1100)) > 0.5
        mask[0, 1, :, :] = False                # a fully masked row
        mask[1, :, :, 600:] = False             # fully masked chunks
        kw["attn_mask"] = mask
    assert_plan(attncore.scaled_dot_product_attention, q, k, v, path="rows", split=True, **kw)
    check_all(attncore.scaled_dot_product_attention(q, k, v, **kw),
              R.scaled_dot_product_attention(q, k, v, **kw), dtype, "ol")


@pytest.mark.parametrize("is_causal", [True, "top_left", "bottom_right"])
@pytest.mark.parametrize("Lq,Lk", [(6, 6), (4, 9), (9, 4), (40, 75), (1, 5), (3, 700)])
def test_causal(isa, dtype, rng, is_causal, Lq, Lk):
    q, k, v = qkv(rng, dtype, B=(1,), Hq=2, Hkv=2, Lq=Lq, Lk=Lk, D=4)
    fast = attncore.scaled_dot_product_attention(q, k, v, is_causal=is_causal, return_weights=True,
                                                 return_lse=True)
    ref = R.scaled_dot_product_attention(q, k, v, is_causal=is_causal, return_weights=True,
                                         return_lse=True)
    check_all(fast, ref, dtype, "owl")


@pytest.mark.parametrize("Hq,Hkv,Lq", [(4, 2, 5), (6, 1, 3), (8, 2, 1), (4, 4, 1), (4, 2, 40)])
def test_gqa(isa, dtype, rng, Hq, Hkv, Lq):
    q, k, v = qkv(rng, dtype, B=(2,), Hq=Hq, Hkv=Hkv, Lq=Lq, Lk=11, D=6)
    fast = attncore.scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal="bottom_right",
                                                 return_lse=True)
    ref = R.scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal="bottom_right",
                                         return_lse=True)
    check_all(fast, ref, dtype, "ol")


@pytest.mark.parametrize("mask_shape", [(7,), (5, 7), (3, 1, 7), (2, 1, 5, 7), (2, 3, 5, 7), (1, 1, 1, 1)])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks(isa, dtype, rng, mask_shape, kind):
    q, k, v = qkv(rng, dtype, B=(2,), Hq=3, Lq=5, Lk=7, D=4)
    if kind == "bool":
        mask = rng.random(mask_shape) > 0.3
    else:
        mask = randn(rng, mask_shape, dtype)
        mask[rng.random(mask_shape) < 0.2] = -np.inf
    fast = attncore.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True,
                                                 return_lse=True)
    ref = R.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True, return_lse=True)
    check_all(fast, ref, dtype, "owl")


def test_mask_and_causal_both_apply(isa, dtype, rng):
    q, k, v = qkv(rng, dtype, B=(1,), Hq=2, Lq=6, Lk=6, D=4)
    mask = rng.random((6, 6)) > 0.4
    fast = attncore.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True,
                                                 return_weights=True)
    ref = R.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True, return_weights=True)
    check_all(fast, ref, dtype, "ow")
    assert np.all(fast[1][..., np.triu_indices(6, 1)[0], np.triu_indices(6, 1)[1]] == 0)


def test_strided_mask_read_in_place(isa, dtype, rng):
    """A transposed, sliced, broadcast mask is read through its strides."""
    q, k, v = qkv(rng, dtype, B=(2,), Hq=3, Lq=5, Lk=7, D=4)
    base = randn(rng, (9, 12), dtype)
    mask = base[1:8, ::2][:, :5].T[None, None]  # (1, 1, 5, 7), non-contiguous
    assert not mask.flags.c_contiguous
    fast = attncore.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    check_all(fast, R.scaled_dot_product_attention(q, k, v, attn_mask=mask), dtype)


@pytest.mark.parametrize("scale", [None, 1.0, 0.01, 3.0])
def test_scale_and_dot_attention(isa, dtype, rng, scale):
    q, k, v = qkv(rng, dtype, D=5, Dv=3)
    fast = attncore.scaled_dot_product_attention(q, k, v, scale=scale)
    check_all(fast, R.scaled_dot_product_attention(q, k, v, scale=scale), dtype)
    check_all(attncore.dot_attention(q, k, v), R.dot_attention(q, k, v), dtype)
    check_all(attncore.dot_attention(q, k, v), R.scaled_dot_product_attention(q, k, v, scale=1.0), dtype)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_matches_reference_bit_pattern(isa, dtype, rng, p):
    q, k, v = qkv(rng, dtype, B=(2,), Hq=2, Lq=6, Lk=9, D=4)
    fast = attncore.scaled_dot_product_attention(q, k, v, dropout_p=p, seed=1234, return_weights=True)
    ref = R.scaled_dot_product_attention(q, k, v, dropout_p=p, seed=1234, return_weights=True)
    check_all(fast, ref, dtype, "ow")
    # kept weights are scaled by 1/(1-p), dropped ones are exactly 0
    np.testing.assert_array_equal(fast[1] == 0, ref[1] == 0)
    # out really is weights @ v
    assert_close(fast[0], fast[1].astype(np.float64) @ v.astype(np.float64), "sdpa", dtype)


def test_dropout_reproducible_and_seed_dependent(rng):
    q, k, v = qkv(rng, np.float32, B=(1,), Hq=2, Lq=64, Lk=64, D=8)
    a = attncore.scaled_dot_product_attention(q, k, v, dropout_p=0.3, seed=7)
    b = attncore.scaled_dot_product_attention(q, k, v, dropout_p=0.3, seed=7)
    c = attncore.scaled_dot_product_attention(q, k, v, dropout_p=0.3, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    _, w = attncore.scaled_dot_product_attention(q, k, v, dropout_p=0.3, seed=7, return_weights=True)
    kept = (w > 0).mean()
    assert 0.62 < kept < 0.78, kept  # about 1 - p of 8192 weights


@pytest.mark.parametrize("vl_shape", ["batch", "row"])
def test_valid_lens(isa, dtype, rng, vl_shape):
    q, k, v = qkv(rng, dtype, B=(3,), Hq=2, Lq=4, Lk=6, D=4)
    vl = np.array([2, 6, 0]) if vl_shape == "batch" else rng.integers(0, 7, size=(3, 4))
    fast = attncore.scaled_dot_product_attention(q, k, v, valid_lens=vl, return_weights=True,
                                                 return_lse=True)
    ref = R.scaled_dot_product_attention(q, k, v, valid_lens=vl, return_weights=True, return_lse=True)
    check_all(fast, ref, dtype, "owl")


@pytest.mark.parametrize("batch", [(), (3,), (2, 1, 2)])
def test_leading_batch_dims(isa, dtype, rng, batch):
    q, k, v = qkv(rng, dtype, B=batch, Hq=2, Lq=3, Lk=4, D=3)
    fast = attncore.scaled_dot_product_attention(q, k, v)
    assert fast.shape == batch + (2, 3, 3)
    check_all(fast, R.scaled_dot_product_attention(q, k, v), dtype)


def test_batch_broadcast(isa, dtype, rng):
    q = randn(rng, (4, 1, 2, 3, 5), dtype)
    k = randn(rng, (1, 3, 2, 6, 5), dtype)
    v = randn(rng, (3, 2, 6, 4), dtype)
    fast = attncore.scaled_dot_product_attention(q, k, v)
    assert fast.shape == (4, 3, 2, 3, 4)
    check_all(fast, R.scaled_dot_product_attention(q, k, v), dtype)


def test_two_dim_inputs(isa, dtype, rng):
    q, k, v = randn(rng, (5, 4), dtype), randn(rng, (7, 4), dtype), randn(rng, (7, 2), dtype)
    fast = attncore.scaled_dot_product_attention(q, k, v, return_weights=True, return_lse=True)
    assert fast[0].shape == (5, 2) and fast[1].shape == (5, 7) and fast[2].shape == (5,)
    check_all(fast, R.scaled_dot_product_attention(q, k, v, return_weights=True, return_lse=True), dtype, "owl")


def test_any_strides(isa, dtype, rng):
    """Transposed, sliced, reversed and feature-strided views, without the caller copying."""
    big = randn(rng, (2, 7, 3, 10), dtype)
    q = big.transpose(0, 2, 1, 3)[:, :, ::2, :4]        # (2, 3, 4, 4), seq stride 2
    k = randn(rng, (2, 3, 8, 8), dtype)[:, :, ::-1, ::2]  # reversed keys, feature stride 2
    v = np.asfortranarray(randn(rng, (2, 3, 8, 5), dtype))
    fast = attncore.scaled_dot_product_attention(q, k, v)
    check_all(fast, R.scaled_dot_product_attention(q, k, v), dtype)


@pytest.mark.parametrize("Lq,Lk", [(1, 3000), (1, 129), (70, 300)])   # split rows, rows, panel
def test_layout_does_not_change_the_bits(isa, dtype, rng, Lq, Lk):
    """docs/numerics.md: strided, reversed, transposed and broadcast views
    give the contiguous call's bits, on the fast path and the general one
    (lse asked), masked or not."""
    q, k, v = randn(rng, (2, 4, Lq, 16), dtype), randn(rng, (2, 2, Lk, 16), dtype), \
        randn(rng, (2, 2, Lk, 8), dtype)
    mask = rng.random((Lq, Lk)) > 0.2
    plan = plan_info(attncore.scaled_dot_product_attention, q, k, v, enable_gqa=True)
    assert (plan["path"], plan["chunks"] > 1) == {3000: ("rows", True), 129: ("rows", False),
                                                   300: ("panel", False)}[Lk], plan
    views = [(np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3),
              np.ascontiguousarray(k[:, :, ::-1])[:, :, ::-1], np.asfortranarray(v)),
             (np.repeat(q, 2, axis=-1)[..., ::2], np.concatenate([k, k], -1)[..., :16],
              np.ascontiguousarray(v[::-1, :, :, ::-1])[::-1, :, :, ::-1]),
             (q, np.broadcast_to(k[:1], k.shape), np.broadcast_to(v[:1], v.shape))]
    for kw in ({}, {"attn_mask": mask}, {"attn_mask": np.asfortranarray(mask)}, {"return_lse": True}):
        for i, (qv, kv, vv) in enumerate(views):
            kk, vvv = (k[:1].repeat(2, 0), v[:1].repeat(2, 0)) if i == 2 else (k, v)
            want = attncore.scaled_dot_product_attention(q, kk, vvv, enable_gqa=True, **kw)
            got = attncore.scaled_dot_product_attention(qv, kv, vv, enable_gqa=True, **kw)
            for g, w in zip(got if isinstance(got, tuple) else (got,),
                            want if isinstance(want, tuple) else (want,)):
                assert np.array_equal(g, w), (i, kw)


def test_read_only_inputs(isa, dtype, rng):
    q, k, v = qkv(rng, dtype)
    for a in (q, k, v):
        a.flags.writeable = False
    check_all(attncore.scaled_dot_product_attention(q, k, v), R.scaled_dot_product_attention(q, k, v), dtype)


def test_out_argument(isa, dtype, rng):
    q, k, v = qkv(rng, dtype, Dv=6)
    out = np.full((2, 3, 5, 6), np.nan, dtype=dtype)
    res = attncore.scaled_dot_product_attention(q, k, v, out=out)
    assert res is out
    check_all(out, R.scaled_dot_product_attention(q, k, v), dtype)
    # a strided out, and an out that aliases the query
    big = np.zeros((2, 3, 5, 12), dtype=dtype)
    res = attncore.scaled_dot_product_attention(q, k, v, out=big[..., ::2])
    check_all(big[..., ::2], R.scaled_dot_product_attention(q, k, v), dtype)
    q2 = q.copy()
    ref = R.scaled_dot_product_attention(q2, k, k)
    attncore.scaled_dot_product_attention(q2, k, k, out=q2)
    check_all(q2, ref, dtype)


def test_half_precision_inputs(isa, rng):
    q, k, v = qkv(rng, np.float16)
    out, lse = attncore.scaled_dot_product_attention(q, k, v, return_lse=True)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    np.testing.assert_allclose(out, R.scaled_dot_product_attention(q, k, v), rtol=2e-3, atol=2e-3)


def test_merge_reference_matches_full(dtype, rng):
    q, k, v = qkv(rng, dtype, B=(1,), Hq=2, Lq=3, Lk=8, D=4)
    parts = [R.scaled_dot_product_attention(q, k[..., a:b, :], v[..., a:b, :], return_lse=True)
             for a, b in ((0, 3), (3, 8))]
    out, lse = R.merge_attention(parts)
    ref_out, ref_lse = R.scaled_dot_product_attention(q, k, v, return_lse=True)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-12, atol=1e-12)


def test_bfloat16_inputs(isa, rng):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes not installed")
    q, k, v = qkv(rng, np.float32)
    bq, bk, bv = (a.astype(ml_dtypes.bfloat16) for a in (q, k, v))
    out = attncore.scaled_dot_product_attention(bq, bk, bv)
    assert out.dtype == ml_dtypes.bfloat16
    ref = R.scaled_dot_product_attention(*(a.astype(np.float32) for a in (bq, bk, bv)))
    np.testing.assert_allclose(out.astype(np.float32), ref, rtol=2e-2, atol=2e-2)


def test_reference_valid_lens_for_a_3d_query_over_batched_keys():
    """A 3-D query (H, Lq, D) broadcast over 4-D keys/values (B, H, Lk, D)
    with d2l's (H,) valid_lens: the reference reads the lengths per leading
    index for every batch element, as the kernel does (it raised IndexError)."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 5, 4)).astype(np.float32)
    k = rng.standard_normal((3, 2, 7, 4)).astype(np.float32)
    v = rng.standard_normal((3, 2, 7, 2)).astype(np.float32)
    vl = np.array([1, 7])
    got = attncore.dot_attention(q, k, v, valid_lens=vl)
    want = R.dot_attention(q, k, v, valid_lens=vl)
    assert want.shape == got.shape == (3, 2, 5, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # row-by-row: batch element b, head 0 sees key 0 only
    np.testing.assert_allclose(want[:, 0], np.broadcast_to(v[:, 0, :1], (3, 5, 2)), rtol=1e-12)


@pytest.mark.parametrize("vl_shape", [(2,), (2, 5)])
def test_valid_lens_that_fit_both_readings_of_a_3d_query_over_batched_keys_are_refused(vl_shape):
    # with B == H, a (2,) is one length per batch element as well as d2l's one per
    # leading index (= head) of the 3-D query; it used to be read per head silently
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 5, 4)).astype(np.float32)
    k = rng.standard_normal((2, 2, 7, 4)).astype(np.float32)
    vl = np.full(vl_shape, 3)
    for fn in (attncore.dot_attention, attncore.scaled_dot_product_attention):
        with pytest.raises(ValueError, match=r"valid_lens of shape \(2(, 5)?,?\) could be read two "
                                             r"ways.*np.broadcast_to\(query, \(2, 2, 5\)"):
            fn(q, k, k, valid_lens=vl)
    # the ways the message offers, each unambiguous
    q4 = np.broadcast_to(q, (2, 2, 5, 4))
    lens = np.array([1, 7])
    per_batch = attncore.dot_attention(q4, k, k, valid_lens=lens)
    np.testing.assert_allclose(per_batch, R.dot_attention(q4, k, k, valid_lens=lens), rtol=1e-5,
                               atol=1e-6)
    per_head = attncore.dot_attention(q, k, k, attn_mask=np.arange(7) < lens[:, None, None])
    assert not np.allclose(per_head, per_batch)
    # a scalar or a size-1 valid_lens means the same either way, and so does a
    # (1, Lq): one length per query row, shared by batch elements and heads alike
    np.testing.assert_array_equal(attncore.dot_attention(q, k, k, valid_lens=np.array([3])),
                                  attncore.dot_attention(q, k, k, valid_lens=3))
    rows = np.array([[1, 2, 3, 4, 7]])
    np.testing.assert_allclose(attncore.dot_attention(q, k, k, valid_lens=rows),
                               R.dot_attention(q4, k, k, valid_lens=np.broadcast_to(rows, (2, 5))),
                               rtol=1e-5, atol=1e-6)
