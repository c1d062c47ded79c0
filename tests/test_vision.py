"""attncore.vision: channel_attention (SE, CBAM's channel module),
spatial_attention, cbam and reverse_attention, against the pure-Python
reference (odd sizes, both layouts, float32/float64) and the float64 NumPy
formula (larger shapes), on strided / non-contiguous / broadcast /
byte-swapped inputs, with out=, NaN and inf, every loop nest and schedule
(asserted through the kernel's plan), bitwise thread-count independence,
and every error the functions raise."""
import threading
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import attncore
from attncore import _core
from attncore import reference as R
from attncore._engine import plan_info

import _vision as V
from _vision import LAYOUTS, assert_close

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 33, 4, 3), (3, 5, 1, 33), (2, 16, 33, 1), (1, 7, 17, 9)]
shape_id = "x".join


def ids(shape):
    return "x".join(map(str, shape))


def problem(rng, shape, dtype, layout, r=4, bias=True, k=(3, 3)):
    N, C, H, W = shape
    x = V.image(rng, N, C, H, W, dtype, layout)
    w1, b1, w2, b2 = V.mlp_params(rng, C, max(1, C // r), dtype, bias=bias)
    cw, cb = V.conv_params(rng, k[0], k[1], dtype, bias=bias)
    return x, (w1, b1, w2, b2), cw, cb


# -- against the pure-Python reference ---------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=ids)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pooling", ["avg", "max", "avg+max"])
def test_channel_attention_matches_reference(rng, dtype, layout, pooling, shape):
    x, mlp, _, _ = problem(rng, shape, dtype, layout, bias=pooling != "max")
    out = attncore.channel_attention(x, *mlp, pooling=pooling, layout=layout)
    assert out.shape == x.shape and out.dtype == dtype
    ref = R.channel_attention(x, *mlp, pooling=pooling, layout=layout)
    assert_close(out, ref, dtype, scale=np.abs(x).max())


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", [(1, 1), (3, 3), (7, 7), (3, 5)], ids=lambda k: f"k{k[0]}x{k[1]}")
def test_spatial_attention_matches_reference(rng, dtype, layout, k, shape):
    x, _, cw, cb = problem(rng, shape, dtype, layout, k=k)
    out = attncore.spatial_attention(x, cw, cb, layout=layout)
    ref = R.spatial_attention(x, cw, cb, layout=layout)
    assert_close(out, ref, dtype, scale=np.abs(x).max())


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", [1, 3, 7])
def test_cbam_matches_reference(rng, dtype, layout, k, shape):
    x, mlp, cw, cb = problem(rng, shape, dtype, layout, k=(k, k))
    out = attncore.cbam(x, *mlp, cw, cb, layout=layout)
    ref = R.cbam(x, *mlp, cw, cb, layout=layout)
    assert_close(out, ref, dtype, scale=np.abs(x).max())


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bcast", ["full", "image", "pixel", "rows"])
def test_reverse_attention_matches_reference(rng, dtype, layout, bcast, shape):
    N, C, H, W = shape
    x = V.image(rng, N, C, H, W, dtype, layout)
    which = dict(full=(True, True, True), image=(False, True, True), pixel=(True, False, False),
                 rows=(True, True, False))[bcast]
    lg = (rng.standard_normal(V.logits_shape(N, C, H, W, layout, *which)) * 4).astype(dtype)
    out = attncore.reverse_attention(x, lg, layout=layout)
    ref = R.reverse_attention(x, lg, layout=layout)
    assert_close(out, ref, dtype, scale=np.abs(x).max())
    assert_close(out, V.reverse_np(x, lg, layout), dtype, scale=np.abs(x).max())


def test_cbam_is_channel_then_spatial_bit_for_bit(rng, dtype):
    for layout in LAYOUTS:
        x, mlp, cw, cb = problem(rng, (3, 12, 9, 10), dtype, layout, k=(5, 5))
        x1 = attncore.channel_attention(x, *mlp, pooling="avg+max", layout=layout)
        np.testing.assert_array_equal(attncore.cbam(x, *mlp, cw, cb, layout=layout),
                                      attncore.spatial_attention(x1, cw, cb, layout=layout))


def test_reference_sums_past_the_float64_range(rng):
    """The reference's pooled means and channel-mean maps stay exact when
    their partial sums pass float64's largest value (fsum overflowed and the
    reference raised OverflowError): scaling x by 2^1000 and the weights that
    read its pooled values by 2^-1000 (all still normal numbers) scales the
    result exactly."""
    c = 2.0 ** 1000
    y = rng.uniform(1, 2, (2, 3, 2, 3)) * rng.choice([-1, 1], (2, 3, 1, 1)) * 2.0 ** 22   # sums past 2^1024
    w1, b1, w2, b2 = V.mlp_params(rng, 3, 2, np.float64)
    got = R.channel_attention(c * y, w1 / c, b1, w2, b2, pooling="avg+max", layout="NCHW")
    assert np.array_equal(got, c * R.channel_attention(y, w1, b1, w2, b2, pooling="avg+max", layout="NCHW"))
    weight, bias = V.conv_params(rng, 3, 3, np.float64)
    got = R.spatial_attention(c * y, weight / c, bias, layout="NCHW")
    assert np.array_equal(got, c * R.spatial_attention(y, weight, bias, layout="NCHW"))


def test_conv_weights_and_empty_hidden_layer(rng):
    """1x1-conv weights (out, in, 1, 1) mean the same as Linear's (out, in);
    C/r = 0 (nn.Linear(C, 0)) leaves s = sigmoid(b2)."""
    x, (w1, b1, w2, b2), _, _ = problem(rng, (2, 8, 5, 6), np.float64, "NCHW")
    a = attncore.channel_attention(x, w1, b1, w2, b2)
    b = attncore.channel_attention(x, w1[:, :, None, None], b1, w2[:, :, None, None], b2)
    np.testing.assert_array_equal(a, b)
    z1, z2 = np.zeros((0, 8)), np.zeros((8, 0))
    out = attncore.channel_attention(x, z1, None, z2, b2)
    np.testing.assert_allclose(out, x / (1 + np.exp(-b2))[None, :, None, None], rtol=1e-15)


# -- larger shapes against the float64 NumPy formula, every path ------------------

BIG = [(4, 64, 28, 28), (1, 256, 7, 7), (3, 40, 56, 9), (2, 24, 100, 130)]


@pytest.mark.parametrize("shape", BIG, ids=ids)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_larger_shapes_against_numpy(rng, dtype, layout, shape):
    N, C, H, W = shape
    x, mlp, cw, cb = problem(rng, shape, dtype, layout, r=16, k=(7, 7))
    lg = rng.standard_normal(V.logits_shape(N, C, H, W, layout)).astype(dtype)
    s = np.abs(x).max()
    for pooling in ("avg", "avg+max"):
        assert_close(attncore.channel_attention(x, *mlp, pooling=pooling, layout=layout),
                     V.channel_np(x, *mlp, pooling, layout), dtype, s)
    assert_close(attncore.spatial_attention(x, cw, cb, layout=layout), V.spatial_np(x, cw, cb, layout),
                 dtype, s)
    assert_close(attncore.cbam(x, *mlp, cw, cb, layout=layout), V.cbam_np(x, *mlp, cw, cb, "avg+max", layout),
                 dtype, s)
    assert_close(attncore.reverse_attention(x, lg, layout=layout), V.reverse_np(x, lg, layout), dtype, s)


# shapes (with a thread count) that reach each schedule: "fused" (one image
# per unit) and "phased" (pool / MLP / row bands, with channel blocks and
# several bands per image); phased needs >= 2 threads, which the kernel
# grants only to problems of a few million elements
PATHS = {
    "fused-1band": ((4, 32, 20, 20), 2),
    "fused-bands": ((2, 64, 96, 80), 2),     # 1.9 MiB per image: bands with halos
    "phased-cblocks": ((1, 4096, 24, 24), 3),
    "phased-bands": ((1, 48, 200, 190), 3),
    "phased-3img": ((3, 64, 100, 120), 2),
}


def plan_of(fn, *args, **kwargs):
    return plan_info(fn, *args, **kwargs)


@pytest.mark.parametrize("name", list(PATHS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_schedule_against_numpy(rng, layout, name):
    shape, threads = PATHS[name]
    dtype = np.float32
    N, C, H, W = shape
    x, mlp, cw, cb = problem(rng, shape, dtype, layout, r=16, k=(7, 7))
    plan = plan_of(attncore.cbam, x, *mlp, cw, cb, layout=layout, num_threads=threads)
    assert plan["nest"] == ("planar" if layout == "NCHW" else "channels_last")
    assert plan["schedule"] == name.split("-")[0], plan
    if name.endswith("bands"):
        assert plan["bands"] > 1, plan
    if name.endswith("cblocks"):
        assert plan["channel_blocks"] > 1, plan
    if name == "fused-1band":
        assert plan["bands"] == 1
    s = np.abs(x).max()
    assert_close(attncore.cbam(x, *mlp, cw, cb, layout=layout, num_threads=threads),
                 V.cbam_np(x, *mlp, cw, cb, "avg+max", layout), dtype, s)
    assert_close(attncore.channel_attention(x, *mlp, layout=layout, num_threads=threads),
                 V.channel_np(x, *mlp, "avg", layout), dtype, s)
    lg = rng.standard_normal(V.logits_shape(N, C, H, W, layout, n=False)).astype(dtype)
    assert_close(attncore.reverse_attention(x, lg, layout=layout, num_threads=threads),
                 V.reverse_np(x, lg, layout), dtype, s)


# -- threads ---------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PATHS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bitwise_independent_of_threads(rng, layout, name):
    """Every thread count gives the same bits, across schedules too (1 thread
    is always 'fused'; the PATHS counts reach 'phased')."""
    shape, _ = PATHS[name]
    N, C, H, W = shape
    x, mlp, cw, cb = problem(rng, shape, np.float32, layout, r=16, k=(7, 7))
    lg = rng.standard_normal(V.logits_shape(N, C, H, W, layout)).astype(np.float32)
    calls = [lambda t: attncore.cbam(x, *mlp, cw, cb, layout=layout, num_threads=t),
             lambda t: attncore.channel_attention(x, *mlp, pooling="avg+max", layout=layout, num_threads=t),
             lambda t: attncore.spatial_attention(x, cw, cb, layout=layout, num_threads=t),
             lambda t: attncore.reverse_attention(x, lg, layout=layout, num_threads=t)]
    schedules = {plan_of(attncore.cbam, x, *mlp, cw, cb, layout=layout, num_threads=t)["schedule"]
                 for t in (1, 2, 3, 4, 7)}
    assert "fused" in schedules
    for call in calls:
        first = call(1)
        for t in (2, 3, 4, 7):
            np.testing.assert_array_equal(call(t), first, err_msg=f"num_threads={t}")


def test_concurrent_python_threads(rng):
    x, mlp, cw, cb = problem(rng, (4, 32, 30, 30), np.float32, "NCHW")
    expect = attncore.cbam(x, *mlp, cw, cb)
    results = []

    def run():
        results.append(attncore.cbam(x, *mlp, cw, cb, num_threads=2))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for r in results:
        np.testing.assert_array_equal(r, expect)


def test_interrupted_call_reruns_when_the_handler_does_not_raise(rng):
    """A simulated SIGINT (the counter only: no Python handler raises) stops a
    long call with EINTR between work units; the call then runs again, and
    the result is complete and exact."""
    x, mlp, cw, cb = problem(rng, (8, 64, 112, 112), np.float32, "NCHW")   # guarded: > 2^24 / 3
    expect = attncore.cbam(x, *mlp, cw, cb, num_threads=1)
    t = threading.Timer(0.02, _core.simulate_sigint)
    t.start()
    try:
        out = attncore.cbam(x, *mlp, cw, cb, num_threads=1)
    finally:
        t.cancel()
        t.join()
    np.testing.assert_array_equal(out, expect)


# -- strides, layouts in memory, foreign arrays -------------------------------------

def strided_views(rng, dtype):
    """(name, x, layout): views the kernels read in place or after one copy."""
    base = rng.standard_normal((3, 10, 12, 14)).astype(dtype)
    nhwc = np.ascontiguousarray(base.transpose(0, 2, 3, 1))
    big = rng.standard_normal((3, 20, 12, 28)).astype(dtype)
    yield "sliced-reversed", base[:, 1::2, 2:, ::-1], "NCHW"
    yield "channels-last-memory-as-NCHW", nhwc.transpose(0, 3, 1, 2), "NCHW"
    yield "planar-memory-as-NHWC", base.transpose(0, 2, 3, 1), "NHWC"
    yield "channels-last-channel-stride-2", nhwc[..., ::2], "NHWC"
    yield "width-stride-2", big[:, ::2, :, ::2], "NCHW"
    yield "broadcast-batch", np.broadcast_to(base[:1], base.shape), "NCHW"
    yield "big-endian", base.astype(np.dtype(dtype).newbyteorder(">")), "NCHW"
    raw = np.zeros(base.nbytes + 1, np.uint8)
    mis = np.frombuffer(raw.data, dtype=dtype, count=base.size, offset=1).reshape(base.shape)
    mis[...] = base
    yield "misaligned", mis, "NCHW"
    yield "negative-all", base[::-1, ::-1, ::-1, ::-1], "NCHW"
    yield "fortran", np.asfortranarray(base), "NCHW"


@pytest.mark.parametrize("case", range(10))
def test_strided_and_foreign_inputs(rng, dtype, case):
    name, x, layout = list(strided_views(rng, dtype))[case]
    C = x.shape[1] if layout == "NCHW" else x.shape[3]
    mlp = V.mlp_params(rng, C, 3, dtype)
    w1 = np.asfortranarray(mlp[0])                 # non-contiguous weights are copied
    cw, cb = V.conv_params(rng, 3, 3, dtype)
    cw = np.ascontiguousarray(np.broadcast_to(cw, (1, 2, 3, 3)))[..., ::-1][..., ::-1]
    s = np.abs(x).max()
    got = attncore.cbam(x, w1, *mlp[1:], cw, cb, layout=layout)
    assert got.shape == x.shape and got.dtype == np.dtype(dtype).newbyteorder("=")
    assert_close(got, V.cbam_np(x, *mlp, cw, cb, "avg+max", layout), dtype, s, err_msg=name)
    assert_close(attncore.channel_attention(x, *mlp, layout=layout),
                 V.channel_np(x, *mlp, "avg", layout), dtype, s, err_msg=name)
    N, H, W = x.shape[0], x.shape[2 if layout == "NCHW" else 1], x.shape[3 if layout == "NCHW" else 2]
    lg = rng.standard_normal(V.logits_shape(N, C, H, W, layout)).astype(dtype)
    lg = np.flip(np.flip(lg, 0).copy(), 0)          # negative batch stride
    assert_close(attncore.reverse_attention(x, lg, layout=layout), V.reverse_np(x, lg, layout),
                 dtype, s, err_msg=name)


def test_output_keeps_the_memory_order(rng):
    nhwc = rng.standard_normal((2, 6, 7, 5)).astype(np.float32)
    cw, cb = V.conv_params(rng, 3, 3, np.float32)
    as_nchw = nhwc.transpose(0, 3, 1, 2)
    out = attncore.spatial_attention(as_nchw, cw, cb)
    assert out.shape == as_nchw.shape and out.strides == as_nchw.strides
    assert plan_of(attncore.spatial_attention, as_nchw, cw, cb)["nest"] == "channels_last"
    out2 = attncore.spatial_attention(nhwc, cw, cb, layout="NHWC")
    assert out2.flags.c_contiguous
    np.testing.assert_array_equal(out2, out.transpose(0, 2, 3, 1))


def test_half_precision_inputs(rng):
    """float16 / bfloat16: computed in float32, returned in the input dtype."""
    x, mlp, cw, cb = problem(rng, (2, 8, 9, 7), np.float32, "NCHW")
    ref = attncore.cbam(x, *mlp, cw, cb)
    half = attncore.cbam(x.astype(np.float16), *(m.astype(np.float16) for m in mlp),
                         cw.astype(np.float16), cb)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), ref, rtol=5e-3, atol=5e-3)
    # computed in float32: exactly the float32 cbam of the widened inputs, rounded once
    # (x1 is not rounded to 16 bits in between, unlike two separate 16-bit calls)
    widened = attncore.cbam(x.astype(np.float16).astype(np.float32),
                            *(m.astype(np.float16).astype(np.float32) for m in mlp),
                            cw.astype(np.float16).astype(np.float32), cb)
    np.testing.assert_array_equal(half, widened.astype(np.float16))
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
    bf = np.dtype(ml_dtypes.bfloat16)
    out = attncore.reverse_attention(x.astype(bf), np.zeros((2, 1, 9, 7), bf))
    assert out.dtype == bf
    np.testing.assert_allclose(out.astype(np.float32), x.astype(bf).astype(np.float32) / 2, rtol=1e-2)


# -- out= ------------------------------------------------------------------------

def test_out_argument(rng, dtype):
    x, mlp, cw, cb = problem(rng, (2, 8, 6, 5), dtype, "NCHW")
    expect = attncore.cbam(x, *mlp, cw, cb)
    out = np.empty_like(x)
    assert attncore.cbam(x, *mlp, cw, cb, out=out) is out
    np.testing.assert_array_equal(out, expect)
    # another memory order, and a strided view of a bigger array
    out_cl = np.empty((2, 6, 5, 8), dtype).transpose(0, 3, 1, 2)
    attncore.cbam(x, *mlp, cw, cb, out=out_cl)
    np.testing.assert_array_equal(out_cl, expect)
    big = np.zeros((2, 8, 12, 5), dtype)
    attncore.cbam(x, *mlp, cw, cb, out=big[:, :, ::2])
    np.testing.assert_array_equal(big[:, :, ::2], expect)
    assert not big[:, :, 1::2].any()
    # in place: out is x
    y = x.copy()
    assert attncore.cbam(y, *mlp, cw, cb, out=y) is y
    np.testing.assert_array_equal(y, expect)
    # reverse attention into its own logits' memory
    lg = rng.standard_normal((2, 8, 6, 5)).astype(dtype)
    xs = lg.copy()
    attncore.reverse_attention(xs, lg[:, :1], out=lg)
    np.testing.assert_allclose(lg, V.reverse_np(xs, xs[:, :1]), rtol=1e-6)


# -- NaN and inf ------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pooling", ["avg", "max", "avg+max"])
def test_nan_in_a_channel_poisons_only_its_image(rng, dtype, layout, pooling):
    x, mlp, _, _ = problem(rng, (3, 6, 5, 40), dtype, layout)   # 2 pooling chunks per image
    clean = attncore.channel_attention(x, *mlp, pooling=pooling, layout=layout)
    x2 = x.copy()
    idx = (1, 2, 3, 33) if layout == "NCHW" else (1, 3, 33, 2)
    x2[idx] = np.nan
    out = attncore.channel_attention(x2, *mlp, pooling=pooling, layout=layout)
    assert np.isnan(out[1]).all()
    np.testing.assert_array_equal(out[[0, 2]], clean[[0, 2]])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inf_in_pooling_matches_reference(rng, layout):
    """+inf and -inf in one channel (mean NaN, max inf), +inf in another."""
    x, mlp, cw, cb = problem(rng, (2, 6, 4, 5), np.float64, layout)
    X = V.to_nchw(x, layout)
    X[0, 1, 0, 0], X[0, 1, 2, 3], X[1, 4, 1, 1] = np.inf, -np.inf, np.inf
    for pooling in ("avg", "max", "avg+max"):
        out = attncore.channel_attention(x, *mlp, pooling=pooling, layout=layout)
        ref = R.channel_attention(x, *mlp, pooling=pooling, layout=layout)
        np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-14, equal_nan=True)
    out = attncore.cbam(x, *mlp, cw, cb, layout=layout)
    np.testing.assert_allclose(out, R.cbam(x, *mlp, cw, cb, layout=layout), rtol=1e-13, atol=1e-14,
                               equal_nan=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", [1, 3, 7])
def test_nan_at_a_pixel_reaches_its_neighbourhood(rng, dtype, layout, k):
    x, _, cw, cb = problem(rng, (2, 5, 11, 12), dtype, layout, k=(k, k))
    X = V.to_nchw(x, layout)
    X[1, 3, 4, 6] = np.nan
    out = V.to_nchw(attncore.spatial_attention(x, cw, cb, layout=layout), layout)
    bad = np.zeros((2, 11, 12), bool)
    bad[1, max(0, 4 - k // 2):4 + k // 2 + 1, max(0, 6 - k // 2):6 + k // 2 + 1] = True
    np.testing.assert_array_equal(np.isnan(out).any(1), bad)
    assert np.isnan(out).all(1)[bad].all()


def test_sigmoid_extremes_are_exact_and_quiet(dtype):
    """sigmoid(+-inf) is exactly 1 / 0, huge logits overflow nothing, NaN propagates."""
    x = np.full((1, 2, 1, 6), 3.0, dtype)
    lg = np.array([np.inf, -np.inf, np.nan, 1e30, -1e30, 0.0], dtype).reshape(1, 1, 1, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = attncore.reverse_attention(x, lg)
    np.testing.assert_array_equal(out[0, 0, 0], np.array([0.0, 3.0, np.nan, 0.0, 3.0, 1.5], dtype))
    # 1 - sigmoid(40) has no cancellation: full relative accuracy
    tiny = attncore.reverse_attention(np.ones((1, 1, 1, 1), dtype), np.full((1, 1, 1, 1), 40.0, dtype))
    np.testing.assert_allclose(tiny, np.exp(-40.0), rtol=2 ** -22)
    # the channel scale saturates exactly too: an MLP output of +-inf
    xs = np.ones((1, 2, 2, 2), dtype)
    w1 = np.ones((1, 2), dtype)
    w2 = np.array([[np.inf], [-np.inf]], dtype)
    out = attncore.channel_attention(xs, w1, None, w2, None, layout="NCHW")
    np.testing.assert_array_equal(out[0, :, 0, 0], np.array([1.0, 0.0], dtype))
    # a spatial logit of -inf: weight 0
    out = attncore.spatial_attention(xs, np.ones((1, 2, 1, 1), dtype), -np.inf)
    np.testing.assert_array_equal(out, np.zeros_like(xs))


def test_empty_inputs():
    x = np.zeros((0, 4, 3, 3), np.float32)
    w1, w2 = np.ones((2, 4), np.float32), np.ones((4, 2), np.float32)
    assert attncore.channel_attention(x, w1, None, w2, None).shape == (0, 4, 3, 3)
    assert attncore.spatial_attention(np.zeros((2, 3, 0, 5)), np.ones((1, 2, 3, 3))).shape == (2, 3, 0, 5)
    assert attncore.reverse_attention(np.zeros((2, 0, 4, 4)), np.zeros((2, 1, 4, 4))).shape == (2, 0, 4, 4)


# -- torch tensors in, torch tensors out -----------------------------------------------

def test_torch_tensors_in_and_out(rng):
    torch = pytest.importorskip("torch", reason="torch not installed (pip install '.[compare]')")
    x, mlp, cw, cb = problem(rng, (2, 8, 6, 5), np.float32, "NCHW")
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    out = attncore.cbam(xt, *(torch.from_numpy(m) for m in mlp), torch.from_numpy(cw), cb)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close(out.numpy(), V.cbam_np(x, *mlp, cw, cb), np.float32, np.abs(x).max())


# -- hypothesis: shapes, layouts and strides --------------------------------------------

@given(N=st.integers(1, 3), C=st.integers(1, 33), H=st.integers(1, 33), W=st.integers(1, 33),
       k=st.sampled_from([1, 3, 5, 7]), layout=st.sampled_from(LAYOUTS),
       step=st.sampled_from([1, 2, -1]), f64=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_property_cbam_matches_numpy(N, C, H, W, k, layout, step, f64, seed):
    rng = np.random.default_rng(seed)
    dtype = np.float64 if f64 else np.float32
    full = V.image(rng, N, C, H * abs(step), W, dtype, layout)
    x = full[:, ::step] if layout == "NHWC" else full[:, :, ::step]
    mlp = V.mlp_params(rng, C, max(1, C // 3), dtype)
    cw, cb = V.conv_params(rng, k, k, dtype)
    assert_close(attncore.cbam(x, *mlp, cw, cb, layout=layout), V.cbam_np(x, *mlp, cw, cb, "avg+max", layout),
                 dtype, np.abs(x).max())


# -- errors ----------------------------------------------------------------------

def err(exc, fn, *args, words=(), **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    for w in words:
        assert w in text, (w, text)
    return text


def test_errors_name_arguments_and_shapes():
    f32 = np.float32
    x = np.ones((2, 8, 5, 5), f32)
    w1, w2 = np.ones((4, 16), f32), np.ones((16, 4), f32)
    CA, SA, RA = attncore.channel_attention, attncore.spatial_attention, attncore.reverse_attention
    # C of x vs the MLP
    err(ValueError, CA, x, w1, None, w2, None, words=["channel_attention", "C = 16", "(2, 8, 5, 5)"])
    # a transposed w1, and w1 / w2 swapped, say so (they blamed w2 and b1 alone)
    x16 = np.ones((2, 16, 5, 5), f32)
    err(ValueError, CA, x16, w1.T, None, w2, None, words=["w1 and w2 have the same shape (16, 4)",
                                                          "pass w1.T or w2.T"])
    err(ValueError, CA, x16, w2, np.ones(4, f32), w1, np.ones(16, f32),
        words=["b1 must be None or have shape (16,)", "are w1 and w2 swapped?"])
    # a channels-last array read as NCHW: say how to write it
    xl = np.ones((2, 5, 5, 16), f32)
    err(ValueError, CA, xl, w1, None, w2, None, layout="NCHW", words=["layout='NHWC'", "(2, 5, 5, 16)"])
    assert CA(xl, w1, None, w2, None).shape == xl.shape            # the only reading: NHWC
    # both readings fit: ambiguous unless layout= says which
    xa = np.ones((2, 16, 5, 16), f32)
    err(ValueError, CA, xa, w1, None, w2, None, words=["layout='NCHW'", "layout='NHWC'", "(2, 16, 5, 16)"])
    np.testing.assert_array_equal(CA(xa, w1, None, w2, None, layout="NHWC"),
                                  CA(xa.transpose(0, 3, 1, 2), w1, None, w2, None).transpose(0, 2, 3, 1))
    err(ValueError, attncore.cbam, xa, w1, None, w2, None, np.ones((1, 2, 3, 3), f32), words=["layout="])
    # MLP shapes
    w1b = np.ones((4, 8), f32)
    err(ValueError, CA, x, w1b, None, np.ones((8, 3), f32), None, words=["w2", "(8, 4)", "(8, 3)"])
    err(ValueError, CA, x, np.ones((4, 8, 3, 3), f32), None, np.ones((8, 4), f32), None,
        words=["w1", "1x1 nn.Conv2d", "(4, 8, 3, 3)"])
    err(ValueError, CA, x, w1b, np.ones(8, f32), np.ones((8, 4), f32), None, words=["b1", "(4,)", "(8,)"])
    err(ValueError, CA, x, w1b, None, np.ones((8, 4), f32), np.ones(4, f32), words=["b2", "(8,)"])
    err(TypeError, CA, x, None, None, np.ones((8, 4), f32), None, words=["w1"])
    err(ValueError, CA, x, w1b, None, np.ones((8, 4), f32), None, pooling="mean", words=["pooling", "'avg+max'"])
    # kernels
    err(ValueError, SA, x, np.ones((1, 2, 4, 4), f32), words=["odd", "4 x 4"])
    err(ValueError, SA, x, np.ones((1, 2, 3, 4), f32), words=["odd"])
    err(ValueError, SA, x, np.ones((2, 3, 3), f32), words=["(1, 2, k, k)", "(2, 3, 3)"])
    err(ValueError, SA, x, np.ones((1, 3, 3, 3), f32), words=["(1, 2, k, k)"])
    err(ValueError, SA, x, np.ones((1, 2, 3, 3), f32), np.ones(2, f32), words=["bias", "(2,)"])
    err(TypeError, SA, x, np.ones((1, 2, 3, 3), f32), True, words=["bias"])
    # layouts and ranks
    err(ValueError, SA, x, np.ones((1, 2, 3, 3), f32), layout="nchw", words=["layout", "'NHWC'"])
    err(ValueError, SA, x[0], np.ones((1, 2, 3, 3), f32), words=["4-D", "x[None]", "(8, 5, 5)"])
    # logits
    err(ValueError, RA, x, np.ones((2, 5, 5), f32), words=["logits[:, None]", "(2, 5, 5)"])
    err(ValueError, RA, x, np.ones((2, 8, 5, 5), f32), words=["one logit per pixel"])
    err(ValueError, RA, np.ones((2, 5, 5, 8), f32), np.ones((2, 5, 5, 1), f32), layout="NCHW",
        words=["layout='NHWC'", "(2, 5, 5, 1)"])
    assert RA(np.ones((2, 5, 5, 8), f32), np.ones((2, 5, 5, 1), f32)).shape == (2, 5, 5, 8)
    err(ValueError, RA, x, np.ones((3, 1, 5, 5), f32), words=["(2, 1, 5, 5)"])
    # dtypes
    err(TypeError, CA, x, w1b.astype(np.float64), None, np.ones((8, 4), f32), None,
        words=["mixed dtypes", "w1=float64"])
    err(TypeError, SA, x.astype(np.int32), np.ones((1, 2, 3, 3), f32), words=["x", "int32"])
    err(TypeError, RA, x, np.ones((2, 1, 5, 5), np.float64), words=["mixed dtypes"])
    # threads and out
    err(ValueError, RA, x, np.ones((2, 1, 5, 5), f32), num_threads=0, words=["num_threads"])
    err(ValueError, RA, x, np.ones((2, 1, 5, 5), f32), out=np.empty((2, 8, 5, 4), f32), words=["out", "(2, 8, 5, 5)"])
    err(TypeError, RA, x, np.ones((2, 1, 5, 5), f32), out=np.empty(x.shape, np.float64), words=["out", "float32"])
    ro = np.empty(x.shape, f32)
    ro.flags.writeable = False
    err(ValueError, RA, x, np.ones((2, 1, 5, 5), f32), out=ro, words=["read-only"])


def test_channel_params_and_spatial_params_refuse_other_modules():
    torch = pytest.importorskip("torch", reason="torch not installed (pip install '.[compare]')")
    from attncore.vision import channel_params, spatial_params
    nn = torch.nn
    err(ValueError, channel_params, nn.Sequential(nn.Linear(8, 2), nn.SiLU(), nn.Linear(2, 8)),
        words=["nn.ReLU"])
    err(TypeError, channel_params, nn.Linear(8, 2), nn.BatchNorm1d(2), words=["fc2", "BatchNorm1d"])
    err(ValueError, channel_params, nn.Conv2d(8, 2, 3), nn.Conv2d(2, 8, 1), words=["1x1"])
    err(ValueError, channel_params, nn.Linear(8, 2), nn.Linear(2, 6), words=["fc2"])
    err(TypeError, channel_params, nn.Linear(8, 2), words=["nn.Sequential"])
    err(ValueError, spatial_params, nn.Conv2d(2, 1, 4, padding=2), words=["odd"])
    err(ValueError, spatial_params, nn.Conv2d(2, 1, 3), words=["padding"])
    err(ValueError, spatial_params, nn.Conv2d(2, 1, 3, padding=1, stride=2), words=["stride"])
    err(ValueError, spatial_params, nn.Conv2d(2, 1, 3, padding=1), order="avg,max", words=["order"])
    err(TypeError, spatial_params, nn.Linear(2, 1), words=["nn.Conv2d"])


@pytest.mark.parametrize("case", ["channel H=0", "cbam H=0", "channel hidden 0", "spatial C=0",
                                  "spatial H=0", "reverse H=0"])
def test_size_zero_images_match_the_reference(case):
    """Empty images and an MLP without hidden units: attncore and the reference
    agree on shape and values (the reference used to divide by zero, fail a
    reshape, or drop the dim after a size-0 one)."""
    k3 = np.ones((1, 2, 3, 3))
    calls = {
        "channel H=0": lambda m: m.channel_attention(np.ones((1, 2, 0, 3)), np.ones((1, 2)), None,
                                                     np.ones((2, 1)), None),
        "cbam H=0": lambda m: m.cbam(np.ones((1, 2, 0, 3)), np.ones((1, 2)), None, np.ones((2, 1)),
                                     None, k3),
        "channel hidden 0": lambda m: m.channel_attention(np.arange(24.0).reshape(1, 2, 3, 4),
                                                          np.ones((0, 2)), None, np.ones((2, 0)),
                                                          np.array([1.0, -2.0])),
        "spatial C=0": lambda m: m.spatial_attention(np.ones((1, 0, 2, 2)), k3),
        "spatial H=0": lambda m: m.spatial_attention(np.ones((1, 2, 0, 3)), k3),
        "reverse H=0": lambda m: m.reverse_attention(np.ones((1, 2, 0, 3)), np.ones((1, 1, 0, 3))),
    }
    got, want = calls[case](attncore), calls[case](R)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-15)
