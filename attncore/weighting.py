"""Attention with other weightings than the softmax: sigmoid attention
(weights sigmoid(score + b), not normalised over the keys) -- fused into the
same kernel as scaled_dot_product_attention (the same two products, a
different epilogue) -- and hard attention (argmax / top-k / sampled).
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Optional

import numpy as np

from . import _arrays, _engine, _layout
from . import _validate as V
from ._types import ArrayLike, Causal, OptArray, Result, Scalar


def sigmoid_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike, bias: Scalar = 0.0,
                      scale: Optional[Scalar] = None, attn_mask: OptArray = None,
                      is_causal: Causal = False, enable_gqa: bool = False, *,
                      valid_lens: OptArray = None, dropout_p: Scalar = 0.0,
                      seed: Optional[int] = None, return_weights: bool = False,
                      num_threads: Optional[int] = None, window=None, alibi_slopes: OptArray = None,
                      softcap: Optional[Scalar] = None) -> Result:
    """Sigmoid (non-normalised soft) attention:
    ``out_i = sum_j sigmoid(scale * q_i . k_j + bias + mask_ij) v_j``.

    Each weight is in (0, 1) on its own -- rows are not normalised (the
    seeds' "sigmoid soft attention"; also Apple's sigmoid-attention
    transformers, which use bias = -log(Lk)). Fused: the same two products
    as scaled_dot_product_attention and a different epilogue; no (Lq, Lk)
    matrix is stored.

    Parameters
    ----------
    query : (..., Hq, Lq, D);  key : (..., Hkv, Lk, D);  value : (..., Hkv, Lk, Dv)
    bias : float
        Added inside the sigmoid.
    scale : float, optional
        Default 1/sqrt(D).
    attn_mask, is_causal, enable_gqa, valid_lens, dropout_p, seed, num_threads,
    window, alibi_slopes, softcap : as in
        :func:`attncore.scaled_dot_product_attention`. A masked key has weight
        exactly 0 (sigmoid(-inf) = 0); a row that sees no key gives zeros.
    return_weights : bool
        Also return the (..., Hq, Lq, Lk) weights (after dropout).

    Returns
    -------
    out (..., Hq, Lq, Dv)[, weights]. (There is no log-sum-exp: nothing is
    normalised.)

    Example
    -------
    >>> import numpy as np, attncore
    >>> q = np.zeros((1, 2, 4)); k = np.zeros((1, 3, 4)); v = np.ones((1, 3, 4))
    >>> attncore.sigmoid_attention(q, k, v)[0, 0]      # 3 keys x sigmoid(0) = 1.5
    array([1.5, 1.5, 1.5, 1.5])
    """
    op = "sigmoid_attention"
    p = _engine.prepare(op, query, key, value, enable_gqa=enable_gqa, native_half=True)
    if p.Dk != p.Dq:
        raise ValueError(f"{op}: query and key must have the same head_dim (last dim); "
                         f"got query {p.query_shape} and key {p.key_shape}")
    if scale is None:
        scale = 1.0 / math.sqrt(p.Dq) if p.Dq > 0 else 1.0
    return _engine.run(op, p, p.q, p.k, scale=V.real_number(op, "scale", scale),
                       attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p, seed=seed,
                       valid_lens=valid_lens, num_threads=num_threads,
                       return_weights=V.flag(op, "return_weights", return_weights),
                       window=window, alibi_slopes=alibi_slopes, softcap=softcap,
                       sigmoid_bias=V.real_number(op, "bias", bias))


def hard_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike, mode: str = "argmax",
                   k: int = 1, *, scale: Optional[Scalar] = None, seed: Optional[int] = None,
                   attn_mask: OptArray = None, is_causal: Causal = False,
                   valid_lens: OptArray = None, enable_gqa: bool = False,
                   return_indices: bool = False, num_threads: Optional[int] = None,
                   window=None, alibi_slopes: OptArray = None,
                   softcap: Optional[Scalar] = None) -> Result:
    """Hard attention: each query takes the value of the key it selects.

    ``mode``:

    - ``"argmax"``: the key with the highest score (k must be 1);
      ``out_i = v_{argmax_j s_ij}``.
    - ``"topk"``: the k highest-scoring keys, weighted by the softmax of
      their scores (the softmax renormalised over the k best).
    - ``"sample"``: k keys drawn without replacement from softmax(s_i.) (the
      Gumbel-top-k trick with noise from a counter-based RNG keyed by
      (seed, batch, head, i, j): reproducible, independent of threads and
      blocking); their values are averaged (k = 1: the drawn key's value).

    Scores follow scaled_dot_product_attention (scale, masks, causal,
    windows, ALiBi, soft-capping, valid_lens); ties go to the smaller key
    index. The selection runs in the kernel's tile loop (an online top-k: no
    (Lq, Lk) matrix), and the output is a gather of the selected value rows.
    A row that sees no key gives zeros (indices -1); a NaN score makes its
    row NaN (indices -1: no key is its output). float16/bfloat16 inputs are
    computed in float32.

    Parameters
    ----------
    query : (..., Hq, Lq, D);  key : (..., Hkv, Lk, D);  value : (..., Hkv, Lk, Dv)
    mode : "argmax" | "topk" | "sample"
    k : int in [1, 64]
    seed : int, optional
        For "sample" (a random one when omitted).
    return_indices : bool
        Also return the selected keys, (..., Hq, Lq, k) int64, best first
        ("sample": in the order drawn; -1 for empty slots).

    Returns
    -------
    out (..., Hq, Lq, Dv)[, indices]

    Example
    -------
    >>> import numpy as np, attncore
    >>> q = np.array([[1.0, 0.0]]); k = np.array([[0.0, 1.0], [3.0, 0.0], [1.0, 0.0]])
    >>> v = np.array([[10.0], [20.0], [30.0]])
    >>> attncore.hard_attention(q, k, v, return_indices=True)
    (array([[20.]]), array([[1]]))
    """
    op = "hard_attention"
    modes = ("argmax", "topk", "sample")
    if not isinstance(mode, str) or mode not in modes:   # (an array's `in` is elementwise)
        raise ValueError(f"{op}: mode must be one of {modes}; got {mode!r}")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{op}: k must be an int in [1, 64]; got {type(k).__name__} {k!r}")
    if not 1 <= k <= 64:
        raise ValueError(f"{op}: k must be an int in [1, 64]; got {k!r}")
    if mode == "argmax" and k != 1:
        raise ValueError(f"{op}: mode='argmax' takes one key (k=1); use mode='topk' for k={k}")
    p = _engine.prepare(op, query, key, value, enable_gqa=enable_gqa)
    if p.Dk != p.Dq:
        raise ValueError(f"{op}: query and key must have the same head_dim (last dim); "
                         f"got query {p.query_shape} and key {p.key_shape}")
    if scale is None:
        scale = 1.0 / math.sqrt(p.Dq) if p.Dq > 0 else 1.0
    # (checked in every mode, used by "sample" only: a bad seed is an error wherever it is given)
    seed = V.check_seed(op, seed)
    if mode == "sample" and seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    indices = None
    if V.flag(op, "return_indices", return_indices):
        indices = _layout.empty(p.batch + (p.Hq, p.Lq, int(k)), np.int64)
        indices[...] = -1
    hard = (int(k), int(mode == "sample"), int(mode == "topk"), int(seed or 0), indices)
    out = _engine.run(op, p, p.q, p.k, scale=V.real_number(op, "scale", scale),
                      attn_mask=attn_mask, is_causal=is_causal, valid_lens=valid_lens,
                      num_threads=num_threads, window=window, alibi_slopes=alibi_slopes,
                      softcap=softcap, hard=hard)
    if indices is None:
        return out
    if p.flat:
        indices = indices[0]
    if p.torch_dtype is not None:
        indices = _arrays.to_torch(indices, "int64")
    return out, indices
