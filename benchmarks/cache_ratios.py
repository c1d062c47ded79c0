"""How much faster one decode step reads each compact KVCache than the
float32 cache: the ratios issue 9's bars are written in (bfloat16 and float16
at least 1.8x, int8 at least 3x, at the S6 shape).

    python benchmarks/cache_ratios.py [--threads N] [--rounds R] [--best K] [--small]

The float32 cache is bound by memory and the compact ones by arithmetic, so
their ratio moves with the memory's speed of the minute; compare.py times
each cache back to back, which also lets a small cache stay in L3. Here the
four caches take turns within every round (the order reversed every other
round), each timed as the best of K steps, and the ratio is formed per
round: the median and quartiles over R rounds are the figure.

S6: 32 query heads over 8 KV heads, 8192 cached positions, head size 128,
one query row (--small: 1024 positions, for a quick check that it runs).
"""
import argparse
import time

import numpy as np

import attncore
from attncore import _config

STORAGES = ("float32", "bfloat16", "float16", "int8")


def best_step(cache, q, threads, best):
    """The fastest of `best` decode steps, in seconds."""
    fastest = float("inf")
    for _ in range(best):
        t0 = time.perf_counter()
        cache.attend(q, num_threads=threads)
        fastest = min(fastest, time.perf_counter() - t0)
    return fastest


def positive(text):
    """argparse type: an int >= 1."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {n}")
    return n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=positive, default=2)
    ap.add_argument("--rounds", type=positive, default=12)
    ap.add_argument("--best", type=positive, default=5, help="steps per cache and round (the best counts)")
    ap.add_argument("--small", action="store_true", help="1024 cached positions instead of 8192")
    args = ap.parse_args(argv)

    Hq, Hkv, D, L = 32, 8, 128, 1024 if args.small else 8192
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((1, Hkv, L, D), dtype=np.float32)
    values = rng.standard_normal((1, Hkv, L, D), dtype=np.float32)
    q = rng.standard_normal((1, Hq, 1, D), dtype=np.float32)
    caches = {}
    for storage in STORAGES:
        caches[storage] = attncore.KVCache(max_len=L, num_heads=Hkv, head_dim=D, dtype=storage)
        caches[storage].append(keys, values)
    for cache in caches.values():   # warm-up
        best_step(cache, q, args.threads, 2)

    times = {s: [] for s in STORAGES}
    for r in range(args.rounds):
        for storage in (STORAGES if r % 2 == 0 else STORAGES[::-1]):
            times[storage].append(best_step(caches[storage], q, args.threads, args.best))
    f32 = np.array(times["float32"])
    print(f"decode step, Hq {Hq} / Hkv {Hkv}, {L} positions, D {D}; {args.threads} threads, "
          f"ISA {_config.active_isa_name()}")
    print(f"{args.rounds} rounds, best of {args.best} steps per cache and round")
    print(f"  float32   {np.median(f32) * 1e3:7.3f} ms (median)")
    for storage in STORAGES[1:]:
        t = np.array(times[storage])
        q1, med, q3 = np.percentile(f32 / t, [25, 50, 75])
        print(f"  {storage:9s} {np.median(t) * 1e3:7.3f} ms   {med:.2f}x the float32 cache "
              f"(quartiles {q1:.2f}-{q3:.2f})")


if __name__ == "__main__":
    main()
