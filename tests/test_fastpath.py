"""The common call's fast path (attncore._core.sdpa_fast / sdpa_fast_torch):
it is taken for plain NumPy arrays and CPU tensors, gives bitwise the results
of the general path (same kernel, same plan), and hands everything else --
anything it does not check itself -- to the general path."""
import numpy as np
import pytest

import attncore
from attncore import _core, functional

SDPA = attncore.scaled_dot_product_attention


@pytest.fixture
def general_calls(monkeypatch):
    """Counts calls that went through the general path."""
    calls = []
    original = _core.sdpa

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(_core, "sdpa", counting)
    return calls


def general(q, k, v, **kw):
    """The same call forced through the general path."""
    return functional._sdpa("scaled_dot_product_attention", q, k, v, None, 0.0,
                            kw.get("is_causal", False), kw.get("scale"), kw.get("enable_gqa", False),
                            False, False, kw.get("num_threads"), None, None, None)


@pytest.mark.parametrize("shape", [(1, 1, 1, 64, 16, 64), (1, 32, 8, 1, 16, 128), (2, 4, 4, 33, 130, 17),
                                   (3, 6, 2, 70, 70, 80), (1, 2, 1, 1, 1500, 3)])
@pytest.mark.parametrize("kw", [dict(), dict(is_causal=True), dict(is_causal="bottom_right", scale=0.3)])
def test_fast_path_is_taken_and_bitwise_equal(isa, dtype, shape, kw, general_calls):
    B, Hq, Hkv, Lq, Lk, D = shape
    rng = np.random.default_rng(Lq + Lk)
    q = rng.standard_normal((B, Hq, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, Lk, D)).astype(dtype)[..., ::-1, :]   # strided: still fast
    out = SDPA(q, k, v, enable_gqa=True, **kw)
    assert general_calls == []
    np.testing.assert_array_equal(out, general(q, k, v, enable_gqa=True, **kw))
    assert general_calls == ["scaled_dot_product_attention"]


@pytest.mark.parametrize("case", ["big-endian", "misaligned", "3-D", "mask", "lse", "np.True_",
                                  "numpy-scale", "broadcast-batch", "mixed", "bfloat16", "threads-float"])
def test_other_calls_take_the_general_path(case, general_calls):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 2, 5, 8)).astype(np.float32) for _ in range(3))
    kw = {}
    if case == "big-endian":
        q = q.astype(">f4")
    elif case == "misaligned":
        q = np.frombuffer(bytes(1) + q.tobytes(), np.float32, offset=1).reshape(q.shape)
    elif case == "3-D":
        q, k, v = q[0], k[0], v[0]
    elif case == "mask":
        kw["attn_mask"] = np.ones((5, 5), bool)
    elif case == "lse":
        kw["return_lse"] = True
    elif case == "np.True_":
        kw["is_causal"] = np.True_
    elif case == "numpy-scale":
        kw["scale"] = np.float32(0.5)
    elif case == "broadcast-batch":
        k, v = k[:1], v[:1]
    elif case == "mixed":
        v = v.astype(np.float64)
    elif case == "bfloat16":
        bf16 = pytest.importorskip("ml_dtypes").bfloat16
        q, k, v = (x.astype(bf16) for x in (q, k, v))
    elif case == "threads-float":
        kw["num_threads"] = 2.0
    if case in ("mixed", "threads-float"):
        # the general path explains what is wrong before any kernel runs
        with pytest.raises(TypeError, match="mixed dtypes|num_threads"):
            SDPA(q, k, v, **kw)
        assert general_calls == []
    else:
        SDPA(q, k, v, **kw)
        assert general_calls == ["scaled_dot_product_attention"]


def test_fast_path_for_torch_tensors(general_calls):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    q, k, v = (torch.from_numpy(rng.standard_normal((1, 8, 3, 32)).astype(np.float32)) for _ in range(3))
    k, v = k[:, :2], v[:, :2]
    out = SDPA(q, k, v, enable_gqa=True, is_causal=True)
    assert isinstance(out, torch.Tensor) and general_calls == []
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal=True)
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=1e-5)
    # bfloat16 / float16 tensors too, read as they are
    for dt in (torch.bfloat16, torch.float16):
        out16 = SDPA(q.to(dt), k.to(dt), v.to(dt), enable_gqa=True)
        assert out16.dtype == dt and general_calls == []
        torch.testing.assert_close(out16.float(), SDPA(q.to(dt).float(), k.to(dt).float(),
                                                       v.to(dt).float(), enable_gqa=True),
                                   rtol=1e-2, atol=1e-2)
    # tensors that need a gradient go through the general path, which refuses them
    with pytest.raises(TypeError, match="forward pass only"):
        SDPA(q.requires_grad_(), k, v, enable_gqa=True)
    assert general_calls == []   # refused before reaching the kernel


def test_float16_arrays_take_the_fast_path(general_calls):
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((2, 4, 9, 16)).astype(np.float16) for _ in range(3))
    out = SDPA(q, k, v, is_causal=True)
    assert out.dtype == np.float16 and general_calls == []
    np.testing.assert_array_equal(out, general(q, k, v, is_causal=True))
