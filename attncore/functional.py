"""Attention functions (the public API; see shared/API.md).

This module validates arguments, normalises layouts and dtypes, allocates the
outputs and hands a plan to the C kernels through attncore._core. The
numerics live in C: csrc/driver/sdpa.inc.c (loops, threads, online softmax
bookkeeping) and csrc/kernels/tiles.inc.c (register-blocked tile math).
"""
import math

import numpy as np

from . import _config, _core, _layout
from . import _validate as V

_SDPA = "scaled_dot_product_attention"


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False, *,
                                 return_weights=False, return_lse=False, num_threads=None,
                                 out=None, seed=None, valid_lens=None):
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
        Read in place through its strides, never expanded.
    dropout_p : float in [0, 1)
        Dropout on the attention weights; kept weights are scaled by
        1/(1 - dropout_p). The pattern depends only on ``seed`` and the
        weight's (batch, head, i, j) index.
    is_causal : False, True / "top_left", or "bottom_right"
        True/"top_left": query i sees keys j <= i (PyTorch). "bottom_right":
        the last query is aligned with the last key (KV-cache decoding).
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
        (one per query row); query rows see keys j < valid_len.

    Returns
    -------
    out, or a tuple (out, weights), (out, lse) or (out, weights, lse).
    A query row that can see no key gives zeros (weights 0, lse -inf),
    never NaN.

    Example
    -------
    >>> import numpy as np, attncore
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((2, 4, 16, 8), dtype=np.float32) for _ in range(3))
    >>> attncore.scaled_dot_product_attention(q, k, v, is_causal=True).shape
    (2, 4, 16, 8)
    """
    return _sdpa(_SDPA, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                 return_weights, return_lse, num_threads, out, seed, valid_lens)


def dot_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                  scale=1.0, enable_gqa=False, *, return_weights=False, return_lse=False,
                  num_threads=None, out=None, seed=None, valid_lens=None):
    """Unscaled dot-product attention: :func:`scaled_dot_product_attention`
    with ``scale=1.0`` by default (score = q . k).

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
                 enable_gqa, return_weights, return_lse, num_threads, out, seed, valid_lens)


def _sdpa(op, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
          return_weights, return_lse, num_threads, out, seed, valid_lens):
    arrays, compute, result = V.float_arrays(op, query=query, key=key, value=value)
    q, k, v = arrays["query"], arrays["key"], arrays["value"]

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

    Hq, Lq, D = q.shape[-3:]
    Hkv, Lk, Dk = k.shape[-3:]
    Hv, Lv, Dv = v.shape[-3:]
    if Dk != D:
        raise ValueError(f"{op}: query and key must have the same head_dim (last dim); "
                         f"got query {q.shape} and key {k.shape}")
    if (Hv, Lv) != (Hkv, Lk):
        raise ValueError(f"{op}: key and value must have the same heads and seq_len; "
                         f"got key {k.shape} and value {v.shape}")
    if Hq != Hkv:
        if not enable_gqa:
            raise ValueError(f"{op}: query has {Hq} heads but key/value have {Hkv}; pass "
                             f"enable_gqa=True for grouped-query attention (query {q.shape}, "
                             f"key {k.shape})")
        if Hkv == 0 or Hq % Hkv:
            raise ValueError(f"{op}: with enable_gqa the query heads ({Hq}) must be a multiple "
                             f"of the key/value heads ({Hkv}); query {q.shape}, key {k.shape}")
    batch = V.broadcast_batch(op, query=q, key=k, value=v)
    out_shape = batch + (Hq, Lq, Dv)
    scores_shape = batch + (Hq, Lq, Lk)

    causal, offset = V.causal_offset(op, is_causal, Lq, Lk)
    scale = (1.0 / math.sqrt(D) if D > 0 else 1.0) if scale is None else V.real_number(op, "scale", scale)
    drop_threshold, drop_seed, drop_scale = V.dropout(op, dropout_p, seed)
    threads = V.num_threads(op, num_threads)
    mask_kind, mask = V.mask(op, attn_mask, scores_shape, compute, result)
    vl = V.valid_lens(op, valid_lens, batch, Lq, Lk)
    if out is not None:
        V.output(op, out, out_shape if not flat[0] else out_shape[1:], result)

    q, k, v = (_layout.kernel_readable(a) for a in (q, k, v))
    res = _direct_output(out, flat[0], compute, (q, k, v, mask))
    if res is None:
        res = np.empty(out_shape, dtype=compute)
    weights = np.empty(scores_shape, dtype=compute) if return_weights else None
    lse = np.empty(batch + (Hq, Lq), dtype=compute) if return_lse else None

    nb = int(np.prod(batch, dtype=np.int64))
    if nb and Hq and Lq:
        vl_layout = None
        if vl is not None:
            lens, per_row = vl
            step = Lq if per_row else 1
            vl_layout = (_layout.address(lens), np.arange(nb, dtype=np.int64) * step,
                         1 if per_row else 0)
        mask_layout = _layout.mask_tensor(mask, scores_shape) if mask_kind else None
        _core.sdpa(
            compute == np.float64, _config.active_isa(), threads,
            (nb, Hq, Hkv, Lq, Lk, D, Dv),
            _layout.tensor(q, batch), _layout.tensor(k, batch), _layout.tensor(v, batch),
            _layout.tensor(res, batch),
            mask_kind, mask_layout, causal, offset, vl_layout,
            scale, drop_threshold, drop_seed, drop_scale,
            _layout.address(weights) if weights is not None else 0,
            _layout.address(lse) if lse is not None else 0,
        )

    if flat[0]:
        res = res[0]
        weights = weights[0] if weights is not None else None
        lse = lse[0] if lse is not None else None
    if out is not None:
        if res is not out:
            np.copyto(out, res, casting="unsafe")
        res = out
    elif result != compute:
        res = res.astype(result)
    if weights is not None and result != compute:
        weights = weights.astype(result)
    extra = tuple(x for x in (weights, lse) if x is not None)
    return (res,) + extra if extra else res


def _direct_output(out, flat, compute, inputs):
    """`out` itself when the kernel can write into it directly, else None."""
    if out is None or out.dtype != compute:
        return None
    target = out[None] if flat else out
    if _layout.kernel_readable(target) is not target:
        return None
    if any(a is not None and np.may_share_memory(target, a) for a in inputs):
        return None
    return target


def merge_attention(parts):
    """Merge attention results over disjoint key shards into the exact result.

    Each part is ``(out_i, lse_i)`` from attention of the same queries over one
    shard of the keys (e.g. ``scaled_dot_product_attention(..., return_lse=True)``):
    out_i (..., Lq, Dv), lse_i (..., Lq). The merged result is
    ``out = sum_i exp(lse_i - lse) out_i`` with ``lse = log sum_i exp(lse_i)``.
    Rows that no shard could see (every lse_i = -inf) stay zero with lse -inf.

    Returns
    -------
    (out, lse) with the parts' shapes and dtype.

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
    outs, lses = [], []
    for n, part in enumerate(parts):
        if not isinstance(part, (tuple, list)) or len(part) != 2:
            raise TypeError(f"{op}: parts[{n}] must be an (out, lse) pair")
        arrays, compute, result = V.float_arrays(op, out=part[0], lse=part[1])
        o, s = arrays["out"], arrays["lse"]
        if o.ndim < 1 or s.shape != o.shape[:-1]:
            raise ValueError(f"{op}: parts[{n}]: lse must have out's shape without the last "
                             f"dim; got out {o.shape} and lse {s.shape}")
        if outs and (o.shape != outs[0].shape or o.dtype != outs[0].dtype):
            raise ValueError(f"{op}: parts[{n}] has out {o.shape} {o.dtype}; parts[0] has "
                             f"{outs[0].shape} {outs[0].dtype}")
        outs.append(o)
        lses.append(s)
    lse_all = np.stack(lses)
    with np.errstate(invalid="ignore", over="ignore"):
        top = lse_all.max(axis=0)
        shift = np.where(np.isneginf(top), 0, top)
        w = np.exp(lse_all - shift)
        total = w.sum(axis=0)
        merged = np.zeros_like(outs[0], dtype=compute)
        for wi, oi in zip(w, outs):
            merged += wi[..., None] * oi
        with np.errstate(divide="ignore"):
            inv = np.where(total == 0, 0, 1 / np.where(total == 0, 1, total))
            merged *= inv[..., None]
            lse = np.where(total == 0, -np.inf, shift + np.log(np.where(total == 0, 1, total)))
    return merged.astype(result, copy=False), lse.astype(result, copy=False)
