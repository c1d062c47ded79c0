"""Issue 7's silent-wrong-answer and error findings, each a regression test:
conventions users bring from d2l and torch, inputs the kernels must not
misread (misaligned, byte-swapped, structured-array fields), scalars and
flags in NumPy clothing, and errors that name the calling function."""
import numpy as np
import pytest

import attncore
from attncore import reference as R

from _oracle import sdpa_numpy
from _tolerances import assert_close

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (pip install '.[compare]')")
SDPA = attncore.scaled_dot_product_attention


def d2l_masked_attention(q, k, v, valid_lens):
    """d2l's DotProductAttention: (B, L, D) inputs, valid_lens (B,) or (B, Lq),
    masked scores set to -1e6 before the softmax."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    vl = np.asarray(valid_lens)
    vl = vl[:, None, None] if vl.ndim == 1 else vl[:, :, None]
    s = np.where(np.arange(k.shape[1])[None, None, :] < vl, s, -1e6)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


# -- d2l: 3-D (B, L, D) inputs with valid_lens (B,) or (B, Lq) -----------------

@pytest.mark.parametrize("B,Lq", [(4, 4), (2, 6), (5, 3)])   # B == Lq was misread as per-row
@pytest.mark.parametrize("per_row", [False, True])
def test_d2l_valid_lens_on_3d_inputs(isa, rng, B, Lq, per_row):
    q = rng.standard_normal((B, Lq, 8)).astype(np.float32)
    k = rng.standard_normal((B, 10, 8)).astype(np.float32)
    v = rng.standard_normal((B, 10, 3)).astype(np.float32)
    vl = rng.integers(1, 11, (B, Lq) if per_row else (B,))
    out = SDPA(q, k, v, valid_lens=vl)
    assert_close(out, d2l_masked_attention(q, k, v, vl), "sdpa", np.float32)
    assert_close(out, R.scaled_dot_product_attention(q, k, v, valid_lens=vl), "sdpa", np.float32)


def test_d2l_valid_lens_with_gqa_3d(rng):
    """Per-leading-index lengths also work when the leading dim is GQA heads."""
    q = rng.standard_normal((4, 3, 8)).astype(np.float32)
    k, v = (rng.standard_normal((2, 9, 8)).astype(np.float32) for _ in range(2))
    vl = np.array([9, 1, 5, 0])
    out = SDPA(q, k, v, enable_gqa=True, valid_lens=vl)
    ref = R.scaled_dot_product_attention(q, k, v, enable_gqa=True, valid_lens=vl)
    assert_close(out, ref, "sdpa", np.float32)


@pytest.mark.parametrize("shape,words", [
    ((3, 4, 1), ["(B,)", "(B, Lq)"]),      # 3-D valid_lens for 3-D inputs
    ((7,), ["(7,)", "(B,) = (4,)"]),          # a length that is neither B nor 1
    ((4, 5), ["(4, 5)", "(B, Lq) = (4, 6)"]),   # (B, X) with X != Lq
])
def test_d2l_valid_lens_shape_errors(shape, words):
    q = np.ones((4, 6, 8), np.float32)
    k = v = np.ones((4, 10, 8), np.float32)
    with pytest.raises(ValueError) as info:
        SDPA(q, k, v, valid_lens=np.ones(shape, int))
    for w in words + ["valid_lens"]:
        assert w in str(info.value), (w, str(info.value))


def test_valid_lens_batched_inputs_one_reading(rng):
    """4-D inputs: batch shape = one length per batch element, batch + (Lq,)
    one per row; anything else raises and lists both."""
    q = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    k, v = (rng.standard_normal((2, 3, 9, 8)).astype(np.float32) for _ in range(2))
    for vl in (np.array([3, 9]), np.array([[1, 2, 3, 4], [9, 8, 0, 5]])):
        assert_close(SDPA(q, k, v, valid_lens=vl), R.scaled_dot_product_attention(q, k, v, valid_lens=vl),
                     "sdpa", np.float32)
    with pytest.raises(ValueError, match=r"batch \+ \(Lq,\)"):
        SDPA(q, k, v, valid_lens=np.ones((2, 3, 4), int))


# -- torch: MultiheadAttention defaults and batch_first --------------------------

def test_mha_defaults_follow_torch():
    m = attncore.MultiHeadAttention(16, 4, seed=0)
    x = np.ones((2, 3, 16), np.float32)
    out, w = m(x)
    assert w is not None and w.shape == (2, 3, 3)        # need_weights=True by default
    assert m.training and m.batch_first and m.dropout == 0.0
    assert m.eval() is m and not m.training and m.train() is m and m.training


@needs_torch
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_mha_from_torch_takes_batch_first_dropout_and_mode(rng, batch_first, training):
    torch.manual_seed(0)
    t = torch.nn.MultiheadAttention(24, 3, dropout=0.0 if not training else 0.25,
                                    batch_first=batch_first)
    t.train(training)
    m = attncore.MultiHeadAttention.from_torch(t, seed=1)
    assert (m.batch_first, m.training, m.dropout) == (batch_first, training, t.dropout)
    shape = (2, 6, 24) if batch_first else (6, 2, 24)
    x = rng.standard_normal(shape).astype(np.float32)
    out, w = m(x)
    assert out.shape == shape and w.shape == (2, 6, 6)
    if not training:
        with torch.no_grad():
            ref, ref_w = t(*([torch.from_numpy(x)] * 3))
        assert_close(out, ref.double().numpy(), "sdpa", np.float32)
        assert_close(w, ref_w.double().numpy(), "weights", np.float32)
    else:
        # training mode drops weights (the pattern is reproducible from the
        # layer's seed: test_mha_dropout_matches_reference_with_the_same_seed);
        # kept weights are scaled by 1/(1-p); eval mode matches torch again
        assert (w == 0).any()
        assert np.isclose(w[w > 0].max() * 0.75, w[w > 0].max() * (1 - t.dropout))
        m2 = attncore.MultiHeadAttention.from_torch(t, seed=1)
        np.testing.assert_array_equal(m2(x)[0], out)
        m.eval()
        with torch.no_grad():
            t.eval()
            ref = t(*([torch.from_numpy(x)] * 3))[0]
        assert_close(m(x)[0], ref.double().numpy(), "sdpa", np.float32)


def test_mha_dropout_matches_reference_with_the_same_seed(rng):
    m = attncore.MultiHeadAttention(16, 4, dropout=0.3, seed=5)
    m.in_proj_bias[:] = rng.standard_normal(m.in_proj_bias.shape)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    seed = int(np.random.default_rng([5, 1]).integers(1 << 63))   # the layer's first dropout seed
    out, w = m(x, average_attn_weights=False)
    ref_out, ref_w = R.MultiHeadAttention(m)(x, average_attn_weights=False, dropout_seed=seed)
    assert_close(out, ref_out, "sdpa", np.float32)
    assert_close(w, ref_w, "weights", np.float32)
    assert (w == 0).any()
    m.eval()
    out_eval, w_eval = m(x)
    ref_eval, _ = R.MultiHeadAttention(m)(x)
    assert_close(out_eval, ref_eval, "sdpa", np.float32)


def test_mha_batch_first_false_layout(rng):
    m = attncore.MultiHeadAttention(16, 4, batch_first=False, seed=0).eval()
    x = rng.standard_normal((5, 2, 16)).astype(np.float32)          # (L, B, E)
    kpm = np.zeros((2, 5), bool)
    kpm[1, 3:] = True
    out, w = m(x, key_padding_mask=kpm, valid_lens=None)
    ref, ref_w = R.MultiHeadAttention(m)(x, key_padding_mask=kpm)
    assert out.shape == (5, 2, 16)
    assert_close(out, ref, "sdpa", np.float32)
    assert_close(w, ref_w, "weights", np.float32)
    with pytest.raises(ValueError, match="batch_first=False"):
        m(x, np.ones((5, 3, 16), np.float32), np.ones((5, 3, 16), np.float32))


def test_mha_valid_lens_d2l(rng):
    m = attncore.MultiHeadAttention(16, 4, seed=0).eval()
    x = rng.standard_normal((3, 6, 16)).astype(np.float32)
    for vl in (np.array([6, 2, 4]), rng.integers(1, 7, (3, 6))):
        out, w = m(x, valid_lens=vl)
        ref, ref_w = R.MultiHeadAttention(m)(x, valid_lens=vl)
        assert_close(out, ref, "sdpa", np.float32)
        assert_close(w, ref_w, "weights", np.float32)


# -- inputs the kernels must not misread -----------------------------------------

def misaligned(a):
    """A copy of `a` whose data starts one byte past an aligned address."""
    buf = np.frombuffer(bytes(1) + np.ascontiguousarray(a).tobytes(), dtype=a.dtype, offset=1)
    out = buf.reshape(a.shape)
    assert not out.flags.aligned
    return out


def test_misaligned_inputs_and_masks(isa, dtype, rng):
    q = rng.standard_normal((2, 3, 7, 5)).astype(dtype)
    k = rng.standard_normal((2, 3, 33, 5)).astype(dtype)
    v = rng.standard_normal((2, 3, 33, 4)).astype(dtype)
    mask = rng.standard_normal((7, 33)).astype(dtype)
    ref = SDPA(q, k, v, attn_mask=mask)
    got = SDPA(misaligned(q), misaligned(k), misaligned(v), attn_mask=misaligned(mask))
    np.testing.assert_array_equal(got, ref)


def test_misaligned_small_arrays_are_copied_aligned(rng):
    """valid_lens, ALiBi slopes, sinks and cu_seqlens are read by the kernels
    too: a misaligned one must arrive aligned (UBSan under tools/sanitize.sh)."""
    from attncore import _layout
    vl = misaligned(np.array([5, 7], np.int64))
    assert _layout.contiguous(vl, np.int64).flags.aligned
    assert _layout.for_kernel(vl).flags.aligned
    q, k, v = (rng.standard_normal((2, 3, 7, 8)).astype(np.float32) for _ in range(3))
    slopes = rng.random(3).astype(np.float32)
    sinks = rng.standard_normal(3).astype(np.float32)
    got = SDPA(q, k, v, valid_lens=vl, alibi_slopes=misaligned(slopes), sinks=misaligned(sinks))
    ref = SDPA(q, k, v, valid_lens=np.array([5, 7]), alibi_slopes=slopes, sinks=sinks)
    np.testing.assert_array_equal(got, ref)
    cu = np.array([0, 3, 7], np.int64)
    qp, kp, vp = (rng.standard_normal((2, 7, 8)).astype(np.float32) for _ in range(3))
    np.testing.assert_array_equal(
        SDPA(qp, kp, vp, cu_seqlens_q=misaligned(cu), cu_seqlens_k=misaligned(cu)),
        SDPA(qp, kp, vp, cu_seqlens_q=cu, cu_seqlens_k=cu))


def test_structured_field_mask_is_not_misread(rng):
    """A float32 mask taken as a field of a packed structured array (strides
    (20, 5), unaligned) used to give NaN where a contiguous copy was right."""
    q, k, v = (rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for _ in range(3))
    rec = np.zeros((4, 4), dtype=np.dtype([("flag", "u1"), ("bias", "<f4")]))   # packed: itemsize 5
    rec["bias"] = rng.standard_normal((4, 4))
    field = rec["bias"]
    assert field.strides == (20, 5) and not field.flags.aligned
    got = SDPA(q, k, v, attn_mask=field)
    ref = SDPA(q, k, v, attn_mask=np.ascontiguousarray(field))
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, ref)


def test_big_endian_inputs_are_converted(rng):
    q, k, v = (rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for _ in range(3))
    got = SDPA(q.astype(">f4"), k.astype(">f4"), v.astype(">f4"), attn_mask=np.zeros((4, 4), ">f4"))
    np.testing.assert_array_equal(got, SDPA(q, k, v, attn_mask=np.zeros((4, 4), np.float32)))
    assert got.dtype == np.float32


def test_numpy_scalars_and_bools_are_accepted(rng):
    q, k, v = (rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for _ in range(3))
    ref = SDPA(q, k, v, is_causal=True, scale=0.5, dropout_p=0.25, seed=3)
    got = SDPA(q, k, v, is_causal=np.True_, scale=np.array(0.5), dropout_p=np.float32(0.25), seed=3)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(SDPA(q, k, v, is_causal=np.False_), SDPA(q, k, v))
    with pytest.raises(TypeError, match="scale"):
        SDPA(q, k, v, scale=np.array([0.5]))
    with pytest.raises(TypeError, match="scale"):
        SDPA(q, k, v, scale=np.True_)


def test_too_many_dimensions_is_a_clear_error():
    q = np.ones((1,) * 31 + (2, 3, 4), np.float32)   # 34 dims
    with pytest.raises(ValueError, match="query has 34 dimensions; at most 32"):
        SDPA(q, q, q)


@needs_torch
def test_torch_bfloat16_and_float16_tensors(rng):
    q, k, v = (torch.from_numpy(rng.standard_normal((1, 2, 5, 8)).astype(np.float32)) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    for dt, tol in ((torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
        out = SDPA(q.to(dt), k.to(dt), v.to(dt))
        assert isinstance(out, torch.Tensor) and out.dtype == dt
        np.testing.assert_allclose(out.float().numpy(), ref.numpy(), rtol=tol, atol=tol)


@needs_torch
def test_torch_tensors_that_require_grad_are_refused_clearly():
    q = torch.ones(1, 2, 3, 4, requires_grad=True)
    with pytest.raises(TypeError, match=r"forward pass only.*no_grad"):
        SDPA(q, q, q)
    with torch.no_grad():
        assert SDPA(q, q, q).shape == (1, 2, 3, 4)


# -- errors name the function that was called -----------------------------------

def test_kernel_errors_name_the_calling_function(monkeypatch):
    """A status from C is reported under the public function's name."""
    from attncore import _core

    def fake_sdpa(op, *args, **kwargs):
        raise MemoryError(f"{op}: out of memory for scratch buffers")

    monkeypatch.setattr(_core, "sdpa", fake_sdpa)        # the general path
    monkeypatch.setattr(_core, "sdpa_fast", fake_sdpa)   # the common call's fast path
    q = np.ones((1, 1, 2, 3), np.float32)
    for fn, name in ((attncore.dot_attention, "dot_attention"),
                     (attncore.scaled_dot_product_attention, "scaled_dot_product_attention")):
        with pytest.raises(MemoryError, match=name):
            fn(q, q, q)
    with pytest.raises(MemoryError, match="general_attention"):
        attncore.general_attention(q, q, q, np.eye(3, dtype=np.float32))


def test_c_rejection_names_the_function():
    """The real C status path: a descriptor whose size products overflow
    int64 (no NumPy array is that large, so it is built by hand here) is
    rejected before any memory is touched, and reported under the calling
    function's name."""
    from attncore import _config, _core
    a = np.ones((1, 1, 1, 4), np.float32)
    with pytest.raises(ValueError, match="dot_attention: the C kernel rejected"):
        _core.sdpa("dot_attention", False, _config.active_isa(), 1, (1, 1, 1, 1, 2**62, 4, 4), (1,),
                   a, a, a, np.empty_like(a), _core.MASK_NONE, None, 0, 0, None, 1.0, 0, 0, 1.0,
                   None, None)


def test_float32_mask_with_half_query(rng):
    """A float32 additive mask is accepted for a float16 query (computed in
    float32, nothing rounded away); other dtype mixes stay errors."""
    q, k, v = (rng.standard_normal((1, 2, 4, 8)).astype(np.float16) for _ in range(3))
    m32 = (rng.standard_normal((4, 4)) * 3).astype(np.float32)
    out = SDPA(q, k, v, attn_mask=m32)
    ref = SDPA(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), attn_mask=m32)
    np.testing.assert_allclose(out.astype(np.float32), ref, atol=2e-3)
    with pytest.raises(TypeError, match="float16.*or float32"):
        SDPA(q, k, v, attn_mask=m32.astype(np.float64))
    with pytest.raises(TypeError, match="float32"):
        SDPA(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), attn_mask=m32.astype(np.float16))


def test_is_causal_none_means_false_on_every_path(rng, monkeypatch):
    """None is documented as False (Hugging Face's "unset"), on the fast
    path, the general one and in the reference; other values are refused
    with the documented spellings."""
    from attncore import _core
    q, k, v = (rng.standard_normal((1, 2, 3, 8)).astype(np.float32) for _ in range(3))
    fast_results, real_fast = [], _core.sdpa_fast
    monkeypatch.setattr(_core, "sdpa_fast",
                        lambda *a, **kw: fast_results.append(real_fast(*a, **kw)) or fast_results[-1])
    fast = attncore.scaled_dot_product_attention(q, k, v, is_causal=None)
    assert fast_results and fast_results[0] is fast   # (the fast path took it)
    assert np.array_equal(fast, attncore.scaled_dot_product_attention(q, k, v))
    general, lse = attncore.scaled_dot_product_attention(q, k, v, is_causal=None, return_lse=True)
    assert np.array_equal(general, attncore.scaled_dot_product_attention(q, k, v, return_lse=True)[0])
    assert_close(general, R.scaled_dot_product_attention(q, k, v, is_causal=None), "sdpa", np.float32)
    with pytest.raises(ValueError, match=r"is_causal must be False \(or None\), True, 'top_left' or "
                                         r"'bottom_right'; got 'yes'"):
        attncore.scaled_dot_product_attention(q, k, v, is_causal="yes", return_lse=True)
