"""The rows path's row kernels (row_max, exp_sum_row, scale_row) on every
level: a contiguous unmasked row is read in place (no staging), a masked or
strided one through the staging buffer, a row of at least SM_SPLIT_MIN
entries in segments shared by the threads (csrc/driver/softmax.c). The
in-place and staged routes run the same operations, so they agree bit for
bit; rows end at an unreadable page at every length up to 70 (the masked
tail loads of the 4-accumulator max, the 2-vector exp loop and the scale);
rows split into segments keep the special values, the accuracy, and the
same bits for any thread count (split across the threads or not)."""
import numpy as np
import pytest

import attncore
from attncore.softmax import softmax_plan

from _guard import guarded, guarded_allocations, guarded_copy
from _softmax_oracle import check, softmax_np

SM_SEG = 65536              # csrc/driver/softmax.c
SM_SPLIT_MIN = 2 * SM_SEG
LENGTHS = list(range(1, 71)) + [127, 128, 129, 255, 256, 257, 4095, 4096, 4097, 9000]


@pytest.fixture(params=["f32", "f64"])
def dt(request):
    return {"f32": np.float32, "f64": np.float64}[request.param]


def test_in_place_and_staged_rows_agree_bitwise(isa, dt, rng):
    for L in LENGTHS:
        x = (rng.standard_normal((3, L)) * 4).astype(dt)
        direct = attncore.softmax(x)
        check(direct, softmax_np(x), dt, scale=4, err_msg=f"L={L}")
        # a mask that keeps everything, and valid lengths of L: staged copies
        np.testing.assert_array_equal(attncore.softmax(x, mask=np.ones(x.shape, bool)), direct,
                                      err_msg=f"L={L} mask")
        np.testing.assert_array_equal(attncore.softmax(x, valid_lens=np.full(3, L)), direct,
                                      err_msg=f"L={L} valid_lens")
        # a strided output: the row is staged, scaled into out with a stride
        out = np.zeros((3, 2 * L), dt)[:, ::2]
        attncore.softmax(x, out=out)
        np.testing.assert_array_equal(out, direct, err_msg=f"L={L} strided out")
        # in place (out is x)
        y = x.copy()
        attncore.softmax(y, out=y)
        np.testing.assert_array_equal(y, direct, err_msg=f"L={L} in place")


@pytest.mark.parametrize("where", ["end", "start"])
def test_in_place_rows_at_a_guard_page(isa, dt, where):
    rng = np.random.default_rng(7)
    for L in range(1, 71):
        x = guarded_copy((rng.standard_normal((2, L)) * 3).astype(dt), where)
        assert softmax_plan(x)["path"] == "rows"
        with guarded_allocations():
            got = attncore.softmax(x)
        check(got, softmax_np(x), dt, scale=3, err_msg=f"L={L}")
        out = guarded((2, L), dt, where)
        attncore.softmax(x, out=out)
        np.testing.assert_array_equal(out, got, err_msg=f"L={L} out=")


def test_row_special_values_in_place(isa, dt):
    x = np.array([[0.0, -np.inf, 1.0, 2.0],          # -inf entry: weight 0
                  [-np.inf] * 4,                     # nothing kept: zeros
                  [1.0, np.nan, 2.0, 3.0],           # NaN: NaN row
                  [1.0, np.inf, 2.0, 3.0],           # +inf: NaN row (inf - inf)
                  [1e30, 1e30, 1e30 - 1e24, -1e30]], dt)  # far from 0: no term in |x|
    got = attncore.softmax(x)
    ref = softmax_np(x)
    assert got[0, 1] == 0
    np.testing.assert_array_equal(got[1], 0)
    assert np.isnan(got[2]).all() and np.isnan(got[3]).all()
    check(got[[0, 4]], ref[[0, 4]], dt)


def test_split_rows(isa, dt, rng):
    L = SM_SPLIT_MIN + 4097          # 3 segments, the last one short
    x = (rng.standard_normal((3, L)) * 5).astype(dt)
    assert softmax_plan(x)["path"] == "rows"
    got = attncore.softmax(x, num_threads=1)    # one thread: no split
    check(got, softmax_np(x), dt, scale=5)
    np.testing.assert_allclose(got.sum(axis=1, dtype=np.float64), 1, rtol=60 * np.finfo(dt).eps)
    # 4 threads share the 3 rows' segments; 2 threads take whole rows; a
    # row alone is split with 2 threads or more: the same bits every time
    for t in (2, 3, 4):
        np.testing.assert_array_equal(attncore.softmax(x, num_threads=t), got, err_msg=f"{t} threads")
    for t in (1, 2, 3):
        np.testing.assert_array_equal(attncore.softmax(x[1:2], num_threads=t), got[1:2], err_msg=f"1 row, {t}")
    # the staged route (chunks through the buffer): the same weights
    check(attncore.softmax(x, mask=np.ones(x.shape, bool)), got.astype(np.float64), dt)
    # in place
    y = x[:1].copy()
    attncore.softmax(y, out=y, num_threads=2)
    np.testing.assert_array_equal(y, got[:1])


def test_split_rows_special_values(isa, dt):
    L = SM_SPLIT_MIN + 1
    x = np.zeros((5, L), dt)
    x[0, 3 * SM_SEG // 2] = np.nan                    # NaN in one segment: NaN row
    x[1, :] = -np.inf                                 # nothing kept: zeros
    x[2, :SM_SEG] = -np.inf                           # a segment with nothing kept
    x[3, -1] = np.inf                                 # +inf in the last segment: NaN row
    x[4, :] = 1e30                                    # far from 0: uniform
    x[4, 5] = 1e30 + 1e24
    for t in (1, 2, 8):
        got = attncore.softmax(x, num_threads=t)
        assert np.isnan(got[0]).all() and np.isnan(got[3]).all()
        np.testing.assert_array_equal(got[1], 0)
        np.testing.assert_array_equal(got[2, :SM_SEG], 0)
        check(got[2], softmax_np(x[2]), dt)
        check(got[4], softmax_np(x[4]), dt)
