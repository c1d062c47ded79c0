"""Memory safety: every array the kernels read or write borders an
unreadable page (after its last byte, or before its first), over head sizes
1..300, GQA groups 1..8, query rows 1..9, key lengths across block and chunk
edges, every path (panel, rows, split-K, additive product/tanh forms, the
GEMM), every dtype and every kernel level this CPU runs. A read or write one
element outside an array is a SIGSEGV (pytest's faulthandler names the
test); every result is also checked against float64 NumPy, and each sweep
asserts (through the kernel's plan) that it reached the paths it names.
"""
import subprocess
import sys

import numpy as np
import pytest

import attncore
from attncore import _config, _core, _linalg
from attncore._engine import plan_info

from _guard import every_kernel_array_guarded, guarded, guarded_allocations, guarded_copy, is_guarded
from _oracle import sdpa_numpy
from _tolerances import assert_close

from conftest import SUPPORTED_ISAS as LEVELS   # (bfloat16's native pairs: test_bf16_pairs.py)
DTYPES = {"f32": np.float32, "f64": np.float64, "f16": np.float16}
try:   # bfloat16 (the test extra installs ml_dtypes): widened on these levels, pairs on bf16 ones
    import ml_dtypes
    DTYPES["bf16"] = ml_dtypes.bfloat16
except ImportError:
    pass
WHERE = ["end", "start"]
# key lengths at and around the key blocks (126/128/132/256), the split
# threshold (1024) and chunk lengths (multiples of the block)
KEY_LENGTHS = [1, 2, 3, 5, 8, 15, 16, 17, 31, 33, 63, 64, 65, 127, 128, 129, 131, 132, 133, 255,
               256, 257, 263, 383, 511, 513, 1023, 1024, 1025, 1100, 1537]
SDPA = attncore.scaled_dot_product_attention


@pytest.fixture(params=LEVELS)
def level(request):
    with _config.use_isa(request.param):
        yield request.param


def tol_dtype(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def rand(rng, shape, dtype, where, scale=1.0):
    return guarded_copy((rng.standard_normal(shape) * scale).astype(dtype), where)


def check(out, ref, dtype, scale=1.0):
    """Half-precision results round to 2^-11 (float16) or 2^-8 (bfloat16);
    float32/64 use the table."""
    out = np.asarray(out, np.float64)
    if dtype == np.float16:
        np.testing.assert_allclose(out, ref, rtol=2e-3, atol=2e-3 * scale)
    elif np.dtype(dtype).name == "bfloat16":
        np.testing.assert_allclose(out, ref, rtol=1.6e-2, atol=1.6e-2 * scale)
    else:
        assert_close(out, ref, "sdpa", tol_dtype(dtype), scale=scale)


def sdpa_guarded(rng, dtype, where, B, Hq, Hkv, Lq, Lk, D, Dv, mask=None, causal=False,
                 valid_lens=None, weights=False, lse=False):
    """One guarded SDPA call checked against the float64 formula; returns its plan."""
    q = rand(rng, (B, Hq, Lq, D), dtype, where)
    k = rand(rng, (B, Hkv, Lk, D), dtype, where)
    v = rand(rng, (B, Hkv, Lk, Dv), dtype, where)
    kw = dict(enable_gqa=True)
    ref_mask = None
    if mask == "bool":
        m = rng.random((B, Hq, Lq, Lk)) > 0.3
        kw["attn_mask"] = ref_mask = guarded_copy(m, where)
    elif mask == "float":
        m = rng.standard_normal((1, Hq, Lq, Lk)).astype(dtype)
        kw["attn_mask"] = ref_mask = guarded_copy(m, where)
    if causal:
        kw["is_causal"] = "bottom_right"
    if valid_lens is not None:
        kw["valid_lens"] = guarded_copy(np.asarray(valid_lens, np.int64), where)
    plan = plan_info(SDPA, q, k, v, return_weights=weights, return_lse=lse, **kw)
    with guarded_allocations(), every_kernel_array_guarded():
        res = SDPA(q, k, v, return_weights=weights, return_lse=lse, **kw)
    out = res[0] if isinstance(res, tuple) else res
    ref, ref_w, ref_lse = sdpa_numpy(q, k, v, mask=ref_mask, causal_offset=Lk - Lq if causal else None,
                                     valid_lens=kw.get("valid_lens"))
    check(out, ref, dtype)
    if weights:
        check(res[1], ref_w, dtype)
    return plan


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("where", WHERE)
def test_head_sizes_1_to_300(level, dtype, where):
    """D and Dv from 1 to 300, the other sizes rotating through query rows,
    GQA groups, key lengths, masks, causal, weights and lse."""
    dtype = DTYPES[dtype]
    rng = np.random.default_rng(300)
    paths = set()
    for D in range(1, 301):
        Dv = D if D % 2 == 0 else (D * 7) % 300 + 1
        G = 1 + D % 8
        Lq = 1 + (D // 8) % 9
        Lk = KEY_LENGTHS[D % len(KEY_LENGTHS)]
        weights = D % 4 == 0
        if Lk >= 1024:   # decode rows whose keys split into chunks (no weights)
            G, Lq, weights = 1, 1, False
        plan = sdpa_guarded(rng, dtype, where, 1, G, 1, Lq, Lk, D, Dv,
                            mask=[None, "bool", "float"][D % 3], causal=D % 5 == 0,
                            weights=weights, lse=D % 4 == 1)
        paths.add((plan["path"], plan["chunks"] > 1))
    assert {("panel", False), ("rows", False), ("rows", True)} <= paths, paths


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("where", WHERE)
def test_gqa_groups_and_query_rows(level, dtype, where):
    """GQA groups 1..8 x query rows 1..9 (both paths on every level, rows
    stacked across the group), head sizes around vector and tile edges."""
    dtype = DTYPES[dtype]
    rng = np.random.default_rng(72)
    heads = [1, 7, 16, 17, 30, 63, 64, 80, 127, 129]
    paths = set()
    for G in range(1, 9):
        for Lq in range(1, 10):
            n = G * 9 + Lq
            D = heads[n % len(heads)]
            Lk = KEY_LENGTHS[n % len(KEY_LENGTHS)]
            plan = sdpa_guarded(rng, dtype, where, 2, 2 * G, 2, Lq, Lk, D, heads[(n + 3) % len(heads)],
                                mask="bool" if n % 4 == 0 else None, causal=n % 3 == 0)
            paths.add(plan["path"])
    assert paths == {"panel", "rows"}


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("Lk", [1024, 1025, 1539, 2047, 4100])
def test_split_k_chunk_edges(level, dtype, where, Lk):
    """Decode shapes whose keys are split into chunks (no weights: they turn
    the split off), with valid lengths, masks and causal limits that end
    inside and between chunks."""
    dtype = DTYPES[dtype]
    rng = np.random.default_rng(Lk)
    for n, (D, Dv) in enumerate([(1, 1), (3, 5), (30, 30), (64, 64), (130, 61), (256, 255)]):
        plan = sdpa_guarded(rng, dtype, where, 2, 2, 1, 1, Lk, D, Dv,
                            mask=[None, "bool", "float"][n % 3], causal=n % 2 == 1,
                            valid_lens=[Lk - 1 - 513 * n % Lk, (Lk // 3) * (n % 3)], lse=True)
        assert plan["chunks"] > 1 and plan["path"] == "rows", plan


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("where", WHERE)
def test_value_tiles_edges(level, dtype, where):
    """Enough query panels per kv head that each thread stages V in column
    tiles (value_tiles): value widths around the levels' tile widths (4, 6,
    8) and vector widths, key counts across blocks, masks and causal."""
    dtype = DTYPES[dtype]
    rng = np.random.default_rng(8)
    for n, Dv in enumerate([1, 5, 6, 7, 8, 9, 12, 17, 33, 64, 100]):
        plan = sdpa_guarded(rng, dtype, where, 1, 2, 1, 70, [129, 300, 133][n % 3], [3, 16, 64][n % 3], Dv,
                            mask=[None, "bool"][n % 2], causal=n % 3 == 1)
        assert plan["path"] == "panel" and plan["value_tiles"], plan


@pytest.mark.parametrize("where", WHERE)
def test_value_tiles_int8_cache(level, where):
    """A long query block over an int8 KVCache stages V in column tiles
    with the scales applied; the storage and scales border guard pages."""
    rng = np.random.default_rng(9)
    for Dv in (7, 40):
        k = rng.standard_normal((1, 1, 260, Dv), dtype=np.float32)
        v = rng.standard_normal((1, 1, 260, Dv), dtype=np.float32)
        q = guarded_copy(rng.standard_normal((1, 2, 70, Dv), dtype=np.float32), where)
        with guarded_allocations():
            cache = attncore.KVCache(260, 1, Dv, dtype="int8")
            cache.append(k, v)
            with every_kernel_array_guarded():
                out = cache.attend(q)
        plan = plan_info(cache.attend, q)
        assert plan["path"] == "panel" and plan["value_tiles"], plan
        kd, vd = cache.keys.astype(np.float64), cache.values.astype(np.float64)
        ref = sdpa_numpy(q, kd, vd, causal_offset=260 - 70)[0]
        assert_close(out, ref, "sdpa", np.float32)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_reversed_and_strided_views(level, dtype):
    """Views that run backwards through memory (negative strides) with the
    guard before the buffer: the kernels walk from element 0 at the end of
    the memory towards its start. Masks read through a transposed view."""
    dtype = DTYPES[dtype]
    rng = np.random.default_rng(5)
    for Lq, Lk, D in [(1, 300, 17), (5, 129, 64), (40, 257, 33), (3, 1100, 8)]:
        q = rand(rng, (2, 2, Lq, D), dtype, "start")[:, :, ::-1]
        k = rand(rng, (2, 2, Lk, D), dtype, "start")[:, ::-1, ::-1]
        v = rand(rng, (2, 2, Lk, D), dtype, "start")[::-1]
        m = guarded_copy(rng.random((Lk, Lq)) > 0.2, "start").T     # (Lq, Lk), strided
        with guarded_allocations():
            out = SDPA(q, k, v, attn_mask=m)
        check(out, sdpa_numpy(q, k, v, mask=m)[0], dtype)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("form", ["product", "tanh"])
def test_additive_forms(level, dtype, where, form):
    """Both additive score forms, with every weight guarded."""
    dtype = DTYPES[dtype]
    rng = np.random.default_rng(9)
    magnitude = 1.0 if form == "product" else 400.0   # |Qp| past the product form's range
    for H, Lq, Lk, Dq, Dk, Dv in [(1, 1, 5, 3, 2, 1), (3, 33, 70, 6, 4, 5), (16, 5, 129, 16, 17, 9),
                                 (33, 40, 133, 8, 8, 64), (100, 3, 300, 30, 20, 7)]:
        q = rand(rng, (2, 1, Lq, Dq), dtype, where)
        k = rand(rng, (2, 1, Lk, Dk), dtype, where)
        v = rand(rng, (2, 1, Lk, Dv), dtype, where)
        Wq = rand(rng, (H, Dq), dtype, where, magnitude / np.sqrt(Dq))
        Wk = rand(rng, (H, Dk), dtype, where, 1 / np.sqrt(Dk))
        w, b = rand(rng, (H,), dtype, where), rand(rng, (H,), dtype, where)
        plan = plan_info(attncore.additive_attention, q, k, v, Wq, Wk, w, b)
        assert plan["additive_form"] == form, plan
        with guarded_allocations(), every_kernel_array_guarded():
            out, wts = attncore.additive_attention(q, k, v, Wq, Wk, w, b, return_weights=True,
                                                   valid_lens=guarded_copy(np.array([Lk, Lk // 2]), where))
        q64, k64 = np.asarray(q, np.float64), np.asarray(k, np.float64)
        s = np.tanh((q64 @ np.asarray(Wq, np.float64).T + b)[..., :, None, :]
                    + (k64 @ np.asarray(Wk, np.float64).T)[..., None, :, :]) @ np.asarray(w, np.float64)
        s[1, ..., Lk // 2:] = -np.inf
        p = np.exp(s - s.max(-1, keepdims=True))
        ref = (p / p.sum(-1, keepdims=True)) @ np.asarray(v, np.float64)
        check(out, ref, dtype, scale=np.sqrt(H))


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("where", WHERE)
def test_gemm_edges(level, dtype, where):
    """The projections' GEMM on each of its paths, asserted through its plan:
    the few-row dot-product path (M <= 32, W's rows contiguous), the packed
    path with W packed by register transposes, and with W strided along K
    (packed element by element); N and K across panel, tile and k-block
    edges."""
    dtype = DTYPES[dtype]
    rng = np.random.default_rng(11)
    cases = [(1, 1, 1, "rows"), (1, 7, 5, "rows"), (3, 16, 17, "rows"), (32, 33, 64, "rows"),
             (1, 7, 5, "packed-strided"), (32, 33, 64, "packed-strided"),
             (33, 64, 300, "packed"), (40, 100, 513, "packed"), (97, 31, 1030, "packed"),
             (128, 65, 16, "packed"), (33, 64, 300, "packed-strided"), (97, 31, 1030, "packed-strided")]
    for n, (M, N, K, path) in enumerate(cases):
        x = rand(rng, (M, K), dtype, where)
        w = rand(rng, (K, N), dtype, where).T if path == "packed-strided" else rand(rng, (N, K), dtype, where)
        bias = rand(rng, (N,), dtype, where) if n % 3 else None
        plan = _linalg.linear(x, w, bias, plan_only=True)
        assert plan["path"] == path, (M, N, K, plan)
        with guarded_allocations(), every_kernel_array_guarded():
            y = _linalg.linear(x, w, bias)
        ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T + (0 if bias is None else bias)
        check(y, ref, dtype, scale=np.sqrt(K))


@pytest.mark.parametrize("where", WHERE)
def test_general_concat_and_mha(level, where):
    rng = np.random.default_rng(13)
    dtype = np.float32
    q, k, v = rand(rng, (2, 3, 9, 6), dtype, where), rand(rng, (2, 3, 130, 4), dtype, where), \
        rand(rng, (2, 3, 130, 5), dtype, where)
    W = rand(rng, (6, 4), dtype, where, 0.3)
    with guarded_allocations(), every_kernel_array_guarded():
        out = attncore.general_attention(q, k, v, W, is_causal=True)
    check(out, sdpa_numpy(np.asarray(q, np.float64) @ W, k, v, causal_offset=0, scale=1.0)[0], dtype)
    wq, wk = rand(rng, (6,), dtype, where), rand(rng, (4,), dtype, where)
    with guarded_allocations(), every_kernel_array_guarded():
        out = attncore.concat_attention(q, k, v, wq, wk, 0.5)
    s = (np.asarray(k, np.float64) @ wk)[:, :, None, :] + np.zeros((1, 1, 9, 1))
    p = np.exp(s - s.max(-1, keepdims=True))
    check(out, (p / p.sum(-1, keepdims=True)) @ np.asarray(v, np.float64), dtype)

    # MultiHeadAttention: guarded parameters, inputs, outputs and KV cache
    # (max_len = the final length, so the cache's last row borders a guard)
    with guarded_allocations():
        m = attncore.MultiHeadAttention(48, 6, num_kv_heads=2, seed=1).eval()
        for name, value in m.state_dict().items():
            arr = guarded_copy(value, where)
            if name.startswith("out_proj."):
                setattr(m.out_proj, name.split(".")[1], arr)
            else:
                setattr(m, name, arr)
        x = rand(rng, (2, 7, 48), dtype, where)
        full, _ = m(x, is_causal=True)
        cache = attncore.KVCache(max_len=7, num_heads=2, head_dim=8)
        steps = [m(x[:, :3], kv_cache=cache, need_weights=False)[0]]
        steps += [m(x[:, t:t + 1], kv_cache=cache, need_weights=False)[0] for t in range(3, 7)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)


def _same_bits_guarded(fn, arrays, where, **kw):
    """fn(*arrays, **kw) on guarded copies of the arrays (and guarded
    allocations, every array the kernels get checked) against the plain
    call: bitwise the same results (the kernels do not depend on layout)."""
    guarded_args = [None if a is None else guarded_copy(a, where) for a in arrays]
    with guarded_allocations(), every_kernel_array_guarded():
        got = fn(*guarded_args, **kw)
    want = fn(*arrays, **kw)
    got, want = (r if isinstance(r, tuple) else (r,) for r in (got, want))
    for g, w in zip(got, want):
        assert np.array_equal(np.asarray(g), np.asarray(w), equal_nan=True)


@pytest.mark.parametrize("where", WHERE)
def test_dropout_on_every_path(level, where):
    """Dropout (its keep mask drawn per weight) on the rows path with
    weights, the panel path with a half panel, and split rows with lse."""
    rng = np.random.default_rng(31)
    for Hq, Lq, Lk, kw, path in [(2, 1, 131, dict(return_weights=True), ("rows", False)),
                                 (2, 24, 140, dict(return_weights=True), ("panel", False)),
                                 (2, 1, 2100, dict(return_lse=True), ("rows", True))]:
        q = rng.standard_normal((1, Hq, Lq, 16), dtype=np.float32)
        k, v = (rng.standard_normal((1, 1, Lk, 16), dtype=np.float32) for _ in range(2))
        kw = dict(kw, dropout_p=0.3, seed=3, enable_gqa=True)
        plan = plan_info(SDPA, q, k, v, **kw)
        assert (plan["path"], plan["chunks"] > 1) == path, plan
        _same_bits_guarded(SDPA, (q, k, v), where, **kw)


@pytest.mark.parametrize("where", WHERE)
def test_hard_attention_modes(level, where):
    """hard_attention's selection (argmax, topk with k past some rows' key
    counts, seeded sample) with valid lengths that leave a row no key, and
    the indices it returns."""
    rng = np.random.default_rng(32)
    q = rng.standard_normal((2, 2, 3, 8), dtype=np.float32)
    k, v = (rng.standard_normal((2, 2, 50, 8), dtype=np.float32) for _ in range(2))
    lens = np.array([0, 50])
    for mode, kk in (("argmax", 1), ("topk", 3), ("topk", 64), ("sample", 2)):
        _same_bits_guarded(lambda q, k, v, lens: attncore.hard_attention(
            q, k, v, mode=mode, k=kk, seed=5, return_indices=True, valid_lens=lens), (q, k, v, lens), where)


VARLEN_DTYPES = {"f32": np.float32, "f64": np.float64, "f16": np.float16}
try:
    import ml_dtypes
    VARLEN_DTYPES["bf16"] = ml_dtypes.bfloat16
except ImportError:   # (the test extra installs it)
    pass


@pytest.mark.parametrize("dtype", list(VARLEN_DTYPES), ids=list(VARLEN_DTYPES))
@pytest.mark.parametrize("where", WHERE)
def test_packed_sequences(level, dtype, where):
    """cu_seqlens: packed sequences (an empty one among them) on the panel
    path, and decode rows whose keys split into chunks, with lse."""
    dtype = VARLEN_DTYPES[dtype]
    rng = np.random.default_rng(33)
    for Hq, Hkv, cq, ck, path in [(4, 2, [0, 30, 31, 100], [0, 50, 50, 300], ("panel", False)),
                                  (2, 2, [0, 1, 2, 3], [0, 1100, 2200, 3000], ("rows", True))]:
        q = rng.standard_normal((Hq, cq[-1], 16)).astype(dtype)
        k, v = (rng.standard_normal((Hkv, ck[-1], 16)).astype(dtype) for _ in range(2))
        cu = dict(cu_seqlens_q=np.array(cq), cu_seqlens_k=np.array(ck), enable_gqa=True,
                  is_causal="bottom_right", return_lse=True)
        plan = plan_info(SDPA, q, k, v, **cu)
        assert (plan["path"], plan["chunks"] > 1) == path, plan
        _same_bits_guarded(lambda q, k, v, a, b: SDPA(q, k, v, **dict(cu, cu_seqlens_q=a, cu_seqlens_k=b)),
                           (q, k, v, cu["cu_seqlens_q"], cu["cu_seqlens_k"]), where)


@pytest.mark.parametrize("where", WHERE)
def test_group_panels(level, where):
    """Query panels of a GQA group packed together (group_panels > 1: one
    thread, few rows per head) with a mask, weights, dropout and a window."""
    rng = np.random.default_rng(34)
    for Lq in (40, 64, 70):
        q = rng.standard_normal((1, 2, Lq, 128), dtype=np.float32)
        k = rng.standard_normal((1, 1, 1000, 128), dtype=np.float32)
        v = rng.standard_normal((1, 1, 1000, 120), dtype=np.float32)
        mask = rng.random((Lq, 1000)) > 0.1
        kw = dict(enable_gqa=True, num_threads=1, return_weights=Lq == 64, window=(700, 0),
                  dropout_p=0.2 if Lq == 70 else 0.0, seed=1)
        plan = plan_info(SDPA, q, k, v, attn_mask=mask, **kw)
        assert plan["group_panels"] > 1 and plan["chunks"] == 1, plan
        _same_bits_guarded(lambda q, k, v, m: SDPA(q, k, v, attn_mask=m, **kw), (q, k, v, mask), where)


@pytest.mark.parametrize("where", WHERE)
def test_split_keys_of_the_additive_and_sigmoid_families(level, where):
    """The additive family (both score forms) and sigmoid attention over
    keys split into chunks (their partial results merged), no weights."""
    rng = np.random.default_rng(35)
    q = rng.standard_normal((2, 1, 1, 6), dtype=np.float32)
    k, v = (rng.standard_normal((2, 1, 2100, 6), dtype=np.float32) for _ in range(2))
    Wk = rng.standard_normal((4, 6), dtype=np.float32)
    w = rng.standard_normal(4, dtype=np.float32)
    for form, magnitude in (("product", 1.0), ("tanh", 400.0)):
        Wq = rng.standard_normal((4, 6), dtype=np.float32) * magnitude
        plan = plan_info(attncore.additive_attention, q, k, v, Wq, Wk, w)
        assert plan["additive_form"] == form and plan["chunks"] > 1, plan
        _same_bits_guarded(attncore.additive_attention, (q, k, v, Wq, Wk, w), where, return_lse=True)
    q = rng.standard_normal((1, 2, 1, 16), dtype=np.float32)
    k = rng.standard_normal((1, 2, 2100, 16), dtype=np.float32)
    plan = plan_info(attncore.sigmoid_attention, q, k, k)
    assert plan["chunks"] > 1, plan
    _same_bits_guarded(attncore.sigmoid_attention, (q, k, k), where, bias=-2.0)


def test_the_common_calls_outputs_and_lengths_are_guarded_too():
    """The fast path (attncore._core.sdpa_fast: no weights, lse or dropout)
    allocates its output itself, and the general path reads bool masks'
    row lengths into a buffer of _core's: guarded_allocations places both
    next to guard pages, so the sweeps above guard every kernel write."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 4, 70, 16), dtype=np.float32)
    mask = np.ones((2, 1, 70, 70), bool)
    mask[..., 50:] = False
    seen, fast_results = [], []
    real, real_fast = _core.bool_mask_lengths, _core.sdpa_fast

    def lengths(*args):
        seen.append(real(*args))
        return seen[-1]

    def fast_path(*args, **kwargs):
        fast_results.append(real_fast(*args, **kwargs))
        return fast_results[-1]

    with guarded_allocations():
        _core.sdpa_fast = fast_path
        try:
            fast = SDPA(q, q, q)
            fast_masked = SDPA(q, q, q, attn_mask=mask)
        finally:
            _core.sdpa_fast = real_fast
        _core.bool_mask_lengths = lengths
        try:
            general = SDPA(q, q, q, attn_mask=mask, return_lse=True)[0]
        finally:
            _core.bool_mask_lengths = real
    assert len(fast_results) == 2 and fast_results[0] is fast and fast_results[1] is fast_masked
    assert is_guarded(fast) and is_guarded(fast_masked) and is_guarded(general)
    assert len(seen) == 1 and seen[0] is not None and is_guarded(seen[0])
    assert np.array_equal(fast_masked, general)
    assert not is_guarded(SDPA(q, q, q))   # (and only inside the context)


def test_the_guard_page_is_unreadable():
    """The harness itself: reading one byte past a guarded array kills the
    process (so the tests above would catch an over-read)."""
    code = ("import ctypes, sys; sys.path.insert(0, %r); from _guard import guarded; "
            "a = guarded((10,), 'float32'); a[:] = 1; print('read', a.sum(), flush=True); "
            "ctypes.string_at(a.ctypes.data + a.nbytes, 1)" % __import__("os").path.dirname(__file__))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "read 10.0" in r.stdout
    assert r.returncode == -11, (r.returncode, r.stderr)   # SIGSEGV
