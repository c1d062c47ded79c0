"""The int8 KV cache's decode kernels that multiply in integers (plan
int8_integer): query rows and weights rounded to int16, products exact in
int32 (csrc/kernels/i8dot.h; vpmaddwd on avx2 in csrc/arch/kern_avx2.c,
vpdpwssd on the VNNI levels in csrc/arch/kern_avx512vnni.c;
docs/numerics.md (10)). Each test asserts through the plan that it runs on
that path, on every such level this CPU runs; on CPUs with none they skip.

The two roundings are checked apart: the scores through the log-sum-exp
(which does not depend on the weights' rounding) against an exact model of
the int16 query, and the layout of P V (key pairs, column order, tails,
odd key counts) with inputs that make every weight exact."""
import numpy as np
import pytest

import attncore
from attncore import _config
from attncore._engine import plan_info

from _guard import guarded_allocations
from _oracle import sdpa_numpy
from test_kvcache_formats import decoded, integer_bound, int16_qmax

INTEGER_ISAS = [n for n in _config.supported_isas() if n in ("avx2", "avx512vnni", "avx512bf16", "amxbf16")]
pytestmark = pytest.mark.skipif(not INTEGER_ISAS, reason="no level with int8 integer products on this CPU")


@pytest.fixture(params=INTEGER_ISAS or ["none"])
def integer_isa(request):
    with _config.use_isa(request.param):
        yield request.param


def int8_cache(k, v):
    cache = attncore.KVCache(k.shape[2], k.shape[1], k.shape[3], dtype="int8")
    cache.append(k, v)
    return cache


def assert_integer_plan(cache, q):
    plan = plan_info(cache.attend, q)
    assert plan["path"] == "rows" and plan["int8_integer"], plan
    return plan


def model_lse(q, cache, scale):
    """log sum_j exp(scale s_j) with the kernel's scores: the query row
    rounded as quantize_rows does (float32 steps, nearest even), the
    integer dot product exact, then (float)sum * (qs * ks) in float32."""
    D = q.shape[-1]
    qmax = np.float32(int16_qmax(D))
    m = np.abs(q).max(-1, keepdims=True).astype(np.float32)
    inv = np.where(m > 0, qmax / np.where(m > 0, m, 1), 0).astype(np.float32)
    q16 = np.rint((q * inv).astype(np.float32)).astype(np.int64)
    qs = (m / qmax).astype(np.float32)
    G = q.shape[1] // cache.num_heads
    k8 = np.repeat(cache._k[:, :, :len(cache)].astype(np.int64), G, axis=1)
    ks = np.repeat(cache._ks[:, :, :len(cache)], G, axis=1)
    sums = (q16 @ np.swapaxes(k8, -1, -2)).astype(np.float32)          # exact: |sum| < 2^31
    s = (sums * (qs * ks[:, :, None, :]).astype(np.float32)).astype(np.float64)
    t = abs(scale) * s
    top = t.max(-1, keepdims=True)
    return (top + np.log(np.exp(t - top).sum(-1, keepdims=True)))[..., 0]


# (avx2 runs groups of 1-4 rows with a constant head size at D = 128 and
# 64: G = 4, 8, 1, 3, 2, 5 (4 + 1) at those sizes reach those arms, odd key
# counts their tail blocks; the other head sizes reach the general arm)
@pytest.mark.parametrize("Hkv, G, Lk, D", [(2, 4, 300, 128), (1, 8, 33, 64), (3, 1, 7, 20), (2, 3, 257, 33),
                                           (1, 5, 64, 1), (1, 4, 1000, 200), (2, 2, 5, 31), (2, 1, 301, 128),
                                           (1, 1, 77, 64), (1, 4, 45, 96), (1, 3, 129, 128), (2, 2, 65, 64),
                                           (1, 5, 31, 128), (1, 7, 90, 64), (1, 2, 33, 128)])
def test_scores_are_the_int16_query_model(integer_isa, Hkv, G, Lk, D):
    """The log-sum-exp equals the exact int16-query model to float32
    rounding; the same query in float32 is farther off than that, so the
    comparison sees the rounding (and would see a layout error)."""
    rng = np.random.default_rng(D * 1000 + Lk)
    k = rng.standard_normal((1, Hkv, Lk, D), dtype=np.float32) * 3
    v = rng.standard_normal((1, Hkv, Lk, D), dtype=np.float32)
    q = rng.standard_normal((1, Hkv * G, 1, D), dtype=np.float32) * 2
    with guarded_allocations():
        cache = int8_cache(k, v)
        assert_integer_plan(cache, q)
        _, lse = cache.attend(q, return_lse=True)
    scale = 1 / np.sqrt(D)
    want = model_lse(q, cache, scale)
    np.testing.assert_allclose(lse, want, rtol=1e-6, atol=2e-6)
    # the float32 query (no int16 rounding) misses in at least one row -- except
    # at D = 1, where the rounded row is exact (q = +-max|q|)
    kd, _ = decoded(cache)
    exact = np.log(np.exp(scale * (q.astype(np.float64) @ np.swapaxes(np.repeat(kd, G, 1), -1, -2))).sum(-1))
    assert D == 1 or np.abs(exact - want).max() > 4e-6


@pytest.mark.parametrize("G", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("Lk, D", [(1, 1), (2, 17), (3, 64), (31, 65), (256, 128), (257, 96), (700, 130)])
def test_weights_layout_is_exact_on_exact_weights(integer_isa, G, Lk, D):
    """q = 0: every weight is 1, and with every value row holding the same
    max |v| (127 after quantization, one scale) every int16 weight is 32767
    exactly: the output must be the plain mean of the stored values. Covers
    the key pairs (odd Lk: a last key without a partner), the unpacked
    column order and its restoration, partial column tiles (D % 64 on VNNI,
    D % 16 on avx2) and the row groups of four."""
    rng = np.random.default_rng(Lk * 7 + D)
    k = rng.standard_normal((1, 2, Lk, D), dtype=np.float32)
    v = rng.integers(-127, 128, size=(1, 2, Lk, D)).astype(np.float32) / 64
    v[..., rng.integers(0, D)] = 127 / 64          # every row's max |v|: one scale for all
    q = np.zeros((1, 2 * G, 1, D), np.float32)
    with guarded_allocations():
        cache = int8_cache(k, v)
        assert_integer_plan(cache, q)
        out = cache.attend(q)
    _, vd = decoded(cache)
    want = np.repeat(vd.mean(axis=2, keepdims=True), G, axis=1)
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("Hkv, G, Lq, Lk, D", [(2, 4, 1, 3000, 128), (1, 6, 1, 513, 40), (2, 1, 3, 100, 7),
                                               (1, 8, 1, 1, 64)])
def test_output_within_the_documented_bound(integer_isa, Hkv, G, Lq, Lk, D):
    """docs/numerics.md (10): within 2 eps_q V + eps_p of the formula on the
    stored values (float64)."""
    rng = np.random.default_rng(Lk + D)
    k = rng.standard_normal((1, Hkv, Lk, D), dtype=np.float32)
    v = rng.standard_normal((1, Hkv, Lk, D), dtype=np.float32)
    q = rng.standard_normal((1, Hkv * G, Lq, D), dtype=np.float32)
    with guarded_allocations():
        cache = int8_cache(k, v)
        assert_integer_plan(cache, q)
        out = cache.attend(q)
    kd, vd = decoded(cache)
    ref = sdpa_numpy(q, kd, vd, causal_offset=Lk - Lq)[0]
    bound = integer_bound(q, kd, vd, 1 / np.sqrt(D))
    assert (np.abs(out - ref).max(-1) <= bound).all()
    # and in practice far inside it: the weights' term is a worst case
    assert np.abs(out - ref).max() <= 2e-4 * np.abs(vd).max()


def test_each_256_keys_weights_are_rounded_against_their_own_largest(integer_isa):
    """avx2's key block is 512 keys, rounded to int16 as two sub-blocks of
    256 (the VNNI levels' blocks are 256): here the first 256 keys hold the
    row's largest weight (score 0) and the next 256 weights near e^-8.
    Rounded against the whole block's largest they would keep about 4 bits
    (the model below: 1.9e-4 off); against their own, the output is within
    float32 rounding. The one-hot query rounds to int16 exactly."""
    rng = np.random.default_rng(4)
    D, Lk = 16, 512
    k = rng.standard_normal((1, 1, Lk, D)).astype(np.float32) * 0.1
    k[0, 0, 0, 0] = 0.0
    k[0, 0, 1:256, 0] = -30.0
    k[0, 0, 256:, 0] = -8.0 + rng.uniform(-1, 1, 256).astype(np.float32)
    v = rng.standard_normal((1, 1, Lk, D)).astype(np.float32)
    q = np.zeros((1, 4, 1, D), np.float32)
    q[..., 0] = 1.0
    cache = int8_cache(k, v)
    plan = assert_integer_plan(cache, q)
    assert plan["key_block"] == (512 if integer_isa == "avx2" else 256)
    out = cache.attend(q, scale=1.0)
    kd, vd = decoded(cache)
    ref = sdpa_numpy(q, kd, vd, scale=1.0)[0]
    np.testing.assert_allclose(out, ref, rtol=0, atol=5e-6)
    # the model of one rounding over all 512 keys is far outside that
    w = np.exp(kd[0, 0, :, 0] - kd[0, 0, :, 0].max()) * cache._vs[0, 0]
    step = w.max() / 32767
    coarse = (np.round(w / step) * step) @ cache._v[0, 0].astype(np.float64) / np.exp(
        kd[0, 0, :, 0] - kd[0, 0, :, 0].max()).sum()
    assert np.abs(coarse - ref[0, 0, 0]).max() > 2e-5


@pytest.mark.parametrize("Lk", [512, 1300, 2048, 3000, 8192])
def test_the_longer_key_block_keeps_the_float32_caches_split(integer_isa, Lk):
    """avx2 reads the int8 cache in 512-key blocks only where 512 divides the
    key chunks that the level's own block (256) gives: the split -- how many
    units, how long -- is the float32 cache's, so no shape gets fewer or
    unequal units (Lk = 1300: two chunks of 768, not 1024 + 276)."""
    rng = np.random.default_rng(Lk)
    k = rng.standard_normal((1, 8, Lk, 32), dtype=np.float32)
    q = rng.standard_normal((1, 32, 1, 32), dtype=np.float32)
    plans = {}
    for storage in ("float32", "int8"):
        cache = attncore.KVCache(Lk, 8, 32, dtype=storage)
        cache.append(k, k)
        plans[storage] = plan_info(cache.attend, q)
    assert plans["int8"]["int8_integer"]
    for key in ("chunks", "chunk_len", "units"):
        assert plans["int8"][key] == plans["float32"][key], (key, plans)
    longer = integer_isa == "avx2" and plans["int8"]["chunk_len"] % 512 == 0
    assert plans["int8"]["key_block"] == (512 if longer else plans["float32"]["key_block"])
    if Lk in (2048, 8192) and integer_isa == "avx2":
        assert plans["int8"]["key_block"] == 512


def test_a_query_row_with_nan_or_inf_is_nan_and_leaves_its_group_alone(integer_isa):
    """A row holding a NaN or an infinity scores NaN (as its float32 scores
    would make its output NaN); the other rows of its GQA group are rounded
    on their own, so they come out bitwise as without it."""
    rng = np.random.default_rng(3)
    k, v = (rng.standard_normal((1, 1, 90, 32), dtype=np.float32) for _ in range(2))
    q = rng.standard_normal((1, 4, 1, 32), dtype=np.float32)
    cache = int8_cache(k, v)
    assert_integer_plan(cache, q)
    clean = cache.attend(q)
    for bad in (np.nan, np.inf, -np.inf):
        q2 = q.copy()
        q2[0, 1, 0, 5] = bad
        out = cache.attend(q2)
        assert np.isnan(out[0, 1]).all()
        np.testing.assert_array_equal(np.delete(out, 1, axis=1), np.delete(clean, 1, axis=1))


@pytest.mark.parametrize("mag", [0.0, 1e-39, 1e-30, 1e-10, 1e6])
def test_query_magnitudes_from_zero_to_huge(integer_isa, mag):
    """Zero, subnormal, tiny and large query rows (a subnormal or tiny row is
    scaled by 2^64 before its rounding): finite, within the bound."""
    rng = np.random.default_rng(5)
    k = rng.standard_normal((1, 1, 70, 16), dtype=np.float32)
    v = rng.standard_normal((1, 1, 70, 16), dtype=np.float32)
    q = (rng.standard_normal((1, 4, 1, 16)) * mag).astype(np.float32)
    cache = int8_cache(k, v)
    assert_integer_plan(cache, q)
    out = cache.attend(q)
    kd, vd = decoded(cache)
    ref = sdpa_numpy(q, kd, vd, causal_offset=69)[0]
    assert np.isfinite(out).all()
    bound = integer_bound(q, kd, vd, 0.25)
    assert (np.abs(out - ref).max(-1) <= bound).all()


def test_results_do_not_depend_on_the_thread_count(integer_isa):
    rng = np.random.default_rng(9)
    k, v = (rng.standard_normal((2, 4, 5000, 64), dtype=np.float32) for _ in range(2))
    q = rng.standard_normal((2, 16, 1, 64), dtype=np.float32)
    cache = int8_cache(k, v)
    assert_integer_plan(cache, q)
    outs = [cache.attend(q, num_threads=n) for n in (1, 2, 3)]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_other_levels_and_the_panel_path_do_not_take_it():
    """Only those levels' rows path: portable's and avx512's int8 decode and
    any prefill (panel path, K/V widened to float32) keep the float32
    products."""
    rng = np.random.default_rng(1)
    k, v = (rng.standard_normal((1, 2, 600, 64), dtype=np.float32) for _ in range(2))
    cache = int8_cache(k, v)
    decode = rng.standard_normal((1, 8, 1, 64), dtype=np.float32)
    prefill = rng.standard_normal((1, 8, 600, 64), dtype=np.float32)
    for name in _config.supported_isas():
        with _config.use_isa(name):
            assert plan_info(cache.attend, decode)["int8_integer"] == (name in INTEGER_ISAS)
            assert not plan_info(cache.attend, prefill)["int8_integer"]


def test_an_all_zero_value_row_does_not_coarsen_its_block(integer_isa):
    """An all-zero value row is stored with scale 0 (not 1), so it cannot set
    the block's int16 weight step: with q = 0 (equal weights) and small
    values, the output stays the exact mean (with scale 1 the zero row's
    weight would be the block's largest and round every other to 0)."""
    rng = np.random.default_rng(11)
    k = rng.standard_normal((1, 1, 40, 32), dtype=np.float32)
    v = rng.integers(-127, 128, size=(1, 1, 40, 32)).astype(np.float32) * 1e-6
    v[..., 3] = 127e-6                                   # one scale for every nonzero row
    v[0, 0, 17] = 0
    q = np.zeros((1, 4, 1, 32), np.float32)
    cache = int8_cache(k, v)
    assert cache._vs[0, 0, 17] == 0
    assert_integer_plan(cache, q)
    out = cache.attend(q)
    _, vd = decoded(cache)
    np.testing.assert_allclose(out, np.repeat(vd.mean(axis=2, keepdims=True), 4, axis=1), rtol=2e-6, atol=1e-12)


@pytest.mark.parametrize("mag", [1e-25, 1e-36, 1e-37, 1e-39])
def test_tiny_values_keep_their_weights_step(integer_isa, mag):
    """Values this small give value scales below 2^-60, so a block's largest
    weight times its value scale is too: its rounding pre-scales the
    weights by 2^64 before the int16 step (i8dot_factor). Skipping that
    pre-scale would round every weight to 0 and the output to 0. With
    q = 0 (equal weights) the output is the decoded values' mean, over
    sub-blocks of 256 with a ragged tail and scales that differ per key."""
    rng = np.random.default_rng(12)
    Lk = 700
    k = rng.standard_normal((1, 1, Lk, 32), dtype=np.float32)
    v = ((1 + 0.5 * rng.standard_normal((1, 1, Lk, 32))) * mag * rng.uniform(0.5, 2, (1, 1, Lk, 1))).astype(np.float32)
    q = np.zeros((1, 4, 1, 32), np.float32)
    cache = int8_cache(k, v)
    assert cache._vs.max() < 2.0 ** -60
    assert_integer_plan(cache, q)
    out = cache.attend(q)
    _, vd = decoded(cache)
    want = np.repeat(vd.mean(axis=2, keepdims=True), 4, axis=1)
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-4 * np.abs(vd).max())
    assert np.abs(want).min() > 100 * 2e-4 * np.abs(vd).max()   # the comparison is not against ~0
