"""Arrays placed next to unreadable pages, for memory-safety tests.

guarded(shape, dtype, where="end") returns an array whose last byte is the
last byte before a PROT_NONE page; where="start" puts its first byte right
after one. A kernel that reads or writes one element past either end of the
array gets SIGSEGV instead of a silently wrong (or lucky) answer. The mapping
lives as long as the array (np.frombuffer keeps the mmap object alive).

every_kernel_array_guarded() checks that a block handed the kernel entry
points (attncore._core) nothing but guarded arrays: a Python-side copy
(a cast, a concatenation) made with NumPy's allocator would escape the
guards and leave the sweep guarding nothing for that array.

guarded_allocations() swaps attncore's output allocators (attncore._layout.
empty: outputs, weights, lse, projections, KV-cache buffers; and the fast
paths' outputs, _core.set_output_allocator) for guarded ones, alternating
the placement.
"""
import contextlib
import ctypes
import itertools
import mmap

import numpy as np

from attncore import _core, _layout

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PROT_NONE = 0


def guarded(shape, dtype, where="end", fill=None):
    """An uninitialised (or `fill`ed) array bordering a PROT_NONE page."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in np.atleast_1d(shape)) if np.ndim(shape) else (int(shape),)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    pages = (nbytes + PAGE - 1) // PAGE + 2
    mm = mmap.mmap(-1, pages * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    if where == "end":
        guard, start = (pages - 1) * PAGE, (pages - 1) * PAGE - nbytes
    elif where == "start":
        guard, start = 0, PAGE
    else:
        raise ValueError(where)
    if _libc.mprotect(base + guard, PAGE, PROT_NONE) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    a = np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=start).view(dtype).reshape(shape)
    if fill is not None:
        a[...] = fill
    return a


def is_guarded(a):
    """Whether the array's memory is one of guarded()'s mappings."""
    while isinstance(a, np.ndarray):
        a = a.base
    return isinstance(a, memoryview) and isinstance(a.obj, mmap.mmap)


def guarded_copy(x, where="end"):
    """A guarded, C-contiguous copy of x (same dtype)."""
    x = np.asarray(x)
    a = guarded(x.shape, x.dtype, where)
    a[...] = x
    return a


@contextlib.contextmanager
def guarded_allocations():
    """Every buffer attncore allocates for the kernels borders a guard page
    (alternately after its end and before its start)."""
    places = itertools.cycle(["end", "start"])

    def empty(shape, dtype):
        return guarded(shape, dtype, next(places))

    original, original_fast = _layout.empty, _core.set_output_allocator(empty)
    _layout.empty = empty
    try:
        yield
    finally:
        _layout.empty = original
        _core.set_output_allocator(original_fast)


# the kernel entry points of attncore._core that take arrays (the fast paths
# read the caller's arrays; sdpa and the others also what Python prepared)
KERNEL_ENTRIES = ("sdpa", "sdpa_fast", "sdpa_fast_torch", "kv_attend_fast", "softmax",
                  "kernel_regression", "linear", "bool_mask_lengths", "vision")


def _arrays_in(values):
    for v in values:
        if isinstance(v, np.ndarray):
            yield v
        elif isinstance(v, (tuple, list)):
            yield from _arrays_in(v)
        elif isinstance(v, dict):
            yield from _arrays_in(v.values())


@contextlib.contextmanager
def every_kernel_array_guarded():
    """Inside: record every non-empty ndarray argument of the kernel entry
    points; on leaving, assert each is one of guarded()'s mappings (a view
    of one included). Yields the list of (entry, shape, dtype) seen."""
    seen, unguarded, originals = [], [], {}

    def spy(name, real):
        def call(*args, **kwargs):
            for a in _arrays_in((args, kwargs)):
                if a.size:
                    seen.append((name, a.shape, a.dtype))
                    if not is_guarded(a):
                        unguarded.append(seen[-1])
            return real(*args, **kwargs)
        return call

    for name in KERNEL_ENTRIES:
        originals[name] = getattr(_core, name)
        setattr(_core, name, spy(name, originals[name]))
    try:
        yield seen
    finally:
        for name, real in originals.items():
            setattr(_core, name, real)
    assert seen, "no kernel entry point was called"
    assert not unguarded, f"arrays handed to the kernels without a guard page: {unguarded}"
