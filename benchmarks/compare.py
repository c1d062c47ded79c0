"""Print the README's benchmark tables: every reference SDPA shape and the
attention-family shapes, attncore vs each installed peer, measured in one
process with implementations alternating over rounds (best time each).

    python benchmarks/compare.py [--threads N] [--rounds R] [--suite sdpa,family,dtypes,variants,e2e]

The ceilings are this machine's float32 GEMM (torch's BLAS when installed,
else NumPy's) and read bandwidth (a sum over 512 MiB). The header gives
them as measured first; then each shape times the ceiling of its kind in
the same alternating rounds as the implementations (a "ceiling" row), and
"% of ceiling" is each rate over that: GFLOP/s rows over the GEMM rate,
GB/s rows over the read bandwidth. On a shared machine whose speed drifts
by tens of percent over minutes, only a ceiling timed next to the shape
gives a meaningful share.
"""
import argparse
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import family_peers as P  # noqa: E402
import more_groups  # noqa: E402

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


def e2e_groups(threads):
    import e2e

    return e2e.e2e_groups(threads)


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
        if Lq == 1:   # a decode step reads K and V once: bandwidth is its ceiling
            yield label, impls, 2 * B * Hkv * Lk * D * 4, "GB/s of K/V"
        elif causal:  # the kernel skips the masked half; count what it computes
            yield label, impls, _peers.attention_flops(B, Hq, Lq, Lk, D, causal=True), \
                "GFLOP/s (causal half)"
        else:
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


def ceiling_probes(threads):
    """{"GFLOP/s": (fn, flop, what), "GB/s": (fn, bytes, what)}: the GEMM and
    read-bandwidth probes with `threads` threads."""
    import numpy as np

    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    big = np.ones((512 << 20) // 4, np.float32)
    if _peers.installed("torch"):
        import torch

        torch.set_num_threads(threads)
        ta, tb, tbig = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(big)
        gemm, read, who = (lambda: ta @ tb), (lambda: tbig.sum()), "torch"
    else:
        gemm, read, who = (lambda: a @ b), (lambda: big.sum()), "NumPy"
    read_how = f"{who} sum of 512 MiB" + ("" if who == "torch" else
                                          ", one thread: a low estimate of the bandwidth")
    return {"GFLOP/s": (gemm, 2 * n**3, f"{who} float32 GEMM {n}^3"),
            "GB/s": (read, big.nbytes, read_how)}


def ceilings(probes):
    """(GEMM GFLOP/s, what ran it), (read GB/s, what ran it), best of 3."""
    out = []
    for kind in ("GFLOP/s", "GB/s"):
        fn, work, what = probes[kind]
        out.append((work / min(time_call(fn) for _ in range(3)) / 1e9, what))
    return out


# the suites whose implementations compute the same array: each is checked
# against attncore's before it is timed (a fast wrong answer is no result)
CHECKED_SUITES = ("sdpa", "dtypes", "variants")


def main():
    from attncore.__main__ import _positive_int

    suites = {"sdpa": sdpa_groups, "family": family_groups, "dtypes": more_groups.dtype_groups,
              "variants": more_groups.variant_groups, "e2e": e2e_groups}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=_positive_int, default=_config.default_threads(),
                        help="threads for every implementation, NumPy's BLAS included "
                             "(default: the cores)")
    parser.add_argument("--rounds", type=_positive_int, default=3,
                        help="alternating rounds; each implementation's best time counts")
    parser.add_argument("--suite", default="sdpa,family",
                        help=f"comma-separated, from: {', '.join(suites)} (default: sdpa,family)")
    args = parser.parse_args()
    unknown = [name for name in args.suite.split(",") if name not in suites]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(suites)}")
    try:   # NumPy's BLAS on the same threads (the test extra has threadpoolctl)
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads, user_api="blas")
    except ImportError:
        pass
    missing = [p for p in ("torch", "onnxruntime", "openvino") if not _peers.installed(p)]
    probes = ceiling_probes(args.threads)
    (gemm, gemm_how), (bw, bw_how) = ceilings(probes)
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, {args.threads} threads, "
          f"ISA {_config.active_isa_name()}; best of {args.rounds} alternating rounds")
    print(f"ceilings: {gemm:.1f} GFLOP/s ({gemm_how}), {bw:.1f} GB/s read ({bw_how})")
    if missing:
        print(f"not installed, so not compared: {', '.join(missing)} "
              f"(pip install '.[compare]'; the e2e suite also needs '.[hf]')")
    print()
    for suite in args.suite.split(","):
        print(f"| {suite} | implementation | ms | rate | % of ceiling | attncore speed-up |")
        print("|---|---|---:|---:|---:|---:|")
        for label, impls, work, unit in suites[suite](args.threads):
            impls = {n: f for n, f in impls.items() if f is not None}
            if suite in CHECKED_SUITES and "attncore" in impls:
                want = impls["attncore"]()
                for n in [n for n in impls if n != "attncore"]:
                    try:
                        _peers.check_same(n, impls[n](), want)
                    except AssertionError as wrong:
                        print(f"| {label} | {n} | | not timed: {wrong} | | |", flush=True)
                        del impls[n]
            kind = next((k for k in probes if unit.startswith(k)), None)
            if kind:   # the ceiling, timed in the same rounds
                impls["ceiling"] = probes[kind][0]
            best = {n: float("inf") for n in impls}
            for r in range(args.rounds):
                for n, f in impls.items():
                    progress(r, args.rounds, f"{label[:30]} {n}")
                    best[n] = min(best[n], time_call(f))
            progress(args.rounds, args.rounds, "")
            ceiling = probes[kind][1] / best.pop("ceiling") / 1e9 if kind else None
            for n, t in best.items():
                ratio = "" if n == "attncore" else f"{t / best['attncore']:.2f}x"
                impl = f"**{n}**" if n == "attncore" else n
                rate = work / t / 1e9
                share = f"{100 * rate / ceiling:.0f}%" if ceiling else ""
                print(f"| {label} | {impl} | {t * 1e3:.2f} | {rate:.1f} {unit} | {share} | {ratio} |",
                      flush=True)
            if kind:
                print(f"| {label} | ceiling: {probes[kind][2]} | | {ceiling:.1f} {kind} | 100% | |", flush=True)
        print()


if __name__ == "__main__":
    main()
