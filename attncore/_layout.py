"""One normaliser for every array the C kernels read or write.

The kernels read native-byte-order data, every element aligned to its type,
with strides that are whole numbers of items (any sign, 0 for broadcast
dimensions); the feature (last) dimension of q/k/v/out must also have unit
stride. Masks may have any stride in their last dimension (they are read
through it). Anything else is copied once here -- misaligned views (e.g.
``np.frombuffer(..., offset=1)`` or a field of a packed structured array) and
byte-swapped arrays included, so that no scalar read in C is misaligned and
no value is misread.
"""
import math

import numpy as np


def for_kernel(x, unit_last=True):
    """Return `x` if the kernels can use it as it is, else a native, aligned,
    contiguous copy. `unit_last`: the last dimension must have unit stride
    (everything but masks and valid lengths)."""
    if not x.dtype.isnative:
        return copy(x, x.dtype.newbyteorder("="))
    # a new buffer, not np.ascontiguousarray: that returns a contiguous but
    # misaligned array as it is
    if not x.flags.aligned:
        return copy(x)
    item = x.itemsize
    if unit_last and x.ndim and x.shape[-1] > 1 and x.strides[-1] != item:
        return copy(x)
    for s in x.strides:
        if s % item:
            return copy(x)
    return x


# Key/value rows spread out in memory -- heads interleaved, e.g. a (B, L, H, D)
# buffer read as (B, H, L, D), which is how transformers' models pass K/V --
# are read again by every panel of query rows, and once one head's rows span
# megabytes every re-read pays TLB and cache-set misses (measured: causal
# 1x8x8192x64 from such views 30% slower than from dense ones). A dense copy
# costs one pass over K/V and is repaid when every row is read by many query
# rows; a decode step (one query row per head) reads them once and keeps them
# in place. The kernels give the same bits either way.
SPREAD_MIN_ITEMS = 1 << 20   # one matrix's span (rows x row stride), in items
SPREAD_MIN_REUSE = 64        # query rows reading each key/value row


def is_spread(shape, strides_items, reuse):
    """Whether a (..., L, D) key/value matrix with these strides (in items)
    and `reuse` query rows per row is worth a dense copy (see above). Shared
    with the Cython fast path, which declines such calls."""
    if len(shape) < 2 or reuse < SPREAD_MIN_REUSE:
        return False
    L, D, row = shape[-2], shape[-1], abs(strides_items[-2])
    return row >= 2 * max(D, 1) and L * row >= SPREAD_MIN_ITEMS


def dense_if_spread(x, reuse):
    """x (kernel-ready, (..., L, D)) itself, or a dense copy when its rows
    are spread out and read by `reuse` query rows each (is_spread).
    Broadcast (stride-0) dimensions stay broadcast: the copy holds the
    distinct data once, not once per batch or head."""
    if not is_spread(x.shape, [s // x.itemsize for s in x.strides], reuse):
        return x
    distinct = x[tuple(slice(0, 1) if s == 0 else slice(None) for s in x.strides)]
    return np.broadcast_to(copy(distinct), x.shape)


def contiguous(x, dtype=None):
    """np.ascontiguousarray(x, dtype) that is also native and aligned (the
    former alone returns a contiguous misaligned array as it is); a copy
    comes from copy()."""
    x = np.asarray(x)
    if (dtype is not None and x.dtype != np.dtype(dtype)) or not x.flags.c_contiguous:
        x = copy(x, dtype)
    return for_kernel(x)


def copy(x, dtype=None):
    """A C-contiguous copy of x (cast to dtype) in a buffer from empty():
    the copies the kernels read come from the same allocator as what they
    write, so that tests can place both next to unreadable pages."""
    x = np.asarray(x)
    out = empty(x.shape, x.dtype if dtype is None else dtype)
    out[...] = x
    return out


def is_kernel_ready(x, unit_last=True):
    return for_kernel(x, unit_last) is x


def empty(shape, dtype):
    """Every buffer the kernels write that attncore allocates (outputs,
    weights, lse, projections), and every copy they read (copy()), comes
    from here: one place for tests to substitute an allocator that puts
    buffers next to unreadable pages. A shape past the address space (say
    broadcast batch dims whose product overflows) or past the memory is
    an error that names the shape (NumPy's own names neither)."""
    try:
        return np.empty(shape, dtype)
    except ValueError as exc:   # ("array is too big", "maximum supported dimension")
        raise ValueError(f"attncore: an array of shape {tuple(shape)} ({np.dtype(dtype).name}) "
                         f"cannot be made: {exc}") from None
    except MemoryError:
        gib = math.prod(shape) * np.dtype(dtype).itemsize / 2**30
        raise MemoryError(f"attncore: an array of shape {tuple(shape)} ({np.dtype(dtype).name}, "
                          f"{gib:.3g} GiB) is more than this machine can allocate") from None
