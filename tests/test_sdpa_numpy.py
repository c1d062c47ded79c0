"""Larger shapes against a float64 NumPy evaluation of the formula: L up to
1024, D in {1, 3, 64, 80, 128, 256}, lengths that are not multiples of any
block size, every ISA, both dtypes."""
import numpy as np
import pytest

import attncore

from _oracle import sdpa_numpy
from _tolerances import assert_close

SHAPES = [
    # B, Hq, Hkv, Lq, Lk, D, Dv
    (1, 2, 2, 1024, 1024, 64, 64),
    (2, 3, 3, 257, 383, 1, 1),
    (1, 2, 1, 131, 517, 3, 3),
    (1, 2, 2, 300, 301, 80, 80),
    (1, 2, 2, 129, 700, 128, 128),
    (1, 1, 1, 97, 259, 256, 256),
    (1, 4, 2, 65, 1000, 64, 32),
    (1, 8, 2, 1, 1024, 128, 128),   # decode, GQA
    (1, 4, 4, 3, 999, 80, 80),      # decode, odd lengths
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("is_causal", [False, True, "bottom_right"])
def test_against_numpy(isa, dtype, shape, is_causal):
    B, Hq, Hkv, Lq, Lk, D, Dv = shape
    if dtype == np.float64 and isa != "portable" and Lq * Lk > 300_000:
        pytest.skip("float64 runs the portable kernels on every level; covered once")
    rng = np.random.default_rng(Lq * 7919 + Lk)
    q = rng.standard_normal((B, Hq, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, Lk, Dv)).astype(dtype)
    out, lse = attncore.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True,
                                                     return_lse=True)
    offset = None if not is_causal else (0 if is_causal is True else Lk - Lq)
    ref, _, ref_lse = sdpa_numpy(q, k, v, causal_offset=offset)
    assert out.dtype == dtype and out.shape == (B, Hq, Lq, Dv)
    assert_close(out, ref, "sdpa", dtype)
    assert_close(lse, ref_lse, "lse", dtype)


@pytest.mark.parametrize("Lq,Lk", [(200, 333), (1, 2000)])
def test_masked_weights_against_numpy(isa, dtype, Lq, Lk):
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 2, Lq, 64)).astype(dtype)
    k = rng.standard_normal((2, 2, Lk, 64)).astype(dtype)
    v = rng.standard_normal((2, 2, Lk, 64)).astype(dtype)
    mask = rng.standard_normal((2, 1, Lq, Lk)).astype(dtype)
    mask[rng.random(mask.shape) < 0.3] = -np.inf
    out, w = attncore.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    ref, ref_w, _ = sdpa_numpy(q, k, v, mask=mask)
    assert_close(out, ref, "sdpa", dtype)
    assert_close(w, ref_w, "weights", dtype)


def test_large_scores_do_not_overflow(isa, dtype):
    """Scores of +-1e4 (exp would overflow float32 and float64 without the max shift)."""
    rng = np.random.default_rng(1)
    q = (rng.standard_normal((1, 2, 50, 16)) * 30).astype(dtype)
    k = (rng.standard_normal((1, 2, 70, 16)) * 30).astype(dtype)
    v = rng.standard_normal((1, 2, 70, 16)).astype(dtype)
    out, lse = attncore.scaled_dot_product_attention(q, k, v, scale=1.0, return_lse=True)
    ref, _, ref_lse = sdpa_numpy(q, k, v, scale=1.0)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    biggest = np.abs(ref_lse).max()
    # a score error of |s| * eps moves the weights by about that much (see _tolerances)
    assert_close(out, ref, "sdpa", dtype, scale=biggest)
    assert_close(lse, ref_lse, "lse", dtype, scale=biggest)
