"""Which arrays the kernels can read in place.

The C kernels take any strides except in the feature (last) dimension, which
must be contiguous, and every stride must be a whole number of items; the
Cython layer (attncore/_core.pyx) reads the strides through the buffer
protocol. Anything else is copied once here.
"""
import numpy as np


def kernel_readable(x):
    """Return `x`, or a contiguous copy if the kernels cannot read it in place."""
    item = x.itemsize
    if x.ndim and x.shape[-1] > 1 and x.strides[-1] != item:
        return np.ascontiguousarray(x)
    for s in x.strides:
        if s % item:
            return np.ascontiguousarray(x)
    return x
