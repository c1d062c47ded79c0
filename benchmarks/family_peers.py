"""Peers for the attention-family benchmarks (additive attention,
MultiHeadAttention, KV-cache decoding, projections): builders that return a
zero-argument callable on prepared inputs, or None when the peer is missing."""
import math

import numpy as np

import attncore
from attncore import _linalg, _peers

# issue shapes
ADDITIVE = dict(B=4, L=512, D=64, H=256)
MHA = {"B8-L128-E768-H12": (8, 128, 768, 12), "B1-L2048-E1024-H16": (1, 2048, 1024, 16)}
DECODE = dict(Hq=32, Hkv=8, D=128, cache=4096)


def additive_inputs(B, L, D, H, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((B, 1, L, D), dtype=np.float32) for _ in range(3))
    Wq, Wk = ((rng.standard_normal((H, D)) / math.sqrt(D)).astype(np.float32) for _ in range(2))
    w = rng.standard_normal(H).astype(np.float32)
    b = rng.standard_normal(H).astype(np.float32)
    return q, k, v, Wq, Wk, w, b


def additive_attncore(q, k, v, Wq, Wk, w, b, threads):
    return lambda: attncore.additive_attention(q, k, v, Wq, Wk, w, b, num_threads=threads)


def additive_numpy(q, k, v, Wq, Wk, w, b, threads):
    """The usual broadcasting implementation (d2l's AdditiveAttention)."""
    def run():
        feats = np.tanh((q @ Wq.T + b)[..., :, None, :] + (k @ Wk.T)[..., None, :, :])
        s = feats @ w
        s = np.exp(s - s.max(-1, keepdims=True))
        return (s / s.sum(-1, keepdims=True)) @ v
    return run


def additive_torch(q, k, v, Wq, Wk, w, b, threads):
    if not _peers.installed("torch"):
        return None
    import torch
    torch.set_num_threads(threads)
    tq, tk, tv, tWq, tWk, tw, tb = (torch.from_numpy(x) for x in (q, k, v, Wq, Wk, w, b))

    def run():
        with torch.no_grad():
            feats = torch.tanh((tq @ tWq.T + tb).unsqueeze(-2) + (tk @ tWk.T).unsqueeze(-3))
            return torch.softmax(feats @ tw, dim=-1) @ tv
    return run


ADDITIVE_IMPLS = {"attncore": additive_attncore, "numpy": additive_numpy, "torch": additive_torch}


def mha_inputs(B, L, E, H, seed=0):
    x = np.random.default_rng(seed).standard_normal((B, L, E), dtype=np.float32)
    layer = attncore.MultiHeadAttention(E, H, seed=seed)
    return x, layer


def mha_attncore(x, layer, threads):
    layer.eval()
    return lambda: layer(x, need_weights=False, num_threads=threads)


def mha_torch(x, layer, threads):
    if not _peers.installed("torch"):
        return None
    import torch
    torch.set_num_threads(threads)
    t = torch.nn.MultiheadAttention(layer.embed_dim, layer.num_heads, batch_first=True).eval()
    t.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in layer.state_dict().items()})
    tx = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return t(tx, tx, tx, need_weights=False)[0]
    return run


MHA_IMPLS = {"attncore": mha_attncore, "torch": mha_torch}


def mha_flops(B, L, E, H):
    return 4 * 2 * B * L * E * E + 4 * B * L * L * E


def decode_inputs(Hq, Hkv, D, cache, seed=0):
    """One decode step: the new token's queries against a filled KV cache."""
    rng = np.random.default_rng(seed)
    kv = attncore.KVCache(max_len=cache + 64, num_heads=Hkv, head_dim=D)
    kv.append(rng.standard_normal((1, Hkv, cache, D), dtype=np.float32),
              rng.standard_normal((1, Hkv, cache, D), dtype=np.float32))
    q = rng.standard_normal((1, Hq, 1, D), dtype=np.float32)
    return q, kv


def decode_attncore(q, kv, threads):
    k, v = kv.keys, kv.values  # strided views of the cache buffers, read in place
    return lambda: attncore.scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal="bottom_right",
                                                         num_threads=threads)


def decode_torch(q, kv, threads):
    if not _peers.installed("torch"):
        return None
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    tq, tk, tv = torch.from_numpy(q), torch.from_numpy(kv.keys), torch.from_numpy(kv.values)

    def run():
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv, enable_gqa=True)
    return run


DECODE_IMPLS = {"attncore": decode_attncore, "torch": decode_torch}


def linear_impls():
    return {"attncore": lambda x, w, b, t: (lambda: _linalg.linear(x, w, b, t)),
            "numpy-blas": lambda x, w, b, t: (lambda: x @ w.T + b)}
