"""KVCache: preallocated key/value buffers for token-by-token decoding, in
float32/float64 or in a compact storage format (bfloat16, float16, or int8
with a scale per token and head) that the decode kernels read directly.
"""
from __future__ import annotations

import functools
import math
import os
import sys
import threading
import weakref
from typing import Any, Callable, List, Optional, Tuple, TypeVar, cast

import numpy as np

from . import _arrays, _config, _core, _engine
from . import _validate as V
from ._types import ArrayLike, Result

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _locked(method: _Method) -> _Method:
    """Run a KVCache method under the cache's lock: a cache shared between
    threads changes one call at a time (two appends, or an append and a
    reset, interleaved left the length past the buffers' capacity, and the
    next attend read past them)."""
    @functools.wraps(method)
    def call(self: "KVCache", *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)
    return cast(_Method, call)


# Every cache, for the fork handler: a child forked while another thread held
# a cache's lock would wait on it forever (the holder was not copied)
_CACHES: "weakref.WeakSet[KVCache]" = weakref.WeakSet()


def _new_locks_in_child() -> None:
    for cache in list(_CACHES):
        cache._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_in_child)


# storage format -> (element dtype of the buffers, kernel entry for float32 queries)
_STORAGE = {
    "float32": (np.dtype(np.float32), None),
    "float64": (np.dtype(np.float64), None),
    "bfloat16": (np.dtype(np.uint16), _core.IO_F32_KVBF16),   # bfloat16 bit patterns
    "float16": (np.dtype(np.float16), _core.IO_F32_KVF16),
    "int8": (np.dtype(np.int8), _core.IO_F32_KVI8),           # with float32 scales
}


def _storage_name(dtype):
    """'float32' | 'float64' | 'bfloat16' | 'float16' | 'int8', or an error."""
    if dtype is None:   # (np.dtype(None) is float64; torch's None is its default)
        raise TypeError("KVCache: dtype=None could mean float64 (NumPy) or the default float32 "
                        "(torch); pass dtype=np.float32, np.float64, 'bfloat16', 'float16' or 'int8'")
    name = str(dtype).replace("torch.", "", 1) if type(dtype).__module__ == "torch" else dtype
    if not (isinstance(name, str) and name in _STORAGE):
        try:   # NumPy's spellings: np.float16, "f4", "half", np.dtype("float64"), ...
            name = np.dtype(name).name
        except TypeError:
            name = str(dtype)
    if name not in _STORAGE:
        raise TypeError(f"KVCache: dtype must be float32, float64, 'bfloat16', 'float16' or 'int8'; "
                        f"got {dtype!r}")
    return name


def to_bfloat16_bits(x):
    """float32 values -> bfloat16 bit patterns (uint16), round to nearest even;
    NaN stays a quiet NaN."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    nan = (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    out = rounded.astype(np.uint16)
    out[nan] = ((b[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return out


def from_bfloat16_bits(bits):
    """bfloat16 bit patterns (uint16) -> float32 (exact)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def quantize_int8(x):
    """Symmetric int8 quantization with one scale per row of the last axis:
    x ~ q * scale, scale = max|x| / 127 (0 for an all-zero row, so that
    every row's scale * 127 is its own max |x|: the int16 weights of the
    VNNI decode are rounded against it, docs/numerics.md (10)), q in
    [-127, 127] rounded to nearest. A row with a NaN or infinite value gets a
    NaN scale (and q = 0), so the NaN reaches every score that uses it.
    Returns (q int8, scale float32 with x's shape minus the last axis)."""
    x = np.asarray(x, np.float32)
    if np.isfinite(x).all():   # the usual case, in fewer passes (same numbers)
        top = np.abs(x).max(axis=-1, initial=0.0)
        scale = (top / 127.0).astype(np.float32)
        q = np.rint(x / np.where(scale > 0, scale, 1)[..., None])
        return np.clip(q, -127, 127, out=q).astype(np.int8), scale
    finite = np.isfinite(x).all(axis=-1)
    top = np.where(finite, np.abs(np.where(np.isfinite(x), x, 0)).max(axis=-1, initial=0.0), 0)
    scale = (top / 127.0).astype(np.float32)
    q = np.rint(np.where(np.isfinite(x), x, 0) / np.where(scale > 0, scale, 1)[..., None])
    q = np.clip(q, -127, 127).astype(np.int8)
    scale = np.where(finite, scale, np.float32(np.nan)).astype(np.float32)
    q[~finite] = 0
    return q, scale


class KVCache:
    """Preallocated per-layer key/value buffers for incremental decoding.

    Keys and values live in (B, H, capacity, Dh) buffers; the first
    ``len(cache)`` positions are valid. ``MultiHeadAttention(...,
    kv_cache=cache)`` appends the new keys/values and attends over every
    cached position; ``cache.attend(query)`` does the attention step alone.

    Parameters
    ----------
    max_len : int
        Capacity in positions. Appending past it raises ValueError, unless
        ``grow=True``, in which case the buffers double in size as needed.
    num_heads : int
        Key/value heads (num_kv_heads of the attention layer).
    head_dim : int
        Size of one head.
    batch_size : int, optional
        Allocate now for this batch size; otherwise at the first append. An
        empty cache (new, reset or truncated to 0) takes any batch size.
    dtype : float32 (default), float64, "bfloat16", "float16" or "int8"
        Storage. The compact ones hold half (16-bit) or a quarter (int8, plus
        a float32 scale per position and head) of the bytes, which is what a
        decode step reads: the kernels read them directly (no float copy).
        Queries and results are float32. int8 is symmetric per (batch, head,
        position): k ~ q_int8 * max|k| / 127; its error against a float32
        cache is in docs/numerics.md (10).
    grow : bool
        Double the capacity instead of failing when full.

    A cache may be shared between threads: its methods take the cache's
    lock, so appends, attends, truncates and resets from several threads run
    one at a time, each on a consistent cache (their order is the threads').

    Example
    -------
    >>> import numpy as np, attncore
    >>> cache = attncore.KVCache(max_len=16, num_heads=2, head_dim=4, dtype="int8")
    >>> k = np.ones((1, 2, 3, 4), np.float32)
    >>> cache.append(k, k)
    >>> len(cache), cache.keys.shape
    (3, (1, 2, 3, 4))
    >>> cache.attend(np.ones((1, 4, 1, 4), np.float32)).shape   # 4 query heads, GQA
    (1, 4, 1, 4)
    """

    def __init__(self, max_len: int, num_heads: int, head_dim: int, *,
                 batch_size: Optional[int] = None, dtype: Any = np.float32,
                 grow: bool = False) -> None:
        sizes: List[Tuple[str, Any]] = [("max_len", max_len), ("num_heads", num_heads),
                                        ("head_dim", head_dim)]
        if batch_size is not None:
            sizes.append(("batch_size", batch_size))
        for name, value in sizes:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"KVCache: {name} must be a positive int; got "
                                f"{type(value).__name__} {value!r}")
            if value < 1:
                raise ValueError(f"KVCache: {name} must be a positive int; got {value!r}")
        if not isinstance(grow, (bool, np.bool_)):
            raise TypeError(f"KVCache: grow must be a bool; got {grow!r}")
        self.storage = _storage_name(dtype)
        self._element, self._entry = _STORAGE[self.storage]
        # the dtype of what goes in and comes out (keys/values, queries, results)
        self.dtype = np.dtype(np.float64 if self.storage == "float64" else np.float32)
        self.max_len = int(max_len)
        self.num_heads = int(num_heads)
        self.head_dim = int(head_dim)
        self.grow = bool(grow)
        self._lock = threading.RLock()   # (reentrant: an input's __array__ may use the cache)
        _CACHES.add(self)
        self._length = 0
        self._k: Optional[np.ndarray] = None
        self._v: Optional[np.ndarray] = None
        self._ks: Optional[np.ndarray] = None   # int8: scales (B, H, capacity)
        self._vs: Optional[np.ndarray] = None
        if batch_size is not None:
            self._allocate(int(batch_size), self.max_len)

    def _allocate(self, batch, capacity):
        from . import _layout

        shape = (batch, self.num_heads, capacity, self.head_dim)
        # (NumPy's own errors name neither the cache nor max_len)
        scale_bytes = 4 / self.head_dim if self.storage == "int8" else 0
        nbytes = 2 * math.prod(shape) * (self._element.itemsize + scale_bytes)
        sizes = (f"KVCache: {capacity} positions x batch {batch} x {self.num_heads} heads x "
                 f"head_dim {self.head_dim} in {self.storage} need")
        cause = ("use a smaller max_len or batch" if capacity <= self.max_len else
                 f"the cache grows (doubling from max_len={self.max_len}) to hold "
                 f"{self._length} + the appended positions; append fewer positions, or use a "
                 f"smaller batch")
        if nbytes > sys.maxsize:   # past the address space
            raise ValueError(f"{sizes} {nbytes / 2**40:.3g} TiB; {cause}")
        try:
            k, v = _layout.empty(shape, self._element), _layout.empty(shape, self._element)
            ks = vs = None
            if self.storage == "int8":
                ks, vs = (_layout.empty(shape[:3], np.float32) for _ in range(2))
        except MemoryError:
            raise MemoryError(f"{sizes} {nbytes / 2**30:.3g} GiB, more than this machine can "
                              f"allocate; {cause}"
                              + ("" if self.grow else " (or grow=True to allocate as the cache "
                                                      "fills)")) from None
        n = self._length
        if self._k is not None and n:
            k[:, :, :n], v[:, :, :n] = self._k[:, :, :n], self._v[:, :, :n]
            if ks is not None:
                ks[:, :, :n], vs[:, :, :n] = self._ks[:, :, :n], self._vs[:, :, :n]
        self._k, self._v, self._ks, self._vs = k, v, ks, vs

    def __len__(self) -> int:
        return self._length

    @_locked
    def _state(self):
        """What append changes (references only: append writes past the
        length or into new buffers), for _restore after a failed step."""
        return self._k, self._v, self._ks, self._vs, self._length

    @_locked
    def _restore(self, state) -> None:
        """The cache as _state() saw it: a decode step that raised after its
        append takes its tokens (and any grown or re-batched buffers) back."""
        self._k, self._v, self._ks, self._vs, self._length = state

    @property
    def capacity(self) -> int:
        """The positions the buffers hold now: ``max_len`` until a ``grow=True``
        cache doubles them for a longer append.

        >>> import numpy as np, attncore
        >>> cache = attncore.KVCache(max_len=4, num_heads=1, head_dim=2, grow=True)
        >>> cache.append(np.ones((1, 1, 6, 2), np.float32), np.ones((1, 1, 6, 2), np.float32))
        >>> cache.capacity, len(cache)
        (8, 6)
        """
        k = self._k   # (read once: a reset() in another thread may drop it)
        return k.shape[2] if k is not None else self.max_len

    def _decoded(self, data, scale):
        n = self._length
        if self.storage in ("float32", "float64"):
            return data[:, :, :n]                              # a view
        if self.storage == "bfloat16":
            return from_bfloat16_bits(data[:, :, :n])
        if self.storage == "float16":
            return data[:, :, :n].astype(np.float32)
        return data[:, :, :n].astype(np.float32) * scale[:, :, :n, None]

    @property
    @_locked
    def keys(self) -> Optional[np.ndarray]:
        """(B, H, len, Dh) cached keys: a view for float32/float64 storage, a
        decoded float32 copy for the compact formats (None before the first
        append).

        >>> import numpy as np, attncore
        >>> cache = attncore.KVCache(max_len=8, num_heads=1, head_dim=2, dtype="bfloat16")
        >>> k = np.array([[[[1.0, 1 / 3]]]], np.float32)
        >>> cache.append(k, k)
        >>> cache.keys.shape, cache.keys.dtype
        ((1, 1, 1, 2), dtype('float32'))
        >>> cache.keys[0, 0, 0].tolist()    # stored rounded to bfloat16
        [1.0, 0.333984375]
        """
        return self._decoded(self._k, self._ks) if self._k is not None else None

    @property
    @_locked
    def values(self) -> Optional[np.ndarray]:
        """(B, H, len, Dh) cached values (see keys).

        >>> import numpy as np, attncore
        >>> cache = attncore.KVCache(max_len=8, num_heads=1, head_dim=2, dtype="int8")
        >>> cache.append(np.zeros((1, 1, 1, 2), np.float32), np.array([[[[2.0, -1.0]]]], np.float32))
        >>> cache.values[0, 0, 0].tolist()   # int8, scale 2/127: -1 is stored as -64/127 * 2
        [2.0, -1.0078740119934082]
        """
        return self._decoded(self._v, self._vs) if self._v is not None else None

    def append(self, key: ArrayLike, value: ArrayLike) -> None:
        """Append keys/values of shape (B, H, T, Dh) (T new positions), in the
        cache's dtype (float32 for the compact formats, which store them
        rounded or quantized).

        The first append (and the first after :meth:`reset`) sets the batch
        size B; later ones must match it. Past ``max_len`` positions a
        ``grow=True`` cache doubles its buffers, another raises ValueError.

        >>> import numpy as np, attncore
        >>> cache = attncore.KVCache(max_len=16, num_heads=2, head_dim=4)
        >>> cache.append(np.zeros((1, 2, 5, 4), np.float32), np.zeros((1, 2, 5, 4), np.float32))
        >>> cache.append(np.ones((1, 2, 1, 4), np.float32), np.ones((1, 2, 1, 4), np.float32))
        >>> len(cache), cache.keys.shape
        (6, (1, 2, 6, 4))
        """
        with self._lock:   # (inline, not @_locked: this is the decode step's hot path)
            k: np.ndarray = V.native(V.as_array(key, "key", "KVCache.append"))
            v: np.ndarray = V.native(V.as_array(value, "value", "KVCache.append"))
            expect = f"(B, {self.num_heads}, T, {self.head_dim})"
            for name, a in (("key", k), ("value", v)):
                if a.ndim != 4 or a.shape[1] != self.num_heads or a.shape[3] != self.head_dim:
                    raise ValueError(f"KVCache.append: {name} must have shape {expect}; got {a.shape}")
                if a.dtype != self.dtype:
                    raise TypeError(f"KVCache.append: {name} has dtype {a.dtype}; the cache takes "
                                    f"{self.dtype} (stored as {self.storage})")
            if k.shape != v.shape:
                raise ValueError(f"KVCache.append: key {k.shape} and value {v.shape} differ")
            batch, steps = k.shape[0], k.shape[2]
            # an empty cache (new, or reset) takes any batch size
            held = None if self._k is None else self._k.shape[0]
            new_batch = held is None or (self._length == 0 and batch != held)
            if not new_batch and batch != held:
                raise ValueError(f"KVCache.append: batch size {batch} differs from the cache's "
                                 f"{held} (reset() the cache to start a new batch)")
            need = self._length + steps
            if need > self.max_len and not self.grow:   # (only a grow=True cache holds more)
                # refused before anything is allocated: a failed append leaves the cache as it was
                raise ValueError(f"KVCache is full: {self._length} + {steps} positions exceed "
                                 f"max_len={self.max_len} (use a larger max_len or grow=True)")
            # one allocation, of the final size: a refused one (MemoryError) leaves
            # the cache as it was
            held_capacity = 0 if new_batch or self._k is None else int(self._k.shape[2])
            capacity = self.max_len if new_batch else held_capacity
            while capacity < need:
                capacity *= 2
            if capacity != held_capacity:
                self._allocate(batch, capacity)
            assert self._k is not None and self._v is not None
            at = slice(self._length, need)
            for data, scale, x in ((self._k, self._ks, k), (self._v, self._vs, v)):
                if self.storage in ("float32", "float64", "float16"):
                    data[:, :, at] = x
                elif self.storage == "bfloat16":
                    data[:, :, at] = to_bfloat16_bits(x)
                else:
                    assert scale is not None   # int8 storage always has its scales
                    data[:, :, at], scale[:, :, at] = quantize_int8(x)
            self._length = need

    def attend(self, query: ArrayLike, *, is_causal: Any = "bottom_right", scale: Any = None,
               attn_mask: Any = None, valid_lens: Any = None, dropout_p: float = 0.0,
               seed: Optional[int] = None, num_threads: Optional[int] = None,
               out: Optional[np.ndarray] = None, return_weights: bool = False,
               return_lse: bool = False, window: Any = None, alibi_slopes: Any = None,
               softcap: Any = None, sinks: Any = None) -> Result:
        """Attention of `query` over every cached position, reading the storage
        directly (no decoded copy): ``scaled_dot_product_attention(query,
        keys, values, enable_gqa=True, ...)`` with the queries as the newest
        positions (bottom-right causal alignment by default).

        query : (B, Hq, Lq, Dh) in the cache's dtype (float32 for the compact
        formats), Hq a multiple of the cache's heads. Other arguments --
        masks, windows, ALiBi, soft-capping, sinks -- as in
        :func:`attncore.scaled_dot_product_attention`. Returns (B, Hq, Lq, Dh)
        (and weights / lse as asked): torch tensors for a tensor query. An
        empty cache (nothing appended since it was made, reset or truncated
        to 0) is attention over no key, as SDPA with Lk = 0: zeros (lse
        -inf), for a query of any batch size.

        Example
        -------
        >>> import numpy as np, attncore
        >>> cache = attncore.KVCache(max_len=8, num_heads=1, head_dim=2, dtype="bfloat16")
        >>> cache.append(np.ones((1, 1, 3, 2), np.float32), np.full((1, 1, 3, 2), 2.0, np.float32))
        >>> cache.attend(np.ones((1, 1, 1, 2), np.float32))
        array([[[[2., 2.]]]], dtype=float32)
        """
        with self._lock:   # (inline, not @_locked: this is the decode step's hot path)
            op = "KVCache.attend"
            if _arrays.is_torch(query):   # tensors in, tensors out (over the same memory)
                res = self.attend(_arrays.torch_to_numpy(query, "query", op), is_causal=is_causal,
                                  scale=scale, attn_mask=attn_mask, valid_lens=valid_lens,
                                  dropout_p=dropout_p, seed=seed, num_threads=num_threads, out=out,
                                  return_weights=return_weights, return_lse=return_lse,
                                  window=window, alibi_slopes=alibi_slopes, softcap=softcap,
                                  sinks=sinks)
                # (an `out` array given by the caller comes back as itself)
                wrap = (lambda a: a if a is out else _arrays.to_torch(a, a.dtype.name))
                return tuple(map(wrap, res)) if isinstance(res, tuple) else wrap(res)
            if (attn_mask is None and valid_lens is None and out is None and return_weights is False
                    and return_lse is False and type(dropout_p) is float and dropout_p == 0.0
                    and window is None and alibi_slopes is None and softcap is None and sinks is None
                    and self._length and not _engine.planning()):
                # the common decode call, without the general path's Python layers
                if seed is not None:   # (no dropout: the seed draws nothing, but a bad one is refused)
                    V.check_seed(op, seed)
                io = self._entry if self._entry is not None else (
                    _core.IO_F64 if self.dtype == np.float64 else _core.IO_F32)
                res = _core.kv_attend_fast(op, query, self._k, self._v, self._ks, self._vs,
                                           self._length, io, is_causal, scale, num_threads,
                                           _config.active_isa())
                if res is not None:
                    return res
            q = V.native(V.as_array(query, "query", op))
            if q.dtype != self.dtype:
                raise TypeError(f"{op}: query has dtype {q.dtype}; this cache takes {self.dtype}")
            H, n = self.num_heads, self._length
            # an empty cache (new, reset or truncated to 0; its buffers, if kept, hold no batch
            # size) is attention over no key for the query's own batch, as SDPA with Lk = 0
            held = self._k.shape[0] if n and self._k is not None else None
            if (q.ndim != 4 or (held is not None and q.shape[0] != held) or q.shape[3] != self.head_dim
                    or q.shape[1] % H):
                raise ValueError(f"{op}: query must have shape (B={'B' if held is None else held}, Hq "
                                 f"(a multiple of {H}), Lq, {self.head_dim}); got {q.shape}")
            B, Hq, Lq, Dh = q.shape[0], q.shape[1], q.shape[2], self.head_dim
            if n:
                assert self._k is not None and self._v is not None
                k, v = self._k[:, :, :n], self._v[:, :, :n]
            else:
                k = v = np.zeros((B, H, 0, Dh), self.dtype)
            kv = None
            if self._entry is not None and n:
                scales: tuple = (None, None)
                if self.storage == "int8":
                    assert self._ks is not None and self._vs is not None
                    scales = (self._ks[:, :, :n], self._vs[:, :, :n])
                kv = (self._entry,) + scales
            if scale is None:
                scale = 1.0 / np.sqrt(Dh)
            p = _engine.Problem(q=q, k=k, v=v, compute=self.dtype, result=self.dtype, flat=False,
                                batch=(B,), Hq=Hq, Hkv=H, Lq=Lq, Lk=n, Dq=Dh, Dk=Dh, Dv=Dh, params={},
                                query_ndim=4)
            return _engine.run(op, p, q, k, scale=V.real_number(op, "scale", scale), attn_mask=attn_mask,
                               is_causal=is_causal, dropout_p=dropout_p, seed=seed,
                               valid_lens=valid_lens, num_threads=num_threads, out=out,
                               return_weights=return_weights, return_lse=return_lse, kv=kv,
                               window=window, alibi_slopes=alibi_slopes, softcap=softcap, sinks=sinks)

    @property
    def batch(self) -> Optional[int]:
        """The batch size of the stored keys/values (None before the first append).

        >>> import numpy as np, attncore
        >>> cache = attncore.KVCache(max_len=8, num_heads=1, head_dim=2)
        >>> cache.batch is None
        True
        >>> cache.append(np.ones((3, 1, 2, 2), np.float32), np.ones((3, 1, 2, 2), np.float32))
        >>> cache.batch
        3
        """
        k = self._k   # (read once, as in capacity)
        return None if k is None else k.shape[0]

    @_locked
    def truncate(self, length: int) -> None:
        """Keep only the first ``length`` positions (0 <= length <= len(cache)),
        e.g. to drop rejected speculative tokens.

        >>> import numpy as np, attncore
        >>> cache = attncore.KVCache(max_len=8, num_heads=1, head_dim=2)
        >>> cache.append(np.ones((1, 1, 5, 2), np.float32), np.ones((1, 1, 5, 2), np.float32))
        >>> cache.truncate(3); len(cache)
        3
        """
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
            raise TypeError(f"KVCache.truncate: length must be an int; got {type(length).__name__}")
        if not 0 <= length <= self._length:
            raise ValueError(f"KVCache.truncate: length must be in [0, len(cache)={self._length}]; "
                             f"got {length}")
        self._length = int(length)

    @_locked
    def select_batch(self, indices: ArrayLike) -> None:
        """Keep the batch rows ``indices`` in that order (1-D ints; repeats
        allowed, so beam search's reordering and expansion are both this):
        row i of the cache becomes old row ``indices[i]``. Capacity unchanged.

        >>> import numpy as np, attncore
        >>> cache = attncore.KVCache(max_len=4, num_heads=1, head_dim=1)
        >>> kv = np.arange(2, dtype=np.float32).reshape(2, 1, 1, 1)   # batch rows 0 and 1
        >>> cache.append(kv, kv)
        >>> cache.select_batch([1, 1, 0]); cache.keys[:, 0, 0, 0]
        array([1., 1., 0.], dtype=float32)
        """
        op = "KVCache.select_batch"
        if self._k is None or self._length == 0:   # (an empty cache's batch is the next append's)
            raise ValueError(f"{op}: the cache is empty (append keys and values first)")
        B = self._k.shape[0]
        idx = np.asarray(indices)
        if idx.size == 0:   # (before the dtype: [] is float64 to NumPy)
            raise ValueError(f"{op}: indices must be a non-empty selection of rows of a batch of "
                             f"{B}; got an empty one (reset() empties the cache)")
        if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"{op}: indices must be integers into the batch of {B}; got dtype "
                            f"{idx.dtype}")
        if idx.ndim != 1:
            raise ValueError(f"{op}: indices must be 1-D; got shape {idx.shape}")
        if idx.size == 0 or idx.min() < -B or idx.max() >= B:
            raise ValueError(f"{op}: indices must be a non-empty selection of rows of a batch of "
                             f"{B}; got {idx.tolist() if idx.size < 20 else idx}")
        for name in ("_k", "_v", "_ks", "_vs"):
            buf = getattr(self, name)
            if buf is not None:
                setattr(self, name, np.ascontiguousarray(buf[idx]))

    @_locked
    def reset(self) -> None:
        """Forget every cached position (buffers of max_len positions are kept
        for reuse, grown ones dropped; the next append may start another
        batch size).

        >>> import numpy as np, attncore
        >>> cache = attncore.KVCache(max_len=8, num_heads=1, head_dim=2)
        >>> cache.append(np.ones((1, 1, 3, 2), np.float32), np.ones((1, 1, 3, 2), np.float32))
        >>> cache.reset(); len(cache)
        0
        """
        self._length = 0
        if self._k is not None and self._k.shape[2] != self.max_len:
            self._k = self._v = self._ks = self._vs = None

    def __getstate__(self) -> dict:
        with self._lock:   # (copy.deepcopy and pickle: a lock is neither)
            state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        _CACHES.add(self)

    def __repr__(self) -> str:
        return (f"KVCache(len={self._length}, capacity={self.capacity}, num_heads={self.num_heads}, "
                f"head_dim={self.head_dim}, dtype={self.storage})")
