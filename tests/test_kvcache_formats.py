"""KVCache in compact storage -- bfloat16, float16, int8 with per-(batch, head,
position) scales -- read directly by the decode kernels: against the float64
formula on the cache's own (rounded or quantized) values, within the error
docs/numerics.md (10) states against a float32 cache, on every level and
both paths, and MultiHeadAttention decoding through it."""
import re
import sys

import numpy as np
import pytest

import attncore
from attncore import _core
from attncore._engine import plan_info
from attncore.kvcache import from_bfloat16_bits, quantize_int8, to_bfloat16_bits

from _guard import every_kernel_array_guarded, guarded_allocations, guarded_copy
from _oracle import sdpa_numpy

FORMATS = ["float32", "bfloat16", "float16", "int8"]


def storage_error(x, storage):
    """docs/numerics.md (10): how far a stored element may be from x."""
    x = np.abs(np.asarray(x, np.float64))
    if storage == "bfloat16":
        return x * 2.0**-9
    if storage == "float16":
        return x * 2.0**-11 + 2.0**-25           # (subnormals: half an ulp of 2^-24)
    if storage == "int8":
        return np.broadcast_to(x.max(-1, keepdims=True) / 254, x.shape)
    return np.zeros_like(x)


def cache_bound(q, k, v, storage, scale):
    """(10): |out - out over a float32 cache| <= 2 eps_s V + eps_v per row,
    eps_s = |scale| max_j sum_d |q_d| |dk_jd|, eps_v = max |dv|, plus the
    float32 computation's own rounding (1) on both sides."""
    dk, dv = storage_error(k, storage), storage_error(v, storage)
    G = q.shape[1] // k.shape[1]
    dk, dv = np.repeat(dk, G, axis=1), np.repeat(dv, G, axis=1)
    V = np.repeat(np.abs(v), G, axis=1).max(axis=(-1, -2))[..., None]
    eps_s = abs(scale) * (np.abs(q.astype(np.float64)) @ np.swapaxes(dk, -1, -2)).max(-1)
    eps_v = dv.max(axis=(-1, -2))[..., None]
    return 2 * eps_s * V + eps_v + 2e-5 * V


def int16_qmax(D):
    """docs/numerics.md (10): the int16 range a query row is rounded to."""
    return min(32767, (2**31 - 1) // (128 * D))


# the keys whose weights are rounded to int16 together (csrc/kernels/i8dot.h
# I8DOT_PV_SUB), whatever the level's key block (avx2's is 512: two of them)
WEIGHT_BLOCK = 256


def integer_bound(q, kd, vd, scale, key_block=WEIGHT_BLOCK):
    """(10) on the integer levels (plan int8_integer): |out - the formula on the stored
    values| <= 2 eps_q V + eps_p per row, eps_q = |scale| max|q| / (2 QMAX)
    max_j sum_d |k_jd| (the int16 query), eps_p = key_block / 65534 V (the
    int16 weights, rounded per WEIGHT_BLOCK keys), V = max |v|, plus the float32
    rounding (1)."""
    G = q.shape[1] // kd.shape[1]
    k1 = np.repeat(np.abs(kd).sum(-1).max(-1), G, axis=1)[..., None]            # (B, Hq, 1)
    V = np.repeat(np.abs(vd).max(axis=(-1, -2)), G, axis=1)[..., None]
    eps_q = abs(scale) * np.abs(q.astype(np.float64)).max(-1) / (2 * int16_qmax(q.shape[-1])) * k1
    return 2 * eps_q * V + key_block / 65534 * V + 2e-5 * V + 2e-5


def stored_values_error_ok(out, q, cache, ref, scale, rtol):
    """out against the formula on the stored values: within rtol (1), or on a
    plan with int8_integer within integer_bound as well."""
    plan = plan_info(cache.attend, q)
    if not plan["int8_integer"]:
        np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol)
        return
    kd, vd = decoded(cache)
    bound = integer_bound(q, kd, vd, scale)
    assert (np.abs(out - ref).max(-1) <= bound).all(), np.max(np.abs(out - ref).max(-1) / bound)


def decoded(cache):
    return cache.keys.astype(np.float64), cache.values.astype(np.float64)


@pytest.mark.parametrize("storage", FORMATS)
@pytest.mark.parametrize("shape", [(1, 8, 2, 1, 3000, 128), (2, 4, 4, 3, 700, 64), (1, 2, 1, 40, 300, 17)])
def test_attend_matches_the_formula_on_the_stored_values(isa, storage, shape):
    """The kernels compute attention over exactly what the cache holds (the
    rounding / quantization is the only difference from float32): split
    decode rows, rows (one-row panels on the portable level), and the panel
    path (widened chunks for the compact formats), with the query, the
    storage and the scales bordering guard pages."""
    B, Hq, Hkv, Lq, Lk, D = shape
    rng = np.random.default_rng(Lk)
    k = rng.standard_normal((B, Hkv, Lk, D), dtype=np.float32)
    v = rng.standard_normal((B, Hkv, Lk, D), dtype=np.float32)
    q = guarded_copy(rng.standard_normal((B, Hq, Lq, D), dtype=np.float32), "end" if Lq % 2 else "start")
    with guarded_allocations():      # the storage (and scales) border guard pages
        cache = attncore.KVCache(Lk, Hkv, D, dtype=storage)
        cache.append(k, v)
        with every_kernel_array_guarded():
            out = cache.attend(q)
    plan = plan_info(cache.attend, q)
    # (the portable level has no rows kernels: its decode runs one-row panels)
    rows = "panel" if isa == "portable" else "rows"
    want = {3000: (rows, True, False), 700: (rows, False, False),
            300: ("panel", False, storage != "float32")}[Lk]
    assert (plan["path"], plan["chunks"] > 1, plan["widened_chunks"]) == want, plan
    kd, vd = decoded(cache)
    ref = sdpa_numpy(q, kd, vd, causal_offset=Lk - Lq)[0]
    stored_values_error_ok(out, q, cache, ref, 1 / np.sqrt(D), rtol=2e-5)
    f32 = attncore.scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal="bottom_right")
    bound = cache_bound(q, k, v, storage, 1 / np.sqrt(D))
    plan = plan_info(cache.attend, q)
    if plan["int8_integer"]:     # (10)'s int16 query and weights on top
        bound = bound + integer_bound(q, kd, vd, 1 / np.sqrt(D))
    assert (np.abs(out - f32).max(-1) <= bound).all(), np.max(np.abs(out - f32).max(-1) / bound)


@pytest.mark.parametrize("storage", FORMATS)
def test_decode_value_tiles_across_sub_blocks_and_column_chunks(isa, storage):
    """Decode's P V (pv_rows) walks key sub-blocks of at most 32 rows inside
    each 256-key block and value columns in chunks of 6 register tiles (AVX2:
    144 columns), pausing each tile's sums between sub-blocks: cache lengths
    that end inside, at and just past a sub-block, head sizes at and around
    the tile and chunk widths of every level, and 1 to 8 query rows per kv
    head up to the level's rows-path limit (row groups of 4 and their
    remainders), against the formula on the stored values, with the storage
    bordering guard pages."""
    rng = np.random.default_rng(32)
    lengths = [1, 31, 32, 33, 257, 300]
    probe = attncore.KVCache(4, 1, 4, dtype=storage)
    probe.append(np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 1, 4, 4), np.float32))
    rows_max = plan_info(probe.attend, np.zeros((1, 1, 1, 4), np.float32))["rows_per_unit"]
    for n, D in enumerate([1, 7, 23, 24, 25, 64, 143, 144, 145, 152, 200, 290]):
        G, Lk = 1 + n % rows_max, lengths[n % len(lengths)]
        k = rng.standard_normal((1, 2, Lk, D), dtype=np.float32)
        v = rng.standard_normal((1, 2, Lk, D), dtype=np.float32)
        q = rng.standard_normal((1, 2 * G, 1, D), dtype=np.float32)
        with guarded_allocations():
            cache = attncore.KVCache(Lk, 2, D, dtype=storage)
            cache.append(k, v)
            out = cache.attend(q)
        assert plan_info(cache.attend, q)["path"] == "rows"
        kd, vd = decoded(cache)
        ref = sdpa_numpy(q, kd, vd, causal_offset=Lk - 1)[0]
        stored_values_error_ok(out, q, cache, ref, 1 / np.sqrt(D), rtol=2e-5)


@pytest.mark.parametrize("storage", FORMATS + ["float64"])
@pytest.mark.parametrize("Lq, is_causal", [(1, "bottom_right"), (3, "bottom_right"), (3, False)])
def test_attend_fast_path_is_the_general_path_bitwise(storage, Lq, is_causal, monkeypatch):
    """KVCache.attend's common call (no mask, dropout or extra outputs) takes
    _core.kv_attend_fast, which reads the first len(cache) positions of
    buffers with spare capacity; it gives the general path's result bit for
    bit (the same kernel entry and descriptor), which the formula checks."""
    reached = []
    fast = _core.kv_attend_fast
    monkeypatch.setattr(_core, "kv_attend_fast",
                        lambda *a: reached.append(fast(*a)) or reached[-1])
    dt = np.float64 if storage == "float64" else np.float32
    rng = np.random.default_rng(Lq)
    cache = attncore.KVCache(50, 2, 20, dtype=storage)
    for n in (30, 7):       # 37 of 50 positions used
        cache.append(*(rng.standard_normal((2, 2, n, 20)).astype(dt) for _ in range(2)))
    q = rng.standard_normal((2, 6, Lq, 20)).astype(dt)
    out = cache.attend(q, is_causal=is_causal)
    assert len(reached) == 1 and reached[0] is out
    general, _ = cache.attend(q, is_causal=is_causal, return_lse=True)
    assert len(reached) == 1
    np.testing.assert_array_equal(out, general)
    kd, vd = decoded(cache)
    ref = sdpa_numpy(q, kd, vd, causal_offset=37 - Lq if is_causal else None)[0]
    stored_values_error_ok(out, q, cache, ref, 1 / np.sqrt(20), rtol=1e-5)


def test_attend_fast_path_leaves_the_checks_to_the_general_path():
    """Calls the fast path does not take come out with the general path's errors."""
    cache = attncore.KVCache(8, 2, 4, dtype="int8")
    cache.append(np.ones((1, 2, 3, 4), np.float32), np.ones((1, 2, 3, 4), np.float32))
    with pytest.raises(TypeError, match="query has dtype float64; this cache takes float32"):
        cache.attend(np.ones((1, 2, 1, 4)))
    with pytest.raises(ValueError, match=r"query must have shape \(B=1, Hq \(a multiple of 2\)"):
        cache.attend(np.ones((1, 3, 1, 4), np.float32))
    with pytest.raises(ValueError, match="query must have shape"):
        cache.attend(np.ones((1, 2, 1, 5), np.float32))


@pytest.mark.parametrize("storage", ["bfloat16", "float16", "int8"])
def test_compact_storage_takes_its_own_kernel_entry(storage):
    """No decoded float copy is made: the plan runs on the storage entry, on
    the rows path (decode) and split over the keys."""
    rng = np.random.default_rng(0)
    cache = attncore.KVCache(4096, 2, 64, dtype=storage)
    cache.append(*(rng.standard_normal((1, 2, 4096, 64), dtype=np.float32) for _ in range(2)))
    assert cache._k.dtype == {"bfloat16": np.uint16, "float16": np.float16, "int8": np.int8}[storage]
    plan = plan_info(cache.attend, rng.standard_normal((1, 4, 1, 64), dtype=np.float32))
    assert plan["path"] == "rows" and plan["chunks"] > 1


def test_int8_quantization_rules():
    x = np.array([[1.0, -2.0, 0.5, 127.0], [0.0, 0.0, 0.0, 0.0], [1.0, np.nan, 0.0, 1.0]], np.float32)
    q, s = quantize_int8(x)
    assert q.dtype == np.int8 and s.dtype == np.float32
    np.testing.assert_array_equal(q[0], [1, -2, 0, 127])   # max 127 -> scale 1, 0.5 rounds to even
    assert s[1] == 0.0 and (q[1] == 0).all()
    assert np.isnan(s[2]) and (q[2] == 0).all()
    xs = np.random.default_rng(1).standard_normal((100, 64)).astype(np.float32)
    q, s = quantize_int8(xs)
    assert np.abs(q * s[:, None] - xs).max() <= (np.abs(xs).max(1) / 254 * 1.0001).max()


def test_int8_stored_values_keep_the_bound_with_every_rounding():
    """numerics.md (10): a decoded int8 element is within
    (1 + u) max_row |x| / 254 + 2u |x| of x. The second u: x / scale is
    rounded to float32 before the integer (a numerics fuzzer found x whose
    exact quotient 80.50000345 rounds to 80.5, then to the even 80: 1.0000055
    times the bound that counted u |x| once)."""
    u = 2.0 ** -24
    rng = np.random.default_rng(8)
    rows = (rng.standard_normal((512, 64)) * np.exp(rng.uniform(-40, 40, (512, 1)))).astype(np.float32)
    rows[0, :2] = [1.6057997260897516e-18, 1.017849466059257e-18]   # the fuzzer's row
    rows[0, 2:] = 0
    cache = attncore.KVCache(len(rows), 1, 64, dtype="int8")
    cache.append(rows[None, None], rows[None, None])
    x = rows.astype(np.float64)
    for stored in (cache.keys, cache.values):
        err = np.abs(np.asarray(stored[0, 0], np.float64) - x)   # (exact: float32 values)
        bound = (1 + u) * np.abs(x).max(1, keepdims=True) / 254 + 2 * u * np.abs(x)
        assert (err <= bound).all(), (err / bound).max()
        assert err[0, 1] > x[0, 0] / 254 + u * x[0, 1]   # past the bound that counted u |x| once


@pytest.mark.parametrize("top", [1e-30, 1e-36, 1e-38, 1e-40, 1e-42, 1e-44, 1e-45])
def test_int8_rows_of_tiny_values_keep_the_absolute_bound(top):
    """numerics.md (10): |x - q scale| <= max_row |x| / 254 + 127 * 2^-150. The
    second term is float32's: once max |x| / 127 is subnormal (max |x| below
    1.5e-36) the scale has few bits, and below 127 * 2^-150 it is 0 (a row
    of zeros, each stored value off by less than that term)."""
    rng = np.random.default_rng(7)
    x = (rng.uniform(-1, 1, (200, 16)) * top).astype(np.float32)
    x[:, 0] = np.float32(top)   # the rows' largest magnitude
    q, s = quantize_int8(x)
    err = np.abs(q.astype(np.float64) * s.astype(np.float64)[:, None] - x.astype(np.float64))
    bound = np.abs(x.astype(np.float64)).max(1, keepdims=True) / 254 * (1 + 1e-6) + 127 * 2.0**-150
    assert (err <= bound).all(), (err / bound).max()
    if top >= 1.5e-36:   # a normal scale: the relative bound alone
        assert (err <= np.abs(x.astype(np.float64)).max(1, keepdims=True) / 254 * (1 + 1e-6)).all()


def test_bfloat16_bits_round_to_nearest_even():
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -0.0, np.inf, -np.inf, 3.4e38, np.nan], np.float32)
    back = from_bfloat16_bits(to_bfloat16_bits(x))
    np.testing.assert_array_equal(back[:7], [1.0, 1.0, 1.0 + 2**-6, -0.0, np.inf, -np.inf, np.inf])
    assert np.isnan(back[7])
    ml_dtypes = pytest.importorskip("ml_dtypes")
    y = np.random.default_rng(2).standard_normal(1000).astype(np.float32) * 1e3
    np.testing.assert_array_equal(from_bfloat16_bits(to_bfloat16_bits(y)),
                                  y.astype(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize("storage", FORMATS)
def test_multihead_attention_decodes_through_compact_caches(storage):
    m = attncore.MultiHeadAttention(64, 8, num_kv_heads=2, seed=0).eval()
    x = np.random.default_rng(3).standard_normal((2, 12, 64)).astype(np.float32)
    full, _ = m(x, is_causal=True, need_weights=False)
    cache = attncore.KVCache(12, 2, 8, dtype=storage)
    steps = [m(x[:, :5], kv_cache=cache, need_weights=False)[0]]
    steps += [m(x[:, t:t + 1], kv_cache=cache, need_weights=False)[0] for t in range(5, 12)]
    got = np.concatenate(steps, axis=1)
    tol = {"float32": 1e-5, "float16": 3e-3, "bfloat16": 3e-2, "int8": 3e-2}[storage]
    np.testing.assert_allclose(got, full, atol=tol * np.abs(full).max())


def test_cache_errors():
    cache = attncore.KVCache(4, 1, 2, dtype="int8")
    # (a new cache is attention over no key: zeros, test_attend_on_an_empty_cache_...)
    assert not cache.attend(np.ones((1, 1, 1, 2), np.float32)).any()
    with pytest.raises(TypeError, match="float32"):
        cache.append(np.ones((1, 1, 1, 2)), np.ones((1, 1, 1, 2)))
    with pytest.raises(TypeError, match="'int8'"):
        attncore.KVCache(4, 1, 2, dtype="int4")
    cache.append(np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="multiple of 1"):
        cache.attend(np.ones((1, 1, 1, 3), np.float32))
    assert _core.IO_F32_KVI8 == 6


@pytest.mark.parametrize("storage", ["float32", "int8"])
def test_select_batch_then_reset_takes_any_batch(storage):
    """Beam expansion changes the cache's batch; after reset() an empty cache
    takes a batch of any size again (and truncate/select_batch check their
    arguments)."""
    cache = attncore.KVCache(4, 1, 2, dtype=storage)
    kv = np.arange(4, dtype=np.float32).reshape(2, 1, 1, 2)
    cache.append(kv, kv)
    cache.select_batch([0, 0, 1, 1])
    assert cache.batch == 4 and len(cache) == 1
    np.testing.assert_allclose(cache.keys[:, 0, 0, 0], [0, 0, 2, 2], rtol=0.01)
    with pytest.raises(ValueError, match="batch size 2 differs from the cache's 4"):
        cache.append(kv, kv)
    cache.reset()
    cache.append(kv, kv)
    assert cache.batch == 2 and len(cache) == 1
    with pytest.raises(TypeError, match="indices must be integers"):
        cache.select_batch([0.5])
    with pytest.raises(ValueError, match="indices must be 1-D"):
        cache.select_batch([[0]])
    with pytest.raises(ValueError, match="non-empty selection of rows of a batch of 2"):
        cache.select_batch([2])
    with pytest.raises(ValueError, match="got an empty one"):
        cache.select_batch([])
    with pytest.raises(ValueError, match=r"length must be in \[0, len\(cache\)=1\]"):
        cache.truncate(2)
    cache.truncate(0)
    assert len(cache) == 0


@pytest.mark.parametrize("kwargs,err", [
    (dict(batch_size=-1), ValueError), (dict(batch_size=2.7), TypeError),
    (dict(batch_size="3"), TypeError), (dict(batch_size=True), TypeError),
    (dict(batch_size=0), ValueError), (dict(grow="no"), TypeError), (dict(grow=1), TypeError)])
def test_cache_constructor_checks_batch_size_and_grow(kwargs, err):
    with pytest.raises(err, match="KVCache: (batch_size must be a positive int|grow must be a bool)"):
        attncore.KVCache(4, 1, 2, **kwargs)


@pytest.mark.parametrize("grown", [False, True])
def test_attend_on_an_empty_cache_is_attention_over_no_key(grown, storage="float32"):
    """A cache holding no position (new, reset, truncated to 0) answers as
    SDPA over Lk = 0 keys -- zeros, lse -inf -- for a query of any batch
    size, whether reset() kept the buffers or dropped them (a grown
    cache's). Before, kept buffers answered zeros for the old batch size and
    an error for any other, dropped ones raised."""
    x = lambda B, T: np.ones((B, 1, T, 2), np.float32)
    for st in ("float32", "bfloat16", "int8"):
        cache = attncore.KVCache(4, 1, 2, grow=grown, dtype=st)
        for B in (3, 1):
            out, lse = cache.attend(x(B, 1), return_lse=True)
            assert out.shape == (B, 1, 1, 2) and not out.any() and (lse == -np.inf).all()
        cache.append(x(3, 6 if grown else 2), x(3, 6 if grown else 2))
        cache.reset()
        for B in (3, 1):
            out, lse = cache.attend(x(B, 2), return_lse=True)
            assert out.shape == (B, 1, 2, 2) and not out.any() and (lse == -np.inf).all()
        cache.append(x(1, 1), x(1, 1))
        cache.truncate(0)
        assert not cache.attend(x(2, 1)).any()
        cache.append(x(2, 1), x(2, 1))   # any batch size again
        np.testing.assert_array_equal(cache.attend(x(2, 1)), x(2, 1))
        with pytest.raises(ValueError, match=r"query must have shape \(B=2"):
            cache.attend(x(3, 1))


def test_modules_decode_an_empty_input_through_a_cache():
    """MultiHeadAttention with kv_cache= on an empty input (L = 0) appends
    nothing and attends over an empty cache: the same (B, 0, E) result as
    without a cache."""
    m = attncore.MultiHeadAttention(8, 2, batch_first=True)
    x = np.zeros((2, 0, 8), np.float32)
    want = m(x, x, x)[0]
    got = m(x, x, x, kv_cache=attncore.KVCache(16, 2, 4))[0]
    assert got.shape == want.shape == (2, 0, 8)


def test_a_refused_append_leaves_an_empty_cache_as_it_was():
    """An append past max_len into an empty cache of another batch size is
    refused before the buffers are replaced (it used to re-batch them first)."""
    cache = attncore.KVCache(4, 1, 2, batch_size=2)
    kv = np.ones((3, 1, 5, 2), np.float32)
    with pytest.raises(ValueError, match="KVCache is full: 0 \\+ 5 positions exceed max_len=4"):
        cache.append(kv, kv)
    assert cache.batch == 2 and len(cache) == 0


def test_a_growth_the_machine_refuses_leaves_an_empty_cache_as_it_was(monkeypatch):
    """A grow=True cache emptied by reset() takes a new batch size with the
    append that needs more than max_len: when that allocation is refused,
    the cache keeps its batch and buffers (it used to re-batch them at
    max_len first), and the message names the growth (a fuzzer's find)."""
    from attncore import _layout
    cache = attncore.KVCache(4, 1, 2, grow=True)
    kv = np.ones((2, 1, 3, 2), np.float32)
    cache.append(kv, kv)
    cache.reset()
    held = cache._k
    real = _layout.empty

    def refuse_large(shape, dtype):
        if shape[2] > 4:
            raise MemoryError
        return real(shape, dtype)

    monkeypatch.setattr(_layout, "empty", refuse_large)
    big = np.ones((3, 1, 9, 2), np.float32)
    with pytest.raises(MemoryError, match=r"16 positions x batch 3 .* the cache grows \(doubling "
                                          r"from max_len=4\) to hold 0 \+ the appended"):
        cache.append(big, big)
    assert cache.batch == 2 and len(cache) == 0 and cache._k is held
    monkeypatch.setattr(_layout, "empty", real)
    cache.append(big, big)   # (and the same append goes through once memory allows)
    assert cache.batch == 3 and len(cache) == 9 and cache.capacity == 16


@pytest.mark.parametrize("grown", [False, True])
def test_select_batch_on_an_empty_cache_is_refused_whatever_its_history(grown):
    """After reset() the batch is the next append's: select_batch says the cache
    is empty, whether reset() kept the buffers or dropped grown ones."""
    cache = attncore.KVCache(2, 1, 2, grow=True)
    kv = np.ones((2, 1, 3 if grown else 1, 2), np.float32)
    cache.append(kv, kv)
    cache.reset()
    with pytest.raises(ValueError, match="the cache is empty"):
        cache.select_batch([0])


@pytest.mark.parametrize("spelling,storage", [("f4", "float32"), ("half", "float16"),
                                              ("single", "float32"), (np.float64, "float64"),
                                              (np.int8, "int8"), ("bfloat16", "bfloat16")])
def test_dtype_spellings_numpy_takes(spelling, storage):
    assert attncore.KVCache(4, 1, 2, dtype=spelling).storage == storage


def test_an_allocation_the_machine_refuses_names_the_cache():
    """Lazily allocated buffers past the memory (but within the address space)
    raise a MemoryError naming the cache and the sizes, not NumPy's bare one."""
    cache = attncore.KVCache(max_len=2**40, num_heads=1, head_dim=8)
    kv = np.ones((1, 1, 1, 8), np.float32)
    try:
        cache.append(kv, kv)
    except MemoryError as e:
        assert re.search(r"KVCache: 1099511627776 positions x batch 1 .* use a smaller max_len",
                         str(e)), str(e)
        assert len(cache) == 0
    else:   # (vm.overcommit_memory=1 hands out 64 TiB of address space)
        pytest.skip("this machine's kernel allocates 64 TiB lazily (memory overcommit)")


@pytest.mark.parametrize("seed,err", [(-1, ValueError), ("x", TypeError), (1.5, TypeError)])
def test_a_bad_seed_is_refused_on_the_decode_fast_path_too(monkeypatch, seed, err):
    """Without dropout the seed draws nothing, but a bad one is refused on every
    path (KVCache.attend's fast path took anything; the general path refused)."""
    from attncore import kvcache
    cache = attncore.KVCache(8, 1, 4)
    kv = np.ones((1, 1, 3, 4), np.float32)
    cache.append(kv, kv)
    q = np.ones((1, 2, 1, 4), np.float32)
    served = []
    real = kvcache._core.kv_attend_fast
    monkeypatch.setattr(kvcache._core, "kv_attend_fast",
                        lambda *a: served.append(real(*a) is not None) or real(*a))
    cache.attend(q, seed=3)             # a good seed: this call is the fast path's
    assert served == [True]
    with pytest.raises(err, match="seed must be an int"):
        cache.attend(q, seed=seed)
    with pytest.raises(err, match="seed must be an int"):
        attncore.scaled_dot_product_attention(q, kv, kv, seed=seed)


def test_a_cache_shared_by_threads_stays_consistent():
    """Threads appending to and resetting one grow=True cache: every call
    runs under the cache's lock, so the length never passes the capacity
    and an attend afterwards reads the cache's own positions (unlocked, the
    length reached 10x the capacity and attend read past the buffers: a
    concurrency fuzzer's out-of-bounds read)."""
    import threading
    import time
    H, D = 4, 32
    kv = np.ones((1, H, 64, D), np.float32)
    q = np.ones((1, H, 1, D), np.float32)
    switch = sys.getswitchinterval()
    try:
        sys.setswitchinterval(1e-6)
        for _ in range(20):
            cache = attncore.KVCache(8, H, D, grow=True)
            stop = time.monotonic() + 0.05

            def appender():
                while time.monotonic() < stop:
                    cache.append(kv, kv)

            def resetter():
                while time.monotonic() < stop:
                    if len(cache) > 1024:
                        cache.reset()
                    time.sleep(0)
            threads = [threading.Thread(target=appender) for _ in range(3)] + [threading.Thread(target=resetter)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert 0 <= len(cache) <= cache.capacity, (len(cache), cache.capacity)
            cache.append(kv, kv)   # (a reset may have come last)
            out = cache.attend(q)
            assert np.array_equal(out, np.ones_like(out))
    finally:
        sys.setswitchinterval(switch)


def test_a_cache_survives_copy_and_pickle():
    """The lock is not copied: deepcopy and pickle give a working cache."""
    import copy
    import pickle
    cache = attncore.KVCache(8, 2, 4, dtype="int8")
    cache.append(np.ones((1, 2, 3, 4), np.float32), np.ones((1, 2, 3, 4), np.float32))
    q = np.ones((1, 2, 1, 4), np.float32)
    for other in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        assert len(other) == 3 and np.array_equal(other.attend(q), cache.attend(q))
        other.append(np.zeros((1, 2, 1, 4), np.float32), np.zeros((1, 2, 1, 4), np.float32))
        assert len(other) == 4 and len(cache) == 3


def test_the_kernel_entry_refuses_a_length_past_the_buffers():
    """kv_attend_fast checks the length it is given against the buffers (a
    cache left inconsistent read past them)."""
    from attncore import _core
    cache = attncore.KVCache(8, 2, 4)
    cache.append(np.ones((1, 2, 3, 4), np.float32), np.ones((1, 2, 3, 4), np.float32))
    q = np.ones((1, 2, 1, 4), np.float32)
    with pytest.raises(ValueError, match="9 cached positions, but its buffer holds 8"):
        _core.kv_attend_fast("KVCache.attend", q, cache._k, cache._v, None, None, 9, _core.IO_F32,
                             "bottom_right", None, None, attncore._config.active_isa())


def test_a_decode_step_holds_the_cache_for_its_whole_step():
    """MultiHeadAttention's decode step -- append, then attend -- holds the
    cache's lock throughout: another thread's append waits for the step's
    end (between the two, it was attended, or undone by the step's restore
    after an error: a review)."""
    import threading

    class Watched(attncore.KVCache):
        blocked = None

        def attend(self, *args, **kwargs):   # runs inside the step, after its append
            other = threading.Thread(target=lambda: self.append(*(np.ones((1, 2, 1, 4), np.float32),) * 2))
            other.start()
            other.join(timeout=0.3)
            Watched.blocked = other.is_alive()   # still waiting on the lock
            try:
                return super().attend(*args, **kwargs)
            finally:
                self._thread = other

    mha = attncore.MultiHeadAttention(8, 2, seed=0).eval()
    cache = Watched(8, 2, 4)
    x = np.ones((1, 1, 8), np.float32)
    mha(x, kv_cache=cache, need_weights=False)
    cache._thread.join()
    assert Watched.blocked and len(cache) == 2   # the step's position, then the other's
