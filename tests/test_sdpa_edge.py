"""Edge cases: fully masked rows, empty sequences, NaN/Inf propagation."""
import numpy as np
import pytest

import attncore
from attncore import reference as R

from _paths import assert_plan


def data(rng, dtype, Lq=4, Lk=6, D=3):
    return (rng.standard_normal((1, 2, Lq, D)).astype(dtype),
            rng.standard_normal((1, 2, Lk, D)).astype(dtype),
            rng.standard_normal((1, 2, Lk, D)).astype(dtype))


@pytest.mark.parametrize("how", ["bool", "float", "causal", "valid_lens"])
@pytest.mark.parametrize("Lk", [6, 1500])  # panel path / split rows path (asserted)
def test_fully_masked_rows_are_zero_not_nan(isa, dtype, rng, how, Lk):
    q, k, v = data(rng, dtype, Lq=4 if Lk == 6 else 2, Lk=Lk)
    Lq = q.shape[-2]
    kw = {}
    if how == "bool":
        m = np.ones((Lq, Lk), bool)
        m[1] = False
        kw["attn_mask"] = m
    elif how == "float":
        m = np.zeros((Lq, Lk), dtype)
        m[1] = -np.inf
        kw["attn_mask"] = m
    elif how == "causal":
        kw["is_causal"] = "bottom_right"
        q, k, v = data(rng, dtype, Lq=Lk + 2, Lk=Lk) if Lk == 6 else data(rng, dtype, Lq=2, Lk=1)
        Lq = q.shape[-2]
    else:
        kw["valid_lens"] = np.zeros((1, Lq), int) + np.arange(Lq) % 2 * Lk
    if Lk == 1500 and how != "causal":
        # the split decode path: no weights (weights turn the split off)
        assert_plan(attncore.scaled_dot_product_attention, q, k, v, path="rows", split=True, **kw)
        out, lse = attncore.scaled_dot_product_attention(q, k, v, return_lse=True, **kw)
        w = np.zeros(lse.shape + (Lk,))
    else:
        out, w, lse = attncore.scaled_dot_product_attention(q, k, v, return_weights=True,
                                                            return_lse=True, **kw)
    assert not np.isnan(out).any() and not np.isnan(w).any() and not np.isnan(lse).any()
    dead = np.isneginf(lse)
    assert dead.any()
    assert (out[dead] == 0).all() and (w[dead] == 0).all()
    ref = R.scaled_dot_product_attention(q, k, v, return_weights=True, return_lse=True, **kw) if Lq * Lk < 5000 else None
    if ref is not None:
        np.testing.assert_array_equal(np.isneginf(ref[2]), dead)


@pytest.mark.parametrize("fn", ["scaled_dot_product_attention", "sigmoid_attention", "hard_attention"])
def test_reference_takes_empty_query_sets_with_lengths_and_slopes(fn):
    """attncore.reference answers where the kernels do: no query rows (or no
    heads) with valid_lens or ALiBi slopes (it used to fail reshaping an
    empty table with -1)."""
    q, k, v = np.ones((2, 1, 0, 4)), np.ones((2, 1, 5, 4)), np.ones((2, 1, 5, 3))
    vl = np.array([2, 3])
    assert getattr(R, fn)(q, k, v, valid_lens=vl).shape == getattr(attncore, fn)(q, k, v, valid_lens=vl).shape
    if fn == "scaled_dot_product_attention":
        h0 = np.ones((1, 0, 2, 4))
        assert R.scaled_dot_product_attention(h0, h0, h0, alibi_slopes=np.ones(0)).shape == (1, 0, 2, 4)
        for shape in [(2, 3, 0), (2, 0, 4), (0, 3, 4)]:   # no value columns, rows or batch
            parts = [(np.zeros(shape), np.zeros(shape[:-1]))] * 2
            assert R.merge_attention(parts)[0].shape == attncore.merge_attention(parts)[0].shape == shape


def test_empty_sequences(isa, dtype, rng):
    q = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    k = np.zeros((2, 3, 0, 4), dtype)
    v = np.zeros((2, 3, 0, 6), dtype)
    out, w, lse = attncore.scaled_dot_product_attention(q, k, v, return_weights=True, return_lse=True)
    assert out.shape == (2, 3, 5, 6) and (out == 0).all()
    assert w.shape == (2, 3, 5, 0)
    assert np.isneginf(lse).all()
    out = attncore.scaled_dot_product_attention(q[:, :, :0], np.ones((2, 3, 7, 4), dtype), np.ones((2, 3, 7, 6), dtype))
    assert out.shape == (2, 3, 0, 6)
    out = attncore.scaled_dot_product_attention(np.ones((0, 3, 5, 4), dtype), np.ones((0, 3, 7, 4), dtype),
                                                np.ones((0, 3, 7, 6), dtype))
    assert out.shape == (0, 3, 5, 6)
    # zero-width features
    out = attncore.scaled_dot_product_attention(np.ones((1, 2, 3, 0), dtype), np.ones((1, 2, 4, 0), dtype),
                                                np.ones((1, 2, 4, 5), dtype))
    np.testing.assert_allclose(out, 1.0)


@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_propagate_like_reference(isa, dtype, rng, where, bad):
    q, k, v = data(rng, dtype)
    arr = {"q": q, "k": k, "v": v}[where]
    arr[0, 1, 2, 1] = bad
    out, lse = attncore.scaled_dot_product_attention(q, k, v, return_lse=True)
    ref, ref_lse = R.scaled_dot_product_attention(q, k, v, return_lse=True)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isnan(lse), np.isnan(ref_lse))
    fin = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(out), fin)
    np.testing.assert_allclose(out[fin], ref[fin], rtol=1e-4, atol=1e-5)


def test_nan_in_mask_propagates(isa, dtype, rng):
    q, k, v = data(rng, dtype)
    m = np.zeros((4, 6), dtype)
    m[2, 3] = np.nan
    out = attncore.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert np.isnan(out[:, :, 2]).all() and not np.isnan(out[:, :, [0, 1, 3]]).any()


@pytest.mark.parametrize("how", ["bool", "causal", "valid_lens"])
def test_zero_scale_fully_masked_rows(isa, dtype, how):
    """scale=0 used to turn masked scores into 0 * -inf = NaN (found by
    tests/test_fuzz.py): masked rows are zeros and the rest uniform."""
    q = np.ones((1, 1, 3, 4), dtype)
    k = np.ones((1, 1, 5, 4), dtype)
    v = np.arange(5, dtype=dtype).reshape(1, 1, 5, 1) * np.ones(3, dtype)
    kw = {"bool": dict(attn_mask=np.array([[True] * 5, [False] * 5, [True, True, False, False, False]])),
          "causal": dict(is_causal="top_left"),
          "valid_lens": dict(valid_lens=np.array([[5, 0, 2]]))}[how]
    out = attncore.scaled_dot_product_attention(q, k, v, scale=0.0, **kw)
    ref = R.scaled_dot_product_attention(q, k, v, scale=0.0, **kw)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("Lq, copied", [(64, True), (1, False)])
def test_spread_key_value_rows_are_read_from_a_dense_copy(monkeypatch, Lq, copied):
    """K/V rows spread out in memory (heads interleaved: a (B, L, H, D) buffer
    read as (B, H, L, D), as transformers passes them) are copied dense once
    when many query rows re-read them (attncore._layout.is_spread); the fast
    path declines those calls, and the result is bit for bit the one from
    dense arrays. A decode-shaped call reads them in place."""
    from attncore import _config, _core, _layout

    rng = np.random.default_rng(7)
    B, H, Lk, D = 1, 8, 2048, 64          # one head's rows span 2048 x 512 items
    q = rng.standard_normal((B, H, Lq, D), dtype=np.float32)
    k, v = (np.ascontiguousarray(rng.standard_normal((B, Lk, H, D), dtype=np.float32))
            .transpose(0, 2, 1, 3) for _ in range(2))
    assert _layout.is_spread(k.shape, [s // 4 for s in k.strides], H // H * Lq) is copied
    fast = _core.sdpa_fast("scaled_dot_product_attention", q, k, v, True, None, False, 2,
                           _config.active_isa())
    assert (fast is None) is copied
    copies = []
    dense_if_spread = _layout.dense_if_spread
    monkeypatch.setattr(_layout, "dense_if_spread",
                        lambda x, reuse: copies.append(dense_if_spread(x, reuse) is not x) or
                        dense_if_spread(x, reuse))
    out = attncore.scaled_dot_product_attention(q, k, v, is_causal=True)
    dense = attncore.scaled_dot_product_attention(q, np.ascontiguousarray(k), np.ascontiguousarray(v),
                                                  is_causal=True)
    np.testing.assert_array_equal(out, dense)
    assert copies[:2] == ([True, True] if copied else [])


def test_dense_copy_of_spread_rows_keeps_broadcast_dims():
    """The dense copy holds the distinct data once: a K/V broadcast over the
    batch (stride 0) stays broadcast, and the result is unchanged."""
    from attncore import _layout

    rng = np.random.default_rng(8)
    base = np.ascontiguousarray(rng.standard_normal((1, 2048, 8, 64), dtype=np.float32))
    k = np.broadcast_to(base.transpose(0, 2, 1, 3), (3, 8, 2048, 64))
    d = _layout.dense_if_spread(k, reuse=64)
    assert d.strides == (0, 2048 * 64 * 4, 64 * 4, 4)           # dense heads, batch broadcast
    assert d.base.shape == (1, 8, 2048, 64) and d.base.flags.c_contiguous   # one copy of the data
    np.testing.assert_array_equal(d, k)
    q = rng.standard_normal((3, 8, 64, 64), dtype=np.float32)
    out = attncore.scaled_dot_product_attention(q, k, k)
    dense = attncore.scaled_dot_product_attention(q, np.ascontiguousarray(k), np.ascontiguousarray(k))
    np.testing.assert_array_equal(out, dense)
