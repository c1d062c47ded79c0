"""Attention on Dask (extra ``dask``: ``pip install "attncore[dask]"``).

- :func:`sharded_attention`: key-sharded long-context attention on a Dask
  cluster. K/V are split along the key axis, each shard lives on a worker,
  every worker runs :func:`attncore.scaled_dot_product_attention` on its shard
  with ``return_lse=True``, and the partial results are merged with
  :func:`attncore.merge_attention` in a tree on the workers: only the final
  ``(out, lse)`` comes back to the client.
- :func:`scatter_shards`: put K/V shards on the workers once, for several
  sharded_attention calls against the same keys (a KV cache on the cluster).
- :func:`attention`: :func:`attncore.scaled_dot_product_attention` on dask
  arrays, parallel over the leading batch chunks; returns dask arrays
  (``weights`` and ``lse`` as arrays of their own when asked for).

Masks, ``is_causal`` and ``valid_lens`` are defined on the full key range and
translated to each shard: a mask is sliced along its key axis (a size-1,
broadcast key axis is not), ``valid_lens`` become per-shard lengths clipped to
the shard, and causal masking (key j visible to query i iff j <= i + offset,
offset 0 for "top_left", Lk - Lq for "bottom_right") is split per shard into
query rows that see none, part or all of the shard -- no (Lq, Lk) mask is ever
built.

Dask workers start with ``OMP_NUM_THREADS=1`` (distributed's default), so each
shard runs single-threaded unless ``num_threads=`` says otherwise.
"""
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

try:
    import dask.array as da  # type: ignore[import-not-found,unused-ignore]
    from dask.base import compute, tokenize  # type: ignore[import-not-found,unused-ignore]
    from dask.delayed import delayed  # type: ignore[import-not-found,unused-ignore]
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "attncore.dask needs dask: pip install \"attncore[dask]\" (installs dask[distributed]). "
        f"Original error: {_exc}") from _exc

from . import _arrays, _engine
from . import _validate as V
from .functional import _sdpa_float32_out, merge_attention, scaled_dot_product_attention

__all__ = ["sharded_attention", "scatter_shards", "attention"]

_SDPA = "scaled_dot_product_attention"
_SDPA_KWARGS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa", "return_weights",
                "return_lse", "num_threads", "out", "seed", "valid_lens", "window",
                "alibi_slopes", "softcap", "sinks", "cu_seqlens_q", "cu_seqlens_k")
# scaled_dot_product_attention's arguments that sharded_attention refuses, and why
_NOT_SHARDED = {
    "window": "a window counts key positions on the full key range; pass it as an explicit "
              "bool attn_mask (it is sliced per shard)",
    "alibi_slopes": "ALiBi's bias counts key positions on the full key range; pass the bias "
                    "as a float attn_mask (it is sliced per shard)",
}
_NOT_SHARDED["cu_seqlens_q"] = _NOT_SHARDED["cu_seqlens_k"] = (
    "packed sequences cannot be split by key position; call "
    "attncore.scaled_dot_product_attention per sequence, or attention()")


# ---------------------------------------------------------------------------
# shared helpers

def _check_kwargs(op: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(kwargs) - set(_SDPA_KWARGS))
    if unknown:
        raise TypeError(f"{op}: unexpected keyword argument(s) {', '.join(unknown)}; the "
                        f"keyword arguments of scaled_dot_product_attention are "
                        f"{', '.join(_SDPA_KWARGS)}")
    return dict(kwargs)


def _validate_call(op: str, query: Any, key: Any, value: Any, note: str = "",
                   **kw: Any) -> None:
    """Run scaled_dot_product_attention's own checks on the whole problem
    without computing it (the kernel's planner only); errors are re-labelled
    with `op`."""
    try:
        _engine.plan_info(scaled_dot_product_attention, query, key, value, **kw)
    except (TypeError, ValueError) as exc:
        if type(exc) not in (TypeError, ValueError):
            raise
        raise type(exc)(str(exc).replace(f"{_SDPA}:", f"{op}:", 1) + note) from None


def _distributed(op: str) -> Any:
    try:
        import distributed  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"{op} needs dask.distributed for a cluster: pip install "
                          f"\"attncore[dask]\" (dask[distributed]). Original error: {exc}") from exc
    return distributed


def _future_type() -> Any:
    try:
        from distributed import Future  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return Future


# ---------------------------------------------------------------------------
# sharded_attention: the work on the workers

def _rows(a: np.ndarray, r0: int, r1: int, full: int) -> np.ndarray:
    """Rows r0:r1 of an axis of size `full` (a size-1 axis broadcasts and stays)."""
    if a.shape[-1] == 1 or (r0, r1) == (0, full):
        return a
    return a[..., r0:r1]


def _shard_partial(query: np.ndarray, key: np.ndarray, value: np.ndarray,
                   attn_mask: Optional[np.ndarray], valid_lens: Optional[np.ndarray],
                   vl_rows: bool, start: int, causal: int, offset: int,
                   kw: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """(out, lse) of `query` against one key shard (keys start..start+n of the
    full range), both in the compute dtype (float32 or float64; float32 for
    16-bit inputs).

    attn_mask: the full mask's columns for this shard (or a mask without a key
    axis), all rows. valid_lens: the full problem's lengths (int64);
    vl_rows: whether their last axis is the query-row axis. causal/offset:
    key j visible to query i iff j <= i + offset on the full key range.
    """
    n, Lq = key.shape[-2], query.shape[-2]
    # 16-bit inputs: the partials stay float32 until the merge, which cancels them
    # (rounded to the 16-bit type first, the merged result was off by far more
    # than one rounding); the caller rounds the merged result once.
    # _sdpa_float32_out reads K/V as they are, so a 16-bit float mask is widened
    # (exactly) to the float32 scores
    if attn_mask is not None and attn_mask.dtype != np.bool_ and attn_mask.dtype.itemsize == 2:
        attn_mask = attn_mask.astype(np.float32)

    def call(r0: int, r1: int, nkeys: int, is_causal: Any) -> Tuple[np.ndarray, np.ndarray]:
        q = query if (r0, r1) == (0, Lq) else query[..., r0:r1, :]
        k, v = (key, value) if nkeys == n else (key[..., :nkeys, :], value[..., :nkeys, :])
        m = attn_mask
        if m is not None:
            if m.ndim >= 2 and m.shape[-2] != 1 and (r0, r1) != (0, Lq):
                m = m[..., r0:r1, :]
            if m.ndim >= 1 and m.shape[-1] != 1 and nkeys != n:
                m = m[..., :nkeys]
        vl = None
        if valid_lens is not None:
            vl = _rows(valid_lens, r0, r1, Lq) if vl_rows else valid_lens
            vl = np.clip(vl - start, 0, nkeys)
        out, lse = _sdpa_float32_out(q, k, v, attn_mask=m, is_causal=is_causal, valid_lens=vl,
                                     return_lse=True, **kw)
        return out.astype(lse.dtype, copy=False), lse

    if not causal or n == 0 or Lq == 0:   # (no query rows: nothing to split)
        return call(0, Lq, n, False)
    o = offset - start        # on this shard: key j' visible to query i iff j' <= i + o
    if o == 0:
        return call(0, Lq, n, "top_left")
    if o == n - Lq:
        return call(0, Lq, n, "bottom_right")
    if o >= n - 1:
        return call(0, Lq, n, False)
    a = min(max(-o, 0), Lq)           # rows [0, a) see no key of this shard
    b = min(max(n - 1 - o, a), Lq)    # rows [b, Lq) see all of it
    pieces = []
    if a > 0:
        out0, lse0 = _sdpa_float32_out(query[..., :0, :], key, value, return_lse=True, **kw)
        pieces.append((np.zeros(out0.shape[:-2] + (a, out0.shape[-1]), lse0.dtype),
                       np.full(lse0.shape[:-1] + (a,), -np.inf, lse0.dtype)))
    if b > a:
        # rows [a, b) see keys j' <= i + o < b + o: bottom-right alignment of
        # the rows against the first b + o keys has exactly that offset
        pieces.append(call(a, b, b + o, "bottom_right"))
    if b < Lq:
        pieces.append(call(b, Lq, n, False))
    if len(pieces) == 1:
        return pieces[0]
    return (np.concatenate([p[0] for p in pieces], axis=-2),
            np.concatenate([p[1] for p in pieces], axis=-1))


def _fold_sinks(out: np.ndarray, lse: np.ndarray,
                sinks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Attention sinks joined to merged (out, lse) over all keys: a sink is
    one more term e^sink in each row's denominator, with no value, so
    lse' = log(e^lse + e^sink) and out' = out e^(lse - lse'). A row that saw
    no key stays zeros with lse' = sink, as in the reference (the sinks are
    validated: no NaN). sinks: () or (1,) for every head, else (Hq,)."""
    s = sinks.astype(np.float64).reshape(() if sinks.size == 1 else (-1, 1))
    lse64 = lse.astype(np.float64)
    with np.errstate(invalid="ignore"):
        total = np.logaddexp(lse64, s)
        factor = np.where(np.isneginf(lse64), 0.0, np.exp(lse64 - total))
    return ((out * factor[..., None]).astype(out.dtype, copy=False),
            np.broadcast_to(total, lse.shape).astype(lse.dtype))


def _merge_pair(a: Tuple[np.ndarray, np.ndarray],
                b: Tuple[np.ndarray, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    return merge_attention([a, b])


def _describe(x: Any) -> Tuple[Tuple[int, ...], str]:
    """Shape and dtype of a shard that lives on a worker."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    return tuple(x.shape), x.dtype.str


# ---------------------------------------------------------------------------
# sharded_attention: executors (a cluster, or dask's in-process scheduler)

class _Local:
    """No cluster: the same task graph on dask's synchronous scheduler."""

    workers = [None]

    def place(self, items: List[Tuple[Any, Any]],
              masks: List[Any]) -> Tuple[List[Any], List[Any], List[Any]]:
        """-> (items, masks, homes): nothing moves in process."""
        return items, masks, [None] * len(items)

    def broadcast(self, x: Any) -> Any:
        return x

    def submit(self, fn: Callable[..., Any], *args: Any, worker: Optional[str] = None,
               key: Optional[str] = None) -> Any:
        return delayed(fn, pure=False)(*args)

    def result(self, x: Any) -> Any:
        return compute(x, scheduler="sync")[0]


class _Cluster:
    def __init__(self, op: str, client: Any) -> None:
        self.op = op
        self.client = client
        self.workers = sorted(client.nthreads())
        if not self.workers:
            raise ValueError(f"{op}: the Dask cluster has no workers (client {client!r})")
        self.used = self.workers

    def _scatter(self, objs: List[Any], homes: List[Any]) -> List[Any]:
        """Scatter objs[i] to worker homes[i]: one round trip per worker."""
        futures = [None] * len(objs)
        for home in sorted(set(homes), key=str):
            idx = [i for i, h in enumerate(homes) if h == home and objs[i] is not None]
            if idx:
                sent = self.client.scatter([objs[i] for i in idx], hash=False,
                                           workers=[home] if home else None)
                for i, f in zip(idx, sent):
                    futures[i] = f
        return futures

    def place(self, items: List[Tuple[Any, Any]],
              masks: List[Any]) -> Tuple[List[Any], List[Any], List[Any]]:
        """Put every shard's (key, value) and mask slice on one worker.

        Shards given as arrays go to the workers round robin (shard i on
        worker i mod n). Shards already on the cluster (futures, dask arrays,
        which are computed there) stay where they are; their mask slices are
        sent to the same worker. Returns (items, masks, homes)."""
        Future = _future_type()
        n = len(items)
        flat = [x for pair in items for x in pair]
        lazy = [i for i, x in enumerate(flat) if isinstance(x, da.Array)]
        if lazy:
            for i, f in zip(lazy, self.client.compute([flat[i] for i in lazy])):
                flat[i] = f
        remote = [x for x in flat if isinstance(x, Future)]
        if not remote:
            homes = [self.workers[i % len(self.workers)] for i in range(n)]
            sent = self._scatter(flat + list(masks), [h for h in homes for _ in (0, 1)] + homes)
            flat, masks = sent[:2 * n], sent[2 * n:]
        else:
            with self.client.as_current():
                _distributed(self.op).wait(remote)
            where = self.client.who_has(remote)
            homes = []
            for i in range(n):
                holders = where.get(flat[2 * i].key) if isinstance(flat[2 * i], Future) else None
                homes.append(sorted(holders)[0] if holders else None)
            masks = self._scatter(list(masks), homes)
        if all(h is not None for h in homes):
            self.used = sorted(set(homes))   # the query goes only where shards are
        return [(flat[2 * i], flat[2 * i + 1]) for i in range(n)], masks, homes

    def broadcast(self, x: Any) -> Any:
        if x is None:
            return None
        return self.client.scatter(x, workers=self.used, broadcast=True, hash=False)

    def submit(self, fn: Callable[..., Any], *args: Any, worker: Optional[str] = None,
               key: Optional[str] = None) -> Any:
        where = dict(workers=[worker], allow_other_workers=True) if worker else {}
        return self.client.submit(fn, *args, key=key, pure=False, **where)

    def result(self, x: Any) -> Any:
        return x.result()


def _resolve_client(op: str, client: Any, key: Any, value: Any) -> Any:
    if client is not None:
        distributed = _distributed(op)
        if not isinstance(client, distributed.Client):
            raise TypeError(f"{op}: client must be a distributed.Client or None; got "
                            f"{type(client).__name__}")
        return client
    Future = _future_type()
    if Future is None:
        return None
    from distributed import (  # type: ignore[import-not-found,unused-ignore]
        default_client, futures_of)
    for x in (key, value):
        for e in (x if isinstance(x, (list, tuple)) else [x]):
            if isinstance(e, Future):
                return e.client
            if isinstance(e, da.Array):     # persisted on a cluster
                held = futures_of(e)
                if held:
                    return held[0].client
    try:
        return default_client()
    except ValueError:
        return None


def _even_bounds(Lk: int, shards: int) -> List[Tuple[int, int]]:
    """At most Lk non-empty shards (one empty shard when Lk == 0)."""
    count = max(1, min(shards, Lk))
    base, extra = divmod(Lk, count)
    sizes = [base + (1 if i < extra else 0) for i in range(count)]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
    return list(zip(starts, sizes))


def _shard_count(op: str, shards: Any) -> Optional[int]:
    if shards is None:
        return None
    if isinstance(shards, (bool, np.bool_)) or not isinstance(shards, (int, np.integer)):
        raise TypeError(f"{op}: shards must be a positive int or None; got {shards!r}")
    if shards < 1:
        raise ValueError(f"{op}: shards must be >= 1; got {shards}")
    return int(shards)


def _kind(op: str, name: str, x: Any) -> str:
    Future = _future_type()

    def remote(e: Any) -> bool:
        return isinstance(e, da.Array) or (Future is not None and isinstance(e, Future))

    if isinstance(x, da.Array):
        return "dask"
    if isinstance(x, (list, tuple)) and x and any(remote(e) for e in x):
        if not all(remote(e) for e in x):
            raise TypeError(f"{op}: {name} is a list that mixes Dask futures/arrays with other "
                            f"objects; pass either one array, one dask array, or a list with "
                            f"one future or dask array per key shard")
        return "list"
    return "array"


def _shard_sources(op: str, key: Any, value: Any, shards: Optional[int], default_shards: int,
                   client: Any) -> Tuple[List[Tuple[Any, Any]], List[Tuple[int, int]], Any, Any]:
    """-> (items [(k_i, v_i)], bounds [(start, n)], key stand-in, value stand-in)."""
    kinds = _kind(op, "key", key), _kind(op, "value", value)
    if kinds[0] != kinds[1]:
        raise TypeError(f"{op}: key and value must be given the same way (an array, a dask "
                        f"array, or a list of shards); got key as {kinds[0]} and value as "
                        f"{kinds[1]}")
    kind = kinds[0]
    if kind == "array":
        k, v = V.as_array(key, "key", op), V.as_array(value, "value", op)
        for name, a in (("key", k), ("value", v)):
            V.check_min_ndim(op, name, a, 2, "(..., seq_len, head_dim)")
        if k.shape[-2] != v.shape[-2]:
            raise ValueError(f"{op}: key and value must have the same seq_len; got key "
                             f"{k.shape} and value {v.shape}")
        bounds = _even_bounds(k.shape[-2], shards or default_shards)
        items = [(k[..., s:s + n, :], v[..., s:s + n, :]) for s, n in bounds]
        return items, bounds, k, v
    if kind == "dask":
        for name, a in (("key", key), ("value", value)):
            if any(np.isnan(d) for d in a.shape):
                raise ValueError(f"{op}: {name} has unknown chunk sizes {a.shape}; call "
                                 f"{name}.compute_chunk_sizes() first")
            if a.ndim < 2:
                raise ValueError(f"{op}: {name} must have at least 2 dimensions "
                                 f"(..., seq_len, head_dim); got shape {a.shape}")
        if key.shape[-2] != value.shape[-2]:
            raise ValueError(f"{op}: key and value must have the same seq_len; got key "
                             f"{key.shape} and value {value.shape}")
        if shards is None:
            sizes = key.chunks[-2]
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
            bounds = [(s, int(n)) for s, n in zip(starts, sizes)]
        else:
            bounds = _even_bounds(key.shape[-2], shards)
        items = [(key[..., s:s + n, :], value[..., s:s + n, :]) for s, n in bounds]
        return items, bounds, _stand_in(key.shape, key.dtype), _stand_in(value.shape, value.dtype)
    # a list of shards (futures or dask arrays), in key order
    if len(key) != len(value):
        raise ValueError(f"{op}: key has {len(key)} shards but value has {len(value)}")
    if shards is not None and shards != len(key):
        raise ValueError(f"{op}: shards={shards} but key/value are given as {len(key)} shards; "
                         f"leave shards=None")
    meta: List[Tuple[str, int, Any, Any]] = []
    futures = {}
    for name, xs in (("key", key), ("value", value)):
        for i, x in enumerate(xs):
            if isinstance(x, da.Array):
                if any(np.isnan(d) for d in x.shape):
                    raise ValueError(f"{op}: {name}[{i}] has unknown chunk sizes {x.shape}; call "
                                     f"compute_chunk_sizes() first")
                meta.append((name, i, tuple(x.shape), x.dtype))
            else:
                futures[(name, i)] = x
                meta.append((name, i, None, None))
    if futures:
        if client is None:  # pragma: no cover - futures always carry a client
            raise ValueError(f"{op}: key/value futures need a client")
        described = client.gather([client.submit(_describe, f, pure=False)
                                   for f in futures.values()])
        found = dict(zip(futures, described))
        meta = [(name, i, sh, dt) if sh is not None else
                (name, i, found[(name, i)][0], np.dtype(found[(name, i)][1]))
                for name, i, sh, dt in meta]
    shapes = {(name, i): (sh, dt) for name, i, sh, dt in meta}
    k0, kdt = shapes[("key", 0)]
    v0, vdt = shapes[("value", 0)]
    for name, ref in (("key", k0), ("value", v0)):
        if len(ref) < 2:
            raise ValueError(f"{op}: {name}[0] must have at least 2 dimensions "
                             f"(..., seq_len, head_dim); got shape {ref}")
    for i in range(len(key)):
        (ks, kd), (vs, vd) = shapes[("key", i)], shapes[("value", i)]
        for name, sh, ref in (("key", ks, k0), ("value", vs, v0)):
            if len(sh) != len(ref) or sh[:-2] != ref[:-2] or sh[-1] != ref[-1]:
                raise ValueError(f"{op}: {name} shards must agree in every dim but the key axis "
                                 f"(-2); {name}[{i}] has shape {sh}, {name}[0] has {ref}")
        if ks[-2] != vs[-2]:
            raise ValueError(f"{op}: key[{i}] {ks} and value[{i}] {vs} have different seq_len")
        if kd != kdt or vd != kdt:
            raise TypeError(f"{op}: mixed dtypes among the shards: key[0] is {kdt}, key[{i}] is "
                            f"{kd}, value[{i}] is {vd}")
    sizes = [shapes[("key", i)][0][-2] for i in range(len(key))]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
    Lk = int(sum(sizes))
    kst = _stand_in(k0[:-2] + (Lk,) + k0[-1:], kdt)
    vst = _stand_in(v0[:-2] + (Lk,) + v0[-1:], vdt)
    return list(zip(key, value)), [(s, int(n)) for s, n in zip(starts, sizes)], kst, vst


def _stand_in(shape: Sequence[Any], dtype: Any) -> np.ndarray:
    """A read-only array of `shape` that takes the memory of its last dim only
    (for checking shapes and dtypes without the data)."""
    shape = tuple(int(d) for d in shape)
    return np.broadcast_to(np.zeros(shape[-1:] if shape else (), dtype), shape)


# ---------------------------------------------------------------------------
# sharded_attention

def sharded_attention(query: Any, key: Any, value: Any, *, client: Any = None,
                      shards: Optional[int] = None, **sdpa_kwargs: Any) -> Any:
    """Key-sharded attention on a Dask cluster, for key ranges too long for one
    machine (or to spread one long-context call over several).

    K/V are split along the key axis into ``shards`` pieces; each piece is
    sent to one worker once (or stays where it is, if it is already on the
    cluster), each worker computes
    ``scaled_dot_product_attention(query, k_shard, v_shard, return_lse=True, ...)``,
    and the partial results merge pairwise with :func:`attncore.merge_attention`
    in a tree on the workers; only the final ``(out, lse)`` returns to the
    client. The result is the attention over all keys: it differs from
    :func:`attncore.scaled_dot_product_attention` on one machine only by float
    rounding (the merge algebra is exact).

    Parameters
    ----------
    query : array (..., Hq, Lq, D)
        Sent to every worker that holds a shard.
    key : array (..., Hkv, Lk, D), dask array, or list of shards
    value : array (..., Hkv, Lk, Dv), dask array, or list of shards
        An array is split on the client into ``shards`` contiguous pieces of
        (almost) equal length. A dask array is sharded along its key-axis
        chunks (or re-split into ``shards`` pieces if given); its blocks are
        computed on the cluster and never pass through the client. A list
        gives the shards in key order, each a ``distributed.Future`` of an
        array (e.g. from ``client.scatter``) or a dask array, shaped
        (..., Hkv, Lk_i, D) / (..., Hkv, Lk_i, Dv).
    client : distributed.Client, optional
        Default: the client of the futures given (or of dask arrays persisted
        on a cluster), else the default client (the last ``Client`` created),
        else no cluster: the same tasks run in this process on dask's
        synchronous scheduler.
    shards : int, optional
        Number of key shards. Default: the number of workers (1 without a
        cluster), or the number of key-axis chunks of a dask array. At most
        Lk shards are made (no empty shards).
    **sdpa_kwargs
        The keyword arguments of :func:`attncore.scaled_dot_product_attention`
        (attn_mask, is_causal, scale, enable_gqa, return_lse, num_threads,
        out, valid_lens, seed), meaning what they mean there on the full key
        range: ``attn_mask`` (broadcastable to (..., Hq, Lq, Lk)) is sliced
        along its key axis per shard (a size-1 key axis is not),
        ``valid_lens`` become per-shard lengths, and ``is_causal`` keeps its
        alignment on the full range (key j visible to query i iff
        j <= i + offset; offset 0 for "top_left", Lk - Lq for
        "bottom_right"). ``softcap`` applies on every shard, and ``sinks``
        join the merged denominator once. ``num_threads`` applies on each
        worker (Dask's workers default to one OpenMP thread). Not
        supported, each a ValueError: ``return_weights=True`` (the full
        (..., Hq, Lq, Lk) weights would have to be assembled on the
        client); ``dropout_p > 0`` (dropout is keyed by each weight's index
        within one call, so a shard would drop different weights than the
        unsharded call); ``window`` and ``alibi_slopes``, which count key
        positions on the full range (pass them as an explicit attn_mask,
        which is sliced per shard); ``cu_seqlens_q/k``.

    Returns
    -------
    out (..., Hq, Lq, Dv), or (out, lse) with lse (..., Hq, Lq) if
    ``return_lse=True``: what scaled_dot_product_attention returns, NumPy
    arrays (torch tensors if query is one). A query row that sees no key
    gives zeros and lse -inf.

    Example
    -------
    Without a cluster the same tasks run in this process:

    >>> import numpy as np, attncore, attncore.dask
    >>> rng = np.random.default_rng(0)
    >>> q = rng.standard_normal((2, 4, 8, 16))
    >>> k, v = rng.standard_normal((2, 2, 2, 100, 16))
    >>> out, lse = attncore.dask.sharded_attention(q, k, v, shards=3, is_causal="bottom_right",
    ...                                            enable_gqa=True, return_lse=True)
    >>> ref = attncore.scaled_dot_product_attention(q, k, v, is_causal="bottom_right",
    ...                                             enable_gqa=True)
    >>> out.shape, lse.shape, bool(np.allclose(out, ref, rtol=1e-12, atol=1e-12))
    ((2, 4, 8, 16), (2, 4, 8), True)

    On a cluster (K/V shards are scattered to the workers once):

    >>> from distributed import Client, LocalCluster              # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=4, threads_per_worker=1))   # doctest: +SKIP
    >>> out = attncore.dask.sharded_attention(q, k, v, enable_gqa=True)    # doctest: +SKIP
    """
    op = "sharded_attention"
    kw = _check_kwargs(op, sdpa_kwargs)
    if kw.get("window") is not None and V.window(op, kw["window"]) == (-1, -1):
        kw.pop("window")   # (a window with both sides unbounded is no window)
    for name, why in _NOT_SHARDED.items():
        if kw.get(name) is not None:
            raise ValueError(f"{op}: {name} is not supported: {why}")
    shards = _shard_count(op, shards)
    if V.flag(op, "return_weights", kw.pop("return_weights", False)):
        raise ValueError(f"{op}: return_weights=True is not supported: the (..., Hq, Lq, Lk) "
                         f"weights over all keys would have to be assembled on the client. "
                         f"Call attncore.scaled_dot_product_attention(..., return_weights=True) "
                         f"instead")
    dropout_p = V.real_number(op, "dropout_p", kw.pop("dropout_p", 0.0))
    if dropout_p != 0.0:
        raise ValueError(f"{op}: dropout_p={dropout_p} is not supported: attncore's dropout "
                         f"pattern is keyed by each weight's (batch, head, query, key) index "
                         f"within one call, so a shard (keys numbered from 0) would drop "
                         f"different weights than the unsharded call; use dropout_p=0")
    return_lse = V.flag(op, "return_lse", kw.pop("return_lse", False))
    out = kw.pop("out", None)
    is_causal = kw.pop("is_causal", False)
    attn_mask = kw.pop("attn_mask", None)
    valid_lens = kw.pop("valid_lens", None)
    sinks = kw.pop("sinks", None)   # (joins the merged denominator once: _fold_sinks)
    kw.pop("seed", None)  # only dropout uses it

    torch_dtype = _arrays.torch_dtype_name(query) if _arrays.is_torch(query) else None
    q = V.as_array(query, "query", op)
    mask = None if attn_mask is None else V.as_array(attn_mask, "attn_mask", op)
    vl = None if valid_lens is None else V.as_array(valid_lens, "valid_lens", op)

    client = _resolve_client(op, client, key, value)
    ex = _Local() if client is None else _Cluster(op, client)
    default_shards = len(ex.workers)
    items, bounds, kst, vst = _shard_sources(op, key, value, shards, default_shards, client)
    _validate_call(op, q, kst, vst, attn_mask=mask, is_causal=is_causal, valid_lens=vl, out=out,
                   return_lse=return_lse, sinks=sinks, **kw)

    Lq, Lk = q.shape[-2], kst.shape[-2]
    causal, offset = V.causal_offset(op, is_causal, Lq, Lk)
    nb = max(0, max(q.ndim, kst.ndim, vst.ndim) - 3)
    vl_rows = False
    if vl is not None:
        vl_rows = vl.ndim == {2: 1, 3: 2}.get(q.ndim, nb + 1)
        vl = vl.astype(np.int64)   # validated: values in [0, Lk]
    mask_per_shard = mask is not None and mask.ndim >= 1 and mask.shape[-1] != 1

    masks = [mask[..., s:s + n] if mask_per_shard and mask is not None else None
             for s, n in bounds]
    items, masks, homes = ex.place(items, masks)
    q_f = ex.broadcast(q)
    shared_mask = None if mask is None or mask_per_shard else ex.broadcast(mask)
    token = uuid.uuid4().hex
    parts = []
    for i, ((k_i, v_i), m_i, (start, n), home) in enumerate(zip(items, masks, bounds, homes)):
        parts.append(ex.submit(_shard_partial, q_f, k_i, v_i, shared_mask if m_i is None else m_i,
                               vl, vl_rows, start, causal, offset, kw, worker=home,
                               key=f"attncore-shard-{token}-{i}"))
    level = 0
    while len(parts) > 1:
        merged = [ex.submit(_merge_pair, parts[j], parts[j + 1],
                            key=f"attncore-merge-{token}-{level}-{j // 2}")
                  for j in range(0, len(parts) - 1, 2)]
        parts = merged + parts[len(merged) * 2:]
        level += 1
    res, lse = ex.result(parts[0])
    if sinks is not None:
        res, lse = _fold_sinks(res, lse, V.as_array(sinks, "sinks", op))

    res = res.astype(q.dtype, copy=False)   # merged in the compute dtype
    if out is not None:
        np.copyto(out, res, casting="unsafe")
        res = out
    elif torch_dtype is not None:
        res = _arrays.to_torch(res, torch_dtype)
        lse = _arrays.to_torch(lse, lse.dtype.name)
    return (res, lse) if return_lse else res


def scatter_shards(key: Any, value: Any, *, client: Any = None,
                   shards: Optional[int] = None) -> Tuple[List[Any], List[Any]]:
    """Split K/V along the key axis and keep the shards on the cluster, for
    several :func:`sharded_attention` calls against the same keys (a KV cache
    that lives on the workers): only the queries travel afterwards.

    Parameters
    ----------
    key : array (..., Hkv, Lk, D)
    value : array (..., Hkv, Lk, Dv)
    client : distributed.Client, optional
        Default: the default client (the last ``Client`` created).
    shards : int, optional
        Number of shards (default: the number of workers); at most Lk.
        Shard i (keys in order, lengths differing by at most one) goes to
        worker i mod n_workers, its key and value together.

    Returns
    -------
    (key_futures, value_futures): two lists of ``distributed.Future``, one
    per shard, to pass as ``key`` and ``value`` to :func:`sharded_attention`.

    Example
    -------
    >>> import numpy as np, attncore.dask
    >>> from distributed import Client
    >>> client = Client(processes=False, n_workers=2, threads_per_worker=1,
    ...                 dashboard_address=":0")
    >>> rng = np.random.default_rng(0)
    >>> q = rng.standard_normal((1, 4, 3, 16)); k, v = rng.standard_normal((2, 1, 4, 500, 16))
    >>> ks, vs = attncore.dask.scatter_shards(k, v, client=client, shards=3)
    >>> [f.result().shape for f in ks]
    [(1, 4, 167, 16), (1, 4, 167, 16), (1, 4, 166, 16)]
    >>> out = attncore.dask.sharded_attention(q, ks, vs, is_causal="bottom_right")
    >>> ref = attncore.scaled_dot_product_attention(q, k, v, is_causal="bottom_right")
    >>> bool(np.allclose(out, ref, rtol=1e-12, atol=1e-12))
    True
    >>> client.close()
    """
    op = "scatter_shards"
    shards = _shard_count(op, shards)
    if client is None:
        from distributed import default_client  # type: ignore[import-not-found,unused-ignore]
        try:
            client = default_client()
        except ValueError:
            raise ValueError(f"{op}: no Dask client: pass client= or create a "
                             f"distributed.Client first") from None
    ex = _Cluster(op, _resolve_client(op, client, None, None))
    if _kind(op, "key", key) != "array" or _kind(op, "value", value) != "array":
        raise TypeError(f"{op}: key and value must be arrays (they are split on the client); "
                        f"dask arrays and futures are on the cluster already")
    items, _, k, v = _shard_sources(op, key, value, shards, len(ex.workers), None)
    # key and value on their own first (the check below stands a query cut
    # from the key in for the caller's: its errors would name that query)
    V.float_arrays(op, native_half=True, key=k, value=v)
    _validate_call(op, k[..., :1, :], k, v,
                   note=" (scatter_shards checks key and value with a one-row query cut from key)")
    placed, _, _ = ex.place(items, [None] * len(items))
    return [p[0] for p in placed], [p[1] for p in placed]


# ---------------------------------------------------------------------------
# attention on dask arrays

def _pick(block: Any, index: int) -> Any:
    return _one_block(block)[index]


def _one_block(x: Any) -> Any:
    """blockwise(concatenate=False) hands over a (nested) list of blocks for
    every index that is not in the output; those dims are single chunks."""
    while isinstance(x, list):
        if len(x) != 1:  # pragma: no cover - the chunk checks exclude it
            raise ValueError("attncore.dask.attention: a block arrived split; rechunk the "
                             "non-batch dims to one chunk")
        x = x[0]
    return x


def _block_attention(q: Any, k: Any, v: Any, attn_mask: Any, valid_lens: Any, alibi_slopes: Any,
                     **kw: Any) -> Any:
    q, k, v, attn_mask, valid_lens, alibi_slopes = (
        _one_block(x) for x in (q, k, v, attn_mask, valid_lens, alibi_slopes))
    if alibi_slopes is not None:
        kw["alibi_slopes"] = alibi_slopes
    # (attention() settled valid_lens's reading on the whole call: a block's batch
    # slice must not make it look ambiguous)
    settled = V.valid_lens_settled.set(True)
    try:
        return scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, valid_lens=valid_lens,
                                            **kw)
    except (TypeError, ValueError) as exc:   # values only a block could check (valid_lens)
        if type(exc) not in (TypeError, ValueError):
            raise
        raise type(exc)(str(exc).replace(f"{_SDPA}:", "attention (in a block):", 1)) from None
    finally:
        V.valid_lens_settled.reset(settled)


_DIM_NAMES = ("heads", "seq_len", "head_dim")


def _as_dask(op: str, name: str, x: Any) -> Any:
    if isinstance(x, da.Array):
        if any(np.isnan(d) for d in x.shape):
            raise ValueError(f"{op}: {name} has unknown chunk sizes {x.shape}; call "
                             f"{name}.compute_chunk_sizes() first")
        return x
    a = V.as_array(x, name, op)
    return da.from_array(a, chunks=a.shape if a.ndim else ())


def attention(query: Any, key: Any, value: Any, **sdpa_kwargs: Any) -> Any:
    """:func:`attncore.scaled_dot_product_attention` on dask arrays, in
    parallel over the chunks of the leading batch dims.

    Each output block is one call on the matching blocks of query, key,
    value (and attn_mask / valid_lens / alibi_slopes); batch chunks that differ between the
    inputs are aligned by dask, batch dims broadcast as in NumPy.

    Parameters
    ----------
    query : dask array (..., Hq, Lq, D)
    key : dask array (..., Hkv, Lk, D)
    value : dask array (..., Hkv, Lk, Dv)
        Only the leading batch dims may have several chunks: heads, seq_len
        and head_dim must each be one chunk (a ValueError says which is not,
        and how to rechunk). NumPy arrays are accepted as one chunk.
    **sdpa_kwargs
        The keyword arguments of scaled_dot_product_attention. ``attn_mask``,
        ``valid_lens`` and ``alibi_slopes`` may be NumPy or dask arrays
        (rechunked to match the batch blocks).
        ``dropout_p > 0`` needs a single batch chunk (dropout is keyed by the
        batch index within one call, so chunks would repeat one pattern);
        ``out=`` is not supported (use ``dask.array.store``).

    Returns
    -------
    out, or (out, weights), (out, lse), (out, weights, lse): dask arrays
    (out (..., Hq, Lq, Dv), weights (..., Hq, Lq, Lk), lse (..., Hq, Lq)),
    chunked like the batch of the inputs. They share one task per block:
    computing them together (``dask.compute(out, lse)``) runs each block once.

    Example
    -------
    >>> import numpy as np, dask, dask.array as da, attncore, attncore.dask
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((6, 2, 5, 8), dtype=np.float32) for _ in range(3))
    >>> dq, dk, dv = (da.from_array(x, chunks=(2, 2, 5, 8)) for x in (q, k, v))
    >>> out, lse = attncore.dask.attention(dq, dk, dv, is_causal=True, return_lse=True)
    >>> out.chunks[0], lse.shape
    ((2, 2, 2), (6, 2, 5))
    >>> o, l = dask.compute(out, lse, scheduler="sync")
    >>> ref, ref_lse = attncore.scaled_dot_product_attention(q, k, v, is_causal=True,
    ...                                                      return_lse=True)
    >>> bool((o == ref).all() and (l == ref_lse).all())
    True
    """
    op = "attention"
    kw = _check_kwargs(op, sdpa_kwargs)
    if kw.pop("out", None) is not None:
        raise TypeError(f"{op}: out= is not supported for dask arrays; compute the result into "
                        f"your buffer with dask.array.store(out_array, target)")
    q, k, v = (_as_dask(op, n, x) for n, x in (("query", query), ("key", key), ("value", value)))
    for name, x in (("query", q), ("key", k), ("value", v)):
        if x.ndim < 2:
            raise ValueError(f"{op}: {name} must have at least 2 dimensions "
                             f"(..., heads, seq_len, head_dim); got shape {x.shape}")
        trailing = min(3, x.ndim)
        for ax in range(x.ndim - trailing, x.ndim):
            if len(x.chunks[ax]) > 1:
                dim = _DIM_NAMES[3 - x.ndim + ax]
                raise ValueError(
                    f"{op}: {name} {x.shape} has {len(x.chunks[ax])} chunks along axis {ax} "
                    f"({dim}: chunks {x.chunks[ax]}); only the leading batch dims may be chunked, "
                    f"heads, seq_len and head_dim must each be one chunk. Rechunk first, e.g. "
                    f"{name} = {name}.rechunk({{{ax}: -1}})")
    mask = kw.pop("attn_mask", None)
    alibi = kw.pop("alibi_slopes", None)
    if alibi is not None:
        alibi = _as_dask(op, "alibi_slopes", alibi)
    vl = kw.pop("valid_lens", None)
    if vl is not None and not isinstance(vl, da.Array):
        vl_np = V.as_array(vl, "valid_lens", op)
        Lk = k.shape[-2]
        if vl_np.size and np.issubdtype(vl_np.dtype, np.integer) and \
                (vl_np.min() < 0 or vl_np.max() > Lk):
            raise ValueError(f"{op}: valid_lens must be in [0, Lk={Lk}]; got values from "
                             f"{vl_np.min()} to {vl_np.max()}")
    m = None if mask is None else _as_dask(op, "attn_mask", mask)
    if vl is not None:
        vl = _as_dask(op, "valid_lens", vl)
    return_weights = V.flag(op, "return_weights", kw.get("return_weights", False))
    return_lse = V.flag(op, "return_lse", kw.get("return_lse", False))

    # the whole call's checks, on one batch element (batch dims collapsed to
    # size 1) so that nothing of the full size is allocated
    flat = q.ndim == 2
    nb = 0 if flat else max(0, max(q.ndim, k.ndim, v.ndim) - 3)
    try:
        batch = tuple(np.broadcast_shapes(*(x.shape[:-3] for x in (q, k, v))))
    except ValueError:
        raise ValueError(f"{op}: the batch dimensions (all but the last three) do not "
                         f"broadcast: query {q.shape}, key {k.shape}, value {v.shape}") from None

    def one(x: Any, lead: int) -> np.ndarray:
        sh = tuple(min(d, 1) for d in x.shape[:lead]) + tuple(x.shape[lead:])
        return _stand_in(sh, x.dtype)

    def lead_of(x: Any, trailing: int) -> int:
        return max(0, int(x.ndim) - trailing)

    if m is not None and not flat:
        full_scores = batch + (q.shape[-3], q.shape[-2], k.shape[-2])
        try:
            fits = np.broadcast_shapes(m.shape, full_scores) == full_scores
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(V.mask_shape_message(op, m.shape, full_scores))
    if alibi is not None and not flat:
        # (the one-element check below cannot see the slopes' batch dims)
        per_head = batch + (q.shape[-3],)
        try:
            fits = alibi.ndim <= len(per_head) and np.broadcast_shapes(alibi.shape, per_head) == per_head
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"{op}: alibi_slopes of shape {alibi.shape} does not broadcast to "
                             f"(..., Hq) = {per_head} (query {q.shape}, key {k.shape})")
    if vl is not None and q.ndim > 3 and vl.ndim in (nb, nb + 1) and \
            any(d not in (1, b) for d, b in zip(vl.shape[:nb], batch)):
        raise ValueError(f"{op}: valid_lens of shape {vl.shape} does not match the batch "
                         f"dims {batch} of query {q.shape}, key {k.shape}, value {v.shape}")
    note = (f" (checked on one batch element; full shapes: query {q.shape}, key {k.shape}, "
            f"value {v.shape}" + (f", attn_mask {m.shape}" if m is not None else "")
            + (f", valid_lens {vl.shape}" if vl is not None else "")
            + (f", alibi_slopes {alibi.shape}" if alibi is not None else "") + ")") if nb else ""
    if vl is not None and q.ndim == 3 and nb:
        # a 3-D query over batched key/value: is valid_lens's reading ambiguous for
        # the whole batch? (the one-element check below cannot tell, nor can a block)
        try:
            V.valid_lens(_SDPA, _stand_in(vl.shape, np.int64), batch, q.shape[-3], q.shape[-2],
                         k.shape[-2], 3)
        except ValueError as exc:
            raise ValueError(str(exc).replace(f"{_SDPA}:", f"{op}:", 1)) from None
    vl_lead = 0 if q.ndim <= 3 or vl is None else min(vl.ndim, nb)
    _validate_call(op, one(q, lead_of(q, 3)), one(k, lead_of(k, 3)), one(v, lead_of(v, 3)),
                   note=note,
                   attn_mask=None if m is None else one(m, lead_of(m, 3)),
                   valid_lens=None if vl is None else one(vl, vl_lead),
                   alibi_slopes=None if alibi is None else one(alibi, lead_of(alibi, 1)), **kw)

    B = tuple(f"b{i}" for i in range(nb))
    # blockwise indices: b0.. batch; h/g query/kv heads; i/j query/key positions;
    # d, dk, e feature dims (a flat 2-D call's mask may have a size-1 head axis h1)
    q_ind: Tuple[str, ...] = ("i", "d") if flat else ("h", "i", "d")
    k_ind: Tuple[str, ...] = ("j", "dk") if flat else ("g", "j", "dk")
    v_ind: Tuple[str, ...] = ("j", "e") if flat else ("g", "j", "e")
    out_tail: Tuple[str, ...] = ("i", "e") if flat else ("h", "i", "e")
    scores: Tuple[str, ...] = ("h1", "i", "j") if flat else ("h", "i", "j")

    def aligned(x: Any, tail: Tuple[str, ...]) -> Tuple[str, ...]:
        return B[nb - (x.ndim - len(tail)):] + tail

    args = [q, aligned(q, q_ind), k, aligned(k, k_ind), v, aligned(v, v_ind)]
    if m is None:
        args += [None, None]
    else:
        full = B + scores
        m_ind = full[len(full) - m.ndim:]
        m = m.rechunk({ax: -1 for ax in range(max(0, m.ndim - 3), m.ndim)})
        args += [m, m_ind]
    if vl is None:
        args += [None, None]
    elif vl.ndim == 0:
        args += [vl.compute() if isinstance(vl, da.Array) else vl, None]
    elif q.ndim <= 3:
        args += [vl.rechunk(-1), tuple(f"w{i}" for i in range(vl.ndim))]
    else:
        vl_ind = B[:vl.ndim] if vl.ndim <= nb else B + ("i",)
        args += [vl.rechunk({ax: -1 for ax in range(nb, vl.ndim)}), vl_ind]

    if alibi is None:
        args += [None, None]
    else:   # (..., Hq): its batch dims follow the blocks', its heads are one chunk
        a_ind = (B + ("h",))[nb + 1 - alibi.ndim:] if not flat and alibi.ndim <= nb + 1 else \
            tuple(f"a{i}" for i in range(alibi.ndim))
        args += [alibi.rechunk({alibi.ndim - 1: -1} if alibi.ndim else {}), a_ind]

    result = np.dtype(q.dtype)
    lse_dtype = np.dtype(np.float64) if result == np.float64 else np.dtype(np.float32)
    out_ind = B + out_tail
    Lk = k.shape[-2]
    res = da.blockwise(_block_attention, out_ind, *args, concatenate=False, dtype=result,
                       meta=np.empty((0,) * len(out_ind), result),
                       name=f"attncore-attention-{tokenize(*args, kw)}", **kw)
    if "dropout_p" in kw and V.real_number(op, "dropout_p", kw["dropout_p"]) > 0 \
            and res.npartitions > 1:
        raise ValueError(
            f"{op}: dropout_p > 0 needs a single batch chunk ({res.npartitions} output blocks "
            f"here): attncore's dropout pattern is keyed by the batch index within one call, so "
            f"every chunk would drop the same weights. Rechunk the batch dims to one chunk")
    if not (return_weights or return_lse):
        return res
    results = [res.map_blocks(_pick, 0, dtype=result, meta=np.empty((0,) * res.ndim, result))]
    index = 1
    if return_weights:
        chunks = res.chunks[:-1] + ((Lk,),)
        results.append(res.map_blocks(_pick, index, chunks=chunks, dtype=result,
                                      meta=np.empty((0,) * res.ndim, result)))
        index += 1
    if return_lse:
        # not map_blocks(drop_axis=...): that would concatenate the tuple blocks
        results.append(da.blockwise(_pick, out_ind[:-1], res, out_ind, index, None,
                                    concatenate=False, dtype=lse_dtype,
                                    meta=np.empty((0,) * (res.ndim - 1), lse_dtype)))
    return tuple(results)
