"""SDPA on the reference shapes: attncore vs NumPy and every installed peer
(torch SDPA, ONNX Runtime Attention and MultiHeadAttention, OpenVINO SDPA)."""
import pytest

from attncore import _peers

from benchutil import SMALL, shrink

IMPLS = ["attncore"] + list(_peers.PEERS)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(_peers.REFERENCE_SHAPES))
def test_sdpa(run_benchmark, threads, name, impl):
    shape = _peers.REFERENCE_SHAPES[name]
    B, Hq, Hkv, Lq, Lk, D, causal = shrink(shape) if SMALL else shape
    q, k, v = _peers.make_inputs(B, Hq, Hkv, Lq, Lk, D)
    build = _peers.attncore_sdpa if impl == "attncore" else _peers.PEERS[impl]
    fn = build(q, k, v, causal, threads)
    if fn is None:
        pytest.skip(f"{impl} is not installed or cannot express this problem")
    label = f"sdpa {name} B={B} Hq={Hq} Hkv={Hkv} Lq={Lq} Lk={Lk} D={D}" + (" causal" if causal else "")
    run_benchmark(fn, label, _peers.attention_flops(B, Hq, Lq, Lk, D), shape=name, impl=impl,
                  threads=threads)
