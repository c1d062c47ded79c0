"""SDPA on the reference shapes: attncore vs NumPy and every installed peer
(torch SDPA, ONNX Runtime Attention and MultiHeadAttention, OpenVINO SDPA)."""
import numpy as np
import pytest

from attncore import _peers

from benchutil import SMALL, shrink

IMPLS = ["attncore"] + list(_peers.PEERS)
LIMITS = {"onnxruntime-mha": " (ONNX Runtime's MultiHeadAttention: equal head counts, and "
                             "causal only with Lq == Lk)"}
_ATTNCORE_RESULTS: dict = {}   # (shape name, threads) -> attncore's output, what peers must give


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(_peers.REFERENCE_SHAPES))
def test_sdpa(run_benchmark, threads, name, impl):
    shape = _peers.REFERENCE_SHAPES[name]
    B, Hq, Hkv, Lq, Lk, D, causal = shrink(shape) if SMALL else shape
    q, k, v = _peers.make_inputs(B, Hq, Hkv, Lq, Lk, D)
    build = _peers.attncore_sdpa if impl == "attncore" else _peers.PEERS[impl]
    fn = build(q, k, v, causal, threads)
    if fn is None:
        if not _peers.installed(impl.split("-")[0]):
            pytest.skip(f"{impl} is not installed")
        pytest.skip(f"{impl} cannot express this problem" + LIMITS.get(impl, ""))
    if impl != "attncore":   # a wrong answer is no benchmark: checked before timing
        key = (name, threads)
        if key not in _ATTNCORE_RESULTS:   # (once per shape, not once per peer)
            _ATTNCORE_RESULTS[key] = _peers.attncore_sdpa(q, k, v, causal, threads)()
        _peers.check_same(impl, fn(), _ATTNCORE_RESULTS[key])
    label = f"sdpa {name} B={B} Hq={Hq} Hkv={Hkv} Lq={Lq} Lk={Lk} D={D}" + (" causal" if causal else "")
    run_benchmark(fn, label, _peers.attention_flops(B, Hq, Lq, Lk, D, causal=causal), shape=name,
                  impl=impl, threads=threads)


@pytest.mark.parametrize("impl", ["attncore", "torch"])
@pytest.mark.parametrize("kind", ["key-padding", "full-bool"])
def test_sdpa_masked(run_benchmark, threads, kind, impl):
    """S2 with a BERT-style key-padding mask (B, 1, 1, Lk) or a full (Lq, Lk) bool mask."""
    B, Hq, Hkv, Lq, Lk, D, _ = _peers.REFERENCE_SHAPES["S2"] if not SMALL else (1, 2, 2, 33, 70, 16, False)
    q, k, v = _peers.make_inputs(B, Hq, Hkv, Lq, Lk, D)
    rng = np.random.default_rng(1)
    if kind == "key-padding":
        mask = np.arange(Lk)[None, None, None, :] < rng.integers(Lk // 2, Lk + 1, size=(B, 1, 1, 1))
    else:
        mask = rng.random((Lq, Lk)) > 0.1
    if impl == "attncore":
        import attncore
        fn = lambda: attncore.scaled_dot_product_attention(q, k, v, attn_mask=mask, num_threads=threads)
    else:
        if not _peers.installed("torch"):
            pytest.skip("torch is not installed")
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(threads)
        tq, tk, tv, tm = (torch.from_numpy(x) for x in (q, k, v, mask))

        def fn():
            with torch.no_grad():
                return F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm)
    run_benchmark(fn, f"sdpa S2 masked ({kind})", _peers.attention_flops(B, Hq, Lq, Lk, D), impl=impl)
