"""Memory safety of the torch tensors' kernel entry (attncore._core.
sdpa_fast_torch, which attncore.torch's plain lane and its general route
call): it reads each tensor's data pointer, storage offset and strides
itself, not through NumPy's buffer protocol. Every tensor here is memory
that borders an unreadable page (after its last byte, or before its first),
including masks of every rank, broadcast (stride-0) masks, Hugging Face's
heads-last views and the `out` view the lane writes heads-last into; the
output the entry allocates is guarded too. Each sweep asserts that the
entry took every call (a call it declines would run elsewhere), on every
kernel level this CPU runs, and checks the result against float64 NumPy.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import attncore.torch as at   # noqa: E402
from attncore import _config, _core   # noqa: E402
from attncore._engine import plan_info   # noqa: E402

from _guard import guarded, guarded_allocations, guarded_copy, is_guarded   # noqa: E402
from _oracle import sdpa_numpy   # noqa: E402

from conftest import SUPPORTED_ISAS as LEVELS   # noqa: E402

DTYPES = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16, "f16": torch.float16}
NUMPY_OF = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
            torch.bfloat16: np.int16}   # (bfloat16 bits as int16: NumPy has no bfloat16)
WHERE = ["end", "start"]
# the 16-bit results round to 2^-8 (bfloat16) or 2^-11 (float16)
TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.fixture(params=LEVELS)
def level(request):
    with _config.use_isa(request.param):
        yield request.param


@pytest.fixture
def entry_calls(monkeypatch):
    """The results of every sdpa_fast_torch call (None: declined)."""
    results = []
    real = _core.sdpa_fast_torch

    def counted(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(_core, "sdpa_fast_torch", counted)
    return results


def guarded_tensor(values, dtype, where):
    """A tensor of `dtype` holding `values` (float64, rounded to dtype) in
    memory that borders a guard page."""
    t = torch.from_numpy(np.array(values)).to(dtype)   # (ascontiguousarray makes 0-d 1-d)
    raw = t.view(torch.int16) if dtype is torch.bfloat16 else t
    g = guarded_copy(raw.numpy(), where)
    g = torch.from_numpy(g)
    return g.view(torch.bfloat16) if dtype is torch.bfloat16 else g


def as_float64(t):
    return t.to(torch.float64).numpy()


def check(got, want, dtype):
    np.testing.assert_allclose(as_float64(got), want, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("where", WHERE)
def test_plain_lane_over_guarded_tensors(level, entry_calls, dtype, where):
    """Head sizes, GQA groups, query rows and key lengths across the rows,
    split-K and panel paths, with masks of rank 0 to 4 (bool and float,
    some broadcast by stride 0) and causal limits: the lane's kernel entry
    reads every tensor in place."""
    dtype = DTYPES[dtype]
    rng = np.random.default_rng(17)
    mask_dtype = torch.float64 if dtype is torch.float64 else torch.float32
    paths, ranks = set(), set()
    cases = [(1, 1, 1, 1, 1), (2, 1, 3, 17, 7), (4, 2, 1, 129, 64), (2, 2, 9, 133, 33),
             (8, 1, 1, 1100, 128), (1, 1, 70, 260, 80), (3, 3, 5, 31, 2), (2, 1, 1, 2049, 40)]
    for n, (Hq, Hkv, Lq, Lk, D) in enumerate(cases):
        q = guarded_tensor(rng.standard_normal((2, Hq, Lq, D)), dtype, where)
        k = guarded_tensor(rng.standard_normal((2, Hkv, Lk, D)), dtype, where)
        v = guarded_tensor(rng.standard_normal((2, Hkv, Lk, D + n % 3)), dtype, where)
        kind = n % 7
        if kind == 0:
            mask = None
        elif kind == 1:
            mask = guarded_tensor(rng.random((2, Hq, Lq, Lk)) > 0.3, torch.bool, where)
        elif kind == 2:   # key padding, broadcast over heads and rows by stride 0
            mask = guarded_tensor(np.arange(Lk) < max(1, Lk - 5), torch.bool, where)
            mask = mask.view(1, 1, 1, Lk).expand(2, Hq, Lq, Lk)
        elif kind == 3:
            mask = guarded_tensor(rng.standard_normal((Lq, Lk)), mask_dtype, where)
        elif kind == 4:
            mask = guarded_tensor(rng.standard_normal(()), mask_dtype, where)
        elif kind == 5:
            mask = guarded_tensor(rng.random(Lk) > 0.2, torch.bool, where)
        else:
            mask = guarded_tensor(rng.standard_normal((Hq, Lq, Lk)), mask_dtype, where)
        ranks.add(None if mask is None else mask.dim())
        causal = n % 2 == 1 and Lq <= Lk
        kw = dict(attn_mask=mask, is_causal=causal, enable_gqa=Hq != Hkv)
        plan = plan_info(at.scaled_dot_product_attention, q, k, v, **kw)
        paths.add((plan["path"], plan["chunks"] > 1))
        with torch.no_grad(), guarded_allocations():
            got = at.scaled_dot_product_attention(q, k, v, **kw)
        assert entry_calls[-1] is not None, f"the entry declined case {n}"
        assert is_guarded(entry_calls[-1])
        m = None if mask is None else as_float64(mask) if mask.dtype is not torch.bool else mask.numpy()
        want = sdpa_numpy(as_float64(q), as_float64(k), as_float64(v), mask=m,
                          causal_offset=0 if causal else None)[0]
        assert got.dtype == dtype and got.shape == (2, Hq, Lq, D + n % 3)
        check(got, want, dtype)
    assert len(entry_calls) == len(cases)
    assert ranks == {None, 0, 1, 2, 3, 4}, ranks
    assert {("panel", False), ("rows", False), ("rows", True)} <= paths, paths


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("where", WHERE)
def test_hugging_face_heads_last_views_and_out(level, entry_calls, dtype, where):
    """Hugging Face's layout: (B, L, H, D) memory read as (B, H, L, D)
    views, K/V sliced out of a longer (static) cache, and the heads-last
    `out` view the lane writes chunks into, all guarded."""
    dtype = DTYPES[dtype]
    rng = np.random.default_rng(23)
    for Lq, Lk, cap in [(1, 5, 9), (4, 40, 40), (7, 300, 301), (1, 1030, 1030)]:
        q = guarded_tensor(rng.standard_normal((2, Lq, 8, 16)), dtype, where).transpose(1, 2)
        k = guarded_tensor(rng.standard_normal((2, 2, cap, 16)), dtype, where)[:, :, :Lk]
        v = guarded_tensor(rng.standard_normal((2, 2, cap, 16)), dtype, where)[:, :, :Lk]
        mask = guarded_tensor(np.tril(np.ones((Lq, Lk), bool), Lk - Lq), torch.bool, where)
        buf = torch.from_numpy(guarded((2, Lq, 8, 16), NUMPY_OF[dtype], where))
        buf = buf.view(torch.bfloat16) if dtype is torch.bfloat16 else buf
        out = buf.transpose(1, 2)
        with guarded_allocations():
            res = _core.sdpa_fast_torch("sdpa", q, k, v, False, 0.25, True, None, _config.active_isa(),
                                        (torch.float32, torch.float64, torch.bfloat16, torch.float16,
                                         torch.bool), mask, out)
        assert res is out
        want = sdpa_numpy(as_float64(q), as_float64(k), as_float64(v), mask=mask.numpy(), scale=0.25)[0]
        check(out, want, dtype)
        with torch.no_grad(), guarded_allocations():   # and through the public function
            got = at.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25, enable_gqa=True)
        assert entry_calls[-1] is not None
        assert torch.equal(got, out)
