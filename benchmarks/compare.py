"""Print the README's benchmark tables: every reference SDPA shape and the
attention-family shapes, attncore vs each installed peer, measured in one
process with implementations alternating over rounds (best time each).

    python benchmarks/compare.py [--threads N] [--rounds R] [--suite sdpa,family]
"""
import argparse
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import family_peers as P  # noqa: E402

from attncore import _config, _peers  # noqa: E402
from attncore.__main__ import progress, time_call  # noqa: E402


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def sdpa_groups(threads):
    for name, (B, Hq, Hkv, Lq, Lk, D, causal) in _peers.REFERENCE_SHAPES.items():
        label = (f"{name} {B}x{Hq}x{Lq}x{D}" if Hq == Hkv and Lq == Lk
                 else f"{name} Hq={Hq} Hkv={Hkv} Lq={Lq} Lk={Lk} D={D}") + (" causal" if causal else "")
        q, k, v = _peers.make_inputs(B, Hq, Hkv, Lq, Lk, D)
        impls = {"attncore": _peers.attncore_sdpa(q, k, v, causal, threads)}
        for peer, build in _peers.PEERS.items():
            try:
                impls[peer] = build(q, k, v, causal, threads)
            except Exception:
                impls[peer] = None
        yield label, impls, _peers.attention_flops(B, Hq, Lq, Lk, D), "GFLOP/s"


def family_groups(threads):
    s = P.ADDITIVE
    args = P.additive_inputs(**s)
    yield (f"additive B={s['B']} Lq=Lk={s['L']} D={s['D']} H={s['H']}",
           {n: f(*args, threads) for n, f in P.ADDITIVE_IMPLS.items()},
           s["B"] * s["L"] ** 2 * s["H"], "G tanh terms/s")
    for name, (B, L, E, H) in P.MHA.items():
        args = P.mha_inputs(B, L, E, H)
        yield (f"MultiHeadAttention {name}", {n: f(*args, threads) for n, f in P.MHA_IMPLS.items()},
               P.mha_flops(B, L, E, H), "GFLOP/s")
    s = P.DECODE
    args = P.decode_inputs(**s)
    kv_bytes = 2 * s["Hkv"] * s["cache"] * s["D"] * 4
    yield (f"decode step Hq={s['Hq']} Hkv={s['Hkv']} D={s['D']} cache={s['cache']}",
           {n: f(*args, threads) for n, f in P.DECODE_IMPLS.items()}, kv_bytes, "GB/s of K/V")
    import numpy as np
    for M, K, N in [(1024, 768, 2304), (2048, 1024, 1024)]:
        rng = np.random.default_rng(0)
        x, w = rng.standard_normal((M, K), dtype=np.float32), rng.standard_normal((N, K), dtype=np.float32)
        b = rng.standard_normal(N, dtype=np.float32)
        yield (f"linear M={M} K={K} N={N}", {n: f(x, w, b, threads) for n, f in P.linear_impls().items()},
               2 * M * N * K, "GFLOP/s")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=_config.default_threads())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--suite", default="sdpa,family")
    args = parser.parse_args()
    suites = {"sdpa": sdpa_groups, "family": family_groups}
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, {args.threads} threads, float32, "
          f"ISA {_config.active_isa_name()}; best of {args.rounds} alternating rounds\n")
    for suite in args.suite.split(","):
        print(f"| {suite} | implementation | ms | rate | attncore speed-up |")
        print("|---|---|---:|---:|---:|")
        for label, impls, work, unit in suites[suite](args.threads):
            impls = {n: f for n, f in impls.items() if f is not None}
            best = {n: float("inf") for n in impls}
            for r in range(args.rounds):
                for n, f in impls.items():
                    progress(r, args.rounds, f"{label[:30]} {n}")
                    best[n] = min(best[n], time_call(f))
            progress(args.rounds, args.rounds, "")
            for n, t in best.items():
                ratio = "" if n == "attncore" else f"{t / best['attncore']:.2f}x"
                impl = f"**{n}**" if n == "attncore" else n
                print(f"| {label} | {impl} | {t * 1e3:.2f} | {work / t / 1e9:.1f} {unit} | {ratio} |",
                      flush=True)
        print()


if __name__ == "__main__":
    main()
