"""Property-based tests (hypothesis) over shapes, strides, masks, dtypes and
kernel levels, against the float64 NumPy formula."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import attncore
from attncore import _config

from _oracle import sdpa_numpy
from _tolerances import assert_close

from conftest import SUPPORTED_ISAS as LEVELS   # (not the emulated avx512bf16emu)


@st.composite
def problems(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    nbatch = draw(st.integers(0, 2))
    batch = tuple(draw(st.lists(st.integers(1, 2), min_size=nbatch, max_size=nbatch)))
    Hkv = draw(st.integers(1, 3))
    G = draw(st.integers(1, 3))
    Lq = draw(st.integers(1, 70))
    Lk = draw(st.integers(0, 140))
    D = draw(st.integers(1, 40))
    Dv = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)

    def tensor(shape):
        # sometimes a strided view: a slice of a larger array, maybe transposed
        mode = draw(st.sampled_from(["plain", "sliced", "fortran", "reversed"]))
        if mode == "sliced":
            big = rng.standard_normal(shape[:-1] + (2 * shape[-1] + 1,)).astype(dtype)
            return big[..., 1::2]
        a = rng.standard_normal(shape).astype(dtype)
        if mode == "fortran":
            return np.asfortranarray(a)
        if mode == "reversed" and len(shape) >= 2:
            return np.ascontiguousarray(a[..., ::-1, :])[..., ::-1, :]
        return a

    q = tensor(batch + (Hkv * G, Lq, D))
    k = tensor(batch + (Hkv, Lk, D))
    v = tensor(batch + (Hkv, Lk, Dv))
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    mask = None
    if mask_kind:
        full = batch + (Hkv * G, Lq, Lk)
        mshape = tuple(draw(st.sampled_from([1, n])) for n in full)[draw(st.integers(0, len(full) - 1)):]
        mask = rng.random(mshape) > 0.3 if mask_kind == "bool" else rng.standard_normal(mshape).astype(dtype)
    causal = draw(st.sampled_from([False, True, "bottom_right"]))
    level = draw(st.sampled_from(LEVELS))
    threads = draw(st.integers(1, 3))
    return dtype, q, k, v, mask, causal, level, threads


@given(problems())
def test_matches_formula(problem):
    dtype, q, k, v, mask, causal, level, threads = problem
    Lq, Lk = q.shape[-2], k.shape[-2]
    with _config.use_isa(level):
        out, lse = attncore.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True, return_lse=True,
            num_threads=threads)
    offset = None if not causal else (0 if causal is True else Lk - Lq)
    ref, _, ref_lse = sdpa_numpy(q, k, v, mask=mask, causal_offset=offset)
    assert out.dtype == dtype
    assert not np.isnan(out).any()
    assert_close(out, ref, "sdpa", dtype)
    assert_close(lse, ref_lse, "lse", dtype)


@given(problems())
def test_rows_sum_to_one_or_zero(problem):
    dtype, q, k, v, mask, causal, level, threads = problem
    with _config.use_isa(level):
        _, w = attncore.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                     enable_gqa=True, return_weights=True)
    sums = w.astype(np.float64).sum(-1)
    assert (w >= 0).all()
    np.testing.assert_allclose(sums[sums > 0.5], 1.0, rtol=1e-5)
    assert (sums[sums <= 0.5] == 0).all()
