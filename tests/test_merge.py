"""merge_attention: shards of keys merge into the exact full result."""
import numpy as np
import pytest

import attncore
from attncore import reference as R

from _tolerances import assert_close


@pytest.mark.parametrize("cuts", [(0, 5, 9), (0, 1, 2, 9), (0, 9)])
def test_merge_equals_full(isa, dtype, rng, cuts):
    q = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    k = rng.standard_normal((2, 3, 9, 5)).astype(dtype)
    v = rng.standard_normal((2, 3, 9, 6)).astype(dtype)
    parts = [attncore.scaled_dot_product_attention(q, k[..., a:b, :], v[..., a:b, :], return_lse=True)
             for a, b in zip(cuts[:-1], cuts[1:])]
    out, lse = attncore.merge_attention(parts)
    ref, ref_lse = R.scaled_dot_product_attention(q, k, v, return_lse=True)
    assert out.dtype == dtype and lse.dtype == dtype
    assert_close(out, ref, "merge", dtype)
    assert_close(lse, ref_lse, "merge", dtype)
    r_out, r_lse = R.merge_attention(parts)
    assert_close(out, r_out, "merge", dtype)


def test_merge_with_fully_masked_shard(dtype, rng):
    q = rng.standard_normal((1, 2, 3, 4)).astype(dtype)
    k = rng.standard_normal((1, 2, 6, 4)).astype(dtype)
    v = rng.standard_normal((1, 2, 6, 4)).astype(dtype)
    dead = np.zeros((3, 3), bool)
    a = attncore.scaled_dot_product_attention(q, k[..., :3, :], v[..., :3, :], attn_mask=dead, return_lse=True)
    b = attncore.scaled_dot_product_attention(q, k[..., 3:, :], v[..., 3:, :], return_lse=True)
    out, lse = attncore.merge_attention([a, b])
    assert_close(out, b[0].astype(np.float64), "merge", dtype)
    out, lse = attncore.merge_attention([a, a])
    assert (out == 0).all() and np.isneginf(lse).all()


def test_merge_propagates_nan(rng):
    o = rng.standard_normal((2, 4)).astype(np.float32)
    l1 = np.array([0.0, np.nan], np.float32)
    out, lse = attncore.merge_attention([(o, l1), (o, np.zeros(2, np.float32))])
    assert np.isnan(out[1]).all() and np.isnan(lse[1]) and np.isfinite(out[0]).all()


def test_merge_accepts_what_sdpa_returns_for_half_inputs():
    """float16 / bfloat16 SDPA results come with float32 lse; merging them
    works, in float32, and gives lse in float32 (it used to be refused)."""
    rng = np.random.default_rng(8)
    q = rng.standard_normal((2, 3, 8)).astype(np.float16)
    k, v = (rng.standard_normal((2, 20, 8)).astype(np.float16) for _ in range(2))
    parts = [attncore.scaled_dot_product_attention(q, k[:, a:b], v[:, a:b], return_lse=True)
             for a, b in ((0, 7), (7, 20))]
    assert parts[0][0].dtype == np.float16 and parts[0][1].dtype == np.float32
    out, lse = attncore.merge_attention(parts)
    whole, whole_lse = attncore.scaled_dot_product_attention(q, k, v, return_lse=True)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    np.testing.assert_allclose(out.astype(np.float32), whole.astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(lse, whole_lse, rtol=1e-6)
    with pytest.raises(TypeError, match="mixes out float32 and lse float64"):
        attncore.merge_attention([(np.zeros((2, 3), np.float32), np.zeros(2))])


def test_torch_parts_give_lse_in_the_same_dtype_as_arrays():
    """float16 parts with float16 lse: lse comes back float32 for tensors as
    for arrays (it was rounded to float16 for tensors)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    o1, o2 = (rng.standard_normal((2, 3, 4)).astype(np.float16) for _ in range(2))
    l1, l2 = ((rng.standard_normal((2, 3)) * 100).astype(np.float16) for _ in range(2))
    out_np, lse_np = attncore.merge_attention([(o1, l1), (o2, l2)])
    out_t, lse_t = attncore.merge_attention([(torch.from_numpy(o1), torch.from_numpy(l1)),
                                             (torch.from_numpy(o2), torch.from_numpy(l2))])
    assert lse_t.dtype == torch.float32 and out_t.dtype == torch.float16
    np.testing.assert_array_equal(lse_t.numpy(), lse_np)
    np.testing.assert_array_equal(out_t.numpy(), out_np)


def test_an_empty_shard_adds_nothing_whatever_its_out_holds():
    """A shard whose row saw no key (lse -inf) weighs 0: its out there is
    not read into the sum (torch's math path returns NaN for such rows;
    0 x NaN used to make the merged row NaN)."""
    rng = np.random.default_rng(0)
    o, lse = rng.standard_normal((2, 3)), rng.standard_normal(2)
    empty_out = np.array([[np.nan, np.inf, -np.inf], [1.0, 2.0, 3.0]])
    empty_lse = np.array([-np.inf, 0.5])
    for parts in ([(empty_out, empty_lse), (o, lse)], [(o, lse), (empty_out, empty_lse)]):
        got, got_lse = attncore.merge_attention(parts)
        want, want_lse = R.merge_attention(parts)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        np.testing.assert_allclose(got_lse, want_lse, rtol=1e-12)
        np.testing.assert_array_equal(got[0], o[0])   # row 0: the live shard alone
    # a NaN in a live shard still propagates
    bad = np.array([[np.nan, 0.0, 0.0], [0.0, 0.0, 0.0]])
    got, _ = attncore.merge_attention([(bad, np.zeros(2)), (o, lse)])
    assert np.isnan(got[0, 0]) and not np.isnan(got[1]).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_near_the_dtype_max_do_not_overflow(dtype):
    """A weighted average of finite outputs is finite: the weights are
    normalised before they meet the outputs (summing w_i out_i first gave inf
    for two shards of out = 0.9 max; a numerics fuzzer's find), here and in
    the reference."""
    big = 0.9 * np.finfo(dtype).max
    o = np.full((2, 3), big, dtype)
    lse = np.array([0.0, 5.0], dtype)
    out, merged_lse = attncore.merge_attention([(o, lse), (o, lse)])
    assert np.all(np.isfinite(out)) and np.allclose(out, big, rtol=4 * np.finfo(dtype).eps)
    ref, ref_lse = R.merge_attention([(o, lse), (o, lse)])
    assert_close(out, ref, "merge", dtype)
    assert_close(merged_lse, ref_lse, "merge", dtype)
    out, _ = attncore.merge_attention([(o, lse), (-o, lse)])
    assert np.array_equal(out, np.zeros_like(out))


def test_many_parts_merge_with_one_rounding(rng):
    """The merge runs in float64 and rounds once: over 8000 float32 parts its
    error stays within 2 u of the exact merge (a float32 sum added up to
    (parts) u; measured 1.4e-5 from 8000 shards of one attention)."""
    n, rows, Dv = 8000, 3, 4
    outs = (rng.standard_normal((n, rows, Dv)) + 3).astype(np.float32)
    lses = rng.uniform(-2, 2, (n, rows)).astype(np.float32)
    parts = [(outs[i], lses[i]) for i in range(n)]
    got, got_lse = attncore.merge_attention(parts)
    want, want_lse = R.merge_attention(parts)
    u = np.finfo(np.float32).eps / 2
    assert np.abs(got - want).max() <= 2 * u * np.abs(want).max()
    assert np.abs(got_lse - want_lse).max() <= 2 * u * np.abs(want_lse).max() + 1e-7
