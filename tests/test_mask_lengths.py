"""Bool masks whose rows are all prefixes (True for keys j < n, False from
n on: key padding, with or without a causal limit, as Hugging Face builds
them) run as key lengths (attncore/_core.pyx bool_mask_lengths and
_fast_mask_lengths): the kernel skips the blocks past a row's length and
needs no mask pass. Each case asserts the plan it reaches (plan["mask"],
plan["key_lengths"]), checks against the reference, and checks that the
fast path (which converts on its own) gives the general path's bits."""
import numpy as np
import pytest

import attncore
from attncore import reference as R
from attncore._engine import plan_info

from _guard import guarded_allocations, guarded_copy
from _paths import sdpa_general as general
from _tolerances import assert_close

SDPA = attncore.scaled_dot_product_attention


def padding_mask(lens, Lq, Lk, heads=1):
    """(B, heads, Lq, Lk): key j visible iff j < lens[b] (per head: lens[b, h])."""
    lens = np.asarray(lens).reshape(len(lens), -1)[:, :heads]
    return np.arange(Lk) < lens[:, :, None, None] * np.ones((1, heads, Lq, 1), int)


def masks(rng, B, Hq, Lq, Lk):
    """name -> a prefix mask in one of the forms callers write."""
    lens = np.array([Lk, Lk // 2, 1, 0][:B])
    pad = np.arange(Lk) < lens[:, None]                                       # (B, Lk)
    causal = np.tril(np.ones((Lq, Lk), bool), Lk - Lq)
    per_head = rng.integers(0, Lk + 1, (B, Hq))
    return {
        "key-padding (B, 1, 1, Lk)": pad[:, None, None, :],
        "hf-dense (B, 1, Lq, Lk)": np.ascontiguousarray(np.broadcast_to(pad[:, None, None, :], (B, 1, Lq, Lk))),
        "hf-expanded view": np.broadcast_to(pad[:, None, None, :], (B, 1, Lq, Lk)),
        "causal-and-padding": pad[:, None, None, :] & causal,
        "per-head lengths": np.arange(Lk) < per_head[:, :, None, None] + np.zeros((1, 1, Lq, 1), int),
        "fortran-order": np.asfortranarray(np.broadcast_to(pad[:, None, None, :], (B, 1, Lq, Lk))),
        "all-true": np.ones((B, 1, Lq, Lk), bool),
    }


@pytest.mark.parametrize("name", ["key-padding (B, 1, 1, Lk)", "hf-dense (B, 1, Lq, Lk)", "hf-expanded view",
                                  "causal-and-padding", "per-head lengths", "fortran-order", "all-true"])
def test_prefix_masks_run_as_key_lengths(isa, dtype, name, general_calls):
    rng = np.random.default_rng(3)
    B, Hq, Lq, Lk, D = 4, 3, 40, 150, 16
    q, k, v = (rng.standard_normal((B, Hq, L, D)).astype(dtype) for L in (Lq, Lk, Lk))
    m = masks(rng, B, Hq, Lq, Lk)[name]
    plan = plan_info(SDPA, q, k, v, attn_mask=m)
    assert plan["mask"] is None and plan["key_lengths"], plan
    general_calls.clear()   # (plan_info's own call)
    fast = SDPA(q, k, v, attn_mask=m)
    assert not general_calls, "the call should take the fast path"
    slow, lse = SDPA(q, k, v, attn_mask=m, return_lse=True)
    assert general_calls
    assert np.array_equal(fast, slow)
    want, want_lse = R.scaled_dot_product_attention(q, k, v, attn_mask=m, return_lse=True)
    assert_close(fast, want, "sdpa", dtype)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))   # empty rows
    if name not in ("per-head lengths", "all-true"):   # (batch element 3 has length 0)
        assert not np.any(fast[3]) and np.all(np.isneginf(lse[3])), "rows with no visible key"


def test_the_same_logical_mask_gives_the_same_bits_in_every_layout():
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((4, 3, L, 32)).astype(np.float32) for L in (40, 150, 150))
    forms = masks(rng, 4, 3, 40, 150)
    outs = [SDPA(q, k, v, attn_mask=forms[n]) for n in
            ("key-padding (B, 1, 1, Lk)", "hf-dense (B, 1, Lq, Lk)", "hf-expanded view", "fortran-order")]
    outs.append(general(q, k, v, forms["hf-dense (B, 1, Lq, Lk)"]))
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])


@pytest.mark.parametrize("hole", ["gap", "left-padding", "first-key-hidden"])
def test_masks_that_are_not_prefixes_stay_masks(isa, hole):
    rng = np.random.default_rng(5)
    B, Hq, Lq, Lk, D = 2, 3, 40, 150, 16
    q, k, v = (rng.standard_normal((B, Hq, L, D)).astype(np.float32) for L in (Lq, Lk, Lk))
    m = np.ones((B, 1, Lq, Lk), bool)
    m[..., 100:] = False
    if hole == "gap":                 # one True after the first False, in one row
        m[1, 0, 17, 120] = True
    elif hole == "left-padding":      # Hugging Face decoders' left padding
        m[0, :, :, :30] = False
    else:
        m[1, 0, 5, 0] = False
    plan = plan_info(SDPA, q, k, v, attn_mask=m)
    assert plan["mask"] == "bool" and not plan["key_lengths"], plan
    fast = SDPA(q, k, v, attn_mask=m)
    assert np.array_equal(fast, general(q, k, v, m))
    assert_close(fast, R.scaled_dot_product_attention(q, k, v, attn_mask=m), "sdpa", np.float32)


def test_small_problems_keep_their_mask():
    """Below MASK_LENGTHS_MIN_SCORES scores the mask is not scanned."""
    q = np.ones((1, 2, 8, 16), np.float32)
    m = np.arange(8) < np.array([8, 3])[:, None, None, None]
    assert plan_info(SDPA, q, q, q, attn_mask=m[:1])["mask"] == "bool"


def test_lengths_combine_with_causal_and_with_torch():
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal((3, 2, L, 16)).astype(np.float32) for L in (30, 90, 90))
    m = padding_mask([90, 50, 10], 1, 90)
    for causal in (True, "bottom_right"):
        plan = plan_info(SDPA, q, k, v, attn_mask=m, is_causal=causal)
        assert plan["key_lengths"] and plan["mask"] is None
        got = SDPA(q, k, v, attn_mask=m, is_causal=causal)
        assert_close(got, R.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal),
                     "sdpa", np.float32)
    torch = pytest.importorskip("torch")
    import attncore.torch as at
    t = [torch.from_numpy(x) for x in (q, k, v)]
    got = at.scaled_dot_product_attention(*t, attn_mask=torch.from_numpy(m))
    assert np.array_equal(got.numpy(), SDPA(q, k, v, attn_mask=m))


def test_mask_scan_border_guard_pages(isa):
    """The scans read each stored mask row to its end and no further: masks
    that end at an unreadable page, or start right after one."""
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((3, 2, L, 16)).astype(np.float32) for L in (33, 97, 97))
    for where in ("end", "start"):
        for m in (padding_mask([97, 40, 0], 33, 97), padding_mask([5, 97, 60], 1, 97),
                  padding_mask([5, 97, 60], 33, 97)[..., ::-1][..., ::-1]):
            g = guarded_copy(np.ascontiguousarray(m), where)
            assert plan_info(SDPA, q, k, v, attn_mask=g)["key_lengths"]
            with guarded_allocations():
                fast = SDPA(q, k, v, attn_mask=g)
                slow, _ = SDPA(q, k, v, attn_mask=g, return_lse=True)
            assert np.array_equal(fast, slow)
            assert_close(fast, R.scaled_dot_product_attention(q, k, v, attn_mask=m), "sdpa", np.float32)
