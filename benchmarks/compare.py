"""Print the README's benchmark table: every reference shape, attncore vs
each installed peer, measured in one process with implementations
alternating over rounds (see attncore/__main__.py).

    python benchmarks/compare.py [--threads N] [--rounds R] [--shapes S1,S3]
"""
import argparse
import platform
import subprocess

from attncore import _config, _peers
from attncore.__main__ import benchmark


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=_config.default_threads())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", default=",".join(_peers.REFERENCE_SHAPES))
    args = parser.parse_args()
    shapes = {}
    for name in args.shapes.split(","):
        B, Hq, Hkv, Lq, Lk, D, causal = _peers.REFERENCE_SHAPES[name]
        label = (f"{name} {B}x{Hq}x{Lq}x{D}" if Hq == Hkv and Lq == Lk
                 else f"{name} Hq={Hq} Hkv={Hkv} Lq={Lq} Lk={Lk} D={D}") + (" causal" if causal else "")
        shapes[label] = (B, Hq, Hkv, Lq, Lk, D, causal)
    rows = benchmark(shapes, args.threads, rounds=args.rounds)
    print(f"\n{cpu_model()}, {args.threads} threads, float32, ISA {_config.active_isa_name()}; "
          f"best of {args.rounds} alternating rounds\n")
    print("| shape | implementation | ms | GFLOP/s | attncore speed-up |")
    print("|---|---|---:|---:|---:|")
    ours = {label: s for label, name, s, _ in rows if name == "attncore"}
    for label, name, seconds, flops in rows:
        ratio = "" if name == "attncore" else f"{seconds / ours[label]:.2f}x"
        impl = f"**{name}**" if name == "attncore" else name
        print(f"| {label} | {impl} | {seconds * 1e3:.2f} | {flops / seconds / 1e9:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
