"""Half panels (csrc/kernels/tiles.inc.c qk_panel_half, softmax_panel_half,
pv_panel_half): a head's last panel that holds at most half a panel's rows
(Lq = 24 on avx2 is 16 + 8) runs kernels on those lanes only. Each case
asserts that the plan takes them (plan["half_panels"]), checks against
float64 attention, and checks that a row gets the same bits as in a full
panel; the guard-page case reads arrays that end at (or start right after)
an unreadable page."""
import numpy as np
import pytest

import attncore
from attncore import reference as R
from attncore._engine import plan_info

from _guard import guarded_allocations, guarded_copy
from _tolerances import assert_close

SDPA = attncore.scaled_dot_product_attention


def panel_rows(dtype):
    """The active level's panel height W (rows per panel-path unit)."""
    q = np.zeros((1, 1, 64, 8), dtype)
    plan = plan_info(SDPA, q, q, q)
    assert plan["path"] == "panel"
    return plan["rows_per_unit"]


def inputs(rng, dtype, Lq, Lk=70, Hq=2, Hkv=2, D=24, B=2):
    return (rng.standard_normal((B, Hq, Lq, D)).astype(dtype),
            rng.standard_normal((B, Hkv, Lk, D)).astype(dtype),
            rng.standard_normal((B, Hkv, Lk, D)).astype(dtype))


@pytest.mark.parametrize("tail", ["half", "one"])
@pytest.mark.parametrize("case", ["plain", "causal", "bool-mask", "float-mask", "lse-weights",
                                  "dropout", "gqa-stacked", "long-keys", "sigmoid", "window",
                                  "hard-topk", "softcap", "alibi"])
def test_half_panels_against_the_reference(isa, dtype, tail, case):
    W = panel_rows(dtype)
    Lq = {"half": W + W // 2, "one": 2 * W + 1}[tail]
    rng = np.random.default_rng(Lq)
    Hq, Hkv, Lk = 2, 2, 70
    kw = {}
    if case == "gqa-stacked":      # a group's 2 heads stack: panels of their 2 Lq rows
        Hq, Hkv, Lq = 4, 2, W // 2 + (W // 4 if tail == "half" else 1)
    if case == "long-keys":        # several key blocks (and the online softmax's rescaling)
        Lk = 1500
    q, k, v = inputs(rng, dtype, Lq, Lk, Hq, Hkv)
    if case == "causal":
        kw["is_causal"] = "bottom_right"
    elif case == "bool-mask":
        kw["attn_mask"] = rng.random((2, 1, Lq, Lk)) > 0.3
    elif case == "float-mask":
        m = rng.standard_normal((2, 1, Lq, Lk)).astype(dtype)
        m[rng.random(m.shape) > 0.7] = -np.inf
        kw["attn_mask"] = m
    elif case == "lse-weights":
        kw.update(return_lse=True, return_weights=True)
    elif case == "dropout":
        kw.update(dropout_p=0.3, seed=5)
    elif case == "window":
        kw["window"] = (9, 3)
    elif case == "softcap":
        kw["softcap"] = 0.7
    elif case == "alibi":
        kw["alibi_slopes"] = np.array([0.25, 0.5])
    plan = plan_info(SDPA, q, k, v, enable_gqa=True, **kw)
    assert plan["path"] == "panel" and plan["half_panels"], plan
    if case == "sigmoid":
        got = attncore.sigmoid_attention(q, k, v, enable_gqa=True)
        want = R.sigmoid_attention(q, k, v, enable_gqa=True)
        assert_close(got, want, "sdpa", dtype)
        return
    if case == "hard-topk":   # no softmax or P V: the rows' top 3 keys from the half tile
        kw = dict(k=3, mode="topk", enable_gqa=True)
        assert plan_info(attncore.hard_attention, q, k, v, **kw)["half_panels"]
        got = attncore.hard_attention(q, k, v, **kw)
        want = R.hard_attention(q, k, v, **kw)
        assert_close(got, want, "sdpa", dtype)
        return
    got = SDPA(q, k, v, enable_gqa=True, **kw)
    want = R.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        assert_close(g, w, "sdpa", dtype)


@pytest.mark.parametrize("case", ["plain", "softcap", "scaled-mask", "sigmoid"])
def test_a_row_gets_the_bits_of_a_full_panel(isa, dtype, case):
    """Half-panel lanes run the full panel's operations: the rows of a half
    panel equal the same rows computed at the top of a full panel (with the
    block's prep passes on the half tile: soft-cap, the scale with a mask;
    and sigmoid's weights). (ALiBi's ramp follows the row's position, so
    it is checked against the reference above.)"""
    W = panel_rows(dtype)
    rng = np.random.default_rng(1)
    Lk = 300
    q, k, v = inputs(rng, dtype, W + W // 2, Lk=Lk)
    fn, kw = SDPA, {}
    if case == "softcap":
        kw["softcap"] = 0.9
    elif case == "sigmoid":
        fn = attncore.sigmoid_attention
    top_q = np.concatenate([q[:, :, W:], rng.standard_normal(q[:, :, W:].shape).astype(dtype)], axis=2)
    tail_kw, top_kw = dict(kw), dict(kw)
    if case == "scaled-mask":   # the same mask rows for the tail and the top
        mask_rows = rng.random((2, 1, W // 2, Lk)) > 0.25
        other = np.ones((2, 1, W - W // 2, Lk), bool)
        tail_kw["attn_mask"] = np.concatenate([np.ones((2, 1, W, Lk), bool), mask_rows], axis=2)
        top_kw["attn_mask"] = np.concatenate([mask_rows, other], axis=2)
    assert plan_info(fn, q, k, v, **tail_kw)["half_panels"]
    assert not plan_info(fn, top_q, k, v, **top_kw)["half_panels"]
    tail = fn(q, k, v, **tail_kw)[:, :, W:]
    top = fn(top_q, k, v, **top_kw)[:, :, : W // 2]
    assert np.array_equal(tail, top)


def test_half_panels_border_guard_pages(isa):
    W = panel_rows(np.float32)
    rng = np.random.default_rng(2)
    for where in ("end", "start"):
        q, k, v = (guarded_copy(x, where) for x in inputs(rng, np.float32, W + W // 2, Lk=37, D=13))
        mask = guarded_copy(rng.random((2, 1, W + W // 2, 37)) > 0.2, where)
        fmask = guarded_copy(rng.standard_normal((2, 1, W + W // 2, 37)).astype(np.float32), where)
        assert plan_info(SDPA, q, k, v, attn_mask=mask)["half_panels"]
        for m in (None, mask, fmask):
            with guarded_allocations():
                out, lse = SDPA(q, k, v, attn_mask=m, return_lse=True)
            ref = R.scaled_dot_product_attention(q, k, v, attn_mask=m)
            assert_close(out, ref, "sdpa", np.float32)
