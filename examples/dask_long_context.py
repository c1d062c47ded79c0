"""Long-context attention with the keys sharded over a Dask cluster.

A chunk of new queries (grouped-query heads, bottom-right causal, as in
chunked prefill against a long KV cache) attends to 65 536 keys split into 4
shards on a LocalCluster: each worker computes attention over its shard with
its log-sum-exp, and the partial results merge pairwise on the workers
(attncore.merge_attention). The example prints the largest difference from
the single-process result, and the timings, in float32 and float64.

    python examples/dask_long_context.py
    python examples/dask_long_context.py --keys 131072 --workers 2 --dtypes float32

Needs the `dask` extra: pip install "attncore[dask]".
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np

import attncore
import attncore.dask


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--keys", type=int, default=65536, help="key/value positions (default 65536)")
    p.add_argument("--queries", type=int, default=128, help="query positions (default 128)")
    p.add_argument("--heads", type=int, default=8, help="query heads (default 8)")
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads (default 2)")
    p.add_argument("--head-dim", type=int, default=64, help="head dimension (default 64)")
    p.add_argument("--shards", type=int, default=4, help="key shards (default 4)")
    p.add_argument("--workers", type=int, default=4,
                   help="LocalCluster worker processes, 1 thread each (default 4)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"],
                   choices=["float32", "float64"])
    return p.parse_args(argv)


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| over the entries where b is finite (lse is -inf for a
    row that sees no key; there a must be -inf too)."""
    finite = np.isfinite(b)
    assert (a[~finite] == b[~finite]).all()
    return float(np.max(np.abs(a[finite].astype(np.float64) - b[finite]), initial=0.0))


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
    from distributed import Client, LocalCluster  # type: ignore[import-not-found,unused-ignore]

    args = parse_args(argv)
    rng = np.random.default_rng(0)
    kw: Dict[str, Any] = dict(enable_gqa=True, is_causal="bottom_right", return_lse=True)
    results: Dict[str, Dict[str, float]] = {}
    print(f"query (1, {args.heads}, {args.queries}, {args.head_dim}), key/value "
          f"(1, {args.kv_heads}, {args.keys}, {args.head_dim}), bottom-right causal, "
          f"{args.shards} shards on {args.workers} workers")
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        for name in args.dtypes:
            dtype = np.dtype(name)
            q = rng.standard_normal((1, args.heads, args.queries, args.head_dim)).astype(dtype)
            k = rng.standard_normal((1, args.kv_heads, args.keys, args.head_dim)).astype(dtype)
            v = rng.standard_normal((1, args.kv_heads, args.keys, args.head_dim)).astype(dtype)

            # warm-up: the workers import attncore on their first task
            attncore.dask.sharded_attention(q[..., :1, :], k[..., :64, :], v[..., :64, :],
                                            client=client, shards=args.shards, enable_gqa=True)
            t0 = time.perf_counter()
            ref, ref_lse = attncore.scaled_dot_product_attention(q, k, v, **kw)
            t_single = time.perf_counter() - t0

            # K/V sent from the client: split, scattered to the workers, merged there
            t0 = time.perf_counter()
            out, lse = attncore.dask.sharded_attention(q, k, v, client=client,
                                                       shards=args.shards, **kw)
            t_sent = time.perf_counter() - t0

            # K/V already on the cluster (e.g. a KV cache kept there): lists of
            # futures, one per shard; only the queries travel
            k_shards, v_shards = attncore.dask.scatter_shards(k, v, client=client,
                                                              shards=args.shards)
            t0 = time.perf_counter()
            out2, lse2 = attncore.dask.sharded_attention(q, k_shards, v_shards, **kw)
            t_resident = time.perf_counter() - t0

            d_out, d_lse = max_diff(out, ref), max_diff(lse, ref_lse)
            d_out2 = max_diff(out2, ref)
            limit = 1e-4 if dtype == np.float32 else 1e-12
            assert max(d_out, d_lse, d_out2) < limit, (d_out, d_lse, d_out2)
            results[name] = dict(max_diff_out=d_out, max_diff_lse=d_lse,
                                 max_diff_out_resident=d_out2, single_s=t_single,
                                 sharded_sent_s=t_sent, sharded_resident_s=t_resident)
            print(f"{name}: max |out - single| = {d_out:.3g}, max |lse - single| = {d_lse:.3g} "
                  f"(K/V resident: {d_out2:.3g})")
            print(f"{name}: single process {t_single * 1e3:.1f} ms; sharded with K/V sent "
                  f"{t_sent * 1e3:.1f} ms; sharded with K/V resident {t_resident * 1e3:.1f} ms")
    return results


if __name__ == "__main__":
    main()
