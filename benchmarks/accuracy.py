"""Print docs/numerics.md's measured tables: max |error| against float64 of
attncore and (if installed) torch on the reference shapes, and the long-key
error with identical keys and values.

    python benchmarks/accuracy.py [--seeds N] [--long]
"""
import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attncore  # noqa: E402
from attncore import _config, _peers  # noqa: E402


def float64_attention(q, k, v, causal):
    G = q.shape[1] // k.shape[1]
    Lq, Lk, D = q.shape[2], k.shape[2], q.shape[3]
    out = np.empty(q.shape[:3] + (v.shape[3],))
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            s = q[b, h].astype(np.float64) @ k[b, h // G].astype(np.float64).T / math.sqrt(D)
            if causal:
                s = np.where(np.tril(np.ones((Lq, Lk), bool), Lk - Lq), s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[b, h] = (p @ v[b, h // G].astype(np.float64)) / p.sum(-1, keepdims=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--long", action="store_true", help="also the long-Lk table (a few GB)")
    args = ap.parse_args()
    torch = None
    if _peers.installed("torch"):
        import torch
        torch.set_num_threads(attncore.config()["threads"])
    print(f"kernel level {_config.active_isa_name()}; max |error| vs float64 (mean over seeds)")
    print("| shape | attncore | torch | ratio |\n|---|---:|---:|---:|")
    for name, (B, Hq, Hkv, Lq, Lk, D, causal) in _peers.REFERENCE_SHAPES.items():
        ea, et = [], []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            q = rng.standard_normal((B, Hq, Lq, D), dtype=np.float32)
            k = rng.standard_normal((B, Hkv, Lk, D), dtype=np.float32)
            v = rng.standard_normal((B, Hkv, Lk, D), dtype=np.float32)
            ref = float64_attention(q, k, v, causal)
            ea.append(np.abs(attncore.scaled_dot_product_attention(
                q, k, v, is_causal=causal and "bottom_right", enable_gqa=True) - ref).max())
            if torch is not None:
                with torch.no_grad():
                    t = torch.nn.functional.scaled_dot_product_attention(
                        *(torch.from_numpy(x) for x in (q, k, v)), is_causal=causal, enable_gqa=True)
                et.append(np.abs(t.numpy() - ref).max())
        a = np.mean(ea)
        t = np.mean(et) if et else float("nan")
        print(f"| {name} | {a:.2e} | {t:.2e} | {a / t:.2f} |")
    if args.long:
        print("\nidentical keys and values (exact output = the value row): max relative error")
        for p in (16, 18, 20, 22):
            Lk = 2**p
            rng = np.random.default_rng(0)
            krow, vrow = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
            k = np.ascontiguousarray(np.broadcast_to(krow, (1, 1, Lk, 16)))
            v = np.ascontiguousarray(np.broadcast_to(vrow, (1, 1, Lk, 16)))
            q = rng.standard_normal((1, 1, 2, 16)).astype(np.float32)
            a = attncore.scaled_dot_product_attention(q, k, v)
            line = f"Lk=2^{p}: attncore {(np.abs(a - vrow) / np.abs(vrow)).max():.1e}"
            if torch is not None:
                with torch.no_grad():
                    t = torch.nn.functional.scaled_dot_product_attention(
                        *(torch.from_numpy(x) for x in (q, k, v))).numpy()
                line += f", torch {(np.abs(t - vrow) / np.abs(vrow)).max():.1e}"
            print(line)


if __name__ == "__main__":
    main()
