"""The softmax stage on its own, and Nadaraya-Watson kernel regression.

- :func:`softmax`: numerically stable (max-shifted) softmax along any axis,
  with bool or additive masks and valid lengths, fused and multi-threaded
  (csrc/driver/softmax.c). A non-last axis is read in place through its
  strides: rows that are adjacent in memory are processed side by side, so
  ``axis=0`` of a C-ordered matrix costs about what ``axis=-1`` does.
- :func:`masked_softmax`: d2l's ``masked_softmax`` exactly (masked scores
  replaced by -1e6, so a row with valid length 0 is uniform).
- :func:`kernel_regression`: d2l's attention pooling with a Gaussian (or
  Laplace, Epanechnikov) kernel, fused: an online softmax over blocks of keys
  with the distances taken directly, ``(x_i - x_j)^2`` (difference first, in
  float64 for float32 inputs), never an ``(Lq, Lk)`` matrix unless the
  weights are asked for.

Every result is bitwise the same for any number of threads. float16 and
bfloat16 inputs are computed in float32 (converted here) and returned in their
own dtype.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from . import _arrays, _config, _core, _layout
from . import _validate as V
from ._types import ArrayLike, OptArray, Result, Scalar

D2L_MASK_VALUE = -1e6   # what d2l's sequence_mask writes into masked scores
KERNELS = tuple(_core.KR_KERNELS)


# -- shared helpers ---------------------------------------------------------------

def _axis(op, axis, ndim):
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: axis must be an int; got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for an array with {ndim} dimensions")
    return int(axis) % ndim


def _float_mask(op, name, m, compute, result):
    """A bool mask -> (MASK_BOOL, uint8 view); a float mask -> (MASK_ADD, in
    the compute dtype). A float mask has the input's dtype (or float32 for a
    16-bit input)."""
    if m.dtype == np.bool_:
        return _core.MASK_BOOL, m.view(np.uint8)
    if m.dtype in V.COMPUTE_DTYPES or V._is_half(m.dtype):
        if m.dtype != result and not (V._is_half(result) and m.dtype == compute):
            raise TypeError(f"{op}: a float {name} must have the input's dtype {result}"
                            + (" (or float32)" if V._is_half(result) else "")
                            + f"; got {m.dtype} (cast it, e.g. {V.cast_hint(name, result)})")
        return _core.MASK_ADD, m.astype(compute, copy=False)
    raise TypeError(f"{op}: {name} must be bool (True = keep) or a float array added to the "
                    f"scores; got dtype {m.dtype}")


def _mask(op, name, mask, shape, what, compute, result):
    """Validate a mask that broadcasts (NumPy rules, aligned to the right) to
    `shape`; returns (kind, array or None), the array not yet broadcast."""
    if mask is None:
        return _core.MASK_NONE, None
    m = V.native(V.as_array(mask, name, op))
    try:
        fits = m.ndim <= len(shape) and np.broadcast_shapes(m.shape, shape) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{op}: {name} of shape {m.shape} does not broadcast to {what} "
                         f"{tuple(shape)}")
    return _float_mask(op, name, m, compute, result)


def _int_lengths(op, name, value, allow_integral_floats=False):
    vl = V.native(V.as_array(value, name, op))
    if vl.dtype == np.bool_:
        raise TypeError(f"{op}: {name} must be an integer array; got dtype bool")
    if np.issubdtype(vl.dtype, np.integer):
        return vl
    if allow_integral_floats and (np.issubdtype(vl.dtype, np.floating) or V._is_half(vl.dtype)):
        f = vl.astype(np.float64)
        if not np.all(np.isfinite(f)) or not np.array_equal(f, np.round(f)):
            raise ValueError(f"{op}: {name} holds non-integer values; lengths are whole numbers")
        # (clipped first: a length past int64's range, 1e30, would cast to garbage; every
        # length beyond +-2^62 means the same as one just past the row's end or start)
        return np.clip(f, -2.0 ** 62, 2.0 ** 62).astype(np.int64)
    raise TypeError(f"{op}: {name} must be an integer array; got dtype {vl.dtype}")


def _check_range(op, name, vl, L, what):
    if vl.size and (vl.min() < 0 or vl.max() > L):
        raise ValueError(f"{op}: {name} must be in [0, {what}={L}]; got values from "
                         f"{vl.min()} to {vl.max()}")


def _empty_like(a, dtype):
    """An output of a's shape whose memory order follows a's (NumPy's
    order='K'), from the one allocator; so that x and out are walked alike."""
    if a.ndim < 2 or a.flags.c_contiguous:
        return _layout.empty(a.shape, dtype)
    perm = sorted(range(a.ndim), key=lambda k: -abs(a.strides[k]) if a.shape[k] > 1 else 0)
    buf = _layout.empty(tuple(a.shape[k] for k in perm), dtype)
    return buf.transpose(np.argsort(perm))


def _same_view(a, b):
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides and a.shape == b.shape and a.dtype == b.dtype)


def _run_softmax(op, a, axis, out, mask_kind, mask, vl, fill_masked, threads, compute, result,
                 torch_dtype, plan_only=False):
    """a: the input in the compute dtype; mask/vl already checked. Allocates
    or checks the output, runs the kernel, returns the result."""
    a = _layout.for_kernel(a, unit_last=False)
    if mask is not None:
        mask = _layout.for_kernel(np.broadcast_to(mask, a.shape), unit_last=False)
    if vl is not None:
        vl = _layout.for_kernel(vl, unit_last=False)
    direct = None
    if out is not None and out.dtype == compute and _layout.is_kernel_ready(out, unit_last=False):
        shared = any(x is not None and np.may_share_memory(out, x) for x in (mask, vl))
        if not shared and (not np.may_share_memory(out, a) or _same_view(out, a)):
            direct = out   # written in place (out may be x itself: every x is read first)
    res = direct if direct is not None else _empty_like(a, compute)
    if res.size or plan_only:
        call = (op, compute == np.float64, _config.active_isa(), threads, a, res, axis, mask_kind,
                mask, vl, fill_masked, D2L_MASK_VALUE)
        if plan_only:
            return _core.softmax(*call, plan_only=True)
        _core.softmax(*call)
    return _arrays.deliver(res, out, result, torch_dtype)


def _input(op, x, name="x"):
    torch_dtype = _arrays.torch_dtype_name(x) if _arrays.is_torch(x) else None
    arrays, compute, result = V.float_arrays(op, **{name: x})
    a = arrays[name]
    if a.ndim == 0:
        raise ValueError(f"{op}: {name} must have at least one dimension; got a scalar")
    if a.ndim > _core.SOFTMAX_MAX_DIMS:
        raise ValueError(f"{op}: {name} has {a.ndim} dimensions; at most "
                         f"{_core.SOFTMAX_MAX_DIMS} are supported")
    return a, compute, result, torch_dtype


def _softmax_valid_lens(op, valid_lens, shape, axis):
    """valid_lens of softmax: lengths along `axis`, one per row. Accepted
    shapes: a scalar; the row shape (x's shape without the axis); or x's
    shape with size 1 at the axis (keepdims). Size-1 dims broadcast; fewer
    dims are an error (no right-aligned guessing). Returns an int64 view of
    the row shape."""
    if valid_lens is None:
        return None
    vl = _int_lengths(op, "valid_lens", valid_lens)
    rows = shape[:axis] + shape[axis + 1:]
    if vl.ndim == len(shape):
        if vl.shape[axis] != 1:
            raise ValueError(f"{op}: valid_lens of shape {vl.shape} has x's number of dimensions, "
                             f"so its axis {axis} must have size 1 (keepdims); x has shape {shape}")
        vl = vl.reshape(vl.shape[:axis] + vl.shape[axis + 1:])
    elif vl.ndim != 0 and vl.ndim != len(rows):
        hint = (f" For one length per leading index, give it trailing size-1 dims (e.g. "
                f"valid_lens.reshape({vl.shape + (1,) * (len(rows) - vl.ndim)}))"
                if 0 < vl.ndim < len(rows) else "")
        raise ValueError(f"{op}: valid_lens has shape {vl.shape}; for x of shape {shape} and "
                         f"axis={axis} it must be a scalar, the row shape {rows} (one length per "
                         f"row; size-1 dims broadcast) or {rows[:axis] + (1,) + rows[axis:]} "
                         f"(keepdims).{hint} For d2l's (batch,) convention use "
                         f"attncore.masked_softmax")
    try:
        full = np.broadcast_to(vl, rows) if vl.ndim == 0 or all(
            n in (1, r) for n, r in zip(vl.shape, rows)) else None
    except ValueError:
        full = None
    if full is None:
        raise ValueError(f"{op}: valid_lens of shape {vl.shape} does not match the rows "
                         f"{rows} of x {shape} along axis {axis}")
    _check_range(op, "valid_lens", vl, shape[axis], "the axis length")
    return full.astype(np.int64, copy=False)


# -- public functions -------------------------------------------------------------

def softmax(x: ArrayLike, axis: int = -1, *, mask: OptArray = None, valid_lens: OptArray = None,
            out: Optional[np.ndarray] = None, num_threads: Optional[int] = None) -> Result:
    """Numerically stable softmax along `axis`: ``exp(x - max) / sum(exp(x - max))``.

    Parameters
    ----------
    x : array (any shape, at least 1-D)
        float32 or float64 (float16/bfloat16 are computed in float32). Any
        strides: the kernel reads rows through them (a non-last axis is not
        copied or transposed).
    axis : int, default -1
    mask : array, optional
        Broadcastable to ``x.shape`` (NumPy rules), read through its strides,
        never expanded. bool: True = keep, False = weight exactly 0. float (x's
        dtype): added to x before the softmax (``-inf`` = weight 0), the sum
        rounded to the compute dtype (float32 for 16-bit x, else x's dtype)
        as in ``softmax(x + mask)`` (so, unlike a bool mask, it brings the
        rounding of ``|x|`` into the weights: docs/numerics.md (S1)).
    valid_lens : int array, optional
        Lengths along `axis`: row r keeps entries ``j < valid_lens[r]``, the
        rest get weight 0. Shape: a scalar, the row shape (``x.shape`` without
        `axis`; size-1 dims broadcast) or ``x.shape`` with size 1 at `axis`.
        A shape with fewer dims is an error, never guessed: for d2l's
        ``(batch,)`` convention use :func:`masked_softmax`. Values in
        ``[0, x.shape[axis]]``.
    out : ndarray, optional
        x's shape and dtype, any strides; may be x itself (in place).
    num_threads : int, optional
        Default: OpenMP's current maximum. The result does not depend on it.

    Returns
    -------
    ndarray of x's shape and dtype (a torch tensor for a tensor input).

    Masked entries get weight exactly 0. A row with no entry left (all
    masked, or all ``-inf``) gives zeros, not NaN. A NaN among a row's kept
    entries (or a ``+inf``, as ``inf - inf``) makes the whole row NaN.

    Example
    -------
    >>> import numpy as np, attncore
    >>> x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    >>> attncore.softmax(x).round(4)
    array([[0.09  , 0.2447, 0.6652],
           [0.3333, 0.3333, 0.3333]])
    >>> attncore.softmax(x, axis=0).round(4)
    array([[0.7311, 0.8808, 0.9526],
           [0.2689, 0.1192, 0.0474]])
    >>> attncore.softmax(x, valid_lens=np.array([2, 0])).round(4)
    array([[0.2689, 0.7311, 0.    ],
           [0.    , 0.    , 0.    ]])
    >>> attncore.softmax(x, mask=np.array([True, False, True])).round(4)
    array([[0.1192, 0.    , 0.8808],
           [0.5   , 0.    , 0.5   ]])
    """
    return _softmax(x, axis, mask, valid_lens, out, num_threads, plan_only=False)


def _softmax(x, axis, mask, valid_lens, out, num_threads, plan_only):
    op = "softmax"
    a, compute, result, torch_dtype = _input(op, x)
    axis = _axis(op, axis, a.ndim)
    threads = V.num_threads(op, num_threads)
    mask_kind, m = _mask(op, "mask", mask, a.shape, "x's shape", compute, result)
    vl = _softmax_valid_lens(op, valid_lens, a.shape, axis)
    if out is not None:
        V.output(op, out, a.shape, result)
        torch_dtype = None
    return _run_softmax(op, a, axis, out, mask_kind, m, vl, False, threads, compute, result,
                        torch_dtype, plan_only)


def softmax_plan(x, axis=-1, *, mask=None, valid_lens=None, num_threads=None):
    """How the kernel would run ``softmax(x, axis, ...)`` (internal; for tests
    that assert the path they name): a dict with path ("rows" or "panel"),
    lanes, rows, units, rows_per_unit, chunk, threads, segments (rows path:
    the segments a long row is read in, in place; 0 for none) and split (a
    work unit is one segment: the threads share rows)."""
    return _softmax(x, axis, mask, valid_lens, None, num_threads, plan_only=True)


def masked_softmax(scores: ArrayLike, valid_lens: OptArray, *,
                   num_threads: Optional[int] = None) -> Result:
    """d2l's ``masked_softmax``: softmax over the last axis of `scores` after
    the scores at positions ``j >= valid_len`` are replaced by -1e6.

    Parameters
    ----------
    scores : array (..., Q, K)
        float32 or float64 (float16/bfloat16 computed in float32).
    valid_lens : int array or None
        None: a plain softmax over the last axis (as d2l). Otherwise, as d2l:
        shape ``scores.shape[:-2]`` -- one length per batch element, repeated
        over the second-to-last dim (d2l's 1-D ``(B,)`` for 3-D scores; for
        scores of 4 or more dims this form raises, as (B, H) of (B, H, Q, K)
        could also be SDPA's (B, Lq): write it ``valid_lens[..., None]``) --
        or ``scores.shape[:-1]`` -- one per row (d2l's 2-D ``(B, Q)``), with
        size-1 dims broadcast; or a scalar for every row. Other shapes raise
        (d2l would reshape them silently). Integer values (floats holding whole numbers, as in d2l's
        MXNet edition, are accepted); as in d2l, lengths below 0 act as 0 and
        above K as K.
    num_threads : int, optional

    Returns
    -------
    ndarray of scores' shape and dtype.

    Masked scores are -1e6, not -inf (d2l's semantics): they get weight
    ``exp(-1e6 - max)`` -- 0 in practice -- and a row with valid length 0 is
    uniform, 1/K everywhere. Use :func:`softmax` with ``valid_lens`` for
    exact zeros (and a zero row when nothing is valid).

    Example
    -------
    >>> import numpy as np, attncore
    >>> scores = np.zeros((2, 2, 4), np.float32)
    >>> attncore.masked_softmax(scores, np.array([2, 3]))
    array([[[0.5       , 0.5       , 0.        , 0.        ],
            [0.5       , 0.5       , 0.        , 0.        ]],
    <BLANKLINE>
           [[0.33333334, 0.33333334, 0.33333334, 0.        ],
            [0.33333334, 0.33333334, 0.33333334, 0.        ]]], dtype=float32)
    >>> attncore.masked_softmax(scores[:1, :1], np.array([[0]]))   # valid_len 0: uniform
    array([[[0.25, 0.25, 0.25, 0.25]]], dtype=float32)
    """
    op = "masked_softmax"
    a, compute, result, torch_dtype = _input(op, scores, "scores")
    threads = V.num_threads(op, num_threads)
    if valid_lens is None:
        return _run_softmax(op, a, a.ndim - 1, None, _core.MASK_NONE, None, None, False, threads,
                            compute, result, torch_dtype)
    vl = _int_lengths(op, "valid_lens", valid_lens, allow_integral_floats=True)
    shape = a.shape
    rows = shape[:-1]
    if vl.ndim == 0:
        full = np.broadcast_to(vl, rows)
    elif a.ndim >= 4 and vl.shape == shape[:-2]:
        # for scores (B, H, Q, K), a (B, H) could also be scaled_dot_product_attention's
        # (B, Lq), one length per query row, wherever H == Q: refused for every size,
        # so that no call fails or changes meaning at one length
        raise ValueError(
            f"{op}: valid_lens of shape {vl.shape} for scores {shape} reads two ways: one length "
            f"per {shape[:-2]} (batch, head), repeated over the queries -- write it as "
            f"valid_lens[..., None], shape {vl.shape + (1,)} -- or, as "
            f"scaled_dot_product_attention reads (B, Lq), one per query row, the same for every "
            f"head -- shape {shape[:-3] + (1, shape[-2])}")
    elif a.ndim >= 2 and vl.shape == shape[:-2]:
        full = np.broadcast_to(vl.reshape(vl.shape + (1,)), rows)   # repeated over Q
    elif vl.ndim == len(rows) and all(n in (1, r) for n, r in zip(vl.shape, rows)):
        full = np.broadcast_to(vl, rows)   # size-1 dims broadcast (keepdims forms)
    elif vl.shape == rows:
        full = vl
    else:
        forms = [f"{shape[:-2]} (one per batch element, repeated over the second-to-last dim)"
                 if a.ndim >= 2 else None, f"{rows} (one per row)", "a scalar"]
        raise ValueError(f"{op}: valid_lens has shape {vl.shape}; for scores of shape {shape} it "
                         f"must be " + ", ".join(f for f in forms if f) +
                         " -- d2l's 1-D (batch,) and 2-D (batch, queries) forms for 3-D scores")
    full = _layout.copy(np.clip(full, 0, shape[-1]), np.int64)
    return _run_softmax(op, a, a.ndim - 1, None, _core.MASK_NONE, None, full, True, threads,
                        compute, result, torch_dtype)


def _points(op, name, a):
    """x as (..., L, d): a 1-D x is L scalar points (d2l), (L, 1)."""
    if a.ndim == 0:
        raise ValueError(f"{op}: {name} must be 1-D (L,) scalar points or (..., L, d); got a scalar")
    return a[:, None] if a.ndim == 1 else a


def kernel_regression(x_query: ArrayLike, x_key: ArrayLike, y: ArrayLike,
                      bandwidth: Scalar = 1.0, *, kernel: str = "gaussian",
                      attn_mask: OptArray = None, valid_lens: OptArray = None,
                      return_weights: bool = False,
                      num_threads: Optional[int] = None) -> Result:
    """Nadaraya-Watson kernel regression: attention pooling with a distance kernel.

    ``out_i = sum_j w_ij y_j`` with ``w_ij = softmax_j(-|x_i - x_j|^2 / (2 h^2))``
    (gaussian; h = `bandwidth`), the d2l attention-pooling example. The
    squared distance is taken directly, difference first (in float64 for
    float32 inputs): no ``|x|^2 - 2 x.x' + |x'|^2`` expansion, so nearby
    points lose nothing to cancellation.

    Parameters
    ----------
    x_query : (Lq,) or (..., Lq, d)
    x_key : (Lk,) or (..., Lk, d)
        A 1-D x is Lq (Lk) scalar points, as in d2l. With 2 or more dims the
        last one is ALWAYS the feature axis (scikit-learn's
        (n_samples, n_features), the attention layout (..., L, D)); a batch of
        scalar problems is written ``x[..., None]``. Leading (batch) dims
        broadcast. The feature sizes must match.
    y : (Lk,), (..., Lk) or (..., Lk, dy)
        Targets: y with x_key's number of dims (counting a 1-D x_key as
        (Lk, 1)) is (..., Lk, dy), vector targets; with one dim fewer it is
        (..., Lk), scalar targets, and the output has no dy axis. y's batch
        dims must all be present (size 1 to share): a missing one could be
        read two ways, so it is an error.
    bandwidth : float > 0, default 1.0
        At least 2**-511 (about 1.5e-154) for the gaussian and epanechnikov
        kernels and 2**-1021 for laplace: 1/h^2 (1/h) would overflow below.
    kernel : {"gaussian", "laplace", "epanechnikov"}
        gaussian: ``w ∝ exp(-r^2 / (2 h^2))``; laplace: ``w ∝ exp(-r / h)``
        (r the Euclidean distance); epanechnikov: ``w ∝ max(1 - r^2/h^2, 0)``
        (compact support: a query with no key within h gets zeros; d2l's
        ``epanechikov`` is the triangular ``max(1 - |r|, 0)``, a different
        kernel).
    attn_mask : array, optional
        Broadcastable to ``batch + (Lq, Lk)``: bool (True = key visible) or
        float (the inputs' dtype, added to the log-kernel score; gaussian and
        laplace only).
    valid_lens : int array, optional
        Query i sees keys ``j < valid_len``: a scalar, ``batch`` (one per
        batch element) or ``batch + (Lq,)`` (one per query); values in [0, Lk].
        When x_key or y bring batch dims that x_query lacks, a shape that is
        also x_query's own ``(..., Lq)`` is an error (it could be read two ways).
    return_weights : bool
        Also return the ``batch + (Lq, Lk)`` weights (the only case that
        stores an Lq x Lk array).
    num_threads : int, optional

    Returns
    -------
    out : ``batch + (Lq, dy)``, or ``batch + (Lq,)`` for scalar targets;
    and the weights with `return_weights`. A query whose keys are all masked
    (or, epanechnikov, out of reach) gives zeros. NaN in a visible key or the
    query gives NaN; a NaN in y reaches the outputs whose weight for it is
    not masked out, and may reach others too when it is hidden by a bool
    mask (a weight of 0 times NaN is NaN, as in SDPA; ``valid_lens``
    keeps it out). Replace NaN targets before the call to be sure.

    Example
    -------
    >>> import numpy as np, attncore
    >>> x_train = np.array([0.0, 1.0, 2.0, 3.0]); y_train = np.sin(x_train)
    >>> x_test = np.array([0.5, 2.5])
    >>> attncore.kernel_regression(x_test, x_train, y_train, bandwidth=0.5).round(4)
    array([0.4252, 0.5281])
    >>> out, w = attncore.kernel_regression(x_test, x_train, y_train, return_weights=True)
    >>> w.shape, w.sum(axis=-1).round(6)
    ((2, 4), array([1., 1.]))
    """
    op = "kernel_regression"
    torch_dtype = _arrays.torch_dtype_name(x_query) if _arrays.is_torch(x_query) else None
    arrays, compute, result = V.float_arrays(op, x_query=x_query, x_key=x_key, y=y)
    xq = _points(op, "x_query", arrays["x_query"])
    xk = _points(op, "x_key", arrays["x_key"])
    yy = arrays["y"]
    D = xq.shape[-1]
    if xk.shape[-1] != D:
        raise ValueError(f"{op}: x_query and x_key must have the same feature size (their last "
                         f"dim; a 1-D x is scalar points, d=1); got x_query {arrays['x_query'].shape} "
                         f"and x_key {arrays['x_key'].shape}")
    Lq, Lk = xq.shape[-2], xk.shape[-2]
    if yy.ndim == xk.ndim:
        y3, scalar_y = yy, False
    elif yy.ndim == xk.ndim - 1 and yy.ndim >= 1:
        y3, scalar_y = yy[..., None], True
    else:
        raise ValueError(
            f"{op}: y has shape {yy.shape}; with x_key of shape {arrays['x_key'].shape} (read as "
            f"{xk.shape} = (..., Lk, d)) it must be (..., Lk) = {xk.shape[:-1]} (scalar targets) or "
            f"(..., Lk, dy) with {xk.ndim} dims (vector targets); batch dims of y must all be "
            f"present (size 1 to share them)")
    if y3.shape[-2] != Lk:
        reading = ("(..., Lk, dy): vector targets, as y has as many dims as x_key read as "
                   f"{xk.shape}" if not scalar_y else "(..., Lk): scalar targets")
        raise ValueError(f"{op}: y of shape {yy.shape} is read as {reading}, so it has "
                         f"{y3.shape[-2]} points, but x_key of shape {arrays['x_key'].shape} "
                         f"has Lk={Lk}; scalar targets with batch dims need x_key with those "
                         f"dims too (e.g. x_key[None] for a shared x_key), or give y as "
                         f"y[..., None]")
    try:
        batch = tuple(np.broadcast_shapes(xq.shape[:-2], xk.shape[:-2], y3.shape[:-2]))
    except ValueError:
        raise ValueError(f"{op}: the batch dims of x_query {arrays['x_query'].shape}, x_key "
                         f"{arrays['x_key'].shape} and y {yy.shape} do not broadcast") from None
    if len(batch) + 2 > V.MAX_NDIM:
        raise ValueError(f"{op}: too many dimensions")
    Dy = y3.shape[-1]
    h = V.real_number(op, "bandwidth", bandwidth)
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"{op}: bandwidth must be a finite number > 0; got {bandwidth!r}")
    if not isinstance(kernel, str) or kernel not in _core.KR_KERNELS:
        raise ValueError(f"{op}: kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    # the score is |x - x'|^2 / h^2 (|x - x'| / h for laplace): below this bound 1 / h^2
    # (1 / h) overflows float64, and a query on a key would get 0 x inf = NaN
    least, shown = (2.0 ** -1021, "2**-1021 (about 4.5e-308)") if kernel == "laplace" else \
        (2.0 ** -511, "2**-511 (about 1.5e-154)")
    if h < least:
        power = "1/h" if kernel == "laplace" else "1/h^2"
        raise ValueError(f"{op}: bandwidth {bandwidth!r} is below {shown}, where the {kernel} "
                         f"kernel's {power} overflows float64; rescale x and the bandwidth together "
                         f"(the weights depend on |x - x'| / h only)")
    return_weights = V.flag(op, "return_weights", return_weights)
    threads = V.num_threads(op, num_threads)
    mask_kind, m = _mask(op, "attn_mask", attn_mask, batch + (Lq, Lk), "the weights' shape",
                         compute, result)
    if mask_kind == _core.MASK_ADD and kernel == "epanechnikov":
        raise ValueError(f"{op}: a float attn_mask is added to the log-kernel score, which the "
                         f"epanechnikov kernel does not have; use a bool mask, or the gaussian "
                         f"or laplace kernel")
    vl = None
    if valid_lens is not None:
        v = _int_lengths(op, "valid_lens", valid_lens)
        nb = len(batch)
        if v.ndim == 0:
            vl = v.reshape((1,))
        elif v.ndim == nb:
            vl = v.reshape(v.shape + (1,))
            q_nb = xq.ndim - 2   # the query's own batch dims (fewer: others brought them)
            if v.ndim == q_nb + 1 and V.broadcasts_to(v.shape, batch + (Lq,)) and \
                    V.broadcasts_to(vl.shape, batch + (Lq,)) and \
                    not V.readings_agree(v.shape, v.shape, vl.shape, batch + (Lq,)):
                raise ValueError(
                    f"{op}: valid_lens of shape {v.shape} could be read two ways: one length per "
                    f"batch element of the batch {batch} (x_key / y bring batch dims x_query "
                    f"{arrays['x_query'].shape} does not have), or one per query of x_query. Write "
                    f"valid_lens[..., None] for lengths per batch element, or "
                    f"np.broadcast_to(valid_lens, {batch + (Lq,)}) for lengths per query")
        elif v.ndim == nb + 1:
            vl = v
        else:
            raise ValueError(f"{op}: valid_lens has shape {v.shape}; it must be a scalar, the batch "
                             f"shape {batch} (one length per batch element) or batch + (Lq,) = "
                             f"{batch + (Lq,)} (one per query)")
        try:
            ok = np.broadcast_shapes(vl.shape, batch + (Lq,)) == batch + (Lq,)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{op}: valid_lens of shape {v.shape} does not match the batch "
                             f"{batch} and queries Lq={Lq}")
        _check_range(op, "valid_lens", v, Lk, "Lk")
        vl = _layout.contiguous(vl, np.int64)

    xq, xk, y3 = (_layout.for_kernel(t) for t in (xq, xk, y3))
    if m is not None:
        m = _layout.for_kernel(m, unit_last=False)
    out = _layout.empty(batch + (Lq, Dy), compute)
    weights = _layout.empty(batch + (Lq, Lk), compute) if return_weights else None
    nb = math.prod(batch)
    if nb and Lq:
        _core.kernel_regression(op, compute == np.float64, _config.active_isa(), threads,
                                (nb, Lq, Lk, D, Dy), batch, xq, xk, y3, out,
                                _core.KR_KERNELS[kernel], h, mask_kind, m, vl, weights)
    if scalar_y:
        out = out[..., 0]
    if result != compute:
        out = out.astype(result)
        weights = weights.astype(result) if weights is not None else None
    if torch_dtype is not None:
        out = _arrays.to_torch(out, torch_dtype)
        weights = _arrays.to_torch(weights, torch_dtype) if weights is not None else None
    return (out, weights) if return_weights else out
