"""The common call's fast path (attncore._core.sdpa_fast / sdpa_fast_torch):
it is taken for plain NumPy arrays and CPU tensors, gives bitwise the results
of the general path (same kernel, same plan), and hands everything else --
anything it does not check itself -- to the general path."""
import numpy as np
import pytest

import attncore
from attncore._engine import plan_info

from _paths import sdpa_general as general

SDPA = attncore.scaled_dot_product_attention


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


@pytest.mark.parametrize("case", ["big-endian", "big-endian bfloat16", "misaligned", "3-D", "mask-float16",
                                  "lse", "np.True_", "numpy-scale", "broadcast-batch", "mixed",
                                  "threads-float", "mask-float64", "gqa-flag", "out-aliases-q",
                                  "out-zero-stride", "out-read-only", "out-float64"])
def test_other_calls_take_the_general_path(case, general_calls):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 2, 5, 8)).astype(np.float32) for _ in range(3))
    kw = {}
    if case == "big-endian":
        q = q.astype(">f4")
    elif case == "big-endian bfloat16":
        # byte-swapped bfloat16 (its uint16 view would be read swapped): the
        # general path converts it, and the result must be the native one's
        bf16 = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
        native = tuple(x.astype(bf16) for x in (q, k, v))
        q, k, v = (x.astype(bf16.newbyteorder(">")) for x in native)
        np.testing.assert_array_equal(SDPA(q, k, v).astype(np.float32), SDPA(*native).astype(np.float32))
        general_calls.clear()
    elif case == "misaligned":
        q = np.frombuffer(bytes(1) + q.tobytes(), np.float32, offset=1).reshape(q.shape)
    elif case == "3-D":
        q, k, v = q[0], k[0], v[0]
    elif case == "mask-float16":
        # a float16 mask with float16 inputs: the general path converts it to float32
        q, k, v = (x.astype(np.float16) for x in (q, k, v))
        kw["attn_mask"] = np.zeros((5, 5), np.float16)
    elif case == "mask-float64":
        kw["attn_mask"] = np.zeros((5, 5), np.float64)     # not the query's dtype: an error
    elif case == "gqa-flag":
        kw["enable_gqa"] = "no"                            # not a bool: an error on every path
    elif case == "out-aliases-q":
        kw["out"] = q                                      # written through a copy
    elif case == "out-zero-stride":
        kw["out"] = np.lib.stride_tricks.as_strided(np.zeros(8, np.float32), (2, 2, 5, 8), (0, 0, 0, 4))
    elif case == "out-read-only":
        kw["out"] = np.zeros((2, 2, 5, 8), np.float32)
        kw["out"].flags.writeable = False
    elif case == "out-float64":
        kw["out"] = np.zeros((2, 2, 5, 8), np.float64)
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
    elif case == "threads-float":
        kw["num_threads"] = 2.0
    if case in ("mixed", "threads-float", "mask-float64", "gqa-flag", "out-read-only", "out-float64",
                "out-zero-stride"):
        # the general path explains what is wrong before any kernel runs
        with pytest.raises((TypeError, ValueError),
                           match="mixed dtypes|num_threads|attn_mask|enable_gqa|read-only|out has dtype"
                                 "|out's elements may share memory"):
            SDPA(q, k, v, **kw)
        assert general_calls == []
    elif case == "out-aliases-q":
        want = SDPA(q.copy(), k, v)
        assert SDPA(q, k, v, **kw) is q and general_calls == ["scaled_dot_product_attention"]
        np.testing.assert_array_equal(q, want)
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


@pytest.mark.parametrize("shape", [(2, 4, 4, 9, 16), (1, 8, 2, 1, 300), (3, 2, 1, 33, 70)])
def test_bfloat16_arrays_take_the_fast_path(isa, shape, general_calls):
    """ml_dtypes.bfloat16 arrays (no buffer export in NumPy) are read as their
    bit patterns, strided or not, with bitwise the general path's output."""
    bf16 = pytest.importorskip("ml_dtypes").bfloat16
    B, Hq, Hkv, Lq, Lk = shape
    rng = np.random.default_rng(Lk)
    q = rng.standard_normal((B, Hq, Lq, 16)).astype(bf16)
    k = rng.standard_normal((B, Hkv, Lk, 16)).astype(bf16)
    v = rng.standard_normal((B, Hkv, Lk, 16)).astype(bf16)[..., ::-1, :]   # strided: still fast
    out = SDPA(q, k, v, is_causal=True, enable_gqa=True)
    assert out.dtype == bf16 and out.shape == (B, Hq, Lq, 16) and general_calls == []
    np.testing.assert_array_equal(out.view(np.uint16), general(q, k, v, is_causal=True, enable_gqa=True).view(np.uint16))
    assert general_calls == ["scaled_dot_product_attention"]
    # a mixed call (bfloat16 query, float16 keys) is the general path's to explain
    with pytest.raises(TypeError, match="mixed dtypes"):
        SDPA(q, k.astype(np.float16), v.astype(np.float16), enable_gqa=True)


@pytest.mark.parametrize("mshape", [(9, 40), (2, 1, 1, 40), (1, 4, 9, 1), (2, 4, 9, 40), (40,)])
def test_bool_masks_take_the_fast_path(isa, mshape, general_calls):
    """Bool masks of any broadcast shape (Hugging Face passes (B, 1, Lq, Lk)
    with a zero batch stride) are read in place through their strides."""
    rng = np.random.default_rng(len(mshape))
    q = rng.standard_normal((2, 4, 9, 16)).astype(np.float32)
    k, v = (rng.standard_normal((2, 2, 40, 16)).astype(np.float32) for _ in range(2))
    mask = rng.random(mshape) > 0.4
    if len(mshape) == 4 and mshape[0] == 2:
        mask = np.broadcast_to(mask[:1], mshape)   # zero batch stride
    out = SDPA(q, k, v, attn_mask=mask, enable_gqa=True)
    assert general_calls == []
    np.testing.assert_array_equal(out, general(q, k, v, attn_mask=mask, enable_gqa=True))


def test_bool_mask_tensor_takes_the_fast_path(general_calls):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    q, k, v = (torch.from_numpy(rng.standard_normal((3, 2, 1, 8)).astype(np.float32)) for _ in range(3))
    k, v = k.expand(3, 2, 1, 8).contiguous().repeat(1, 1, 30, 1), v.repeat(1, 1, 30, 1)
    mask = torch.from_numpy(rng.random((3, 1, 1, 30)) > 0.5)      # a padded decode step's mask
    out = SDPA(q, k, v, attn_mask=mask)
    assert general_calls == []
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("mshape", [(9, 40), (2, 1, 1, 40), (1, 4, 9, 1), (2, 4, 9, 40), (40,), ()])
@pytest.mark.parametrize("dtype_name", ["float32", "float64", "float16", "bfloat16"])
def test_float_masks_take_the_fast_path(isa, mshape, dtype_name, general_calls):
    """Float masks in the compute dtype (the query's; float32 for 16-bit
    queries), -inf included, read in place: bitwise the general path."""
    if dtype_name == "bfloat16":
        dtype = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    else:
        dtype = np.dtype(dtype_name)
    rng = np.random.default_rng(len(mshape))
    q = rng.standard_normal((2, 4, 9, 16)).astype(dtype)
    k, v = (rng.standard_normal((2, 2, 40, 16)).astype(dtype) for _ in range(2))
    mask = np.asarray(rng.standard_normal(mshape) * 2,
                      np.float64 if dtype_name == "float64" else np.float32)   # (a 0-d array for ())
    if mask.ndim:
        mask[rng.random(mshape) > 0.7] = -np.inf
    if len(mshape) == 4 and mshape[0] == 2:
        mask = np.broadcast_to(mask[:1], mshape)   # zero batch stride
    out = SDPA(q, k, v, attn_mask=mask, enable_gqa=True)
    assert general_calls == []
    want = general(q, k, v, attn_mask=mask, enable_gqa=True)
    np.testing.assert_array_equal(out.view(np.uint8), want.view(np.uint8))
    ref = attncore.reference.scaled_dot_product_attention(q.astype(np.float64), k.astype(np.float64),
                                                          v.astype(np.float64), attn_mask=mask,
                                                          enable_gqa=True)
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=0, atol=3e-2 if dtype.itemsize == 2 else 1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_out_arrays_take_the_fast_path(isa, dtype, general_calls):
    """out= (contiguous, or a transposed view as Hugging Face's heads-last
    buffer) is written in place and returned: bitwise the general path."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 4, 9, 16)).astype(dtype)
    k, v = (rng.standard_normal((2, 2, 40, 16)).astype(dtype) for _ in range(2))
    mask = rng.random((2, 1, 9, 40)) > 0.3
    want = general(q, k, v, attn_mask=mask, enable_gqa=True, is_causal="bottom_right")
    general_calls.clear()
    for out in (np.empty((2, 4, 9, 16), dtype), np.empty((2, 9, 4, 16), dtype).transpose(0, 2, 1, 3)):
        res = SDPA(q, k, v, attn_mask=mask, enable_gqa=True, is_causal="bottom_right", out=out)
        assert res is out and general_calls == []
        np.testing.assert_array_equal(out, want)


def test_torch_out_views_and_float_masks_take_the_fast_path(general_calls):
    """attncore.torch's heads-last out= buffer (what hf_attention asks for)
    and float mask tensors run on the fast path, in every dtype."""
    torch = pytest.importorskip("torch")
    import attncore.torch as at

    g = torch.Generator().manual_seed(0)
    for dt in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        q = torch.randn(2, 4, 9, 16, generator=g).to(dt)
        k, v = (torch.randn(2, 2, 9, 16, generator=g).to(dt) for _ in range(2))
        mask = torch.randn(2, 1, 9, 9, generator=g).masked_fill(torch.rand(2, 1, 9, 9, generator=g) > 0.7,
                                                                 float("-inf"))
        mask = mask.to(torch.float64 if dt == torch.float64 else torch.float32)
        got = at._attention(q, k, v, mask, 0.0, False, None, True, heads_last=True)
        assert general_calls == [] and got.shape == (2, 9, 4, 16) and got.dtype == dt
        ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                               attn_mask=mask.double(), enable_gqa=True)
        tol = 1e-5 if dt in (torch.float32, torch.float64) else 3e-2
        torch.testing.assert_close(got.double(), ref.transpose(1, 2), rtol=0, atol=tol)
        bool_mask = mask > -1
        got = at._attention(q, k, v, bool_mask, 0.0, True, 0.3, True, heads_last=True)
        assert general_calls == []
        ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                               attn_mask=bool_mask & torch.ones(9, 9).tril().bool(),
                                                               scale=0.3, enable_gqa=True)
        torch.testing.assert_close(got.double(), ref.transpose(1, 2), rtol=0, atol=tol)


@pytest.mark.parametrize("sizes", [dict(Dv=0), dict(Lk=0), dict(Lk=0, mask=True), dict(Lq=0)])
def test_torch_tensors_with_no_elements(sizes, general_calls):
    """An empty tensor's data_ptr is 0 (the kernel refuses a null pointer):
    the general path gives torch's empty or zero result."""
    torch = pytest.importorskip("torch")
    Lq, Lk, Dv = sizes.get("Lq", 4), sizes.get("Lk", 7), sizes.get("Dv", 3)
    q, k, v = torch.randn(1, 2, Lq, 8), torch.randn(1, 2, Lk, 8), torch.randn(1, 2, Lk, Dv)
    mask = torch.ones(Lq, Lk, dtype=torch.bool) if sizes.get("mask") else None
    out = SDPA(q, k, v, attn_mask=mask)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, Lq, Dv)
    assert not out.any()   # no key: zeros (torch's fused kernel agrees; its math path gives NaN)


def test_additive_mask_bits_do_not_depend_on_its_layout(isa):
    """A float mask's scores are a multiply then an add on every pass (the
    register-transpose blocks, the scalar rows, the rows path), so neither
    the mask's memory order nor a row's place in its panel changes a bit."""
    rng = np.random.default_rng(8)
    for Lq in (20, 24, 45):
        q = rng.standard_normal((2, 2, Lq, 32)).astype(np.float32)
        k, v = (rng.standard_normal((2, 2, 40, 32)).astype(np.float32) for _ in range(2))
        mask = (rng.standard_normal((Lq, 40)) * 3).astype(np.float32)
        c_order = SDPA(q, k, v, attn_mask=mask)
        np.testing.assert_array_equal(c_order, SDPA(q, k, v, attn_mask=np.asfortranarray(mask)))
        np.testing.assert_array_equal(c_order, SDPA(q, k, v, attn_mask=mask[::-1].copy()[::-1]))
        # rows moved to other places in the panels (another lane, a half panel's,
        # the leftover rows after the whole 8-row blocks) keep their bits
        for shift in (1, 5):
            assert plan_info(SDPA, q[:, :, shift:], k, v, attn_mask=mask[shift:])["path"] == "panel"
            np.testing.assert_array_equal(c_order[:, :, shift:],
                                          SDPA(q[:, :, shift:], k, v, attn_mask=mask[shift:]))


def test_torch_masks_the_general_path_must_judge(general_calls):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 24, 32, generator=g) for _ in range(3))
    # a float mask that needs a gradient: refused by the general path, not run
    with pytest.raises(TypeError, match="attn_mask"):
        SDPA(q, k, v, attn_mask=torch.zeros(24, 24, requires_grad=True))
    assert general_calls == []
    # a 16-bit float mask that is expanded (stride 0): float32 on either path, same bits
    for dt in (torch.float16, torch.bfloat16):
        m = (torch.randn(1, 1, 1, 24, generator=g) * 3).to(dt).expand(1, 2, 24, 24)
        fast = SDPA(q.to(dt), k.to(dt), v.to(dt), attn_mask=m)
        assert general_calls == []
        slow = general(q.to(dt), k.to(dt), v.to(dt), attn_mask=m)
        assert torch.equal(fast, slow)
        general_calls.clear()


def test_self_overlapping_out_is_refused_on_both_paths(general_calls):
    """An out= whose elements share memory (a writable stride-0 view) cannot
    hold the result: a ValueError, as torch's out= gives ("some elements of
    the written-to tensor refer to a single memory location"). It used to be
    filled through a copy, NumPy-style, every row the last one written."""
    rng = np.random.default_rng(9)
    q, k, v = (rng.standard_normal((2, 2, 5, 8)).astype(np.float32) for _ in range(3))
    for kw in (dict(), dict(return_lse=True)):   # (the fast path, then the general one)
        out = np.lib.stride_tricks.as_strided(np.zeros(8, np.float32), (2, 2, 5, 8), (0, 0, 0, 4))
        with pytest.raises(ValueError, match="out's elements may share memory"):
            SDPA(q, k, v, out=out, **kw)
        assert not out.any() and general_calls == []


@pytest.mark.parametrize("name", ["alibi_slopes", "sinks", "valid_lens"])
def test_out_sharing_memory_with_a_per_row_argument_is_written_through_a_copy(name):
    """The general path hands `out` to the kernel only when nothing the
    kernel reads shares its memory: per-head ALiBi slopes or sinks and
    valid lengths too, not only q, k, v and the mask (their values sat in
    out's first elements, which the first rows overwrote)."""
    rng = np.random.default_rng(4)
    dtype = np.float64 if name == "valid_lens" else np.float32
    q, k, v = (rng.standard_normal((2, 4, 40, 16)).astype(dtype) for _ in range(3))
    out = np.zeros(q.shape, dtype)
    if name == "valid_lens":
        vals = rng.integers(1, 40, (2, 40))
        arg = out.reshape(-1)[:vals.size].view(np.int64).reshape(vals.shape)
    else:
        vals = np.array([0.5, 0.1, 0.2, 0.05] if name == "alibi_slopes" else [1.0, -1.0, 2.0, 0.5], dtype)
        arg = out.reshape(-1)[:4]
    arg[:] = vals
    want = SDPA(q, k, v, **{name: vals.copy()})
    assert SDPA(q, k, v, out=out, **{name: arg}) is out
    np.testing.assert_array_equal(out, want)
