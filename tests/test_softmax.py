"""attncore.softmax and attncore.masked_softmax: against the pure-Python
reference and a float64 NumPy formula on every kernel level, every axis and
layout (and the path the kernel takes for it), masks, valid lengths, d2l's
masked_softmax, special values, out= and in place, 16-bit dtypes, torch and
scipy as independent oracles, thread-count independence and the errors."""
import numpy as np
import pytest

import attncore
from attncore import _config
from attncore import reference as R
from attncore.softmax import softmax_plan

from _softmax_oracle import check, d2l_masked_softmax, softmax_np


@pytest.fixture(params=["f32", "f64"])
def dt(request):
    return {"f32": np.float32, "f64": np.float64}[request.param]


# -- against the reference and the formula, on every level ----------------------------

@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 17)])
def test_every_axis_matches_reference(isa, dt, rng, shape):
    x = (rng.standard_normal(shape) * 3).astype(dt)
    for axis in range(-len(shape), len(shape)):
        got = attncore.softmax(x, axis)
        assert got.dtype == dt and got.shape == x.shape
        check(got, R.softmax(x, axis), dt, err_msg=f"axis {axis}")


@pytest.mark.parametrize("L", [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 127, 128, 129, 300, 4095, 4096,
                               4097, 9000])
def test_row_lengths_across_vector_block_and_chunk_edges(isa, dt, rng, L):
    x = (rng.standard_normal((3, L)) * 4).astype(dt)
    check(attncore.softmax(x), softmax_np(x), dt, scale=4)
    check(attncore.softmax(np.ascontiguousarray(x.T), axis=0), softmax_np(x.T, 0), dt, scale=4)


def test_paths_are_the_ones_named(rng):
    x = rng.standard_normal((64, 48)).astype(np.float32)
    assert softmax_plan(x, -1)["path"] == "rows"
    plan = softmax_plan(x, 0)
    assert plan["path"] == "panel" and plan["lanes"] == 48
    assert softmax_plan(x[:, ::3], 0)["path"] == "rows"          # no unit-stride dim: strided rows
    assert softmax_plan(np.asfortranarray(x), -1)["path"] == "panel"
    assert softmax_plan(np.asfortranarray(x), 0)["path"] == "rows"
    # contiguous row dims merge: one odometer dim for (4, 5, 6) rows
    assert softmax_plan(rng.standard_normal((4, 5, 6, 7)), -1)["rows"] == 120
    assert softmax_plan(rng.standard_normal((3, 9000)), -1)["rows_per_unit"] == 1   # long rows
    assert softmax_plan(rng.standard_normal((3000, 2000)), 0)["units"] == 2        # 1024 lanes a unit


@pytest.mark.parametrize("layout", ["transposed", "reversed", "sliced", "broadcast", "fortran", "3d-middle"])
def test_layouts_read_in_place(isa, dt, rng, layout):
    base = (rng.standard_normal((6, 40, 9)) * 3).astype(dt)
    x = {"transposed": base.transpose(2, 0, 1), "reversed": base[::-1, :, ::-1],
         "sliced": base[::2, 3:37:3, 1::2], "broadcast": np.broadcast_to(base[:1], base.shape),
         "fortran": np.asfortranarray(base), "3d-middle": base}[layout]
    for axis in range(3):
        check(attncore.softmax(x, axis), softmax_np(x, axis), dt, scale=3, err_msg=f"axis {axis}")


def test_output_follows_the_input_memory_order(rng):
    x = np.asfortranarray(rng.standard_normal((30, 20)).astype(np.float32))
    assert attncore.softmax(x, 0).flags.f_contiguous
    assert attncore.softmax(x.T, 1).flags.c_contiguous


# -- masks and valid lengths -----------------------------------------------------------

@pytest.mark.parametrize("mshape", [(5, 33), (33,), (1, 33), (4, 1, 33), (4, 5, 1), ()])
def test_bool_and_float_masks_broadcast(isa, dt, rng, mshape):
    x = (rng.standard_normal((4, 5, 33)) * 2).astype(dt)
    mb = rng.random(mshape) > 0.3
    mf = (rng.standard_normal(mshape) * 2).astype(dt)
    for axis in (-1, 0, 1):
        check(attncore.softmax(x, axis, mask=mb), softmax_np(x, axis, mask=mb), dt, scale=4)
        check(attncore.softmax(x, axis, mask=mf), softmax_np(x, axis, mask=mf), dt, scale=4)
    small = x[:2, :2, :6]
    sm = np.broadcast_to(mb, x.shape)[:2, :2, :6]
    check(attncore.softmax(small, mask=sm), R.softmax(small, mask=sm), dt)


def test_masks_are_read_through_strides_never_expanded(rng):
    x = rng.standard_normal((8, 50)).astype(np.float32)
    m = (rng.random((50, 8)) > 0.5).T           # transposed view
    mf = np.flip(rng.standard_normal((8, 50)).astype(np.float32), 1)
    check(attncore.softmax(x, mask=m), softmax_np(x, mask=m), np.float32)
    check(attncore.softmax(x, 0, mask=mf), softmax_np(x, 0, mask=mf), np.float32, scale=4)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_valid_lens_along_any_axis(isa, dt, rng, axis):
    x = (rng.standard_normal((3, 20, 7)) * 2).astype(dt)
    rows = x.shape[:axis] + x.shape[axis + 1:]
    vl = rng.integers(0, x.shape[axis] + 1, rows)
    check(attncore.softmax(x, axis, valid_lens=vl), softmax_np(x, axis, valid_lens=vl), dt, scale=2)
    check(attncore.softmax(x, axis, valid_lens=vl), R.softmax(x, axis, valid_lens=vl), dt, scale=2)
    keep = np.expand_dims(vl, axis)                       # keepdims form
    check(attncore.softmax(x, axis, valid_lens=keep), softmax_np(x, axis, valid_lens=vl), dt, scale=2)
    one = vl[:1] if axis else vl[:, :1]                   # size-1 dim broadcast
    check(attncore.softmax(x, axis, valid_lens=one), softmax_np(x, axis, valid_lens=one), dt, scale=2)
    m = rng.random(x.shape) > 0.4
    check(attncore.softmax(x, axis, valid_lens=vl, mask=m),
          softmax_np(x, axis, mask=m, valid_lens=vl), dt, scale=2)


def test_valid_lens_scalar_and_zero(rng):
    x = rng.standard_normal((4, 6))
    np.testing.assert_allclose(attncore.softmax(x, valid_lens=3), softmax_np(x, valid_lens=3), rtol=1e-12)
    np.testing.assert_array_equal(attncore.softmax(x, valid_lens=0), np.zeros_like(x))


@pytest.mark.parametrize("shape", [(2, 3, 5), (4, 9), (2, 2, 3, 40)])
def test_masked_softmax_is_d2ls(isa, dt, rng, shape):
    X = (rng.standard_normal(shape) * 2).astype(dt)
    per_batch = rng.integers(0, shape[-1] + 1, shape[:-2])
    per_row = rng.integers(0, shape[-1] + 1, shape[:-1])
    if len(shape) >= 4:   # (B, H) reads two ways there: the keepdims form
        per_batch = per_batch[..., None]
    for vl in (per_batch, per_row, None, np.int64(2)):
        full = np.broadcast_to(vl, shape[:-1]) if np.ndim(vl) == len(shape) - 1 else vl
        check(attncore.masked_softmax(X, vl), R.masked_softmax(X, full), dt, scale=2)
    if len(shape) == 3:   # d2l's own forms: (B,) repeated over queries, (B, Q) per row
        for vl in (per_batch, per_row):
            check(attncore.masked_softmax(X, vl), d2l_masked_softmax(X, vl), dt, scale=2)


def test_masked_softmax_d2l_examples():
    # d2l: masked_softmax(torch.rand(2, 2, 4), torch.tensor([2, 3]))
    X = np.random.default_rng(0).random((2, 2, 4)).astype(np.float32)
    out = attncore.masked_softmax(X, np.array([2, 3]))
    np.testing.assert_array_equal(out[0, :, 2:], 0)
    np.testing.assert_array_equal(out[1, :, 3:], 0)
    np.testing.assert_allclose(out.sum(-1), 1, rtol=1e-6)
    out = attncore.masked_softmax(X, np.array([[1, 3], [2, 4]]))
    np.testing.assert_array_equal(out[0, 0, 1:], 0)
    np.testing.assert_allclose(out[1, 1], softmax_np(X[1, 1]), rtol=1e-6)
    # valid_len 0: uniform (masked scores are -1e6, not -inf); floats as MXNet's d2l passes them
    np.testing.assert_allclose(attncore.masked_softmax(X, np.array([0.0, 4.0]))[0], 0.25, rtol=1e-7)
    # lengths outside [0, K] act as 0 and K, as in d2l
    np.testing.assert_allclose(attncore.masked_softmax(X, np.array([-3, 9])),
                               attncore.masked_softmax(X, np.array([0, 4])), rtol=0)


def test_masked_softmax_fill_competes_like_d2l():
    # kept scores below -1e6: the masked -1e6 entries win, exactly as in d2l
    X = np.array([[[-3e6, -2e6, 0.0]]])
    np.testing.assert_allclose(attncore.masked_softmax(X, np.array([2])), [[[0, 0, 1]]], atol=1e-300)
    np.testing.assert_allclose(attncore.masked_softmax(X, np.array([2])), d2l_masked_softmax(X, [2]))


# -- special values ----------------------------------------------------------------------

@pytest.mark.parametrize("axis", [-1, 0])
def test_special_rows(isa, dt, axis):
    inf, nan = np.inf, np.nan
    rows = np.array([[1.0, 2.0, 3.0, 4.0],
                     [-inf, -inf, -inf, -inf],      # all -inf: zeros
                     [nan, 1.0, 2.0, 3.0],          # NaN kept: NaN row
                     [-inf, nan, -inf, -inf],       # NaN with nothing finite: NaN row
                     [inf, 1.0, 2.0, 3.0],          # +inf: inf - inf -> NaN row
                     [-inf, 0.0, -inf, 5.0],        # -inf entries: weight exactly 0
                     [1e30, -1e30, 0.0, 1e30]], dt)
    x = rows if axis == -1 else np.ascontiguousarray(rows.T)
    got = attncore.softmax(x, axis)
    got = got if axis == -1 else got.T
    np.testing.assert_array_equal(got[1], 0)
    assert np.isnan(got[2]).all() and np.isnan(got[3]).all() and np.isnan(got[4]).all()
    assert got[5, 0] == 0 and got[5, 2] == 0
    np.testing.assert_allclose(got[6], [0.5, 0, 0, 0.5], rtol=1e-6)
    check(got[[0, 5]], softmax_np(rows[[0, 5]]), dt)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(R.softmax(rows.astype(np.float64))))


def test_fully_masked_rows_give_zeros_and_masked_nan_is_not_read(isa, dt):
    x = np.array([[np.nan, 1.0, 2.0], [3.0, np.nan, np.inf]], dt)
    m = np.array([[False, True, True], [False, False, False]])
    got = attncore.softmax(x, mask=m)
    check(got[0], [0.0, *softmax_np([1.0, 2.0])], dt)
    np.testing.assert_array_equal(got[1], 0)
    got = attncore.softmax(x, valid_lens=np.array([0, 0]))
    np.testing.assert_array_equal(got, 0)
    got = attncore.softmax(x.T.copy(), 0, mask=m.T)            # the panel path too
    np.testing.assert_array_equal(got[:, 1], 0)
    assert got[0, 0] == 0 and not np.isnan(got).any()


def test_empty_and_degenerate_shapes(dt):
    for shape, axis in [((0,), 0), ((3, 0), 1), ((0, 4), 1), ((0, 4), 0), ((2, 0, 3), 0)]:
        got = attncore.softmax(np.zeros(shape, dt), axis)
        assert got.shape == shape and got.dtype == dt
    np.testing.assert_array_equal(attncore.softmax(np.array([[5.0], [np.nan]], dt)), [[1.0], [np.nan]])


# -- out=, in place, dtypes, array types ----------------------------------------------------

def test_out_and_in_place(isa, dt, rng):
    x = rng.standard_normal((9, 70)).astype(dt)
    ref = softmax_np(x)
    out = np.empty_like(x)
    assert attncore.softmax(x, out=out) is out
    check(out, ref, dt)
    outf = np.empty(x.shape, dt, order="F")
    check(attncore.softmax(x, out=outf), ref, dt)
    y = x.copy()
    assert attncore.softmax(y, out=y) is y                  # in place
    check(y, ref, dt)
    z = np.ascontiguousarray(x.T)
    attncore.softmax(z, 0, out=z)                            # in place, panel path
    check(z, ref.T, dt)
    big = np.concatenate([x, x[:1]])                          # out overlapping x, shifted
    attncore.softmax(big[:-1], out=big[1:])
    check(big[1:], ref, dt)


def test_half_dtypes_compute_in_float32(rng):
    x = rng.standard_normal((5, 40)).astype(np.float16)
    got = attncore.softmax(x, 0)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), softmax_np(x, 0), rtol=2e-3, atol=2e-4)
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
    xb = x.astype(ml_dtypes.bfloat16)
    got = attncore.softmax(xb, mask=rng.random(40) > 0.5)
    assert got.dtype == xb.dtype
    out = np.empty(x.shape, np.float16)
    attncore.softmax(x, out=out)
    np.testing.assert_allclose(out.astype(np.float64), softmax_np(x), rtol=2e-3, atol=2e-4)
    assert attncore.masked_softmax(x, np.array([3] * 5)).dtype == np.float16


def test_against_scipy(dt, rng):
    special = pytest.importorskip("scipy.special", reason="scipy is not installed")
    x = (rng.standard_normal((6, 7, 300)) * 5).astype(dt)
    for axis in (-1, 0, 1):
        check(attncore.softmax(x, axis), special.softmax(x.astype(np.float64), axis=axis), dt, scale=5)


def test_against_torch_and_tensors_in_tensors_out(dt, rng):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x = (rng.standard_normal((4, 5, 129)) * 3).astype(dt)
    t = torch.from_numpy(x)
    for axis in (-1, 0, 1):
        ref = torch.softmax(t.double(), dim=axis).numpy()
        check(attncore.softmax(x, axis), ref, dt, scale=3)
    got = attncore.softmax(t, 1)
    assert isinstance(got, torch.Tensor) and got.dtype == t.dtype
    check(got.numpy(), torch.softmax(t.double(), 1).numpy(), dt, scale=3)
    got = attncore.softmax(t.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    got = attncore.masked_softmax(t, torch.tensor([1, 2, 3, 4]))
    assert isinstance(got, torch.Tensor)


# -- threads -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["rows", "panel", "long", "masked"])
def test_bitwise_independent_of_thread_count(isa, dt, rng, case):
    if case == "rows":
        x, kw = rng.standard_normal((300, 257)).astype(dt), dict(axis=-1)
    elif case == "panel":
        x, kw = rng.standard_normal((257, 1300)).astype(dt), dict(axis=0)
    elif case == "long":
        x, kw = rng.standard_normal((9, 20000)).astype(dt), dict(axis=-1)
    else:
        x = rng.standard_normal((200, 300)).astype(dt)
        kw = dict(axis=0, mask=rng.random((200, 300)) > 0.5, valid_lens=rng.integers(0, 201, 300))
    results = [attncore.softmax(x, num_threads=n, **kw) for n in (1, 2, 3, 5)]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


# -- errors -----------------------------------------------------------------------------------

def test_softmax_errors_name_arguments_and_shapes():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        attncore.softmax(x, 3)
    with pytest.raises(TypeError, match="axis must be an int"):
        attncore.softmax(x, 1.0)
    with pytest.raises(ValueError, match="at least one dimension"):
        attncore.softmax(np.float32(1.0))
    with pytest.raises(TypeError, match="float32 or float64"):
        attncore.softmax(np.zeros(3, np.int32))
    with pytest.raises(ValueError, match=r"mask of shape \(5,\) does not broadcast to x's shape \(2, 3, 4\)"):
        attncore.softmax(x, mask=np.ones(5, bool))
    with pytest.raises(ValueError, match="does not broadcast"):
        attncore.softmax(x, mask=np.ones((1, 2, 3, 4), bool))
    with pytest.raises(TypeError, match="must have the input's dtype float32"):
        attncore.softmax(x, mask=np.zeros(4))
    with pytest.raises(TypeError, match="bool .True = keep. or a float"):
        attncore.softmax(x, mask=np.zeros(4, np.int8))
    with pytest.raises(ValueError, match=r"valid_lens has shape \(2,\).*row shape \(2, 3\).*masked_softmax"):
        attncore.softmax(x, valid_lens=np.array([1, 2]))          # d2l's (B,): never guessed
    with pytest.raises(ValueError, match=r"axis 2 must have size 1"):
        attncore.softmax(x, valid_lens=np.ones((2, 3, 4), int))
    with pytest.raises(ValueError, match=r"does not match the rows \(2, 4\)"):
        attncore.softmax(x, 1, valid_lens=np.ones((2, 3), int))
    with pytest.raises(ValueError, match=r"valid_lens must be in \[0, the axis length=4\]"):
        attncore.softmax(x, valid_lens=np.full((2, 3), 5))
    with pytest.raises(TypeError, match="valid_lens must be an integer array"):
        attncore.softmax(x, valid_lens=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"out has shape \(2, 3\); expected \(2, 3, 4\)"):
        attncore.softmax(x, out=np.empty((2, 3), np.float32))
    with pytest.raises(TypeError, match="out has dtype float64; expected float32"):
        attncore.softmax(x, out=np.empty(x.shape))
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        attncore.softmax(x, num_threads=0)


def test_masked_softmax_errors():
    X = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"valid_lens has shape \(3,\).*\(2,\) \(one per batch element"):
        attncore.masked_softmax(X, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"\(2, 3\) \(one per row\)"):
        attncore.masked_softmax(X, np.ones((3, 2), int))       # d2l would reshape it silently
    with pytest.raises(ValueError, match="non-integer"):
        attncore.masked_softmax(X, np.array([1.5, 2.0]))
    with pytest.raises(TypeError, match="integer array"):
        attncore.masked_softmax(X, np.array([True, False]))
    with pytest.raises(TypeError, match="scores must be float32 or float64"):
        attncore.masked_softmax(np.zeros((2, 3), int), np.array([1, 2]))


def test_masked_softmax_4d_lengths_that_read_two_ways_raise(rng):
    """Scores (B, H, Q, K): valid_lens (B, H) is also SDPA's (B, Lq), one
    length per query row, wherever H == Q; it was read per (batch, head)
    without a word (an API audit). It raises for every size (not only where
    H == Q: no call fails or changes meaning at one length), and both
    keepdims forms the message names work."""
    for H in (3, 2):
        X = rng.standard_normal((2, H, 3, 5)).astype(np.float32)
        vl = rng.integers(0, 6, (2, H))
        with pytest.raises(ValueError, match=rf"valid_lens of shape \(2, {H}\) for scores \(2, {H}, 3, 5\) "
                                             r"reads two ways"):
            attncore.masked_softmax(X, vl)
        per_head = attncore.masked_softmax(X, vl[..., None])
        check(per_head, R.masked_softmax(X, np.broadcast_to(vl[..., None], (2, H, 3))), np.float32)
    rows = np.array([[1, 2, 3], [3, 2, 1]])
    per_row = attncore.masked_softmax(X, rows[:, None, :])
    check(per_row, R.masked_softmax(X, np.broadcast_to(rows[:, None, :], (2, 2, 3))), np.float32)
    assert (per_row[0, :, 0, 1:] == 0).all()


def test_misaligned_byteswapped_and_field_inputs_are_read_right(rng):
    x = rng.standard_normal((5, 37)).astype(np.float32)
    ref = softmax_np(x)
    raw = np.zeros(x.nbytes + 1, np.uint8)
    mis = np.frombuffer(raw.data, np.float32, count=x.size, offset=1).reshape(x.shape)
    mis[...] = x
    check(attncore.softmax(mis), ref, np.float32)
    check(attncore.softmax(x.astype(">f4")), ref, np.float32)
    rec = np.zeros(x.shape, [("a", np.int8), ("x", np.float32)])
    rec["x"] = x
    check(attncore.softmax(rec["x"], 0), softmax_np(x, 0), np.float32)
    m = np.zeros(x.shape, [("a", np.int8), ("m", np.bool_)])["m"]
    check(attncore.softmax(x, mask=~m), ref, np.float32)
    xq = x[0].astype(">f8")
    np.testing.assert_allclose(attncore.kernel_regression(xq, xq, xq), R.kernel_regression(xq, xq, xq),
                               rtol=1e-12)


def test_masked_softmax_float_lengths_past_int64_mean_the_whole_row():
    """A float length beyond int64's range (1e30) acts like any length past
    the row's end (the whole row), as d2l's comparison does; it used to cast
    to garbage and mask the row. -1e30 masks it all."""
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_allclose(attncore.masked_softmax(x, np.array([1e30])),
                               attncore.masked_softmax(x, np.array([3.0])), rtol=0)
    np.testing.assert_allclose(attncore.masked_softmax(x, np.array([-1e30])),
                               attncore.masked_softmax(x, np.array([0.0])), rtol=0)
