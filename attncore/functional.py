"""Scaled dot-product attention, dot attention and merge_attention (the
public API; see shared/API.md).

Argument checks, masks and the kernel call are shared with the other
scoring functions in attncore/_engine.py. The numerics live in C:
csrc/driver/sdpa.inc.c (loops, threads, online-softmax bookkeeping) and
csrc/kernels/tiles.inc.c (register-blocked tile math).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

import numpy as np

from . import _arrays, _config, _core, _engine
from . import _validate as V
from ._types import ArrayLike, Causal, OptArray, Result, Scalar

_SDPA = "scaled_dot_product_attention"


def scaled_dot_product_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                                 attn_mask: OptArray = None, dropout_p: Scalar = 0.0,
                                 is_causal: Causal = False, scale: Optional[Scalar] = None,
                                 enable_gqa: bool = False, *, return_weights: bool = False,
                                 return_lse: bool = False, num_threads: Optional[int] = None,
                                 out: Optional[np.ndarray] = None, seed: Optional[int] = None,
                                 valid_lens: OptArray = None,
                                 window: Optional[Tuple[Optional[int], Optional[int]]] = None,
                                 alibi_slopes: OptArray = None, softcap: Optional[Scalar] = None,
                                 sinks: OptArray = None, cu_seqlens_q: OptArray = None,
                                 cu_seqlens_k: OptArray = None) -> Result:
    """Scaled dot-product attention, fused (flash-style) on the CPU.

    ``out = softmax(query @ key^T * scale + mask) @ value``, computed block by
    block with an online softmax: the (Lq, Lk) score matrix is never stored
    (unless ``return_weights=True`` asks for it).

    Parameters
    ----------
    query : array (..., Hq, Lq, D)
    key : array (..., Hkv, Lk, D)
    value : array (..., Hkv, Lk, Dv)
        float32 or float64 (one dtype for all; float16/bfloat16 are computed in
        float32). Leading batch dims broadcast; any strides. A 2-D (L, D) input
        is one head without batch dims.
    attn_mask : array broadcastable to (..., Hq, Lq, Lk), optional
        bool: True = may attend (SDPA convention); or float, added to the
        scaled scores (-inf masks out). Same dtype as the query when float.
        Read in place through its strides, never expanded. Aligned to the
        right as NumPy broadcasts: a 2-D mask is (Lq, Lk), as torch reads
        it; key padding with one row per batch element is (B, 1, 1, Lk)
        ((B, 1, Lk) for 3-D inputs).
    dropout_p : float in [0, 1)
        Dropout on the attention weights; kept weights are scaled by
        1/(1 - dropout_p). The pattern depends only on ``seed`` and the
        weight's (batch, head, i, j) index.
    is_causal : False, True / "top_left", or "bottom_right"
        True/"top_left": query i sees keys j <= i (PyTorch). "bottom_right":
        the last query is aligned with the last key (KV-cache decoding).
        None is the same as False (Hugging Face passes it for "unset").
    scale : float, optional
        Score scale; default 1/sqrt(D).
    enable_gqa : bool
        Allow Hkv < Hq (Hq a multiple of Hkv): query head h uses kv head
        h // (Hq // Hkv). K/V are never copied.
    return_weights : bool
        Also return the (..., Hq, Lq, Lk) attention weights (after dropout,
        so that ``out == weights @ value``).
    return_lse : bool
        Also return the (..., Hq, Lq) natural-log log-sum-exp of the scaled,
        masked scores (-inf for a row with no visible key).
    num_threads : int, optional
        OpenMP threads; default OpenMP's current maximum (OMP_NUM_THREADS,
        threadpoolctl). Results are bitwise identical for any value.
    out : ndarray (..., Hq, Lq, Dv), optional
        Preallocated output of the result dtype.
    seed : int, optional
        Dropout seed (a random one when omitted).
    valid_lens : int array, optional
        d2l-style lengths: shape (...,) (one per batch element) or (..., Lq)
        (one per query row); query rows see keys j < valid_len. A 3-D
        (B, L, D) input takes d2l's (B,) or (B, Lq).
    window : (left, right), optional
        Sliding-window (local) attention: query i sees keys p_i - left ..
        p_i + right (None or -1: that side unbounded), where p_i is its key
        position: i + Lk - Lq (bottom-right, as in KV-cache decoding and
        flash-attn), or i with is_causal=True / "top_left". Mistral's
        sliding_window=W is window=(W - 1, 0) with is_causal. Key blocks
        outside every row's window are never visited.
    alibi_slopes : (Hq,) or (..., Hq) float array, optional
        ALiBi (BLOOM, MPT): -slope_h * |p_i - j| is added to the scaled score.
    softcap : float > 0, optional
        Logit soft-capping (Gemma 2): score -> softcap * tanh(score / softcap),
        on the scaled score before masks.
    sinks : (Hq,) float array (or one value: () or (1,)), optional
        Attention sinks (gpt-oss): one learned logit per query head joins
        every row's softmax denominator (it has no value): weights sum to
        less than 1, and a row with no visible key gives zeros, lse = sink.
        Each below finfo.max / log2(e) (2.36e38 in float32); -inf: no sink.
    cu_seqlens_q, cu_seqlens_k : (n + 1,) int arrays, optional
        Packed variable-length batches: query (Hq, total_q, D), key/value
        (Hkv, total_k, D); sequence b is rows cu_seqlens_q[b]:cu_seqlens_q[b+1]
        of the queries and cu_seqlens_k[b]:cu_seqlens_k[b+1] of the keys,
        and attends only to its own keys (causal and windows per sequence).
        No padding is stored or computed. lse comes back packed (Hq, total_q).
        (Masks, valid_lens and return_weights do not combine with it.)

    Returns
    -------
    out, or a tuple (out, weights), (out, lse) or (out, weights, lse).
    A query row that can see no key gives zeros (weights 0, lse -inf),
    never NaN. NaN/Inf in the inputs propagate as in attncore.reference; a
    NaN/Inf *value* of a masked-out key may or may not reach the output (key
    blocks that are masked as a whole are never read).

    Example
    -------
    >>> import numpy as np, attncore
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((2, 4, 16, 8), dtype=np.float32) for _ in range(3))
    >>> attncore.scaled_dot_product_attention(q, k, v, is_causal=True).shape
    (2, 4, 16, 8)
    """
    variants = dict(window=window, alibi_slopes=alibi_slopes, softcap=softcap, sinks=sinks,
                    cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    if (valid_lens is None and (out is None or type(out) is np.ndarray) and return_weights is False
            and return_lse is False and type(dropout_p) is float and dropout_p == 0.0
            and not _engine.planning() and window is None and alibi_slopes is None
            and softcap is None and sinks is None and cu_seqlens_q is None):
        if seed is not None:   # (no dropout: the seed draws nothing, but a bad one is refused)
            V.check_seed(_SDPA, seed)
        res = _fast(query, key, value, attn_mask, is_causal, scale, enable_gqa, num_threads, out)
        if res is not None:
            return res
    return _sdpa(_SDPA, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                 return_weights, return_lse, num_threads, out, seed, valid_lens, **variants)


def dot_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike, attn_mask: OptArray = None,
                  dropout_p: Scalar = 0.0, is_causal: Causal = False, scale: Scalar = 1.0,
                  enable_gqa: bool = False, *, return_weights: bool = False,
                  return_lse: bool = False, num_threads: Optional[int] = None,
                  out: Optional[np.ndarray] = None, seed: Optional[int] = None,
                  valid_lens: OptArray = None,
                  window: Optional[Tuple[Optional[int], Optional[int]]] = None,
                  alibi_slopes: OptArray = None, softcap: Optional[Scalar] = None,
                  sinks: OptArray = None, cu_seqlens_q: OptArray = None,
                  cu_seqlens_k: OptArray = None) -> Result:
    """Unscaled dot-product attention: :func:`scaled_dot_product_attention`
    with ``scale=1.0`` by default (score = q . k), with every argument of it.

    Shapes: query (..., Hq, Lq, D), key (..., Hkv, Lk, D), value
    (..., Hkv, Lk, Dv) -> (..., Hq, Lq, Dv).

    Example
    -------
    >>> import numpy as np, attncore
    >>> q = np.ones((1, 2, 4), np.float32); k = np.ones((1, 3, 4), np.float32)
    >>> v = np.arange(3, dtype=np.float32).reshape(1, 3, 1)
    >>> attncore.dot_attention(q, k, v)[0, :, 0]
    array([1., 1.], dtype=float32)
    """
    return _sdpa("dot_attention", query, key, value, attn_mask, dropout_p, is_causal, scale,
                 enable_gqa, return_weights, return_lse, num_threads, out, seed, valid_lens,
                 window=window, alibi_slopes=alibi_slopes, softcap=softcap, sinks=sinks,
                 cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)


def _fast(query, key, value, attn_mask, is_causal, scale, enable_gqa, num_threads, out=None):
    """The common call's fast path (attncore._core.sdpa_fast): NumPy arrays
    or CPU tensors; no mask, a bool one, or a float one in the compute dtype;
    `out` None or, for arrays, a NumPy array, for tensors a tensor
    (attncore.torch's out= views: the public out= takes NumPy arrays, and a
    NumPy out with tensors takes the general path). None if the call is not
    common."""
    if _arrays.is_torch(query):
        torch = _arrays.torch_module()
        # (it declines mixed arguments and sparse or lazily negated tensors: the general
        # path checks them)
        res = _core.sdpa_fast_torch(_SDPA, query, key, value, is_causal, scale, enable_gqa,
                                    num_threads, _config.active_isa(), _arrays.torch_dtypes(),
                                    attn_mask, out)
        if res is None or res is out:
            return res
        res = torch.from_numpy(res)
        return res.view(torch.bfloat16) if res.dtype == torch.int16 else res
    return _core.sdpa_fast(_SDPA, query, key, value, is_causal, scale, enable_gqa, num_threads,
                           _config.active_isa(), attn_mask, out)


def _sdpa(op, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
          return_weights, return_lse, num_threads, out, seed, valid_lens, **variants):
    p = _engine.prepare(op, query, key, value, enable_gqa=enable_gqa, native_half=True)
    return _engine.run(op, p, p.q, p.k, scale=_dot_scale(op, p, scale), attn_mask=attn_mask,
                       is_causal=is_causal, dropout_p=dropout_p, seed=seed, valid_lens=valid_lens,
                       num_threads=num_threads, out=out, return_weights=return_weights,
                       return_lse=return_lse, **variants)


def _dot_scale(op, p, scale):
    """A dot-product problem's scale (default 1/sqrt(head_dim)), after the
    check that query and key share the head_dim."""
    if p.Dk != p.Dq:
        raise ValueError(f"{op}: query and key must have the same head_dim (last dim); "
                         f"got query {p.query_shape} and key {p.key_shape}")
    if scale is None:
        scale = 1.0 / math.sqrt(p.Dq) if p.Dq > 0 else 1.0
    return V.real_number(op, "scale", scale)


def _sdpa_float32_out(query, key, value, attn_mask=None, is_causal=False, scale=None,
                      enable_gqa=False, *, return_lse=False, num_threads=None, valid_lens=None,
                      window=None, alibi_slopes=None, softcap=None, sinks=None):
    """scaled_dot_product_attention whose result stays float32 for float16 /
    bfloat16 inputs, for callers that combine results before rounding them
    (dask's shards, whose merge cancels): the queries are widened (Lq rows)
    and K/V read in place by the kernels of a 16-bit KV cache's storage
    (float32 queries and results), so no copy of K/V is made. Other dtypes:
    scaled_dot_product_attention as it is."""
    p = _engine.prepare(_SDPA, query, key, value, enable_gqa=enable_gqa, native_half=True)
    if p.io not in (np.float32, np.float64):
        scale = _dot_scale(_SDPA, p, scale)
        entry = _core.IO_F32_KVF16 if p.io == np.float16 else _core.IO_F32_KVBF16
        as_stored = (lambda a: a) if p.io == np.float16 else (lambda a: a.view(np.uint16))
        q = p.q.astype(np.float32)
        k, p.v = as_stored(p.k), as_stored(p.v)
        p.io = p.result = np.dtype(np.float32)
        p.torch_dtype = None
        return _engine.run(_SDPA, p, q, k, scale=scale,
                           attn_mask=attn_mask, is_causal=is_causal, valid_lens=valid_lens,
                           num_threads=num_threads, return_lse=return_lse,
                           kv=(entry, None, None), window=window, alibi_slopes=alibi_slopes,
                           softcap=softcap, sinks=sinks)
    return scaled_dot_product_attention(query, key, value, attn_mask, 0.0, is_causal, scale,
                                        enable_gqa, return_lse=return_lse,
                                        num_threads=num_threads, valid_lens=valid_lens,
                                        window=window, alibi_slopes=alibi_slopes, softcap=softcap,
                                        sinks=sinks)


def merge_attention(parts: Iterable[Tuple[ArrayLike, ArrayLike]]) -> Tuple[np.ndarray, np.ndarray]:
    """Merge attention results over disjoint key shards into the exact result.

    Each part is ``(out_i, lse_i)`` from attention of the same queries over one
    shard of the keys (e.g. ``scaled_dot_product_attention(..., return_lse=True)``):
    out_i (..., Lq, Dv), lse_i (..., Lq). The merged result is
    ``out = sum_i exp(lse_i - lse) out_i`` with ``lse = log sum_i exp(lse_i)``.
    Rows that no shard could see (every lse_i = -inf) stay zero with lse -inf;
    a shard with lse_i = -inf in a row adds nothing to it, whatever its out
    holds there (torch's math SDPA leaves NaN in such rows).

    Returns
    -------
    (out, lse) with the parts' shapes; out in the parts' dtype, lse in float32
    (float64 for float64 parts; float16/bfloat16 parts, as SDPA returns
    them, come with float32 lse); torch tensors when parts[0]'s out is a
    tensor. The merge itself runs in float64 and rounds once at the end, so
    its error does not grow with the number of parts.

    Example
    -------
    >>> import numpy as np, attncore
    >>> rng = np.random.default_rng(0)
    >>> q = rng.standard_normal((2, 5, 8)); k = rng.standard_normal((2, 12, 8))
    >>> v = rng.standard_normal((2, 12, 8))
    >>> a = attncore.scaled_dot_product_attention(q, k[:, :7], v[:, :7], return_lse=True)
    >>> b = attncore.scaled_dot_product_attention(q, k[:, 7:], v[:, 7:], return_lse=True)
    >>> out, lse = attncore.merge_attention([a, b])
    >>> bool(np.allclose(out, attncore.scaled_dot_product_attention(q, k, v)))
    True
    """
    op = "merge_attention"
    try:
        parts = list(parts)
    except TypeError:
        raise TypeError(f"{op}: parts must be a sequence of (out, lse) pairs") from None
    if not parts:
        raise ValueError(f"{op}: parts is empty")
    outs: list = []
    lses: list = []
    result = lse_result = None
    for n, part in enumerate(parts):
        if not isinstance(part, (tuple, list)) or len(part) != 2:
            raise TypeError(f"{op}: parts[{n}] must be an (out, lse) pair")
        # out may be 16-bit with a float32 lse (what SDPA returns for float16 /
        # bfloat16 inputs): check each on its own, merge in float64
        o_arrays, _, out_dtype = V.float_arrays(op, native_half=True, out=part[0])
        s_arrays, _, lse_dtype = V.float_arrays(op, native_half=True, lse=part[1])
        o, s = o_arrays["out"], s_arrays["lse"]
        if outs and (out_dtype != result or lse_dtype != lse_result):
            raise TypeError(f"{op}: parts[{n}] has out {out_dtype} and lse {lse_dtype}; parts[0] "
                            f"has out {result} and lse {lse_result}")
        half_with_f32 = out_dtype not in V.COMPUTE_DTYPES and lse_dtype in (np.float32, out_dtype)
        if out_dtype != lse_dtype and not half_with_f32:
            raise TypeError(f"{op}: parts[{n}] mixes out {out_dtype} and lse {lse_dtype} (only "
                            f"16-bit out with float32 lse, as SDPA returns them, may differ)")
        result, lse_result = out_dtype, lse_dtype
        if o.ndim < 1:
            raise ValueError(f"{op}: parts[{n}]: out must be an array (..., Dv) with at least one "
                             f"dim (SDPA's output of one shard); got a scalar, shape {o.shape}")
        if s.shape != o.shape[:-1]:
            raise ValueError(f"{op}: parts[{n}]: lse must have out's shape without the last "
                             f"dim; got out {o.shape} and lse {s.shape}")
        if outs and o.shape != outs[0].shape:
            raise ValueError(f"{op}: parts[{n}] has out {o.shape}; parts[0] has {outs[0].shape}")
        outs.append(o)   # (widened one at a time below)
        lses.append(s.astype(np.float64))
    lse_all = np.stack(lses)
    with np.errstate(invalid="ignore", over="ignore"):
        top = lse_all.max(axis=0)
        shift = np.where(np.isneginf(top), 0, top)
        w = np.exp(lse_all - shift)
        total = w.sum(axis=0)
        # the weights are normalised before they meet the outputs: a convex
        # combination of finite outputs stays finite (summing w_i out_i first
        # overflowed for outputs near the dtype's max)
        w = w / np.where(total == 0, 1, total)
        # float64 for every dtype: a float32 sum over many shards would add an
        # error of up to (parts) u (measured: 1.4e-5 over 8000 shards); the
        # parts are widened one at a time, in the product below
        merged = np.zeros(outs[0].shape, np.float64)
        for wi, si, oi in zip(w, lses, outs):
            # a shard with no visible key (lse -inf) adds nothing, whatever its
            # out holds (torch's math path leaves NaN there)
            merged += np.where(np.isneginf(si)[..., None], 0, wi[..., None] * oi)
        with np.errstate(divide="ignore"):
            lse = np.where(total == 0, -np.inf, shift + np.log(np.where(total == 0, 1, total)))
    lse_out = lse_result if lse_result in V.COMPUTE_DTYPES else np.dtype(np.float32)
    merged, lse = merged.astype(result, copy=False), lse.astype(lse_out, copy=False)
    if _arrays.is_torch(parts[0][0]):   # tensors in, tensors out (as SDPA returned the parts)
        return (_arrays.to_torch(merged, _arrays.torch_dtype_name(parts[0][0])),
                _arrays.to_torch(lse, lse.dtype.name))   # (float32 or float64, as for arrays)
    return merged, lse
