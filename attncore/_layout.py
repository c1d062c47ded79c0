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
import numpy as np


def for_kernel(x, unit_last=True):
    """Return `x` if the kernels can use it as it is, else a native, aligned,
    contiguous copy. `unit_last`: the last dimension must have unit stride
    (everything but masks and valid lengths)."""
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    # x.copy(), not np.ascontiguousarray: that returns a contiguous but
    # misaligned array as it is
    if not x.flags.aligned:
        return x.copy(order="C")
    item = x.itemsize
    if unit_last and x.ndim and x.shape[-1] > 1 and x.strides[-1] != item:
        return x.copy(order="C")
    for s in x.strides:
        if s % item:
            return x.copy(order="C")
    return x


def contiguous(x, dtype=None):
    """np.ascontiguousarray(x, dtype) that is also native and aligned (the
    former alone returns a contiguous misaligned array as it is)."""
    return for_kernel(np.ascontiguousarray(x, dtype=dtype))


def is_kernel_ready(x, unit_last=True):
    return for_kernel(x, unit_last) is x


def empty(shape, dtype):
    """Every buffer the kernels write that attncore allocates (outputs,
    weights, lse, projections) comes from here: one place for tests to
    substitute an allocator that puts buffers next to unreadable pages."""
    return np.empty(shape, dtype)
