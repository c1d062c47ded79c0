"""A Bahdanau decoder step: a batch of decoder states attends over padded
encoder states with additive attention; valid_lens hides the padding.

    python examples/bahdanau_decoder_step.py
"""
import numpy as np

import attncore
from attncore import reference


def main():
    rng = np.random.default_rng(0)
    batch, src_len, hidden, attn_hidden = 3, 12, 32, 64
    encoder_states = rng.standard_normal((batch, 1, src_len, hidden)).astype(np.float32)
    decoder_state = rng.standard_normal((batch, 1, 1, hidden)).astype(np.float32)
    valid_lens = np.array([12, 7, 3])  # real source lengths; the rest is padding
    W_q = (rng.standard_normal((attn_hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    W_k = (rng.standard_normal((attn_hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    w_v = rng.standard_normal(attn_hidden).astype(np.float32)

    context, weights = attncore.additive_attention(
        decoder_state, encoder_states, encoder_states, W_q, W_k, w_v,
        valid_lens=valid_lens, return_weights=True)

    ref_context, ref_weights = reference.additive_attention(
        decoder_state, encoder_states, encoder_states, W_q, W_k, w_v,
        valid_lens=valid_lens, return_weights=True)
    assert np.allclose(context, ref_context, atol=1e-5), "context differs from the reference"
    for b, n in enumerate(valid_lens):
        assert np.all(weights[b, 0, 0, n:] == 0), "padding got attention"
        assert abs(weights[b, 0, 0, :n].sum() - 1) < 1e-5
    print("context vectors:", context.shape)
    for b, n in enumerate(valid_lens):
        print(f"  sequence {b}: {n} valid positions, weights {np.round(weights[b, 0, 0], 3)}")
    return context


if __name__ == "__main__":
    main()
