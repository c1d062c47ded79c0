"""Greedy decoding with a tiny one-layer decoder (MultiHeadAttention with
grouped-query heads + KVCache), checked against full recomputation at every
step.

    python examples/greedy_decoding_kv_cache.py
"""
import numpy as np

import attncore

VOCAB, EMBED, HEADS, KV_HEADS = 50, 64, 8, 2


def main(steps=20):
    rng = np.random.default_rng(0)
    embedding = (rng.standard_normal((VOCAB, EMBED)) * 0.5).astype(np.float32)
    unembed = (rng.standard_normal((EMBED, VOCAB)) / np.sqrt(EMBED)).astype(np.float32)
    layer = attncore.MultiHeadAttention(EMBED, HEADS, num_kv_heads=KV_HEADS, seed=1)
    positions = np.sin(np.arange(steps + 8)[:, None] / 100 ** (np.arange(EMBED) / EMBED)).astype(np.float32)

    def logits(hidden):
        return hidden @ unembed

    prompt = [3, 14, 15, 9]
    cache = attncore.KVCache(max_len=64, num_heads=KV_HEADS, head_dim=EMBED // HEADS)
    x = (embedding[prompt] + positions[:len(prompt)])[None]           # (1, T, E)
    hidden, _ = layer(x, kv_cache=cache)                              # prefill
    tokens = list(prompt)
    for step in range(steps):
        nxt = int(np.argmax(logits(hidden[0, -1])))
        tokens.append(nxt)
        x_t = (embedding[nxt] + positions[len(tokens) - 1])[None, None]
        hidden, _ = layer(x_t, kv_cache=cache)                        # one new token

        # the same step recomputed from scratch, causal over the whole sequence
        full = (embedding[tokens] + positions[:len(tokens)])[None]
        ref, _ = layer(full, is_causal=True)
        assert np.allclose(hidden[0, -1], ref[0, -1], atol=1e-5), f"step {step} differs"
    assert len(cache) == len(tokens)
    print(f"decoded {steps} tokens with a KV cache of {len(cache)} positions: {tokens}")
    return tokens


if __name__ == "__main__":
    main()
