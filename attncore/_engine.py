"""The shared path from validated arrays to the fused kernel, used by every
attention function: prepare() checks and normalises query/key/value, run()
validates the options, allocates the outputs and calls attncore._core.sdpa.

Every array the C kernels read or write passes through
attncore._layout.for_kernel (native byte order, aligned, item-size strides).
Results come back in the caller's array type (NumPy or torch) and dtype.
"""
import contextlib
import contextvars
import math

import numpy as np

from . import _arrays, _config, _core, _layout
from . import _validate as V

SCORE_DOT = _core.SCORE_DOT
SCORE_ADDITIVE = _core.SCORE_ADDITIVE

# plan_info(): run() returns the kernel's plan instead of running it
_plan_only = contextvars.ContextVar("attncore_plan_only", default=False)


def planning():
    """Whether this call is inside plan_info (fast paths must not run it)."""
    return _plan_only.get()


def plan_info(fn, *args, **kwargs):
    """How the kernel would run ``fn(*args, **kwargs)`` (fn: one of the
    attention functions), without running it: a dict with the path
    ("panel" or "rows"), the additive form ("product", "tanh" or None),
    rows_per_unit, units, chunks (> 1: split-K), chunk_len, key_block and
    threads. Internal: tests use it to assert that they reach the path they
    name.

    Example
    -------
    >>> import numpy as np, attncore
    >>> from attncore._engine import plan_info
    >>> q = np.ones((1, 8, 1, 64), np.float32); kv = np.ones((1, 2, 4096, 64), np.float32)
    >>> plan = plan_info(attncore.scaled_dot_product_attention, q, kv, kv, enable_gqa=True)
    >>> plan["path"], plan["chunks"] > 1
    ('rows', True)
    """
    token = _plan_only.set(True)
    try:
        return fn(*args, **kwargs)
    finally:
        _plan_only.reset(token)


class Problem:
    """Validated inputs: arrays in the compute dtype with a heads dimension,
    and the sizes of the SDPA layout (..., H, L, D)."""

    def __init__(self, **fields):
        self.torch_dtype = None   # the result's torch dtype name when tensors came in
        self.query_ndim = None
        self.io = None            # q/k/v/out element type (default: the compute dtype)
        self.__dict__.update(fields)
        if self.io is None:
            self.io = self.compute


def prepare(op, query, key, value, enable_gqa=False, native_half=False, **params):
    """Check dtypes and shapes of query (..., Hq, Lq, Dq), key (..., Hkv, Lk, Dk)
    and value (..., Hkv, Lk, Dv); `params` are further arrays (weights) that
    must share their dtype. Returns a Problem; params come back converted in
    Problem.params. With native_half, float16/bfloat16 q/k/v stay 16-bit (the
    SDPA kernels read them); otherwise they are converted to float32."""
    torch_dtype = _arrays.torch_dtype_name(query) if _arrays.is_torch(query) else None
    arrays, compute, result = V.float_arrays(op, native_half=native_half, query=query, key=key,
                                             value=value, **params)
    q, k, v = arrays.pop("query"), arrays.pop("key"), arrays.pop("value")
    query_shape, key_shape, value_shape = q.shape, k.shape, v.shape
    enable_gqa = V.flag(op, "enable_gqa", enable_gqa)

    # a 2-D (L, D) call is one head without batch dims
    flat = [a.ndim == 2 for a in (q, k, v)]
    if any(flat):
        if not all(flat):
            raise ValueError(f"{op}: query, key and value must all be 2-D (L, D) or all have "
                             f"a heads dimension; got shapes {q.shape}, {k.shape}, {v.shape}")
        q, k, v = q[None], k[None], v[None]
    layout = "(..., heads, seq_len, head_dim)"
    for name, a in (("query", q), ("key", k), ("value", v)):
        V.check_min_ndim(op, name, a, 3, layout)

    Hq, Lq, Dq = q.shape[-3:]
    Hkv, Lk, Dk = k.shape[-3:]
    Hv, Lv, Dv = v.shape[-3:]
    if (Hv, Lv) != (Hkv, Lk):
        raise ValueError(f"{op}: key and value must have the same heads and seq_len; "
                         f"got key {key_shape} and value {value_shape}")
    if Hq != Hkv:
        if not enable_gqa:
            raise ValueError(f"{op}: query has {Hq} heads but key/value have {Hkv}; pass "
                             f"enable_gqa=True for grouped-query attention (query {query_shape}, "
                             f"key {key_shape})")
        if Hkv == 0 or Hq % Hkv:
            raise ValueError(f"{op}: with enable_gqa the query heads ({Hq}) must be a multiple "
                             f"of the key/value heads ({Hkv}); query {query_shape}, key {key_shape}")
    batch = V.broadcast_batch(op, query=q, key=k, value=v)
    io = result if native_half else compute   # the element type the kernels read and write
    return Problem(q=q, k=k, v=v, compute=compute, result=result, io=io, flat=flat[0], batch=batch,
                   Hq=Hq, Hkv=Hkv, Lq=Lq, Lk=Lk, Dq=Dq, Dk=Dk, Dv=Dv, params=arrays,
                   query_shape=query_shape, key_shape=key_shape, value_shape=value_shape,
                   torch_dtype=torch_dtype, query_ndim=len(query_shape))


def run(op, p, q, k, *, scale=1.0, score_kind=SCORE_DOT, w_score=None, attn_mask=None,
        is_causal=False, dropout_p=0.0, seed=None, valid_lens=None, num_threads=None, out=None,
        return_weights=False, return_lse=False, kv=None):
    """Attention of the scoring queries `q` (..., Hq, Lq, D) against the scoring
    keys `k` (..., Hkv, Lk, D) -- p.q/p.k for dot products, projections for the
    other families -- with p.v as values. kv: (kernel entry, k scales, v
    scales) when k and p.v are a KV cache's compact storage (KVCache.attend).
    Returns out[, weights][, lse] (or, inside plan_info, the kernel's plan as
    a dict without running it)."""
    batch, Hq, Hkv, Lq, Lk, Dv = p.batch, p.Hq, p.Hkv, p.Lq, p.Lk, p.Dv
    compute, result = p.compute, p.result
    D = q.shape[-1]
    out_shape = batch + (Hq, Lq, Dv)
    scores_shape = batch + (Hq, Lq, Lk)
    return_weights = V.flag(op, "return_weights", return_weights)
    return_lse = V.flag(op, "return_lse", return_lse)

    causal, offset = V.causal_offset(op, is_causal, Lq, Lk)
    drop_threshold, drop_seed, drop_scale = V.dropout(op, dropout_p, seed)
    threads = V.num_threads(op, num_threads)
    mask_kind, mask = V.mask(op, attn_mask, scores_shape, compute, result)
    vl = V.valid_lens(op, valid_lens, batch, Hq, Lq, Lk, p.query_ndim or q.ndim)
    if out is not None:
        V.output(op, out, out_shape[1:] if p.flat else out_shape, result)

    io = p.io
    q, k, v = (_layout.for_kernel(a) for a in (q, k, p.v))
    if mask is not None:
        mask = _layout.for_kernel(mask, unit_last=False)
    res = _direct_output(out, p.flat, io, (q, k, v, mask))
    if res is None:
        res = _layout.empty(out_shape, io)
    weights = _layout.empty(scores_shape, compute) if return_weights else None
    lse = _layout.empty(batch + (Hq, Lq), compute) if return_lse else None
    if w_score is not None:
        w_score = np.ascontiguousarray(w_score, dtype=compute)

    nb = math.prod(batch)
    if nb and Hq and Lq:
        io_code, bits = _io_code(io)
        k_scale = v_scale = None
        if kv is not None:   # the cache's storage goes to its own entry as it is
            io_code, k_scale, v_scale = kv
            kbits, vbits = k, v
        else:
            kbits, vbits = bits(k), bits(v)
        call = (op, io_code, _config.active_isa(), threads, (nb, Hq, Hkv, Lq, Lk, D, Dv), batch,
                bits(q), kbits, vbits, bits(res), mask_kind, mask, causal, offset, vl,
                scale, drop_threshold, drop_seed, drop_scale, weights, lse, score_kind, w_score)
        if _plan_only.get():
            return _core.sdpa(*call, plan_only=True, k_scale=k_scale, v_scale=v_scale)
        _core.sdpa(*call, k_scale=k_scale, v_scale=v_scale)
    elif _plan_only.get():
        return None

    if p.flat:
        res = res[0]
        weights = weights[0] if weights is not None else None
        lse = lse[0] if lse is not None else None
    if out is not None:
        if res is not out:
            np.copyto(out, res, casting="unsafe")
        res = out
    elif result != io:
        res = res.astype(result)
    if weights is not None and result != compute:
        weights = weights.astype(result)
    if p.torch_dtype is not None and out is None:
        res = _arrays.to_torch(res, p.torch_dtype)
        weights = _arrays.to_torch(weights, p.torch_dtype) if weights is not None else None
        lse = _arrays.to_torch(lse, lse.dtype.name) if lse is not None else None   # float32/64
    results = tuple(x for x in (res, weights, lse) if x is not None)
    return results if len(results) > 1 else results[0]


def _io_code(io):
    """The kernel entry for element type `io`, and how to hand it an array
    (bfloat16 crosses as its 16-bit patterns)."""
    if io == np.float32:
        return _core.IO_F32, _same
    if io == np.float64:
        return _core.IO_F64, _same
    if io == np.float16:
        return _core.IO_F16, _same
    return _core.IO_BF16, _bits16


def _same(a):
    return a


def _bits16(a):
    return a.view(np.uint16)


def _direct_output(out, flat, compute, inputs):
    """`out` itself when the kernel can write into it directly, else None."""
    if out is None or out.dtype != compute:
        return None
    target = out[None] if flat else out
    if not _layout.is_kernel_ready(target):
        return None
    if any(a is not None and np.may_share_memory(target, a) for a in inputs):
        return None
    return target
