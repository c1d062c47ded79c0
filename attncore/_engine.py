"""The shared path from validated arrays to the fused kernel, used by every
attention function: prepare() checks and normalises query/key/value, run()
validates the options, allocates the outputs and calls attncore._core.sdpa.

Every array the C kernels read or write passes through
attncore._layout.for_kernel (native byte order, aligned, item-size strides).
Results come back in the caller's array type (NumPy or torch) and dtype.
"""
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
    rows_per_unit, units, chunks (> 1: split-K), chunk_len, key_block,
    threads, native_pairs (bfloat16 on the avx512bf16 and amxbf16 levels:
    the panel path multiplies bfloat16 pairs natively), amx_tiles (those
    products on AMX tiles: amxbf16), widened_chunks (16-bit or
    int8 K/V on the panel path, widened once per key chunk and thread
    instead of once per panel), value_tiles (the panel path keeps a key
    chunk's V in column tiles per thread, read by P V as one contiguous
    stream), int8_integer (int8 K/V on the rows path of a level that
    multiplies them in integers, avx2 and the VNNI levels: P V always, Q K
    while D <= 2048; docs/numerics.md (10)) and group_panels (the panel path runs this
    many panels of a kv head block by block in one work item, so that K
    and V too large for L2 are read once per group), half_panels (a
    head's last panel holds at most half a panel's rows and runs the
    half-panel kernels, same bits for half the work), mask ("bool",
    "float" or None: the mask the kernel reads) and key_lengths (rows
    limited by key lengths: valid_lens, or a bool mask whose rows are all
    prefixes, which runs as lengths). Internal:
    tests use it to assert that they reach the path they name.

    Example
    -------
    >>> import numpy as np, attncore
    >>> from attncore._engine import plan_info
    >>> q = np.ones((1, 8, 1, 64), np.float32); kv = np.ones((1, 2, 4096, 64), np.float32)
    >>> plan = plan_info(attncore.scaled_dot_product_attention, q, kv, kv, enable_gqa=True)
    >>> plan["chunks"] > 1          # 4096 keys split across the threads
    True
    >>> # a decode step takes the rows path, except on the portable level,
    >>> # whose panels are narrow enough to hold the 4 stacked query heads
    >>> plan["path"] == ("panel" if attncore._config.active_isa_name() == "portable" else "rows")
    True
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
        if Hkv and Hq % Hkv:   # (0 < Hq < Hkv too; no query heads at all is a multiple)
            hint = (f"; to use the one query head with each of them, broadcast it to {Hkv} heads "
                    f"(the heads dim is not broadcast here; e.g. np.broadcast_to)" if Hq == 1 else "")
            raise ValueError(f"{op}: query has {Hq} heads but key/value have {Hkv}: grouped-query "
                             f"attention (enable_gqa=True) needs Hq a multiple of Hkv{hint}; "
                             f"query {query_shape}, key {key_shape}")
        if not enable_gqa:
            raise ValueError(f"{op}: query has {Hq} heads but key/value have {Hkv}; pass "
                             f"enable_gqa=True for grouped-query attention (query {query_shape}, "
                             f"key {key_shape})")
        if Hkv == 0:
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
        return_weights=False, return_lse=False, kv=None, window=None, alibi_slopes=None,
        softcap=None, sinks=None, cu_seqlens_q=None, cu_seqlens_k=None, sigmoid_bias=None,
        hard=None, lse_shift=None):
    """Attention of the scoring queries `q` (..., Hq, Lq, D) against the scoring
    keys `k` (..., Hkv, Lk, D) -- p.q/p.k for dot products, projections for the
    other families -- with p.v as values. kv: (kernel entry, k scales, v
    scales) when k and p.v are a KV cache's compact storage (KVCache.attend).
    Returns out[, weights][, lse] (or, inside plan_info, the kernel's plan as
    a dict without running it). window, alibi_slopes, softcap, sinks and
    cu_seqlens_q/k: see scaled_dot_product_attention. lse_shift: a per-row
    score term the softmax cancels and the kernel was not given, shape
    (...batch, Hq, Lq) broadcasting to the rows; scale x lse_shift is added
    to the returned lse."""
    variants = _variants(op, p, scale, is_causal, window, alibi_slopes, softcap, sinks, cu_seqlens_q,
                         cu_seqlens_k, attn_mask, valid_lens, return_weights)
    if sigmoid_bias is not None:   # sigmoid attention: w = sigmoid(score + b), not normalised
        variants["sigmoid"] = float(sigmoid_bias)
    if hard is not None:           # hard attention: (k, sample, softmax, seed, indices or None)
        variants["hard"] = hard
    if variants.get("varlen") is not None:
        if lse_shift is not None:   # (no caller packs sequences with a row shift)
            raise NotImplementedError(f"{op}: lse_shift with cu_seqlens")
        return _run_varlen(op, p, q, k, variants, scale=scale, is_causal=is_causal,
                           dropout_p=dropout_p, seed=seed, num_threads=num_threads, out=out,
                           return_lse=return_lse)
    batch, Hq, Hkv, Lq, Lk, Dv = p.batch, p.Hq, p.Hkv, p.Lq, p.Lk, p.Dv
    compute, result = p.compute, p.result
    D = q.shape[-1]
    out_shape = batch + (Hq, Lq, Dv)
    scores_shape = batch + (Hq, Lq, Lk)
    return_weights = V.flag(op, "return_weights", return_weights)
    return_lse = V.flag(op, "return_lse", return_lse)

    causal, offset = V.causal_offset(op, is_causal, Lq, Lk)
    if not causal and variants.get("bottom_right"):
        offset = Lk - Lq   # windows and ALiBi count positions from the bottom right
    drop_threshold, drop_seed, drop_scale = V.dropout(op, dropout_p, seed)
    threads = V.num_threads(op, num_threads)
    mask_kind, mask = V.mask(op, attn_mask, scores_shape, compute, result)
    vl = V.valid_lens(op, valid_lens, batch, Hq, Lq, Lk, p.query_ndim or q.ndim)
    if mask_kind == _core.MASK_BOOL and vl is None:
        # a bool mask of key lengths runs as lengths (_core.bool_mask_lengths)
        lens = _core.bool_mask_lengths(mask, scores_shape)
        if lens is not None:
            mask_kind, mask, vl = _core.MASK_NONE, None, lens
    if out is not None:
        V.output(op, out, out_shape[1:] if p.flat else out_shape, result)

    io = p.io
    q, k, v = (_layout.for_kernel(a) for a in (q, k, p.v))
    if kv is None:   # (kv: a compact KV cache's storage, dense by construction)
        reuse = (Hq // Hkv) * Lq if Hkv else 0
        same = v is k
        k = _layout.dense_if_spread(k, reuse)
        v = k if same else _layout.dense_if_spread(v, reuse)
    if mask is not None:
        mask = _layout.for_kernel(mask, unit_last=False)
    # everything the kernel reads while it writes: an `out` sharing memory
    # with any of it (q, a per-head ALiBi slope or sink, a valid length...)
    # gets a separate result, copied into it at the end
    reads = [q, k, v, mask, vl, w_score]
    for item in list(variants.values()) + list(kv or ()):
        reads.extend(item if isinstance(item, tuple) else (item,))
    res = _direct_output(out, p.flat, io, reads)
    if res is None:
        res = _layout.empty(out_shape, io)
    weights = _layout.empty(scores_shape, compute) if return_weights else None
    lse = _layout.empty(batch + (Hq, Lq), compute) if return_lse else None
    if w_score is not None:
        w_score = _layout.contiguous(w_score, compute)

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
        extra = dict(k_scale=k_scale, v_scale=v_scale, variants=variants or None)
        if _plan_only.get():
            plan = _core.sdpa(*call, plan_only=True, **extra)
            plan["mask"] = {_core.MASK_BOOL: "bool", _core.MASK_ADD: "float"}.get(mask_kind)
            plan["key_lengths"] = vl is not None
            return plan
        _core.sdpa(*call, **extra)
    elif _plan_only.get():
        return None

    if lse is not None and lse_shift is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            # a row with no visible key keeps lse -inf, even where the shift overflowed
            # to inf (-inf + inf would be NaN)
            np.add(lse, scale * lse_shift, out=lse, where=~np.isneginf(lse))
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


def _log2_units_limit(dtype):
    """The largest magnitude whose x log2(e) (the kernels' log2 units) is a
    finite number of `dtype` (float32: 2.36e38)."""
    return float(np.finfo(dtype).max) / math.log2(math.e)


def _variants(op, p, scale, is_causal, window, alibi_slopes, softcap, sinks, cu_q, cu_k, attn_mask,
              valid_lens, return_weights):
    """The score variants for the C descriptor (empty dict: none)."""
    v = {}
    if window is not None:
        v["window"] = V.window(op, window)
    if softcap is not None:
        cap = V.real_number(op, "softcap", softcap)
        if not cap > 0:
            raise ValueError(f"{op}: softcap must be > 0 (or None); got {cap}")
        # the kernel works in log2 units: cap x log2(e) must be a finite
        # number of the compute dtype (and an infinite cap is no cap: None)
        top = _log2_units_limit(p.compute)
        if not cap < top:
            raise ValueError(f"{op}: softcap must be below {top:.3g} for {np.dtype(p.compute).name} "
                             f"(cap x log2(e) must be finite; pass softcap=None for no cap); got {cap}")
        # and the tanh argument's factor |scale| / cap too: below the normal
        # range it keeps too few bits (capped scores off by percents)
        ratio, tiny = abs(scale) / cap, float(np.finfo(p.compute).tiny)
        if 0 < ratio < 4 * tiny:
            raise ValueError(f"{op}: |scale| / softcap = {ratio:.3g} is below {4 * tiny:.3g}, too small "
                             f"for {np.dtype(p.compute).name}; use a smaller softcap, or softcap=None "
                             f"for no cap (|scale| {abs(scale):.3g}, softcap {cap:.3g})")
        v["softcap"] = cap
    if alibi_slopes is not None:
        v["alibi"] = V.per_head(op, "alibi_slopes", alibi_slopes, p.batch, p.Hq, p.compute)
    if sinks is not None:
        given = V.per_head(op, "sinks", sinks, (), p.Hq, np.float64)   # (checked before the cast)
        # a NaN sink is refused: it made its head's rows NaN, except rows with
        # no visible key, which came out zeros or NaN depending on the path
        # (valid lengths, or masks read as lengths, gave zeros)
        nan = np.isnan(given.reshape(-1))
        if nan.any():
            heads = np.flatnonzero(nan).tolist()
            raise ValueError(f"{op}: sinks hold NaN (heads {heads}); a sink must be a number, "
                             f"or -inf for no sink")
        # the kernel takes the sink in log2 units: sink x log2(e) must not
        # overflow (a sink of +inf gave NaN rows; -inf is no sink)
        top = _log2_units_limit(p.compute)
        if np.any(given >= top):
            raise ValueError(f"{op}: sinks must be below {top:.3g} for {np.dtype(p.compute).name} "
                             f"(sink x log2(e) must be finite; -inf is no sink); got "
                             f"{float(np.max(given)):.3g}")
        v["sinks"] = _layout.contiguous(given, p.compute)
    if (cu_q is None) != (cu_k is None):
        raise ValueError(f"{op}: cu_seqlens_q and cu_seqlens_k go together")
    if cu_q is not None:
        if p.batch != () or p.query_ndim not in (2, 3):
            raise ValueError(f"{op}: with cu_seqlens the inputs are packed (H, total, D) (or "
                             f"(total, D)); got query {p.query_shape}")
        for name, given in (("attn_mask", attn_mask), ("valid_lens", valid_lens)):
            if given is not None:
                raise ValueError(f"{op}: {name} is not supported with cu_seqlens (each sequence's "
                                 f"keys are its own; use is_causal / window)")
        if return_weights:
            raise ValueError(f"{op}: return_weights is not supported with cu_seqlens")
        cq = V.cu_seqlens(op, "cu_seqlens_q", cu_q, p.Lq)
        ck = V.cu_seqlens(op, "cu_seqlens_k", cu_k, p.Lk)
        if cq.size != ck.size:
            raise ValueError(f"{op}: cu_seqlens_q has {cq.size - 1} sequences, cu_seqlens_k "
                             f"{ck.size - 1}")
        v["varlen"] = (cq, ck)
    # positions: bottom-right aligned unless is_causal asks for top-left
    positional = "window" in v or "alibi" in v or "varlen" in v
    if positional:
        top_left = is_causal is True or is_causal is np.True_ or is_causal == "top_left"
        v["bottom_right"] = not top_left
    return v


def _run_varlen(op, p, q, k, variants, *, scale, is_causal, dropout_p, seed, num_threads, out,
                return_lse):
    """Packed sequences: one kernel call, one batch element per sequence
    (batch offsets at cu_seqlens, lengths their differences)."""
    cq, ck = variants["varlen"]
    nseq, Hq, Hkv, Dv = cq.size - 1, p.Hq, p.Hkv, p.Dv
    Lq, Lk = int(np.diff(cq).max(initial=0)), int(np.diff(ck).max(initial=0))
    causal = 0 if (is_causal is None or is_causal is False or is_causal is np.False_) else 1
    V.causal_offset(op, is_causal, Lq, Lk)   # validates the value
    drop_threshold, drop_seed, drop_scale = V.dropout(op, dropout_p, seed)
    threads = V.num_threads(op, num_threads)
    total_q = p.Lq
    out_shape = (Hq, total_q, Dv)
    if out is not None:
        V.output(op, out, out_shape[1:] if p.flat else out_shape, p.result)
    io = p.io
    q, k, v = (_layout.for_kernel(a) for a in (q, k, p.v))
    res = _layout.empty(out_shape, io)
    lse = _layout.empty((nseq, Hq, Lq), p.compute) if return_lse else None
    result = None
    if nseq and Hq and Lq:
        io_code, bits = _io_code(io)
        # each packed (H, total, D) array is read as nseq batch elements of
        # (H, Lq, D) (a leading size-1 dim broadcasts with stride 0); their
        # batch offsets are rewritten from cu_seqlens in C
        qb, kb, vb, ob = (bits(a)[None] for a in (q, k, v, res))
        call = (op, io_code, _config.active_isa(), threads, (nseq, Hq, Hkv, Lq, Lk, p.Dq, Dv), (nseq,),
                qb, kb, vb, ob, _core.MASK_NONE, None, causal, 0, None, scale, drop_threshold,
                drop_seed, drop_scale, None, lse, SCORE_DOT, None)
        if _plan_only.get():
            return _core.sdpa(*call, plan_only=True, variants=variants)
        _core.sdpa(*call, variants=variants)
    if _plan_only.get():
        return None
    if p.flat:
        res = res[0]
    if out is not None:
        np.copyto(out, res, casting="unsafe")
        res = out
    elif p.result != io:
        res = res.astype(p.result)
    if return_lse:
        packed = np.full((Hq, total_q), -np.inf, p.compute)
        for b in range(nseq):
            n = cq[b + 1] - cq[b]
            packed[:, cq[b]:cq[b + 1]] = lse[b, :, :n]
        result = (res, packed[0] if p.flat else packed)
    else:
        result = res
    if p.torch_dtype is not None and out is None:
        if isinstance(result, tuple):
            result = (_arrays.to_torch(result[0], p.torch_dtype), _arrays.to_torch(result[1], result[1].dtype.name))
        else:
            result = _arrays.to_torch(result, p.torch_dtype)
    return result


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
    if not _layout.is_kernel_ready(target) or _core.overlaps_itself(target):
        return None
    if any(isinstance(a, np.ndarray) and np.may_share_memory(target, a) for a in inputs):
        return None
    return target

