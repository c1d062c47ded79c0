"""attncore for PyTorch and Hugging Face transformers (extras ``torch`` and ``hf``).

Four integrations, each a line or two of glue for the user:

``scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False)``
    torch.nn.functional.scaled_dot_product_attention's signature and
    semantics on attncore's kernel, registered as the ``torch.library``
    custom op ``attncore::sdpa`` (with a fake implementation), so it runs
    eagerly and under ``torch.compile(fullgraph=True)``.
``MultiheadAttention`` and ``patch(model)``
    a ``torch.nn.MultiheadAttention`` subclass that shares the module's
    Parameters and runs attncore whenever no gradient is needed; ``patch``
    swaps every ``nn.MultiheadAttention`` of a model (also inside
    ``nn.Transformer*`` layers) in place. ``forward(..., kv_cache=KVCache(...))``
    decodes incrementally.
``register()``
    registers the attention implementation ``"attncore"`` (attention function
    and mask function) with Hugging Face transformers, for
    ``from_pretrained(..., attn_implementation="attncore")``.
``AttncoreCache(model.config, dtype="int8")``
    a transformers ``Cache`` for ``generate(past_key_values=...)`` that keeps
    each layer's keys/values in an attncore KVCache (float32, bfloat16,
    float16 or int8 storage), read in place by the "attncore" attention.
    Built on first use (importing transformers only then).

attncore computes forward passes only: a tensor that requires grad while grad
mode is on is a TypeError (use ``torch.no_grad()`` / ``torch.inference_mode()``),
except in ``MultiheadAttention``, which then runs torch's own forward.

Differences from torch, on purpose: a query row that can see no key gives
zeros (torch's math path gives NaN; its CPU flash path also gives zeros), and
dropout draws its pattern from attncore's counter-based RNG, seeded from
torch's default generator (``torch.manual_seed`` makes it reproducible, but
the pattern differs from torch's).

Example
-------
>>> import torch, attncore.torch as at
>>> q = k = v = torch.ones(1, 2, 3, 4)
>>> at.scaled_dot_product_attention(q, k, v, is_causal=True).shape
torch.Size([1, 2, 3, 4])
"""
import contextlib
import importlib.util
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

if not hasattr(torch.library, "custom_op"):   # (the op below; also autocast's device argument)
    raise ImportError(f"attncore.torch needs torch >= 2.4 (torch.library.custom_op); this is "
                      f"torch {torch.__version__}: pip install 'torch>=2.4'")

from . import _arrays, _config, _core, _engine
from . import functional as _functional

__all__ = ["scaled_dot_product_attention", "MultiheadAttention", "patch", "register",
           "hf_attention", "ATTN_IMPLEMENTATION"]
# AttncoreCache is built from transformers' classes on first use (module
# __getattr__ at the end); star imports list it only where transformers is
# installed (find_spec imports nothing)
if importlib.util.find_spec("transformers") is not None:
    __all__ += ["AttncoreCache"]

_SDPA = "attncore.torch.scaled_dot_product_attention"
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_WRITABLE_OUT = (torch.float32, torch.float64)   # dtypes the kernel writes in place (out=)
# a Module's hook registries that from_torch shares (those this torch has);
# not the backward ones (torch keeps a separate per-module flag for full
# backward hooks, so a shared dict would not make them fire)
_MODULE_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                      "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
                      "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


# -- shared helpers ---------------------------------------------------------

def _check_no_grad(op, hint, vmap_ok=False, **tensors):
    """TypeError if an argument is not a tensor, if it is a torch.func
    transform's tensor (vmap_ok: torch.vmap's are let through, for the op's
    vmap rule), or if a tensor requires grad while grad mode is on."""
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor; got {type(t).__name__} "
                            f"(torch.from_numpy converts an array)")
    if not _capturing_graph() and torch._C._are_functorch_transforms_active():   # (dynamo cannot trace it)
        for name, t in tensors.items():
            # (torch.vmap's tensors go to the custom op, whose vmap rule maps them)
            if t is not None and not (vmap_ok and torch._C._functorch.is_batchedtensor(t)):
                _arrays.refuse_transform_tensor(t, name, op)
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise TypeError(
                f"{op}: {name} requires grad, but attncore computes the forward pass only (no "
                f"autograd). Call it under torch.no_grad() or torch.inference_mode(), or pass "
                f"{name}.detach(){hint}")


def _draw_seed():
    """A dropout seed from torch's default generator (torch.manual_seed
    makes attncore's dropout reproducible). A 0-d int64 tensor, so that
    it is traced, not baked in, under torch.compile."""
    return torch.randint(0, 1 << 62, (), dtype=torch.int64)


def _all_meta(query, *tensors):
    """Every tensor given is on the meta device (shape inference, e.g. a model
    built under torch.device("meta")): the op's fake kernel gives the result,
    after the checks of a real call (_check_meta)."""
    return query.is_meta and all(t.is_meta for t in tensors if isinstance(t, torch.Tensor))


def _vmapped(*tensors):
    """A tensor given is torch.vmap's (the custom op's vmap rule runs it)."""
    return torch._C._are_functorch_transforms_active() and any(
        torch._C._functorch.is_batchedtensor(t) for t in tensors if isinstance(t, torch.Tensor))


def _check_meta(query, key, value, attn_mask, is_causal, scale, enable_gqa, extras):
    """The checks of a real call, on meta tensors: shapes and dtypes, through
    plan_info on NumPy stand-ins (one zero broadcast to each tensor's shape).
    Without them a meta call returned a shape for arguments that fail."""
    bf16 = _arrays._bfloat16_dtype() or np.dtype(np.float32)   # (without ml_dtypes: its checks)
    dtypes = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
              torch.bfloat16: bf16, torch.bool: np.bool_}

    def stand_in(name, t):
        if not isinstance(t, Tensor):
            return t
        if t.dtype not in dtypes:
            raise TypeError(f"{_SDPA}: {name} has dtype {t.dtype}, which attncore does not read")
        dtype = dtypes[t.dtype]
        if name == "attn_mask" and t.dtype == torch.float32 and query.dtype == torch.float64:
            dtype = np.float64   # (as _sdpa_eager widens it)
        return np.broadcast_to(np.zeros((), dtype), tuple(t.shape))

    extras = {k: stand_in(k, v) for k, v in (extras or {}).items()}
    _engine.plan_info(_functional.scaled_dot_product_attention, stand_in("query", query),
                      stand_in("key", key), stand_in("value", value),
                      attn_mask=stand_in("attn_mask", attn_mask), is_causal=bool(is_causal),
                      scale=scale, enable_gqa=bool(enable_gqa), **extras)


def _capturing_graph():
    """torch.compile or torch.jit.trace is recording a graph: calls go
    through the custom op (attncore::sdpa), which the graph records. (The
    eager route returned a tensor made by torch.from_numpy, which a trace
    records as a constant: a traced module gave its tracing inputs' result
    for every later input.)"""
    return torch.compiler.is_compiling() or torch._C._is_tracing()


# -- the kernel call (eager) ------------------------------------------------

def _sdpa_eager(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, seed, *,
                out=None, return_weights=False, extras=None):
    """attncore's SDPA on tensors with torch's semantics. `out`: an optional
    (..., Hq, Lq, Dv) tensor view to write into (used for float32/float64;
    the returned tensor is then `out`). `extras`: kernel keywords the HF
    integration passes through (softcap, sinks) once the kernel has them.
    Returns out, or (out, weights) with return_weights."""
    dropout_p = float(dropout_p)
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"{_SDPA}: dropout_p must be in [0, 1]; got {dropout_p}")
    if attn_mask is not None and attn_mask.dtype == torch.float32 and query.dtype == torch.float64:
        # torch accepts a float32 mask with any query dtype: for float64 queries
        # attncore wants float64 (exact); float16 / bfloat16 queries take it as
        # it is, in their compute dtype (rounding it to theirs would move a
        # bias of 20 by up to 0.06 in bfloat16)
        attn_mask = attn_mask.to(torch.float64)
    if dropout_p == 1.0:   # torch: every weight dropped -> zeros
        # the arguments are checked as on any other call (plan_info validates
        # without running the kernel): they used to be skipped here
        _engine.plan_info(_functional.scaled_dot_product_attention, query, key, value, attn_mask=attn_mask,
                          is_causal=bool(is_causal), scale=scale, enable_gqa=bool(enable_gqa), **(extras or {}))
        shape = _out_shape(query, key, value)
        res = out.zero_() if out is not None else query.new_zeros(shape)
        if return_weights:
            return res, query.new_zeros(shape[:-1] + (key.shape[-2],))
        return res
    if out is not None and dropout_p == 0.0 and not return_weights and not extras:
        # the common call straight into `out` (HF's heads-last buffer), any dtype
        res = _functional._fast(query, key, value, attn_mask, bool(is_causal), scale,
                                bool(enable_gqa), None, out=out)
        if res is not None:
            return res
    if isinstance(seed, Tensor):
        seed = int(seed)
    kwargs = dict(attn_mask=attn_mask, dropout_p=dropout_p, is_causal=bool(is_causal), scale=scale,
                  enable_gqa=bool(enable_gqa), seed=seed, return_weights=return_weights)
    if extras:
        kwargs.update(extras)
    if out is not None and out.dtype in _WRITABLE_OUT and query.dtype == out.dtype:
        res = _functional.scaled_dot_product_attention(query, key, value, out=out.numpy(), **kwargs)
        if return_weights:   # with out=, the kernel hands back NumPy arrays
            return out, torch.from_numpy(res[1])
        return out
    res = _functional.scaled_dot_product_attention(query, key, value, **kwargs)
    if out is not None:
        out.copy_(res[0] if return_weights else res)
        return (out, res[1]) if return_weights else out
    return res


def _out_shape(query, key, value):
    """torch's SDPA output shape: batch dims broadcast, (..., Hq, Lq, Dv)."""
    if query.dim() < 3:
        return tuple(query.shape[:-1]) + (value.shape[-1],)
    qb, kb, vb = tuple(query.shape[:-3]), tuple(key.shape[:-3]), tuple(value.shape[:-3])
    # (torch.broadcast_shapes costs tens of microseconds: only when they differ)
    batch = qb if qb == kb == vb else torch.broadcast_shapes(qb, kb, vb)
    return tuple(batch) + tuple(query.shape[-3:-1]) + (value.shape[-1],)


# -- the custom op (what torch.compile sees) --------------------------------

@torch.library.custom_op("attncore::sdpa", mutates_args=())
def _sdpa_op(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor],
             dropout_p: float, is_causal: bool, scale: Optional[float], enable_gqa: bool,
             seed: Optional[Tensor], softcap: Optional[float], sinks: Optional[Tensor]) -> Tensor:
    extras: dict = {}
    if softcap is not None:
        extras["softcap"] = softcap
    if sinks is not None:
        extras["sinks"] = sinks
    res = _sdpa_eager(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, seed,
                      extras=extras)
    # a custom op's output must be a fresh, contiguous tensor (what the fake promises)
    return res if res.is_contiguous() else res.contiguous()


@_sdpa_op.register_fake
def _sdpa_fake(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, seed,
               softcap, sinks):
    return query.new_empty(_out_shape(query, key, value))


def _logical_rank(t, bdim):
    return t.dim() - (bdim is not None)


@_sdpa_op.register_vmap
def _sdpa_vmap(info, in_dims, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
               seed, softcap, sinks):
    """torch.vmap of attncore::sdpa: the mapped dim becomes a leading batch
    dim (attncore broadcasts batch dims), one kernel call for the whole map.
    Every tensor is brought to one rank T >= 4: a mapped one as (V, 1.., its
    dims), an unmapped one as (1.., its dims), so that the heads stay the
    third dim from the end and a 2-D (L, D) input gets a head dim of 1.
    With dropout, each mapped slice is its own call (randomness="same": one
    seed, the same masks; "different": a seed per slice)."""
    # (a mapped tensor does not show requires_grad: check the tensors it maps)
    _check_no_grad(_SDPA, "", vmap_ok=True, query=query, key=key, value=value, attn_mask=attn_mask)
    if in_dims[10] is not None:
        raise NotImplementedError("attncore.torch: torch.vmap over the sinks is not supported "
                                  "(map the queries, keys, values or mask)")
    size = info.batch_size
    tensors = (query, key, value, attn_mask)
    dims = in_dims[:4]
    ranks = [_logical_rank(t, d) for t, d in zip(tensors, dims) if t is not None]
    T = max(4, max(ranks) + 1)

    def lift(t, d):
        if t is None:
            return None
        if d is None:
            return t.reshape((1,) * (T - t.dim()) + tuple(t.shape))
        t = t.movedim(d, 0)
        return t.reshape((t.shape[0],) + (1,) * (T - t.dim()) + tuple(t.shape[1:]))

    q, k, v, m = (lift(t, d) for t, d in zip(tensors, dims))
    if dims[0] is None:   # the output takes its batch dims from q, k and v (not the mask)
        q = q.expand((size,) + tuple(q.shape[1:]))
    # the output's own rank is that of q, k and v (their batch dims broadcast):
    # the dims lift added in front of it are ones
    out_rank = max(_logical_rank(t, d) for t, d in zip(tensors[:3], dims[:3]))
    if dropout_p > 0 and seed is not None:
        if info.randomness not in ("same", "different"):
            raise RuntimeError("attncore.torch: dropout under torch.vmap needs randomness='same' "
                               "or 'different' (as torch's random functions do)")
        seeds = seed.movedim(in_dims[8], 0) if in_dims[8] is not None else [seed] * size
        parts = [_sdpa_op(q[i:i + 1], k if k.shape[0] == 1 else k[i:i + 1], v if v.shape[0] == 1 else v[i:i + 1],
                          m if m is None or m.shape[0] == 1 else m[i:i + 1], dropout_p, is_causal, scale,
                          enable_gqa, seeds[i], softcap, sinks) for i in range(size)]
        out = torch.cat(parts)
    else:
        out = _sdpa_op(q, k, v, m, dropout_p, is_causal, scale, enable_gqa, seed, softcap, sinks)
    return out.reshape((size,) + tuple(out.shape[out.dim() - out_rank:])), 0


def _autocast(*tensors):
    """What torch.autocast("cpu") does to SDPA's arguments: floating tensors,
    float64 and bool ones excepted, cast to the autocast dtype (the mask too)."""
    dtype = torch.get_autocast_dtype("cpu")
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and
                 t.dtype not in (dtype, torch.float64) else t for t in tensors)


def _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, *,
               heads_last=False, extras=None, try_plain=True):
    """Eager: the kernel directly (no custom-op dispatch). Compiling: the
    custom op. heads_last: return (..., Lq, Hq, Dv) contiguous (what HF
    models want), written in place by the kernel when eager. try_plain=False:
    the caller has tried the plain lane on these arguments already."""
    if try_plain and not extras and _plain_call(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa):
        res = _plain_kernel(query, key, value, attn_mask, is_causal, scale, enable_gqa, heads_last)
        if res is not None:
            return res
    if torch.is_autocast_enabled("cpu"):
        query, key, value, attn_mask = _autocast(query, key, value, attn_mask)
    seed = _draw_seed() if dropout_p > 0 else None
    meta = _all_meta(query, key, value, attn_mask)
    if meta:
        _check_meta(query, key, value, attn_mask, is_causal, scale, enable_gqa, extras)
    if _capturing_graph() or meta or _vmapped(query, key, value, attn_mask):
        extras = extras or {}
        res = torch.ops.attncore.sdpa(query, key, value, attn_mask, float(dropout_p),
                                      bool(is_causal), scale, bool(enable_gqa), seed,
                                      extras.get("softcap"), extras.get("sinks"))
        return res.transpose(-2, -3).contiguous() if heads_last else res
    if heads_last and query.shape[-2] > 1 and query.dim() >= 3:
        shape = _out_shape(query, key, value)
        buf = query.new_empty(shape[:-3] + (shape[-2], shape[-3], shape[-1]))
        _sdpa_eager(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, seed,
                    out=buf.transpose(-2, -3), extras=extras)
        return buf
    res = _sdpa_eager(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, seed,
                      extras=extras)
    # one query row: (..., Hq, 1, Dv) and (..., 1, Hq, Dv) are the same memory
    return res.transpose(-2, -3).contiguous() if heads_last else res


# -- 1. scaled_dot_product_attention ----------------------------------------

def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention on attncore's kernel.

    Same signature and semantics as torch's function; tensors in, a tensor
    of the query's dtype out. Registered as the custom op ``attncore::sdpa``
    (with a fake implementation), so it also works under
    ``torch.compile(fullgraph=True)``, ``torch.export`` and
    ``torch.jit.trace`` (which record the op), and on meta tensors (a meta
    result of the output's shape); eager calls skip the op dispatch.

    Parameters
    ----------
    query : Tensor (..., Hq, Lq, D)
    key : Tensor (..., Hkv, Lk, D)
    value : Tensor (..., Hkv, Lk, Dv)
        CPU tensors of one dtype: float32, float64, bfloat16 or float16
        (half types are computed in float32). Leading batch dims broadcast;
        any strides (transposed views are read in place).
    attn_mask : Tensor broadcastable to (..., Hq, Lq, Lk), optional
        bool: True = may attend; or float, added to the scaled scores
        (the query's dtype, or float32 as torch allows; with float16 /
        bfloat16 queries a float32 mask is added in float32, unrounded).
    dropout_p : float in [0, 1]
        Dropout on the attention weights, applied whenever > 0 (as torch
        does; pass ``dropout_p=p if training else 0.0``). The seed comes from
        torch's default generator, so ``torch.manual_seed`` reproduces it.
    is_causal : bool
        Query i sees keys j <= i (top-left aligned, as torch). Combines
        with attn_mask. Anything but a bool (or a NumPy bool) raises
        TypeError, as in torch (bottom-right alignment is
        attncore.scaled_dot_product_attention's ``is_causal="bottom_right"``,
        on arrays).
    scale : float, optional
        Default 1/sqrt(D).
    enable_gqa : bool
        Grouped-query attention: Hq a multiple of Hkv, query head h uses kv
        head h // (Hq // Hkv); K/V are never repeated.

    Returns
    -------
    Tensor (..., Hq, Lq, Dv), contiguous. A query row that can see no key
    gives zeros (torch's math path gives NaN). As with torch's function,
    under ``torch.autocast("cpu")`` floating arguments (float64 excepted,
    the mask included) are cast to the autocast dtype first, and Tensor
    subclasses come back as the subclass (their ``__torch_function__``
    runs the call).

    Raises
    ------
    TypeError
        If a tensor requires grad while grad mode is on (attncore is
        forward-only: use torch.no_grad() or torch.inference_mode(); also
        under torch.func.grad), and on unsupported dtypes/devices.
        ValueError on inconsistent shapes. (torch.vmap runs, through the
        op's vmap rule: the mapped dim becomes a batch dim of one call;
        dropout needs vmap's randomness "same" or "different".)

    Example
    -------
    >>> import torch, attncore.torch as at
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> q, k, v = torch.randn(2, 8, 16, 64), torch.randn(2, 2, 16, 64), torch.randn(2, 2, 16, 64)
    >>> out = at.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    >>> out.shape, torch.allclose(out, ref, atol=1e-5)
    (torch.Size([2, 8, 16, 64]), True)
    >>> compiled = torch.compile(at.scaled_dot_product_attention, fullgraph=True)  # the custom op
    """
    if _plain_call(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa):
        # the common eager call straight to the kernel (a decode step's few
        # microseconds of Python count); anything it declines takes the route below
        res = _plain_kernel(query, key, value, attn_mask, is_causal, scale, enable_gqa, False)
        if res is not None:
            return res
    relevant = tuple(t for t in (query, key, value, attn_mask) if isinstance(t, Tensor))
    if not _capturing_graph() and torch.overrides.has_torch_function(relevant):
        # a Tensor subclass (or a __torch_function__ mode): it runs this function on
        # the plain tensors and wraps the result, as for torch's own functions
        return torch.overrides.handle_torch_function(
            scaled_dot_product_attention, relevant, query, key, value, attn_mask=attn_mask,
            dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    _check_no_grad(_SDPA, "", vmap_ok=True, query=query, key=key, value=value, attn_mask=attn_mask)
    for name, t in (("query", query), ("key", key), ("value", value), ("attn_mask", attn_mask)):
        if t is not None and t.is_nested:   # (before anything reads its .shape, which raises)
            raise TypeError(f"{_SDPA}: {name} is a nested tensor; attncore reads dense tensors "
                            f"(pad it with {name}.to_padded_tensor(0.0) and mask the padding)")
    if not isinstance(is_causal, (bool, np.bool_)):   # (torch raises too; bool() would read any string as True)
        raise TypeError(f"{_SDPA}: is_causal must be a bool, as in torch (True: top-left aligned); "
                        f"got {is_causal!r}. For bottom-right alignment (KV-cache decoding) call "
                        f"attncore.scaled_dot_product_attention(..., is_causal='bottom_right') on "
                        f"arrays, or pass the mask")
    if not isinstance(enable_gqa, (bool, np.bool_)):   # (torch raises too)
        raise TypeError(f"{_SDPA}: enable_gqa must be a bool, as in torch; got {enable_gqa!r}")
    # (the plain lane was tried above; broadcast heads are new arguments for it)
    changed = False
    if not enable_gqa:
        spread = _broadcast_heads(query, key, value)
        changed = spread[3] or any(a is not b for a, b in zip(spread, (query, key, value)))
        query, key, value, enable_gqa = spread
    return _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                      try_plain=changed)


_TORCH_DTYPES = _arrays.torch_dtypes()


def _plain_call(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa):
    """Whether a call is plain enough for sdpa_fast_torch as it is: exact
    Tensors, no dropout, bool flags, eager, no autocast, no __torch_function__
    mode or torch.func transform, and the heads broadcast by GQA if at all
    (the kernel entry declines the rest: masks it does not read, grads,
    devices, dtypes). Not while planning (plan_info wants the general route)."""
    return (type(query) is Tensor and type(key) is Tensor and type(value) is Tensor
            and (attn_mask is None or type(attn_mask) is Tensor)
            and type(dropout_p) in (float, int) and dropout_p == 0
            and type(is_causal) is bool and type(enable_gqa) is bool
            and not _capturing_graph() and not torch.is_autocast_enabled("cpu")
            and not torch._C._is_torch_function_mode_enabled()
            and not torch._C._are_functorch_transforms_active() and not _engine.planning()
            # (the kernel entry takes (B, H, L, D) only; a nested tensor has no
            # .shape; after the modes check: a mode sees attribute reads too)
            and not (query.is_nested or key.is_nested or value.is_nested)
            and query.dim() == 4 and key.dim() == 4 and value.dim() == 4
            and (enable_gqa or query.shape[1] == key.shape[1] == value.shape[1]))


def _plain_kernel(query, key, value, attn_mask, is_causal, scale, enable_gqa, heads_last):
    """sdpa_fast_torch on a call that _plain_call passed: the result (heads
    last as _attention's), or None where the kernel entry declines it."""
    out = buf = None
    if heads_last and query.shape[-2] > 1 and query.dim() >= 3:
        shape = _out_shape(query, key, value)
        buf = query.new_empty(shape[:-3] + (shape[-2], shape[-3], shape[-1]))
        out = buf.transpose(-2, -3)
    try:
        res = _core.sdpa_fast_torch(_SDPA, query, key, value, is_causal, scale, enable_gqa, None,
                                    _config.active_isa(), _TORCH_DTYPES, attn_mask, out)
    except RuntimeError:
        # a nested mask has no .shape ("Internal error: NestedTensorImpl doesn't
        # support sizes"): the general route refuses it by name (checked here, not
        # before the call: the lane is the decode step's few microseconds)
        if attn_mask is not None and attn_mask.is_nested:
            return None
        raise
    if res is None or buf is not None:
        return None if res is None else buf
    res = torch.from_numpy(res)
    if res.dtype == torch.int16:
        res = res.view(torch.bfloat16)
    # one query row: (..., Hq, 1, Dv) and (..., 1, Hq, Dv) are the same memory
    return res.transpose(-2, -3).contiguous() if heads_last else res


def _broadcast_heads(query, key, value):
    """torch's SDPA broadcasts the heads dim like a batch dim (a size-1 head
    count against H): the same here, with views. K and V with one head for
    every query head is grouped-query attention with one kv head (K/V read
    once, not repeated). Returns (query, key, value, enable_gqa); other
    head counts are left to the kernel's checks."""
    if min(query.dim(), key.dim(), value.dim()) < 3:
        return query, key, value, False
    hq, hk, hv = query.shape[-3], key.shape[-3], value.shape[-3]
    h = max(hq, hk, hv)
    if hq == hk == hv or any(n not in (1, h) for n in (hq, hk, hv)):
        return query, key, value, False
    if hk == hv == 1:
        return query, key, value, True

    def spread(t):
        return t.expand(t.shape[:-3] + (h,) + t.shape[-2:]) if t.shape[-3] == 1 else t
    return spread(query), spread(key), spread(value), False


# -- 2. MultiheadAttention and patch() ---------------------------------------

def _fast_path_guard(module, args):
    """A no-op forward pre-hook; see MultiheadAttention.__init__."""
    return None


def _autocast_enabled():
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:   # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class MultiheadAttention(nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` whose attention runs on attncore.

    A drop-in subclass: same constructor, Parameters, ``state_dict`` keys
    and ``forward(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False)`` with torch's
    conventions (``batch_first``; ``key_padding_mask`` (B, Lk) True = padding;
    ``attn_mask`` (Lq, Lk) or (B*num_heads, Lq, Lk), **bool True = NOT
    allowed** or float added; ``is_causal`` is a hint that requires
    ``attn_mask``, as in torch). ``MultiheadAttention.from_torch(module)``
    wraps an existing module and shares its Parameters (no copy: an
    optimizer step on them is seen at the next call).

    The projections run on torch (``F.linear`` on the module's Parameters,
    read at every call); the attention runs on attncore, writing straight
    into the buffer the output projection reads. attncore runs whenever no
    gradient is needed (under ``torch.no_grad()`` / ``torch.inference_mode()``,
    or when nothing requires grad), in eval mode and in training mode
    (dropout with a seed from torch's generator). Otherwise -- autograd
    needed, ``add_bias_kv``/``add_zero_attn``, nested tensors, autocast,
    non-CPU tensors, unsupported dtypes, ``need_weights`` under
    ``torch.compile`` -- it runs torch's own forward. The reason for the
    last fallback is in ``module.last_fallback``.

    Shapes: query (B, Lq, E) with ``batch_first=True``, (Lq, B, E)
    otherwise, or (Lq, E) unbatched; key (.., Lk, kdim), value (.., Lk,
    vdim). Returns (output like query, weights or None): weights
    (B, Lq, Lk) averaged over heads, or (B, num_heads, Lq, Lk).

    Differences from torch: a query row with every key masked gives zeros
    (torch's weights path gives NaN); dropout patterns differ.

    Incremental decoding: ``forward(..., kv_cache=cache)`` with an
    :class:`attncore.KVCache` (``num_heads`` = this module's heads, ``head_dim``
    = embed_dim // num_heads, any storage dtype: float32, "bfloat16",
    "float16", "int8"; float32/float64 modules) appends this call's projected
    keys/values (B, H, Lk_new, Dh) to the cache and attends over every cached
    position, reading the storage directly, as
    ``attncore.MultiHeadAttention(kv_cache=...)`` does: the queries are the
    newest positions (bottom-right causal alignment, so no ``is_causal`` or
    causal ``attn_mask`` is needed); ``key_padding_mask`` (B, len(cache)) and
    ``attn_mask`` (Lq, len(cache)) cover all cached positions. It needs
    attncore's path: where torch's forward would run instead
    (``last_fallback``), a kv_cache is a TypeError.

    Example
    -------
    >>> import torch, attncore.torch as at
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> mha = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    >>> fast = at.MultiheadAttention.from_torch(mha)        # shares mha's Parameters
    >>> fast.in_proj_weight is mha.in_proj_weight
    True
    >>> x = torch.randn(2, 10, 64)
    >>> with torch.inference_mode():
    ...     y, w = fast(x, x, x)
    ...     ref, _ = mha(x, x, x)
    >>> y.shape, w.shape, torch.allclose(y, ref, atol=1e-5)
    (torch.Size([2, 10, 64]), torch.Size([2, 10, 10]), True)

    Token-by-token decoding against an int8 KV cache:

    >>> import attncore
    >>> cache = attncore.KVCache(max_len=16, num_heads=4, head_dim=16, dtype="int8")
    >>> with torch.inference_mode():
    ...     y0, _ = fast(x[:, :6], x[:, :6], x[:, :6], kv_cache=cache)        # prefill
    ...     y1, _ = fast(x[:, 6:7], x[:, 6:7], x[:, 6:7], kv_cache=cache)     # one new token
    >>> len(cache), y1.shape
    (7, torch.Size([2, 1, 64]))
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # nn.TransformerEncoderLayer's fused inference path
        # (torch._transformer_encoder_layer_fwd) reads self_attn's Parameters
        # and never calls self_attn.forward, so attncore would not run. Its
        # forward() skips that path when "forward pre-/hooks are attached to
        # the module" (any submodule, checked through self.modules()): this
        # no-op pre-hook is the documented switch that turns it off for the
        # layers holding this module only (unlike the process-wide
        # torch.backends.mha.set_fastpath_enabled(False)).
        self.register_forward_pre_hook(_fast_path_guard)
        self.last_fallback = None

    @classmethod
    def from_torch(cls, module):
        """Wrap a ``torch.nn.MultiheadAttention``, sharing its Parameters.

        The result holds the very same Parameter objects (and ``out_proj``
        submodule) as `module`, so training `module` (or the wrapper)
        updates both, and the same hooks (forward, pre-forward and
        state-dict: a hook registered on `module` fires on the wrapper, and
        its handle removes it from both; `module` also gets the wrapper's
        no-op pre-hook, which keeps nn.TransformerEncoderLayer's fused
        path off for layers holding either). Takes batch_first, dropout,
        kdim/vdim and the training mode from `module`. An attncore
        MultiheadAttention is returned as it is.

        Example
        -------
        >>> import torch, attncore.torch as at
        >>> mha = torch.nn.MultiheadAttention(16, 2, kdim=8, vdim=12)
        >>> fast = at.MultiheadAttention.from_torch(mha)
        >>> fast.k_proj_weight is mha.k_proj_weight, fast.out_proj is mha.out_proj
        (True, True)
        """
        if isinstance(module, cls):
            return module
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"MultiheadAttention.from_torch: module must be a "
                            f"torch.nn.MultiheadAttention; got {type(module).__name__}")
        # build on the meta device (no memory), then adopt module's Parameters
        new = cls(module.embed_dim, module.num_heads, dropout=module.dropout,
                  bias=module.in_proj_bias is not None, add_bias_kv=module.bias_k is not None,
                  add_zero_attn=module.add_zero_attn, kdim=module.kdim, vdim=module.vdim,
                  batch_first=module.batch_first, device="meta")
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                     "in_proj_bias", "bias_k", "bias_v"):
            setattr(new, name, getattr(module, name))
        new.out_proj = module.out_proj
        new.train(module.training)
        # the hooks the caller put on `module` (capturing weights, say) go on
        # firing: the same dicts, so their handles' remove() works on both;
        # the fused-path guard joins them (so `module` gets it too)
        for name in _MODULE_HOOK_DICTS:
            if hasattr(module, name):
                setattr(new, name, getattr(module, name))
        if _fast_path_guard not in new._forward_pre_hooks.values():
            new.register_forward_pre_hook(_fast_path_guard)
        return new

    # -- forward ---------------------------------------------------------------

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False, *, kv_cache=None):
        """See the class docstring; torch.nn.MultiheadAttention.forward's
        signature and conventions, plus ``kv_cache`` (an attncore.KVCache)
        for incremental decoding."""
        why = self._why_not_attncore(query, key, value, key_padding_mask, attn_mask, need_weights)
        self.last_fallback = why
        if why:
            if kv_cache is not None:
                # torch's own forward knows no cache: running it would drop the cached positions
                raise TypeError(f"MultiheadAttention: kv_cache needs attncore's forward, which cannot "
                                f"run here: {why}")
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, attn_mask=attn_mask,
                                   average_attn_weights=average_attn_weights, is_causal=is_causal)
        return self._attncore_forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                      average_attn_weights, is_causal, kv_cache)

    def _tensors(self, query, key, value):
        params = (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight,
                  self.in_proj_bias, self.out_proj.weight, self.out_proj.bias)
        return [t for t in (query, key, value) + params if t is not None]

    def __prepare_scriptable__(self):
        # torch.jit.script calls this first: without it, scripting failed inside
        # TorchScript's parser on forward's keyword-only kv_cache
        raise TypeError("torch.jit.script cannot compile attncore.torch.MultiheadAttention (its "
                        "forward runs attncore's NumPy kernels). Script the model before "
                        "attncore.torch.patch(), or use torch.compile or torch.export, which "
                        "take the patched model")

    def _why_not_attncore(self, query, key, value, key_padding_mask, attn_mask, need_weights):
        """'' when attncore can run this call, else why torch's forward runs."""
        if self.bias_k is not None or self.add_zero_attn:
            return "add_bias_kv / add_zero_attn are not supported by attncore"
        tensors = self._tensors(query, key, value)
        masks = [m for m in (key_padding_mask, attn_mask) if m is not None]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors + masks):
            return "autograd is needed (grad mode is on and a tensor or Parameter requires grad)"
        if any(t.is_nested for t in (query, key, value)):
            return "nested tensors"
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            return "TorchScript scripting/tracing"
        if torch.overrides.has_torch_function(tuple(tensors)):
            return "a tensor argument has __torch_function__"
        if any(t.device.type != "cpu" for t in tensors + masks):
            return "a tensor is not on the CPU"
        if query.dtype not in _DTYPES or any(t.dtype != query.dtype for t in tensors):
            return f"dtype {query.dtype} (attncore: one of float32/float64/bfloat16/float16 for all)"
        if _autocast_enabled():
            return "autocast is enabled"
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            return "unexpected input ranks (torch's forward reports the error)"
        if (query.shape[-1], key.shape[-1], value.shape[-1]) != (self.embed_dim, self.kdim, self.vdim):
            return "feature sizes that do not match embed_dim/kdim/vdim (torch's forward reports the error)"
        if need_weights and _capturing_graph():
            return "need_weights=True under torch.compile (the custom op returns no weights)"
        return ""

    def _attncore_forward(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                          average_attn_weights, is_causal, kv_cache=None):
        E, H = self.embed_dim, self.num_heads
        Dh = E // H
        # projections, exactly as torch chooses them (packed for self-attention)
        if self._qkv_same_embed_dim:
            W, b = self.in_proj_weight, self.in_proj_bias
            if query is key and key is value:
                q, k, v = F.linear(query, W, b).split(E, dim=-1)
            elif key is value:
                q = F.linear(query, W[:E], None if b is None else b[:E])
                k, v = F.linear(key, W[E:], None if b is None else b[E:]).split(E, dim=-1)
            else:
                bq, bk, bv = (None, None, None) if b is None else b.split(E)
                q = F.linear(query, W[:E], bq)
                k = F.linear(key, W[E:2 * E], bk)
                v = F.linear(value, W[2 * E:], bv)
        else:
            bq, bk, bv = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.split(E)
            q = F.linear(query, self.q_proj_weight, bq)
            k = F.linear(key, self.k_proj_weight, bk)
            v = F.linear(value, self.v_proj_weight, bv)

        unbatched = query.dim() == 2
        if unbatched:
            q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
        bdim = 0 if (self.batch_first or unbatched) else 1    # (B, L, E) or (L, B, E)
        B, Lq, Lk = q.shape[bdim], q.shape[1 - bdim], k.shape[1 - bdim]
        if k.shape[bdim] != B or v.shape[bdim] != B or v.shape[1 - bdim] != Lk:
            layout = "(B, L, E)" if bdim == 0 else "(L, B, E)"
            raise ValueError(f"MultiheadAttention: query {tuple(query.shape)}, key "
                             f"{tuple(key.shape)} and value {tuple(value.shape)} do not agree on "
                             f"batch size and key length (layout {layout}, "
                             f"batch_first={self.batch_first})")

        def heads(x):   # (B, L, E) / (L, B, E) -> a strided (B, H, L, Dh) view
            x = x.unflatten(-1, (H, Dh))
            return x.transpose(1, 2) if bdim == 0 else x.permute(1, 2, 0, 3)

        # torch's reading of is_causal: a hint that attn_mask is causal
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the "
                               "Transformer module method `generate_square_subsequent_mask` to "
                               "create this mask.")
        use_causal = bool(is_causal) and key_padding_mask is None and not need_weights
        if kv_cache is not None:
            self._check_kv_cache(kv_cache, query.dtype, Dh)
        # a decode step holds the cache's lock throughout (as attncore.MultiHeadAttention)
        step = kv_cache._lock if kv_cache is not None else contextlib.nullcontext()
        with step:
            if kv_cache is not None:
                cached_before = kv_cache._state()
                kv_cache.append(heads(k).numpy(), heads(v).numpy())
                # the masks now cover every cached position; the causal structure is the
                # cache's bottom-right alignment, not the top-left is_causal shortcut
                Lk, use_causal = len(kv_cache), False
            try:
                mask = self._sdpa_mask(key_padding_mask, None if use_causal else attn_mask, B, Lq, Lk,
                                       unbatched, query.dtype)
                dropout_p = float(self.dropout) if self.training else 0.0

                # attncore writes its output into the rows the output projection reads
                buf = q.new_empty((B, Lq, H, Dh) if bdim == 0 else (Lq, B, H, Dh))
                out_view = buf.transpose(1, 2) if bdim == 0 else buf.permute(1, 2, 0, 3)
                if kv_cache is not None:
                    # the new positions are the newest: bottom-right causal alignment, as
                    # attncore.MultiHeadAttention(kv_cache=...) does; the storage is read directly
                    seed = int(_draw_seed()) if dropout_p > 0 else None
                    res = kv_cache.attend(heads(q).numpy(), attn_mask=None if mask is None else mask.numpy(),
                                          is_causal="bottom_right", dropout_p=dropout_p, seed=seed,
                                          out=out_view.numpy(), return_weights=bool(need_weights))
                    weights = torch.from_numpy(res[1]) if need_weights else None
                elif _capturing_graph():
                    res = _attention(heads(q), heads(k), heads(v), mask, dropout_p, use_causal, None, False)
                    buf = res.permute(0, 2, 1, 3) if bdim == 0 else res.permute(2, 0, 1, 3)
                    weights = None
                else:
                    seed = _draw_seed() if dropout_p > 0 else None
                    res = _sdpa_eager(heads(q), heads(k), heads(v), mask, dropout_p, use_causal, None,
                                      False, seed, out=out_view, return_weights=bool(need_weights))
                    weights = res[1] if need_weights else None
                out = F.linear(buf.flatten(-2), self.out_proj.weight, self.out_proj.bias)
                if weights is not None and average_attn_weights:
                    weights = weights.mean(dim=1)
                if unbatched:
                    out = out.squeeze(0)
                    weights = weights.squeeze(0) if weights is not None else None
                return out, weights
            except BaseException:
                # a call that fails (a mask of the wrong shape) leaves the cache as it
                # was: a caller retrying would otherwise add its tokens twice (torch's
                # global generator may have given a dropout seed already)
                if kv_cache is not None:
                    kv_cache._restore(cached_before)
                raise

    def _check_kv_cache(self, kv_cache, dtype, Dh):
        """TypeError / ValueError unless `kv_cache` is an attncore.KVCache this
        layer can append to and attend over with queries of `dtype`."""
        from .kvcache import KVCache

        if not isinstance(kv_cache, KVCache):
            raise TypeError(f"MultiheadAttention: kv_cache must be an attncore.KVCache; got "
                            f"{type(kv_cache).__name__}")
        if _capturing_graph():
            raise NotImplementedError("MultiheadAttention: kv_cache runs eagerly only (the "
                                      "KVCache is NumPy storage outside the graph torch.compile or torch.jit.trace records)")
        if (kv_cache.num_heads, kv_cache.head_dim) != (self.num_heads, Dh):
            raise ValueError(f"MultiheadAttention: kv_cache holds {kv_cache.num_heads} heads of size "
                             f"{kv_cache.head_dim}; this layer needs {self.num_heads} heads of size "
                             f"{Dh}")
        if dtype != getattr(torch, kv_cache.dtype.name):
            raise TypeError(f"MultiheadAttention: kv_cache takes {kv_cache.dtype} keys, values and "
                            f"queries (stored as {kv_cache.storage}); this call's query is {dtype}")

    def _sdpa_mask(self, key_padding_mask, attn_mask, B, Lq, Lk, unbatched, dtype):
        """torch's MHA masks (bool True = not allowed, or float added) -> one
        SDPA mask (bool True = may attend, or float) broadcastable to
        (B, H, Lq, Lk); None for no mask."""
        H = self.num_heads
        masks = []
        if key_padding_mask is not None:
            want = (Lk,) if unbatched else (B, Lk)
            if tuple(key_padding_mask.shape) != want:
                raise ValueError(f"MultiheadAttention: key_padding_mask must have shape {want} "
                                 f"(True = padding); got {tuple(key_padding_mask.shape)}")
            masks.append(self._convention("key_padding_mask", key_padding_mask.reshape(B, 1, 1, Lk), dtype))
        if attn_mask is not None:
            if attn_mask.dim() == 2 and tuple(attn_mask.shape) == (Lq, Lk):
                am = attn_mask
            elif attn_mask.dim() == 3 and tuple(attn_mask.shape) == (B * H, Lq, Lk):
                am = attn_mask.reshape(B, H, Lq, Lk)
            else:
                raise ValueError(f"MultiheadAttention: attn_mask must have shape ({Lq}, {Lk}) or "
                                 f"({B * H}, {Lq}, {Lk}) (B*num_heads, Lq, Lk); got "
                                 f"{tuple(attn_mask.shape)}")
            masks.append(self._convention("attn_mask", am, dtype))
        if not masks:
            return None
        if len(masks) == 1:
            return masks[0]
        a, b = masks
        if a.dtype == torch.bool and b.dtype == torch.bool:
            return a & b

        def additive(m):
            return torch.zeros(m.shape, dtype=dtype).masked_fill_(~m, float("-inf")) if m.dtype == torch.bool else m

        return additive(a) + additive(b)

    @staticmethod
    def _convention(name, m, dtype):
        if m.dtype == torch.bool:
            return ~m     # torch MHA: True = masked out; SDPA: True = may attend
        if m.dtype in (dtype, torch.float32):
            # torch's SDPA takes a float32 mask with any query dtype (its MultiheadAttention
            # too, when need_weights=False); a 16-bit query's mask is added unrounded
            return m
        if m.is_floating_point():   # (torch's MultiheadAttention raises too)
            raise TypeError(f"MultiheadAttention: {name} is {m.dtype} but the query is {dtype}; pass it "
                            f"as {dtype} ({name}.to({dtype})) or as a bool mask")
        raise TypeError(f"MultiheadAttention: {name} must be bool (True = masked out) or float "
                        f"(added to the scores); got {m.dtype}")


def patch(model):
    """Swap every ``torch.nn.MultiheadAttention`` in `model` for an attncore
    :class:`MultiheadAttention` sharing its Parameters, in place.

    Covers modules anywhere in the tree, including the ``self_attn`` /
    ``multihead_attn`` of ``nn.TransformerEncoderLayer``,
    ``nn.TransformerDecoderLayer`` and ``nn.Transformer``. Only modules whose
    type is exactly ``nn.MultiheadAttention`` are swapped (subclasses may
    change the forward). The state_dict keys are unchanged. Fused torch
    inference paths that would bypass the swapped module are turned off for
    the patched layers only: the encoder layer's fused kernel (see
    :class:`MultiheadAttention`) and ``nn.TransformerEncoder``'s
    nested-tensor conversion (``use_nested_tensor = False``: the nested
    tensors it makes from ``src_key_padding_mask`` can only be consumed by
    the fused kernel).

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place. A bare ``nn.MultiheadAttention`` cannot be
        replaced in place; it is wrapped and the wrapper returned.

    Returns
    -------
    model (the same object).

    Example
    -------
    >>> import torch, attncore.torch as at
    >>> layer = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
    >>> model = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    >>> x = torch.randn(2, 7, 32)
    >>> with torch.inference_mode():
    ...     ref = model(x)
    ...     at.patch(model) is model
    ...     torch.allclose(model(x), ref, atol=1e-5)
    True
    True
    >>> type(model.layers[0].self_attn).__name__, model.layers[0].self_attn.last_fallback
    ('MultiheadAttention', '')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch: model must be a torch.nn.Module; got {type(model).__name__}")
    if type(model) is nn.MultiheadAttention:
        return MultiheadAttention.from_torch(model)
    swapped = {}   # a module used at several places stays one module
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):   # named_children() skips repeats
            if type(child) is nn.MultiheadAttention:
                if id(child) not in swapped:
                    swapped[id(child)] = MultiheadAttention.from_torch(child)
                setattr(parent, name, swapped[id(child)])
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder) and any(
                isinstance(getattr(layer, "self_attn", None), MultiheadAttention) for layer in m.layers):
            m.use_nested_tensor = False
    return model


# -- 3. Hugging Face transformers -------------------------------------------

ATTN_IMPLEMENTATION = "attncore"

_HF_HINT = (" (attncore is for inference; to train, select torch's attention with "
            "model.set_attn_implementation('sdpa'))")

# HF keyword -> attncore keyword, for model features that need the kernel.
_KERNEL_KEYWORDS = {"softcap": "softcap", "s_aux": "sinks"}
# The ones the kernel does not have yet (none now; soft-capping and sinks
# arrived with issue 10): a line here makes a model that uses the feature
# raise NotImplementedError naming it, instead of passing it on.
_NOT_YET_IN_KERNEL: dict = {}
# Keywords some models pass to their attention function that change the
# result and that attncore cannot honour: an error rather than ignored.
_UNSUPPORTED_KEYWORDS = {"sinks": "per-query attention sinks, as Inkling2's; gpt-oss's per-head "
                                  "s_aux sinks are supported"}


def hf_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                 is_causal=None, softcap=None, s_aux=None, position_bias=None, cache=None, **kwargs):
    """The Hugging Face attention function for ``attn_implementation="attncore"``
    (registered by :func:`register`; transformers calls it, users do not).

    Mirrors transformers' ``sdpa_attention_forward``: the mask comes from
    transformers' ``sdpa_mask`` (bool, True = attend, or None when causality
    alone describes it: then ``is_causal`` is top-left aligned, which is also
    right for a static-cache prefill with Lq < Lk); padding and sliding
    windows are in the mask; GQA passes ``enable_gqa`` (K/V are never
    repeated); ``dropout`` (training mode) is applied; ``position_bias`` is
    merged into a float mask as sdpa does.

    Parameters
    ----------
    module : torch.nn.Module
        The calling attention layer (its ``is_causal`` attribute is read).
    query : Tensor (B, Hq, Lq, D)
    key, value : Tensor (B, Hkv, Lk, D), (B, Hkv, Lk, Dv)
    attention_mask : Tensor (B, 1, Lq, Lk) bool or float, or None
    dropout, scaling, is_causal, softcap, s_aux, position_bias, cache :
        As passed by transformers. ``softcap`` (Gemma 2's logit soft-capping)
        and ``s_aux`` (gpt-oss's attention sinks) run in the kernel; a paged
        (continuous-batching) ``cache`` raises NotImplementedError. Other
        keywords are ignored, except ``sinks=`` (per-query sinks, which raise
        NotImplementedError). A KV-shared layer (Gemma 4) given fewer queries
        than keys and no mask is causal bottom-right.

    With an :class:`AttncoreCache` as ``past_key_values``, `key` and `value`
    are the placeholders its layers return; the attention then runs on that
    layer's attncore KVCache (``KVCache.attend``: the compact storage is
    read directly, with `attention_mask` as the mask).

    Returns
    -------
    (Tensor (B, Lq, Hq, Dv) contiguous, None)

    Example
    -------
    >>> import torch, attncore.torch as at
    >>> from transformers import BertConfig, BertModel
    >>> _ = at.register()
    >>> cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
    ...                  intermediate_size=64, attn_implementation="attncore")
    >>> model = BertModel(cfg).eval()
    >>> with torch.inference_mode():
    ...     h = model(torch.tensor([[1, 2, 3, 4]]), attention_mask=torch.tensor([[1, 1, 1, 0]]))
    >>> model.config._attn_implementation, h.last_hidden_state.shape
    ('attncore', torch.Size([1, 4, 32]))
    """
    if kwargs.get("output_attentions", False):   # (as transformers' sdpa says it)
        from transformers.utils import logging as hf_logging
        hf_logging.get_logger(__name__).warning_once(
            "attn_implementation='attncore' does not return attention weights "
            "(output_attentions=True); use attn_implementation='eager' for them.")
    extras = {}
    for name, val in (("softcap", softcap), ("s_aux", s_aux)):
        if val is None:
            continue
        if name in _NOT_YET_IN_KERNEL:
            raise NotImplementedError(
                f"attn_implementation='attncore': {type(module).__name__} uses "
                f"{_NOT_YET_IN_KERNEL[name]}, which attncore's kernel does not support yet; "
                f"use attn_implementation='eager' for this model")
        extras[_KERNEL_KEYWORDS[name]] = val
    for name in _UNSUPPORTED_KEYWORDS:
        if kwargs.get(name) is not None:   # (ignoring it would change the result silently)
            raise NotImplementedError(
                f"attn_implementation='attncore': {type(module).__name__} passes {name}= "
                f"({_UNSUPPORTED_KEYWORDS[name]}), which attncore does not support; use "
                f"attn_implementation='eager' for this model")
    if cache is not None:
        raise NotImplementedError(
            f"attn_implementation='attncore': a paged cache ({type(cache).__name__}, continuous "
            f"batching) is not supported; use attn_implementation='sdpa' for it")
    # (also what reaches the kernel beside q, k, v: the cache path's detach()
    # would otherwise drop their gradients silently)
    _check_no_grad("attn_implementation='attncore'", _HF_HINT, query=query, key=key, value=value,
                   attention_mask=attention_mask, s_aux=s_aux, position_bias=position_bias)

    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # as sdpa: causality from the flag only when there is no mask (the mask
    # already has it), and never for one query row (it sees every cached key)
    is_causal = bool(query.shape[2] > 1 and attention_mask is None and is_causal)
    Lq, Lk = query.shape[2], key.shape[2]
    if is_causal and Lq < Lk and getattr(module, "is_kv_shared_layer", False):
        # Gemma 4's KV-shared layers keep only the last queries (logits_to_keep)
        # of a prompt whose mask was skipped: their causality is bottom-right
        # (transformers turns that slicing off for "sdpa" by name only). A
        # bool mask of the few kept rows says so on every path.
        attention_mask = torch.ones(Lq, Lk, dtype=torch.bool, device=query.device).tril(Lk - Lq)
        is_causal = False
    if isinstance(key, _AttncoreCacheRef) or isinstance(value, _AttncoreCacheRef):
        return _attend_cache(query, key, value, attention_mask, dropout, is_causal, scaling,
                             position_bias, extras), None
    if position_bias is not None:
        from transformers.integrations.sdpa_attention import create_position_bias_mask

        attention_mask = create_position_bias_mask(position_bias, attention_mask, is_causal,
                                                   query, key)
        is_causal = False
    elif attention_mask is not None and attention_mask.dtype not in (torch.bool, query.dtype):
        # to the compute dtype: the query's, or float32 for 16-bit queries (a
        # float32 mask is then added as it is, not rounded to the half type)
        half = query.dtype in (torch.float16, torch.bfloat16)
        attention_mask = attention_mask.to(torch.float32 if half else query.dtype)
    out = _attention(query, key, value, attention_mask, dropout, is_causal, scaling,
                     query.shape[1] != key.shape[1], heads_last=True, extras=extras)
    return out, None


def register():
    """Register ``attn_implementation="attncore"`` with Hugging Face transformers.

    Registers both the attention function (:func:`hf_attention`, via
    ``transformers.AttentionInterface``) and its mask function
    (transformers' ``sdpa_mask``, via ``AttentionMaskInterface``: without it,
    transformers silently passes no padding mask). Idempotent. Call it
    before building or loading a model with ``"attncore"``; then
    ``AutoModel.from_pretrained(name, attn_implementation="attncore")``,
    ``model.set_attn_implementation("attncore")`` and sentence-transformers'
    ``model_kwargs={"attn_implementation": "attncore"}`` run every attention
    layer on attncore (inference only: see :func:`hf_attention`).

    Returns
    -------
    "attncore", the implementation name.

    Example
    -------
    >>> import attncore.torch as at
    >>> at.register()
    'attncore'
    >>> from transformers import AutoModel
    >>> model = AutoModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2",
    ...                                   attn_implementation="attncore")  # doctest: +SKIP
    """
    global _sdpa_mask
    try:
        from transformers import AttentionInterface, AttentionMaskInterface
        from transformers.masking_utils import sdpa_mask
    except ImportError as exc:
        raise ImportError("attncore.torch.register() needs Hugging Face transformers >= 4.56 "
                          "(pip install 'attncore[hf]')") from exc
    _sdpa_mask = sdpa_mask
    AttentionInterface.register(ATTN_IMPLEMENTATION, hf_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _hf_mask)
    return ATTN_IMPLEMENTATION


_sdpa_mask = None   # transformers' sdpa_mask, set by register()


def _hf_mask(*args, **kwargs):
    """The mask function of ``"attncore"``: transformers' ``sdpa_mask`` (bool,
    True = attend), once the model is known to run its attention through
    the attention interface (_check_hf_model)."""
    _check_hf_model(kwargs.get("config"))
    return _sdpa_mask(*args, **kwargs)


_USES_INTERFACE: dict = {}   # model_type -> whether its attention layers call the interface


def _source_readable(cls):
    """Whether the source of cls's module can be read (not a .pyc-only install)."""
    import inspect
    import sys

    try:
        inspect.getsource(sys.modules[cls.__module__])
    except (KeyError, OSError, TypeError):
        return False
    return True


def _check_hf_model(config):
    """Refuse a model whose attention layers are its own code rather than
    transformers' attention interface (MPNet, DeBERTa-v2): hf_attention
    never runs there, and that code would add the bool mask to its scores
    as 0/1, a wrong result with no error. transformers refuses such models
    for "sdpa" but not for a registered name. Told by transformers' own
    test (PreTrainedModel._can_set_attn_implementation); a model it cannot
    tell (custom code, a transformers without the test) passes."""
    model_type = getattr(config, "model_type", None)
    if isinstance(model_type, str) and not _uses_interface(model_type):
        raise ValueError(f"attn_implementation='attncore': {model_type} models compute attention in "
                         f"their own layers, not through transformers' attention interface, so "
                         f"attncore cannot run them (and their layers would misread its masks); "
                         f"use attn_implementation='eager' for this model")


# (torch.compile runs it once at trace time and keeps the verdict: it reads
# source files, which dynamo cannot trace; fullgraph=True failed on a model's
# first, compiled, call)
@torch.compiler.assume_constant_result
def _uses_interface(model_type):
    """Whether the attention layers of `model_type` call the interface
    (cached per model type)."""
    uses = _USES_INTERFACE.get(model_type)
    if uses is None:
        uses = True
        try:
            import transformers
            from transformers.models.auto import modeling_auto

            name = None   # the base model's class, else the causal LM's (TrOCR has only that)
            for table in ("MODEL_MAPPING_NAMES", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"):
                name = getattr(modeling_auto, table, {}).get(model_type)
                if isinstance(name, str):
                    break
            cls = getattr(transformers, name, None) if isinstance(name, str) else None
            test = getattr(cls, "_can_set_attn_implementation", None)
            # (the test reads the model's source: where it cannot, it says False,
            # which is no verdict)
            uses = test is None or bool(test()) or not _source_readable(cls)
        except Exception:   # (transformers' internals moved: no verdict, no refusal)
            uses = True
        _USES_INTERFACE[model_type] = uses
    return uses


# -- 4. Hugging Face: a KV cache in attncore's storage -----------------------

_CACHE_OP = "AttncoreCache"
_CACHE_HINT = (" (the cache stores detached values; decode under torch.inference_mode() or "
               "torch.no_grad())")
_CACHE_STORAGE = ("float32", "bfloat16", "float16", "int8")
_TORCH_CACHE_STORAGE = {torch.float32: "float32", torch.bfloat16: "bfloat16",
                        torch.float16: "float16", torch.int8: "int8"}
# the model dtypes whose keys/values the cache takes (stored from their float32 value:
# exact for the 16-bit types)
_CACHE_MODEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Layer types whose cache is the plain key/value history. A sliding-window layer
# keeps every position too (unlike transformers' DynamicSlidingWindowLayer):
# transformers builds its mask from get_mask_sizes(), so the mask then spans the
# whole history, and the attention on the cache hides what transformers' sliding
# cache layer would have dropped (most models' masks cut that and more; Moshi's
# cuts nothing). Another implementation given the decoded history has only the
# mask's window. Chunked, linear-attention, KV-sharing ("dummy") and other
# layer types need caches of their own.
_CACHE_LAYER_TYPES = ("full_attention", "sliding_attention")
# a layer's KVCache starts with room for this many positions beyond the first
# update (then doubles as needed), unless max_cache_len is given
_CACHE_HEADROOM = 256


def _flat_arguments(args, kwargs):
    """The arguments of a torch call, with those inside lists and tuples
    (torch.cat's tensors) taken out, one level deep."""
    for a in (*args, *(kwargs or {}).values()):
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a


class _AttncoreCacheRef(Tensor):
    """What an AttncoreCache layer's update() hands back to the attention layer
    in place of its keys or values: a tensor with their shape and dtype that
    holds no values (one NaN, expanded with stride 0: no memory), carrying
    the cache layer (``.layer``), ``.which`` ("keys" / "values") and
    ``.length`` (the cached positions it stands for). hf_attention recognises
    it and runs the attention on the layer's KVCache.

    Anything else done with it -- another attention implementation (sdpa,
    eager, flex), indexing, arithmetic, ``.to()`` -- raises TypeError through
    ``__torch_function__`` instead of computing on a placeholder; only
    metadata (shape, size, dim, dtype, device, requires_grad) can be read,
    which is what transformers reads before calling the attention function.
    """

    # the properties' getters (what __torch_function__ receives for them),
    # looked up by name: torch's stubs type the class attributes as values
    _METADATA = frozenset([getattr(Tensor, name).__get__
                           for name in ("shape", "ndim", "dtype", "device", "requires_grad")]
                          + [Tensor.size, Tensor.dim, Tensor.is_floating_point, Tensor.numel])

    @staticmethod
    def __new__(cls, layer, which, shape, dtype):
        base = torch.full((), float("nan"), dtype=dtype).expand(shape)
        ref = Tensor._make_subclass(cls, base)
        ref.layer, ref.which, ref.length = layer, which, shape[2]
        return ref

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in cls._METADATA:
            return super().__torch_function__(func, types, args, kwargs or {})
        refs = [a for a in _flat_arguments(args, kwargs) if isinstance(a, _AttncoreCacheRef)]
        which = refs[0].which if refs else "keys/values"
        storage = refs[0].layer.storage if refs else "compact"
        name = getattr(func, "__name__", repr(func))
        said = f"{name}() got the {which} that an attncore.torch.AttncoreCache layer returned: they "
        config = getattr(refs[0].layer, "_config", None) if refs else None
        if getattr(config, "_attn_implementation", "attncore") == ATTN_IMPLEMENTATION:
            # placeholders exist only while the cache's config runs "attncore": either
            # the running model is another one (another config), or its attention
            # layer computes on the cached keys/values itself before the attention
            # call (JetMoe repeats them, DiffLlama splits them); which, cannot be told
            raise TypeError(
                said + f"hold no values: only attn_implementation='attncore''s attention "
                f"function reads the cache's {storage} storage. Either the model that runs is "
                f"not the one whose config built the cache (build it from the running model's "
                f"config, AttncoreCache(model.config, ...): with another implementation there, "
                f"update() returns decoded keys/values), or this model's attention layer "
                f"computes {name}() on the cached {which} itself before the attention call "
                f"(JetMoe, DiffLlama): an AttncoreCache cannot serve such a model; decode it "
                f"with transformers' default cache (DynamicCache)")
        raise TypeError(
            said + f"hold no values (the cache's {storage} storage is read by "
            f"attn_implementation='attncore' only). Run the model with "
            f"model.set_attn_implementation('attncore') (after attncore.torch.register()), and "
            f"build the cache from that model's config, AttncoreCache(model.config, ...): with "
            f"any other implementation in that config, update() returns decoded keys/values")

    def __repr__(self):
        return (f"<{self.which} of an AttncoreCache layer: shape {tuple(self.shape)}, "
                f"{self.layer.storage} storage, no values>")


def _cache_storage(dtype):
    """AttncoreCache's dtype argument -> a KVCache storage name."""
    if isinstance(dtype, torch.dtype):
        if dtype in _TORCH_CACHE_STORAGE:
            return _TORCH_CACHE_STORAGE[dtype]
    elif isinstance(dtype, str):
        if dtype in _CACHE_STORAGE:
            return dtype
    else:
        raise TypeError(f"{_CACHE_OP}: dtype must be a string or a torch.dtype; got "
                        f"{type(dtype).__name__}")
    raise ValueError(f"{_CACHE_OP}: dtype must be 'float32', 'bfloat16', 'float16' or 'int8' "
                     f"(or torch.float32 / bfloat16 / float16 / int8); got {dtype!r}")


def _layer_types(config):
    """The layer types transformers' own caches would build for `config` (a
    decoder text config), each with its sliding window (None for a full
    layer): [(type, window)]."""
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs
    except ImportError:
        get_layer_types_and_kwargs = None
    if get_layer_types_and_kwargs is not None:
        types, kwargs = get_layer_types_and_kwargs(config)
        return [(t, kw.get("sliding_window") if t == "sliding_attention" else None)
                for t, kw in zip(types, kwargs)]
    # transformers without it: the config's layer_types, else what its
    # DynamicCache inferred (a sliding window on every layer, or none)
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is None:
        types = ["sliding_attention" if window is not None else "full_attention"] * \
            config.num_hidden_layers
    return [(t, window if t == "sliding_attention" else None) for t in types]


def _float32_array(t):
    """A key/value tensor as a float32 NumPy array (a view for float32)."""
    t = t.detach()
    return (t if t.dtype == torch.float32 else t.to(torch.float32)).numpy()


def _sliding_cut(mask, W, n, Lq, first):
    """(window, mask) for Lq query rows, the newest of n cached positions, of a
    sliding layer with window W, given the model's mask (bool or float, or
    None). They see what transformers' sliding cache layer hands out: the
    W - 1 positions before the Lq and those, so every row hides the keys
    before `first` = n - Lq - (W - 1). Most models' masks cut more, each row's
    own window; Moshi's cuts nothing.

    The kernel skips the key blocks before a window (a mask it evaluates), so:
    one row, or a mask that already hides every key outside each row's own
    window: the window (W - 1, None), the same attention; otherwise the window
    (W + Lq - 2, None) (that bound for the last row, looser for the others)
    and a key mask for the rest."""
    if Lq == 1:
        return (W - 1, None), mask
    keys = np.arange(n)
    if mask is not None:
        own = keys < (first + np.arange(Lq))[:, None]    # (Lq, n): before each row's window
        visible = mask if mask.dtype == np.bool_ else mask != -np.inf
        if not np.any(visible & own):
            return (W - 1, None), mask
    keep = keys >= first
    if mask is None:
        mask = keep
    elif mask.dtype == np.bool_:
        mask = mask & keep
    else:
        mask = np.where(keep, mask, np.float32(-np.inf))
    return (W + Lq - 2, None), mask


def _attend_cache(query, key, value, attention_mask, dropout, is_causal, scaling, position_bias,
                  extras):
    """hf_attention with AttncoreCache placeholders as key/value: the attention
    of `query` (B, Hq, Lq, D) over the KVCache of the layer that returned them,
    read in its storage by KVCache.attend. Returns (B, Lq, Hq, D) contiguous in
    the query's dtype (under torch.autocast, the autocast dtype)."""
    op = "attn_implementation='attncore' with an AttncoreCache"
    if not (isinstance(key, _AttncoreCacheRef) and isinstance(value, _AttncoreCacheRef)
            and key.layer is value.layer and (key.which, value.which) == ("keys", "values")):
        raise TypeError(f"{op}: key and value must be the pair that one AttncoreCache layer's "
                        f"update() returned; got {type(key).__name__} {tuple(key.shape)} and "
                        f"{type(value).__name__} {tuple(value.shape)}")
    if _capturing_graph():
        raise NotImplementedError(f"{op}: runs eagerly only (the KVCache is NumPy storage "
                                  f"outside the graph torch.compile or torch.jit.trace records)")
    kv = key.layer.kv
    n = len(kv)
    if key.length != n:
        raise ValueError(f"{op}: key and value stand for {key.length} cached positions, but the "
                         f"layer now holds {n}: they come from an earlier update()")
    if query.device.type != "cpu":
        raise TypeError(f"{op}: query is on {query.device}; attncore runs on the CPU")
    Lq = query.shape[-2]
    if position_bias is not None:   # merged into a float mask, as sdpa does
        from transformers.integrations.sdpa_attention import create_position_bias_mask

        attention_mask = create_position_bias_mask(position_bias, attention_mask, is_causal,
                                                   query, key)
        is_causal = False
    mask = None
    if attention_mask is not None:
        if attention_mask.dim() < 2 or tuple(attention_mask.shape[-2:]) != (Lq, n):
            raise ValueError(f"{op}: attention_mask must end in (Lq, cached positions) = "
                             f"({Lq}, {n}); got {tuple(attention_mask.shape)}")
        if attention_mask.dtype == torch.bool:
            mask = attention_mask.numpy()
        elif attention_mask.is_floating_point():   # added to the scores, like the float32 queries
            mask = attention_mask.detach().to(torch.float32).numpy()
        else:
            raise TypeError(f"{op}: attention_mask must be bool (True = attend) or float (added); "
                            f"got {attention_mask.dtype}")
    kwargs = {}
    for name, val in extras.items():   # softcap (a float), sinks (Hq,)
        kwargs[name] = _float32_array(val) if isinstance(val, Tensor) else val
    if dropout > 0:
        kwargs.update(dropout_p=float(dropout), seed=int(_draw_seed()))
    W = key.layer.sliding_window
    first = n - Lq - (W - 1) if W is not None else 0
    if first > 0:
        kwargs["window"], mask = _sliding_cut(mask, W, n, Lq, first)
    B, Hq, _, D = query.shape
    # the result in the query's dtype, or, under torch.autocast, in its dtype (as torch's
    # SDPA gives it; the cache's attention itself runs in float32 whatever the storage)
    dtype = query.dtype
    if torch.is_autocast_enabled("cpu") and dtype != torch.float64:
        dtype = torch.get_autocast_dtype("cpu")
    if Lq == 1 and mask is None and not kwargs:
        # a decode step's common call (KVCache.attend's fast path): (B, Hq, 1, D)
        # is already the (B, 1, Hq, D) rows the output projection reads
        res = torch.from_numpy(kv.attend(_float32_array(query), scale=scaling,
                                         is_causal="bottom_right" if is_causal else False))
        res = res.transpose(1, 2)
        return res if dtype == torch.float32 else res.to(dtype)
    # the kernel writes (B, Hq, Lq, D) results straight into the (B, Lq, Hq, D)
    # rows the output projection reads
    buf = torch.empty((B, Lq, Hq, D), dtype=torch.float32)
    kv.attend(_float32_array(query), attn_mask=mask, scale=scaling,
              is_causal="bottom_right" if is_causal else False,
              out=buf.numpy().transpose(0, 2, 1, 3), **kwargs)
    return buf if dtype == torch.float32 else buf.to(dtype)


_ATTNCORE_CACHE_DOC = """A Hugging Face transformers ``Cache`` whose layers keep their keys and
    values in attncore KVCaches, in float32, bfloat16, float16 or int8 storage
    (int8: one float32 scale per token and head), read in place by the
    attention: pass it as ``past_key_values=`` to ``model.generate(...)`` or to
    the model's forward.

    Named like transformers' own ``DynamicCache`` / ``QuantizedCache`` (a
    ``Cache`` subclass, with one ``AttncoreLayer`` -- a ``CacheLayerMixin``
    -- per decoder layer).

    How it works: each layer's ``update(key_states, value_states)`` appends the
    new (B, Hkv, T, D) keys/values to its ``attncore.KVCache`` (``.kv``;
    ``grow=True``) and, when the model runs ``attn_implementation="attncore"``
    (read from `config` at every call), returns placeholders of shape
    (B, Hkv, len, D) that hold no values; the attncore attention function
    recognises them and runs ``KVCache.attend`` on the stored (compact) data:
    no decoded copy per step. Under any other implementation (sdpa, eager,
    ...) ``update`` returns the stored keys/values decoded to the model's
    dtype (a copy per call: correct, not fast), so the cache's numerics are
    the same either way, except that a sliding layer's decoded history then
    has only the window that the model's mask applies (Moshi's mask has
    none: run it on "attncore", or on a DynamicCache). A placeholder that
    reaches anything but the
    attncore attention function raises TypeError. Every position is read
    from the storage, the prompt's included (the prefill is not computed
    from the unrounded keys/values).

    Parameters
    ----------
    config : transformers.PretrainedConfig
        The model's config (``model.config``): its decoder text config gives
        the layers and the attention implementation.
    dtype : "float32" | "bfloat16" | "float16" | "int8" (or the torch dtype)
        The storage. Against a float32 cache, each attention output moves by
        at most ``2 eps_s V + eps_v`` (docs/numerics.md, statement (10)).
    max_cache_len : int, optional
        Positions to allocate at the first update (default: the prompt's
        length + 256); the storage doubles when it fills up.

    Supported: full-attention and sliding-window layers (a sliding layer
    keeps every position, memory grows like a full layer's, and its
    attention sees what transformers' sliding cache layer keeps: the
    ``sliding_window - 1`` positions before each call's tokens, and those;
    masks cut further), batches with left padding (the 4-D mask is
    passed to ``KVCache.attend``), a prompt's prefill and later chunks
    (bottom-right causal), GQA (K/V not repeated), beam search
    (``reorder_cache``), ``crop`` (assisted generation), and
    ``batch_repeat_interleave`` / ``batch_select_indices``. Keys and values
    of float32, bfloat16 or float16 models on the CPU, with equal key and
    value head sizes. Layer types other than full / sliding attention are a
    ValueError; ``torch.compile`` is not supported (``is_compileable`` is
    False, so ``generate`` does not compile). ``reset()`` drops the storage
    (a new batch size may follow).

    Example
    -------
    >>> import torch, attncore.torch as at
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> _ = at.register()
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                   num_attention_heads=4, num_key_value_heads=2, attn_implementation="attncore")
    >>> model = LlamaForCausalLM(cfg).eval()
    >>> cache = at.AttncoreCache(model.config, dtype="int8")
    >>> with torch.inference_mode():
    ...     out = model.generate(torch.tensor([[1, 2, 3]]), past_key_values=cache,
    ...                          max_new_tokens=4, do_sample=False, pad_token_id=0)
    >>> out.shape, cache.get_seq_length(), cache.layers[0].kv.storage
    (torch.Size([1, 7]), 6, 'int8')
    >>> cache.layers[0].kv.keys.shape                  # (B, Hkv, cached positions, D), decoded
    (1, 2, 6, 8)
    """


def _define_hf_cache_classes(Cache, CacheLayerMixin, PretrainedConfig):
    from .kvcache import KVCache

    class AttncoreLayer(CacheLayerMixin):
        """One decoder layer's keys/values in an attncore KVCache (``.kv``,
        made at the first update); see :class:`AttncoreCache`."""

        is_compileable = False   # NumPy storage: generate() must not torch.compile around it
        is_croppable = True      # crop() shortens the KVCache
        is_sliding = False       # keeps every position, also for sliding-window layers

        def __init__(self, storage, max_cache_len, config, sliding_window=None):
            # CacheLayerMixin.__init__ is not called: it assigns self.keys /
            # self.values, which are read-only (decoded) properties here
            self.storage = storage
            self.max_cache_len = max_cache_len
            # a sliding layer's window W (query at position p sees keys > p - W),
            # applied by the attention on the cache whether or not the model's
            # mask applies it (Moshi's does not: its DynamicCache drops positions)
            self.sliding_window = sliding_window
            self._config = config   # its _attn_implementation is read at every update
            self.kv = None
            # the model's key and value dtypes: under torch.autocast a rotary model's
            # keys come out of the rotation in float32 and its values in the autocast
            # dtype (torch's SDPA casts both); the storage takes either
            self.dtype = self.value_dtype = None
            self.is_initialized = False

        def __repr__(self):
            return f"AttncoreLayer({self.kv!r})" if self.kv is not None else \
                f"AttncoreLayer(empty, dtype={self.storage})"

        def lazy_initialization(self, key_states, value_states):
            for name, t in (("key_states", key_states), ("value_states", value_states)):
                if not isinstance(t, Tensor) or t.dim() != 4:
                    raise ValueError(f"{_CACHE_OP}: {name} must be a (B, H, T, D) tensor; got "
                                     f"{getattr(t, 'shape', type(t).__name__)}")
                if t.dtype not in _CACHE_MODEL_DTYPES:
                    raise TypeError(f"{_CACHE_OP}: {name} has dtype {t.dtype}; the cache takes "
                                    f"float32, bfloat16 or float16 keys/values")
                if t.device.type != "cpu":
                    raise TypeError(f"{_CACHE_OP}: {name} is on {t.device}; attncore runs on the CPU")
            if key_states.shape != value_states.shape:
                raise ValueError(f"{_CACHE_OP}: key_states {tuple(key_states.shape)} and "
                                 f"value_states {tuple(value_states.shape)} differ (a KVCache "
                                 f"holds keys and values of one head size)")
            B, H, T, D = key_states.shape
            room = T + _CACHE_HEADROOM if self.max_cache_len is None else max(self.max_cache_len, T)
            self.kv = KVCache(room, H, D, batch_size=B, dtype=self.storage, grow=True)
            self.dtype, self.value_dtype = key_states.dtype, value_states.dtype
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            """Append (B, Hkv, T, D) keys/values; return placeholders (attncore
            attention) or the decoded (B, Hkv, len, D) keys/values (any other
            implementation)."""
            _check_no_grad(f"{_CACHE_OP}.update", _CACHE_HINT, key_states=key_states,
                           value_states=value_states)
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            for name, t, dtype in (("key_states", key_states, self.dtype),
                                   ("value_states", value_states, self.value_dtype)):
                if t.dtype != dtype:
                    raise TypeError(f"{_CACHE_OP}: {name} has dtype {t.dtype}; this layer's cache "
                                    f"took {dtype} ones at its first update")
            self.kv.append(_float32_array(key_states), _float32_array(value_states))
            if self._config._attn_implementation == ATTN_IMPLEMENTATION:
                shape = (key_states.shape[0], self.kv.num_heads, len(self.kv), self.kv.head_dim)
                return (_AttncoreCacheRef(self, "keys", shape, self.dtype),
                        _AttncoreCacheRef(self, "values", shape, self.value_dtype))
            # another implementation computes the attention itself from tensors
            return self.keys, self.values

        @property
        def keys(self):
            """(B, Hkv, len, D) the stored keys decoded to the model's dtype (a
            copy), or None before the first update."""
            return self._decoded(self.kv.keys, self.dtype) if self.kv is not None and len(self.kv) \
                else None

        @property
        def values(self):
            """(B, Hkv, len, D) the stored values decoded (see keys)."""
            return self._decoded(self.kv.values, self.value_dtype) \
                if self.kv is not None and len(self.kv) else None

        def _decoded(self, a, dtype):
            # float32 storage hands out a view of its buffer, which later appends,
            # crops and reorders rewrite: copy it
            a = a.copy() if self.storage == "float32" else a
            return torch.from_numpy(a).to(dtype)

        def get_seq_length(self):
            return len(self.kv) if self.kv is not None else 0

        def get_mask_sizes(self, query_length):
            # (kv_length, kv_offset): every cached position plus the new ones
            return self.get_seq_length() + query_length, 0

        def get_max_length(self):
            return -1   # grows without a limit

        def reset(self):
            # drop the storage: the next update starts a new KVCache, of any batch size
            self.kv, self.dtype, self.value_dtype, self.is_initialized = None, None, None, False

        def crop(self, tokens_to_remove):
            """Drop the last ``-tokens_to_remove`` positions (a negative int, as
            transformers' DynamicLayer.crop takes it)."""
            if isinstance(tokens_to_remove, bool) or not isinstance(tokens_to_remove, int):
                raise TypeError(f"{_CACHE_OP}.crop: tokens_to_remove must be an int; got "
                                f"{type(tokens_to_remove).__name__}")
            if tokens_to_remove > 0:
                raise ValueError(f"{_CACHE_OP}.crop: tokens_to_remove must be <= 0 (minus the "
                                 f"number of positions to drop); got {tokens_to_remove}")
            if tokens_to_remove and self.kv is not None:
                self.kv.truncate(max(0, len(self.kv) + tokens_to_remove))

        def _take_batch(self, op, name, index):
            """Keep the batch rows `index` (1-D ints, or bools of length B) in
            that order: fresh buffers, the capacity unchanged."""
            kv = self.kv
            if kv is None or kv.batch is None or len(kv) == 0:
                return   # (nothing cached: a no-op, as for transformers' DynamicLayer)
            B = kv.batch
            idx = index.detach().cpu().numpy() if isinstance(index, Tensor) else np.asarray(index)
            if idx.dtype == np.bool_ and idx.shape == (B,):
                idx = np.flatnonzero(idx)
            if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(f"{_CACHE_OP}.{op}: {name} must be 1-D integer indices into the "
                                 f"batch (or a ({B},) bool mask); got shape {idx.shape}, {idx.dtype}")
            if idx.size == 0 or idx.min() < -B or idx.max() >= B:
                raise ValueError(f"{_CACHE_OP}.{op}: {name} must select rows of a batch of {B}; "
                                 f"got {idx.size} values" + (f" in [{idx.min()}, {idx.max()}]"
                                                               if idx.size else ""))
            kv.select_batch(idx)

        def reorder_cache(self, beam_idx):
            """Beam search: batch row i becomes row ``beam_idx[i]``."""
            self._take_batch("reorder_cache", "beam_idx", beam_idx)

        def batch_select_indices(self, indices):
            self._take_batch("batch_select_indices", "indices", indices)

        def batch_repeat_interleave(self, repeats):
            if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
                raise ValueError(f"{_CACHE_OP}.batch_repeat_interleave: repeats must be a positive "
                                 f"int; got {repeats!r}")
            if self.kv is not None and self.kv.batch is not None:
                B = self.kv.batch
                self._take_batch("batch_repeat_interleave", "repeats", np.repeat(np.arange(B), repeats))

    class AttncoreCache(Cache):
        __doc__ = _ATTNCORE_CACHE_DOC

        def __init__(self, config, dtype, max_cache_len=None):
            if not isinstance(config, PretrainedConfig):
                raise TypeError(f"{_CACHE_OP}: config must be the model's transformers config "
                                f"(model.config); got {type(config).__name__}")
            storage = _cache_storage(dtype)
            if max_cache_len is not None and (isinstance(max_cache_len, bool) or
                                              not isinstance(max_cache_len, int) or max_cache_len < 1):
                raise ValueError(f"{_CACHE_OP}: max_cache_len must be a positive int or None; got "
                                 f"{max_cache_len!r}")
            text = config.get_text_config(decoder=True)
            layers = _layer_types(text)
            unsupported = sorted({t for t, _ in layers} - set(_CACHE_LAYER_TYPES))
            if unsupported:
                raise ValueError(f"{_CACHE_OP}: the model has layer types {unsupported}; the cache "
                                 f"supports {list(_CACHE_LAYER_TYPES)} only (use transformers' "
                                 f"DynamicCache for this model)")
            self.storage = storage
            for kind, window in layers:
                if kind == "sliding_attention" and (isinstance(window, bool) or
                                                    not isinstance(window, int) or window < 1):
                    raise ValueError(f"{_CACHE_OP}: a sliding-attention layer needs a positive "
                                     f"int sliding_window in the config; got {window!r}")
            super().__init__(layers=[AttncoreLayer(storage, max_cache_len, text, window)
                                     for _, window in layers])

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            # (transformers' own message would be a bare IndexError from its list)
            if (isinstance(layer_idx, int) and not isinstance(layer_idx, bool)
                    and not 0 <= layer_idx < len(self.layers)):
                raise ValueError(f"{_CACHE_OP}: the model updates layer {layer_idx}, but the cache "
                                 f"has {len(self.layers)} layers: it was built from another "
                                 f"model's config; build it from this model's "
                                 f"(AttncoreCache(model.config, dtype))")
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    for cls in (AttncoreLayer, AttncoreCache):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return {"AttncoreLayer": AttncoreLayer, "AttncoreCache": AttncoreCache}


_HF_CACHE_CLASSES = None


def _hf_cache_classes():
    """AttncoreLayer and AttncoreCache, built at first use: they subclass
    transformers' CacheLayerMixin and Cache, and importing transformers when
    ``attncore.torch`` is imported would cost torch-only users about 2 s."""
    global _HF_CACHE_CLASSES
    if _HF_CACHE_CLASSES is None:
        try:
            from transformers import PretrainedConfig
            from transformers.cache_utils import Cache, CacheLayerMixin
        except ImportError as exc:
            raise ImportError("attncore.torch.AttncoreCache needs Hugging Face transformers "
                              "(pip install 'attncore[hf]')") from exc
        _HF_CACHE_CLASSES = _define_hf_cache_classes(Cache, CacheLayerMixin, PretrainedConfig)
    return _HF_CACHE_CLASSES


def __getattr__(name):
    # module attribute hook (PEP 562): attncore.torch.AttncoreCache builds the classes
    if name in ("AttncoreCache", "AttncoreLayer"):
        cls = _hf_cache_classes()[name]
        globals()[name] = cls   # later lookups do not come here
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# doctest finds the example of the lazily built class here
__test__ = {"AttncoreCache": _ATTNCORE_CACHE_DOC}
