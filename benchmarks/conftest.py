"""pytest-benchmark setup shared by the benchmark files.

Run:   pytest benchmarks/ --benchmark-group-by=group --benchmark-columns=min,median,ops
Smoke: ATTNCORE_BENCH_SMALL=1 pytest benchmarks/ --benchmark-disable   (CI: shrunken
       shapes, each benchmark body runs once, so the files cannot rot)
Threads: ATTNCORE_BENCH_THREADS=N (default: the cores), for every implementation,
       NumPy's BLAS included.

Benchmarks never assert a time. Each result carries GFLOP/s in extra_info;
peers of one shape share a group so they sit side by side.
"""
import os
import time

import pytest

from attncore import _config

from benchutil import SMALL


THREADS = int(os.environ.get("ATTNCORE_BENCH_THREADS", _config.default_threads()))


@pytest.fixture(scope="session", autouse=True)
def blas_threads():
    """NumPy's BLAS on the same thread count as every other implementation."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(THREADS, user_api="blas"):
        yield


@pytest.fixture
def threads():
    return THREADS


@pytest.fixture
def run_benchmark(benchmark):
    """run_benchmark(fn, group, flops, **info): time fn, record GFLOP/s."""

    def run(fn, group, flops, **info):
        benchmark.group = group
        benchmark.extra_info.update(info)
        benchmark.extra_info["flops"] = flops
        # let another runtime's spinning worker threads go idle first
        time.sleep(0.05)
        result = benchmark.pedantic(fn, rounds=1 if SMALL else 7, warmup_rounds=1, iterations=1)
        stats = getattr(benchmark, "stats", None)
        if stats is not None and flops:
            benchmark.extra_info["gflops_best"] = round(flops / stats.stats.min / 1e9, 2)
            benchmark.extra_info["gflops_median"] = round(flops / stats.stats.median / 1e9, 2)
        return result

    return run
