"""The machine's own ceilings, measured in the same process as the attention
benchmarks: float32 GEMM through NumPy's BLAS and memory copy bandwidth."""
import numpy as np

from benchutil import SMALL


def test_gemm_f32(run_benchmark):
    n = 256 if SMALL else 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    run_benchmark(lambda: a @ b, "ceiling", 2 * n**3, what=f"float32 GEMM {n}^3 (NumPy BLAS)")


def test_memory_copy(run_benchmark):
    n = (1 << 16) if SMALL else (64 << 20) // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    run_benchmark(lambda: np.copyto(dst, src), "ceiling", 0,
                  what=f"copy {src.nbytes >> 20} MiB", bytes_moved=2 * src.nbytes)
