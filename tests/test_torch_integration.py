"""attncore.torch: the custom op (eager and under torch.compile), the
MultiheadAttention subclass and patch(), against torch's own functions.
Skipped, with a reason, when torch is not installed."""
import itertools
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install '.[torch]')")
nn = torch.nn
F = torch.nn.functional

import attncore  # noqa: E402
import attncore.torch as at  # noqa: E402
from conftest import pairs_active  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# vs torch in float64 on the same (rounded) inputs: half types add one rounding
# of the output (bf16: 2^-8 relative, f16: 2^-11); float32/64 as tests/_tolerances.py
TOL = {torch.float32: dict(rtol=2e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12),
       torch.bfloat16: dict(rtol=2 ** -8, atol=1e-4), torch.float16: dict(rtol=2 ** -10, atol=1e-4)}


def assert_close(got, ref, dtype=torch.float32):
    assert got.dtype == dtype
    tol = TOL[dtype]
    if dtype == torch.bfloat16 and pairs_active():
        # (4b): + 2^-8 V for the weights rounded before P V (|v| < 4.5 here)
        tol = dict(tol, atol=tol["atol"] + 2 ** -8 * 4.5)
    torch.testing.assert_close(got.double(), ref.double(), **tol)


def inputs(B=2, Hq=4, Hkv=4, Lq=9, Lk=13, D=16, Dv=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, Lk, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Lk, Dv or D, generator=g).to(dtype)
    return q, k, v


def torch_ref(q, k, v, **kw):
    """torch's SDPA in float64 on the same inputs."""
    mask = kw.pop("attn_mask", None)
    if mask is not None and mask.is_floating_point():
        mask = mask.double()
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, **kw)


def bool_mask(Lq, Lk, seed=1):
    m = torch.rand(Lq, Lk, generator=torch.Generator().manual_seed(seed)) > 0.3
    m[:, 0] = True   # no empty rows (torch's math path gives NaN there)
    return m


CASES = {
    "plain": lambda q: {},
    "bool_mask": lambda q: dict(attn_mask=bool_mask(q.shape[-2], 13)),
    "float_mask": lambda q: dict(attn_mask=torch.randn(q.shape[0], 1, q.shape[-2], 13,
                                                       generator=torch.Generator().manual_seed(2)).to(q.dtype)),
    "causal": lambda q: dict(is_causal=True),
    "causal_and_mask": lambda q: dict(is_causal=True, attn_mask=bool_mask(q.shape[-2], 13)),
    "scale": lambda q: dict(scale=0.3),
}


def test_reachable_lazily_and_not_imported_by_attncore():
    assert attncore.torch is at
    r = subprocess.run([sys.executable, "-c", "import sys, attncore; "
                        "print('torch' in sys.modules, 'transformers' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.stdout.split() == ["False", "False"], r.stdout + r.stderr


# -- scaled_dot_product_attention ---------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_sdpa_eager_matches_torch(dtype, case):
    q, k, v = inputs(dtype=dtype)
    kw = CASES[case](q)
    with torch.inference_mode():
        out = at.scaled_dot_product_attention(q, k, v, **kw)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 9, 16)
    assert_close(out, torch_ref(q, k, v, **kw), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sdpa_gqa_without_repeating_kv(dtype):
    q, k, v = inputs(Hq=8, Hkv=2, Lq=5, Lk=40, dtype=dtype)
    out = at.scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal=True)
    assert_close(out, torch_ref(q, k, v, enable_gqa=True, is_causal=True), dtype)
    with pytest.raises(ValueError, match="enable_gqa"):
        at.scaled_dot_product_attention(q, k, v)


def test_sdpa_shapes_like_torch():
    # causal with Lq < Lk is top-left aligned (query i sees keys j <= i), as torch
    q, k, v = inputs(Lq=4, Lk=11)
    assert_close(at.scaled_dot_product_attention(q, k, v, is_causal=True),
                 torch_ref(q, k, v, is_causal=True))
    # 3-D and 2-D inputs, broadcast batch dims, Dv != D, transposed (strided) views
    q3, k3, v3 = (t[0] for t in inputs(Dv=24))
    assert_close(at.scaled_dot_product_attention(q3, k3, v3), torch_ref(q3, k3, v3))
    assert_close(at.scaled_dot_product_attention(q3[0], k3[0], v3[0]), torch_ref(q3[0], k3[0], v3[0]))
    q, k, v = inputs(B=1)
    kb, vb = k.expand(3, -1, -1, -1), v.expand(3, -1, -1, -1)
    assert_close(at.scaled_dot_product_attention(q, kb, vb), torch_ref(q, kb, vb))
    qt = torch.randn(2, 9, 4, 16).transpose(1, 2)
    assert_close(at.scaled_dot_product_attention(qt, k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)),
                 torch_ref(qt, k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)))


def test_sdpa_float32_mask_with_half_query_like_torch():
    q, k, v = inputs(dtype=torch.bfloat16)
    mask = torch.randn(9, 13)
    out = at.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref, rtol=2 ** -7, atol=2e-2)


@pytest.mark.parametrize("dtype,bits", [(torch.bfloat16, 8), (torch.float16, 11)])
def test_sdpa_half_query_keeps_a_float32_mask_in_float32(dtype, bits):
    """numerics (4): half inputs compute in float32, rounded once at the end;
    a float32 bias (here of size ~20) is added as it is, not first rounded to
    the half type (which moved it by up to 0.06 in bfloat16: 10x the bound)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, L, 32).to(dtype) for L in (16, 64, 64))
    bias = torch.randn(16, 64) * 20
    exact = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 32 ** 0.5 + bias.double(), -1) @ v.double()
    out = at.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert (out.double() - exact).abs().max() <= 1.5 * 2.0 ** -bits * exact.abs().max()

    class Layer(torch.nn.Module):
        is_causal = False

    # Hugging Face's attention function (B, Lq, Hq, Dv) takes it the same way
    hf, _ = at.hf_attention(Layer(), q, k, v, bias[None, None], scaling=32 ** -0.5)
    assert (hf.transpose(1, 2).double() - exact).abs().max() <= 1.5 * 2.0 ** -bits * exact.abs().max()


def test_sdpa_is_causal_must_be_a_bool_like_torch():
    """torch raises for a non-bool is_causal; bool() would read any string,
    "bottom_right" (attncore's NumPy spelling of the other alignment)
    included, as top-left causal."""
    q, k, v = inputs()
    for bad in ("bottom_right", "false", 1, None):
        with pytest.raises(TypeError, match=r"is_causal must be a bool.*is_causal='bottom_right'"):
            at.scaled_dot_product_attention(q, k, v, is_causal=bad)
    assert_close(at.scaled_dot_product_attention(q, k, v, is_causal=np.True_), torch_ref(q, k, v, is_causal=True))


def test_sdpa_fully_masked_rows_are_zero():
    q, k, v = inputs()
    mask = bool_mask(9, 13)
    mask[3] = False
    out = at.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.isfinite(out).all() and (out[:, :, 3] == 0).all()
    keep = torch.arange(9) != 3
    assert_close(out[:, :, keep], torch_ref(q, k, v, attn_mask=mask)[:, :, keep])


def test_sdpa_dropout_seeded_by_torch_generator():
    q, k, v = inputs()
    torch.manual_seed(0)
    a = at.scaled_dot_product_attention(q, k, v, dropout_p=0.4)
    torch.manual_seed(0)
    b = at.scaled_dot_product_attention(q, k, v, dropout_p=0.4)
    torch.manual_seed(1)
    c = at.scaled_dot_product_attention(q, k, v, dropout_p=0.4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, at.scaled_dot_product_attention(q, k, v))
    # the pattern is attncore's, keyed by a seed drawn from torch's default generator
    torch.manual_seed(0)
    seed = int(torch.randint(0, 1 << 62, ()))
    np.testing.assert_array_equal(
        a.numpy(), attncore.scaled_dot_product_attention(q.numpy(), k.numpy(), v.numpy(),
                                                         dropout_p=0.4, seed=seed))
    # dropout_p=1 drops every weight, as in torch
    assert torch.equal(at.scaled_dot_product_attention(q, k, v, dropout_p=1.0), torch.zeros_like(q))
    with pytest.raises(ValueError, match="dropout_p"):
        at.scaled_dot_product_attention(q, k, v, dropout_p=1.5)


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_sdpa_dropout_one_still_checks_its_arguments(p):
    """dropout_p=1 returns zeros (torch's result) only for valid arguments:
    it used to return them before any check (session 18)."""
    q, k, v = inputs()
    with pytest.raises(ValueError, match="head_dim"):
        at.scaled_dot_product_attention(q, k[..., :3], v, dropout_p=p)
    with pytest.raises(ValueError, match="does not broadcast"):
        at.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool), dropout_p=p)
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        at.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(q.shape[-2], k.shape[-2],
                                                                      dtype=torch.int64), dropout_p=p)
    with pytest.raises(TypeError, match="mixed dtypes"):
        at.scaled_dot_product_attention(q, k.double(), v, dropout_p=p)


def test_sdpa_requires_grad_is_a_clear_error():
    q, k, v = inputs()
    qg = q.clone().requires_grad_()
    with pytest.raises(TypeError, match=r"query requires grad.*forward pass only.*torch\.no_grad\(\).*inference_mode"):
        at.scaled_dot_product_attention(qg, k, v)
    mask = torch.zeros(9, 13, requires_grad=True)
    with pytest.raises(TypeError, match="attn_mask requires grad"):
        at.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with torch.no_grad():
        out = at.scaled_dot_product_attention(qg, k, v)
    assert not out.requires_grad
    assert_close(at.scaled_dot_product_attention(qg.detach(), k, v), torch_ref(q, k, v))


def test_custom_op_schema_and_fake():
    q, k, v = inputs(Hq=4, Hkv=2)
    mask = bool_mask(9, 13)
    op = torch.ops.attncore.sdpa
    for args in [(q, k, v, None, 0.0, True, None, True, None, None, None),
                 (q, k, v, mask, 0.2, False, 0.5, True, torch.tensor(7), None, None)]:
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sdpa_under_torch_compile_fullgraph(dtype):
    torch._dynamo.reset()
    graphs = []

    def recording_inductor(gm, example_inputs):
        graphs.append(str(gm.graph))
        from torch._inductor.compile_fx import compile_fx
        return compile_fx(gm, example_inputs)

    def f(q, k, v, mask):
        return at.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True,
                                               enable_gqa=True) * 2

    compiled = torch.compile(f, fullgraph=True, backend=recording_inductor)
    q, k, v = inputs(Hq=4, Hkv=2, dtype=dtype)
    mask = bool_mask(9, 13)
    with torch.inference_mode():
        out = compiled(q, k, v, mask)
    assert graphs and "attncore.sdpa" in graphs[0]
    assert_close(out / 2, torch_ref(q, k, v, attn_mask=mask, is_causal=True, enable_gqa=True), dtype)


def test_dropout_reproducible_under_torch_compile():
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: at.scaled_dot_product_attention(q, k, v, dropout_p=0.3),
                             fullgraph=True)
    q, k, v = inputs()
    torch.manual_seed(3)
    a = compiled(q, k, v)
    torch.manual_seed(3)
    b = compiled(q, k, v)
    assert torch.equal(a, b) and not torch.allclose(a, at.scaled_dot_product_attention(q, k, v))


# -- MultiheadAttention ----------------------------------------------------------

def make_mha(E=32, H=4, seed=0, **kw):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(E, H, **kw).eval()
    with torch.no_grad():   # non-zero biases, so that a bias mix-up shows
        for p in mha.parameters():
            if p.dim() == 1:
                p.normal_()
    return mha


def seq(B, L, E, batch_first, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, E, generator=g) if batch_first else torch.randn(L, B, E, generator=g)


def mha_masks(B, H, Lq, Lk, seed=0):
    g = torch.Generator().manual_seed(seed)
    kpm = torch.zeros(B, Lk, dtype=torch.bool)
    kpm[1, Lk - 3:] = True                                   # True = padding
    am_bool = torch.rand(Lq, Lk, generator=g) > 0.7          # True = NOT allowed
    am_bool[:, 0] = False
    am_float = torch.randn(B * H, Lq, Lk, generator=g)
    return {"none": {}, "kpm": dict(key_padding_mask=kpm), "bool_mask": dict(attn_mask=am_bool),
            "float_mask_3d": dict(attn_mask=am_float),
            "kpm_and_bool_mask": dict(key_padding_mask=kpm, attn_mask=am_bool),
            "float_kpm_and_mask": dict(key_padding_mask=torch.zeros(B, Lk).masked_fill(kpm, -math.inf),
                                       attn_mask=am_float)}


def check_mha(fast, ref, args, kw):
    with torch.inference_mode():
        want = ref(*args, **kw)
        got = fast(*args, **kw)
    assert fast.last_fallback == "", fast.last_fallback
    # absolute tolerance in units of the output's largest entry: after the
    # SGD step in test_mha_shares_parameters outputs reach ~700, where both
    # torch and attncore are ~2e-4 from a float64 run (cancellation leaves
    # small entries with that absolute error too)
    scale = max(1.0, want[0].abs().max().item())
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=2e-6 * scale)
    if want[1] is None:
        assert got[1] is None
    else:
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


def test_mha_shares_parameters():
    mha = make_mha()
    fast = at.MultiheadAttention.from_torch(mha)
    assert isinstance(fast, nn.MultiheadAttention)
    for name, p in mha.named_parameters():
        assert dict(fast.named_parameters())[name] is p
    assert list(fast.state_dict()) == list(mha.state_dict())
    x = seq(2, 6, 32, False)
    check_mha(fast, mha, (x, x, x), {})
    # an in-place change and an optimizer step on the torch module are seen
    with torch.no_grad():
        mha.in_proj_weight.mul_(1.5)
        mha.out_proj.bias.add_(1.0)
    check_mha(fast, mha, (x, x, x), {})
    opt = torch.optim.SGD(mha.parameters(), lr=0.1)
    mha.train()
    mha(x, x, x)[0].square().sum().backward()
    opt.step()
    mha.eval()
    fast.eval()
    check_mha(fast, mha, (x, x, x), {})
    # and the other way round: training through the wrapper (torch's forward) updates mha
    before = mha.in_proj_weight.detach().clone()
    fast.train()
    opt2 = torch.optim.SGD(fast.parameters(), lr=0.1)
    fast(x, x, x)[0].square().sum().backward()
    assert "autograd" in fast.last_fallback
    opt2.step()
    assert not torch.equal(mha.in_proj_weight, before)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "kpm", "bool_mask", "float_mask_3d", "kpm_and_bool_mask",
                                   "float_kpm_and_mask"])
@pytest.mark.parametrize("weights", ["none", "averaged", "per_head"])
def test_mha_matches_torch(batch_first, masks, weights):
    B, Lq, Lk, E, H = 3, 5, 8, 32, 4
    mha = make_mha(E, H, batch_first=batch_first)
    fast = at.MultiheadAttention.from_torch(mha)
    q, kv = seq(B, Lq, E, batch_first, 1), seq(B, Lk, E, batch_first, 2)
    kw = dict(mha_masks(B, H, Lq, Lk)[masks])
    kw.update({"none": dict(need_weights=False), "averaged": {},
               "per_head": dict(average_attn_weights=False)}[weights])
    check_mha(fast, mha, (q, kv, kv), kw)
    if masks in ("none", "kpm"):   # self-attention (packed projection; torch's fast path)
        kw.update(mha_masks(B, H, Lq, Lq)[masks])
        check_mha(fast, mha, (q, q, q), kw)


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_kdim_vdim_unbatched_and_separate_kv(batch_first):
    mha = make_mha(32, 4, kdim=12, vdim=20, batch_first=batch_first)
    fast = at.MultiheadAttention.from_torch(mha)
    q, k, v = seq(2, 5, 32, batch_first, 1), seq(2, 7, 12, batch_first, 2), seq(2, 7, 20, batch_first, 3)
    check_mha(fast, mha, (q, k, v), mha_masks(2, 4, 5, 7)["kpm_and_bool_mask"])
    # unbatched (L, E) inputs, and distinct key/value tensors with packed weights
    q1 = q[0] if batch_first else q[:, 0]
    k1, v1 = (k[0], v[0]) if batch_first else (k[:, 0], v[:, 0])
    check_mha(fast, mha, (q1, k1, v1), dict(key_padding_mask=torch.tensor([False] * 5 + [True] * 2)))
    mha2 = make_mha(32, 4, batch_first=batch_first)
    fast2 = at.MultiheadAttention.from_torch(mha2)
    check_mha(fast2, mha2, (q, seq(2, 7, 32, batch_first, 4), seq(2, 7, 32, batch_first, 5)), {})


def test_mha_is_causal_hint_and_dtypes():
    mha = make_mha(32, 4, batch_first=True)
    fast = at.MultiheadAttention.from_torch(mha)
    x = seq(2, 6, 32, True)
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    for kw in (dict(need_weights=False), {}, dict(need_weights=False, key_padding_mask=torch.zeros(2, 6, dtype=torch.bool))):
        check_mha(fast, mha, (x, x, x), dict(attn_mask=causal, is_causal=True, **kw))
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        with torch.inference_mode():
            fast(x, x, x, is_causal=True)
    for dtype, tol in ((torch.float64, 1e-12), (torch.bfloat16, 3e-2)):
        m = make_mha(32, 4, batch_first=True).to(dtype)
        f = at.MultiheadAttention.from_torch(m)
        with torch.inference_mode():
            got, want = f(x.to(dtype), x.to(dtype), x.to(dtype))[0], m(x.to(dtype), x.to(dtype), x.to(dtype))[0]
        assert f.last_fallback == "" and got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_mha_fallbacks():
    mha = make_mha(32, 4, batch_first=True, dropout=0.5)
    fast = at.MultiheadAttention.from_torch(mha)
    x = seq(2, 6, 32, True)
    # training mode with grad enabled: torch's own forward, gradients flow
    fast.train()
    out, _ = fast(x, x, x)
    assert out.requires_grad and "autograd" in fast.last_fallback
    # training mode without grad: attncore, with dropout seeded from torch's generator
    with torch.no_grad():
        torch.manual_seed(0)
        a = fast(x, x, x, need_weights=False)[0]
        torch.manual_seed(0)
        b = fast(x, x, x, need_weights=False)[0]
        assert fast.last_fallback == ""
        c = fast.eval()(x, x, x, need_weights=False)[0]
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # eval mode, but a tensor that needs grad: torch
    fast(x.clone().requires_grad_(), x, x)
    assert "autograd" in fast.last_fallback
    # features attncore does not have
    for kw in (dict(add_bias_kv=True), dict(add_zero_attn=True)):
        m = make_mha(32, 4, batch_first=True, **kw)
        f = at.MultiheadAttention.from_torch(m)
        with torch.inference_mode():
            torch.testing.assert_close(f(x, x, x)[0], m(x, x, x)[0])
        assert "add_bias_kv" in f.last_fallback


def test_mha_bad_masks_name_the_argument():
    fast = at.MultiheadAttention.from_torch(make_mha(32, 4, batch_first=True))
    x = seq(2, 6, 32, True)
    with torch.inference_mode():
        with pytest.raises(ValueError, match="key_padding_mask must have shape"):
            fast(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
        with pytest.raises(ValueError, match="attn_mask must have shape"):
            fast(x, x, x, attn_mask=torch.zeros(3, 6, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.nn.MultiheadAttention"):
        at.MultiheadAttention.from_torch(nn.Linear(2, 2))


def test_mha_under_torch_compile():
    torch._dynamo.reset()
    mha = make_mha(32, 4, batch_first=True)
    fast = at.MultiheadAttention.from_torch(mha)
    x = seq(2, 6, 32, True)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[0, 4:] = True
    # aot_eager: traces through dynamo and AOTAutograd (the custom op's fake)
    # without inductor's C++ compile of the projections
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        got = compiled(x, x, x, key_padding_mask=kpm, need_weights=False)[0]
        want = mha(x, x, x, key_padding_mask=kpm, need_weights=False)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


# -- patch() --------------------------------------------------------------------

@pytest.fixture
def attncore_calls(monkeypatch):
    """Counts the attncore kernel calls of the MHA forward, and torch's fused
    encoder-layer kernel calls."""
    calls = {"attncore": 0, "fused": 0}
    real, fused = at._sdpa_eager, torch._transformer_encoder_layer_fwd

    def counting(*a, **k):
        calls["attncore"] += 1
        return real(*a, **k)

    def counting_fused(*a, **k):
        calls["fused"] += 1
        return fused(*a, **k)

    monkeypatch.setattr(at, "_sdpa_eager", counting)
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", counting_fused)
    return calls


def encoder(batch_first=True, layers=3, E=32, H=4, nested=True):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=64, batch_first=batch_first, dropout=0.1)
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=nested).eval()


def test_patch_encoder_disables_fused_path_and_matches(attncore_calls):
    model = encoder()
    x = seq(3, 10, 32, True)
    kpm = torch.zeros(3, 10, dtype=torch.bool)
    kpm[1, 7:] = True
    kpm[2, 4:] = True
    with torch.inference_mode():
        ref = model(x)
        ref_pad = model(x, src_key_padding_mask=kpm)
    assert attncore_calls == {"attncore": 0, "fused": 6}   # torch's fast path, unpatched
    assert at.patch(model) is model
    assert all(type(layer.self_attn) is at.MultiheadAttention for layer in model.layers)
    with torch.inference_mode():
        got = model(x)
        got_pad = model(x, src_key_padding_mask=kpm)
    # attncore ran in every layer; the fused kernel never did
    assert attncore_calls == {"attncore": 6, "fused": 6}
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    valid = ~kpm   # the unpatched nested-tensor path zeroes padded positions
    torch.testing.assert_close(got_pad[valid], ref_pad[valid], rtol=1e-5, atol=1e-5)


def test_patch_transformer_matches_unpatched(attncore_calls):
    torch.manual_seed(0)
    model = nn.Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                           dim_feedforward=64).eval()
    src, tgt = seq(2, 9, 32, False, 1), seq(2, 6, 32, False, 2)
    src_kpm = torch.zeros(2, 9, dtype=torch.bool)
    src_kpm[1, 6:] = True
    kw = dict(tgt_mask=nn.Transformer.generate_square_subsequent_mask(6), tgt_is_causal=True,
              src_key_padding_mask=src_kpm, memory_key_padding_mask=src_kpm)
    keys = list(model.state_dict())
    with torch.inference_mode():
        ref = model(src, tgt, **kw)
    at.patch(model)
    assert list(model.state_dict()) == keys
    assert sum(type(m) is at.MultiheadAttention for m in model.modules()) == 6
    assert not any(type(m) is nn.MultiheadAttention for m in model.modules())
    with torch.inference_mode():
        got = model(src, tgt, **kw)
    assert attncore_calls["attncore"] == 6
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # training mode with grad: torch's forward, and gradients reach the shared Parameters
    model.train()
    model(src, tgt, **kw).sum().backward()
    assert attncore_calls["attncore"] == 6
    assert model.encoder.layers[0].self_attn.in_proj_weight.grad is not None


def test_patch_is_idempotent_and_keeps_shared_modules():
    mha = make_mha()
    model = nn.ModuleDict({"a": mha, "b": mha, "seq": nn.Sequential(make_mha(seed=1), nn.Identity())})
    at.patch(model)
    at.patch(model)
    assert type(model["a"]) is at.MultiheadAttention and model["a"] is model["b"]
    assert type(model["seq"][0]) is at.MultiheadAttention
    assert model["a"].in_proj_weight is mha.in_proj_weight
    bare = at.patch(make_mha())
    assert type(bare) is at.MultiheadAttention
    with pytest.raises(TypeError, match="torch.nn.Module"):
        at.patch("not a module")


def test_patch_keeps_the_hooks_of_the_module_it_replaces(attncore_calls):
    """A hook on the torch module (capturing weights, say) fires on its
    attncore replacement, and its handle still removes it."""
    model = nn.Sequential(make_mha())
    seen, pre = [], []
    handle = model[0].register_forward_hook(lambda mod, args, out: seen.append(out[1]))
    model[0].register_forward_pre_hook(lambda mod, args: pre.append(len(args)))
    at.patch(model)
    assert type(model[0]) is at.MultiheadAttention
    x = torch.randn(5, 2, 32)
    with torch.inference_mode():
        out, w = model[0](x, x, x)
    assert attncore_calls["attncore"] and len(seen) == 1 and pre == [3]
    assert torch.equal(seen[0], w)
    handle.remove()
    with torch.inference_mode():
        model[0](x, x, x)
    assert len(seen) == 1 and pre == [3, 3]


def test_attncore_mha_built_directly_in_an_encoder_layer(attncore_calls):
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True).eval()
    x = seq(2, 5, 32, True)
    with torch.inference_mode():
        ref = layer(x)
    layer.self_attn = at.MultiheadAttention.from_torch(layer.self_attn)
    with torch.inference_mode():
        got = layer(x)
    assert attncore_calls == {"attncore": 1, "fused": 1}
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["attn_mask", "key_padding_mask"])
def test_multihead_float_mask_of_another_dtype_is_an_error(name):
    """torch's MultiheadAttention raises for a float mask not in the query's
    dtype; so does the drop-in (it used to cast it silently)."""
    m = at.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 3, 8)
    shape = (3, 3) if name == "attn_mask" else (2, 3)
    with torch.no_grad():
        with pytest.raises(TypeError, match=f"{name} is torch.float64 but the query is torch.float32"):
            m(x, x, x, **{name: torch.zeros(shape, dtype=torch.float64)})
        m(x, x, x, **{name: torch.zeros(shape)})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_multihead_float32_mask_with_half_queries_runs(dtype):
    """torch takes a float32 mask with 16-bit queries (TransformerEncoder's
    generate_square_subsequent_mask on a bf16 model); so does the drop-in,
    with torch's result."""
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True).to(dtype).eval()
    m = at.MultiheadAttention.from_torch(ref)
    x = torch.randn(2, 3, 8, dtype=dtype)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(3)
    with torch.no_grad():
        out, _ = m(x, x, x, attn_mask=causal, need_weights=False)
        want, _ = ref(x, x, x, attn_mask=causal, need_weights=False)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), want.float(), rtol=2e-2, atol=2e-2)


# -- what torch does around SDPA: subclasses, autocast, transforms (fuzzer's findings) --------

class _MyTensor(torch.Tensor):
    """A Tensor subclass as libraries define them (MONAI's MetaTensor is one)."""


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("which", ["all", "query"])
def test_tensor_subclasses_come_back_as_the_subclass(dtype, which):
    """As torch's SDPA: the subclass's __torch_function__ runs the call (it used
    to return a NumPy array, and bfloat16 failed inside NumPy)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g).to(dtype) for _ in range(3))
    sub = [t.as_subclass(_MyTensor) for t in (q, k, v)]
    args = sub if which == "all" else [sub[0], k, v]
    with torch.no_grad():
        got = at.scaled_dot_product_attention(*args, is_causal=True)
        want = at.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert type(got) is _MyTensor and type(F.scaled_dot_product_attention(*args)) is _MyTensor
    assert got.dtype == dtype
    assert torch.equal(got.as_subclass(torch.Tensor), want)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_in_its_dtype_as_torch_does(autocast_dtype):
    """Under torch.autocast("cpu"), torch's SDPA casts floating arguments (the
    mask too, float64 not) to the autocast dtype: attncore does the same (it
    returned float32, and refused the mixed dtypes autocast makes legal)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    mask = torch.randn(16, 16, generator=g) * 3
    with torch.no_grad(), torch.autocast("cpu", dtype=autocast_dtype):
        for args in [(q, k, v), (q.to(autocast_dtype), k, v)]:
            got = at.scaled_dot_product_attention(*args, attn_mask=mask)
            want = F.scaled_dot_product_attention(*args, attn_mask=mask)
            assert got.dtype == want.dtype == autocast_dtype
            exact = at.scaled_dot_product_attention(
                *(t.to(autocast_dtype) for t in args), attn_mask=mask.to(autocast_dtype))
            assert torch.equal(got, exact)               # the mask is cast too, as torch does
            torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=2e-2)
        d = [t.double() for t in (q, k, v)]
        assert at.scaled_dot_product_attention(*d).dtype == torch.float64   # float64 is not cast


@pytest.mark.parametrize("rank", [2, 3, 4])
def test_vmap_matches_torchs(rank):
    """torch.vmap of attncore's SDPA (the op's vmap rule) against torch.vmap
    of torch's: every mapped dim position and mapped / unmapped mix of q, k,
    v and a bool mask, inputs of rank 2-4, causal; GQA and nested vmaps."""
    torch.manual_seed(rank)
    lq = (2, 3, 6, 8)[4 - rank:]
    lk, lv = lq[:-2] + (7, 8), lq[:-2] + (7, 5)
    V = 3

    def make(shape, dim):
        shape = list(shape)
        if dim is not None:
            shape.insert(dim, V)
        return torch.randn(shape)

    checked = 0
    for qd, kd, vd, md in itertools.product([0, rank, None], [0, None], [0, None], [0, None, "none"]):
        if qd is None and kd is None and vd is None and md in (None, "none"):
            continue
        args, dims = [make(lq, qd), make(lk, kd), make(lv, vd)], [qd, kd, vd]
        if md != "none":
            mask = torch.rand((6, 7) if md is None else (V, 6, 7)) > 0.3
            mask[..., 0] = True
            args.append(mask)
            dims.append(md)
        for causal in ([False] if md != "none" else [False, True]):
            def ours(q, k, v, m=None):
                return at.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)

            def theirs(q, k, v, m=None):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m,
                                                                        is_causal=causal)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")   # (torch's own SDPA has no batching rule)
                got = torch.vmap(ours, in_dims=tuple(dims))(*args)
                want = torch.vmap(theirs, in_dims=tuple(dims))(*args)
            assert got.shape == want.shape, (dims, got.shape, want.shape)
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
            checked += 1
    assert checked > 30
    q, k = torch.randn(3, 2, 8, 6, 16), torch.randn(3, 2, 2, 9, 16)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = torch.vmap(lambda q, k: at.scaled_dot_product_attention(q, k, k, enable_gqa=True))(q, k)
        want = torch.vmap(lambda q, k: torch.nn.functional.scaled_dot_product_attention(
            q, k, k, enable_gqa=True))(q, k)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
        x = torch.randn(3, 4, 2, 6, 8)
        torch.testing.assert_close(torch.vmap(torch.vmap(at.scaled_dot_product_attention))(x, x, x),
                                   torch.nn.functional.scaled_dot_product_attention(x, x, x),
                                   atol=2e-6, rtol=1e-5)


def test_vmap_dropout_follows_vmaps_randomness_and_grad_is_refused():
    """Dropout under torch.vmap: "error" is torch's error, "same" gives every
    slice the same masks (those of the plain call with that seed),
    "different" different ones. A tensor that requires grad, mapped or not,
    and torch.func.grad are a TypeError."""
    x = torch.randn(2, 6, 8).expand(4, 2, 6, 8)

    def f(q):
        return at.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="randomness"):
            torch.vmap(f)(x)
        torch.manual_seed(1)
        same = torch.vmap(f, randomness="same")(x)
        torch.manual_seed(1)
        plain = f(x[0])
        assert all(torch.equal(s, plain) for s in same)
        different = torch.vmap(f, randomness="different")(x)
        assert not any(torch.equal(different[0], d) for d in different[1:])
    with pytest.raises(TypeError, match="query requires grad"):
        torch.vmap(lambda q: at.scaled_dot_product_attention(q, q, q))(torch.randn(4, 2, 6, 8, requires_grad=True))
    with pytest.raises(TypeError, match=r"torch\.func transform's tensor"):
        torch.func.grad(lambda q: at.scaled_dot_product_attention(q, q, q).sum())(torch.randn(2, 6, 8))


def test_unreadable_tensor_dtypes_and_non_bool_enable_gqa_are_type_errors():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(TypeError, match=r"query has dtype torch\.float8_e4m3fn, which attncore "
                                        r"does not read"):
        at.scaled_dot_product_attention(*(t.to(torch.float8_e4m3fn) for t in (q, q, q)))
    with pytest.raises(TypeError, match="enable_gqa must be a bool"):
        at.scaled_dot_product_attention(q, q, q, enable_gqa="no")


@pytest.mark.parametrize("kind", ["key_padding_mask", "attn_mask"])
def test_mha_float64_takes_a_float32_mask_as_torch_does(kind):
    """torch's float64 MultiheadAttention (need_weights=False) takes float32
    masks, as its SDPA does; attncore's refused them."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double().eval()
    fast = at.MultiheadAttention.from_torch(mha)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    if kind == "key_padding_mask":
        m = torch.zeros(2, 5); m[0, 3:] = float("-inf")
    else:
        m = nn.Transformer.generate_square_subsequent_mask(5)
    assert m.dtype == torch.float32
    with torch.no_grad():
        want = mha(x, x, x, need_weights=False, **{kind: m})[0]
        got = fast(x, x, x, need_weights=False, **{kind: m})[0]
    assert fast.last_fallback == ""
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_mha_feature_size_mismatch_is_torchs_own_error():
    """A query whose last dim is not embed_dim: torch's forward runs and raises its
    own error (it was a RuntimeError from a matmul inside attncore's forward)."""
    m = at.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 6)
    with torch.no_grad(), pytest.raises(Exception) as got:
        m(x, x, x)
    with torch.no_grad(), pytest.raises(Exception) as want:
        nn.MultiheadAttention.forward(m, x, x, x)
    assert type(got.value) is type(want.value) and str(got.value) == str(want.value)
    assert "embed_dim" in m.last_fallback


# -- the plain eager lane (straight to the kernel entry, for decode-sized calls) --------------

def _counting_plain_kernel(monkeypatch):
    taken = []
    real = at._plain_kernel

    def counted(*args):
        res = real(*args)
        taken.append(res is not None)
        return res

    monkeypatch.setattr(at, "_plain_kernel", counted)
    return taken


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_plain_lane_is_taken_and_gives_the_general_routes_bits(monkeypatch, dtype, mask):
    """A plain call reaches the kernel entry from the wrapper's first lines,
    with the bits of the general route (the custom op's eager body)."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 8, 3, 16, generator=g).to(dtype)
    k, v = (torch.randn(2, 2, 11, 16, generator=g).to(dtype) for _ in range(2))
    m = {None: None, "bool": torch.rand(3, 11, generator=g) > 0.3,
         "float": torch.randn(3, 11, generator=g).to(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)}[mask]
    taken = _counting_plain_kernel(monkeypatch)
    with torch.no_grad():
        got = at.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)
        want = torch.ops.attncore.sdpa(q, k, v, m, 0.0, False, None, True, None, None, None)
    assert taken == [True]
    assert got.dtype == dtype and torch.equal(got, want)


@pytest.mark.parametrize("Lq", [1, 5])
def test_plain_lane_serves_hugging_face_calls_heads_last(monkeypatch, Lq):
    """hf_attention's common call (decode Lq=1, or a chunk written heads-last
    by the kernel) takes the lane; same bits as the general route."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 8, Lq, 16, generator=g)
    k, v = (torch.randn(1, 2, 9, 16, generator=g) for _ in range(2))
    mask = torch.ones(1, 1, Lq, 9, dtype=torch.bool).tril(9 - Lq)

    class Layer(nn.Module):
        is_causal = True

    taken = _counting_plain_kernel(monkeypatch)
    with torch.inference_mode():
        got, _ = at.hf_attention(Layer(), q, k, v, mask, scaling=0.25)
        want = torch.ops.attncore.sdpa(q, k, v, mask, 0.0, False, 0.25, True, None, None, None)
    assert taken == [True]
    assert got.shape == (1, Lq, 8, 16) and got.is_contiguous()
    assert torch.equal(got, want.transpose(1, 2))


def test_plain_lane_leaves_torch_function_modes_their_call():
    """A __torch_function__ mode sees attncore's function, as for torch's own."""
    from torch.overrides import TorchFunctionMode
    seen = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    q = torch.randn(1, 2, 3, 4)
    with torch.no_grad(), Record():
        at.scaled_dot_product_attention(q, q, q)
    assert seen[0] == "scaled_dot_product_attention"


def test_plain_lane_leaves_other_ranks_and_planning_to_the_general_route():
    """Mixed ranks get the general route's ValueError (the lane's heads check
    raised IndexError), and plan_info plans instead of running (reviewer)."""
    from attncore import _engine
    q, k = torch.randn(3, 5, 8), torch.randn(7, 8)
    with torch.no_grad():
        with pytest.raises(ValueError, match="must all be 2-D"):
            at.scaled_dot_product_attention(q, k, k)
        with pytest.raises(ValueError, match="must all be 2-D"):
            at.scaled_dot_product_attention(q[None], q[None], torch.randn(7, 4))
        x = torch.randn(1, 2, 5, 8)
        assert isinstance(_engine.plan_info(at.scaled_dot_product_attention, x, x, x), dict)


def test_wrapper_subclasses_without_storage_are_a_type_error():
    """A __torch_dispatch__ wrapper has no memory to read: a TypeError naming
    the argument (it was a RuntimeError from .numpy(); before session 21 a
    read through DLPack of memory that was not the tensor's values)."""
    from torch.utils._pytree import tree_map

    class Wrapper(torch.Tensor):   # (torchao's quantized tensors are built this way)
        @staticmethod
        def __new__(cls, inner):
            return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype,
                                                       strides=inner.stride())

        def __init__(self, inner):
            self.inner = inner

        __torch_function__ = torch._C._disabled_torch_function_impl

        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            unwrap = lambda t: t.inner if isinstance(t, Wrapper) else t
            out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))
            return tree_map(lambda t: Wrapper(t) if type(t) is torch.Tensor else t, out)

    w = Wrapper(torch.randn(1, 2, 3, 4))
    for sdpa in (at.scaled_dot_product_attention, attncore.scaled_dot_product_attention):
        with torch.no_grad(), pytest.raises(TypeError, match="query is a Wrapper whose memory "
                                                             "attncore cannot read"):
            sdpa(w, w, w)


def test_is_torch_with_a_stand_in_torch_module(monkeypatch):
    """Tests that stub torch (sys.modules["torch"] a MagicMock) still get arrays
    for lists (isinstance against the mock raised TypeError)."""
    from unittest import mock
    from attncore import _arrays
    monkeypatch.setitem(sys.modules, "torch", mock.MagicMock())
    assert not _arrays.is_torch([1.0, 2.0])
    out = attncore.softmax([[1.0, 2.0]])
    assert isinstance(out, np.ndarray)


def test_jit_trace_records_the_op_not_the_tracing_inputs_result():
    """torch.jit.trace of a module calling attncore records the custom op: a
    traced module computes each new input (the eager route's tensor, made by
    torch.from_numpy, was recorded as a constant: every later call returned
    the tracing inputs' result)."""
    class Attn(torch.nn.Module):
        def forward(self, q, k, v):
            return at.scaled_dot_product_attention(q, k, v, is_causal=True)

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=g) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # (TracerWarnings: shapes are recorded as constants)
        traced = torch.jit.trace(Attn(), (q, k, v))
    assert "attncore::sdpa" in str(traced.graph)
    for _ in range(2):
        q, k, v = (torch.randn(1, 2, 8, 16, generator=g) for _ in range(3))
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.testing.assert_close(traced(q, k, v), want, atol=1e-5, rtol=1e-5)


def test_nested_tensors_are_a_clear_type_error():
    """Nested tensors (strided and jagged layouts) are a TypeError naming the
    argument (the strided layout met torch's "Internal error ... doesn't
    support sizes" when attncore read its shape)."""
    for layout in (torch.strided, torch.jagged):
        nt = torch.nested.nested_tensor([torch.randn(4, 5, 16), torch.randn(4, 7, 16)], layout=layout)
        with pytest.raises(TypeError, match="query is a nested tensor; attncore reads dense tensors"):
            at.scaled_dot_product_attention(nt, nt, nt)
    q = torch.randn(2, 4, 5, 16)
    mask = torch.nested.nested_tensor([torch.ones(5, 5, dtype=torch.bool)] * 2)   # (a reviewer's case)
    with torch.no_grad(), pytest.raises(TypeError, match="attn_mask is a nested tensor"):
        at.scaled_dot_product_attention(q, q, q, attn_mask=mask)


def test_torch_jit_script_of_a_patched_model_says_what_works():
    """torch.jit.script cannot compile attncore's forward: a TypeError that
    says so and names what works (TorchScript's parser failed on forward's
    keyword-only argument instead)."""
    layer = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    torch.jit.script(model)
    at.patch(model)
    with pytest.raises(TypeError, match="Script the model before attncore.torch.patch"):
        torch.jit.script(model)


def test_meta_tensors_give_the_output_shape():
    """Tensors on the meta device (a model built under torch.device("meta"))
    get a meta result of the right shape, as from torch's SDPA, through the
    op's fake kernel; a meta tensor mixed with CPU ones is a TypeError."""
    q = torch.empty(2, 4, 5, 8, device="meta")
    k, v = torch.empty(2, 2, 7, 8, device="meta"), torch.empty(2, 2, 7, 3, device="meta")
    mask = torch.empty(5, 7, dtype=torch.bool, device="meta")
    out = at.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert out.device.type == "meta" and out.shape == (2, 4, 5, 3) and out.dtype == torch.float32
    with torch.device("meta"):
        layer = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
        model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    at.patch(model)
    with torch.no_grad():
        assert model(torch.empty(2, 7, 32, device="meta")).shape == (2, 7, 32)
    with pytest.raises(TypeError, match="key is on meta"):
        at.scaled_dot_product_attention(torch.randn(2, 4, 5, 8), k, torch.randn(2, 2, 7, 3), enable_gqa=True)
    # the checks of a real call run on meta tensors too (they returned a shape)
    with pytest.raises(ValueError, match="query has 4 heads but key/value have 3"):
        at.scaled_dot_product_attention(q, torch.empty(2, 3, 7, 8, device="meta"),
                                        torch.empty(2, 3, 7, 3, device="meta"), enable_gqa=True)
    with pytest.raises(TypeError, match="query has dtype torch.int32"):
        at.scaled_dot_product_attention(q.int(), k.int(), v.int(), enable_gqa=True)
    with pytest.raises(ValueError, match=r"attn_mask of shape \(5, 6\) does not broadcast"):
        at.scaled_dot_product_attention(q, k, v, enable_gqa=True,
                                        attn_mask=torch.empty(5, 6, dtype=torch.bool, device="meta"))
