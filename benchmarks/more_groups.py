"""compare.py's "dtypes" and "variants" suites: 16-bit SDPA and the compact
KV caches against torch, and the variant kernels (sliding window, sigmoid,
soft-capping, hard top-k) against what a torch user writes for them.

Each group is compare.py's row format: (label, {impl: fn or None}, work, unit).
"""
import numpy as np

import attncore
from attncore import _peers

DTYPE_SHAPE = (1, 16, 16, 2048, 2048, 64)       # S3
DECODE_SHAPE = dict(Hq=32, Hkv=8, D=128, cache=8192)   # S6
VARIANT_SHAPE = (1, 8, 8, 4096, 4096, 64)
WINDOW = 256


def _torch(threads):
    if not _peers.installed("torch"):
        return None
    import torch

    torch.set_num_threads(threads)
    return torch


def _torch_call(torch, fn):
    def run():
        with torch.inference_mode():
            return fn()
    return run


def dtype_groups(threads):
    """S3 in float32, bfloat16 and float16; S6 decode from every KVCache storage."""
    import ml_dtypes  # numpy's bfloat16 (attncore's test/compare extra)

    B, H, _, L, _, D = DTYPE_SHAPE
    rng = np.random.default_rng(0)
    base = [rng.standard_normal((B, H, L, D), dtype=np.float32) for _ in range(3)]
    torch = _torch(threads)
    for name, np_dtype, torch_name in [("float32", np.float32, "float32"),
                                       ("bfloat16", ml_dtypes.bfloat16, "bfloat16"),
                                       ("float16", np.float16, "float16")]:
        q, k, v = (a.astype(np_dtype) for a in base)
        impls = {"attncore": lambda q=q, k=k, v=v: attncore.scaled_dot_product_attention(
            q, k, v, num_threads=threads)}
        if torch is not None:
            tq, tk, tv = (torch.from_numpy(a).to(getattr(torch, torch_name)) for a in base)
            impls["torch"] = _torch_call(
                torch, lambda tq=tq, tk=tk, tv=tv: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv))
        yield (f"S3 {B}x{H}x{L}x{D} {name}", impls, _peers.attention_flops(B, H, L, L, D), "GFLOP/s")

    s = DECODE_SHAPE
    keys = rng.standard_normal((1, s["Hkv"], s["cache"], s["D"]), dtype=np.float32)
    values = rng.standard_normal((1, s["Hkv"], s["cache"], s["D"]), dtype=np.float32)
    q = rng.standard_normal((1, s["Hq"], 1, s["D"]), dtype=np.float32)
    # bytes per stored element; int8 adds a float32 scale per token and head
    for storage, itemsize in [("float32", 4), ("bfloat16", 2), ("float16", 2), ("int8", 1 + 4 / s["D"])]:
        cache = attncore.KVCache(max_len=s["cache"], num_heads=s["Hkv"], head_dim=s["D"], dtype=storage)
        cache.append(keys, values)
        stored = int(2 * s["Hkv"] * s["cache"] * s["D"] * itemsize)
        impls = {"attncore": lambda c=cache: c.attend(q, num_threads=threads)}
        if storage == "float32" and torch is not None:
            # torch has no compact KV cache to read: its row is the float32 one
            tq, tk, tv = torch.from_numpy(q), torch.from_numpy(keys), torch.from_numpy(values)
            impls["torch"] = _torch_call(torch, lambda: torch.nn.functional.scaled_dot_product_attention(
                tq, tk, tv, enable_gqa=True))
        yield (f"S6 decode, KVCache {storage}", impls, stored, "GB/s of stored K/V")


def variant_groups(threads):
    """Variants in the fused kernel vs the masked / composed torch formula."""
    B, H, _, L, _, D = VARIANT_SHAPE
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, H, L, D), dtype=np.float32) for _ in range(3))
    torch = _torch(threads)
    F = torch.nn.functional if torch is not None else None
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v)) if torch is not None else (None,) * 3
    scale = 1.0 / np.sqrt(D)
    full = _peers.attention_flops(B, H, L, L, D)

    # sliding window (causal, WINDOW keys back): torch needs a band mask
    impls = {"attncore": lambda: attncore.scaled_dot_product_attention(
        q, k, v, is_causal=True, window=(WINDOW - 1, 0), num_threads=threads)}
    if torch is not None:
        i = torch.arange(L)
        band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - WINDOW)
        impls["torch (band mask)"] = _torch_call(torch, lambda: F.scaled_dot_product_attention(
            tq, tk, tv, attn_mask=band))
    yield (f"window {WINDOW} causal {B}x{H}x{L}x{D}", impls,
           4 * B * H * L * WINDOW * D, "GFLOP/s (in-window)")

    # sigmoid attention: weights sigmoid(scale q.k + b), no normalisation
    b = -np.log(L)
    impls = {"attncore": lambda: attncore.sigmoid_attention(q, k, v, bias=b, num_threads=threads)}
    if torch is not None:
        impls["torch (composed)"] = _torch_call(
            torch, lambda: torch.sigmoid(tq @ tk.transpose(-1, -2) * scale + b) @ tv)
    yield f"sigmoid {B}x{H}x{L}x{D}", impls, full, "GFLOP/s"

    # soft-capped scores (Gemma 2): cap * tanh(s / cap) before the softmax
    cap = 50.0
    impls = {"attncore": lambda: attncore.scaled_dot_product_attention(
        q, k, v, softcap=cap, num_threads=threads)}
    if torch is not None:
        impls["torch (composed)"] = _torch_call(torch, lambda: torch.softmax(
            cap * torch.tanh(tq @ tk.transpose(-1, -2) * scale / cap), dim=-1) @ tv)
    yield f"softcap {B}x{H}x{L}x{D}", impls, full, "GFLOP/s"

    # hard top-8 attention: softmax over each query's 8 best keys
    impls = {"attncore": lambda: attncore.hard_attention(q, k, v, mode="topk", k=8, num_threads=threads)}
    if torch is not None:
        def torch_topk():
            s = tq @ tk.transpose(-1, -2) * scale
            top, idx = s.topk(8, dim=-1)
            w = torch.softmax(top, dim=-1)
            picked = tv.unsqueeze(2).expand(B, H, L, L, D).gather(
                3, idx.unsqueeze(-1).expand(B, H, L, 8, D))
            return (w.unsqueeze(-1) * picked).sum(3)
        impls["torch (topk + gather)"] = _torch_call(torch, torch_topk)
    yield f"hard top-8 {B}x{H}x{L}x{D}", impls, 2 * B * H * L * L * D, "GFLOP/s (scores)"
