"""Dense projections (y = x W^T + b) for the scoring families and
MultiHeadAttention, on attncore's own blocked GEMM (csrc/driver/gemm.inc.c).

Why not NumPy's BLAS: its worker threads keep spinning after each call and,
on a small machine, take cores from the OpenMP attention region that runs
next; our GEMM runs on the same OpenMP threads and the same micro-kernel as
the attention. benchmarks/bench_linear.py measures both.
"""
import numpy as np

from . import _config, _core


def linear(x, weight, bias=None, num_threads=None):
    """y = x @ weight.T + bias over the last axis of x.

    x: (..., K); weight: (N, K), any strides; bias: (N,) or None. All of the
    same float dtype (float32 or float64); returns (..., N) of that dtype.
    """
    K = x.shape[-1]
    N = weight.shape[0]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K) if x.ndim != 2 else x
    if (K > 1 and x2.strides[-1] != x2.itemsize) or x2.strides[0] % x2.itemsize:
        x2 = np.ascontiguousarray(x2)
    if weight.strides[0] % weight.itemsize or weight.strides[1] % weight.itemsize:
        weight = np.ascontiguousarray(weight)
    y = np.empty(lead + (N,), dtype=x.dtype)
    if bias is not None:
        bias = np.ascontiguousarray(bias, dtype=x.dtype)
    if x2.shape[0] and N:
        threads = _core.default_threads() if num_threads is None else num_threads
        _core.linear(x.dtype == np.float64, _config.active_isa(), threads, x2, weight, bias,
                     y.reshape(-1, N))
    return y
