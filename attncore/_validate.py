"""Argument checks and normalisation shared by the public functions.

Every error names the argument and the shapes or values involved, and is a
TypeError (wrong kind of thing: dtype, type) or a ValueError (wrong shape or
value). Nothing here touches pointers. Where a shape could mean two things
(a convention from torch or d2l), there is exactly one documented reading per
input rank, and anything outside it is an error that says how to write it.
"""
import contextvars
import math
import numbers
import os

import numpy as np

from . import _arrays, _core, _layout

COMPUTE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MAX_NDIM = _core.MAX_NDIM


def _is_half(dtype):
    """float16 or ml_dtypes.bfloat16: accepted, computed in float32."""
    return dtype == np.float16 or dtype.name == "bfloat16"


def as_array(x, name, op="attncore"):
    """Anything numpy.asarray accepts -> ndarray. torch tensors are read in
    place (see attncore._arrays); other DLPack and buffer-protocol objects
    without a copy when possible."""
    if type(x) is np.ndarray:
        return x
    if x is None:
        raise TypeError(f"{op}: {name} must be an array, got None")
    if _arrays.is_torch(x):
        return _arrays.torch_to_numpy(x, name, op)
    if isinstance(x, np.ma.MaskedArray):
        # (np.asarray drops the mask: its masked entries would count)
        raise TypeError(f"{op}: {name} is a NumPy masked array, whose mask attncore does not "
                        f"read; pass {name}.filled(...) or {name}.data, and say what to leave out "
                        f"with the function's own mask / valid_lens arguments")
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__") and not isinstance(x, (list, tuple)):
        try:
            return np.from_dlpack(x)
        except (TypeError, RuntimeError, BufferError, ValueError, AttributeError):
            pass  # let asarray try (and explain)
    try:
        return np.asarray(x)
    except Exception as exc:  # depends on the foreign object
        raise TypeError(f"{op}: {name} could not be converted to a NumPy array: {exc}") from exc


def native(a):
    """`a` in native byte order (a big-endian float32 is still float32)."""
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def float_arrays(op, native_half=False, **arrays):
    """Check that the named arrays share one supported floating dtype.

    Returns (dict of arrays, compute dtype, result dtype). float32/float64
    compute as themselves; float16/bfloat16 compute in float32: with
    native_half the arrays stay as they are (the kernels read them), else
    they are converted to float32 here. Byte-swapped arrays are converted.
    """
    out = {}
    dtypes = {}
    untyped = []   # names given as Python numbers or lists (NumPy reads them as float64)
    for name, value in arrays.items():
        a = value if type(value) is np.ndarray else as_array(value, name, op)
        a = native(a)
        dt = a.dtype
        if not hasattr(value, "dtype") and dt == np.float64:
            untyped.append(name)
        if dt not in COMPUTE_DTYPES and not _is_half(dt):
            raise TypeError(
                f"{op}: {name} must be float32 or float64 (float16/bfloat16 are computed in "
                f"float32); got dtype {dt} with shape {a.shape}")
        if a.ndim > MAX_NDIM:
            raise ValueError(f"{op}: {name} has {a.ndim} dimensions; at most {MAX_NDIM} are "
                             f"supported (shape {a.shape})")
        out[name] = a
        dtypes[name] = dt
    distinct = set(dtypes.values())
    if len(distinct) > 1:
        listing = ", ".join(f"{n}={d}" for n, d in dtypes.items())
        hint = ""
        if untyped:
            given = ", ".join(f"{n} (shape {out[n].shape})" for n in untyped)
            hint = (f"; {given} came from Python numbers or lists, which NumPy reads as float64: "
                    f"pass arrays of the inputs' dtype, with the shapes the function documents")
        raise TypeError(f"{op}: mixed dtypes ({listing}); cast them to one dtype first{hint}")
    result = next(iter(distinct))
    compute = result if result in COMPUTE_DTYPES else np.dtype(np.float32)
    if compute != result and not native_half:
        out = {n: a.astype(compute) for n, a in out.items()}
    return out, compute, result


def check_min_ndim(op, name, a, ndim, layout):
    if a.ndim < ndim:
        raise ValueError(f"{op}: {name} must have at least {ndim} dimensions {layout}; "
                         f"got shape {a.shape}")


def broadcast_batch(op, **arrays):
    """Broadcast the leading (batch) dims, those before the last three."""
    shapes = {n: a.shape[:-3] for n, a in arrays.items()}
    first = next(iter(shapes.values()))
    if all(sh == first for sh in shapes.values()):
        return first
    try:
        return tuple(np.broadcast_shapes(*shapes.values()))
    except ValueError:
        listing = ", ".join(f"{n} {arrays[n].shape}" for n in arrays)
        raise ValueError(f"{op}: the batch dimensions (all but the last three) do not "
                         f"broadcast: {listing}") from None


def flag(op, name, value):
    """A bool argument: Python or NumPy bools only."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{op}: {name} must be True or False; got {value!r}")


def causal_offset(op, is_causal, Lq, Lk):
    """is_causal -> (causal flag, offset): key j visible iff j <= i + offset."""
    if is_causal is None or (isinstance(is_causal, (bool, np.bool_)) and not is_causal):
        return 0, 0
    if isinstance(is_causal, (bool, np.bool_)) or (isinstance(is_causal, str) and is_causal == "top_left"):
        return 1, 0
    if isinstance(is_causal, str) and is_causal == "bottom_right":
        return 1, Lk - Lq
    raise ValueError(f"{op}: is_causal must be False (or None), True, 'top_left' or "
                     f"'bottom_right'; got {is_causal!r}")


def num_threads(op, value):
    if value is None:
        return _core.default_threads()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: num_threads must be a positive int or None; got {value!r}")
    if value <= 0:
        raise ValueError(f"{op}: num_threads must be >= 1; got {value}")
    return int(min(value, _core.MAX_THREADS))   # (the same bits for any count)


def real_number(op, name, value):
    """A real scalar: a Python/NumPy number, or a 0-d array or tensor of a
    real (non-bool) dtype."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a real number; got {value!r}")
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:   # an int past the float range (10**400)
            raise ValueError(f"{op}: {name} is too large for a float; got an int of "
                             f"{int(value).bit_length()} bits") from None
    if isinstance(value, np.ndarray) or _arrays.is_torch(value):
        a = as_array(value, name, op)
        if a.ndim == 0 and a.dtype != np.bool_ and (np.issubdtype(a.dtype, np.number) or _is_half(a.dtype)) \
                and not np.issubdtype(a.dtype, np.complexfloating):
            return float(a)
    raise TypeError(f"{op}: {name} must be a real number; got {value!r}")


def check_seed(op, value, name="seed", bits=64):
    """A seed: None, or an int in [0, 2**bits) (the kernels' 64-bit streams;
    bits=None: any int >= 0, for NumPy's generators)."""
    if value is None:
        return None
    bound = f"an int in [0, 2**{bits})" if bits is not None else "an int >= 0"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be {bound}; got {type(value).__name__} {value!r}")
    if value < 0 or (bits is not None and value >= 2**bits):
        raise ValueError(f"{op}: {name} must be {bound}; got {value!r}")
    return int(value)


def dropout(op, p, seed):
    """-> (threshold, seed, keep scale) for the C descriptor."""
    p = real_number(op, "dropout_p", p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{op}: dropout_p must be in [0, 1); got {p}")
    seed = check_seed(op, seed)   # (checked with or without dropout: a bad seed is a bug either way)
    if p == 0.0:
        return 0, 0, 1.0
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    threshold = int(round(p * (1 << 24)))
    if threshold == 0:  # p below 2^-25 drops nothing
        return 0, 0, 1.0
    return threshold, int(seed), 1.0 / (1.0 - p)


def mask_shape_message(op, mask_shape, full_shape):
    """The error for an attn_mask whose shape does not broadcast to the scores'
    full_shape = batch + (Hq, Lq, Lk). A 2-D mask is (Lq, Lk), as torch reads
    it; one shaped (B, Lk), a key-padding mask written the Keras /
    key_padding_mask way, gets the spelling that broadcasts."""
    full_shape = tuple(full_shape)
    text = (f"{op}: attn_mask of shape {tuple(mask_shape)} does not broadcast to the "
            f"scores' shape {full_shape} (..., Hq, Lq, Lk)")
    if len(mask_shape) == 2 and len(full_shape) >= 3 and tuple(mask_shape) == (full_shape[0], full_shape[-1]):
        pad = ", ".join(["None"] * (len(full_shape) - 2))
        text += (f"; a 2-D mask is (Lq, Lk). For one row of keys per batch element (key padding, "
                 f"(B, Lk)), write attn_mask[:, {pad}, :]")
    return text


def mask(op, attn_mask, full_shape, compute_dtype, result_dtype):
    """Validate attn_mask against full_shape = batch + (Hq, Lq, Lk).

    Returns (kind, array) with kind _core.MASK_BOOL (as uint8, True = may
    attend) or _core.MASK_ADD (additive float in the compute dtype);
    (MASK_NONE, None) for no mask. Masks broadcast like NumPy (aligned to the
    right of the scores' shape): one reading per shape.
    """
    if attn_mask is None:
        return _core.MASK_NONE, None
    m = native(as_array(attn_mask, "attn_mask", op))
    if m.ndim > len(full_shape):
        raise ValueError(f"{op}: attn_mask has shape {m.shape}, more dimensions than the "
                         f"scores {tuple(full_shape)} (..., Hq, Lq, Lk)")
    try:
        fits = np.broadcast_shapes(m.shape, full_shape) == tuple(full_shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(mask_shape_message(op, m.shape, full_shape))
    if m.dtype == np.bool_:
        return _core.MASK_BOOL, m.view(np.uint8)
    if m.dtype in COMPUTE_DTYPES or _is_half(m.dtype):
        # the query's dtype, or float32 for a 16-bit query (its compute dtype:
        # nothing is rounded away, as torch also allows)
        if m.dtype != result_dtype and not (_is_half(result_dtype) and m.dtype == compute_dtype):
            cast = cast_hint("attn_mask", result_dtype, _arrays.is_torch(attn_mask))
            raise TypeError(f"{op}: a float attn_mask must have the query's dtype {result_dtype}"
                            + (" (or float32)" if _is_half(result_dtype) else "")
                            + f"; got {m.dtype} (cast it, e.g. {cast})")
        return _core.MASK_ADD, m if m.dtype == compute_dtype else _layout.copy(m, compute_dtype)
    raise TypeError(f"{op}: attn_mask must be bool (True = may attend) or a float array added "
                    f"to the scores; got dtype {m.dtype}")


def cast_hint(name, dtype, torch=False):
    """How to cast the argument `name` to `dtype`, as code for an error message."""
    dname = np.dtype(dtype).name
    if torch:
        return f"{name}.to(torch.{dname})"
    if dname == "bfloat16":   # (NumPy has no bfloat16 of its own)
        return f"{name}.astype(ml_dtypes.bfloat16)"
    return f"{name}.astype(np.{dname})"


def broadcasts_to(shape, target):
    """Whether an array of `shape` broadcasts to `target` (right-aligned)."""
    try:
        return tuple(np.broadcast_shapes(shape, target)) == tuple(target)
    except ValueError:
        return False


def readings_agree(shape, first, second, target):
    """Whether two readings of a lengths array of `shape` -- reshaped to
    `first` or to `second`, each broadcasting to `target` -- give every
    element of `target` the same length (as for a (1, Lq) read per batch or
    per head: one per query either way). Shapes only: the values do not
    matter."""
    index = np.arange(math.prod(shape)).reshape(shape)
    a, b = (index.reshape((1,) * (len(target) - len(s)) + tuple(s)) for s in (first, second))
    # (only the axes along which either reading varies need comparing)
    varied = tuple(t if a.shape[i] != 1 or b.shape[i] != 1 else 1 for i, t in enumerate(target))
    return bool(np.array_equal(np.broadcast_to(a, varied), np.broadcast_to(b, varied)))


# set while a call's valid_lens reading was settled on the whole problem (a dask
# block's batch is a slice of it: a 3-D query's d2l reading stays the call's)
valid_lens_settled = contextvars.ContextVar("attncore_valid_lens_settled", default=False)


def valid_lens(op, value, batch_shape, Hq, Lq, Lk, query_ndim):
    """valid_lens (d2l's masked_softmax): query rows see keys j < valid_len.

    One reading per input rank (query_ndim, the query's ndim as given):
      - a scalar: every row;
      - 2-D inputs (L, D): (Lq,) one length per query row;
      - 3-D inputs (X, L, D), d2l's (batch, seq, feature): (X,) one length
        per leading index, (X, Lq) one per leading index and query row (with a 3-D
        query and key/value that have batch dims, a shape that fits both this
        reading and the batch reading below, and gives some row another length
        in each, is an error);
      - inputs with batch dims (*batch, H, L, D): batch (one length per batch
        element, shared by the heads) or batch + (Lq,) (one per query row).
    Size-1 dims broadcast. Values in [0, Lk].

    Returns an int64 array that broadcasts to batch + (Hq, Lq) (a view with
    zero strides where lengths are shared), or None.
    """
    if value is None:
        return None
    vl = native(as_array(value, "valid_lens", op))
    if vl.dtype == np.bool_ or not np.issubdtype(vl.dtype, np.integer):
        raise TypeError(f"{op}: valid_lens must be an integer array; got dtype {vl.dtype}")
    nb = len(batch_shape)
    if vl.ndim == 0:
        aligned = vl.reshape((1,) * nb + (1, 1))
        meaning = "one length for every row"
    elif query_ndim == 2:
        if vl.ndim != 1:
            raise ValueError(f"{op}: for 2-D inputs (L, D), valid_lens must be a scalar or have "
                             f"shape (Lq,) = ({Lq},); got {vl.shape}")
        aligned, meaning = vl.reshape(1, -1), f"(Lq,) = ({Lq},)"
    elif query_ndim == 3:
        if vl.ndim == 1:
            aligned, meaning = vl.reshape(-1, 1), f"d2l's (B,) = ({Hq},)"
        elif vl.ndim == 2:
            aligned, meaning = vl, f"d2l's (B, Lq) = ({Hq}, {Lq})"
        else:
            raise ValueError(
                f"{op}: for 3-D inputs (B, L, D) (d2l's layout), valid_lens must be a scalar, "
                f"(B,) = ({Hq},) or (B, Lq) = ({Hq}, {Lq}); got {vl.shape}")
    else:
        if vl.ndim == nb:
            aligned, meaning = vl.reshape(vl.shape + (1, 1)), f"batch {tuple(batch_shape)}"
        elif vl.ndim == nb + 1:
            aligned = vl.reshape(vl.shape[:-1] + (1, vl.shape[-1]))
            meaning = f"batch + (Lq,) = {tuple(batch_shape) + (Lq,)}"
        else:
            raise ValueError(
                f"{op}: valid_lens has shape {vl.shape}; for inputs with batch dims "
                f"{tuple(batch_shape)} it must be a scalar, the batch shape "
                f"{tuple(batch_shape)} (one length per batch element) or batch + (Lq,) = "
                f"{tuple(batch_shape) + (Lq,)} (one per query row)")
    target = tuple(batch_shape) + (Hq, Lq)
    if query_ndim == 3 and nb and vl.ndim in (nb, nb + 1) and not valid_lens_settled.get():
        # a 3-D query whose key/value brought batch dims: the query's leading axis
        # is their heads axis, and a shape that fits both d2l's reading (one length
        # per query leading index) and the batch reading (one per batch element),
        # with different lengths for some row, is refused, not guessed
        as_batch = vl.reshape(vl.shape + (1, 1)) if vl.ndim == nb else \
            vl.reshape(vl.shape[:-1] + (1, vl.shape[-1]))
        if broadcasts_to(aligned.shape, target) and broadcasts_to(as_batch.shape, target) and \
                not readings_agree(vl.shape, aligned.shape, as_batch.shape, target):
            raise ValueError(
                f"{op}: valid_lens of shape {vl.shape} could be read two ways: the query is 3-D "
                f"(X, Lq, D), d2l's layout, whose lengths are one per leading index X = {Hq}, but "
                f"key/value have batch dims {tuple(batch_shape)}, whose lengths are one per batch "
                f"element. Write the query with its batch dims (np.broadcast_to(query, "
                f"{tuple(batch_shape) + (Hq, Lq)} + (D,))) for lengths per batch element, or "
                f"pass attn_mask (True where key j < the length) for lengths per head")
    try:
        np.broadcast_to(aligned, target)
    except ValueError:
        raise ValueError(f"{op}: valid_lens of shape {vl.shape} (read as {meaning}) does not "
                         f"match the problem's batch/heads/queries {target}") from None
    if vl.size and (vl.min() < 0 or vl.max() > Lk):
        raise ValueError(f"{op}: valid_lens must be in [0, Lk={Lk}]; got values from "
                         f"{vl.min()} to {vl.max()}")
    return _layout.contiguous(aligned, np.int64)


def output(op, out, shape, dtype):
    """Validate a user-supplied `out=` array."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{op}: out must be a NumPy array; got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{op}: out has shape {out.shape}; expected {tuple(shape)}")
    if out.dtype != dtype:
        if out.dtype.newbyteorder("=") == dtype:   # (the kernels write native floats)
            raise TypeError(f"{op}: out has dtype {out.dtype.str}, {np.dtype(dtype).name} in the "
                            f"other byte order; out must be native ({np.dtype(dtype).str})")
        raise TypeError(f"{op}: out has dtype {out.dtype}; expected {dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{op}: out is read-only")
    if _may_overlap_itself(out):
        raise ValueError(f"{op}: out's elements may share memory (strides {out.strides} for shape "
                         f"{out.shape}: a broadcast or as_strided view); it cannot hold the "
                         f"result; pass an array with one element per result")
    return out


def _may_overlap_itself(a):
    """Whether two elements of `a` might share memory: taken axis by axis in
    order of |stride|, each stride must step past everything the smaller ones
    span (true of every C-, F- or sliced layout; a stride-0 axis fails)."""
    if a.size == 0 or a.flags.c_contiguous or a.flags.f_contiguous:
        return False
    span = a.itemsize
    for stride, n in sorted((abs(st), n) for st, n in zip(a.strides, a.shape) if n > 1):
        if stride < span:
            return True
        span += stride * (n - 1)
    return False


def window(op, value):
    """window=(left, right): keys p - left .. p + right around the query's
    position p; None (or -1) on a side leaves it unbounded. -> (left, right)
    with -1 for unbounded."""
    if value is None:
        return -1, -1
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: window must be a pair (left, right), e.g. window=({value}, 0) for "
                        f"{value} keys before the query (Mistral's sliding_window={value + 1} "
                        f"is window=({value}, 0)); got {value!r}")
    try:
        left, right = value
    except (TypeError, ValueError):
        raise TypeError(f"{op}: window must be a pair (left, right) of ints or None; got {value!r}") from None
    sides = []
    for name, side in (("left", left), ("right", right)):
        if side is None:
            sides.append(-1)
            continue
        if isinstance(side, (bool, np.bool_)) or not isinstance(side, (int, np.integer)):
            raise TypeError(f"{op}: window {name} must be an int >= 0 (or None / -1: unbounded); "
                            f"got {type(side).__name__} {side!r}")
        if side < -1:
            raise ValueError(f"{op}: window {name} must be an int >= 0 (or None / -1: unbounded); "
                             f"got {side!r}")
        # (a side past any key count is unbounded in effect; kept within C's int64)
        sides.append(min(int(side), 1 << 62))
    return tuple(sides)


def per_head(op, name, value, batch, Hq, dtype):
    """A per-head float array (ALiBi slopes, sinks) broadcast to batch + (Hq,)."""
    if value is None:
        return None
    a = native(as_array(value, name, op))
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or _is_half(a.dtype)
                                   or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{op}: {name} must be a float array; got dtype {a.dtype}")
    target = tuple(batch) + (Hq,)
    try:
        np.broadcast_to(a, target)
    except ValueError:
        raise ValueError(f"{op}: {name} of shape {a.shape} does not broadcast to (..., Hq) = "
                         f"{target}") from None
    if a.ndim > len(target):
        raise ValueError(f"{op}: {name} has shape {a.shape}; expected (Hq,) = ({Hq},) or batch + "
                         f"(Hq,) = {target}")
    if a.ndim == 0 or a.shape[-1] != Hq:
        # one value for every head (shape () or (..., 1)): the kernel reads
        # Hq values per batch row, so spread it (a copy: Hq floats per row)
        a = np.broadcast_to(a, a.shape[:-1] + (Hq,))
    return _layout.contiguous(a, dtype)


def cu_seqlens(op, name, value, total):
    """Offsets of packed sequences: 1-D ints, 0 first, non-decreasing,
    `total` last. -> int64 array."""
    a = native(as_array(value, name, op))
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{op}: {name} must be a 1-D int array of sequence offsets (0, ..., total); "
                        f"got dtype {a.dtype}")
    if a.ndim != 1 or a.size < 2:
        raise ValueError(f"{op}: {name} must be a 1-D array of at least two sequence offsets "
                         f"(0, the end of sequence 1, ..., {total}); got shape {a.shape}")
    if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{op}: {name} must end at the packed length {total}; got offsets up to "
                         f"{int(a.max())}")
    # always a copy: the kernel addresses the packed rows (the output's too)
    # through these offsets, so the array checked must be the array it reads
    # (the caller's own array, changed by another thread after the check,
    # made the kernel write out of bounds)
    a = _layout.copy(a, np.int64)
    if a[0] != 0 or a[-1] != total or (np.diff(a) < 0).any():
        raise ValueError(f"{op}: {name} must start at 0, never decrease and end at the packed length "
                         f"{total}; got {a.tolist() if a.size < 20 else a}")
    return a
