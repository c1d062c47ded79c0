"""attncore.dask: key-sharded attention on a Dask cluster (sharded_attention)
and batch-parallel attention on dask arrays (attention), against the
single-process scaled_dot_product_attention.

One LocalCluster (2 worker processes, 1 thread each) serves the module; it is
not the default client, so calls with client=None run on dask's in-process
scheduler (the cheap way to cover many shard layouts).
"""
import doctest
import importlib

import numpy as np
import pytest

dask = pytest.importorskip("dask", reason="dask not installed (pip install '.[dask]')")
distributed = pytest.importorskip("distributed",
                                  reason="dask.distributed not installed (pip install '.[dask]')")
import dask.array as da  # noqa: E402

import attncore  # noqa: E402
import attncore.dask as ad  # noqa: E402
from attncore import _config  # noqa: E402
from conftest import pairs_active  # noqa: E402

from _tolerances import assert_close  # noqa: E402

SDPA = attncore.scaled_dot_product_attention


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                       dashboard_address=":0", silence_logs=40)
    c = distributed.Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def problem(rng, dtype, Lq=7, Lk=13, Hq=3, Hkv=3, B=(2,), D=8, Dv=5):
    return (randn(rng, B + (Hq, Lq, D), dtype), randn(rng, B + (Hkv, Lk, D), dtype),
            randn(rng, B + (Hkv, Lk, Dv), dtype))


def check(got, want, dtype):
    out, lse = got
    ref, ref_lse = want
    assert out.dtype == ref.dtype and lse.dtype == ref_lse.dtype
    assert out.shape == ref.shape and lse.shape == ref_lse.shape
    assert_close(out, ref.astype(np.float64), "merge", dtype)
    assert_close(lse, ref_lse.astype(np.float64), "merge", dtype)   # -inf where ref is -inf


# name -> (problem kwargs, sdpa kwargs builder(rng, dtype, Lq, Lk))
CASES = {
    "plain": ({}, lambda r, dt: {}),
    "causal-top_left": ({}, lambda r, dt: {"is_causal": True}),
    "causal-top_left-Lq>Lk": ({"Lq": 13, "Lk": 7}, lambda r, dt: {"is_causal": "top_left"}),
    "causal-bottom_right": ({}, lambda r, dt: {"is_causal": "bottom_right"}),
    "causal-bottom_right-Lq>Lk": ({"Lq": 13, "Lk": 7}, lambda r, dt: {"is_causal": "bottom_right"}),
    "bool-mask-full": ({}, lambda r, dt: {"attn_mask": r.random((2, 3, 7, 13)) > 0.3}),
    "bool-mask-broadcast": ({}, lambda r, dt: {"attn_mask": r.random((1, 3, 1, 13)) > 0.4}),
    "bool-mask-no-key-axis": ({}, lambda r, dt: {"attn_mask": r.random((7, 1)) > 0.3}),
    "float-mask-keys": ({}, lambda r, dt: {"attn_mask": np.where(
        r.random(13) > 0.3, r.standard_normal(13), -np.inf).astype(dt)}),
    "float-mask-broadcast+causal": ({}, lambda r, dt: {"attn_mask": np.where(
        r.random((2, 1, 7, 13)) > 0.2, r.standard_normal((2, 1, 7, 13)), -np.inf).astype(dt),
        "is_causal": "bottom_right"}),
    "bool-mask+causal": ({}, lambda r, dt: {"attn_mask": r.random((2, 3, 7, 13)) > 0.3,
                                            "is_causal": True}),
    "valid_lens-batch": ({}, lambda r, dt: {"valid_lens": np.array([13, 4])}),
    "valid_lens-rows+causal": ({}, lambda r, dt: {"valid_lens": r.integers(0, 14, (2, 7)),
                                                  "is_causal": "bottom_right"}),
    "valid_lens-rows+mask": ({}, lambda r, dt: {"valid_lens": r.integers(0, 14, (1, 7)),
                                                "attn_mask": r.random((7, 13)) > 0.2}),
    "gqa+causal": ({"Hq": 6, "Hkv": 2}, lambda r, dt: {"enable_gqa": True,
                                                      "is_causal": "bottom_right"}),
    "gqa+scale+mask": ({"Hq": 6, "Hkv": 3}, lambda r, dt: {
        "enable_gqa": True, "scale": 0.3, "attn_mask": r.random((6, 1, 13)) > 0.5}),
    "2d-causal": ({"B": (), "Hq": None}, lambda r, dt: {"is_causal": "bottom_right"}),
    "3d-d2l-valid_lens": ({"B": (), "Hq": 4, "Hkv": 4}, lambda r, dt: {
        "valid_lens": np.array([1, 13, 0, 6]), "is_causal": True}),
}


def make(name, dtype, seed=0):
    pk, kw = CASES[name]
    rng = np.random.default_rng(seed)
    pk = dict(pk)
    if pk.get("Hq", 0) is None:        # 2-D (L, D) inputs
        q, k, v = randn(rng, (7, 8), dtype), randn(rng, (13, 8), dtype), randn(rng, (13, 5), dtype)
    else:
        q, k, v = problem(rng, dtype, **pk)
    return q, k, v, kw(rng, dtype)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_in_process_all_shard_counts(name, dtype):
    """client=None (dask's synchronous scheduler), shards 1..5 and beyond Lk."""
    q, k, v, kw = make(name, dtype)
    want = SDPA(q, k, v, return_lse=True, **kw)
    for shards in (1, 2, 3, 4, 5, 20):
        got = ad.sharded_attention(q, k, v, shards=shards, return_lse=True, **kw)
        check(got, want, dtype)


@pytest.mark.parametrize("name", ["plain", "causal-top_left", "causal-bottom_right-Lq>Lk",
                                  "bool-mask-broadcast", "float-mask-broadcast+causal",
                                  "valid_lens-rows+causal", "gqa+causal", "2d-causal"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_cluster_matches_single_process(client, name, dtype):
    q, k, v, kw = make(name, dtype, seed=1)
    want = SDPA(q, k, v, return_lse=True, **kw)
    for shards in (None, 3, 5):     # None: one shard per worker
        check(ad.sharded_attention(q, k, v, client=client, shards=shards, return_lse=True, **kw),
              want, dtype)


def test_cluster_returns_what_sdpa_returns(client):
    q, k, v, _ = make("plain", np.float32)
    out = ad.sharded_attention(q, k, v, client=client)
    assert isinstance(out, np.ndarray) and out.shape == q.shape[:-1] + (5,)
    assert_close(out, SDPA(q, k, v).astype(np.float64), "merge", np.float32)
    buf = np.empty_like(out)
    res = ad.sharded_attention(q, k, v, client=client, out=buf)
    assert res is buf and np.array_equal(buf, out)


def test_exhaustive_causal_offsets_in_process():
    """Every causal alignment against every way to cut a short key range."""
    rng = np.random.default_rng(3)
    for Lq in (1, 2, 5, 9):
        for Lk in (1, 2, 5, 9):
            q, k, v = problem(rng, np.float64, Lq=Lq, Lk=Lk, B=(1,), Hq=2, Hkv=2, D=4, Dv=3)
            for causal in (True, "bottom_right"):
                want = SDPA(q, k, v, is_causal=causal, return_lse=True)
                for shards in range(1, Lk + 1):
                    check(ad.sharded_attention(q, k, v, shards=shards, is_causal=causal,
                                               return_lse=True), want, np.float64)


def test_partials_merge_in_a_tree_on_the_workers(client):
    """5 shards: 5 partial tasks and 4 pairwise merges, all run by workers; the
    shards are spread over both workers."""
    q, k, v, kw = make("causal-bottom_right", np.float32, seed=2)
    with distributed.get_task_stream(client=client) as ts:
        out = ad.sharded_attention(q, k, v, client=client, shards=5, **kw)
    names = [t["key"] for t in ts.data]
    names = [n if isinstance(n, str) else n[0] for n in names]
    partial = [t for t, n in zip(ts.data, names) if n.startswith("attncore-shard-")]
    merges = [n for n in names if n.startswith("attncore-merge-")]
    assert len(partial) == 5 and len(merges) == 4
    assert len({t["worker"] for t in partial}) == 2
    assert_close(out, SDPA(q, k, v, **kw).astype(np.float64), "merge", np.float32)


def test_one_shard_non_causal_is_bitwise(client):
    q, k, v, kw = make("bool-mask-full", np.float32)
    out, lse = ad.sharded_attention(q, k, v, client=client, shards=1, return_lse=True, **kw)
    ref, ref_lse = SDPA(q, k, v, return_lse=True, **kw)
    assert np.array_equal(out, ref) and np.array_equal(lse, ref_lse)


def test_shards_beyond_keys_and_empty_keys(client):
    rng = np.random.default_rng(4)
    q, k, v = problem(rng, np.float32, Lk=3)
    want = SDPA(q, k, v, return_lse=True, is_causal="bottom_right")
    check(ad.sharded_attention(q, k, v, client=client, shards=5, return_lse=True,
                               is_causal="bottom_right"), want, np.float32)
    q, k, v = problem(rng, np.float32, Lk=0)
    out, lse = ad.sharded_attention(q, k, v, client=client, shards=4, return_lse=True)
    assert (out == 0).all() and np.isneginf(lse).all() and out.shape == (2, 3, 7, 5)


def test_float16_keeps_sdpa_dtypes():
    rng = np.random.default_rng(5)
    q, k, v = problem(rng, np.float16)
    out, lse = ad.sharded_attention(q, k, v, shards=3, return_lse=True, is_causal=True)
    ref, ref_lse = SDPA(q, k, v, return_lse=True, is_causal=True)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    np.testing.assert_allclose(out.astype(np.float32), ref.astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(lse, ref_lse, atol=1e-5)


@pytest.mark.parametrize("half", ["bfloat16", "float16"])
def test_16bit_inputs_are_rounded_once_after_the_merge(half):
    # docs/numerics.md (4): a 16-bit result is the float32 one rounded once. The
    # shards' partials used to come back rounded to the 16-bit type, and the
    # merge cancels them: small outputs came out with the wrong sign
    ml_dtypes = pytest.importorskip("ml_dtypes") if half == "bfloat16" else None
    dt = ml_dtypes.bfloat16 if half == "bfloat16" else np.float16
    unit = 2.0 ** -8 if half == "bfloat16" else 2.0 ** -11
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s).astype(dt) for s in ((1, 2, 16, 32), (1, 2, 1024, 32),
                                                              (1, 2, 1024, 32)))
    mask = rng.standard_normal((16, 1024)).astype(dt)    # a float mask of the inputs' type
    exact = SDPA(*(a.astype(np.float64) for a in (q, k, v)), attn_mask=mask.astype(np.float64))
    # (a native-pairs level rounds bfloat16 weights before P V, (4b): the bound
    # below is the widening levels')
    level = "avx512" if pairs_active() else _config.active_isa_name()
    with _config.use_isa(level):
        out = ad.sharded_attention(q, k, v, attn_mask=mask, shards=4)
        # the partials are float32 with no copy of K/V: the float32 SDPA's own bits
        part = ad._shard_partial(q, k[..., :300, :], v[..., :300, :], mask[:, :300].astype(np.float32),
                                 None, False, 0, 0, 0, {})
        want = SDPA(*(a.astype(np.float32) for a in (q, k[..., :300, :], v[..., :300, :])),
                    attn_mask=mask[:, :300].astype(np.float32), return_lse=True)
    assert part[0].dtype == np.float32
    np.testing.assert_array_equal(part[0], want[0])
    np.testing.assert_array_equal(part[1], want[1])
    assert out.dtype == dt
    err = np.abs(out.astype(np.float64) - exact)
    # one rounding of a float32 result that is itself within 1e-6 of exact
    assert (err <= unit * np.abs(exact) + 1e-6).all(), err.max()


def test_a_3d_query_s_valid_lens_reading_does_not_depend_on_the_batch_chunks():
    # the reading is the whole call's: B=4 != H=2 is d2l's one length per head in
    # every block (blocks of 2 used to call it ambiguous), B == H is refused whole
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 5, 4)).astype(np.float32)
    k = rng.standard_normal((4, 2, 7, 4)).astype(np.float32)
    lens = np.array([3, 6])
    want = SDPA(q, k, k, valid_lens=lens)
    for chunk in (1, 2, 4):
        dk = da.from_array(k, chunks=(chunk, 2, 7, 4))
        got = ad.attention(q, dk, dk, valid_lens=lens).compute(scheduler="sync")
        np.testing.assert_array_equal(got, want)
    for chunk in (1, 2):
        dk = da.from_array(k[:2], chunks=(chunk, 2, 7, 4))
        with pytest.raises(ValueError, match=r"attention: valid_lens of shape \(2,\) could be read "
                                             r"two ways"):
            ad.attention(q, dk, dk, valid_lens=lens)


def test_prescattered_futures_stay_put(client):
    """K/V already on the cluster: a list of futures, one per shard."""
    rng = np.random.default_rng(6)
    q, k, v = problem(rng, np.float64, Lk=20, Hq=6, Hkv=2)
    cuts = [0, 4, 11, 20]
    workers = sorted(client.nthreads())
    kf, vf = [], []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        w = workers[i % len(workers)]
        kf.append(client.scatter(k[..., a:b, :], workers=[w]))
        vf.append(client.scatter(v[..., a:b, :], workers=[w]))
    mask = rng.random((2, 6, 7, 20)) > 0.3
    kw = dict(enable_gqa=True, is_causal="bottom_right", attn_mask=mask,
              valid_lens=np.array([20, 9]))
    want = SDPA(q, k, v, return_lse=True, **kw)
    got = ad.sharded_attention(q, kf, vf, return_lse=True, **kw)   # the futures' client
    check(got, want, np.float64)
    before = {f.key: set(w) for f, w in zip(kf, [client.who_has([f])[f.key] for f in kf])}
    ad.sharded_attention(q, kf, vf, client=client, **kw)
    after = {f.key: set(client.who_has([f])[f.key]) for f in kf}
    assert before == after   # the shards were not copied elsewhere
    with pytest.raises(ValueError, match="shards=2 but key/value are given as 3 shards"):
        ad.sharded_attention(q, kf, vf, shards=2)
    with pytest.raises(ValueError, match="key has 3 shards but value has 2"):
        ad.sharded_attention(q, kf, vf[:2])


def test_scatter_shards(client):
    rng = np.random.default_rng(12)
    q, k, v = problem(rng, np.float32, Lk=11)
    ks, vs = ad.scatter_shards(k, v, client=client, shards=3)
    assert [f.result().shape[-2] for f in ks] == [4, 4, 3] and len(vs) == 3
    homes = [sorted(client.who_has([f])[f.key]) for f in ks]
    assert homes == [sorted(client.who_has([f])[f.key]) for f in vs]   # k_i with v_i
    assert len({h[0] for h in homes}) == 2
    kw = dict(is_causal=True, attn_mask=rng.random((7, 11)) > 0.3)
    check(ad.sharded_attention(q, ks, vs, return_lse=True, **kw), SDPA(q, k, v, return_lse=True,
                                                                       **kw), np.float32)
    with pytest.raises(ValueError, match="scatter_shards: no Dask client"):
        ad.scatter_shards(k, v)
    with pytest.raises(TypeError, match="scatter_shards: key and value must be arrays"):
        ad.scatter_shards(da.from_array(k), da.from_array(v), client=client)
    with pytest.raises(ValueError, match="scatter_shards: key and value must have the same"):
        ad.scatter_shards(k, v[..., :5, :], client=client)
    # (the checks' one-row query is cut from key: errors named a query the caller never passed)
    with pytest.raises(TypeError, match="scatter_shards: key must be float32 or float64"):
        ad.scatter_shards(k.astype(np.int64), v.astype(np.int64), client=client)
    with pytest.raises(TypeError, match=r"scatter_shards: mixed dtypes \(key=float32, value=float64\)"):
        ad.scatter_shards(k, v.astype(np.float64), client=client)


def test_dask_array_keys(client):
    rng = np.random.default_rng(7)
    q, k, v = problem(rng, np.float32, Lk=23)
    dk = da.from_array(k, chunks=(1, 3, 10, 8))       # 3 key chunks, 2 batch chunks
    dv = da.from_array(v, chunks=(2, 3, 10, 5))
    kw = dict(is_causal=True, attn_mask=rng.random((23,)) > 0.2)
    want = SDPA(q, k, v, return_lse=True, **kw)
    check(ad.sharded_attention(q, dk, dv, client=client, return_lse=True, **kw), want, np.float32)
    dk, dv = client.persist([dk, dv])
    check(ad.sharded_attention(q, dk, dv, client=client, shards=4, return_lse=True, **kw), want,
          np.float32)
    # persisted on the cluster: found through the arrays' futures without client=
    check(ad.sharded_attention(q, dk, dv, return_lse=True, **kw), want, np.float32)
    check(ad.sharded_attention(q, k, v, shards=3, return_lse=True, **kw), want, np.float32)
    parts = [(dk[..., a:b, :], dv[..., a:b, :]) for a, b in ((0, 5), (5, 23))]
    check(ad.sharded_attention(q, [p[0] for p in parts], [p[1] for p in parts], client=client,
                               return_lse=True, **kw), want, np.float32)


def test_sharded_errors(client):
    q, k, v, _ = make("plain", np.float32)
    with pytest.raises(ValueError, match="return_weights=True is not supported"):
        ad.sharded_attention(q, k, v, return_weights=True)
    with pytest.raises(ValueError, match="dropout_p=0.1 is not supported"):
        ad.sharded_attention(q, k, v, dropout_p=0.1, seed=0)
    with pytest.raises(TypeError, match="shards must be a positive int"):
        ad.sharded_attention(q, k, v, shards=2.0)
    with pytest.raises(ValueError, match="shards must be >= 1"):
        ad.sharded_attention(q, k, v, shards=0)
    with pytest.raises(TypeError, match="unexpected keyword argument.*causal"):
        ad.sharded_attention(q, k, v, causal=True)
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        ad.sharded_attention(q, k, v, client="tcp://nowhere")
    with pytest.raises(ValueError, match=r"sharded_attention: attn_mask of shape \(5,\)"):
        ad.sharded_attention(q, k, v, client=client, attn_mask=np.ones(5, bool))
    with pytest.raises(ValueError, match=r"sharded_attention: valid_lens must be in \[0, Lk=13\]"):
        ad.sharded_attention(q, k, v, valid_lens=np.array([14, 1]))
    with pytest.raises(ValueError, match=r"sharded_attention: is_causal must be"):
        ad.sharded_attention(q, k, v, is_causal="diagonal")
    with pytest.raises(TypeError, match="mixed dtypes"):
        ad.sharded_attention(q, k.astype(np.float64), v)
    with pytest.raises(TypeError, match="key and value must be given the same way"):
        ad.sharded_attention(q, da.from_array(k), v)
    with pytest.raises(TypeError, match="mixes Dask futures/arrays"):
        ad.sharded_attention(q, [da.from_array(k), k], [v, v])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_sharded_softcap_and_sinks(dtype):
    """softcap applies per shard; the sinks join the merged denominator once
    (a row that sees no key: zeros, lse = its head's sink). They were
    refused as unknown arguments (a user's review)."""
    rng = np.random.default_rng(21)
    q, k, v = problem(rng, dtype, Hq=4, Hkv=2)
    sinks = randn(rng, (4,), dtype)
    for kw in (dict(softcap=1.5), dict(sinks=sinks), dict(sinks=sinks[:1], softcap=3.0),
               dict(sinks=sinks, valid_lens=np.array([0, 9]), is_causal="bottom_right")):
        want = SDPA(q, k, v, enable_gqa=True, return_lse=True, **kw)
        for shards in (1, 2, 5):
            got = ad.sharded_attention(q, k, v, shards=shards, enable_gqa=True, return_lse=True, **kw)
            check(got, want, dtype)
    out, lse = ad.sharded_attention(q, k, v, shards=3, enable_gqa=True, return_lse=True, sinks=sinks,
                                    valid_lens=np.array([0, 9]))
    assert not out[0].any() and np.array_equal(lse[0], np.broadcast_to(sinks[:, None], (4, 7)))
    # a NaN sink is refused, as by the one call
    nan_sinks = sinks.copy()
    nan_sinks[1] = np.nan
    with pytest.raises(ValueError, match=r"sinks hold NaN \(heads \[1\]\)"):
        ad.sharded_attention(q, k, v, shards=3, enable_gqa=True, return_lse=True, sinks=nan_sinks,
                             valid_lens=np.array([0, 9]))


def test_sharded_refuses_what_counts_positions_on_the_full_range():
    q, k, v, _ = make("plain", np.float32)
    for unbounded in ((None, None), (-1, -1)):   # (no window: taken, as by the one call)
        assert np.array_equal(ad.sharded_attention(q, k, v, shards=3, window=unbounded),
                              ad.sharded_attention(q, k, v, shards=3))
    with pytest.raises(TypeError, match="window must be a pair"):
        ad.sharded_attention(q, k, v, window=3)
    for name, value, hint in (("window", (2, 0), "bool attn_mask"),
                              ("alibi_slopes", np.ones(3, np.float32), "float attn_mask"),
                              ("cu_seqlens_q", np.array([0, 7]), "per sequence")):
        with pytest.raises(ValueError, match=f"{name} is not supported: .*{hint}"):
            ad.sharded_attention(q, k, v, **{name: value})


@pytest.mark.parametrize("alibi", ["none", "heads", "batch", "dask-batch"])
def test_attention_window_softcap_sinks_alibi(alibi):
    """Batch-parallel attention passes SDPA's variants to every block, ALiBi
    slopes with batch dims sliced like the blocks; bitwise the one call."""
    rng = np.random.default_rng(22)
    q, k, v = problem(rng, np.float32, B=(6,), Hq=4, Hkv=2, Lq=5, Lk=40)
    dq, dk, dv = (da.from_array(x, chunks=(2,) + x.shape[1:]) for x in (q, k, v))
    slopes = rng.random((6, 4)).astype(np.float32)
    kw = dict(window=(5, 0), softcap=2.0, sinks=randn(rng, (4,), np.float32), enable_gqa=True,
              is_causal="bottom_right")
    if alibi != "none":
        kw["alibi_slopes"] = {"heads": slopes[0], "batch": slopes,
                              "dask-batch": da.from_array(slopes, chunks=(3, 4))}[alibi]
    out, lse = dask.compute(*ad.attention(dq, dk, dv, return_lse=True, **kw), scheduler="sync")
    plain = {n: (x.compute() if isinstance(x, da.Array) else x) for n, x in kw.items()}
    want, want_lse = SDPA(q, k, v, return_lse=True, **plain)
    assert np.array_equal(out, want) and np.array_equal(lse, want_lse)
    if alibi == "batch":   # (the bias differs per batch element: blocks must not share one)
        assert not np.array_equal(want, SDPA(q, k, v, **dict(plain, alibi_slopes=slopes[:1])))
    with pytest.raises(ValueError, match="attention: alibi_slopes"):
        ad.attention(dq, dk, dv, enable_gqa=True, alibi_slopes=np.ones((6, 3), np.float32))
    # slopes of another batch size: the whole call's check names them (dask's own
    # chunk error was all a user got: the one-element check cannot see batch dims)
    for bad in (np.ones((3, 4), np.float32), da.ones((3, 4), dtype=np.float32)):
        with pytest.raises(ValueError, match=r"attention: alibi_slopes of shape \(3, 4\) does not "
                                             r"broadcast to \(..., Hq\) = \(6, 4\)"):
            ad.attention(dq, dk, dv, enable_gqa=True, alibi_slopes=bad)


def test_worker_errors_reach_the_client(client):
    """A shard that is not an array fails on the worker; the client sees why."""
    q, k, v, _ = make("plain", np.float32)
    kf = [client.scatter(k), client.scatter("not an array")]
    with pytest.raises((TypeError, ValueError)):
        ad.sharded_attention(q, kf, [client.scatter(v), client.scatter(v)])


# --- attention() on dask arrays -------------------------------------------------

def chunked(x, batch_chunk):
    return da.from_array(x, chunks=(batch_chunk,) + x.shape[1:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_attention_batch_chunks(client, dtype):
    rng = np.random.default_rng(8)
    q, k, v = problem(rng, dtype, B=(5,), Hq=6, Hkv=2)
    mask = rng.random((5, 1, 7, 13)) > 0.2
    vl = rng.integers(0, 14, (5, 7))
    kw = dict(enable_gqa=True, is_causal="bottom_right", attn_mask=mask, valid_lens=vl)
    out, lse = ad.attention(chunked(q, 2), chunked(k, 3), chunked(v, 2), return_lse=True, **kw)
    assert isinstance(out, da.Array) and isinstance(lse, da.Array)
    assert out.shape == (5, 6, 7, 5) and lse.shape == (5, 6, 7) and lse.dtype == dtype
    assert len(out.chunks[0]) > 1
    o, l = client.compute([out, lse], sync=True)
    ref, ref_lse = SDPA(q, k, v, return_lse=True, **kw)
    assert np.array_equal(o, ref) and np.array_equal(l, ref_lse)   # same calls per batch row


def test_attention_weights_lse_broadcast_batch_and_one_task_per_block(monkeypatch):
    rng = np.random.default_rng(9)
    q = randn(rng, (4, 3, 2, 6, 8), np.float32)
    k = randn(rng, (1, 3, 2, 9, 8), np.float32)    # broadcast over the first batch dim
    v = randn(rng, (1, 3, 2, 9, 4), np.float32)
    dq = da.from_array(q, chunks=(1, 2, 2, 6, 8))
    dk, dv = da.from_array(k, chunks=(1, 1, 2, 9, 8)), da.from_array(v, chunks=-1)
    calls = []
    real = ad.scaled_dot_product_attention
    monkeypatch.setattr(ad, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    out, w, lse = ad.attention(dq, dk, dv, return_weights=True, return_lse=True,
                               attn_mask=np.tril(np.ones((6, 9), bool)))
    assert w.shape == (4, 3, 2, 6, 9) and w.chunks[:2] == ((1, 1, 1, 1), (1, 1, 1))  # aligned
    calls.clear()                # (building them ran the argument checks)
    o, ww, l = dask.compute(out, w, lse, scheduler="sync")
    assert len(calls) == 12      # one call per output block, shared by the three results
    ro, rw, rl = real(q, k, v, return_weights=True, return_lse=True,
                      attn_mask=np.tril(np.ones((6, 9), bool)))
    assert np.array_equal(o, ro) and np.array_equal(ww, rw) and np.array_equal(l, rl)
    only = ad.attention(dq, dk, dv)
    assert isinstance(only, da.Array)
    assert np.array_equal(only.compute(scheduler="sync"), real(q, k, v))


def test_attention_dropout_single_chunk_matches():
    rng = np.random.default_rng(10)
    q, k, v = problem(rng, np.float32)
    got = ad.attention(da.from_array(q), da.from_array(k), da.from_array(v), dropout_p=0.3,
                       seed=7).compute(scheduler="sync")
    assert np.array_equal(got, SDPA(q, k, v, dropout_p=0.3, seed=7))


def test_attention_errors():
    rng = np.random.default_rng(11)
    q, k, v = problem(rng, np.float32)
    dq, dk, dv = (da.from_array(x) for x in (q, k, v))
    with pytest.raises(ValueError, match=r"key \(2, 3, 13, 8\) has 2 chunks along axis 2 "
                                         r"\(seq_len.*key.rechunk\(\{2: -1\}\)"):
        ad.attention(dq, dk.rechunk({2: 7}), dv)
    with pytest.raises(ValueError, match=r"query .* axis 1 \(heads"):
        ad.attention(dq.rechunk({1: 1}), dk, dv)
    with pytest.raises(ValueError, match=r"axis 3 \(head_dim"):
        ad.attention(dq, dk, dv.rechunk({3: 2}))
    with pytest.raises(TypeError, match="out= is not supported"):
        ad.attention(dq, dk, dv, out=np.empty((2, 3, 7, 5), np.float32))
    with pytest.raises(ValueError, match="dropout_p > 0 needs a single batch chunk"):
        ad.attention(dq.rechunk({0: 1}), dk, dv, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"attention: attn_mask of shape \(3, 1, 1, 1\)"):
        ad.attention(dq, dk, dv, attn_mask=np.ones((3, 1, 1, 1), bool))
    with pytest.raises(ValueError, match="batch dimensions .* do not broadcast"):
        ad.attention(dq, da.from_array(randn(rng, (3, 3, 13, 8), np.float32)), dv)
    with pytest.raises(TypeError, match="attention: mixed dtypes"):
        ad.attention(dq, dk.astype(np.float64), dv)
    with pytest.raises(ValueError, match="attention: query has 3 heads"):
        ad.attention(dq, dk[:, :1], dv[:, :1])
    with pytest.raises(ValueError, match=r"attention: valid_lens must be in \[0, Lk=13\]"):
        ad.attention(dq, dk, dv, valid_lens=np.array([3, 14]))
    with pytest.raises(ValueError, match=r"attention \(in a block\): valid_lens must be in"):
        ad.attention(dq, dk, dv, valid_lens=da.from_array(np.array([3, 14]))).compute(
            scheduler="sync")
    with pytest.raises(ValueError, match=r"valid_lens of shape \(3,\) does not match the batch"):
        ad.attention(dq, dk, dv, valid_lens=np.array([1, 2, 3]))


def test_docstring_examples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module("attncore.dask")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 10
    for name in module.__all__:
        assert "Example" in (getattr(module, name).__doc__ or ""), name


def test_lazy_attribute():
    assert attncore.dask is ad


def test_sharded_empty_query_causal_over_several_shards():
    """Lq = 0 with is_causal and more than one shard: an empty result, as
    SDPA and one shard give (it raised NumPy's concatenate error)."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 2, 0, 8)).astype(np.float32)
    k = rng.standard_normal((1, 2, 10, 8)).astype(np.float32)
    v = rng.standard_normal((1, 2, 10, 3)).astype(np.float32)
    for causal in (True, "bottom_right"):
        out = ad.sharded_attention(q, k, v, shards=3, is_causal=causal)
        assert out.shape == (1, 2, 0, 3)
