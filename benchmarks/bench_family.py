"""The attention family (issue shapes): additive attention vs the usual
broadcasting implementations, MultiHeadAttention vs torch.nn.MultiheadAttention,
a KV-cache decode step vs torch SDPA (GQA), and attncore's GEMM vs NumPy's BLAS."""
import numpy as np
import pytest

import family_peers as P
from benchutil import SMALL


@pytest.mark.parametrize("impl", list(P.ADDITIVE_IMPLS))
def test_additive(run_benchmark, threads, impl):
    s = dict(P.ADDITIVE)
    if SMALL:
        s = dict(B=1, L=33, D=8, H=16)
    fn = P.ADDITIVE_IMPLS[impl](*P.additive_inputs(**s), threads)
    if fn is None:
        pytest.skip(f"{impl} is not installed")
    run_benchmark(fn, f"additive B={s['B']} Lq=Lk={s['L']} D={s['D']} H={s['H']}", 0, impl=impl,
                  tanh_evaluations=s["B"] * s["L"] ** 2 * s["H"])


@pytest.mark.parametrize("impl", list(P.MHA_IMPLS))
@pytest.mark.parametrize("name", list(P.MHA))
def test_mha(run_benchmark, threads, name, impl):
    B, L, E, H = P.MHA[name] if not SMALL else (2, 16, 32, 4)
    fn = P.MHA_IMPLS[impl](*P.mha_inputs(B, L, E, H), threads)
    if fn is None:
        pytest.skip(f"{impl} is not installed")
    run_benchmark(fn, f"mha {name}", P.mha_flops(B, L, E, H), impl=impl)


@pytest.mark.parametrize("impl", list(P.DECODE_IMPLS))
def test_decode_step(run_benchmark, threads, impl):
    s = dict(P.DECODE) if not SMALL else dict(Hq=4, Hkv=2, D=16, cache=64)
    fn = P.DECODE_IMPLS[impl](*P.decode_inputs(**s), threads)
    if fn is None:
        pytest.skip(f"{impl} is not installed")
    run_benchmark(fn, f"decode Hq={s['Hq']} Hkv={s['Hkv']} D={s['D']} cache={s['cache']}",
                  4 * s["Hq"] * s["cache"] * s["D"], impl=impl,
                  kv_bytes=2 * s["Hkv"] * s["cache"] * s["D"] * 4)


@pytest.mark.parametrize("impl", list(P.linear_impls()))
@pytest.mark.parametrize("shape", [(1024, 768, 2304), (2048, 1024, 1024)], ids=lambda s: "x".join(map(str, s)))
def test_linear(run_benchmark, threads, impl, shape):
    M, K, N = shape if not SMALL else (40, 24, 33)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((N, K), dtype=np.float32)
    b = rng.standard_normal(N, dtype=np.float32)
    run_benchmark(P.linear_impls()[impl](x, w, b, threads), f"linear M={M} K={K} N={N}", 2 * M * N * K,
                  impl=impl)
