"""attncore's GEMM (y = x W^T + b, used by the projections) against the
pure-Python reference and float64 NumPy, on every ISA: edge sizes, strided
weights, no bias, thread-count independence."""
import numpy as np
import pytest

from attncore import _linalg
from attncore import reference as R

from _tolerances import assert_close


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (5, 3, 7), (9, 17, 33), (70, 130, 65), (3, 0, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_reference(isa, dtype, rng, M, K, N, bias):
    x = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((N, K)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype) if bias else None
    y = _linalg.linear(x, w, b)
    assert y.shape == (M, N) and y.dtype == dtype
    assert_close(y, R.linear(x, w, b), "sdpa", dtype, scale=max(1.0, np.sqrt(K)))


def test_linear_strided_and_batched(isa, dtype, rng):
    x = rng.standard_normal((2, 3, 40, 50)).astype(dtype)[:, :, ::2, :48]   # (2, 3, 20, 48) view
    w = rng.standard_normal((48, 70)).astype(dtype).T                         # (70, 48) transposed view
    y = _linalg.linear(x, w)
    assert y.shape == (2, 3, 20, 70)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    assert_close(y, ref, "sdpa", dtype, scale=np.sqrt(48))


@pytest.mark.parametrize("M", [1, 3, 40])   # dot-product path (few rows) and packed path
def test_linear_transposed_weight(isa, dtype, rng, M):
    x = rng.standard_normal((M, 37)).astype(dtype)
    w = rng.standard_normal((37, 45)).astype(dtype).T   # (45, 37), k stride 45
    b = rng.standard_normal(45).astype(dtype)
    assert_close(_linalg.linear(x, w, b), R.linear(x, w, b), "sdpa", dtype, scale=np.sqrt(37))


def test_linear_large_against_numpy(isa, rng):
    x = rng.standard_normal((300, 700)).astype(np.float32)
    w = rng.standard_normal((130, 700)).astype(np.float32)
    b = rng.standard_normal(130).astype(np.float32)
    ref = x.astype(np.float64) @ w.astype(np.float64).T + b
    assert_close(_linalg.linear(x, w, b), ref, "sdpa", np.float32, scale=np.sqrt(700))


def test_linear_bitwise_independent_of_threads(rng):
    x = rng.standard_normal((257, 300)).astype(np.float32)
    w = rng.standard_normal((99, 300)).astype(np.float32)
    base = _linalg.linear(x, w, num_threads=1)
    for n in (2, 3, 5):
        np.testing.assert_array_equal(_linalg.linear(x, w, num_threads=n), base)


@pytest.mark.parametrize("M", [6, 18, 31, 100])   # few rows (dot products) and packed
@pytest.mark.parametrize("K", [24, 100])
def test_linear_row_results_do_not_depend_on_row_position(isa, dtype, rng, M, K):
    """A row's output is bitwise the same wherever it sits in the batch and
    whatever the batch size (within one path): MultiHeadAttention with
    batch_first=False projects (L, B, E) rows in another order than (B, L, E),
    and must give the same numbers. It used not to: the leftover keys of the
    rows-path block were summed in another order."""
    x = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((72, K)).astype(dtype)   # 72: a partial key block on every level
    b = rng.standard_normal(72).astype(dtype)
    y = _linalg.linear(x, w, b)
    perm = rng.permutation(M)
    np.testing.assert_array_equal(_linalg.linear(x[perm], w, b), y[perm])
    np.testing.assert_array_equal(_linalg.linear(x[: M - 1], w, b), y[: M - 1])
