"""Comparison peers for benchmarks and the command line: the same attention
computed by NumPy, PyTorch, ONNX Runtime and OpenVINO when they are installed.

Each builder takes float32 arrays q (B, Hq, Lq, D), k, v (B, Hkv, Lk, D) and
returns a zero-argument callable that runs the peer on exactly those inputs
(inputs converted and sessions compiled up front, outside the timing), or
None when the peer is not installed or cannot express the problem. None of
these are runtime dependencies of attncore.
"""
import importlib.util

import numpy as np

# The reference shapes of the SDPA issue: (B, Hq, Hkv, Lq, Lk, D, causal).
REFERENCE_SHAPES = {
    "S1": (1, 8, 8, 512, 512, 64, False),
    "S2": (4, 12, 12, 512, 512, 64, False),
    "S3": (1, 16, 16, 2048, 2048, 64, False),
    "S4": (1, 8, 8, 4096, 4096, 128, False),
    "S5": (1, 16, 16, 2048, 2048, 64, True),
    "S6": (1, 32, 8, 1, 8192, 128, False),
}


def attention_flops(B, Hq, Lq, Lk, D, Dv=None, causal=False):
    """4 B Hq Lq Lk D; for a causal square problem the computed half,
    (Lk + 1) / (2 Lk) of it (what the kernels skip is not counted, the same
    count in every tool: compare.py, the pytest benchmarks, the CLI)."""
    Dv = D if Dv is None else Dv
    full = 2 * B * Hq * Lq * Lk * (D + Dv)
    return full * (Lk + 1) / (2 * Lk) if causal and Lq == Lk else full


def as_output(res):
    """An implementation's result as a float64 NumPy array: torch tensors,
    ONNX Runtime's output lists, OpenVINO's result dicts, (out, weights)
    tuples (the first output)."""
    if isinstance(res, (tuple, list)):
        res = res[0]
    if hasattr(res, "detach"):   # a torch tensor
        res = res.detach().float().numpy()
    elif not isinstance(res, np.ndarray) and callable(getattr(res, "values", None)):
        res = next(iter(res.values()))   # OpenVINO's OVDict
    return np.asarray(res, dtype=np.float64)


def check_same(name, got, want, rtol=2e-3, atol=2e-3):
    """AssertionError unless a peer's result `got` is attncore's `want`
    (B, Hq, Lq, Dv) within the tolerance (relative to want's largest
    element); ONNX Runtime MultiHeadAttention's (B, Lq, Hq * Dv) is read as
    that layout. Benchmarks check before they time: a fast wrong answer is
    no result."""
    got, want = as_output(got), as_output(want)
    if got.shape != want.shape and want.ndim == 4 and got.shape == (
            want.shape[0], want.shape[2], want.shape[1] * want.shape[3]):
        got = got.reshape(want.shape[0], want.shape[2], want.shape[1], want.shape[3]).transpose(0, 2, 1, 3)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: result of shape {got.shape}, attncore's {want.shape}")
    scale = float(np.abs(want).max()) if want.size else 0.0
    diff = float(np.abs(got - want).max()) if want.size else 0.0
    if not diff <= atol + rtol * scale:   # (NaN fails too)
        raise AssertionError(f"{name}: result differs from attncore's by {diff:.3g} "
                             f"(largest element {scale:.3g})")


def installed(module):
    return importlib.util.find_spec(module) is not None


def make_inputs(B, Hq, Hkv, Lq, Lk, D, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, Hq, Lq, D), dtype=np.float32)
    k = rng.standard_normal((B, Hkv, Lk, D), dtype=np.float32)
    v = rng.standard_normal((B, Hkv, Lk, D), dtype=np.float32)
    return q, k, v


def attncore_sdpa(q, k, v, causal, threads):
    from . import scaled_dot_product_attention

    gqa = q.shape[1] != k.shape[1]
    return lambda: scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa,
                                                num_threads=threads)


NUMPY_MAX_SCORES_BYTES = 512 << 20


def numpy_sdpa(q, k, v, causal, threads):
    """The textbook NumPy formula (materialises the scores), float32; None
    when the scores alone would take more than 512 MiB."""
    if q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * 4 > NUMPY_MAX_SCORES_BYTES:
        return None
    G = q.shape[1] // k.shape[1]
    D = q.shape[-1]
    Lq, Lk = q.shape[2], k.shape[2]
    hidden = np.triu(np.ones((Lq, Lk), bool), 1) if causal else None

    def run():
        kk = np.repeat(k, G, axis=1) if G > 1 else k
        vv = np.repeat(v, G, axis=1) if G > 1 else v
        s = q @ kk.swapaxes(-1, -2) * np.float32(1 / np.sqrt(D))
        if hidden is not None:
            s[..., hidden] = -np.inf
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        return s @ vv
    return run


def torch_sdpa(q, k, v, causal, threads):
    if not installed("torch"):
        return None
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    gqa = q.shape[1] != k.shape[1]

    def run():
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal, enable_gqa=gqa)
    return run


def _ort_session(model, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def onnxruntime_attention(q, k, v, causal, threads):
    """ONNX's standard Attention op (opset 23), 4-D inputs, GQA by head counts."""
    if not (installed("onnxruntime") and installed("onnx")):
        return None
    from onnx import TensorProto, helper

    names = ("Q", "K", "V")
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(x.shape)) for n, x in zip(names, (q, k, v))]
    out_shape = list(q.shape[:-1]) + [v.shape[-1]]
    output = helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape)
    node = helper.make_node("Attention", list(names), ["Y"], is_causal=int(causal))
    model = helper.make_model(helper.make_graph([node], "sdpa", inputs, [output]),
                              opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    try:
        sess = _ort_session(model, threads)
    except Exception:  # an older onnxruntime without opset 23
        return None
    feed = dict(zip(names, (q, k, v)))
    return lambda: sess.run(None, feed)[0]


def onnxruntime_mha(q, k, v, causal, threads):
    """ONNX Runtime's MultiHeadAttention contrib op (its flash-attention CPU
    kernel), on (B, L, H*D) inputs; equal head counts only."""
    if not (installed("onnxruntime") and installed("onnx")) or q.shape[1] != k.shape[1]:
        return None
    from onnx import TensorProto, helper

    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    flat = [np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(B, x.shape[2], H * D)) for x in (q, k, v)]
    names = ("Q", "K", "V")
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(x.shape)) for n, x in zip(names, flat)]
    output = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [B, Lq, H * D])
    node = helper.make_node("MultiHeadAttention", list(names), ["Y"], domain="com.microsoft",
                            num_heads=H, unidirectional=int(causal))
    model = helper.make_model(helper.make_graph([node], "mha", inputs, [output]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    if causal and Lq != Lk:
        return None
    try:
        sess = _ort_session(model, threads)
    except Exception:
        return None
    feed = dict(zip(names, flat))
    return lambda: sess.run(None, feed)[0]


def openvino_sdpa(q, k, v, causal, threads):
    """OpenVINO's ScaledDotProductAttention (opset13); GQA by broadcasting K/V."""
    if not installed("openvino"):
        return None
    import openvino as ov
    import openvino.opset13 as ops

    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    pq, pk, pv = (ops.parameter(list(x.shape), np.float32) for x in (q, k, v))
    kk, vv = pk, pv
    if Hq != Hkv:
        G = Hq // Hkv

        def expand(node, Dx):
            wide = ops.broadcast(ops.unsqueeze(node, 2), ops.constant(np.array([B, Hkv, G, Lk, Dx])))
            return ops.reshape(wide, ops.constant(np.array([B, Hq, Lk, Dx])), False)
        kk, vv = expand(pk, D), expand(pv, v.shape[-1])
    y = ops.scaled_dot_product_attention(pq, kk, vv, causal=causal)
    compiled = ov.Core().compile_model(ov.Model([y], [pq, pk, pv]), "CPU",
                                       {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    # (shared inputs and outputs: no copy of q, k, v into the request per call)
    return lambda: request.infer([q, k, v], share_inputs=True, share_outputs=True)


PEERS = {
    "numpy": numpy_sdpa,
    "torch": torch_sdpa,
    "onnxruntime": onnxruntime_attention,
    "onnxruntime-mha": onnxruntime_mha,
    "openvino": openvino_sdpa,
}
