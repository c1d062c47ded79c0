"""Self-attention over a toy sentence, drawn as per-head heatmaps (PNG).

    python examples/self_attention_heatmap.py [out.png]
"""
import sys

import numpy as np

import attncore
import attncore.viz


def main(path="self_attention.png"):
    tokens = "the cat sat on the mat because it was warm".split()
    rng = np.random.default_rng(0)
    vocab = {t: rng.standard_normal(16) for t in sorted(set(tokens))}
    positions = np.sin(np.arange(len(tokens))[:, None] / 10_000 ** (np.arange(16) / 16))
    x = (np.stack([vocab[t] for t in tokens]) + positions).astype(np.float32)

    mha = attncore.MultiHeadAttention(16, 4, seed=0)
    _, weights = mha(x, need_weights=True, average_attn_weights=False)   # (heads, L, L)
    fig = attncore.viz.show_heatmaps(weights[None], titles=[f"head {h}" for h in range(4)],
                                     xticklabels=tokens, yticklabels=tokens, path=path)
    print(f"wrote {path}: {len(fig.axes) - 1} heatmaps of {len(tokens)}x{len(tokens)} weights")
    return path


if __name__ == "__main__":
    main(*sys.argv[1:])
