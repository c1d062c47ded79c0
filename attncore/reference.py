"""The oracle: slow, obviously-correct pure-Python attention.

Same signatures as the fast functions; arithmetic is plain Python floats
(float64) over nested lists with the `math` module -- no NumPy linear algebra.
NumPy is used only to read the inputs (broadcasting them to full shapes and
turning them into lists) and to return arrays. Results are float64.

Use it on small shapes: every score is computed one multiply-add at a time.
It does not validate its inputs (the fast functions do, with errors that
name the argument): give it inputs the fast function accepts; on others its
result, or its error, means nothing.
"""
import math
from fractions import Fraction

import numpy as np

_MASK64 = (1 << 64) - 1


def _mix64(z):
    """splitmix64's finaliser (csrc/driver/dropout.h)."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def dropout_keep(seed, counter, dropout_p):
    """Whether the weight with flat index `counter` in (B, Hq, Lq, Lk) is kept
    (the kernel's counter-based dropout pattern: csrc/driver/dropout.h).

    >>> from attncore import reference
    >>> [reference.dropout_keep(0, n, 0.5) for n in range(4)]
    [True, False, ...]
    """
    threshold = int(round(dropout_p * (1 << 24)))
    bits = _mix64(_mix64(seed) ^ counter) >> 40
    return bits >= threshold


def softmax_row(scores, sink=None):
    """(weights, lse) of one row of scores; -inf = masked out.
    No visible key -> zero weights and lse -inf. Any NaN -> all NaN.
    sink: an extra logit in the denominator with no weight of its own.

    >>> import math
    >>> from attncore import reference
    >>> reference.softmax_row([0.0, math.log(3), -math.inf])   # weights, log-sum-exp = log 4
    ([0.25, 0.75, 0.0], 1.386...)
    """
    if any(math.isnan(s) for s in scores) or (sink is not None and math.isnan(sink)):
        return [math.nan] * len(scores), math.nan
    logits = scores + ([sink] if sink is not None else [])
    if not logits:
        return [], -math.inf
    top = max(logits)
    if top == -math.inf:
        return [0.0] * len(scores), -math.inf
    exps = [math.exp(s - top) for s in logits]  # inf - inf = nan: Inf scores give NaN
    total = math.fsum(exps)
    return [e / total for e in exps[:len(scores)]], top + math.log(total)


def _lists(x, batch, core):
    """x broadcast to batch + core, batch dims flattened, as nested lists."""
    nb = int(np.prod(batch, dtype=np.int64))
    full = np.broadcast_to(np.asarray(x, dtype=np.float64), tuple(batch) + tuple(core))
    return full.reshape((nb,) + tuple(core)).tolist()


def _causal_offset(is_causal, Lq, Lk):
    if is_causal is None or is_causal is False:
        return None
    if is_causal is True or is_causal == "top_left":
        return 0
    if is_causal == "bottom_right":
        return Lk - Lq
    raise ValueError(f"is_causal={is_causal!r}")


def _valid_lens_table(valid_lens, batch, Hq, Lq, query_ndim):
    """valid_lens -> nested list lens[b][h][i] (flattened batch b), or None.

    The documented readings, one per input rank: a scalar for every row;
    2-D inputs: (Lq,) per row; 3-D inputs (d2l): (X,) per leading index, or
    (X, Lq) per leading index and row; batched inputs: the batch shape, or
    batch + (Lq,). Size-1 dims broadcast."""
    if valid_lens is None:
        return None
    vl = np.asarray(valid_lens)
    nb = len(batch)
    if vl.ndim == 0:
        full = np.full(tuple(batch) + (Hq, Lq), int(vl))
    elif query_ndim == 2:   # (batch: key/value's leading dims, which the query broadcasts over)
        full = np.broadcast_to(vl.reshape(1, -1), tuple(batch) + (Hq, Lq))
    elif query_ndim == 3:
        full = np.broadcast_to(vl.reshape(-1, 1) if vl.ndim == 1 else vl, tuple(batch) + (Hq, Lq))
    elif vl.ndim == nb:
        full = np.broadcast_to(vl.reshape(vl.shape + (1, 1)), tuple(batch) + (Hq, Lq))
    else:
        full = np.broadcast_to(vl.reshape(vl.shape[:-1] + (1, vl.shape[-1])), tuple(batch) + (Hq, Lq))
    # (the batch size spelled out: reshape(-1, ...) is ambiguous when Lq or Hq is 0)
    return np.asarray(full).reshape(int(np.prod(batch, dtype=np.int64)), Hq, Lq).tolist()


def _attention(score_fn, q, k, v, Hq, Hkv, Lq, Lk, Dv, batch, attn_mask, is_causal,
               dropout_p, seed, valid_lens, query_ndim, variants=None):
    """Shared loop: score_fn(b, h, g, i, j) -> raw score; the rest is common.
    Returns nested lists out (nb, Hq, Lq, Dv), weights (nb, Hq, Lq, Lk), lse (nb, Hq, Lq)."""
    nb = int(np.prod(batch, dtype=np.int64))
    scores_shape = tuple(batch) + (Hq, Lq, Lk)
    mask = None
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        is_bool = m.dtype == np.bool_
        mask = np.broadcast_to(m, scores_shape).reshape(nb, Hq, Lq, Lk).tolist()
    offset = _causal_offset(is_causal, Lq, Lk)
    lens = _valid_lens_table(valid_lens, batch, Hq, Lq, query_ndim)
    variants = variants or {}
    # key position of query i: top-left with is_causal True / "top_left",
    # otherwise bottom-right (windows and ALiBi, as in flash-attn)
    top_left = is_causal is True or is_causal is np.True_ or is_causal == "top_left"
    qpos_offset = 0 if top_left else Lk - Lq
    window = variants.get("window")
    softcap = variants.get("softcap")
    slopes = variants.get("alibi")
    if slopes is not None:
        slopes = np.broadcast_to(np.asarray(slopes, np.float64), tuple(batch) + (Hq,)).reshape(nb, Hq).tolist()
    sinks = variants.get("sinks")
    sinks = None if sinks is None else np.asarray(sinks, np.float64).reshape(Hq).tolist()
    # packed sequences: dropout numbers weights as the kernel does, (sequence
    # index, longest Lq, longest Lk) in place of (b, Lq, Lk)
    frame = variants.get("dropout_frame")
    group = Hq // Hkv if Hkv else 1
    out, weights, lse = [], [], []
    for b in range(nb):
        ob, wb, lb = [], [], []
        for h in range(Hq):
            g = h // group
            oh, wh, lh = [], [], []
            for i in range(Lq):
                scores = []
                p_i = i + qpos_offset
                for j in range(Lk):
                    s = score_fn(b, h, g, i, j)
                    if softcap is not None:
                        s = softcap * math.tanh(s / softcap)
                    if slopes is not None:
                        s = s - slopes[b][h] * abs(p_i - j)
                    if mask is not None:
                        if is_bool:
                            if not mask[b][h][i][j]:
                                s = -math.inf
                        else:
                            s = s + mask[b][h][i][j]
                    if offset is not None and j > i + offset:
                        s = -math.inf
                    if lens is not None and j >= lens[b][h][i]:
                        s = -math.inf
                    if window is not None:
                        left, right = window
                        if (left >= 0 and j < p_i - left) or (right >= 0 and j > p_i + right):
                            s = -math.inf
                    scores.append(s)
                w, row_lse = softmax_row(scores, None if sinks is None else sinks[h])
                if dropout_p:
                    fb, fLq, fLk = frame if frame is not None else (b, Lq, Lk)
                    for j in range(Lk):
                        counter = ((fb * Hq + h) * fLq + i) * fLk + j
                        w[j] = w[j] / (1.0 - dropout_p) if dropout_keep(seed, counter, dropout_p) else 0.0
                row = []
                for c in range(Dv):
                    acc = 0.0
                    for j in range(Lk):
                        if scores[j] != -math.inf:  # masked keys are not read
                            acc += w[j] * v[b][g][j][c]
                    row.append(acc)
                oh.append(row)
                wh.append(w)
                lh.append(row_lse)
            ob.append(oh)
            wb.append(wh)
            lb.append(lh)
        out.append(ob)
        weights.append(wb)
        lse.append(lb)
    return out, weights, lse


def _finish(out, weights, lse, batch, Hq, Lq, Lk, Dv, flat, return_weights, return_lse):
    res = np.array(out, dtype=np.float64).reshape(tuple(batch) + (Hq, Lq, Dv))
    w = np.array(weights, dtype=np.float64).reshape(tuple(batch) + (Hq, Lq, Lk))
    s = np.array(lse, dtype=np.float64).reshape(tuple(batch) + (Hq, Lq))
    if flat:
        res, w, s = res[0], w[0], s[0]
    extra = ((w,) if return_weights else ()) + ((s,) if return_lse else ())
    return (res,) + extra if extra else res


def _run(make_score, query, key, value, attn_mask, dropout_p, is_causal, seed, valid_lens,
         return_weights, return_lse, variants=None):
    """Common driver: make_score(Q, K) -> score(b, h, g, i, j) over nested lists."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (query, key, value))
    query_ndim = q.ndim
    flat = q.ndim == 2
    if flat:
        q, k, v = q[None], k[None], v[None]
    Hq, Lq, Dq = q.shape[-3:]
    Hkv, Lk, Dk = k.shape[-3:]
    Dv = v.shape[-1]
    batch = np.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    Q = _lists(q, batch, (Hq, Lq, Dq))
    K = _lists(k, batch, (Hkv, Lk, Dk))
    Vl = _lists(v, batch, (Hkv, Lk, Dv))
    o, w, s = _attention(make_score(Q, K), Q, K, Vl, Hq, Hkv, Lq, Lk, Dv, batch, attn_mask,
                         is_causal, dropout_p, seed, valid_lens, query_ndim, variants)
    return _finish(o, w, s, batch, Hq, Lq, Lk, Dv, flat, return_weights, return_lse)


def _dot(x, y):
    acc = 0.0
    for a, b in zip(x, y):
        acc += a * b
    return acc


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False, *,
                                 return_weights=False, return_lse=False, num_threads=None,
                                 out=None, seed=None, valid_lens=None, window=None,
                                 alibi_slopes=None, softcap=None, sinks=None, cu_seqlens_q=None,
                                 cu_seqlens_k=None):
    """Reference SDPA: score = scale * sum_d q_d k_d, soft-capped, minus the
    ALiBi distance term, then masks, windows, softmax (with the sink logit),
    sum. Packed sequences (cu_seqlens) are computed one by one.

    Shapes as attncore.scaled_dot_product_attention: (..., Hq, Lq, D),
    (..., Hkv, Lk, D), (..., Hkv, Lk, Dv) -> (..., Hq, Lq, Dv), float64.
    `num_threads` and `out` are accepted and ignored.

    Example
    -------
    >>> from attncore import reference
    >>> reference.scaled_dot_product_attention([[[1.0]]], [[[1.0]]], [[[2.0]]])
    array([[[2.]]])
    """
    if scale is None:
        D = np.shape(query)[-1]
        scale = 1.0 / math.sqrt(D) if D else 1.0
    variants = dict(window=None if window is None else tuple(-1 if x is None else x for x in window),
                    alibi=alibi_slopes, softcap=softcap, sinks=sinks)
    if cu_seqlens_q is not None:
        return _packed(query, key, value, is_causal, scale, cu_seqlens_q, cu_seqlens_k, return_lse,
                       dropout_p, seed, variants)
    return _run(_dot_scores(scale), query, key, value, attn_mask, dropout_p, is_causal, seed,
                valid_lens, return_weights, return_lse, variants)


def _dot_scores(scale):
    def make_score(Q, K):
        return lambda b, h, g, i, j: scale * _dot(Q[b][h][i], K[b][g][j])
    return make_score


def _packed(query, key, value, is_causal, scale, cu_q, cu_k, return_lse, dropout_p, seed, variants):
    """Packed sequences, each its own attention problem ((H, total, D) inputs);
    dropout numbers sequence b's weights as batch element b of (longest Lq,
    longest Lk), as the kernel does (docs/numerics.md (9))."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (query, key, value))
    flat = q.ndim == 2
    if flat:
        q, k, v = q[None], k[None], v[None]
    longest_q = int(np.diff(cu_q).max(initial=0))
    longest_k = int(np.diff(cu_k).max(initial=0))
    outs, lses = [], []
    for b in range(len(cu_q) - 1):
        a, z = int(cu_q[b]), int(cu_q[b + 1])
        c, e = int(cu_k[b]), int(cu_k[b + 1])
        o, lse = _run(_dot_scores(scale), q[:, a:z], k[:, c:e], v[:, c:e], None, dropout_p, is_causal,
                      seed, None, False, True, dict(variants, dropout_frame=(b, longest_q, longest_k)))
        outs.append(o)
        lses.append(lse)
    out = np.concatenate(outs, axis=1)
    lse = np.concatenate(lses, axis=1)
    if flat:
        out, lse = out[0], lse[0]
    return (out, lse) if return_lse else out


def general_attention(query, key, value, weight, attn_mask=None, is_causal=False, scale=1.0, *,
                      return_weights=False, return_lse=False, num_threads=None, valid_lens=None,
                      enable_gqa=False, dropout_p=0.0, seed=None):
    """Reference general attention: score = scale * sum_b (sum_a q_a W_ab) k_b
    (the query projected first, as the definition says: SDPA on q W, which is
    also the kernel's order; the other order, q (W k), differs where q W or
    W k meets an infinity or overflows: an infinite key component, say, gives
    inf - inf there and one signed inf here).

    Shapes: query (..., Hq, Lq, D), weight (D, D_k), key (..., Hkv, Lk, D_k),
    value (..., Hkv, Lk, Dv) -> (..., Hq, Lq, Dv), float64.

    >>> import math
    >>> from attncore import reference
    >>> W = [[math.log(3), 0.0], [0.0, math.log(3)]]      # scores log 3 and 0: weights 3/4, 1/4
    >>> reference.general_attention([[[1.0, 0.0]]], [[[1.0, 0.0], [0.0, 1.0]]], [[[1.0], [3.0]]], W)
    array([[[1.5]]])
    """
    Wt = np.asarray(weight, dtype=np.float64).T.tolist()   # Wt[b] = column b of W

    def make_score(Q, K):
        # each query row projected once, not once per key
        QW = [[[[_dot(col, q) for col in Wt] for q in rows] for rows in heads] for heads in Q]

        def score(b, h, g, i, j):
            return scale * _dot(QW[b][h][i], K[b][g][j])
        return score

    return _run(make_score, query, key, value, attn_mask, dropout_p, is_causal, seed, valid_lens,
                return_weights, return_lse)


def additive_attention(query, key, value, w_query, w_key, w_score, bias=None, attn_mask=None,
                       is_causal=False, *, return_weights=False, return_lse=False,
                       num_threads=None, valid_lens=None, enable_gqa=False, scale=1.0,
                       dropout_p=0.0, seed=None):
    """Reference additive attention: score = scale sum_h w_h tanh(Wq_h . q + Wk_h . k + b_h).

    Shapes: query (..., Hq, Lq, D), key (..., Hkv, Lk, Dk), value
    (..., Hkv, Lk, Dv), w_query (H, D), w_key (H, Dk), w_score (H,), bias
    (H,) -> (..., Hq, Lq, Dv), float64.

    >>> from attncore import reference
    >>> # scores tanh(2) and tanh(0) = 0
    >>> reference.additive_attention([[[1.0]]], [[[1.0], [-1.0]]], [[[1.0], [3.0]]],
    ...                              w_query=[[1.0]], w_key=[[1.0]], w_score=[1.0])
    array([[[1.55214506]]])
    """
    Wq = np.asarray(w_query, dtype=np.float64).tolist()
    Wk = np.asarray(w_key, dtype=np.float64).tolist()
    w = np.asarray(w_score, dtype=np.float64).tolist()
    bias = [0.0] * len(w) if bias is None else np.asarray(bias, dtype=np.float64).tolist()

    def make_score(Q, K):
        def score(b, h, g, i, j):
            q, k = Q[b][h][i], K[b][g][j]
            return scale * sum(w[t] * math.tanh(_dot(Wq[t], q) + _dot(Wk[t], k) + bias[t])
                               for t in range(len(w)))
        return score

    return _run(make_score, query, key, value, attn_mask, dropout_p, is_causal, seed, valid_lens,
                return_weights, return_lse)


def concat_attention(query, key, value, w_query, w_key, bias=0.0, attn_mask=None, is_causal=False,
                     *, return_weights=False, return_lse=False, num_threads=None, valid_lens=None,
                     enable_gqa=False, scale=1.0, dropout_p=0.0, seed=None):
    """Reference concat attention: score = scale (w^T [q; k] + b).

    Shapes: query (..., Hq, Lq, D), key (..., Hkv, Lk, Dk), value
    (..., Hkv, Lk, Dv), w_query (D,), w_key (Dk,) -> (..., Hq, Lq, Dv), float64.

    >>> import math
    >>> from attncore import reference
    >>> # scores 0 and log 3: weights 1/4, 3/4
    >>> reference.concat_attention([[[1.0]]], [[[0.0], [math.log(3)]]], [[[1.0], [3.0]]],
    ...                            w_query=[0.0], w_key=[1.0])
    array([[[2.5]]])
    """
    wq = np.asarray(w_query, dtype=np.float64).tolist()
    wk = np.asarray(w_key, dtype=np.float64).tolist()

    def make_score(Q, K):
        return lambda b, h, g, i, j: scale * (_dot(wq + wk, Q[b][h][i] + K[b][g][j]) + bias)

    return _run(make_score, query, key, value, attn_mask, dropout_p, is_causal, seed, valid_lens,
                return_weights, return_lse)


def dot_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                  scale=1.0, enable_gqa=False, *, return_weights=False, return_lse=False,
                  num_threads=None, out=None, seed=None, valid_lens=None, **variants):
    """Reference unscaled dot-product attention (scale 1 by default); shapes
    and the other arguments (window, alibi_slopes, softcap, sinks,
    cu_seqlens_q/k) as scaled_dot_product_attention.

    >>> import math
    >>> from attncore import reference
    >>> reference.dot_attention([[[math.log(3), 0.0]]], [[[1.0, 0.0], [0.0, 1.0]]], [[[1.0], [3.0]]])
    array([[[1.5]]])
    """
    return scaled_dot_product_attention(
        query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
        return_weights=return_weights, return_lse=return_lse, seed=seed, valid_lens=valid_lens,
        **variants)


def merge_attention(parts):
    """Reference merge of (out, lse) shards: out = sum_i exp(lse_i - lse) out_i.

    parts: a list of (out (..., Dv), lse (...)) -> (out, lse), float64.

    >>> import numpy as np
    >>> from attncore import reference
    >>> reference.merge_attention([(np.array([[1.0]]), np.array([0.0])),
    ...                            (np.array([[3.0]]), np.array([0.0]))])   # equal weight
    (array([[2.]]), array([0.69314718]))
    """
    parts = [(np.asarray(o, dtype=np.float64), np.asarray(s, dtype=np.float64)) for o, s in parts]
    shape = parts[0][0].shape
    outs = [o.reshape(int(np.prod(shape[:-1], dtype=np.int64)), shape[-1]).tolist() for o, _ in parts]
    lses = [s.reshape(-1).tolist() for _, s in parts]
    merged, merged_lse = [], []
    for r in range(len(lses[0])):
        row_lse = [lse[r] for lse in lses]
        if any(math.isnan(x) for x in row_lse):
            merged.append([math.nan] * shape[-1])
            merged_lse.append(math.nan)
            continue
        top = max(row_lse)
        if top == -math.inf:
            merged.append([0.0] * shape[-1])
            merged_lse.append(-math.inf)
            continue
        w = [math.exp(x - top) for x in row_lse]
        total = math.fsum(w)
        live = [p for p in range(len(parts)) if row_lse[p] != -math.inf]   # (empty shards add 0)
        # (weights normalised first: the sum of w_p out_p could overflow where
        # the average does not)
        merged.append([math.fsum(w[p] / total * outs[p][r][c] for p in live)
                       for c in range(shape[-1])])
        merged_lse.append(top + math.log(total))
    return (np.array(merged, dtype=np.float64).reshape(shape),
            np.array(merged_lse, dtype=np.float64).reshape(shape[:-1]))


def linear(x, weight, bias=None):
    """Reference y = x W^T + b over the last axis (nested lists, float64):
    x (..., in), weight (out, in), bias (out,) -> (..., out).

    >>> from attncore import reference
    >>> reference.linear([[1.0, 2.0]], [[1.0, 1.0], [0.0, 1.0]], [0.5, 0.0])
    array([[3.5, 2. ]])
    """
    x = np.asarray(x, dtype=np.float64)
    W = np.asarray(weight, dtype=np.float64).tolist()
    b = [0.0] * len(W) if bias is None else np.asarray(bias, dtype=np.float64).tolist()
    rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]).tolist()
    out = [[_dot(r, W[n]) + b[n] for n in range(len(W))] for r in rows]
    return np.array(out, dtype=np.float64).reshape(x.shape[:-1] + (len(W),))


class MultiHeadAttention:
    """Reference multi-head attention with attncore.MultiHeadAttention's
    parameters and call signature (no kv_cache): pure-Python projections and
    reference SDPA per head, torch's mask conventions.

    Build it from a fast layer: ``reference.MultiHeadAttention(layer)``.
    """

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, query, key=None, value=None, *, key_padding_mask=None, attn_mask=None,
                 is_causal=False, need_weights=True, average_attn_weights=True, valid_lens=None,
                 num_threads=None, dropout_seed=None):
        """As the layer's __call__ (no kv_cache); with the layer in training
        mode and dropout > 0, dropout_seed gives the SDPA dropout seed."""
        m = self.layer
        H, Hkv, Dh, E = m.num_heads, m.num_kv_heads, m.head_dim, m.embed_dim
        x = np.asarray(query, dtype=np.float64)
        kx = x if key is None else np.asarray(key, dtype=np.float64)
        vx = kx if value is None else np.asarray(value, dtype=np.float64)
        unbatched = x.ndim == 2
        if unbatched:
            x, kx, vx = x[None], kx[None], vx[None]
        elif not m.batch_first:   # (L, B, E) -> (B, L, E)
            x, kx, vx = (t.transpose(1, 0, 2) for t in (x, kx, vx))
        Wq, Wk, Wv, bq, bk, bv = m._projections()
        q = linear(x, Wq, bq)
        k = linear(kx, Wk, bk)
        v = linear(vx, Wv, bv)
        B, Lq, Lk = x.shape[0], x.shape[1], kx.shape[1]
        split = lambda t, n: t.reshape(B, t.shape[1], n, Dh).transpose(0, 2, 1, 3)
        q, k, v = split(q, H), split(k, Hkv), split(v, Hkv)
        allowed = np.zeros((B, H, Lq, Lk))  # additive form of every mask
        if key_padding_mask is not None:
            kpm = np.asarray(key_padding_mask).reshape(B, 1, 1, Lk)
            allowed = allowed + (np.where(kpm, -np.inf, 0.0) if kpm.dtype == np.bool_ else kpm)
        if attn_mask is not None:
            am = np.asarray(attn_mask)
            am = am.reshape(B, H, Lq, Lk) if am.ndim == 3 else am
            allowed = allowed + (np.where(am, -np.inf, 0.0) if am.dtype == np.bool_ else am)
        if unbatched and valid_lens is not None and np.ndim(valid_lens) == 1 \
                and len(valid_lens) == Lq:
            valid_lens = np.asarray(valid_lens)[None]   # (Lq,): the batch dim dropped
        dropout_p = m.dropout if m.training else 0.0
        out, w = scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=bool(is_causal),
                                              enable_gqa=True, return_weights=True,
                                              valid_lens=valid_lens, dropout_p=dropout_p,
                                              seed=dropout_seed)
        out = linear(out.transpose(0, 2, 1, 3).reshape(B, Lq, E), m.out_proj.weight, m.out_proj.bias)
        weights = (w.mean(axis=1) if average_attn_weights else w) if need_weights else None
        if unbatched:
            out = out[0]
            weights = weights[0] if weights is not None else None
        elif not m.batch_first:
            out = out.transpose(1, 0, 2)
        return out, weights


def sigmoid_attention(query, key, value, bias=0.0, scale=None, attn_mask=None, is_causal=False,
                      enable_gqa=False, *, valid_lens=None, dropout_p=0.0, seed=None,
                      return_weights=False, num_threads=None, window=None, alibi_slopes=None,
                      softcap=None):
    """Reference sigmoid attention: w_ij = sigmoid(score_ij + bias) with the
    same score rules as SDPA (scale, soft-cap, ALiBi, masks), 0 for hidden
    keys, out_i = sum_j w_ij v_j (no normalisation). Shapes as
    scaled_dot_product_attention.

    >>> from attncore import reference
    >>> # scores 0: each weight sigmoid(0) = 1/2, not normalised
    >>> reference.sigmoid_attention([[[0.0]]], [[[0.0], [0.0]]], [[[1.0], [3.0]]])
    array([[[2.]]])
    """
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (query, key, value))
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] else 1.0
    flat = q.ndim == 2
    query_ndim = q.ndim
    if flat:
        q, k, v = q[None], k[None], v[None]
    Hq, Lq, D = q.shape[-3:]
    Hkv, Lk, Dv = k.shape[-3], k.shape[-2], v.shape[-1]
    batch = np.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    Q, K, Vl = _lists(q, batch, (Hq, Lq, D)), _lists(k, batch, (Hkv, Lk, D)), _lists(v, batch, (Hkv, Lk, Dv))
    nb = int(np.prod(batch, dtype=np.int64))
    scores = _visible_scores(Q, K, Hq, Hkv, Lq, Lk, batch, scale, attn_mask, is_causal, valid_lens,
                             query_ndim, window, alibi_slopes, softcap)
    weights = np.zeros((nb, Hq, Lq, Lk))
    out = np.zeros((nb, Hq, Lq, Dv))
    group = Hq // Hkv if Hkv else 1
    for b in range(nb):
        for h in range(Hq):
            for i in range(Lq):
                for j in range(Lk):
                    s = scores[b][h][i][j]
                    if s == -math.inf:
                        continue                      # hidden: weight 0, value not read
                    x = s + bias
                    w = math.nan if math.isnan(x) else (
                        1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x)))
                    if dropout_p:
                        counter = ((b * Hq + h) * Lq + i) * Lk + j
                        w = w / (1.0 - dropout_p) if dropout_keep(seed, counter, dropout_p) else 0.0
                    weights[b, h, i, j] = w
                    for c in range(Dv):
                        out[b, h, i, c] += w * Vl[b][h // group][j][c]
    out = out.reshape(tuple(batch) + (Hq, Lq, Dv))
    weights = weights.reshape(tuple(batch) + (Hq, Lq, Lk))
    if flat:
        out, weights = out[0], weights[0]
    return (out, weights) if return_weights else out


def _visible_scores(Q, K, Hq, Hkv, Lq, Lk, batch, scale, attn_mask, is_causal, valid_lens,
                    query_ndim, window, alibi_slopes, softcap):
    """scores[b][h][i][j]: the scaled, soft-capped, ALiBi-biased, masked
    score, -inf where the key is hidden (the rules of _attention)."""
    nb = int(np.prod(batch, dtype=np.int64))
    mask = None
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        is_bool = m.dtype == np.bool_
        mask = np.broadcast_to(m, tuple(batch) + (Hq, Lq, Lk)).reshape(nb, Hq, Lq, Lk).tolist()
    offset = _causal_offset(is_causal, Lq, Lk)
    lens = _valid_lens_table(valid_lens, batch, Hq, Lq, query_ndim)
    top_left = is_causal is True or is_causal is np.True_ or is_causal == "top_left"
    qpos_offset = 0 if top_left else Lk - Lq
    slopes = None
    if alibi_slopes is not None:
        slopes = np.broadcast_to(np.asarray(alibi_slopes, np.float64), tuple(batch) + (Hq,)).reshape(nb, Hq).tolist()
    group = Hq // Hkv if Hkv else 1
    out = []
    for b in range(nb):
        ob = []
        for h in range(Hq):
            oh = []
            for i in range(Lq):
                row = []
                p_i = i + qpos_offset
                for j in range(Lk):
                    s = scale * _dot(Q[b][h][i], K[b][h // group][j])
                    if softcap is not None:
                        s = softcap * math.tanh(s / softcap)
                    if slopes is not None:
                        s = s - slopes[b][h] * abs(p_i - j)
                    if mask is not None:
                        if is_bool:
                            if not mask[b][h][i][j]:
                                s = -math.inf
                        else:
                            s = s + mask[b][h][i][j]
                    if offset is not None and j > i + offset:
                        s = -math.inf
                    if lens is not None and j >= lens[b][h][i]:
                        s = -math.inf
                    if window is not None:
                        left, right = (-1 if x is None else x for x in window)
                        if (left >= 0 and j < p_i - left) or (right >= 0 and j > p_i + right):
                            s = -math.inf
                    row.append(s)
                oh.append(row)
            ob.append(oh)
        out.append(ob)
    return out


# -- softmax, masked_softmax, kernel_regression (attncore/softmax.py) ---------------

def softmax(x, axis=-1, *, mask=None, valid_lens=None, out=None, num_threads=None):
    """Reference softmax along `axis`: masked entries (bool mask False, or
    j >= the row's valid length) get weight 0, a float mask is added, a row
    with nothing left gives zeros, a NaN among the kept entries a NaN row.
    `valid_lens` has the row shape (x's without the axis; size-1 dims
    broadcast) or x's shape with size 1 at the axis. `out` and `num_threads`
    are accepted and ignored. float64.

    Example
    -------
    >>> from attncore import reference
    >>> reference.softmax([[0.0, 1.0], [0.0, 1.0]], axis=0, valid_lens=[1, 2])
    array([[1. , 0.5],
           [0. , 0.5]])
    """
    a = np.asarray(x, dtype=np.float64)
    axis = axis % a.ndim
    L = a.shape[axis]
    moved = np.moveaxis(a, axis, -1)
    rows_shape = moved.shape[:-1]
    nrows = int(np.prod(rows_shape, dtype=np.int64))
    rows = moved.reshape(nrows, L).tolist()
    m, is_bool = None, False
    if mask is not None:
        mm = np.asarray(mask)
        is_bool = mm.dtype == np.bool_
        full = np.broadcast_to(mm if is_bool else mm.astype(np.float64), a.shape)
        m = np.moveaxis(full, axis, -1).reshape(nrows, L).tolist()
    lens = None
    if valid_lens is not None:
        v = np.asarray(valid_lens)
        if v.ndim == a.ndim:
            v = np.squeeze(v, axis)
        lens = np.broadcast_to(v, rows_shape).reshape(nrows).tolist()
    res = []
    for r in range(nrows):
        scores = []
        for j in range(L):
            s = rows[r][j]
            if m is not None:
                if is_bool:
                    if not m[r][j]:
                        s = -math.inf
                else:
                    s = s + m[r][j]
            if lens is not None and j >= lens[r]:
                s = -math.inf
            scores.append(s)
        res.append(softmax_row(scores)[0])
    return np.moveaxis(np.array(res, dtype=np.float64).reshape(rows_shape + (L,)), -1, axis)


def masked_softmax(scores, valid_lens, *, num_threads=None):
    """Reference d2l masked_softmax: scores at j >= valid_len become -1e6, then
    a softmax over the last axis. valid_lens: None, a scalar,
    scores.shape[:-2] (per batch element, repeated over the second-to-last
    dim) or scores.shape[:-1] (per row).

    Example
    -------
    >>> from attncore import reference
    >>> reference.masked_softmax([[1.0, 1.0, 1.0]], [0])
    array([[0.33333333, 0.33333333, 0.33333333]])
    """
    a = np.asarray(scores, dtype=np.float64)
    if valid_lens is None:
        return softmax(a, -1)
    v = np.asarray(valid_lens)
    K = a.shape[-1]
    rows_shape = a.shape[:-1]
    if v.ndim == 0:
        full = np.broadcast_to(v, rows_shape)
    elif a.ndim >= 2 and v.shape == a.shape[:-2]:
        full = np.broadcast_to(v.reshape(v.shape + (1,)), rows_shape)
    else:
        full = v
    nrows = int(np.prod(rows_shape, dtype=np.int64))
    rows = a.reshape(nrows, K).tolist()
    lens = np.asarray(full, dtype=np.float64).reshape(nrows).tolist()
    res = []
    for r in range(nrows):
        res.append(softmax_row([s if j < lens[r] else -1e6 for j, s in enumerate(rows[r])])[0])
    return np.array(res, dtype=np.float64).reshape(a.shape)


def kernel_regression(x_query, x_key, y, bandwidth=1.0, *, kernel="gaussian", attn_mask=None,
                      valid_lens=None, return_weights=False, num_threads=None):
    """Reference Nadaraya-Watson regression: r2 = sum_c (q_c - k_c)^2 one term
    at a time; gaussian score -r2 / (2 h^2), laplace -sqrt(r2) / h (softmax
    over the visible keys, a float mask added), epanechnikov weights
    max(1 - r2 / h^2, 0) / their sum. Shapes as attncore.kernel_regression
    (a 1-D x is scalar points; y with one dim fewer than x_key is scalar
    targets). float64.

    Example
    -------
    >>> from attncore import reference
    >>> reference.kernel_regression([0.0], [-1.0, 1.0], [2.0, 4.0])
    array([3.])
    """
    xq = np.asarray(x_query, dtype=np.float64)
    xk = np.asarray(x_key, dtype=np.float64)
    yy = np.asarray(y, dtype=np.float64)
    xq = xq[:, None] if xq.ndim == 1 else xq
    xk = xk[:, None] if xk.ndim == 1 else xk
    scalar_y = yy.ndim == xk.ndim - 1
    if scalar_y:
        yy = yy[..., None]
    batch = tuple(np.broadcast_shapes(xq.shape[:-2], xk.shape[:-2], yy.shape[:-2]))
    Lq, D = xq.shape[-2:]
    Lk, Dy = yy.shape[-2:]
    nb = int(np.prod(batch, dtype=np.int64))
    Q, Kx, Y = _lists(xq, batch, (Lq, D)), _lists(xk, batch, (Lk, D)), _lists(yy, batch, (Lk, Dy))
    mask, is_bool = None, False
    if attn_mask is not None:
        mm = np.asarray(attn_mask)
        is_bool = mm.dtype == np.bool_
        mask = np.broadcast_to(mm if is_bool else mm.astype(np.float64),
                               batch + (Lq, Lk)).reshape(nb, Lq, Lk).tolist()
    lens = None
    if valid_lens is not None:
        v = np.asarray(valid_lens)
        if v.ndim == len(batch) and v.ndim:
            v = v.reshape(v.shape + (1,))
        lens = np.broadcast_to(v, batch + (Lq,)).reshape(nb, Lq).tolist()
    h = float(bandwidth)
    out, weights = [], []
    for b in range(nb):
        for i in range(Lq):
            r2s, visible = [], []
            for j in range(Lk):
                r2 = 0.0
                for c in range(D):
                    diff = Q[b][i][c] - Kx[b][j][c]
                    r2 += diff * diff
                r2s.append(r2)
                vis = not (lens is not None and j >= lens[b][i])
                if vis and mask is not None and is_bool and not mask[b][i][j]:
                    vis = False
                visible.append(vis)
            if kernel == "epanechnikov":
                ks = []
                for j in range(Lk):
                    k = 1.0 - r2s[j] / (h * h)
                    ks.append((0.0 if k < 0 else k) if visible[j] else 0.0)
                if any(math.isnan(k) for k in ks):
                    w = [math.nan] * Lk
                else:
                    total = math.fsum(ks)
                    w = [k / total for k in ks] if total > 0 else [0.0] * Lk
            else:
                scores = []
                for j in range(Lk):
                    if not visible[j]:
                        scores.append(-math.inf)
                        continue
                    s = -r2s[j] / (2 * h * h) if kernel == "gaussian" else -math.sqrt(r2s[j]) / h
                    if mask is not None and not is_bool:
                        s = s + mask[b][i][j]
                    scores.append(s)
                w = softmax_row(scores)[0]
            row = []
            for c in range(Dy):
                acc = 0.0
                for j in range(Lk):
                    if visible[j]:   # masked keys are not read
                        acc += w[j] * Y[b][j][c]
                row.append(acc)
            out.append(row)
            weights.append(w)
    res = np.array(out, dtype=np.float64).reshape(batch + (Lq, Dy))
    if scalar_y:
        res = res[..., 0]
    if return_weights:
        return res, np.array(weights, dtype=np.float64).reshape(batch + (Lq, Lk))
    return res


# -- channel and spatial attention for images (attncore.vision) --------------------

def _vision_sigmoid(z):
    """sigmoid without overflow: exact 0 / 1 at -inf / +inf, NaN -> NaN."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)  # z < 0 or NaN
    return e / (1.0 + e)


def _vision_sum(values, count=1):
    """The exactly rounded sum of `values` divided by `count` (math.fsum;
    exact fractions where fsum's partial sums pass the float range: a finite
    exact result comes back finite, a larger one as +-inf), with IEEE's
    answers for non-finite terms."""
    values = list(values)
    if any(math.isnan(v) for v in values):
        return math.nan
    pos, neg = math.inf in values, -math.inf in values
    if pos and neg:
        return math.nan
    if pos or neg:
        return math.inf if pos else -math.inf
    try:
        return math.fsum(values) / count
    except OverflowError:
        exact = sum(map(Fraction, values), Fraction(0)) / count
        try:
            return float(exact)
        except OverflowError:
            return math.inf if exact > 0 else -math.inf


def _vision_max(values):
    """max that propagates NaN (torch's max pooling); NaN over no values (a
    map of an image without channels or pixels, which scales nothing)."""
    values = list(values)
    return math.nan if not values or any(math.isnan(v) for v in values) else max(values)


def _vision_mean(values, count):
    """mean of `count` values (exactly rounded); NaN for none (as torch's
    mean of nothing)."""
    return _vision_sum(values, count) if count else math.nan


def _vision_relu(h):
    return h if (h > 0 or math.isnan(h)) else 0.0


def _vision_images(x, layout):
    """x as nested lists [n][c][h][w] (float64) and its layout."""
    a = np.asarray(x, dtype=np.float64)
    if layout == "NHWC":
        a = a.transpose(0, 3, 1, 2)
    return a.tolist(), a.shape


def _vision_result(X, layout, shape):
    """nested lists [n][c][h][w] -> an array of `shape` (N, C, H, W) in `layout`
    (the shape is given: lists cannot carry a dim after a size-0 one)."""
    a = np.array(X, dtype=np.float64).reshape(shape)
    return a if layout == "NCHW" else a.transpose(0, 2, 3, 1)


def _vision_mlp_scales(X, shape, w1, b1, w2, b2, pooling):
    """s[n][c] = sigmoid(sum over poolings of w2 relu(w1 v + b1) + b2)."""
    N, C, H, W = shape
    w1, w2 = (np.asarray(w, dtype=np.float64) for w in (w1, w2))   # (Cr, C[, 1, 1]), (C, Cr[, 1, 1])
    W1 = w1.reshape(w1.shape[0], math.prod(w1.shape[1:])).tolist()
    W2 = w2.reshape(w2.shape[0], math.prod(w2.shape[1:])).tolist()
    Cr = len(W1)
    B1 = [0.0] * Cr if b1 is None else np.asarray(b1, dtype=np.float64).tolist()
    B2 = [0.0] * C if b2 is None else np.asarray(b2, dtype=np.float64).tolist()
    kinds = {"avg": ["avg"], "max": ["max"], "avg+max": ["avg", "max"]}[pooling]
    scales = []
    for n in range(N):
        y = [0.0] * C
        for kind in kinds:
            if kind == "avg":
                v = [_vision_mean((X[n][c][h][w] for h in range(H) for w in range(W)), H * W)
                     for c in range(C)]
            else:
                v = [_vision_max(X[n][c][h][w] for h in range(H) for w in range(W)) for c in range(C)]
            hid = [_vision_relu(_vision_sum(W1[j][c] * v[c] for c in range(C)) + B1[j])
                   for j in range(Cr)]
            y = [y[c] + _vision_sum(W2[c][j] * hid[j] for j in range(Cr)) + B2[c] for c in range(C)]
        scales.append([_vision_sigmoid(t) for t in y])
    return scales


def _vision_layout(layout, x, C=None, logits=None):
    if layout is not None:
        return layout
    if C is not None:
        return "NCHW" if np.shape(x)[1] == C else "NHWC"
    if logits is not None:
        return "NCHW" if np.shape(logits)[1] == 1 else "NHWC"
    return "NCHW"


def channel_attention(x, w1, b1, w2, b2, *, pooling="avg", layout=None, out=None, num_threads=None):
    """Reference channel attention (SE / CBAM's channel module), float64:
    out[n, c] = x[n, c] * sigmoid(sum over the poolings (avg: mean, max: max
    over the pixels) of w2 relu(w1 v + b1) + b2). Shapes as
    attncore.channel_attention; `out` and `num_threads` are ignored.

    Example
    -------
    >>> from attncore import reference
    >>> reference.channel_attention([[[[2.0]]]], [[0.0]], None, [[0.0]], None)
    array([[[[1.]]]])
    """
    layout = _vision_layout(layout, x, C=np.shape(w2)[0])
    X, shape = _vision_images(x, layout)
    s = _vision_mlp_scales(X, shape, w1, b1, w2, b2, pooling)
    N, C, H, W = shape
    return _vision_result([[[[X[n][c][h][w] * s[n][c] for w in range(W)] for h in range(H)]
                            for c in range(C)] for n in range(N)], layout, shape)


def _vision_spatial(X, shape, weight, bias):
    """t[n][h][w] = sigmoid(bias + sum over (map, i, j) of weight * map[h+i-kh//2][w+j-kw//2]),
    maps = (mean, max) over the channels, zero padding (taps outside are left out)."""
    N, C, H, W = shape
    K = np.asarray(weight, dtype=np.float64)[0].tolist()   # (2, kh, kw)
    kh, kw = len(K[0]), len(K[0][0])
    b = 0.0 if bias is None else float(np.asarray(bias, dtype=np.float64).reshape(()))
    t = []
    for n in range(N):
        maps = [[[_vision_mean((X[n][c][h][w] for c in range(C)), C) for w in range(W)] for h in range(H)],
                [[_vision_max(X[n][c][h][w] for c in range(C)) for w in range(W)] for h in range(H)]]
        rows = []
        for h in range(H):
            row = []
            for w in range(W):
                terms = [K[m][i][j] * maps[m][h + i - kh // 2][w + j - kw // 2]
                         for m in range(2) for i in range(kh) for j in range(kw)
                         if 0 <= h + i - kh // 2 < H and 0 <= w + j - kw // 2 < W]
                row.append(_vision_sigmoid(_vision_sum(terms) + b))
            rows.append(row)
        t.append(rows)
    return t


def spatial_attention(x, weight, bias=None, *, layout=None, out=None, num_threads=None):
    """Reference spatial attention (CBAM's spatial module), float64:
    out[n, :, h, w] = x[n, :, h, w] * t[n, h, w] with t from the channel
    mean and max maps through the (1, 2, kh, kw) convolution ('same' zero
    padding) and a sigmoid. `out` and `num_threads` are ignored.

    Example
    -------
    >>> from attncore import reference
    >>> reference.spatial_attention([[[[4.0]]]], [[[[0.0]], [[0.0]]]])
    array([[[[2.]]]])
    """
    layout = _vision_layout(layout, x)
    X, shape = _vision_images(x, layout)
    t = _vision_spatial(X, shape, weight, bias)
    N, C, H, W = shape
    return _vision_result([[[[X[n][c][h][w] * t[n][h][w] for w in range(W)] for h in range(H)]
                            for c in range(C)] for n in range(N)], layout, shape)


def cbam(x, w1, b1, w2, b2, weight, bias=None, *, pooling="avg+max", layout=None, out=None,
         num_threads=None):
    """Reference CBAM: spatial_attention(channel_attention(x, ...), ...) in float64
    (the intermediate is not rounded).

    Example
    -------
    >>> from attncore import reference
    >>> reference.cbam([[[[4.0]]]], [[0.0]], None, [[0.0]], None, [[[[0.0]], [[0.0]]]])
    array([[[[1.]]]])
    """
    layout = _vision_layout(layout, x, C=np.shape(w2)[0])
    x1 = channel_attention(x, w1, b1, w2, b2, pooling=pooling, layout=layout)
    return spatial_attention(x1, weight, bias, layout=layout)


def reverse_attention(x, logits, *, layout=None, out=None, num_threads=None):
    """Reference reverse attention: out = x * (1 - sigmoid(logits)), computed
    as x * sigmoid(-logits) (the same number, without cancellation), logits
    per pixel (N|1, 1, H|1, W|1) for NCHW or (N|1, H|1, W|1, 1) for NHWC.

    Example
    -------
    >>> from attncore import reference
    >>> reference.reverse_attention([[[[2.0]]]], [[[[0.0]]]])
    array([[[[1.]]]])
    """
    layout = _vision_layout(layout, x, logits=logits)
    X, shape = _vision_images(x, layout)
    N, C, H, W = shape
    lg = np.asarray(logits, dtype=np.float64)
    if layout == "NHWC":
        lg = lg.transpose(0, 3, 1, 2)
    L = np.broadcast_to(lg, (N, 1, H, W)).tolist()
    return _vision_result([[[[X[n][c][h][w] * _vision_sigmoid(-L[n][0][h][w]) for w in range(W)]
                             for h in range(H)] for c in range(C)] for n in range(N)], layout, shape)


_GUMBEL_STREAM = 0x6A09E667F3BCC909   # keeps hard attention's noise apart from dropout's


def gumbel(seed, counter):
    """The Gumbel noise hard_attention(mode="sample") adds to the score with
    flat index `counter` in (B, Hq, Lq, Lk) (csrc/kernels/tiles.inc.c).

    >>> from attncore import reference
    >>> round(reference.gumbel(0, 0), 6)
    -0.041224
    """
    mixed = _mix64(seed ^ _GUMBEL_STREAM) | 1
    u = ((_mix64(mixed ^ counter) >> 11) + 0.5) * (1.0 / 9007199254740992.0)
    return -math.log(-math.log(u))


def hard_attention(query, key, value, mode="argmax", k=1, *, scale=None, seed=None, attn_mask=None,
                   is_causal=False, valid_lens=None, enable_gqa=False, return_indices=False,
                   num_threads=None, window=None, alibi_slopes=None, softcap=None):
    """Reference hard attention: rank each row's visible scores (plus Gumbel
    noise for "sample"), keep the k best (ties: the smaller key), and weight
    their values by a softmax of their scores ("topk") or equally.

    Shapes as scaled_dot_product_attention -> (..., Hq, Lq, Dv), float64, and
    with return_indices the kept keys (..., Hq, Lq, k), -1 where a row has
    fewer than k visible keys.

    >>> from attncore import reference
    >>> reference.hard_attention([[[1.0, 0.0]]], [[[1.0, 0.0], [0.0, 1.0]]], [[[1.0], [3.0]]],
    ...                          return_indices=True)
    (array([[[1.]]]), array([[[0]]]))
    """
    q, k_, v = (np.asarray(x, dtype=np.float64) for x in (query, key, value))
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] else 1.0
    flat = q.ndim == 2
    query_ndim = q.ndim
    if flat:
        q, k_, v = q[None], k_[None], v[None]
    Hq, Lq, D = q.shape[-3:]
    Hkv, Lk, Dv = k_.shape[-3], k_.shape[-2], v.shape[-1]
    batch = np.broadcast_shapes(q.shape[:-3], k_.shape[:-3], v.shape[:-3])
    Q, K, Vl = _lists(q, batch, (Hq, Lq, D)), _lists(k_, batch, (Hkv, Lk, D)), _lists(v, batch, (Hkv, Lk, Dv))
    nb = int(np.prod(batch, dtype=np.int64))
    scores = _visible_scores(Q, K, Hq, Hkv, Lq, Lk, batch, scale, attn_mask, is_causal, valid_lens,
                             query_ndim, window, alibi_slopes, softcap)
    out = np.zeros((nb, Hq, Lq, Dv))
    idx = np.full((nb, Hq, Lq, k), -1, np.int64)
    group = Hq // Hkv if Hkv else 1
    for b in range(nb):
        for h in range(Hq):
            for i in range(Lq):
                row = scores[b][h][i]
                if any(math.isnan(s) for s in row):
                    out[b, h, i] = math.nan
                    continue
                cand = []
                for j, s in enumerate(row):
                    if s == -math.inf:
                        continue
                    t = s
                    if mode == "sample":
                        t = s + gumbel(seed, ((b * Hq + h) * Lq + i) * Lk + j)
                    cand.append((t, s, j))
                cand.sort(key=lambda c: (-c[0], c[2]))
                kept = cand[:k]
                if not kept:
                    continue
                if mode == "topk":
                    top = kept[0][0]
                    w = [math.exp(t - top) for t, _, _ in kept]
                else:
                    w = [1.0] * len(kept)
                total = math.fsum(w)
                for n, (_, _, j) in enumerate(kept):
                    idx[b, h, i, n] = j
                    for c in range(Dv):
                        out[b, h, i, c] += w[n] / total * Vl[b][h // group][j][c]
    out = out.reshape(tuple(batch) + (Hq, Lq, Dv))
    idx = idx.reshape(tuple(batch) + (Hq, Lq, k))
    if flat:
        out, idx = out[0], idx[0]
    return (out, idx) if return_indices else out
