"""PyTorch's scaled_dot_product_attention as an independent oracle (skipped,
with a reason, when torch is not installed)."""
import numpy as np
import pytest

import attncore

from _tolerances import assert_close

torch = pytest.importorskip("torch", reason="torch not installed (pip install '.[compare]')")
F = torch.nn.functional


@pytest.mark.parametrize("shape", [(2, 4, 4, 100, 130, 64), (1, 8, 2, 1, 700, 128), (1, 6, 3, 64, 64, 80)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_matches_torch(isa, shape, is_causal):
    B, Hq, Hkv, Lq, Lk, D = shape
    rng = np.random.default_rng(3)
    q = rng.standard_normal((B, Hq, Lq, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    got = attncore.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True)
    with torch.no_grad():
        ref = F.scaled_dot_product_attention(torch.from_numpy(q).double(), torch.from_numpy(k).double(),
                                             torch.from_numpy(v).double(), is_causal=is_causal,
                                             enable_gqa=Hq != Hkv).numpy()
    assert_close(got, ref, "sdpa", np.float32)


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_masks_match_torch(isa, mask_kind):
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 3, 17, 16))
    k = rng.standard_normal((2, 3, 23, 16))
    v = rng.standard_normal((2, 3, 23, 8))
    mask = rng.random((2, 1, 17, 23)) > 0.3 if mask_kind == "bool" else rng.standard_normal((17, 23))
    mask[..., 0] = True if mask_kind == "bool" else mask[..., 0]  # torch gives NaN for empty rows
    got = attncore.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    ref = F.scaled_dot_product_attention(*(torch.from_numpy(x) for x in (q, k, v)),
                                         attn_mask=torch.from_numpy(mask), scale=0.3).numpy()
    assert_close(got, ref, "sdpa", np.float64)


def test_torch_tensors_in_torch_tensors_out():
    t = torch.randn(1, 2, 5, 8)
    out = attncore.scaled_dot_product_attention(t, t, t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    ref = F.scaled_dot_product_attention(t, t, t).numpy()
    assert_close(out.numpy(), ref.astype(np.float64), "sdpa", np.float32)


def test_lazily_negated_views_are_read_as_their_values():
    """x.conj().imag and x._neg_view() are views whose memory holds -x (torch's
    neg bit): the fast path must not read the memory as it is."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 3, 8, generator=g)
    k = torch.randn(1, 2, 5, 8, generator=g)
    v = torch.randn(1, 2, 5, 1, generator=g)
    kneg = (-k)._neg_view()                                   # values k, memory -k
    vc = torch.complex(torch.zeros_like(v), -v).conj().imag   # values v, memory -v, stride 2
    assert kneg.is_neg() and vc.is_neg()
    want = attncore.scaled_dot_product_attention(q, k.clone(), v.clone())
    for kk, vv in ((kneg, v), (k, vc), (kneg, vc)):
        torch.testing.assert_close(attncore.scaled_dot_product_attention(q, kk, vv), want,
                                   rtol=0, atol=0)
        torch.testing.assert_close(attncore.torch.scaled_dot_product_attention(q, kk, vv), want,
                                   rtol=0, atol=0)


def test_non_tensor_and_sparse_arguments_raise_type_errors():
    q = torch.ones(1, 1, 2, 4)
    with pytest.raises(TypeError, match="key must be a torch.Tensor; got ndarray"):
        attncore.torch.scaled_dot_product_attention(q, np.ones((1, 1, 2, 4), np.float32), q)
    with pytest.raises(TypeError, match="query is a torch.sparse_coo tensor.*to_dense"):
        attncore.scaled_dot_product_attention(q.to_sparse(), q, q)


def test_merge_attention_returns_tensors_for_tensors():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 3, 8, generator=g), torch.randn(1, 2, 9, 8, generator=g),
               torch.randn(1, 2, 9, 8, generator=g))
    parts = [attncore.scaled_dot_product_attention(q, k[:, :, s], v[:, :, s], return_lse=True)
             for s in (slice(0, 4), slice(4, 9))]
    out, lse = attncore.merge_attention(parts)
    assert isinstance(out, torch.Tensor) and isinstance(lse, torch.Tensor)
    torch.testing.assert_close(out, attncore.scaled_dot_product_attention(q, k, v))


def test_kvcache_attend_returns_tensors_for_a_tensor_query():
    cache = attncore.KVCache(8, 1, 4, dtype="int8")
    rng = np.random.default_rng(2)
    cache.append(rng.standard_normal((1, 1, 5, 4), dtype=np.float32),
                 rng.standard_normal((1, 1, 5, 4), dtype=np.float32))
    q = torch.randn(1, 2, 1, 4, generator=torch.Generator().manual_seed(2))
    out, lse = cache.attend(q, return_lse=True)
    assert isinstance(out, torch.Tensor) and isinstance(lse, torch.Tensor)
    want_out, want_lse = cache.attend(q.numpy(), return_lse=True)
    assert np.array_equal(out.numpy(), want_out) and np.array_equal(lse.numpy(), want_lse)
    buf = np.empty((1, 2, 1, 4), np.float32)[..., ::-1]                 # out= comes back as itself
    assert cache.attend(q, out=buf) is buf and np.array_equal(buf, want_out)


@pytest.mark.parametrize("heads", [(1, 4, 4), (4, 1, 4), (4, 1, 1), (4, 4, 1), (1, 1, 4)])
def test_torch_sdpa_broadcasts_a_single_head_like_torch(heads):
    """torch's SDPA treats the heads dim as a batch dim: a size-1 head count
    broadcasts against H. attncore.torch does the same (K/V of one head:
    grouped-query attention with one kv head, read once)."""
    import attncore.torch as at
    hq, hk, hv = heads
    g = torch.Generator().manual_seed(sum(heads))
    q, k, v = (torch.randn(2, h, L, 8, generator=g) for h, L in ((hq, 3), (hk, 5), (hv, 5)))
    got = at.scaled_dot_product_attention(q, k, v)
    want = F.scaled_dot_product_attention(q, k, v)
    assert got.shape == want.shape == (2, 4, 3, 8)
    assert_close(got.numpy(), want.numpy(), "sdpa", np.float32)


def test_numpy_heads_that_cannot_be_grouped_are_told_why():
    with pytest.raises(ValueError, match=r"query has 1 heads but key/value have 4: .* broadcast it to 4 heads"):
        attncore.scaled_dot_product_attention(np.ones((2, 1, 3, 8)), np.ones((2, 4, 5, 8)), np.ones((2, 4, 5, 8)))
    with pytest.raises(ValueError, match=r"needs Hq a multiple of Hkv; query"):
        attncore.scaled_dot_product_attention(np.ones((2, 4, 3, 8)), np.ones((2, 3, 5, 8)), np.ones((2, 3, 5, 8)),
                                              enable_gqa=True)
    # no query heads at all is a multiple (an empty result, as torch gives)
    empty = attncore.scaled_dot_product_attention(np.ones((1, 0, 4, 8)), np.ones((1, 2, 5, 8)),
                                                  np.ones((1, 2, 5, 8)), enable_gqa=True)
    assert empty.shape == (1, 0, 4, 8)
