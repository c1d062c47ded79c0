"""Score variants in the fused kernel (issue 10 item 7): sliding windows,
ALiBi, logit soft-capping, attention sinks and packed variable-length
batches -- against the pure-Python reference, against the textbook formula
with an explicit mask, against torch with that mask, on every level and on
the panel, rows and split-K paths; and the skipped blocks are never
visited."""
import numpy as np
import pytest

import attncore
from attncore import reference as R

from _guard import every_kernel_array_guarded, guarded_allocations, guarded_copy
from _paths import assert_plan
from _tolerances import assert_close

SDPA = attncore.scaled_dot_product_attention
SLOPES = np.array([0.5, 0.25, 0.125, 0.0625])


def data(rng, dtype, B=2, Hq=4, Hkv=2, Lq=9, Lk=40, D=8):
    return (rng.standard_normal((B, Hq, Lq, D)).astype(dtype),
            rng.standard_normal((B, Hkv, Lk, D)).astype(dtype),
            rng.standard_normal((B, Hkv, Lk, D)).astype(dtype))


def formula(q, k, v, *, window=None, alibi=None, softcap=None, sinks=None, top_left=False,
            causal=False):
    """float64, with the window and ALiBi as explicit (Lq, Lk) terms."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    G = q.shape[-3] // k.shape[-3]
    k, v = np.repeat(k, G, axis=-3), np.repeat(v, G, axis=-3)
    Lq, Lk = q.shape[-2], k.shape[-2]
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if softcap:
        s = softcap * np.tanh(s / softcap)
    p = np.arange(Lq)[:, None] + (0 if top_left else Lk - Lq)
    j = np.arange(Lk)[None, :]
    if alibi is not None:
        s = s - np.asarray(alibi)[:, None, None] * np.abs(p - j)
    visible = np.ones((Lq, Lk), bool)
    if causal:
        visible &= j <= p
    if window is not None:
        left, right = window
        if left is not None:
            visible &= j >= p - left
        if right is not None:
            visible &= j <= p + right
    s = np.where(visible, s, -np.inf)
    top = s.max(-1, keepdims=True, initial=-np.inf)
    if sinks is not None:
        sk = np.asarray(sinks)[:, None, None] * np.ones_like(top)
        top = np.maximum(top, sk)
    top = np.where(np.isneginf(top), 0, top)
    e = np.exp(s - top)
    total = e.sum(-1, keepdims=True) + (np.exp(sk - top) if sinks is not None else 0)
    return np.where(total > 0, e / np.where(total > 0, total, 1), 0) @ v


CASES = {
    "window-causal": dict(window=(5, 0), is_causal="bottom_right"),
    "window-two-sided": dict(window=(3, 2)),
    "window-top-left": dict(window=(4, None), is_causal=True),
    "alibi": dict(alibi_slopes=SLOPES),
    "alibi-causal": dict(alibi_slopes=SLOPES, is_causal="bottom_right"),
    "softcap": dict(softcap=2.0),
    "sinks": dict(sinks=np.array([0.3, -1.0, 2.0, 0.0])),
    "all": dict(window=(6, 0), alibi_slopes=SLOPES, softcap=3.0, sinks=np.zeros(4),
                is_causal="bottom_right"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shape", [dict(Lq=9, Lk=40), dict(Lq=1, Lk=300), dict(Lq=70, Lk=300)],
                         ids=["small", "decode", "panel"])
def test_against_reference(isa, dtype, case, shape):
    rng = np.random.default_rng(len(case))
    q, k, v = data(rng, dtype, **shape)
    kw = dict(CASES[case], enable_gqa=True)
    out, lse = SDPA(q, k, v, return_lse=True, **kw)
    ref, ref_lse = R.scaled_dot_product_attention(q, k, v, return_lse=True, **kw)
    assert_close(out, ref, "sdpa", dtype, scale=4.0)
    fin = np.isfinite(ref_lse)
    np.testing.assert_array_equal(np.isfinite(lse), fin)
    assert_close(lse[fin], ref_lse[fin], "lse", dtype, scale=4.0)


@pytest.mark.parametrize("case", ["window", "alibi", "softcap", "sinks"])
def test_split_decode_path(isa, case):
    """Long decode rows split into key chunks: windows cut chunks away, sinks
    count once (in the first chunk) however many chunks merge."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 4, 1, 32)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 5000, 32)).astype(np.float32) for _ in range(2))
    kw = {"window": dict(window=(700, 0)), "alibi": dict(alibi_slopes=SLOPES / 100),
          "softcap": dict(softcap=1.5), "sinks": dict(sinks=np.array([5.0, 0.0, -3.0, 1.0]))}[case]
    assert_plan(SDPA, q, k, v, enable_gqa=True, path="rows", split=True, **kw)
    out = SDPA(q, k, v, enable_gqa=True, **kw)
    ref = formula(q, k, v, window=kw.get("window"), alibi=kw.get("alibi_slopes"),
                  softcap=kw.get("softcap"), sinks=kw.get("sinks"))
    assert_close(out, ref, "sdpa", np.float32, scale=4.0)


@pytest.mark.parametrize("case", list(CASES))
def test_against_explicit_mask_formula_larger(isa, case):
    rng = np.random.default_rng(7)
    q, k, v = data(rng, np.float32, B=1, Lq=257, Lk=513, D=64)
    kw = CASES[case]
    out = SDPA(q, k, v, enable_gqa=True, **kw)
    top_left = kw.get("is_causal") is True
    ref = formula(q, k, v, window=kw.get("window"), alibi=kw.get("alibi_slopes"),
                  softcap=kw.get("softcap"), sinks=kw.get("sinks"), top_left=top_left,
                  causal=bool(kw.get("is_causal")))
    assert_close(out, ref, "sdpa", np.float32, scale=4.0)


def test_against_torch_with_explicit_masks():
    """torch has no window / ALiBi arguments: the same attention through its
    SDPA with the equivalent float mask."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    q, k, v = data(rng, np.float32, B=1, Lq=33, Lk=100, D=16)
    Lq, Lk = 33, 100
    p = np.arange(Lq)[:, None] + Lk - Lq
    j = np.arange(Lk)[None, :]
    bias = -SLOPES[:, None, None] * np.abs(p - j) + np.where((j <= p) & (j >= p - 10), 0, -np.inf)
    ours = SDPA(q, k, v, enable_gqa=True, window=(10, 0), alibi_slopes=SLOPES, is_causal="bottom_right")
    theirs = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(x) for x in (q, k, v)), attn_mask=torch.from_numpy(bias.astype(np.float32)),
        enable_gqa=True).numpy()
    assert_close(ours, theirs.astype(np.float64), "sdpa", np.float32, scale=4.0)


def test_window_blocks_are_never_visited():
    """A 256-key window over 8192 keys: the units visit ~1/20 of the blocks of
    the full attention (32-row panels widen each unit's range by 31 keys)."""
    q = np.ones((1, 8, 8192, 64), np.float32)
    full = assert_plan(SDPA, q, q, q)["key_blocks"]
    causal = assert_plan(SDPA, q, q, q, is_causal=True)["key_blocks"]
    window = assert_plan(SDPA, q, q, q, is_causal=True, window=(255, 0))["key_blocks"]
    assert causal < 0.52 * full
    assert window < full / 20, (window, full)
    decode = assert_plan(SDPA, q[:, :, :1], q, q, is_causal="bottom_right", window=(255, 0))
    assert decode["key_blocks"] <= 8 * 2        # 8 heads x the blocks covering 256 keys


@pytest.mark.parametrize("kw", [dict(), dict(is_causal=True), dict(is_causal="bottom_right"),
                                dict(window=(3, 1)), dict(sinks=np.ones(4)),
                                dict(alibi_slopes=SLOPES, is_causal="bottom_right")])
def test_packed_variable_length_batches(isa, dtype, kw):
    rng = np.random.default_rng(13)
    cq, ck = np.array([0, 3, 3, 10, 11]), np.array([0, 20, 25, 40, 41])
    q = rng.standard_normal((4, 11, 8)).astype(dtype)
    k, v = (rng.standard_normal((2, 41, 8)).astype(dtype) for _ in range(2))
    out, lse = SDPA(q, k, v, enable_gqa=True, cu_seqlens_q=cq, cu_seqlens_k=ck, return_lse=True, **kw)
    assert out.shape == (4, 11, 8) and lse.shape == (4, 11)
    for b in range(4):
        a, z, c, e = cq[b], cq[b + 1], ck[b], ck[b + 1]
        one, one_lse = SDPA(q[:, a:z], k[:, c:e], v[:, c:e], enable_gqa=True, return_lse=True, **kw)
        assert_close(out[:, a:z], one, "sdpa", dtype)
        np.testing.assert_array_equal(np.isneginf(lse[:, a:z]), np.isneginf(one_lse))
    ref = R.scaled_dot_product_attention(q, k, v, enable_gqa=True, cu_seqlens_q=cq, cu_seqlens_k=ck, **kw)
    assert_close(out, ref, "sdpa", dtype)


@pytest.mark.parametrize("Lq,Lk,window", [(40, 16, (None, 17)), (40, 16, (None, 30)), (5, 1, (None, 2)),
                                           (9, 2, (5, 3)), (40, 16, (2, 55)), (40, 16, (None, 56))])
def test_window_right_bound_past_lk(isa, Lq, Lk, window):
    """With more queries than keys the first rows' positions p_i = i + Lk - Lq
    are negative: a right bound past Lk still hides keys from them (and rows
    whose window holds no key give zeros, lse -inf)."""
    rng = np.random.default_rng(Lq + Lk)
    q, k, v = data(rng, np.float64, Lq=Lq, Lk=Lk)
    out, lse = SDPA(q, k, v, enable_gqa=True, window=window, return_lse=True)
    want = formula(q, k, v, window=window)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)
    p = np.arange(Lq) + Lk - Lq
    blind = p + window[1] < 0
    assert blind.any() == (window[1] < Lq - Lk)
    assert np.isneginf(lse[..., blind]).all() and np.isfinite(lse[..., ~blind]).all()
    ref = R.scaled_dot_product_attention(q, k, v, enable_gqa=True, window=window)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_packed_dropout_matches_the_reference(isa):
    """Dropout in packed batches numbers sequence b's weights as batch element
    b of (longest Lq, longest Lk) (numerics.md (9)); the reference does the
    same, so that every sequence draws its own pattern."""
    rng = np.random.default_rng(3)
    cq, ck = np.array([0, 3, 6, 11]), np.array([0, 3, 9, 11])
    q = rng.standard_normal((2, 11, 4))
    k, v = rng.standard_normal((2, 11, 4)), rng.standard_normal((2, 11, 3))
    kw = dict(cu_seqlens_q=cq, cu_seqlens_k=ck, dropout_p=0.5, seed=123)
    out = SDPA(q, k, v, **kw)
    np.testing.assert_allclose(out, R.scaled_dot_product_attention(q, k, v, **kw), rtol=0, atol=1e-12)


def test_packed_batches_skip_padding():
    """Packed sequences of very different lengths do the work of their own
    lengths, not of the longest one padded."""
    cq = np.array([0, 4096, 4096 + 64])
    q = np.ones((4, 4096 + 64, 32), np.float32)
    packed = assert_plan(SDPA, q, q, q, cu_seqlens_q=cq, cu_seqlens_k=cq, is_causal=True)
    dense = assert_plan(SDPA, q[:, :4096], q[:, :4096], q[:, :4096], is_causal=True)
    assert packed["key_blocks"] <= dense["key_blocks"] * 1.02


@pytest.mark.parametrize("bad,words", [
    (dict(window=5), ["pair", "window=(5, 0)"]),
    (dict(window=(-2, 0)), ["window left"]),
    (dict(softcap=0.0), ["softcap"]),
    (dict(softcap=np.inf), ["softcap", "softcap=None"]),
    (dict(softcap=3e38), ["softcap must be below 2.36e+38 for float32"]),
    (dict(softcap=2e38, scale=1e-3), ["|scale| / softcap = 5e-42", "softcap=None"]),
    (dict(alibi_slopes=np.ones(3)), ["alibi_slopes", "(3,)"]),
    (dict(sinks=np.ones((2, 4))), ["sinks"]),
    # (a sink of +inf, or one whose log2 overflows, gave NaN rows)
    (dict(sinks=np.array([0, np.inf, 0, 0], np.float32)), ["sinks must be below 2.36e+38 for float32",
                                                           "-inf is no sink", "got inf"]),
    (dict(sinks=np.float32(3e38)), ["sinks must be below 2.36e+38"]),
    (dict(cu_seqlens_q=np.array([0, 5]), cu_seqlens_k=None), ["together"]),
])
def test_variant_errors(bad, words):
    q = k = v = np.ones((1, 4, 5, 8), np.float32)
    with pytest.raises((ValueError, TypeError)) as info:
        SDPA(q, k, v, **bad)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_sinks_at_the_range_edges():
    """A sink just below the limit takes every row's weight (zeros, lse =
    sink); -inf and sinks whose exp underflow are no sink; NaN is refused."""
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((1, 2, 3, 8), dtype=np.float32), rng.standard_normal((1, 2, 5, 8), dtype=np.float32)
    plain, plain_lse = SDPA(q, k, k, return_lse=True)
    out, lse = SDPA(q, k, k, sinks=np.float32(2e38), return_lse=True)
    assert not out.any() and np.all(lse == np.float32(2e38))
    for no_sink in (-np.inf, -3e38):
        out, lse = SDPA(q, k, k, sinks=np.float32(no_sink), return_lse=True)
        assert np.array_equal(out, plain) and np.array_equal(lse, plain_lse)


def test_nan_sinks_are_refused():
    """A NaN sink is a ValueError naming the heads, before any kernel runs.
    It made its head's rows NaN, but a row with no visible key came out
    zeros or NaN depending on the path (rows path NaN, panel path with a
    mask read as lengths zeros)."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((1, 2, 16, 8), dtype=np.float32)
    k = rng.standard_normal((1, 2, 4, 8), dtype=np.float32)
    for sinks, heads in ((np.array([np.nan, 0], np.float32), "[0]"), (np.float32(np.nan), "[0, 1]"),
                         (np.array([0, np.nan]), "[1]")):
        for hide in (dict(valid_lens=np.array([0])), dict(attn_mask=np.zeros((16, 4), bool))):
            with pytest.raises(ValueError, match=rf"sinks hold NaN \(heads \{heads[:-1]}\]\)") as info:
                SDPA(q, k, k, sinks=sinks, **hide)
            assert "-inf for no sink" in str(info.value)


def test_16bit_sinks_and_slopes_are_read_as_their_values():
    """bfloat16 (and float16) sinks and ALiBi slopes, as a bfloat16 model
    holds them, give the bits of their float32 values (bfloat16 was refused
    as "not a float array")."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(4)
    q, k = rng.standard_normal((1, 4, 3, 8), dtype=np.float32), rng.standard_normal((1, 4, 6, 8), dtype=np.float32)
    sinks, slopes = rng.standard_normal(4), rng.random(4)
    for half in (ml_dtypes.bfloat16, np.float16):
        s16, a16 = sinks.astype(half), slopes.astype(half)
        got = SDPA(q, k, k, sinks=s16, alibi_slopes=a16, is_causal=True)
        want = SDPA(q, k, k, sinks=s16.astype(np.float32), alibi_slopes=a16.astype(np.float32), is_causal=True)
        assert np.array_equal(got, want)


def test_varlen_errors():
    q = np.ones((2, 10, 8), np.float32)
    cu = np.array([0, 4, 10])
    with pytest.raises(ValueError, match="attn_mask is not supported with cu_seqlens"):
        SDPA(q, q, q, cu_seqlens_q=cu, cu_seqlens_k=cu, attn_mask=np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="end at the packed length 10"):
        SDPA(q, q, q, cu_seqlens_q=np.array([0, 4, 9]), cu_seqlens_k=cu)
    with pytest.raises(ValueError, match="packed"):
        SDPA(q[None], q[None], q[None], cu_seqlens_q=cu, cu_seqlens_k=cu)
    with pytest.raises(ValueError, match=r"at least two sequence offsets .* got shape \(1,\)"):
        SDPA(q, q, q, cu_seqlens_q=np.array([0]), cu_seqlens_k=cu)
    with pytest.raises(TypeError, match="int array of sequence offsets.*float64"):
        SDPA(q, q, q, cu_seqlens_q=cu.astype(float), cu_seqlens_k=cu)
    # uint64 offsets past int64 are named as given (not wrapped to negative numbers)
    with pytest.raises(ValueError, match=f"offsets up to {2**63 + 1}"):
        SDPA(q, q, q, cu_seqlens_q=np.array([0, 2**63 + 1, 10], np.uint64), cu_seqlens_k=cu)


def test_variant_arrays_border_guard_pages(isa):
    rng = np.random.default_rng(17)
    for where in ("end", "start"):
        q, k, v = (guarded_copy(x, where) for x in data(rng, np.float32, Lq=5, Lk=130))
        slopes = guarded_copy(SLOPES.astype(np.float32), where)
        sinks = guarded_copy(np.ones(4, np.float32), where)
        with guarded_allocations(), every_kernel_array_guarded():   # (sinks and slopes reach it)
            out, lse = SDPA(q, k, v, enable_gqa=True, alibi_slopes=slopes, sinks=sinks, window=(20, 2),
                            softcap=2.0, return_lse=True)
        ref = R.scaled_dot_product_attention(q, k, v, enable_gqa=True, alibi_slopes=slopes, sinks=sinks,
                                             window=(20, 2), softcap=2.0)
        assert_close(out, ref, "sdpa", np.float32, scale=4.0)


@pytest.mark.parametrize("storage", ["float32", "int8"])
def test_kv_cache_decoding_with_variants(storage):
    rng = np.random.default_rng(19)
    k, v = (rng.standard_normal((1, 2, 900, 16)).astype(np.float32) for _ in range(2))
    cache = attncore.KVCache(900, 2, 16, dtype=storage)
    cache.append(k, v)
    q = rng.standard_normal((1, 4, 1, 16)).astype(np.float32)
    kw = dict(window=(127, 0), sinks=np.array([1.0, 0.0, -1.0, 2.0]), softcap=4.0)
    out = cache.attend(q, **kw)
    ref = formula(q, cache.keys, cache.values, window=(127, 0), sinks=kw["sinks"], softcap=4.0)
    assert_close(out, ref, "sdpa", np.float32, scale=4.0)


@pytest.mark.parametrize("path", ["panel", "rows"])
@pytest.mark.parametrize("cap", [1.0, 50.0, 1e4, 1e8])
def test_softcap_is_accurate_relative_to_the_capped_score(isa, dtype, path, cap):
    """cap tanh(s / cap) with a relative error bound (vmath.h), also for
    scores far below the cap (Gemma 2's 50, and huge caps where the capped
    score is s itself): each row has one key, so its lse is its capped
    score. The additive family's tanh, accurate to 4e-7 absolute, moved a
    capped score by up to cap x 4e-7 and rounded scores below about
    cap x 1e-9 to 0 (uniform weights)."""
    mags = np.logspace(-9, 1.5, 600)
    t = np.concatenate([mags, -mags, [0.0]])        # s / cap
    s = (t * cap).astype(dtype)
    n = s.size
    one = np.ones((1, 1, 1, 1), dtype)
    if path == "panel":   # one head, a row per score
        q, k, v = s.reshape(1, 1, n, 1), one, one
    else:                 # a head per score, one query row each
        q, k, v = s.reshape(1, n, 1, 1), np.ones((1, n, 1, 1), dtype), np.ones((1, n, 1, 1), dtype)
    kw = dict(scale=1.0, softcap=cap, return_lse=True)
    assert_plan(SDPA, q, k, v, path=path, **kw)
    out, lse = SDPA(q, k, v, **kw)
    exact = cap * np.tanh(s.astype(np.float64) / cap)
    got = lse.ravel().astype(np.float64)
    ulps = 12 if dtype == np.float32 else 24   # tanh, and the lse's own roundings
    eps = np.finfo(dtype).eps / 2
    rel = np.abs(got - exact) / np.where(exact == 0, 1, np.abs(exact))
    assert rel.max() <= ulps * eps, f"relative error {rel.max():.3g} at s = {s[rel.argmax()]:.3g}"
    assert got[-1] == 0


@pytest.mark.parametrize("shape", [(), (1,)])
def test_one_sink_for_every_head(shape):
    """sinks of shape () or (1,) broadcast to every head: the same as Hq equal
    values (the kernel reads Hq values; until session 19 it read past a
    one-element array: wrong numbers, or a fault at a page end), on the SDPA
    and the KVCache.attend paths, the array right before an unreadable page."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 4, 3, 8)).astype(np.float32)
    k = rng.standard_normal((1, 4, 5, 8)).astype(np.float32)
    v = rng.standard_normal((1, 4, 5, 8)).astype(np.float32)
    one = guarded_copy(np.full(shape, 1.5, np.float32))
    want = attncore.scaled_dot_product_attention(q, k, v, sinks=np.full(4, 1.5, np.float32))
    np.testing.assert_allclose(want, formula(q, k, v, sinks=np.full(4, 1.5)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(attncore.scaled_dot_product_attention(q, k, v, sinks=one), want)
    cache = attncore.KVCache(max_len=8, num_heads=4, head_dim=8)
    cache.append(k, v)
    np.testing.assert_array_equal(cache.attend(q, sinks=one, is_causal=False),
                                  cache.attend(q, sinks=np.full(4, 1.5, np.float32), is_causal=False))


def test_the_kernel_reads_its_own_copy_of_cu_seqlens(monkeypatch):
    """The packed rows (the output's too) are addressed through cu_seqlens:
    the kernel gets a copy of the checked offsets, never the caller's array
    (another thread changing it after the check made the kernel write out of
    bounds: a concurrency fuzzer's segfault)."""
    from attncore import _core
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 9, 8), dtype=np.float32)
    cq = np.array([0, 4, 9], np.int64)
    handed = []

    def arrays(x):
        if isinstance(x, np.ndarray):
            yield x
        elif isinstance(x, (tuple, list)):
            for y in x:
                yield from arrays(y)
        elif isinstance(x, dict):
            for y in x.values():
                yield from arrays(y)

    real = _core.sdpa

    def spy(*args, **kwargs):
        handed.extend(arrays((args, kwargs)))
        return real(*args, **kwargs)
    monkeypatch.setattr(_core, "sdpa", spy)
    out = SDPA(q, q, q, cu_seqlens_q=cq, cu_seqlens_k=cq, is_causal=True)
    assert handed and not any(np.shares_memory(a, cq) for a in handed)
    want = np.concatenate([SDPA(q[:, a:b], q[:, a:b], q[:, a:b], is_causal=True) for a, b in [(0, 4), (4, 9)]], 1)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
