"""Dense projections (y = x W^T + b) for the scoring families and
MultiHeadAttention, on attncore's own blocked GEMM (csrc/driver/gemm.inc.c).

Why not NumPy's BLAS: its worker threads keep spinning after each call and,
on a small machine, take cores from the OpenMP attention region that runs
next; our GEMM runs on the same OpenMP threads and the same micro-kernel as
the attention. benchmarks/bench_linear.py measures both.
"""
import numpy as np

from . import _config, _core, _layout


def linear(x, weight, bias=None, num_threads=None, op="linear", names=("weight", "bias"), out_features=None,
           plan_only=False):
    """y = x @ weight.T + bias over the last axis of x.

    x: (..., K); weight: (N, K), any strides; bias: (N,) or None. All of the
    same float dtype (float32 or float64); returns (..., N) of that dtype.
    `op` names the public function in errors, `names` the weight and bias
    (a module's parameters can be reassigned: they are checked here, as the
    kernel reads N x K weights and N biases); `out_features`, if given, is
    the N the caller needs. With `plan_only`, nothing runs: the kernel's
    plan is returned (a dict: path "rows" / "packed" / "packed-strided" /
    "none", units, threads), for tests that assert the path they name.
    """
    K = x.shape[-1]
    for name, a in ((names[0], weight), (names[1], bias)):
        if a is None:
            continue
        if not isinstance(a, np.ndarray) or a.dtype.newbyteorder("=") != x.dtype:   # (any byte order)
            what = f"{a.dtype} array" if isinstance(a, np.ndarray) else type(a).__name__
            raise TypeError(f"{op}: {name} must be a {x.dtype} NumPy array (the layer's dtype); "
                            f"got a {what}")
    if weight.ndim != 2 or weight.shape[1] != K or out_features not in (None, weight.shape[0]):
        n = "N" if out_features is None else out_features
        raise ValueError(f"{op}: {names[0]} has shape {weight.shape}; the input has {K} features, "
                         f"so it must be ({n}, {K})")
    N = weight.shape[0]
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"{op}: {names[1]} gives shape {bias.shape} for a projection to {N} "
                         f"features; it must be ({N},)")
    lead = x.shape[:-1]
    M = int(np.prod(lead))   # (not reshape(-1, K): ambiguous when x is empty)
    x2 = _layout.for_kernel(x.reshape(M, K) if x.ndim != 2 else x)
    weight = _layout.for_kernel(weight, unit_last=False)
    y = _layout.empty(lead + (N,), x.dtype)
    if bias is not None:
        bias = np.ascontiguousarray(_layout.for_kernel(bias), dtype=x.dtype)
    threads = _core.default_threads() if num_threads is None else num_threads
    if plan_only:
        return _core.linear(op, x.dtype == np.float64, _config.active_isa(), threads, x2, weight, bias,
                            y.reshape(M, N), plan_only=True)
    if K == 0:   # an empty sum: y is the bias
        y[...] = 0 if bias is None else bias
    elif M and N:
        _core.linear(op, x.dtype == np.float64, _config.active_isa(), threads, x2, weight, bias,
                     y.reshape(M, N))
    return y
