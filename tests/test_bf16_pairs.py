"""bfloat16 attention on native pair dot products (the avx512bf16 level's
vdpbf16ps, the amxbf16 level's AMX tiles, and avx512bf16emu / amxbf16emu,
the same kernels with the instructions emulated, which run on any AVX-512
CPU). Every test asserts, through the
kernel's plan, that it reached the pairs path; results are checked against
float64 with docs/numerics.md (4b)'s bound: the float32 bound of (1), plus
2^-8 V for the weights rounded to bfloat16 before P V, plus the output's
own rounding (2^-8 |out|)."""
import math

import numpy as np
import pytest

import attncore
from attncore import _config
from attncore import reference as R
from attncore._engine import plan_info

from _guard import guarded_copy
from conftest import PAIR_ISAS, SUPPORTED_ISAS, is_pair_level

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes (bfloat16 for NumPy) not installed")
BF16 = ml_dtypes.bfloat16
SDPA = attncore.scaled_dot_product_attention
pytestmark = pytest.mark.skipif(not PAIR_ISAS, reason="no AVX-512: no native bfloat16 pair level runs here")
AMX_LEVELS = [n for n in PAIR_ISAS if n.startswith("amxbf16")]


@pytest.fixture(params=PAIR_ISAS)
def pair_isa(request):
    with _config.use_isa(request.param):
        yield request.param


def bf16(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(BF16)


def check(out, q, k, v, **kw):
    """out (bfloat16) against float64 attention over the same bfloat16 inputs."""
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    ref = R.scaled_dot_product_attention(q64, k64, v64, **kw)
    scale = kw.get("scale") or 1 / math.sqrt(q.shape[-1])
    kr = np.repeat(k64, q64.shape[-3] // k64.shape[-3], -3)   # GQA: each query head's keys
    S = abs(scale) * (np.abs(q64) @ np.abs(np.swapaxes(kr, -1, -2))).max(-1)
    V = np.abs(v64).max()
    u = 2.0**-24
    f32 = u * V * (2 * S * (math.ceil(q.shape[-1] / 2) + 4) + 1.5 * 128 + 8)
    bound = f32[..., None] + 2.0**-8 * V + 2.0**-8 * np.abs(ref)
    err = np.abs(out.astype(np.float64) - ref)
    assert (err <= bound).all(), f"max err {err.max():.3g}, bound {bound.min():.3g}"


SHAPES = [  # B, Hq, Hkv, Lq, Lk, D, Dv: odd D / Dv / Lk, one key, GQA, blocks edges
    (1, 2, 2, 40, 37, 15, 9),
    (2, 4, 2, 33, 130, 64, 64),
    (1, 1, 1, 64, 257, 1, 3),
    (1, 2, 1, 100, 9, 33, 17),
    (1, 1, 1, 31, 1, 2, 2),
    (1, 3, 3, 65, 128, 128, 80),
    (1, 1, 1, 17, 300, 7, 1),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", ["plain", "causal", "negative_scale", "bool_mask", "float_mask"])
def test_pairs_path_matches_float64(pair_isa, shape, case, rng):
    B, Hq, Hkv, Lq, Lk, D, Dv = shape
    q, k, v = bf16(rng, (B, Hq, Lq, D)), bf16(rng, (B, Hkv, Lk, D)), bf16(rng, (B, Hkv, Lk, Dv))
    kw = {"enable_gqa": Hq != Hkv}
    if case == "causal":
        kw["is_causal"] = True
    elif case == "negative_scale":
        kw["scale"] = -0.3
    elif case == "bool_mask":
        kw["attn_mask"] = rng.random((Lq, Lk)) < 0.7
    elif case == "float_mask":
        kw["attn_mask"] = rng.standard_normal((Lq, Lk)).astype(np.float32)
    plan = plan_info(SDPA, q, k, v, **kw)
    assert plan["path"] == "panel" and plan["native_pairs"], plan
    assert plan["amx_tiles"] == pair_isa.startswith("amxbf16"), plan
    out = SDPA(q, k, v, **kw)
    assert out.dtype == BF16 and out.shape == (B, Hq, Lq, Dv)
    check(out, q, k, v, **kw)


def test_fully_masked_rows_are_zero(pair_isa, rng):
    q, k, v = bf16(rng, (1, 2, 40, 16)), bf16(rng, (1, 2, 50, 16)), bf16(rng, (1, 2, 50, 16))
    mask = np.ones((40, 50), bool)
    mask[3] = False
    assert plan_info(SDPA, q, k, v, attn_mask=mask)["native_pairs"]
    out, lse = SDPA(q, k, v, attn_mask=mask, return_lse=True)
    assert (out[:, :, 3].astype(np.float32) == 0).all() and np.isneginf(lse[:, :, 3]).all()
    assert np.isfinite(out.astype(np.float32)).all()


def test_weights_and_lse_are_float32_softmax(pair_isa, rng):
    """Returned weights come from the float32 scores (exact products), rounded
    once to the output dtype: only P V uses weights rounded before the sum."""
    q, k, v = bf16(rng, (1, 2, 40, 32)), bf16(rng, (1, 2, 70, 32)), bf16(rng, (1, 2, 70, 32))
    assert plan_info(SDPA, q, k, v, return_weights=True)["native_pairs"]
    out, w = SDPA(q, k, v, return_weights=True)
    ref_w = R.scaled_dot_product_attention(*(a.astype(np.float64) for a in (q, k, v)), return_weights=True)[1]
    assert w.dtype == BF16
    np.testing.assert_allclose(w.astype(np.float64), ref_w, rtol=2.0**-8, atol=1e-30)


def test_thread_count_does_not_change_bits(pair_isa, rng):
    q, k, v = bf16(rng, (2, 4, 130, 64)), bf16(rng, (2, 4, 300, 64)), bf16(rng, (2, 4, 300, 64))
    assert plan_info(SDPA, q, k, v)["native_pairs"]
    one = SDPA(q, k, v, num_threads=1)
    two = SDPA(q, k, v, num_threads=2)
    assert one.tobytes() == two.tobytes()


def test_other_levels_widen(rng):
    """Without the pair kernels (and for float16, float32 queries over a
    bfloat16 cache, additive scores) the panel path widens K and V."""
    q, k, v = bf16(rng, (1, 1, 64, 16)), bf16(rng, (1, 1, 64, 16)), bf16(rng, (1, 1, 64, 16))
    for name in SUPPORTED_ISAS:
        with _config.use_isa(name):
            assert plan_info(SDPA, q, k, v)["native_pairs"] == is_pair_level(name)
            h = [a.astype(np.float16) for a in (q, k, v)]
            assert not plan_info(SDPA, *h)["native_pairs"]


def test_decode_keeps_the_rows_path(pair_isa, rng):
    """Decode-shaped calls read bfloat16 rows in the rows path (bandwidth-bound)."""
    q, k, v = bf16(rng, (1, 8, 1, 64)), bf16(rng, (1, 2, 600, 64)), bf16(rng, (1, 2, 600, 64))
    plan = plan_info(SDPA, q, k, v, enable_gqa=True)
    assert plan["path"] == "rows" and not plan["native_pairs"]
    check(SDPA(q, k, v, enable_gqa=True), q, k, v, enable_gqa=True)


@pytest.mark.skipif("avx512bf16" not in PAIR_ISAS or "avx512bf16emu" not in PAIR_ISAS,
                    reason="needs a CPU with AVX512_BF16 (Zen 4, Cooper Lake, Sapphire Rapids)")
def test_emulation_is_bit_exact(rng):
    """avx512bf16emu's emulated vdpbf16ps / vcvtne2ps2bf16 give the
    instructions' bits (so the emulated level's tests cover the real one)."""
    for shape in SHAPES:
        B, Hq, Hkv, Lq, Lk, D, Dv = shape
        q, k, v = bf16(rng, (B, Hq, Lq, D)), bf16(rng, (B, Hkv, Lk, D)), bf16(rng, (B, Hkv, Lk, Dv), 1e-36)
        outs = []
        for name in ("avx512bf16", "avx512bf16emu"):
            with _config.use_isa(name):
                outs.append(SDPA(q, k, v, enable_gqa=Hq != Hkv, is_causal=True).tobytes())
        assert outs[0] == outs[1], shape


@pytest.mark.parametrize("where", ["end", "start"])
def test_guard_pages_head_sizes_1_to_160(pair_isa, where):
    """Q, K, V and the output border an unreadable page: D, Dv 1..160 and key
    lengths across the pair and block edges, every read in bounds."""
    rng = np.random.default_rng(160)
    lengths = [1, 2, 3, 7, 8, 9, 15, 16, 17, 127, 128, 129, 130, 255, 257]
    for D in range(1, 161):
        Dv = D if D % 3 else (D * 7) % 160 + 1
        Lk = lengths[D % len(lengths)]
        Lq = 33 + D % 40
        q = guarded_copy(bf16(rng, (1, 1, Lq, D)), where)
        k = guarded_copy(bf16(rng, (1, 1, Lk, D)), where)
        v = guarded_copy(bf16(rng, (1, 1, Lk, Dv)), where)
        out = guarded_copy(np.zeros((1, 1, Lq, Dv), BF16), where)
        plan = plan_info(SDPA, q, k, v)
        assert plan["native_pairs"] and plan["amx_tiles"] == pair_isa.startswith("amxbf16"), plan
        SDPA(q, k, v, out=out, is_causal=D % 4 == 0)
        check(out, q, k, v, is_causal=D % 4 == 0)


def test_amx_tiles_only_on_the_amx_levels(rng):
    """AMX tiles run bfloat16 prefill on amxbf16 / amxbf16emu only; float16
    and decode keep their paths there."""
    q, k, v = bf16(rng, (1, 2, 64, 32)), bf16(rng, (1, 2, 80, 32)), bf16(rng, (1, 2, 80, 32))
    for name in _config.supported_isas():
        with _config.use_isa(name):
            assert plan_info(SDPA, q, k, v)["amx_tiles"] == name.startswith("amxbf16"), name
            h = [a.astype(np.float16) for a in (q, k, v)]
            assert not plan_info(SDPA, *h)["amx_tiles"]
            assert not plan_info(SDPA, q[:, :, :1], k, v)["amx_tiles"]


@pytest.mark.parametrize("D", [31, 32, 33, 47, 63, 64, 65, 96, 127, 128, 129])
def test_amx_steps_and_key_tiles(D, rng):
    """The tile edges of the AMX kernels (on amxbf16 where the CPU has AMX,
    and amxbf16emu): whole and partial 32-element steps of d with even and
    odd D, key tiles ending inside a 16-row tile and exactly on one, blocks
    of 128 keys, value columns on and off the 16-column tiles. One panel
    per head: P V transposes each block itself (no staged chunk)."""
    if not AMX_LEVELS:
        pytest.skip("no AMX level runs here (amxbf16emu needs AVX-512)")
    for Lk in (1, 15, 16, 17, 32, 33, 128, 129, 161):
        Dv = (D * 3) % 70 + 1
        q, k, v = bf16(rng, (1, 2, 37, D)), bf16(rng, (1, 2, Lk, D)), bf16(rng, (1, 2, Lk, Dv))
        for name in AMX_LEVELS:
            with _config.use_isa(name):
                plan = plan_info(SDPA, q, k, v)
                assert plan["amx_tiles"] and not plan["value_tiles"], plan
                check(SDPA(q, k, v), q, k, v)
                check(SDPA(q, k, v, is_causal=True), q, k, v, is_causal=True)


@pytest.mark.skipif(not AMX_LEVELS, reason="no AMX level runs here (amxbf16emu needs AVX-512)")
@pytest.mark.parametrize("case", ["plain", "causal", "window", "window_far", "gqa_mask"])
def test_amx_values_staged_per_chunk(case, rng):
    """With 4 or more panels per kv head the AMX levels stage each key
    chunk's V transposed once per thread (plan value_tiles), and P V reads
    its whole 32-key steps there in place. Causal units that cut a block
    short, and blocks a sliding window starts off the block grid, must not
    spoil the blocks later panels reuse; key counts and value widths off
    the tile grid. Against float64, and bitwise the same on 1 and 2
    threads."""
    B, Hq, Hkv, Lq, Lk, D, Dv = (1, 4, 2, 150, 333, 40, 21) if case == "gqa_mask" else (1, 2, 2, 300, 333, 64, 37)
    q, k, v = bf16(rng, (B, Hq, Lq, D)), bf16(rng, (B, Hkv, Lk, D)), bf16(rng, (B, Hkv, Lk, Dv))
    kw = {"enable_gqa": Hq != Hkv}
    if case == "causal":
        kw["is_causal"] = True
    elif case == "window":
        kw["window"] = (37, 5)
    elif case == "window_far":
        kw["window"] = (100, 0)
    elif case == "gqa_mask":
        kw["attn_mask"] = rng.random((Lq, Lk)) < 0.8
    for name in AMX_LEVELS:
        with _config.use_isa(name):
            plan = plan_info(SDPA, q, k, v, **kw)
            assert plan["amx_tiles"] and plan["value_tiles"] and not plan["widened_chunks"], plan
            one = SDPA(q, k, v, num_threads=1, **kw)
            two = SDPA(q, k, v, num_threads=2, **kw)
            assert one.tobytes() == two.tobytes()
            check(one, q, k, v, **kw)


@pytest.mark.skipif(not AMX_LEVELS, reason="no AMX level runs here (amxbf16emu needs AVX-512)")
@pytest.mark.parametrize("where", ["end", "start"])
def test_amx_staged_values_guard_pages(where):
    """The chunk-staged path (value_tiles on an AMX level) with Q, K, V and
    the output against an unreadable page, value widths 1..40 and key
    counts across the 16-, 32- and 128-key edges."""
    rng = np.random.default_rng(41)
    for Dv in range(1, 41):
        Lk = [1, 15, 16, 17, 31, 32, 33, 127, 128, 129, 160, 255, 256, 257][Dv % 14]
        D = [1, 2, 31, 32, 33, 64][Dv % 6]
        q = guarded_copy(bf16(rng, (1, 1, 130, D)), where)
        k = guarded_copy(bf16(rng, (1, 1, Lk, D)), where)
        v = guarded_copy(bf16(rng, (1, 1, Lk, Dv)), where)
        out = guarded_copy(np.zeros((1, 1, 130, Dv), BF16), where)
        for name in AMX_LEVELS:
            with _config.use_isa(name):
                plan = plan_info(SDPA, q, k, v)
                assert plan["amx_tiles"] and plan["value_tiles"], plan
                SDPA(q, k, v, out=out, is_causal=Dv % 2 == 0)
                check(out, q, k, v, is_causal=Dv % 2 == 0)
