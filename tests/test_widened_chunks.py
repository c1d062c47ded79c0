"""16-bit and int8 K/V on the panel path: each thread widens a kv head's key
chunk to float32 once and reuses it across that head's panels (instead of
widening every block once per panel). Each test asserts through the plan
that it reaches that path, checks against float64 attention over the same
(widened) values, and that the thread count does not change a bit: the
widened values are the same whichever panel widened them, including a block
that a causal unit widened only in part before a later one needs all of it.
The same reuse stages V in column tiles for every storage type (value_tiles:
P V then reads one contiguous stream per tile), which must not change a bit."""
import numpy as np
import pytest

import attncore
from attncore import reference as R
from attncore._engine import plan_info

from _tolerances import assert_close

SDPA = attncore.scaled_dot_product_attention


def half_inputs(rng, dtype, B, Hq, Hkv, Lq, Lk, D, Dv):
    return (rng.standard_normal((B, Hq, Lq, D)).astype(dtype), rng.standard_normal((B, Hkv, Lk, D)).astype(dtype),
            rng.standard_normal((B, Hkv, Lk, Dv)).astype(dtype))


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", [dict(is_causal=True), dict(is_causal="bottom_right"), dict(),
                                  dict(window=(100, 0))])
def test_half_inputs_reuse_widened_chunks(isa, kind, case, rng):
    if kind == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    else:
        dtype = np.float16
    q, k, v = half_inputs(rng, dtype, 1, 3, 1, 300, 333, 40, 24)
    kw = dict(case, enable_gqa=True)
    fn = SDPA
    plan = plan_info(fn, q, k, v, **kw)
    if plan["native_pairs"]:
        pytest.skip("this level multiplies bfloat16 pairs natively (test_bf16_pairs.py)")
    assert plan["path"] == "panel" and plan["widened_chunks"] and plan["value_tiles"], plan
    one = fn(q, k, v, num_threads=1, **kw)
    two = fn(q, k, v, num_threads=2, **kw)
    assert one.tobytes() == two.tobytes()
    # the float64 oracle on the same values (not float32 attncore, which
    # stages its V the same way and would share a staging bug)
    ref = R.scaled_dot_product_attention(*(a.astype(np.float64) for a in (q, k, v)), **kw)
    np.testing.assert_allclose(one.astype(np.float64), ref, rtol=2.0**-8, atol=2.0**-9)


def test_int8_cache_prefill_reuses_widened_chunks(isa, rng):
    """A long query block over an int8 KVCache (the scales applied in the
    widening) against float32 attention over the dequantized cache."""
    cache = attncore.KVCache(max_len=600, num_heads=2, head_dim=32, dtype="int8")
    k = rng.standard_normal((1, 2, 520, 32)).astype(np.float32)
    v = rng.standard_normal((1, 2, 520, 32)).astype(np.float32)
    cache.append(k, v)
    q = rng.standard_normal((1, 4, 200, 32)).astype(np.float32)
    plan = plan_info(cache.attend, q)
    assert plan["path"] == "panel" and plan["widened_chunks"] and plan["value_tiles"], plan
    one = cache.attend(q, num_threads=1)
    two = cache.attend(q, num_threads=2)
    assert one.tobytes() == two.tobytes()
    kd, vd = cache.keys, cache.values   # the stored values, dequantized
    ref = R.scaled_dot_product_attention(q.astype(np.float64), kd.astype(np.float64), vd.astype(np.float64),
                                         is_causal="bottom_right", enable_gqa=True)
    assert_close(one, ref, "sdpa", np.float32)


def test_one_panel_per_head_widens_per_block(isa, rng):
    """One panel per kv head (nothing to reuse) widens block by block."""
    q, k, v = half_inputs(rng, np.float16, 1, 1, 1, 20, 300, 16, 16)
    plan = plan_info(SDPA, q, k, v)
    assert plan["path"] == "panel" and not plan["widened_chunks"] and not plan["value_tiles"]


@pytest.mark.parametrize("kind", ["float32", "float16", "float64"])
@pytest.mark.parametrize("case", [dict(), dict(is_causal="top_left")])
def test_value_tiles_do_not_change_a_bit(isa, kind, case, rng):
    """The first panel's rows of a call that stages V in column tiles equal,
    bit for bit, the same rows computed alone (one panel: V read in place or
    widened by rows): P V sums each output in the same order either way."""
    dtype = np.dtype(kind)
    q, k, v = half_inputs(rng, dtype, 1, 2, 1, 150, 300, 24, 21)   # 21: a partial tile on every level
    big_plan = plan_info(SDPA, q, k, v, enable_gqa=True, **case)
    assert big_plan["path"] == "panel" and big_plan["value_tiles"], big_plan
    rows = big_plan["rows_per_unit"]
    first = q[:, :, :rows]
    small_plan = plan_info(SDPA, first, k, v, enable_gqa=True, **case)
    assert not small_plan["value_tiles"] and small_plan["chunks"] == big_plan["chunks"] == 1, small_plan
    big = SDPA(q, k, v, enable_gqa=True, **case)
    small = SDPA(first, k, v, enable_gqa=True, **case)
    assert big[:, :, :rows].tobytes() == small.tobytes()


@pytest.mark.parametrize("window", [(100, 0), (37, 5)])
def test_value_tiles_under_windows(isa, window, rng):
    """Sliding windows start key blocks off the block grid: those blocks
    restage their V tiles at the same places (key j of a chunk always lands
    at the same offset), and must not spoil the aligned blocks that later
    panels reuse. Float32 against the float64 oracle."""
    q, k, v = half_inputs(rng, np.float32, 1, 3, 1, 300, 333, 40, 21)
    kw = dict(window=window, enable_gqa=True)
    plan = plan_info(SDPA, q, k, v, **kw)
    assert plan["path"] == "panel" and plan["value_tiles"], plan
    one = SDPA(q, k, v, num_threads=1, **kw)
    two = SDPA(q, k, v, num_threads=2, **kw)
    assert one.tobytes() == two.tobytes()
    ref = R.scaled_dot_product_attention(*(a.astype(np.float64) for a in (q, k, v)), **kw)
    assert_close(one, ref, "sdpa", np.float32)


@pytest.mark.parametrize("kind", ["float32", "float16"])
def test_value_tiles_with_split_keys(isa, kind, rng):
    """Few panels and long keys: the keys split into chunks (merged after)
    while each thread stages V in column tiles per chunk (the units of one
    chunk run one after the other: a speed matter, benchmarks/NOTES.md).
    Against the float64 oracle, and the thread count does not change a bit."""
    rows = plan_info(SDPA, *half_inputs(rng, np.float32, 1, 1, 1, 64, 64, 8, 8))["rows_per_unit"]
    q, k, v = half_inputs(rng, np.dtype(kind), 1, 1, 1, 4 * rows - 3, 1100, 16, 16)
    plan = plan_info(SDPA, q, k, v, is_causal="bottom_right")
    assert plan["path"] == "panel" and plan["chunks"] > 1 and plan["value_tiles"], plan
    one = SDPA(q, k, v, is_causal="bottom_right", num_threads=1)
    assert one.tobytes() == SDPA(q, k, v, is_causal="bottom_right", num_threads=2).tobytes()
    ref = R.scaled_dot_product_attention(*(a.astype(np.float64) for a in (q, k, v)), is_causal="bottom_right")
    np.testing.assert_allclose(one.astype(np.float64), ref, rtol=2.0**-10, atol=2.0**-11)
