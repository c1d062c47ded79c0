"""Memory safety of softmax, masked_softmax and kernel_regression: every
array the kernels read or write borders an unreadable page (after its last
byte, or before its first), over row lengths 1..33 and across the block,
chunk and panel edges, strided axes (rows and panel paths, asserted through
the plan), masks, valid lengths, out= and every kernel level. A read or
write one element outside an array is a SIGSEGV (pytest's faulthandler
names the test); every result is also checked against float64 NumPy."""
import numpy as np
import pytest

import attncore
from attncore import _config
from attncore.softmax import softmax_plan

from _guard import every_kernel_array_guarded, guarded, guarded_allocations, guarded_copy
from _softmax_oracle import check, kernel_regression_np, softmax_np

from conftest import SUPPORTED_ISAS as LEVELS   # (not the emulated avx512bf16emu)
WHERE = ["end", "start"]
SHORT = list(range(1, 34))
EDGES = [63, 64, 65, 127, 128, 129, 255, 256, 257, 4095, 4096, 4097, 9000]


@pytest.fixture(params=LEVELS)
def level(request):
    with _config.use_isa(request.param):
        yield request.param


@pytest.fixture(params=WHERE)
def where(request):
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_path_every_short_length_and_edge(level, where, dtype):
    rng = np.random.default_rng(1)
    for L in SHORT + EDGES:
        rows = 3 if L < 4000 else 2
        x = guarded_copy((rng.standard_normal((rows, L)) * 3).astype(dtype), where)
        assert softmax_plan(x)["path"] == "rows"
        with guarded_allocations(), every_kernel_array_guarded():
            got = attncore.softmax(x)
        check(got, softmax_np(x), dtype, scale=3, err_msg=f"L={L}")
        out = guarded((rows, L), dtype, where)
        attncore.softmax(x, out=out)
        check(out, softmax_np(x), dtype, scale=3, err_msg=f"L={L} out=")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_rows_in_segments(level, where, dtype):
    """Rows of 2^17 entries and more, read in place in segments of 2^16: a
    row at a time (row_segmented); on two threads, from 2^19 entries and
    with fewer rows than threads, the threads share a row (softmax_split),
    with the same bits. The plan's segments and split are asserted."""
    rng = np.random.default_rng(6)
    from attncore import _core
    threads_run = _core.openmp_enabled() and not _core.single_threaded_after_fork()
    for L, split_on_two in [(1 << 17, False), (3 * (1 << 16) + 129, False), ((1 << 19) + 1, True),
                            (3 * (1 << 18) + 129, True)]:
        segments = -(-L // (1 << 16))
        x = guarded_copy((rng.standard_normal((1, L)) * 3).astype(dtype), where)
        results = []
        for threads, split in [(1, False), (2, split_on_two and threads_run)]:
            plan = softmax_plan(x, num_threads=threads)
            assert (plan["path"], plan["segments"], plan["split"]) == ("rows", segments, split), plan
            with guarded_allocations(), every_kernel_array_guarded():
                results.append(attncore.softmax(x, num_threads=threads))
            out = guarded((1, L), dtype, where)
            attncore.softmax(x, out=out, num_threads=threads)
            assert np.array_equal(out, results[-1])
        check(results[0], softmax_np(x), dtype, scale=3, err_msg=f"L={L}")
        assert np.array_equal(results[0], results[1]), f"L={L}: split rows changed the bits"
        # as many rows as threads: a unit is a row again, each read in segments
        x3 = guarded_copy((rng.standard_normal((2, L)) * 3).astype(dtype), where)
        plan = softmax_plan(x3, num_threads=2)
        assert (plan["segments"], plan["split"]) == (segments, False), plan
        with guarded_allocations(), every_kernel_array_guarded():
            got = attncore.softmax(x3, num_threads=2)
        check(got, softmax_np(x3), dtype, scale=3, err_msg=f"L={L} two rows")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_panel_path_lanes_and_lines(level, where, dtype):
    rng = np.random.default_rng(2)
    for L, lanes in [(1, 2), (2, 1), (3, 5), (17, 33), (33, 17), (5, 64), (9, 65), (300, 31),
                     (2, 1023), (3, 1025), (4100, 3)]:
        x = guarded_copy((rng.standard_normal((L, lanes)) * 3).astype(dtype), where)
        if lanes > 1 and L > 1:
            assert softmax_plan(x, 0)["path"] == "panel"
        with guarded_allocations(), every_kernel_array_guarded():
            got = attncore.softmax(x, 0)
        check(got, softmax_np(x, 0), dtype, scale=3, err_msg=f"L={L} lanes={lanes}")


def test_strided_axes_and_views(level, where):
    rng = np.random.default_rng(3)
    base = guarded_copy(rng.standard_normal((9, 33, 17)).astype(np.float32), where)
    views = {"middle": (base, 1), "first": (base, 0), "sliced": (base[:, ::2, 1::3], 1),
             "reversed": (base[::-1, :, ::-1], 2), "transposed": (base.transpose(2, 0, 1), 0),
             "last-sliced": (base[..., ::4], 2)}
    for name, (x, axis) in views.items():
        with guarded_allocations(), every_kernel_array_guarded():
            got = attncore.softmax(x, axis)
        check(got, softmax_np(x, axis), np.float32, scale=3, err_msg=name)
    assert softmax_plan(base, 1)["path"] == "panel"
    assert softmax_plan(base[..., ::4], 1)["path"] == "rows"


@pytest.mark.parametrize("axis", [-1, 0])
def test_masks_and_valid_lens_guarded(level, where, axis):
    rng = np.random.default_rng(4)
    for L in [1, 2, 7, 16, 17, 33, 129, 4097]:
        W = 5
        shape = (W, L) if axis == -1 else (L, W)
        x = guarded_copy(rng.standard_normal(shape).astype(np.float32), where)
        mb = guarded_copy(rng.random(shape) > 0.3, where)
        mrow = guarded_copy(rng.random(L) > 0.3, where)           # broadcast over rows
        mf = guarded_copy(rng.standard_normal(shape).astype(np.float32), where)
        vl = guarded_copy(rng.integers(0, L + 1, W).astype(np.int64), where)
        mcol = mrow if axis == -1 else mrow[:, None]
        for kw in (dict(mask=mb), dict(mask=mcol), dict(mask=mf), dict(valid_lens=vl),
                   dict(mask=mb, valid_lens=vl)):
            with guarded_allocations(), every_kernel_array_guarded():
                got = attncore.softmax(x, axis, **kw)
            check(got, softmax_np(x, axis, **kw), np.float32, scale=4, err_msg=f"L={L} {list(kw)}")
        X = guarded_copy(rng.standard_normal((2, 3, L)).astype(np.float32), where)
        lens = guarded_copy(rng.integers(0, L + 1, (2, 3)).astype(np.int64), where)
        with guarded_allocations(), every_kernel_array_guarded():
            got = attncore.masked_softmax(X, lens)
        check(got, softmax_np(X, -1, valid_lens=lens, fill=-1e6), np.float32, err_msg=f"masked L={L}")


@pytest.mark.parametrize("kernel", ["gaussian", "laplace", "epanechnikov"])
def test_kernel_regression_guarded(level, where, kernel):
    rng = np.random.default_rng(5)
    for Lq, Lk, D, Dy in [(1, 1, 1, 1), (3, 17, 1, 1), (9, 33, 2, 3), (5, 255, 3, 1), (2, 256, 1, 2),
                          (4, 257, 5, 4), (3, 513, 1, 1)]:
        xq = guarded_copy(rng.random((2, Lq, D)), where)
        xk = guarded_copy(rng.random((2, Lk, D)), where)
        y = guarded_copy(rng.standard_normal((2, Lk, Dy)), where)
        m = guarded_copy(rng.random((Lq, Lk)) > 0.3, where)
        mf = guarded_copy(rng.standard_normal((2, Lq, Lk)), where)          # a float mask, added
        vl = guarded_copy(rng.integers(0, Lk + 1, (2, Lq)).astype(np.int64), where)
        masks = [dict(), dict(attn_mask=m), dict(valid_lens=vl)]
        if kernel != "epanechnikov":      # (its weights are not a softmax: float masks are refused)
            masks += [dict(attn_mask=mf), dict(attn_mask=mf[0, :1]), dict(attn_mask=mf, valid_lens=vl)]
        for kw in masks:
            with guarded_allocations(), every_kernel_array_guarded():
                out, w = attncore.kernel_regression(xq, xk, y, 0.5, kernel=kernel, return_weights=True, **kw)
            ref, ref_w = kernel_regression_np(xq, xk, y, 0.5, kernel, mask=kw.get("attn_mask"),
                                              valid_lens=kw.get("valid_lens"))
            check(out, ref, np.float64, err_msg=f"{Lq} {Lk} {D} {Dy} {list(kw)}")
            check(w, ref_w, np.float64)
        x1 = guarded_copy(rng.random(Lk).astype(np.float32), where)   # d2l's 1-D form, float32
        y1 = guarded_copy(rng.random(Lk).astype(np.float32), where)
        with guarded_allocations(), every_kernel_array_guarded():
            got = attncore.kernel_regression(x1[:Lq], x1, y1, 0.5, kernel=kernel)
        check(got, kernel_regression_np(x1[:Lq], x1, y1, 0.5, kernel)[0], np.float32, scale=2)
