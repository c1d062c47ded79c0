"""Shared by the benchmark files: the smoke-test switch and shape shrinking."""
import os

SMALL = os.environ.get("ATTNCORE_BENCH_SMALL") == "1"


def shrink(shape):
    """Smoke-test version of a benchmark shape: tiny, same structure."""
    B, Hq, Hkv, Lq, Lk, D, causal = shape
    group = Hq // Hkv
    kv_heads = min(Hkv, 2)
    return (1, kv_heads * min(group, 4), kv_heads, min(Lq, 33), min(Lk, 70), min(D, 16), causal)
