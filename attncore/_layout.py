"""Strided NumPy arrays -> the (address, batch offsets, strides) layouts the
C descriptors take. No data is copied unless the kernels cannot read the
array as it is (feature dimension not contiguous, or a stride or address that
is not a multiple of the item size)."""
import numpy as np


def kernel_readable(x):
    """Return `x`, or a contiguous copy if the kernels cannot read it in place."""
    item = x.itemsize
    if x.ndim and x.shape[-1] > 1 and x.strides[-1] != item:
        return np.ascontiguousarray(x)
    if any(s % item for s in x.strides) or address(x) % item:
        return np.ascontiguousarray(x)
    return x


def address(x):
    return x.__array_interface__["data"][0]


def batch_offsets(x, batch_shape, core_ndim):
    """Element offset of each flattened batch index of `x` broadcast to
    `batch_shape` (leading dims), as a contiguous int64 array."""
    item = x.itemsize
    view = np.broadcast_to(x, tuple(batch_shape) + x.shape[x.ndim - core_ndim:])
    offsets = np.zeros(batch_shape, dtype=np.int64)
    for axis, (n, stride) in enumerate(zip(batch_shape, view.strides[:len(batch_shape)])):
        shape = [1] * len(batch_shape)
        shape[axis] = n
        offsets = offsets + (np.arange(n, dtype=np.int64) * (stride // item)).reshape(shape)
    return np.ascontiguousarray(offsets.reshape(-1)), view


def tensor(x, batch_shape, core_ndim=3):
    """(address, batch offsets, *strides of the core dims but the last)."""
    offsets, view = batch_offsets(x, batch_shape, core_ndim)
    item = x.itemsize
    strides = tuple(s // item for s in view.strides[len(batch_shape):len(batch_shape) + core_ndim - 1])
    return (address(x), offsets) + strides


def mask_tensor(mask, full_shape):
    """Layout of a mask broadcast to `full_shape` = batch + (Hq, Lq, Lk):
    (address, batch offsets, head stride, query stride, key stride)."""
    view = np.broadcast_to(mask, full_shape)
    batch_shape = full_shape[:-3]
    offsets, _ = batch_offsets(view, batch_shape, 3)
    item = mask.itemsize
    sh, si, sj = (s // item for s in view.strides[-3:])
    return (address(mask), offsets, sh, si, sj)
