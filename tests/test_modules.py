"""MultiHeadAttention and KVCache: against the pure-Python reference, against
torch.nn.MultiheadAttention when torch is installed, and decoding with a cache
against full recomputation."""
import re
import warnings

import numpy as np
import pytest

import attncore
from attncore import reference as R

from _tolerances import assert_close

try:
    import torch
except ImportError:  # the torch tests skip with a reason
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (pip install '.[compare]')")


def layer(dtype=np.float32, E=16, H=4, seed=0, randomize_biases=True, **kw):
    m = attncore.MultiHeadAttention(E, H, dtype=dtype, seed=seed, **kw)
    if randomize_biases and m.in_proj_bias is not None:  # torch inits biases to 0; exercise them
        rng = np.random.default_rng(seed + 1)
        m.in_proj_bias[:] = rng.standard_normal(m.in_proj_bias.shape)
        m.out_proj.bias[:] = rng.standard_normal(m.out_proj.bias.shape)
    return m


def check(fast, ref, dtype):
    out, w = fast
    r_out, r_w = ref
    assert out.dtype == dtype and out.shape == r_out.shape
    assert_close(out, r_out, "sdpa", dtype)
    if r_w is None:
        assert w is None
    else:
        assert w.shape == r_w.shape
        assert_close(w, r_w, "weights", dtype)


CASES = {
    "self": dict(),
    "self-weights-per-head": dict(need_weights=True, average_attn_weights=False),
    "cross": dict(cross=True, need_weights=True),
    "padding": dict(cross=True, key_padding_mask="bool", need_weights=True),
    "padding-float": dict(key_padding_mask="float"),
    "mask-bool": dict(attn_mask="bool", need_weights=True),
    "mask-float": dict(attn_mask="float"),
    "mask-per-head": dict(attn_mask="per-head", key_padding_mask="bool"),
    "causal": dict(is_causal=True, need_weights=True),
}


def inputs(rng, dtype, case, B=2, Lq=5, Lk=7, E=16, H=4, kdim=None, vdim=None):
    opts = dict(CASES[case])
    cross = opts.pop("cross", False) or kdim is not None
    x = rng.standard_normal((B, Lq, E)).astype(dtype)
    args = [x]
    L = Lk if cross else Lq
    if cross:
        args += [rng.standard_normal((B, Lk, kdim or E)).astype(dtype),
                 rng.standard_normal((B, Lk, vdim or E)).astype(dtype)]
    if opts.get("key_padding_mask") == "bool":
        kpm = np.zeros((B, L), bool)
        kpm[1, L - 2:] = True
        opts["key_padding_mask"] = kpm
    elif opts.get("key_padding_mask") == "float":
        opts["key_padding_mask"] = rng.standard_normal((B, L)).astype(dtype)
    if opts.get("attn_mask") == "bool":
        am = rng.random((Lq, L)) > 0.7
        am[:, 0] = False  # keep a key visible per row (torch gives NaN otherwise)
        opts["attn_mask"] = am
    elif opts.get("attn_mask") == "float":
        opts["attn_mask"] = rng.standard_normal((Lq, L)).astype(dtype)
    elif opts.get("attn_mask") == "per-head":
        am = rng.random((B * H, Lq, L)) > 0.7
        am[..., 0] = False
        opts["attn_mask"] = am
    return args, opts


@pytest.mark.parametrize("case", list(CASES))
def test_against_reference(isa, dtype, rng, case):
    m = layer(dtype)
    args, opts = inputs(rng, dtype, case)
    check(m(*args, **opts), R.MultiHeadAttention(m)(*args, **opts), dtype)


@pytest.mark.parametrize("kw", [dict(num_kv_heads=2), dict(num_kv_heads=1, kdim=6, vdim=5),
                                dict(bias=False), dict(kdim=6, vdim=9)])
def test_variants_against_reference(isa, dtype, rng, kw):
    m = layer(dtype, **kw)
    args, opts = inputs(rng, dtype, "padding", kdim=kw.get("kdim"), vdim=kw.get("vdim"))
    if "kdim" not in kw:
        args, opts = inputs(rng, dtype, "mask-bool")
    check(m(*args, **opts), R.MultiHeadAttention(m)(*args, **opts), dtype)


def test_unbatched(dtype, rng):
    m = layer(dtype)
    x = rng.standard_normal((6, 16)).astype(dtype)
    kpm = np.array([False] * 5 + [True])
    out, w = m(x, key_padding_mask=kpm, need_weights=True)
    assert out.shape == (6, 16) and w.shape == (6, 6)
    check((out, w), R.MultiHeadAttention(m)(x, key_padding_mask=kpm, need_weights=True), dtype)


def test_fully_masked_query_gives_finite_output(rng):
    m = layer()
    x = rng.standard_normal((1, 3, 16)).astype(np.float32)
    am = np.zeros((3, 3), bool)
    am[1] = True  # row 1 may attend nothing
    out, w = m(x, attn_mask=am, need_weights=True)
    assert np.isfinite(out).all() and (w[0, 1] == 0).all()
    np.testing.assert_allclose(out[0, 1], m.out_proj.bias, rtol=1e-6)


def test_deterministic_init_like_torch():
    a, b = attncore.MultiHeadAttention(32, 4, seed=3), attncore.MultiHeadAttention(32, 4, seed=3)
    c = attncore.MultiHeadAttention(32, 4, seed=4)
    for name, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[name])
    assert not np.array_equal(a.in_proj_weight, c.in_proj_weight)
    bound = np.sqrt(6 / (96 + 32))  # xavier-uniform on (3E, E)
    assert np.abs(a.in_proj_weight).max() <= bound and np.abs(a.in_proj_weight).max() > 0.9 * bound
    assert (a.in_proj_bias == 0).all() and (a.out_proj.bias == 0).all()
    assert np.abs(a.out_proj.weight).max() <= 1 / np.sqrt(32)


def test_state_dict_round_trip_and_errors(rng):
    a, b = layer(seed=1), layer(seed=2)
    b.load_state_dict(a.state_dict())
    x = rng.standard_normal((2, 4, 16)).astype(np.float32)
    np.testing.assert_array_equal(a(x)[0], b(x)[0])
    state = a.state_dict()
    with pytest.raises(ValueError, match="missing keys"):
        b.load_state_dict({k: v for k, v in state.items() if k != "in_proj_bias"})
    with pytest.raises(ValueError, match="in_proj_weight"):
        b.load_state_dict(dict(state, in_proj_weight=np.ones((3, 3))))
    with pytest.raises(ValueError, match="unexpected"):
        b.load_state_dict(dict(state, bias_k=np.ones((1, 1, 16))))


@pytest.mark.parametrize("call,exc,words", [
    (lambda m, x: m(x.astype(np.float64)), TypeError, ["query", "float64"]),
    (lambda m, x: m(x[..., :15]), ValueError, ["query", "(2, 4, 15)"]),
    (lambda m, x: m(x, x[:1]), ValueError, ["batch"]),
    (lambda m, x: m(x, x, x[:, :3]), ValueError, ["lengths"]),
    (lambda m, x: m(x, key_padding_mask=np.zeros((2, 5), bool)), ValueError, ["key_padding_mask", "(2, 4)"]),
    (lambda m, x: m(x, attn_mask=np.zeros((3, 4), bool)), ValueError, ["attn_mask", "(4, 4)"]),
    (lambda m, x: m(x, attn_mask=np.zeros((4, 4), np.int32)), TypeError, ["attn_mask"]),
    (lambda m, x: m(x, kv_cache="cache"), TypeError, ["kv_cache"]),
    (lambda m, x: m(x, kv_cache=attncore.KVCache(8, 3, 4)), ValueError, ["kv_cache", "3 heads"]),
    (lambda m, x: m(x, num_threads=0), ValueError, ["num_threads"]),
])
def test_bad_calls(call, exc, words, rng):
    m = layer()
    x = rng.standard_normal((2, 4, 16)).astype(np.float32)
    with pytest.raises(exc) as info:
        call(m, x)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("kw,words", [
    (dict(embed_dim=10, num_heads=4), ["divisible"]),
    (dict(embed_dim=16, num_heads=4, num_kv_heads=3), ["num_kv_heads"]),
    (dict(embed_dim=0, num_heads=1), ["embed_dim"]),
    (dict(embed_dim=16, num_heads=4, dtype=np.int32), ["dtype"]),
])
def test_bad_construction(kw, words):
    with pytest.raises((ValueError, TypeError)) as info:
        attncore.MultiHeadAttention(**kw)
    for w in words:
        assert w in str(info.value)


# -- KV cache ------------------------------------------------------------------

@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_kv_cache_decoding_equals_full_causal(isa, dtype, rng, num_kv_heads):
    m = layer(dtype, E=32, H=4, num_kv_heads=num_kv_heads)
    x = rng.standard_normal((2, 11, 32)).astype(dtype)
    full, _ = m(x, is_causal=True)
    cache = attncore.KVCache(max_len=16, num_heads=num_kv_heads, head_dim=8, dtype=dtype)
    steps = [m(x[:, :4], kv_cache=cache)[0]]            # a prefill chunk of 4
    for t in range(4, 11):                               # then token by token
        steps.append(m(x[:, t:t + 1], kv_cache=cache)[0])
    assert len(cache) == 11
    assert_close(np.concatenate(steps, axis=1), full.astype(np.float64), "sdpa", dtype)


def test_kv_cache_failed_call_leaves_the_cache_as_it_was(rng):
    """A decode step that raises (a mask or valid_lens of the wrong shape, found
    after the step's keys were appended) takes its keys back out: a caller that
    fixes the argument and retries gets the same output as a clean run."""
    m = layer(np.float32, E=32, H=4, num_kv_heads=2)
    x = rng.standard_normal((1, 5, 32)).astype(np.float32)
    clean = attncore.KVCache(max_len=8, num_heads=2, head_dim=8)
    m(x[:, :4], kv_cache=clean)
    want = m(x[:, 4:], kv_cache=clean)[0]
    cache = attncore.KVCache(max_len=8, num_heads=2, head_dim=8)
    m(x[:, :4], kv_cache=cache)
    bad_calls = [dict(attn_mask=np.zeros((1, 4), bool)),                 # needs (1, 5)
                 dict(key_padding_mask=np.zeros((1, 4), bool)),
                 dict(valid_lens=np.array([5, 5, 5]))]
    for bad in bad_calls:
        with pytest.raises(ValueError):
            m(x[:, 4:], kv_cache=cache, **bad)
        assert len(cache) == 4
    np.testing.assert_array_equal(m(x[:, 4:], kv_cache=cache)[0], want)
    assert len(cache) == 5


def test_kv_cache_failed_call_restores_buffers_and_dropout_stream(rng):
    """The rollback restores what the failed append changed -- a grown
    capacity, a new batch size -- and, in training with dropout, the layer's
    dropout stream, so the retried step equals a clean run bit for bit."""
    m = layer(np.float32, E=32, H=4, num_kv_heads=2, dropout=0.3)
    x = rng.standard_normal((3, 5, 32)).astype(np.float32)
    cache = attncore.KVCache(max_len=2, num_heads=2, head_dim=8, batch_size=2, grow=True)
    with pytest.raises(ValueError):
        m(x, kv_cache=cache, key_padding_mask=np.zeros((3, 4), bool))   # needs (3, 5)
    assert (len(cache), cache.capacity, cache.batch) == (0, 2, 2)
    twin = layer(np.float32, E=32, H=4, num_kv_heads=2, dropout=0.3)
    want = twin(x, kv_cache=attncore.KVCache(max_len=2, num_heads=2, head_dim=8, grow=True))[0]
    np.testing.assert_array_equal(m(x, kv_cache=cache)[0], want)


def test_kv_cache_buffers_and_errors():
    cache = attncore.KVCache(max_len=4, num_heads=2, head_dim=3)
    k = np.ones((1, 2, 3, 3), np.float32)
    cache.append(k, 2 * k)
    assert len(cache) == 3 and cache.keys.shape == (1, 2, 3, 3) and (cache.values == 2).all()
    with pytest.raises(ValueError, match="full"):
        cache.append(k[:, :, :2], k[:, :, :2])
    with pytest.raises(ValueError, match="batch size"):
        cache.append(np.ones((2, 2, 1, 3), np.float32), np.ones((2, 2, 1, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        cache.append(np.ones((1, 3, 1, 3), np.float32), np.ones((1, 3, 1, 3), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        cache.append(np.ones((1, 2, 1, 3)), np.ones((1, 2, 1, 3)))
    cache.reset()
    assert len(cache) == 0
    cache.append(k, k)
    grow = attncore.KVCache(max_len=2, num_heads=2, head_dim=3, grow=True)
    for t in range(5):
        grow.append(k[:, :, :1] * t, k[:, :, :1] * t)
    assert len(grow) == 5 and grow.capacity >= 5
    np.testing.assert_array_equal(grow.keys[0, 0, :, 0], np.arange(5))
    with pytest.raises(ValueError, match="max_len"):
        attncore.KVCache(max_len=0, num_heads=1, head_dim=1)


# -- torch as an independent oracle -----------------------------------------------

def torch_layer(m):
    E = m.embed_dim
    t = torch.nn.MultiheadAttention(E, m.num_heads, bias=m.bias, kdim=m.kdim, vdim=m.vdim,
                                    batch_first=True, dtype=torch.float64 if m.dtype == np.float64 else torch.float32)
    t.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in m.state_dict().items()})
    return t.eval()


@needs_torch
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kw", [dict(), dict(kdim=6, vdim=10), dict(bias=False)])
def test_against_torch(isa, dtype, rng, case, kw):
    m = layer(dtype, **kw)
    t = torch_layer(m)
    args, opts = inputs(rng, dtype, case, kdim=kw.get("kdim"), vdim=kw.get("vdim"))
    tkw = dict(opts)
    if tkw.pop("is_causal", False):
        L = args[1].shape[1] if len(args) > 1 else args[0].shape[1]
        tkw["attn_mask"] = torch.from_numpy(np.triu(np.ones((5, L), bool), 1))
    for name in ("key_padding_mask", "attn_mask"):
        if isinstance(tkw.get(name), np.ndarray):
            tkw[name] = torch.from_numpy(tkw[name])
    targs = [torch.from_numpy(a) for a in args]
    if len(targs) == 1:
        targs = targs * 3
    with torch.no_grad():   # both default to need_weights=True
        ref = t(*targs, **tkw)
    ref_out = ref[0].double().numpy()
    ref_w = ref[1].double().numpy() if ref[1] is not None else None
    check(m(*args, **opts), (ref_out, ref_w), dtype)


@needs_torch
def test_from_torch_and_tensor_state_dict(rng):
    torch.manual_seed(0)
    t = torch.nn.MultiheadAttention(24, 3, batch_first=True).eval()
    with torch.no_grad():
        t.in_proj_bias.uniform_(-1, 1)
    m = attncore.MultiHeadAttention.from_torch(t)
    x = rng.standard_normal((3, 6, 24)).astype(np.float32)
    with torch.no_grad():
        ref = t(*([torch.from_numpy(x)] * 3), need_weights=False)[0].numpy()
    assert_close(m(x)[0], ref.astype(np.float64), "sdpa", np.float32)
    m2 = attncore.MultiHeadAttention(24, 3)
    m2.load_state_dict(t.state_dict())  # tensors
    np.testing.assert_array_equal(m2(x)[0], m(x)[0])
    # a batch_first=False module (torch's default) takes (L, B, E), and so does
    # the layer built from it (issue 7: it used to read (L, B, E) as (B, L, E))
    t2 = torch.nn.MultiheadAttention(24, 3).eval()
    t2.load_state_dict(t.state_dict())
    m2 = attncore.MultiHeadAttention.from_torch(t2)
    assert m2.batch_first is False
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))   # (L, B, E)
    with torch.no_grad():
        ref2 = t2(*([torch.from_numpy(xt)] * 3))[0].numpy()
    out2 = m2(xt)[0]
    assert out2.shape == (6, 3, 24)
    assert_close(out2, ref2.astype(np.float64), "sdpa", np.float32)
    np.testing.assert_array_equal(out2, m(x)[0].transpose(1, 0, 2))


@needs_torch
@pytest.mark.parametrize("tdtype", ["float16", "bfloat16"])
def test_from_torch_of_a_half_module_widens_its_parameters(rng, tdtype):
    # a bfloat16 module used to fail in torch's .numpy() ("unsupported
    # ScalarType BFloat16"), naming neither the method nor the parameter
    torch.manual_seed(0)
    t = torch.nn.MultiheadAttention(16, 2, batch_first=True).eval()
    with torch.no_grad():
        t.in_proj_bias.uniform_(-1, 1)
    t = t.to(getattr(torch, tdtype))
    m = attncore.MultiHeadAttention.from_torch(t)
    assert m.dtype == np.float32
    for name, p in t.state_dict().items():   # every parameter, widened exactly
        np.testing.assert_array_equal(m.state_dict()[name], p.float().numpy())
    m2 = attncore.MultiHeadAttention(16, 2)
    m2.load_state_dict(t.state_dict())
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    np.testing.assert_array_equal(m2(x)[0], m(x)[0])


@needs_torch
@pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning")
def test_from_torch_of_a_compiled_or_scripted_module(rng):
    torch.manual_seed(0)
    t = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = rng.standard_normal((1, 5, 8)).astype(np.float32)
    with torch.no_grad():
        want = t(*[torch.from_numpy(x)] * 3)[0].numpy()
    for wrapped in (torch.jit.script(t), torch.compile(t)):   # (compile is lazy: no compiling)
        m = attncore.MultiHeadAttention.from_torch(wrapped)
        assert m.batch_first and not m.training
        assert_close(m(x)[0], want.astype(np.float64), "sdpa", np.float32)


@needs_torch
def test_from_torch_of_another_module_is_a_type_error():
    with pytest.raises(TypeError, match=r"from_torch: module must be a torch.nn.MultiheadAttention "
                                        r"\(or .*\); got torch.nn.modules.linear.Linear"):
        attncore.MultiHeadAttention.from_torch(torch.nn.Linear(8, 8))
    with warnings.catch_warnings():   # (the tracer's; a category named in a mark would
        warnings.simplefilter("ignore")   # import torch where it is not installed)
        traced = torch.jit.trace(torch.nn.MultiheadAttention(8, 2).eval(),
                                 (torch.ones(3, 1, 8),) * 3, check_trace=False)   # (no attributes)
    with pytest.raises(TypeError, match="from_torch: module must be"):
        attncore.MultiHeadAttention.from_torch(traced)
    with pytest.raises(TypeError, match="got builtins.dict"):
        attncore.MultiHeadAttention.from_torch({"in_proj_weight": np.zeros((24, 8))})


@needs_torch
def test_gqa_against_torch_functional(rng):
    import torch.nn.functional as F
    m = layer(np.float32, E=32, H=8, num_kv_heads=2)
    x = rng.standard_normal((2, 9, 32)).astype(np.float32)
    Wq, Wk, Wv, bq, bk, bv = (torch.from_numpy(np.ascontiguousarray(a)) for a in m._projections())
    tx = torch.from_numpy(x)
    split = lambda y, n: y.reshape(2, 9, n, 4).transpose(1, 2)
    q, k, v = split(F.linear(tx, Wq, bq), 8), split(F.linear(tx, Wk, bk), 2), split(F.linear(tx, Wv, bv), 2)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ref = F.linear(o.transpose(1, 2).reshape(2, 9, 32), torch.from_numpy(m.out_proj.weight),
                   torch.from_numpy(m.out_proj.bias))
    assert_close(m(x, is_causal=True)[0], ref.double().numpy(), "sdpa", np.float32)


def test_cross_attention_feature_mismatch(rng):
    m = layer(kdim=6, vdim=5)
    x = rng.standard_normal((2, 4, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="key must have shape"):
        m(x, rng.standard_normal((2, 3, 7)).astype(np.float32), rng.standard_normal((2, 3, 5)).astype(np.float32))
    with pytest.raises(ValueError, match="value must have shape"):
        m(x, rng.standard_normal((2, 3, 6)).astype(np.float32), rng.standard_normal((2, 3, 6)).astype(np.float32))
    with pytest.raises(ValueError, match="kdim = vdim = embed_dim"):
        m(x)


@pytest.mark.parametrize("kw,err", [(dict(kdim=2.5), TypeError), (dict(kdim=-3), ValueError),
                                    (dict(vdim=0), ValueError), (dict(vdim="8"), TypeError),
                                    (dict(kdim=True), TypeError)])
def test_kdim_vdim_must_be_positive_ints(kw, err):
    name = next(iter(kw))
    with pytest.raises(err, match=f"{name} must be a positive int"):
        attncore.MultiHeadAttention(8, 2, **kw)


def test_flags_and_state_dicts_are_checked_as_torch_reads_them():
    """average_attn_weights and bias are bools (they were read by truthiness:
    'no' averaged); a bfloat16 state dict from NumPy loads as one from torch
    does; a state that is no mapping, or a value that is no number array, is
    a TypeError naming it (session 21's fuzzer)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    m = attncore.MultiHeadAttention(8, 2, seed=0)
    x = np.ones((2, 5, 8), np.float32)
    for bad in ("no", None, 0):
        with pytest.raises(TypeError, match="average_attn_weights must be True or False"):
            m(x, need_weights=True, average_attn_weights=bad)
    with pytest.raises(TypeError, match="bias must be True or False"):
        attncore.MultiHeadAttention(8, 2, bias="no")
    state = {k: v.astype(ml_dtypes.bfloat16) for k, v in m.state_dict().items()}
    other = attncore.MultiHeadAttention(8, 2, seed=1)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.in_proj_weight,
                                  state["in_proj_weight"].astype(np.float32))
    with pytest.raises(TypeError, match="state must be a mapping"):
        other.load_state_dict([1, 2])
    with pytest.raises(TypeError, match="in_proj_bias must be a float array; got str"):
        other.load_state_dict({**m.state_dict(), "in_proj_bias": "abc"})
    with pytest.raises(TypeError, match=r"query has dtype float16; this layer is float32: cast "
                                        r"the input \(query\.astype\(np\.float32\)\) \(layers are"):
        m(x.astype(np.float16))


# --- reassigned parameters are checked (session 19: a fuzzer's finds) -------

def _mha_and_input(**kw):
    mha = attncore.MultiHeadAttention(16, 4, seed=0, **kw).eval()
    x = np.random.default_rng(0).standard_normal((1, 5, 16)).astype(np.float32)
    return mha, x


@pytest.mark.parametrize("param, value, error, words", [
    ("out_proj.weight", lambda w: w.astype(np.float64), TypeError, "out_proj.weight must be a float32"),
    ("out_proj.weight", lambda w: w.tolist(), TypeError, "out_proj.weight must be a float32"),
    ("out_proj.weight", lambda w: w[:, :1].copy(), ValueError, "out_proj.weight has shape (16, 1)"),
    ("out_proj.weight", lambda w: w[:8].copy(), ValueError, "out_proj.weight has shape (8, 16)"),
    ("out_proj.bias", lambda b: b[:3].copy(), ValueError, "out_proj.bias gives shape (3,)"),
    ("in_proj_weight", lambda w: w.astype(np.float64), TypeError, "in_proj_weight must be a float32"),
    ("in_proj_weight", lambda w: w[:40].copy(), ValueError, "in_proj_weight has shape (40, 16)"),
    ("in_proj_bias", lambda b: b[:20].copy(), ValueError, "in_proj_bias has shape (20,)"),
])
def test_reassigned_parameters_are_checked(param, value, error, words):
    """A parameter of the wrong dtype or shape is an error naming it (the
    kernel used to read past it: garbage, NaN or a fault), and a decode step
    that fails on it leaves the KV cache as it was."""
    mha, x = _mha_and_input()
    owner, name = (mha.out_proj, param.split(".")[1]) if "." in param else (mha, param)
    cache = attncore.KVCache(max_len=32, num_heads=4, head_dim=4)
    mha(x, kv_cache=cache)
    setattr(owner, name, value(getattr(owner, name)))
    with pytest.raises(error, match=re.escape(words)):
        mha(x[:, :1], kv_cache=cache)
    assert len(cache) == 5


def test_value_defaults_to_key_only_when_their_sizes_agree():
    mha = attncore.MultiHeadAttention(8, 2, kdim=6, vdim=4, seed=0)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 3, 8)).astype(np.float32)
    k = rng.standard_normal((1, 5, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="value=None takes the key as the value, which needs kdim = vdim"):
        mha(q, k)


def test_out_projection_interrupted_leaves_the_cache(monkeypatch):
    """An error (or an interrupt) in the output projection -- after the
    attention ran -- restores the cache and the dropout stream too."""
    from attncore import _linalg
    mha, x = _mha_and_input(dropout=0.5)
    mha.train()
    cache = attncore.KVCache(max_len=32, num_heads=4, head_dim=4)
    mha(x, kv_cache=cache)
    state = mha._dropout_rng.bit_generator.state
    real = _linalg.linear

    def failing(x, weight, bias=None, num_threads=None, op="linear", names=("weight", "bias"), **kw):
        if names[0] == "out_proj.weight":
            raise KeyboardInterrupt
        return real(x, weight, bias, num_threads, op, names, **kw)

    monkeypatch.setattr(_linalg, "linear", failing)
    with pytest.raises(KeyboardInterrupt):
        mha(x[:, :1], kv_cache=cache)
    assert len(cache) == 5
    assert mha._dropout_rng.bit_generator.state == state


@pytest.mark.parametrize("name", ["attn_mask", "key_padding_mask"])
@pytest.mark.parametrize("mask_dtype", [np.float64, np.float16])
def test_float_mask_of_another_dtype_is_an_error(name, mask_dtype):
    """As in torch's MultiheadAttention and this library's SDPA: a float mask
    is in the layer's dtype (it used to be rounded or widened silently)."""
    mha, x = _mha_and_input()
    shape = (5, 5) if name == "attn_mask" else (1, 5)
    with pytest.raises(TypeError, match=f"{name} is {np.dtype(mask_dtype).name} but the layer is float32"):
        mha(x, **{name: np.zeros(shape, mask_dtype)})
    mha(x, **{name: np.zeros(shape, np.float32)})   # the layer's dtype runs


def test_unpacked_projection_of_the_wrong_shape_is_named():
    mha = attncore.MultiHeadAttention(16, 4, kdim=8, vdim=8, seed=0)
    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, 3, 16)).astype(np.float32)
    k = rng.standard_normal((1, 5, 8)).astype(np.float32)
    mha.q_proj_weight = mha.q_proj_weight[:8].copy()
    with pytest.raises(ValueError, match=re.escape("q_proj_weight has shape (8, 16); this layer needs (16, 16)")):
        mha(q, k, k)


def test_a_weight_in_the_other_byte_order_is_accepted():
    mha, x = _mha_and_input()
    want, _ = mha(x)
    mha.out_proj.weight = mha.out_proj.weight.astype(">f4")
    np.testing.assert_array_equal(mha(x)[0], want)


def test_unbatched_inputs_take_valid_lens_per_query_row():
    """(L, E) inputs: valid_lens (Lq,) is one length per query row, the batched
    (1, Lq) with the batch dim dropped (it was refused as a batch of 5)."""
    m = attncore.MultiHeadAttention(8, 2, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    lens = np.array([1, 2, 3, 4, 5])
    got, w = m(x, valid_lens=lens)
    want, ww = m(x[None], valid_lens=lens[None])
    np.testing.assert_array_equal(got, want[0])
    np.testing.assert_array_equal(w, ww[0])
    assert (w[0, 1:] == 0).all() and w[4].all()
    ref, rw = R.MultiHeadAttention(m)(x, valid_lens=lens)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_huge_layers_and_missing_parameters_name_the_layer():
    """A layer past the address space, and a parameter set to None, get
    errors naming the layer and the sizes (NumPy's "Maximum allowed
    dimension exceeded" and "'NoneType' object is not subscriptable")."""
    with pytest.raises(ValueError, match=r"MultiHeadAttention: the parameters of embed_dim=4611686018427387904"):
        attncore.MultiHeadAttention(2**62, 1)
    m = attncore.MultiHeadAttention(8, 2, seed=0)
    m.in_proj_weight = None
    with pytest.raises(TypeError, match=r"in_proj_weight must be a float32 NumPy array of shape \(24, 8\)"):
        m(np.ones((1, 3, 8), np.float32))
    m = attncore.MultiHeadAttention(8, 2, seed=0)
    m.in_proj_bias = [0.0] * 24
    with pytest.raises(TypeError, match=r"in_proj_bias must be a float32 NumPy array of shape \(24,\) or None"):
        m(np.ones((1, 3, 8), np.float32))
