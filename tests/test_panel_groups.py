"""Panel groups: when a kv head's K and V (as float32) exceed 512 KiB, each
panel's pass over the keys would stream them from outside L2, so a work item
runs up to eight panels of the head block by block (plan["group_panels"]),
each in its own state. Every panel still runs exactly its own sequence of
operations. Each test asserts through the plan that it reaches a grouped
plan, then checks the rows against the same rows computed without groups
(bit for bit), the thread count (bit for bit) and the float64 oracle --
including panels of one group that stop (causal, valid lengths) or start
(windows) at different keys, a last group with fewer panels, and 16-bit and
int8 K/V widened block by block, where a group's panels share each block."""
import functools

import numpy as np
import pytest

import attncore
from attncore import reference as R
from attncore._engine import plan_info

from _tolerances import assert_close

SDPA = attncore.scaled_dot_product_attention


def storage(kind):
    if kind == "bfloat16":
        return pytest.importorskip("ml_dtypes").bfloat16
    return np.dtype(kind)


def inputs(rng, dtype, B, Hq, Hkv, Lq, Lk, D, Dv):
    return (rng.standard_normal((B, Hq, Lq, D)).astype(dtype), rng.standard_normal((B, Hkv, Lk, D)).astype(dtype),
            rng.standard_normal((B, Hkv, Lk, Dv)).astype(dtype))


def panel_rows():
    """The active level's panel width (query rows per panel)."""
    q = np.zeros((1, 1, 64, 8), np.float32)
    plan = plan_info(SDPA, q, q, q)
    assert plan["path"] == "panel", plan
    return plan["rows_per_unit"]


# --- long keys: every panel against the same panel run alone ---------------

LK = 4200   # D = Dv = 16: 4200 keys x 32 floats x 4 bytes > 512 KiB


def valid_lengths(Lq, Lk):
    """Per-row key counts from 50 to Lk, rising with the row."""
    return 50 + np.arange(Lq) * (Lk - 50) // (Lq - 1)


def as_mask(case, Lq, Lk):
    """The rows' visible keys as a boolean mask (None: no limit): what a
    panel run alone needs to see what it saw among Lq rows."""
    i, j = np.arange(Lq)[:, None], np.arange(Lk)[None, :]
    if case == "causal":          # top left: row i sees keys <= i
        return j <= i
    if case == "bottom_right":    # row i sees keys <= i + Lk - Lq
        return j <= i + Lk - Lq
    if case == "valid_lens":
        return j < valid_lengths(Lq, Lk)[:, None]
    if case == "mask":
        return np.random.default_rng(7).random((Lq, Lk)) > 0.2
    return None


def limit_kwargs(case, Lq, Lk):
    if case == "causal":
        return dict(is_causal=True)
    if case == "bottom_right":
        return dict(is_causal="bottom_right")
    if case == "valid_lens":
        return dict(valid_lens=valid_lengths(Lq, Lk)[None])   # (batch, Lq): one per row
    if case == "mask":
        return dict(attn_mask=as_mask(case, Lq, Lk))
    return {}


@pytest.mark.parametrize("kind", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", ["none", "mask", "causal", "bottom_right", "valid_lens"])
def test_every_panel_equals_the_panel_run_alone(isa, kind, case, rng):
    """16 heads of 4 panels each, grouped four per item. Each panel's rows
    run alone (16 heads of one panel: no group, no key split), with the key
    limits the panel had among all rows written as a mask, give the same
    bits: a fully masked block leaves every sum exactly as skipping it does."""
    rows = panel_rows()
    Lq = 4 * rows
    q, k, v = inputs(rng, storage(kind), 1, 16, 16, Lq, LK, 16, 16)
    kw = dict(limit_kwargs(case, Lq, LK), num_threads=2)
    plan = plan_info(SDPA, q, k, v, **kw)
    assert plan["path"] == "panel" and plan["group_panels"] == 4 and plan["chunks"] == 1, plan
    grouped = SDPA(q, k, v, **kw)
    mask = as_mask(case, Lq, LK)
    for p in range(4):
        part = slice(p * rows, (p + 1) * rows)
        pmask = None if mask is None else mask[part]
        alone = plan_info(SDPA, q[:, :, part], k, v, attn_mask=pmask, num_threads=2)
        assert alone["group_panels"] == 1 and alone["chunks"] == 1, alone
        assert grouped[:, :, part].tobytes() == SDPA(q[:, :, part], k, v, attn_mask=pmask,
                                                     num_threads=2).tobytes(), p


# --- short keys, wide heads: against the float64 oracle --------------------

# Lk = 600 keys of D = Dv = 128 (600 KiB as float32) are grouped, never split
# (fewer than 1024 keys), and keep the pure-Python oracle quick.
SMALL = dict(Lk=600, D=128, Dv=128)

ORACLE_CASES = {
    "window_left": dict(window=(100, 0)),
    "window_both": dict(window=(37, 5), return_lse=True),
    "causal_negative_scale": dict(is_causal=True, scale=-0.05),
    "weights": dict(is_causal="bottom_right", return_weights=True),
}


@functools.lru_cache(maxsize=None)
def oracle_case(name, Lq):
    """Inputs (3 query heads, 1 kv head) and the float64 reference for one
    case: the same on every level with that panel width, so the slow oracle
    runs once."""
    rng = np.random.default_rng(sum(map(ord, name)) + Lq)
    q, k, v = inputs(rng, np.float32, 1, 3, 1, Lq, SMALL["Lk"], SMALL["D"], SMALL["Dv"])
    kw = dict(ORACLE_CASES[name], enable_gqa=True)
    ref = R.scaled_dot_product_attention(*(a.astype(np.float64) for a in (q, k, v)), **kw)
    return q, k, v, kw, ref


@pytest.mark.parametrize("name", list(ORACLE_CASES))
def test_groups_against_the_oracle(isa, name):
    """3 query heads per kv head, 2 panels each: on one thread two groups,
    the last with fewer panels, whose panels start (windows) and stop
    (causal) at different keys; on two threads one panel per item (too few
    items to group), which must give the same bits."""
    q, k, v, kw, ref = oracle_case(name, 2 * panel_rows() - 3)
    grouped = plan_info(SDPA, q, k, v, num_threads=1, **kw)["group_panels"]
    assert 1 < grouped < 6 and 6 % grouped, grouped
    assert plan_info(SDPA, q, k, v, num_threads=2, **kw)["group_panels"] == 1
    one = SDPA(q, k, v, num_threads=1, **kw)
    two = SDPA(q, k, v, num_threads=2, **kw)
    one, two, ref = (x if isinstance(x, tuple) else (x,) for x in (one, two, ref))
    for a, b in zip(one, two):
        assert a.tobytes() == b.tobytes()
    assert_close(one[0], ref[0], "sdpa", np.float32)
    if len(one) > 1:
        assert_close(one[1], ref[1], "weights" if kw.get("return_weights") else "lse", np.float32)


def test_groups_leave_every_thread_two_items(isa, rng):
    """Groups shrink until each thread has at least two work items (a group
    never idles a thread): 2 kv heads x 4 panels make 2 groups of 4 for one
    thread, 4 items of 3 + 1 panels for two, and no groups for more."""
    rows = panel_rows()
    q, k, v = inputs(rng, np.float32, 1, 2, 2, 4 * rows, SMALL["Lk"], SMALL["D"], SMALL["Dv"])
    assert [plan_info(SDPA, q, k, v, num_threads=t)["group_panels"] for t in (1, 2, 3, 4)] == [4, 3, 1, 1]


# --- K/V widened block by block, shared by a group's panels -----------------

@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", [dict(), dict(is_causal="bottom_right"), dict(window=(100, 0))])
def test_groups_share_blocks_widened_one_by_one(isa, kind, case, rng):
    """Two panels per kv head are too few to keep a widened chunk per
    thread, so 16-bit K/V are widened block by block, once for both panels
    of a group: the second panel reuses the first one's block (whole blocks
    without limits and under bottom-right causal; the last block there, cut
    shorter for the first panel, and the windows' blocks, which start at
    different keys per panel, are widened again). The result equals float32
    attention over the widened values (K/V read in place: no staging to
    share a bug with), narrowed."""
    dtype = storage(kind)
    q, k, v = inputs(rng, dtype, 1, 2, 2, 2 * panel_rows() - 5, SMALL["Lk"], SMALL["D"], SMALL["Dv"])
    plan = plan_info(SDPA, q, k, v, num_threads=1, **case)
    if plan["native_pairs"]:
        pytest.skip("this level reads bfloat16 K/V as they are (test_bf16_pairs.py)")
    assert plan["group_panels"] == 2 and not plan["widened_chunks"] and plan["chunks"] == 1, plan
    out = SDPA(q, k, v, num_threads=1, **case)
    wide = SDPA(*(a.astype(np.float32) for a in (q, k, v)), num_threads=1, **case)
    assert out.tobytes() == wide.astype(dtype).tobytes()


def test_int8_cache_groups_share_scaled_blocks(isa, rng):
    """An int8 KVCache read by two panels per kv head: each block is
    dequantized (scales applied) once for the group. The result equals
    float32 attention over the dequantized cache, bit for bit."""
    L, D = SMALL["Lk"], SMALL["D"]
    cache = attncore.KVCache(max_len=L, num_heads=2, head_dim=D, dtype="int8")
    cache.append(rng.standard_normal((1, 2, L, D)).astype(np.float32),
                 rng.standard_normal((1, 2, L, D)).astype(np.float32))
    q = rng.standard_normal((1, 2, 2 * panel_rows() - 1, D)).astype(np.float32)
    plan = plan_info(cache.attend, q, num_threads=1)
    assert plan["group_panels"] == 2 and not plan["widened_chunks"] and plan["chunks"] == 1, plan
    out = cache.attend(q, num_threads=1)
    ref = SDPA(q, cache.keys, cache.values, is_causal="bottom_right", num_threads=1)
    assert out.tobytes() == ref.tobytes()


def test_heads_that_fit_in_l2_are_not_grouped(isa, rng):
    """K and V within half of L2 keep one panel per work item."""
    q, k, v = inputs(rng, np.float32, 1, 8, 8, 512, 512, 64, 64)
    plan = plan_info(SDPA, q, k, v)
    assert plan["path"] == "panel" and plan["group_panels"] == 1, plan
