"""Argument checks and normalisation shared by the public functions.

Every error names the argument and the shapes or values involved, and is a
TypeError (wrong kind of thing: dtype, type) or a ValueError (wrong shape or
value). Nothing here touches pointers.
"""
import numbers
import os

import numpy as np

from . import _core

COMPUTE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _is_half(dtype):
    """float16 or ml_dtypes.bfloat16: accepted, computed in float32."""
    return dtype == np.float16 or dtype.name == "bfloat16"


def as_array(x, name):
    """Anything numpy.asarray accepts (DLPack and buffer-protocol objects
    without a copy when possible) -> ndarray."""
    if isinstance(x, np.ndarray):
        return x
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    if hasattr(x, "__dlpack__") and not isinstance(x, (list, tuple)):
        try:
            return np.from_dlpack(x)
        except (TypeError, RuntimeError, BufferError, ValueError, AttributeError):
            pass  # e.g. a tensor that requires grad: let asarray explain
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - depends on the foreign object
        raise TypeError(f"{name} could not be converted to a NumPy array: {exc}") from exc


def float_arrays(op, **arrays):
    """Check that the named arrays share one supported floating dtype.

    Returns (dict of arrays in the compute dtype, compute dtype, result dtype).
    float32/float64 compute as themselves; float16/bfloat16 compute in float32
    and results are cast back.
    """
    out = {}
    dtypes = {}
    for name, value in arrays.items():
        a = value if type(value) is np.ndarray else as_array(value, name)
        dt = a.dtype
        if dt not in COMPUTE_DTYPES and not _is_half(dt):
            raise TypeError(
                f"{op}: {name} must be float32 or float64 (float16/bfloat16 are computed in "
                f"float32); got dtype {dt} with shape {a.shape}")
        out[name] = a
        dtypes[name] = dt
    distinct = set(dtypes.values())
    if len(distinct) > 1:
        listing = ", ".join(f"{n}={d}" for n, d in dtypes.items())
        raise TypeError(f"{op}: mixed dtypes ({listing}); cast them to one dtype first")
    result = next(iter(distinct))
    compute = result if result in COMPUTE_DTYPES else np.dtype(np.float32)
    if compute != result:
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


def causal_offset(op, is_causal, Lq, Lk):
    """is_causal -> (causal flag, offset): key j visible iff j <= i + offset."""
    if is_causal is None or is_causal is False:
        return 0, 0
    if is_causal is True or (isinstance(is_causal, str) and is_causal == "top_left"):
        return 1, 0
    if isinstance(is_causal, str) and is_causal == "bottom_right":
        return 1, Lk - Lq
    raise ValueError(f"{op}: is_causal must be False, True, 'top_left' or 'bottom_right'; "
                     f"got {is_causal!r}")


def num_threads(op, value):
    if value is None:
        return _core.default_threads()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: num_threads must be a positive int or None; got {value!r}")
    if value <= 0:
        raise ValueError(f"{op}: num_threads must be >= 1; got {value}")
    return int(min(value, 1 << 16))


def real_number(op, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number; got {value!r}")
    return float(value)


def dropout(op, p, seed):
    """-> (threshold, seed, keep scale) for the C descriptor."""
    p = real_number(op, "dropout_p", p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{op}: dropout_p must be in [0, 1); got {p}")
    if p == 0.0:
        return 0, 0, 1.0
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise ValueError(f"{op}: seed must be an int in [0, 2**64); got {seed!r}")
    threshold = int(round(p * (1 << 24)))
    if threshold == 0:  # p below 2^-25 drops nothing
        return 0, 0, 1.0
    return threshold, int(seed), 1.0 / (1.0 - p)


def mask(op, attn_mask, full_shape, compute_dtype, result_dtype):
    """Validate attn_mask against full_shape = batch + (Hq, Lq, Lk).

    Returns (kind, array) with kind 1 = bool (as uint8, True = may attend) or
    2 = additive float in the compute dtype; (0, None) for no mask.
    """
    if attn_mask is None:
        return 0, None
    m = as_array(attn_mask, "attn_mask")
    if m.ndim > len(full_shape):
        raise ValueError(f"{op}: attn_mask has shape {m.shape}, more dimensions than the "
                         f"scores {full_shape}")
    try:
        fits = np.broadcast_shapes(m.shape, full_shape) == tuple(full_shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{op}: attn_mask of shape {m.shape} does not broadcast to the "
                         f"scores' shape {tuple(full_shape)} (..., Hq, Lq, Lk)")
    if m.dtype == np.bool_:
        return 1, m.view(np.uint8)
    if m.dtype in COMPUTE_DTYPES or _is_half(m.dtype):
        if m.dtype != result_dtype:
            raise TypeError(f"{op}: a float attn_mask must have the query's dtype {result_dtype}; "
                            f"got {m.dtype} (cast it, e.g. mask.astype(np.{result_dtype}))")
        return 2, m.astype(compute_dtype, copy=False)
    raise TypeError(f"{op}: attn_mask must be bool (True = may attend) or a float array added "
                    f"to the scores; got dtype {m.dtype}")


def valid_lens(op, value, batch_shape, Lq, Lk):
    """valid_lens (d2l masked_softmax): batch_shape (one length per batch
    element) or batch_shape + (Lq,) (one per query row), values in [0, Lk].

    Returns (int64 array of shape batch + (Lq,) or batch, per_row flag) or None.
    """
    if value is None:
        return None
    vl = as_array(value, "valid_lens")
    if vl.dtype == np.bool_ or not np.issubdtype(vl.dtype, np.integer):
        raise TypeError(f"{op}: valid_lens must be an integer array; got dtype {vl.dtype}")
    nb = len(batch_shape)
    if vl.ndim <= nb:
        target, per_row = tuple(batch_shape), False
    elif vl.ndim == nb + 1:
        target, per_row = tuple(batch_shape) + (Lq,), True
    else:
        raise ValueError(f"{op}: valid_lens has shape {vl.shape}; expected the batch shape "
                         f"{tuple(batch_shape)} or batch + (Lq,) = {tuple(batch_shape) + (Lq,)}")
    try:
        vl = np.broadcast_to(vl, target)
    except ValueError:
        raise ValueError(f"{op}: valid_lens of shape {vl.shape} does not broadcast to "
                         f"{target}") from None
    if vl.size and (vl.min() < 0 or vl.max() > Lk):
        raise ValueError(f"{op}: valid_lens must be in [0, Lk={Lk}]; got values from "
                         f"{vl.min()} to {vl.max()}")
    return np.ascontiguousarray(vl, dtype=np.int64), per_row


def output(op, out, shape, dtype):
    """Validate a user-supplied `out=` array."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{op}: out must be a NumPy array; got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{op}: out has shape {out.shape}; expected {tuple(shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{op}: out has dtype {out.dtype}; expected {dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{op}: out is read-only")
    return out
