"""Attention with other weightings than the softmax: sigmoid attention
(weights sigmoid(score + b), not normalised over the keys) -- fused into the
same kernel as scaled_dot_product_attention (the same two products, a
different epilogue) -- and hard attention (argmax / top-k / sampled).
"""
from __future__ import annotations

import math
from typing import Optional

from . import _engine
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
