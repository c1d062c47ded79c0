"""Channel and spatial attention for images: SE, CBAM and reverse attention.

Four functions over a batch of images ``x`` of shape ``(N, C, H, W)``
(``layout="NCHW"``, torch's convention) or ``(N, H, W, C)``
(``layout="NHWC"``, channels-last):

    channel_attention   SE (squeeze-and-excitation) and CBAM's channel module
    spatial_attention   CBAM's spatial module
    cbam                channel, then spatial attention
    reverse_attention   x * (1 - sigmoid(logits)), logits per pixel

Each is one call into a fused C kernel (csrc/driver/vision.c): per image,
pool, MLP, maps, convolution and rescale run back to back while the image
is in cache, multi-threaded over images (and over channels / rows when
there are few images), bitwise independent of the thread count. Any strides
are read in place: a channels-last array (NumPy NHWC, or a torch tensor in
``torch.channels_last`` memory format passed as NCHW) is read as it is, and
the output has x's memory order.

Parameters follow the torch modules people write for these blocks; the
shapes are torch's, so ``module.weight`` can be passed as it is (under
``torch.no_grad()``, or as ``.detach()``ed tensors, or NumPy copies), and
:func:`channel_params` / :func:`spatial_params` turn the layers into keyword
arguments:

- the shared MLP: ``w1`` (C/r, C) and ``w2`` (C, C/r), as ``nn.Linear(C, C//r)``
  / ``nn.Linear(C//r, C)`` weights (out, in), or as 1x1 ``nn.Conv2d`` weights
  (out, in, 1, 1); biases ``b1`` (C/r,), ``b2`` (C,) or None (``bias=False``);
- the spatial convolution: ``weight`` (1, 2, k, k) of ``nn.Conv2d(2, 1, k,
  padding=k // 2)``, input channel 0 = the channel-mean map, 1 = the
  channel-max map; ``bias`` a number, a (1,) array, or None.

Layout. ``layout=None`` (the default) reads x as NCHW unless the parameters
say otherwise: for channel_attention and cbam, the MLP's C picks the axis
(x.shape[1] or x.shape[3]); when both axes have that size the call raises
and asks for ``layout=``; for reverse_attention the logits' size-1 channel
axis picks it; spatial_attention has no parameter over C, so None is NCHW.
"""
from __future__ import annotations

import numbers
from typing import Any, Dict, Optional

import numpy as np

from . import _arrays, _core, _engine, _layout
from . import _validate as V
from ._types import ArrayLike, OptArray, Result

# the compiled entry points of attncore/_vision.pxi (not in _core.pyi's stub)
_C: Any = _core

LAYOUTS = ("NCHW", "NHWC")
# the C enums (csrc/include/attncore/vision.h), through attncore/_vision.pxi
_POOLINGS = {"avg": _C.VISION_POOL_AVG, "max": _C.VISION_POOL_MAX,
             "avg+max": _C.VISION_POOL_AVG | _C.VISION_POOL_MAX}
_SPATIAL_NONE, _SPATIAL_CONV, _SPATIAL_LOGITS = (_C.VISION_SPATIAL_NONE, _C.VISION_SPATIAL_CONV,
                                                 _C.VISION_SPATIAL_LOGITS)
_AXES = {"NCHW": "(N, C, H, W)", "NHWC": "(N, H, W, C)"}

__all__ = ["channel_attention", "spatial_attention", "cbam", "reverse_attention",
           "channel_params", "spatial_params"]


# -- argument checks -------------------------------------------------------------

def _layout_arg(op, layout):
    if layout is None or (isinstance(layout, str) and layout in LAYOUTS):
        return layout
    raise ValueError(f"{op}: layout must be 'NCHW' (N, C, H, W), 'NHWC' (N, H, W, C) or None; "
                     f"got {layout!r}")


def _channel_axis(layout):
    return 1 if layout == "NCHW" else 3


def _check_x(op, x):
    if x.ndim != 4:
        hint = (" (one image: add the batch axis, x[None])" if x.ndim == 3 else "")
        raise ValueError(f"{op}: x must be a 4-D batch of images, (N, C, H, W) with layout='NCHW' "
                         f"or (N, H, W, C) with layout='NHWC'; got shape {x.shape}{hint}")


def _layout_for_channels(op, x, layout, C, what):
    """The layout in which x has C channels (`what` names the parameter that
    fixes C). layout None: the one reading that fits, else an error."""
    fits = [lay for lay in LAYOUTS if x.shape[_channel_axis(lay)] == C]
    if layout is not None:
        if layout in fits:
            return layout
        other = [lay for lay in fits if lay != layout]
        hint = f"; x reads as {other[0]} {_AXES[other[0]]}: pass layout={other[0]!r}" if other else ""
        raise ValueError(f"{op}: {what} is for C = {C} channels, but x of shape {x.shape} has "
                         f"C = {x.shape[_channel_axis(layout)]} in layout {layout!r} "
                         f"{_AXES[layout]}{hint}")
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise ValueError(f"{op}: {what} is for C = {C} channels, but x of shape {x.shape} has "
                         f"C = {x.shape[1]} as NCHW {_AXES['NCHW']} and {x.shape[3]} as NHWC "
                         f"{_AXES['NHWC']}")
    raise ValueError(f"{op}: x of shape {x.shape} reads both as NCHW {_AXES['NCHW']} and as NHWC "
                     f"{_AXES['NHWC']} with C = {C}: pass layout='NCHW' (torch's convention) or "
                     f"layout='NHWC' (channels-last)")


def _mlp(op, arrays, names):
    """w1 (Cr, C) / (Cr, C, 1, 1), w2 (C, Cr) / (C, Cr, 1, 1), b1 (Cr,), b2 (C,)
    -> (w1, b1, w2, b2) as 2-D / 1-D arrays, and C."""
    w1, w2 = arrays[names[0]], arrays[names[2]]
    mats = []
    for name, w, rows, cols in ((names[0], w1, "C/r", "C"), (names[2], w2, "C", "C/r")):
        if w.ndim == 4 and w.shape[2:] == (1, 1):
            w = w.reshape(w.shape[:2])
        if w.ndim != 2:
            what = "nn.Linear(C, C/r)" if name == names[0] else "nn.Linear(C/r, C)"
            raise ValueError(
                f"{op}: {name} must be ({rows}, {cols}), the weight of {what} (out, in), or "
                f"({rows}, {cols}, 1, 1), a 1x1 nn.Conv2d's weight; got shape {arrays[name].shape}")
        mats.append(w)
    w1, w2 = mats
    Cr, C = w1.shape
    if w2.shape != (C, Cr):
        hint = ""
        if w2.shape == w1.shape and Cr != C:   # one of them transposed (w1.T passed, say)
            hint = (f"; {names[0]} and {names[2]} have the same shape {w1.shape}, so one is "
                    f"transposed: {names[0]} is nn.Linear(C, C/r)'s weight (C/r, C) and {names[2]} "
                    f"nn.Linear(C/r, C)'s (C, C/r); pass {names[0]}.T or {names[2]}.T")
        raise ValueError(f"{op}: {names[2]} must be (C, C/r) = ({C}, {Cr}) to match {names[0]} of shape "
                         f"{arrays[names[0]].shape} (C/r, C) = ({Cr}, {C}); got {arrays[names[2]].shape}"
                         + hint)
    biases = []
    for name, n in ((names[1], Cr), (names[3], C)):
        b = arrays.get(name)
        if b is not None and b.shape != (n,):
            other = C if n == Cr else Cr
            swapped = (f"; it has the other layer's size ({other}): are {names[0]} and {names[2]} "
                       f"swapped? {names[0]} is (C/r, C), {names[2]} (C, C/r)"
                       if b.shape == (other,) and Cr != C else "")
            raise ValueError(f"{op}: {name} must be None or have shape ({n},) (one per "
                             f"{'hidden unit, C/r' if n == Cr and name == names[1] else 'channel, C'}); "
                             f"got {b.shape}" + swapped)
        biases.append(b)
    return (w1, biases[0], w2, biases[1]), C


def _conv(op, w):
    if w.ndim != 4 or w.shape[:2] != (1, 2):
        raise ValueError(f"{op}: weight must be (1, 2, k, k), the weight of nn.Conv2d(2, 1, k, "
                         f"padding=k // 2) (input channel 0: the channel-mean map, 1: the "
                         f"channel-max map); got shape {w.shape}")
    kh, kw = w.shape[2:]
    if kh % 2 == 0 or kw % 2 == 0 or kh == 0:
        raise ValueError(f"{op}: the kernel size must be odd (got {kh} x {kw}, weight {w.shape}): "
                         f"'same' padding puts k // 2 zeros on each side, which keeps H x W only for "
                         f"odd k; use a kernel of size k - 1 or k + 1")
    return w.reshape(2, kh, kw)


def _scalar_bias(op, bias):
    """bias: None, a real number, or a () / (1,) array (returned as an array for the dtype check)."""
    if bias is None:
        return 0.0, None
    if isinstance(bias, numbers.Real) and not isinstance(bias, (bool, np.bool_)):
        return V.real_number(op, "bias", bias), None   # (names bias for an int past float's range)
    if isinstance(bias, (bool, np.bool_)):
        raise TypeError(f"{op}: bias must be None, a number or a (1,) array; got {bias!r}")
    return None, bias


def _logits_layout(op, x, logits, layout):
    """The layouts in which logits broadcast per pixel to x."""
    def fits(lay):
        if logits.ndim != 4:
            return False
        c = _channel_axis(lay)
        return logits.shape[c] == 1 and all(
            logits.shape[k] in (1, x.shape[k]) for k in range(4) if k != c)
    if logits.ndim != 4:
        raise ValueError(
            f"{op}: logits must be 4-D, one logit per pixel: (N, 1, H, W) for NCHW or (N, H, W, 1) "
            f"for NHWC (N, H, W may be 1 to broadcast); got shape {logits.shape} for x of shape "
            f"{x.shape}" + (" (for (N, H, W) logits write logits[:, None] (NCHW) or "
                            "logits[..., None] (NHWC))" if logits.ndim == 3 else ""))
    candidates = [layout] if layout is not None else list(LAYOUTS)
    for lay in candidates:
        if fits(lay):
            return lay
    want = (f"(N or 1, 1, H or 1, W or 1) = ({x.shape[0]}, 1, {x.shape[2]}, {x.shape[3]})"
            if (layout or "NCHW") == "NCHW" else
            f"(N or 1, H or 1, W or 1, 1) = ({x.shape[0]}, {x.shape[1]}, {x.shape[2]}, 1)")
    other = [lay for lay in LAYOUTS if lay != layout and fits(lay)] if layout is not None else []
    hint = f"; they fit layout={other[0]!r}" if other else ""
    per_channel = logits.shape == x.shape
    raise ValueError(
        f"{op}: logits of shape {logits.shape} do not broadcast per pixel to x of shape {x.shape} "
        f"in layout {(layout or 'NCHW')!r}: expected {want}{hint}"
        + (" (reverse attention takes one logit per pixel, shared by the channels)"
           if per_channel else ""))


# -- the shared path ---------------------------------------------------------------

def _logical(a, layout):
    """(N, C, H, W) view of an array in `layout`."""
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def _user(a, layout):
    return a if layout == "NCHW" else a.transpose(0, 2, 3, 1)


def _channels_last_memory(xl):
    """Whether the channel axis of a logical (N, C, H, W) view has the
    smallest stride (the kernels' loop-nest rule, csrc/driver/vision.c)."""
    N, C, H, W = xl.shape
    if C <= 1:
        return False
    sp = xl.strides[3] if W > 1 else xl.strides[2] if H > 1 else None
    return sp is None or abs(xl.strides[1]) < abs(sp)


def _run(op, x, layout, out, num_threads, *, pool=0, mlp=None, weight=None, bias=None,
         logits=None, spatial=_SPATIAL_NONE):
    layout = _layout_arg(op, layout)
    xa = V.as_array(x, "x", op)
    torch_dtype = _arrays.torch_dtype_name(x) if _arrays.is_torch(x) else None
    _check_x(op, xa)
    named = {"x": xa}
    mlp_names = ("w1", "b1", "w2", "b2")
    if mlp is not None:
        for name, value in zip(mlp_names, mlp):
            if value is not None:
                named[name] = value
            elif name in ("w1", "w2"):
                raise TypeError(f"{op}: {name} must be an array (the MLP's weight); got None")
    conv_b = 0.0
    if spatial == _SPATIAL_CONV:
        named["weight"] = weight
        conv_b, bias_arr = _scalar_bias(op, bias)
        if bias_arr is not None:
            named["bias"] = bias_arr
    if spatial == _SPATIAL_LOGITS:
        named["logits"] = logits
    arrays, compute, result = V.float_arrays(op, **named)
    xa = arrays["x"]

    w1 = b1 = w2 = b2 = cw = None
    if mlp is not None:
        (w1, b1, w2, b2), C = _mlp(op, arrays, mlp_names)
        layout = _layout_for_channels(op, xa, layout, C, "the MLP (w1, w2)")
    if spatial == _SPATIAL_CONV:
        cw = _conv(op, arrays["weight"])
        if "bias" in arrays:
            b = arrays["bias"]
            if b.size != 1 or b.ndim > 1:
                raise ValueError(f"{op}: bias must be None, a number or a (1,) array (nn.Conv2d(2, 1, "
                                 f"k).bias); got shape {b.shape}")
            conv_b = float(b.reshape(()))
    lg = None
    if spatial == _SPATIAL_LOGITS:
        lg = arrays["logits"]
        layout = _logits_layout(op, xa, lg, layout)
    layout = layout or "NCHW"
    threads = V.num_threads(op, num_threads)
    if out is not None:
        V.output(op, out, xa.shape, result)

    # what the kernel reads: x and logits in place when they allow it
    xk = _layout.for_kernel(xa, unit_last=False)
    xl = _logical(xk, layout)
    weights = [None if w is None else np.ascontiguousarray(_layout.for_kernel(w))
               for w in (w1, b1, w2, b2, cw)]
    lgl = None
    if lg is not None:
        lgl = _logical(_layout.for_kernel(lg, unit_last=False), layout)
    reads = [a for a in [xk, lgl] + weights if a is not None]

    target = None
    if out is not None and out.dtype == compute and _layout.is_kernel_ready(out, unit_last=False) \
            and not any(np.may_share_memory(out, a) for a in reads):
        target = _logical(out, layout)
    if target is None:
        N, C, H, W = xl.shape
        if _channels_last_memory(xl):
            target = _layout.empty((N, H, W, C), compute).transpose(0, 3, 1, 2)
        else:
            target = _layout.empty((N, C, H, W), compute)

    call = (op, compute == np.float64, threads, xl, target, pool, *weights[:4], spatial, weights[4],
            conv_b, lgl)
    if _engine.planning():
        return _C.vision(*call, plan_only=True)
    if xl.size:
        _C.vision(*call)
    res = _user(target, layout)
    return _arrays.deliver(res, out, result, torch_dtype)


def _pooling(op, pooling):
    if isinstance(pooling, str) and pooling in _POOLINGS:
        return _POOLINGS[pooling]
    raise ValueError(f"{op}: pooling must be 'avg' (SE), 'max' or 'avg+max' (CBAM); got {pooling!r}")


# -- the public functions ----------------------------------------------------------

def channel_attention(x: ArrayLike, w1: ArrayLike, b1: OptArray, w2: ArrayLike, b2: OptArray, *,
                      pooling: str = "avg", layout: Optional[str] = None, out: OptArray = None,
                      num_threads: Optional[int] = None) -> Result:
    """Channel attention: SE (squeeze-and-excitation) and CBAM's channel module.

    For each image n and channel c::

        a = mean over pixels of x[n, c]          (pooling "avg" or "avg+max")
        m = max over pixels of x[n, c]           (pooling "max" or "avg+max")
        mlp(v) = w2 @ relu(w1 @ v + b1) + b2     (one MLP, shared by both poolings)
        s[n, c] = sigmoid(mlp(a) + mlp(m))       (the terms of the poolings asked for)
        out[n, c] = x[n, c] * s[n, c]

    ``pooling="avg"`` is SE (Hu et al.); ``"avg+max"`` is CBAM's channel
    module (Woo et al.), where b2 counts once per pooling, as in
    ``mlp(avg) + mlp(max)`` in torch.

    Parameters
    ----------
    x : (N, C, H, W) or (N, H, W, C) array, float32 or float64 (float16 /
        bfloat16 computed in float32); torch tensors in, torch tensors out.
    w1 : (C/r, C) or (C/r, C, 1, 1)
        The first layer's weight: ``nn.Linear(C, C // r).weight`` (out, in), or
        a 1x1 ``nn.Conv2d(C, C // r, 1).weight``.
    b1 : (C/r,) or None
    w2 : (C, C/r) or (C, C/r, 1, 1)
        The second layer's weight (``nn.Linear(C // r, C)`` or a 1x1 conv).
    b2 : (C,) or None
        :func:`attncore.vision.channel_params` builds w1, b1, w2, b2 from
        torch layers. All arrays must share x's dtype.
    pooling : {"avg", "max", "avg+max"}, default "avg"
    layout : {"NCHW", "NHWC"} or None
        None: the axis of x whose size is the MLP's C (an error, asking for
        ``layout=``, when x.shape[1] and x.shape[3] both are).
    out : optional array of x's shape and dtype (may be x itself).
    num_threads : int, optional (default: OpenMP's current maximum)

    Returns
    -------
    An array of x's shape, dtype and memory order. Bitwise the same for any
    ``num_threads``. Pooling and the MLP run in float64; the products are
    rounded to x's dtype (error bound: docs/numerics.md, (V3)). A NaN in a
    channel makes its pooled values NaN (so, through the MLP, the image's
    output NaN, as in torch).

    Example
    -------
    >>> import numpy as np, attncore
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 8, 5, 5)).astype(np.float32)
    >>> w1 = rng.standard_normal((2, 8)).astype(np.float32)      # C/r = 2 (r = 4)
    >>> w2 = rng.standard_normal((8, 2)).astype(np.float32)
    >>> y = attncore.channel_attention(x, w1, None, w2, None)   # SE
    >>> y.shape, y.dtype
    ((2, 8, 5, 5), dtype('float32'))
    >>> s = 1 / (1 + np.exp(-(w2 @ np.maximum(w1 @ x.mean((2, 3)).T, 0)).T))
    >>> bool(np.allclose(y, x * s[:, :, None, None], rtol=1e-5, atol=1e-6))
    True
    >>> attncore.channel_attention(x.transpose(0, 2, 3, 1), w1, None, w2, None,
    ...                            pooling="avg+max", layout="NHWC").shape
    (2, 5, 5, 8)
    """
    op = "channel_attention"
    return _run(op, x, layout, out, num_threads, pool=_pooling(op, pooling), mlp=(w1, b1, w2, b2))


def spatial_attention(x: ArrayLike, weight: ArrayLike, bias: Any = None, *, layout: Optional[str] = None,
                      out: OptArray = None, num_threads: Optional[int] = None) -> Result:
    """Spatial attention: CBAM's spatial module.

    For each image n and pixel p = (h, w)::

        M[0, p] = mean over channels of x[n, :, p]
        M[1, p] = max over channels of x[n, :, p]
        t[n, p] = sigmoid(conv2d(M, weight, padding=k // 2)[p] + bias)   ("same", zero padding)
        out[n, :, p] = x[n, :, p] * t[n, p]

    Parameters
    ----------
    x : (N, C, H, W) or (N, H, W, C) array (see :func:`channel_attention`)
    weight : (1, 2, k, k) (k odd; a (1, 2, kh, kw) kernel with both odd also works)
        ``nn.Conv2d(2, 1, k, padding=k // 2).weight``: input channel 0 is the
        mean map, 1 the max map, as ``torch.cat([mean, max], dim=1)``. For
        modules that concatenate [max, mean], pass ``weight[:, ::-1]`` or use
        :func:`attncore.vision.spatial_params` with ``order="max,mean"``.
    bias : None, a number, or a (1,) array
    layout : {"NCHW", "NHWC"} or None
        None means "NCHW": no parameter here involves C, so a channels-last
        array needs ``layout="NHWC"``.
    out, num_threads : as in :func:`channel_attention`

    Returns
    -------
    An array of x's shape, dtype and memory order (bitwise the same for any
    ``num_threads``). Maps and convolution run in float64. NaN in x makes
    the maps at its pixel NaN, and through the convolution the pixels
    within k // 2 of it.

    Example
    -------
    >>> import numpy as np, attncore
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 8, 6, 7)).astype(np.float32)
    >>> w = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    >>> y = attncore.spatial_attention(x, w, 0.5)
    >>> y.shape
    (2, 8, 6, 7)
    >>> M = np.stack([x.mean(1), x.max(1)], 1)                     # (N, 2, H, W)
    >>> P = np.pad(M, ((0, 0), (0, 0), (1, 1), (1, 1)))
    >>> z = sum(w[0, k, i, j] * P[:, k, i:i + 6, j:j + 7]
    ...         for k in range(2) for i in range(3) for j in range(3)) + 0.5
    >>> bool(np.allclose(y, x / (1 + np.exp(-z))[:, None], rtol=1e-5, atol=1e-6))
    True
    """
    op = "spatial_attention"
    return _run(op, x, layout, out, num_threads, weight=weight, bias=bias, spatial=_SPATIAL_CONV)


def cbam(x: ArrayLike, w1: ArrayLike, b1: OptArray, w2: ArrayLike, b2: OptArray, weight: ArrayLike,
         bias: Any = None, *, pooling: str = "avg+max", layout: Optional[str] = None,
         out: OptArray = None, num_threads: Optional[int] = None) -> Result:
    """CBAM: channel attention, then spatial attention (Woo et al., 2018)::

        x1 = channel_attention(x, w1, b1, w2, b2, pooling=pooling)
        out = spatial_attention(x1, weight, bias)

    in one pass per image (x1 is never stored: each x1 value is recomputed,
    rounded to the compute dtype exactly as the two calls would round it, so
    for float32 and float64 the result equals the two calls bit for bit).
    float16 / bfloat16 inputs are computed in float32 and the result rounded
    once: x1 keeps float32's precision, where the two calls would round it
    to 16 bits in between, so the fused result is the more accurate one and
    may differ from the two calls by a 16-bit rounding of x1.

    Parameters
    ----------
    x : (N, C, H, W) or (N, H, W, C) array
    w1, b1, w2, b2 : the channel module's MLP, as in :func:`channel_attention`
    weight, bias : the spatial module's convolution, as in :func:`spatial_attention`
    pooling : default "avg+max" (CBAM's); layout, out, num_threads : as in
        :func:`channel_attention` (layout None: the MLP's C picks the axis)

    Example
    -------
    >>> import numpy as np, attncore
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    >>> w1 = rng.standard_normal((4, 16)).astype(np.float32)
    >>> w2 = rng.standard_normal((16, 4)).astype(np.float32)
    >>> k = rng.standard_normal((1, 2, 7, 7)).astype(np.float32)
    >>> y = attncore.cbam(x, w1, None, w2, None, k)
    >>> x1 = attncore.channel_attention(x, w1, None, w2, None, pooling="avg+max")
    >>> bool(np.array_equal(y, attncore.spatial_attention(x1, k)))
    True
    """
    op = "cbam"
    return _run(op, x, layout, out, num_threads, pool=_pooling(op, pooling), mlp=(w1, b1, w2, b2),
                weight=weight, bias=bias, spatial=_SPATIAL_CONV)


def reverse_attention(x: ArrayLike, logits: ArrayLike, *, layout: Optional[str] = None,
                      out: OptArray = None, num_threads: Optional[int] = None) -> Result:
    """Reverse attention: ``out = x * (1 - sigmoid(logits))``, one logit per pixel.

    The weight of a pixel is computed as ``sigmoid(-logits)``, which equals
    ``1 - sigmoid(logits)`` exactly in real arithmetic and has no
    cancellation: large positive logits give small weights with full
    relative accuracy (``1 - sigmoid(20)`` in float32 would round to 0), and
    ``logits = +inf`` gives 0, ``-inf`` gives 1, NaN gives NaN. The weight
    is rounded to x's dtype, then multiplied.

    Parameters
    ----------
    x : (N, C, H, W) or (N, H, W, C) array
    logits : (N, 1, H, W) for NCHW, (N, H, W, 1) for NHWC, of x's dtype
        (e.g. a prediction map from a decoder, PraNet-style); N, H and W may
        be 1 to broadcast. One logit per pixel, shared by all channels: a
        logit per element, or a 3-D (N, H, W) map, is an error that says how
        to write it.
    layout : {"NCHW", "NHWC"} or None
        None: the layout whose channel axis of logits has size 1 (both
        readings, when both fit, compute the same thing).
    out, num_threads : as in :func:`channel_attention`

    Example
    -------
    >>> import numpy as np, attncore
    >>> x = np.ones((1, 3, 2, 2), np.float32)
    >>> logits = np.array([[[[0.0, 40.0], [-np.inf, np.inf]]]], np.float32)   # (1, 1, 2, 2)
    >>> attncore.reverse_attention(x, logits)[0, 0]
    array([[5.000000e-01, 4.248354e-18],
           [1.000000e+00, 0.000000e+00]], dtype=float32)
    """
    op = "reverse_attention"
    return _run(op, x, layout, out, num_threads, logits=logits, spatial=_SPATIAL_LOGITS)


# -- parameters from torch layers --------------------------------------------------

def _torch_array(t):
    """A torch parameter as a NumPy copy (detached; the module keeps training)."""
    return np.array(_arrays.torch_to_numpy(t.detach(), "parameter", "attncore.vision"))


def _linear_like(torch, layer, name):
    """(weight (out, in), bias or None) of an nn.Linear or a 1x1 nn.Conv2d."""
    if isinstance(layer, torch.nn.Linear):
        return _torch_array(layer.weight), None if layer.bias is None else _torch_array(layer.bias)
    if isinstance(layer, torch.nn.Conv2d):
        plain = (tuple(layer.kernel_size) == (1, 1) and tuple(layer.stride) == (1, 1)
                 and layer.padding in ((0, 0), "valid") and tuple(layer.dilation) == (1, 1)
                 and layer.groups == 1)
        if not plain:
            raise ValueError(f"channel_params: {name} must be a 1x1 nn.Conv2d (stride 1, no padding, "
                             f"groups=1); got {layer}")
        w = _torch_array(layer.weight)
        return w.reshape(w.shape[:2]), None if layer.bias is None else _torch_array(layer.bias)
    raise TypeError(f"channel_params: {name} must be an nn.Linear or a 1x1 nn.Conv2d; got "
                    f"{type(layer).__name__}")


def channel_params(fc1: Any, fc2: Any = None) -> Dict[str, Optional[np.ndarray]]:
    """The shared MLP of an SE / CBAM channel module written in torch, as
    keyword arguments ``w1, b1, w2, b2`` for :func:`channel_attention` and
    :func:`cbam` (NumPy copies, in the layers' dtype).

    Parameters
    ----------
    fc1, fc2 : the two layers: ``nn.Linear(C, C // r)`` and ``nn.Linear(C // r, C)``,
        or 1x1 ``nn.Conv2d(C, C // r, 1)`` and ``nn.Conv2d(C // r, C, 1)``, with or
        without bias. Or, as ``fc1`` alone, an ``nn.Sequential`` holding exactly
        [layer, nn.ReLU, layer] (optionally followed by nn.Sigmoid), as SE
        implementations usually write ``self.fc``.

    The activation between the layers must be ReLU and the gate a sigmoid
    (what channel_attention computes); a module with another activation
    (SiLU, hard-sigmoid as in MobileNetV3) is not this computation.

    Example
    -------
    >>> import torch, numpy as np, attncore
    >>> from attncore.vision import channel_params
    >>> fc = torch.nn.Sequential(torch.nn.Linear(32, 8, bias=False), torch.nn.ReLU(),
    ...                          torch.nn.Linear(8, 32, bias=False), torch.nn.Sigmoid())
    >>> p = channel_params(fc)
    >>> sorted(p), p["w1"].shape, p["b1"]
    (['b1', 'b2', 'w1', 'w2'], (8, 32), None)
    >>> x = np.ones((1, 32, 4, 4), np.float32)
    >>> attncore.channel_attention(x, **p).shape
    (1, 32, 4, 4)
    """
    import torch

    if fc2 is None:
        if not isinstance(fc1, torch.nn.Sequential):
            raise TypeError("channel_params: pass the two layers (fc1, fc2), or one nn.Sequential "
                            f"[layer, ReLU, layer(, Sigmoid)]; got {type(fc1).__name__}")
        mods = list(fc1)
        if len(mods) == 4 and isinstance(mods[3], torch.nn.Sigmoid):
            mods = mods[:3]
        if len(mods) != 3 or not isinstance(mods[1], torch.nn.ReLU):
            raise ValueError("channel_params: the nn.Sequential must hold exactly [layer, nn.ReLU, "
                             f"layer] (optionally + nn.Sigmoid); got {fc1}")
        fc1, fc2 = mods[0], mods[2]
    w1, b1 = _linear_like(torch, fc1, "fc1")
    w2, b2 = _linear_like(torch, fc2, "fc2")
    if w2.shape != (w1.shape[1], w1.shape[0]):
        raise ValueError(f"channel_params: fc2 maps {w2.shape[1]} -> {w2.shape[0]} features, but fc1 "
                         f"maps {w1.shape[1]} -> {w1.shape[0]}: expected fc2 {w1.shape[0]} -> {w1.shape[1]}")
    return dict(w1=w1, b1=b1, w2=w2, b2=b2)


def spatial_params(conv: Any, order: str = "mean,max") -> Dict[str, Any]:
    """CBAM's spatial convolution written in torch, as keyword arguments
    ``weight, bias`` for :func:`spatial_attention` and :func:`cbam`.

    Parameters
    ----------
    conv : ``nn.Conv2d(2, 1, k, padding=k // 2)`` (k odd, stride 1, no dilation,
        zero padding; ``padding="same"`` too), with or without bias.
    order : {"mean,max", "max,mean"}
        The order in which the module concatenates the two maps:
        ``torch.cat([mean, max], dim=1)`` (the CBAM paper, most code) or
        ``[max, mean]`` (some implementations' ChannelPool). The returned
        weight is in attncore's order (mean first).

    Example
    -------
    >>> import torch, attncore
    >>> from attncore.vision import spatial_params
    >>> p = spatial_params(torch.nn.Conv2d(2, 1, 7, padding=3, bias=False))
    >>> p["weight"].shape, p["bias"]
    ((1, 2, 7, 7), None)
    """
    import torch

    if not isinstance(conv, torch.nn.Conv2d):
        raise TypeError(f"spatial_params: conv must be an nn.Conv2d(2, 1, k, padding=k // 2); got "
                        f"{type(conv).__name__}")
    kh, kw = conv.kernel_size
    same = conv.padding == "same" or tuple(conv.padding) == (kh // 2, kw // 2)
    if (conv.in_channels, conv.out_channels) != (2, 1) or kh % 2 == 0 or kw % 2 == 0 or not same \
            or tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1) or conv.groups != 1 \
            or conv.padding_mode != "zeros":
        raise ValueError("spatial_params: conv must be nn.Conv2d(2, 1, k, padding=k // 2) with k odd, "
                         f"stride 1, dilation 1, zero padding; got {conv}")
    if order not in ("mean,max", "max,mean"):
        raise ValueError(f"spatial_params: order must be 'mean,max' or 'max,mean'; got {order!r}")
    w = _torch_array(conv.weight)
    if order == "max,mean":
        w = np.ascontiguousarray(w[:, ::-1])
    return dict(weight=w, bias=None if conv.bias is None else _torch_array(conv.bias))
