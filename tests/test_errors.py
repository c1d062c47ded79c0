"""Bad input -> ValueError / TypeError naming the argument and the shapes."""
import re
import numpy as np
import pytest

import attncore

f32 = np.float32
SDPA = attncore.scaled_dot_product_attention


def ok(**over):
    args = dict(query=np.ones((2, 4, 5, 8), f32), key=np.ones((2, 4, 6, 8), f32),
                value=np.ones((2, 4, 6, 3), f32))
    args.update(over)
    return args


@pytest.mark.parametrize("over,exc,words", [
    (dict(query=np.ones((2, 4, 5, 8), np.int32)), TypeError, ["query", "int32"]),
    (dict(key=np.ones((2, 4, 6, 8), np.float64)), TypeError, ["mixed", "key=float64"]),
    (dict(value=np.ones((2, 4, 6, 3), np.complex64)), TypeError, ["value", "complex64"]),
    (dict(query=np.ones((8,), f32)), ValueError, ["query", "(8,)"]),
    (dict(query=np.ones((5, 8), f32)), ValueError, ["2-D", "(5, 8)"]),
    (dict(key=np.ones((2, 4, 6, 7), f32)), ValueError, ["head_dim", "(2, 4, 6, 7)"]),
    (dict(value=np.ones((2, 4, 5, 3), f32)), ValueError, ["seq_len", "(2, 4, 5, 3)"]),
    (dict(key=np.ones((2, 2, 6, 8), f32), value=np.ones((2, 2, 6, 3), f32)), ValueError, ["enable_gqa", "4 heads"]),
    (dict(key=np.ones((3, 4, 6, 8), f32), value=np.ones((3, 4, 6, 3), f32)), ValueError, ["batch", "(3, 4, 6, 8)"]),
    (dict(attn_mask=np.ones((5, 7), bool)), ValueError, ["attn_mask", "(5, 7)", "(2, 4, 5, 6)"]),
    (dict(attn_mask=np.ones((2, 6), bool)), ValueError, ["attn_mask", "(2, 6)", "(Lq, Lk)",
                                                         "attn_mask[:, None, None, :]"]),
    (dict(attn_mask=np.ones((1, 1, 2, 4, 5, 6), bool)), ValueError, ["attn_mask", "more dimensions"]),
    (dict(attn_mask=np.ones((5, 6), np.int64)), TypeError, ["attn_mask", "int64"]),
    (dict(attn_mask=np.ones((5, 6), np.float64)), TypeError, ["attn_mask", "float32"]),
    (dict(dropout_p=1.0), ValueError, ["dropout_p"]),
    (dict(dropout_p=-0.1), ValueError, ["dropout_p"]),
    (dict(dropout_p="a"), TypeError, ["dropout_p"]),
    (dict(dropout_p=0.5, seed=-1), ValueError, ["seed"]),
    (dict(dropout_p=0.5, seed=1.5), TypeError, ["seed", "float 1.5"]),
    (dict(seed=-1), ValueError, ["seed", "-1"]),                 # checked without dropout too
    (dict(seed="x"), TypeError, ["seed", "str 'x'"]),
    (dict(window=(1.5, 0)), TypeError, ["window left", "float 1.5"]),
    (dict(window=(0, True)), TypeError, ["window right", "bool True"]),
    (dict(window=(-2, 0)), ValueError, ["window left", "-2"]),
    (dict(is_causal="upper"), ValueError, ["is_causal", "'upper'"]),
    (dict(scale="x"), TypeError, ["scale"]),
    (dict(scale=10 ** 400), ValueError, ["scale", "too large"]),
    (dict(num_threads=0), ValueError, ["num_threads"]),
    (dict(num_threads=-2), ValueError, ["num_threads"]),
    (dict(num_threads=1.5), TypeError, ["num_threads"]),
    (dict(num_threads=True), TypeError, ["num_threads"]),
    (dict(out=np.empty((2, 4, 5, 4), f32)), ValueError, ["out", "(2, 4, 5, 4)", "(2, 4, 5, 3)"]),
    (dict(out=np.empty((2, 4, 5, 3), np.float64)), TypeError, ["out", "float64"]),
    (dict(out=[1.0]), TypeError, ["out"]),
    (dict(valid_lens=np.array([7, 1])), ValueError, ["valid_lens", "Lk=6"]),
    (dict(valid_lens=np.array([-1, 1])), ValueError, ["valid_lens"]),
    (dict(valid_lens=np.array([1.0, 2.0])), TypeError, ["valid_lens", "float64"]),
    (dict(valid_lens=np.ones((2, 5, 1, 1), int)), ValueError, ["valid_lens", "(2, 5, 1, 1)"]),
    (dict(valid_lens=np.ones((3,), int)), ValueError, ["valid_lens", "(3,)"]),
])
def test_bad_input(over, exc, words):
    with pytest.raises(exc) as info:
        SDPA(**ok(**over))
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_a_key_padding_mask_of_3d_inputs_is_told_its_spelling():
    """(B, Lk) with (B, L, D) inputs: the 2-D mask is (Lq, Lk) as in torch;
    the message spells the per-batch-element form, which then runs."""
    q, k = np.ones((3, 5, 4), f32), np.ones((3, 7, 4), f32)
    m = np.arange(7) < np.array([7, 3, 0])[:, None]
    with pytest.raises(ValueError, match=re.escape("write attn_mask[:, None, :]")):
        SDPA(q, k, k, attn_mask=m)
    out = SDPA(q, k, k, attn_mask=m[:, None, :])
    assert out.shape == (3, 5, 4) and not out[2].any()


def test_gqa_heads_not_multiple():
    with pytest.raises(ValueError, match="multiple"):
        SDPA(np.ones((1, 6, 2, 4), f32), np.ones((1, 4, 3, 4), f32), np.ones((1, 4, 3, 4), f32),
             enable_gqa=True)


def test_read_only_out():
    out = np.empty((2, 4, 5, 3), f32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        SDPA(**ok(out=out))


def test_none_and_strings():
    with pytest.raises(TypeError, match="query"):
        SDPA(None, np.ones((1, 2, 2), f32), np.ones((1, 2, 2), f32))
    with pytest.raises(TypeError, match="query"):
        SDPA("abc", np.ones((1, 2, 2), f32), np.ones((1, 2, 2), f32))


def test_lists_are_accepted_as_float64():
    out = SDPA([[[1.0, 0.0]]], [[[1.0, 0.0]]], [[[2.0]]])
    assert out.dtype == np.float64 and out.shape == (1, 1, 1)


def test_merge_bad_input():
    o, l = np.zeros((2, 3, 4), f32), np.zeros((2, 3), f32)
    with pytest.raises(ValueError, match="empty"):
        attncore.merge_attention([])
    with pytest.raises(TypeError, match="pair"):
        attncore.merge_attention([(o, l, l)])
    with pytest.raises(ValueError, match="lse"):
        attncore.merge_attention([(o, np.zeros((2, 4), f32))])
    with pytest.raises(ValueError, match="parts\\[1\\]"):
        attncore.merge_attention([(o, l), (np.zeros((2, 3, 5), f32), l)])
    with pytest.raises(TypeError, match="mix"):
        attncore.merge_attention([(o, l.astype(np.float64))])
    with pytest.raises(ValueError, match=r"parts\[0\]: out must be an array \(\.\.\., Dv\) "
                                         r"with at least one dim"):
        attncore.merge_attention([(np.float32(1), np.float32(0))])


def test_out_in_the_other_byte_order_says_so():
    x = np.zeros((2, 3), f32)
    other = np.dtype(f32).newbyteorder("S")
    for call in (lambda o: attncore.softmax(x, out=o),
                 lambda o: attncore.scaled_dot_product_attention(x, x, x, out=o)):
        with pytest.raises(TypeError, match="in the other byte order; out must be native"):
            call(np.empty((2, 3), other))


def test_a_bfloat16_mask_cast_hint_names_ml_dtypes():
    """NumPy has no bfloat16: the hint must be code that runs."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf = ml_dtypes.bfloat16
    x = np.zeros((2, 3), bf)
    with pytest.raises(TypeError, match=r"mask\.astype\(ml_dtypes\.bfloat16\)"):
        attncore.softmax(x, mask=np.zeros((2, 3), np.float16))
    with pytest.raises(TypeError, match=r"attn_mask\.astype\(ml_dtypes\.bfloat16\)"):
        attncore.kernel_regression(np.zeros(2, bf), np.zeros(3, bf), np.zeros(3, bf),
                                   attn_mask=np.zeros((2, 3), np.float16))


def test_window_wider_than_any_key_range_is_unbounded():
    """window sides past C's int64 (2**63) mean "unbounded" in effect, not an
    OverflowError."""
    args = ok()
    np.testing.assert_array_equal(SDPA(**args, window=(2 ** 63, 1)), SDPA(**args, window=(None, 1)))


def test_a_float_mask_of_another_dtype_is_told_how_to_cast_in_its_own_library():
    """The error spells the cast the caller can write: ml_dtypes for a
    bfloat16 query (NumPy has no np.bfloat16), .to() for torch tensors."""
    mask64 = np.zeros((3, 3))
    cases = [(np.zeros((1, 2, 3, 4), np.float32), mask64, "attn_mask.astype(np.float32)")]
    try:
        import ml_dtypes
        cases.append((np.zeros((1, 2, 3, 4), ml_dtypes.bfloat16), mask64,
                      "attn_mask.astype(ml_dtypes.bfloat16)"))
    except ImportError:
        pass
    try:
        import torch
        cases.append((torch.zeros(1, 2, 3, 4), torch.zeros(3, 3, dtype=torch.float64),
                      "attn_mask.to(torch.float32)"))
    except ImportError:
        pass
    for q, mask, cast in cases:
        with pytest.raises(TypeError, match=re.escape(cast)):
            attncore.scaled_dot_product_attention(q, q, q, attn_mask=mask)


def test_a_python_number_for_an_array_argument_is_named_as_such():
    """A Python number where an array is documented reads as float64 and
    fails the dtype check first: the message says where the float64 came
    from and that the argument needs its documented shape (it used to say
    only "cast them to one dtype", after which the shape error came)."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, s, 4)).astype(f32) for s in (3, 5, 5))
    wq, wk = rng.standard_normal((6, 4)).astype(f32), rng.standard_normal((6, 4)).astype(f32)
    ws = rng.standard_normal(6).astype(f32)
    with pytest.raises(TypeError, match=r"bias=float64\).*bias \(shape \(\)\) came from Python numbers.*shapes"):
        attncore.additive_attention(q, k, v, wq, wk, ws, bias=0.5)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\); got \(\)"):
        attncore.additive_attention(q, k, v, wq, wk, ws, bias=np.float32(0.5))


@pytest.mark.parametrize("build,exc,words", [
    # np.dtype(None) is float64, torch's dtype=None its default float32: neither is guessed
    (lambda: attncore.KVCache(max_len=8, num_heads=2, head_dim=4, dtype=None), TypeError,
     ["KVCache", "dtype=None", "float64", "float32"]),
    (lambda: attncore.MultiHeadAttention(8, 2, dtype=None), TypeError,
     ["MultiHeadAttention", "dtype=None", "float64", "float32"]),
    (lambda: attncore.MultiHeadAttention(8, 2, dtype="foo"), TypeError,
     ["MultiHeadAttention", "dtype", "'foo'"]),
    # NumPy's own messages named neither the class nor the argument
    (lambda: attncore.MultiHeadAttention(8, 2, seed=-1), ValueError,
     ["MultiHeadAttention", "seed", "-1"]),
    (lambda: attncore.MultiHeadAttention(8, 2, seed=-2**70), ValueError,
     ["MultiHeadAttention", "seed", "an int >= 0"]),
    (lambda: attncore.MultiHeadAttention(8, 2, seed=1.5), TypeError,
     ["MultiHeadAttention", "seed", "1.5"]),
    (lambda: attncore.KVCache(max_len=16, num_heads=2, head_dim=4, batch_size=2**58), ValueError,
     ["KVCache", f"batch {2**58}", "max_len or batch"]),
    (lambda: attncore.KVCache(max_len=2**62, num_heads=2, head_dim=4, batch_size=1), ValueError,
     ["KVCache", str(2**62), "max_len"]),
    (lambda: attncore.KVCache(max_len=2**62, num_heads=2, head_dim=4, dtype="int8").append(
        np.ones((1, 2, 1, 4), f32), np.ones((1, 2, 1, 4), f32)), ValueError,
     ["KVCache", "int8", "max_len"]),
])
def test_layer_and_cache_arguments_are_named(build, exc, words):
    with pytest.raises(exc) as info:
        build()
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    # (the layer's seed feeds NumPy's generators, which take any size)
    attncore.MultiHeadAttention(8, 2, seed=2**70)


def test_an_out_whose_elements_share_memory_is_refused():
    # a writable stride-0 (or otherwise self-overlapping) view cannot hold a
    # result; it used to be filled and returned, every row the last one written
    from numpy.lib.stride_tricks import as_strided

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6)).astype(f32)
    rows = as_strided(np.zeros(6, f32), (4, 6), (0, 4))
    q = rng.standard_normal((1, 1, 8, 4)).astype(f32)
    heads = as_strided(np.zeros(8 * 4, f32), (1, 2, 8, 4), (0, 0, 16, 4))   # rows 2 apart overlap
    img = rng.standard_normal((1, 4, 3, 3)).astype(f32)
    w1, b1 = rng.standard_normal((2, 4)).astype(f32), np.zeros(2, f32)
    w2, b2 = rng.standard_normal((4, 2)).astype(f32), np.zeros(4, f32)
    for call in (lambda: attncore.softmax(x, out=rows),
                 lambda: SDPA(q, q, q, out=as_strided(np.zeros(4, f32), (1, 1, 8, 4), (0, 0, 0, 4))),
                 lambda: SDPA(np.repeat(q, 2, 1), np.repeat(q, 2, 1), np.repeat(q, 2, 1), out=heads),
                 lambda: attncore.channel_attention(img, w1, b1, w2, b2, out=as_strided(
                     np.zeros(9, f32), (1, 4, 3, 3), (0, 0, 12, 4)))):
        with pytest.raises(ValueError, match=r"out's elements may share memory \(strides"):
            call()
    # every ordinary layout passes: C, Fortran, sliced, reversed, transposed
    for out in (np.empty((4, 6), f32), np.asfortranarray(np.empty((4, 6), f32)),
                np.empty((8, 12), f32)[::2, ::2], np.empty((4, 6), f32)[::-1, ::-1],
                np.empty((6, 4), f32).T):
        np.testing.assert_array_equal(attncore.softmax(x, out=out), attncore.softmax(x))


def test_api_audit_inputs_get_errors_that_name_them():
    """From an API audit: NumPy masked arrays (np.asarray dropped their
    mask, so masked entries counted), an int bias past float's range
    (OverflowError), show_config's file (AttributeError), an array as
    hard_attention's mode (NumPy's ambiguous truth value)."""
    x = np.ma.masked_array([[1.0, 2.0, 3.0]], mask=[[0, 0, 1]])
    with pytest.raises(TypeError, match="x is a NumPy masked array, whose mask attncore does not read"):
        attncore.softmax(x)
    q = np.ma.masked_array(np.ones((1, 2, 4)), mask=np.zeros((1, 2, 4)))
    with pytest.raises(TypeError, match="key is a NumPy masked array"):
        attncore.scaled_dot_product_attention(np.ones((1, 2, 4)), q, q)
    img = np.ones((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="bias is too large for a float"):
        attncore.spatial_attention(img, np.zeros((1, 2, 3, 3), np.float32), 10 ** 400, layout="NCHW")
    for bad in ("config.txt", 1):
        with pytest.raises(TypeError, match="show_config: file must be a writable text stream"):
            attncore.show_config(file=bad)
    qq = np.ones((1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="mode must be one of"):
        attncore.hard_attention(qq, qq, qq, mode=np.array(["argmax", "topk"]))


def test_dot_attention_takes_every_argument_of_sdpa():
    """dot_attention is SDPA with scale 1 (API.md): window, alibi_slopes,
    softcap, sinks and packed sequences too (they were a TypeError)."""
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 6, 4))
    kw = dict(window=(2, 0), is_causal=True, alibi_slopes=np.array([0.5, 0.25]), softcap=3.0,
              sinks=np.array([0.1, -0.2]))
    np.testing.assert_array_equal(attncore.dot_attention(q, k, k, **kw),
                                  attncore.scaled_dot_product_attention(q, k, k, scale=1.0, **kw))
    np.testing.assert_allclose(attncore.dot_attention(q, k, k, **kw),
                               attncore.reference.dot_attention(q, k, k, **kw), rtol=1e-10, atol=1e-12)
    cu = np.array([0, 2, 6])
    np.testing.assert_array_equal(attncore.dot_attention(q, k, k, cu_seqlens_q=cu, cu_seqlens_k=cu),
                                  attncore.scaled_dot_product_attention(q, k, k, scale=1.0, cu_seqlens_q=cu,
                                                                        cu_seqlens_k=cu))


def test_outputs_past_the_address_space_name_their_shape():
    """Broadcast batch dims whose product overflows: a ValueError naming the
    output's shape (NumPy's "array is too big" named nothing)."""
    from numpy.lib.stride_tricks import as_strided
    base = np.zeros(4, np.float32)

    def view(shape):   # only the last axis is real
        return as_strided(base, shape, (0,) * (len(shape) - 1) + (4,))
    q, kv = view((2**31, 1, 1, 1, 4)), view((1, 2**31, 1, 1, 4))
    for fn in (attncore.scaled_dot_product_attention, attncore.sigmoid_attention):
        with pytest.raises(ValueError, match=r"shape \(2147483648, 2147483648, 1, 1, 4\) \(float32\) cannot "
                                             r"be made: array is too big"):
            fn(q, kv, kv)
