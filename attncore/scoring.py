"""The other scoring functions of the attention family: general (bilinear),
additive (Bahdanau) and concat. Each computes its scores with projections on
attncore's GEMM and then runs the same fused online-softmax / P.V kernel as
scaled_dot_product_attention, so masks, causal, valid_lens, fully masked rows
and return_weights behave exactly as there.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import _engine, _layout, _linalg
from . import _validate as V
from ._types import ArrayLike, Causal, OptArray, Result, Scalar


def _check_matrix(op, name, a, shape):
    if a.shape != tuple(shape):
        hint = ""
        if a.ndim == 2 and a.shape == tuple(shape)[::-1]:   # e.g. (Dq, H) for (H, Dq)
            hint = f" (its transpose: pass {name}.T)"
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}; got {a.shape}{hint}")


def general_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike, weight: ArrayLike,
                      attn_mask: OptArray = None, is_causal: Causal = False, scale: Scalar = 1.0, *,
                      return_weights: bool = False, return_lse: bool = False,
                      num_threads: Optional[int] = None, valid_lens: OptArray = None,
                      enable_gqa: bool = False, dropout_p: Scalar = 0.0,
                      seed: Optional[int] = None) -> Result:
    """Luong "general" (bilinear) attention: score(q, k) = scale * q^T W k.

    Parameters
    ----------
    query : (..., Hq, Lq, Dq);  key : (..., Hkv, Lk, Dk);  value : (..., Hkv, Lk, Dv)
    weight : (Dq, Dk)
    attn_mask, is_causal, valid_lens, return_weights, return_lse, num_threads,
    enable_gqa, dropout_p, seed : as in :func:`attncore.scaled_dot_product_attention`
        (dropout: the same counter RNG, keyed by (batch, head, i, j)).
    scale : float, default 1.0

    Computed as one GEMM, Q' = Q W, followed by the fused dot-product kernel.

    Returns
    -------
    out (..., Hq, Lq, Dv)[, weights (..., Hq, Lq, Lk)][, lse (..., Hq, Lq)]

    Example
    -------
    >>> import numpy as np, attncore
    >>> rng = np.random.default_rng(0)
    >>> q = rng.standard_normal((2, 1, 5, 6)); k = rng.standard_normal((2, 1, 7, 4))
    >>> v = rng.standard_normal((2, 1, 7, 3)); W = rng.standard_normal((6, 4))
    >>> attncore.general_attention(q, k, v, W).shape
    (2, 1, 5, 3)
    """
    op = "general_attention"
    p = _engine.prepare(op, query, key, value, enable_gqa=enable_gqa, weight=weight)
    W = p.params["weight"]
    _check_matrix(op, "weight", W, (p.Dq, p.Dk))
    qw = _linalg.linear(p.q, W.T, num_threads=V.num_threads(op, num_threads), op=op)
    return _engine.run(op, p, qw, p.k, scale=V.real_number(op, "scale", scale), attn_mask=attn_mask,
                       is_causal=is_causal, valid_lens=valid_lens, num_threads=num_threads,
                       return_weights=return_weights, return_lse=return_lse,
                       dropout_p=dropout_p, seed=seed)


def additive_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike, w_query: ArrayLike,
                       w_key: ArrayLike, w_score: ArrayLike, bias: OptArray = None,
                       attn_mask: OptArray = None, is_causal: Causal = False, *,
                       return_weights: bool = False, return_lse: bool = False,
                       num_threads: Optional[int] = None, valid_lens: OptArray = None,
                       enable_gqa: bool = False, scale: Scalar = 1.0, dropout_p: Scalar = 0.0,
                       seed: Optional[int] = None) -> Result:
    """Additive (Bahdanau, "perceptron") attention:
    score(q, k) = scale * w_score^T tanh(W_q q + W_k k + bias).

    Parameters
    ----------
    query : (..., Hq, Lq, Dq);  key : (..., Hkv, Lk, Dk);  value : (..., Hkv, Lk, Dv)
    w_query : (H, Dq);  w_key : (H, Dk);  w_score : (H,);  bias : (H,) or None
        H is the hidden size of the scoring perceptron.
    attn_mask, is_causal, valid_lens, return_weights, return_lse, num_threads,
    enable_gqa, dropout_p, seed : as in :func:`attncore.scaled_dot_product_attention`.
    scale : float, default 1.0
        Multiplies the score (folded into w_score).

    The projections Qp = Q W_q^T + b and Kp = K W_k^T are two GEMMs; the fused
    kernel then evaluates sum_h w_h tanh(Qp_ih + Kp_jh) tile by tile, straight
    into the online softmax, so the (Lq, Lk, H) tensor is never stored: memory
    is O((Lq + Lk) H). tanh is a vectorised approximation with absolute error
    below 4e-7 in float32 (exact at 0 and +-inf; NaN propagates).

    Returns
    -------
    out (..., Hq, Lq, Dv)[, weights (..., Hq, Lq, Lk)][, lse (..., Hq, Lq)]

    Example
    -------
    >>> import numpy as np, attncore
    >>> rng = np.random.default_rng(0)
    >>> q = rng.standard_normal((2, 1, 1, 8), dtype=np.float32)      # a decoder state
    >>> enc = rng.standard_normal((2, 1, 10, 8), dtype=np.float32)   # encoder states
    >>> Wq, Wk = (rng.standard_normal((16, 8), dtype=np.float32) for _ in range(2))
    >>> w = rng.standard_normal(16, dtype=np.float32)
    >>> ctx = attncore.additive_attention(q, enc, enc, Wq, Wk, w, valid_lens=np.array([10, 6]))
    >>> ctx.shape
    (2, 1, 1, 8)
    """
    op = "additive_attention"
    params = dict(w_query=w_query, w_key=w_key, w_score=w_score)
    if bias is not None:
        params["bias"] = bias
    p = _engine.prepare(op, query, key, value, enable_gqa=enable_gqa, **params)
    Wq, Wk, w = p.params["w_query"], p.params["w_key"], p.params["w_score"]
    if Wq.ndim != 2:
        raise ValueError(f"{op}: w_query must have shape (H, Dq={p.Dq}); got {Wq.shape}")
    H = Wq.shape[0]
    if w.ndim == 1 and Wq.shape == (p.Dq, w.shape[0]) != (w.shape[0], p.Dq):
        H = w.shape[0]   # w_query given as (Dq, H): the check below says to transpose it
    _check_matrix(op, "w_query", Wq, (H, p.Dq))
    _check_matrix(op, "w_key", Wk, (H, p.Dk))
    _check_matrix(op, "w_score", w, (H,))
    b = p.params.get("bias")
    if b is not None:
        _check_matrix(op, "bias", b, (H,))
    threads = V.num_threads(op, num_threads)
    qp = _linalg.linear(p.q, Wq, b, num_threads=threads, op=op)
    kp = _linalg.linear(p.k, Wk, num_threads=threads, op=op)
    # scale * w^T tanh(...), the product taken in float64 (scale alone may be out of float32's range)
    with np.errstate(over="ignore", invalid="ignore"):
        w64 = w.astype(np.float64) * V.real_number(op, "scale", scale)
        # the kernel takes the scores to log2 units through 2 log2(e) w_h (its
        # tanh form) and starts each score at log2(e) sum_h w_h. Its partial
        # sums stay within log2(e) sum_h |w_h| (each head's term lies between
        # 0 and -2 log2(e) w_h), so that, plus the sum's rounding ((H + 2) u),
        # must stay finite, and so must 2 log2(e) w_h; past either a score is
        # inf and its row inf - inf (NaN). (|sum_h w_h| was checked instead of
        # sum_h |w_h|: heads of both signs gave NaN rows inside the limits.)
        top, u = _engine._log2_units_limit(p.compute), float(np.finfo(p.compute).eps) / 2
        limit = top / 2
        sum_limit = top / (1 + (H + 2) * u)
        finite = w64[~np.isnan(w64)]
        largest, total = float(np.abs(finite).max(initial=0.0)), float(np.abs(finite).sum())
    if not (largest < limit and total < sum_limit):
        raise ValueError(f"{op}: scale * w_score is too large for {np.dtype(p.compute).name}: "
                         f"max_h |scale w_h| = {largest:.4g} and sum_h |scale w_h| = {total:.4g}; "
                         f"the kernel needs them below {limit:.4g} and {sum_limit:.4g} "
                         f"(finfo.max / (2 log2 e), and finfo.max / log2 e less the sum's "
                         f"rounding); rescale w_score")
    w = _layout.copy(w64, p.compute)
    return _engine.run(op, p, qp, kp, score_kind=_engine.SCORE_ADDITIVE, w_score=w,
                       attn_mask=attn_mask, is_causal=is_causal, valid_lens=valid_lens,
                       num_threads=threads, return_weights=return_weights, return_lse=return_lse,
                       dropout_p=dropout_p, seed=seed)


def concat_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike, w_query: ArrayLike,
                     w_key: ArrayLike, bias: Scalar = 0.0, attn_mask: OptArray = None,
                     is_causal: Causal = False, *, return_weights: bool = False,
                     return_lse: bool = False, num_threads: Optional[int] = None,
                     valid_lens: OptArray = None, enable_gqa: bool = False, scale: Scalar = 1.0,
                     dropout_p: Scalar = 0.0, seed: Optional[int] = None) -> Result:
    """Concat attention: score(q, k) = scale * (w^T [q; k] + b) = scale * (w_query . q + w_key . k + b).

    Parameters
    ----------
    query : (..., Hq, Lq, Dq);  key : (..., Hkv, Lk, Dk);  value : (..., Hkv, Lk, Dv)
    w_query : (Dq,);  w_key : (Dk,);  bias : float
    attn_mask, is_causal, valid_lens, return_weights, return_lse, num_threads,
    enable_gqa, dropout_p, seed : as in :func:`attncore.scaled_dot_product_attention`.
    scale : float, default 1.0

    The scores are a_i + c_j + b with a = Q w_query and c = K w_key (two
    GEMVs). The softmax over keys cancels a finite a_i + b, so the fused
    kernel scores c_j alone (as the rank-2 dot product [z_i, 1] . [1, c_j],
    z_i = 0) and a_i + b is added to lse afterwards: a large a_i + b cannot
    swamp c_j in float32. A non-finite a_i + b is z_i itself, so its row
    comes out as the full score makes it (-inf: no visible key, zeros;
    +inf or NaN: NaN).

    Returns
    -------
    out (..., Hq, Lq, Dv)[, weights (..., Hq, Lq, Lk)][, lse (..., Hq, Lq)]

    Example
    -------
    >>> import numpy as np, attncore
    >>> q = np.ones((1, 2, 3)); k = np.ones((1, 4, 3)); v = np.arange(12.0).reshape(1, 4, 3)
    >>> attncore.concat_attention(q, k, v, np.ones(3), np.array([1.0, 0, 0]))[0, 0]
    array([4.5, 5.5, 6.5])
    """
    op = "concat_attention"
    p = _engine.prepare(op, query, key, value, enable_gqa=enable_gqa, w_query=w_query, w_key=w_key)
    wq, wk = p.params["w_query"], p.params["w_key"]
    _check_matrix(op, "w_query", wq, (p.Dq,))
    _check_matrix(op, "w_key", wk, (p.Dk,))
    b = V.real_number(op, "bias", bias)
    threads = V.num_threads(op, num_threads)
    # a_i + b in float64: a float32 bias of 1e300 would be inf before the softmax cancels it
    a = _linalg.linear(p.q, wq[None, :], num_threads=threads, op=op).astype(np.float64) + b
    c = _linalg.linear(p.k, wk[None, :], num_threads=threads, op=op)
    finite = np.isfinite(a)
    z = np.where(finite, 0.0, a).astype(p.compute)   # a non-finite a_i + b goes to the kernel as is
    # (score = z_i + c_j as a 2-term dot product: [z_i, 1] . [1, c_j])
    qs, ks = _layout.empty(z.shape[:-1] + (2,), p.compute), _layout.empty(c.shape[:-1] + (2,), p.compute)
    qs[..., :1], qs[..., 1:], ks[..., :1], ks[..., 1:] = z, 1, 1, c
    return _engine.run(op, p, qs, ks, scale=V.real_number(op, "scale", scale), attn_mask=attn_mask,
                       is_causal=is_causal, valid_lens=valid_lens, num_threads=threads,
                       return_weights=return_weights, return_lse=return_lse, dropout_p=dropout_p,
                       seed=seed, lse_shift=np.where(finite, a, 0.0)[..., 0] if return_lse else None)
