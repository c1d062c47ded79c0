"""python -m attncore: configuration, a self-check of every kernel level
against the pure-Python reference, and a short benchmark table against NumPy
and any installed peer (torch, onnxruntime, openvino).

Options: --quick (tiny shapes, for smoke tests), --threads N, --no-bench.
"""
import argparse
import sys
import time

import numpy as np

from . import _config, _peers, reference, scaled_dot_product_attention, show_config

BENCH_SHAPES = {
    # name: (B, Hq, Hkv, Lq, Lk, D, causal)
    "S1 1x8x512x64": _peers.REFERENCE_SHAPES["S1"],
    "S5 1x16x2048x64 causal": _peers.REFERENCE_SHAPES["S5"],
    "S6 decode 32/8 heads, Lk 8192, D 128": _peers.REFERENCE_SHAPES["S6"],
}
QUICK_SHAPES = {
    "tiny 1x2x64x16": (1, 2, 2, 64, 64, 16, False),
    "tiny causal": (1, 2, 2, 64, 64, 16, True),
    "tiny decode": (1, 4, 2, 1, 600, 16, False),
}
CHECKS = [
    # (B, Hq, Hkv, Lq, Lk, D, options)
    ((2, 4, 2, 9, 13, 8), dict(is_causal=True, enable_gqa=True)),
    ((1, 2, 2, 33, 70, 5), dict(attn_mask="bool")),
    ((1, 8, 2, 1, 600, 8), dict(enable_gqa=True, is_causal="bottom_right")),
]


def progress(done, total, label, width=28):
    """A progress bar on stderr (only on a terminal: logs stay clean)."""
    if not sys.stderr.isatty():
        return
    filled = int(width * done / total)
    sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<44}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\r" + " " * (width + 60) + "\r")


def self_check():
    """Each supported kernel level against the reference; returns True if all pass."""
    print("\nself-check against attncore.reference (float32, max abs error):")
    ok = True
    rng = np.random.default_rng(0)
    for level in _config.supported_isas():
        worst = 0.0
        with _config.use_isa(level):
            for (B, Hq, Hkv, Lq, Lk, D), opts in CHECKS:
                q = rng.standard_normal((B, Hq, Lq, D)).astype(np.float32)
                k = rng.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
                v = rng.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
                opts = dict(opts)
                if opts.get("attn_mask") == "bool":
                    opts["attn_mask"] = rng.random((Lq, Lk)) > 0.3
                got = scaled_dot_product_attention(q, k, v, **opts)
                want = reference.scaled_dot_product_attention(q, k, v, **opts)
                worst = max(worst, float(np.abs(got - want).max()))
        passed = worst < 1e-5
        ok &= passed
        print(f"  {level:<13} {'ok  ' if passed else 'FAIL'} (max error {worst:.1e})")
    return ok


def time_call(fn, budget=0.4, min_reps=3, max_reps=20):
    """Best-of-N wall time; N adapts so that a call set takes about `budget` s.

    Another runtime's worker threads keep spinning for a while after its last
    call and, on a small machine, steal cores from whoever runs next; the
    short sleep lets them go idle so that each implementation is timed alone.
    """
    time.sleep(0.05)
    fn()  # warm-up (allocations, peers' lazy compilation)
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def benchmark(shapes, threads, rounds=2):
    """Time attncore and every installed peer on each shape. Implementations
    alternate over `rounds` rounds and keep their best time, so that a noisy
    moment on a shared machine does not decide a comparison."""
    names = ["attncore"] + list(_peers.PEERS)
    rows = []
    total = len(shapes) * len(names) * rounds
    done = 0
    for label, (B, Hq, Hkv, Lq, Lk, D, causal) in shapes.items():
        q, k, v = _peers.make_inputs(B, Hq, Hkv, Lq, Lk, D)
        calls = {}
        for name in names:
            build = _peers.attncore_sdpa if name == "attncore" else _peers.PEERS[name]
            try:
                fn = build(q, k, v, causal, threads)
            except Exception:  # a peer that cannot express this problem
                fn = None
            if fn is not None:
                calls[name] = fn
        best = {}
        for _ in range(rounds):
            for name in names:
                progress(done, total, f"{label.split()[0]} {name}")
                done += 1
                if name in calls:
                    best[name] = min(best.get(name, float("inf")), time_call(calls[name]))
        flops = _peers.attention_flops(B, Hq, Lq, Lk, D, causal=causal)
        rows += [(label, name, best[name], flops) for name in names if name in best]
    progress(total, total, "done")
    return rows


def _positive_int(text):
    """--threads: an int >= 1 (argparse reports anything else as a usage error)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return n


def print_table(rows, threads):
    print(f"\nbenchmark: float32, {threads} threads, best of repeated runs "
          f"(GFLOP/s = 4*B*Hq*Lq*Lk*D / time; causal: the computed half, (Lk+1)/(2Lk) of it)")
    header = f"  {'shape':<38} {'implementation':<16} {'ms':>9} {'GFLOP/s':>8} {'attncore speed-up':>18}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    ours = {label: s for label, name, s, _ in rows if name == "attncore"}
    for label, name, seconds, flops in rows:
        speedup = "" if name == "attncore" else f"{seconds / ours[label]:.2f}x"
        print(f"  {label:<38} {name:<16} {seconds * 1e3:9.2f} {flops / seconds / 1e9:8.1f} {speedup:>18}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m attncore", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--quick", action="store_true", help="tiny benchmark shapes (smoke test)")
    parser.add_argument("--threads", type=_positive_int, default=None, help="threads for every implementation")
    parser.add_argument("--no-bench", action="store_true", help="skip the benchmark table")
    args = parser.parse_args(argv)
    threads = args.threads or _config.default_threads()

    show_config()
    ok = self_check()
    if not args.no_bench:
        rows = benchmark(QUICK_SHAPES if args.quick else BENCH_SHAPES, threads)
        print_table(rows, threads)
        missing = [p for p in ("torch", "onnxruntime", "openvino") if not _peers.installed(p)]
        if missing:
            print(f"\n  (not installed, so not compared: {', '.join(missing)}; "
                  f"pip install '.[compare]' adds them)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
