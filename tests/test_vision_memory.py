"""Memory safety of the image-attention kernel: every array it reads or
writes -- x, the MLP's weights and biases, the convolution's weight, the
logits, the output (allocated by attncore or passed as out=) -- borders an
unreadable page, after its last byte or before its first. Sizes sweep the
lane widths (16 / 32), the channel groups of the maps (4), the pooling
chunk (1024 pixels) and the kernel sizes; shapes and thread counts reach
every loop nest (planar, channels-last, strided) and schedule (fused with
one or several bands, phased with channel blocks and bands), asserted
through the kernel's plan. A read or write one element outside an array
is a SIGSEGV; every result is also checked against float64 NumPy.
"""
import numpy as np
import pytest

import attncore
from attncore._engine import plan_info

import _vision as V
from _guard import every_kernel_array_guarded, guarded_allocations, guarded_copy

WHERE = ["end", "start"]
DTYPES = {"f32": np.float32, "f64": np.float64}
# (N, C, H, W): lanes, map groups, pooling-chunk edges (HW = 1023, 1024, 1025)
SMALL = [(1, 1, 1, 1), (2, 3, 1, 17), (1, 5, 15, 16), (2, 17, 4, 33), (1, 33, 7, 1), (1, 4, 33, 31),
         (1, 64, 32, 32), (2, 6, 41, 25)]


def guard(a, where):
    return None if a is None else guarded_copy(np.asarray(a), where)


def params(rng, C, dtype, where, k, bias=True):
    w1, b1, w2, b2 = (guard(a, where) for a in V.mlp_params(rng, C, max(1, C // 4), dtype, bias=bias))
    cw, cb = V.conv_params(rng, k, k, dtype)
    cw = guard(cw, where)
    cbarr = guard(np.array([cb], dtype), where) if bias else None
    return (w1, b1, w2, b2), cw, cbarr


def check_all(rng, x, layout, dtype, where, k=3, threads=None, bias=True):
    """Every operation on the guarded x, outputs allocated next to guard pages
    and passed as guarded out=; returns the cbam plan."""
    C = x.shape[1] if layout == "NCHW" else x.shape[3]
    N = x.shape[0]
    H, W = (x.shape[2], x.shape[3]) if layout == "NCHW" else (x.shape[1], x.shape[2])
    mlp, cw, cb = params(rng, C, dtype, where, k, bias)
    lg = guard(rng.standard_normal(V.logits_shape(N, C, H, W, layout)).astype(dtype), where)
    lg1 = guard(rng.standard_normal(V.logits_shape(N, C, H, W, layout, n=False, w=False)).astype(dtype),
                where)
    s = np.abs(x).max() if x.size else 1.0
    kw = dict(layout=layout, num_threads=threads)
    with guarded_allocations(), every_kernel_array_guarded():
        got = {
            "avg": attncore.channel_attention(x, *mlp, pooling="avg", **kw),
            "max": attncore.channel_attention(x, *mlp, pooling="max", **kw),
            "avg+max": attncore.channel_attention(x, *mlp, pooling="avg+max", **kw),
            "spatial": attncore.spatial_attention(x, cw, cb, **kw),
            "cbam": attncore.cbam(x, *mlp, cw, cb, **kw),
            "reverse": attncore.reverse_attention(x, lg, **kw),
            "reverse-bcast": attncore.reverse_attention(x, lg1, **kw),
        }
    out = guarded_copy(np.zeros(x.shape, dtype), where)
    with every_kernel_array_guarded():
        attncore.cbam(x, *mlp, cw, cb, out=out, **kw)
    want = {
        "avg": V.channel_np(x, *mlp, "avg", layout),
        "max": V.channel_np(x, *mlp, "max", layout),
        "avg+max": V.channel_np(x, *mlp, "avg+max", layout),
        "spatial": V.spatial_np(x, cw, cb, layout),
        "cbam": V.cbam_np(x, *mlp, cw, cb, "avg+max", layout),
        "reverse": V.reverse_np(x, lg, layout),
        "reverse-bcast": V.reverse_np(x, lg1, layout),
    }
    for name in got:
        V.assert_close(got[name], want[name], dtype, s, err_msg=name)
    V.assert_close(out, want["cbam"], dtype, s, err_msg="out=")
    return plan_info(attncore.cbam, x, *mlp, cw, cb, **kw)


@pytest.mark.parametrize("shape", SMALL, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", V.LAYOUTS)
@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("k", [1, 3, 7])
def test_guarded_small_shapes(rng, shape, layout, where, dt, k):
    dtype = DTYPES[dt]
    N, C, H, W = shape
    x = guarded_copy(V.image(rng, N, C, H, W, dtype, layout), where)
    plan = check_all(rng, x, layout, dtype, where, k=k, bias=(k != 1))
    assert plan["nest"] == ("channels_last" if layout == "NHWC" and C > 1 else "planar")


def strided(rng, dtype, where):
    """Views whose memory extent is the whole guarded array (so the guard page
    is right after / before the first or last element the view touches)."""
    g = guarded_copy(rng.standard_normal((2, 6, 9, 13)).astype(dtype), where)
    yield "reversed", g[::-1, ::-1, ::-1, ::-1], "NCHW"
    g2 = guarded_copy(rng.standard_normal((2, 6, 9, 2 * 13 - 1)).astype(dtype), where)
    yield "width-step-2", g2[..., ::2], "NCHW"
    g3 = guarded_copy(rng.standard_normal((2, 9, 13, 2 * 6 - 1)).astype(dtype), where)
    yield "channel-step-2", g3[..., ::2], "NHWC"
    g4 = guarded_copy(rng.standard_normal((2, 9, 13, 6)).astype(dtype), where)
    yield "channels-last-as-NCHW", g4.transpose(0, 3, 1, 2), "NCHW"
    yield "channels-last-reversed", g4[:, ::-1, :, ::-1], "NHWC"
    g5 = guarded_copy(rng.standard_normal((1, 6, 9, 13)).astype(dtype), where)
    yield "broadcast-batch", np.broadcast_to(g5, (3, 6, 9, 13)), "NCHW"


@pytest.mark.parametrize("case", range(6))
@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dt", list(DTYPES))
def test_guarded_strided_views(rng, case, where, dt):
    dtype = DTYPES[dt]
    name, x, layout = list(strided(rng, dtype, where))[case]
    check_all(rng, x, layout, dtype, where, k=5)


# every schedule (these need a few million elements: the kernel gives a
# second thread only to problems that pay for it)
SCHEDULES = {
    "fused-bands": ((2, 64, 96, 80), 2),
    "phased-cblocks": ((1, 4096, 24, 24), 3),
    "phased-bands": ((1, 48, 200, 190), 3),
    "phased-3img": ((3, 64, 100, 120), 2),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("layout", V.LAYOUTS)
@pytest.mark.parametrize("where", WHERE)
def test_guarded_schedules(rng, name, layout, where):
    shape, threads = SCHEDULES[name]
    N, C, H, W = shape
    x = guarded_copy(V.image(rng, N, C, H, W, np.float32, layout), where)
    plan = check_all(rng, x, layout, np.float32, where, k=7, threads=threads)
    assert plan["schedule"] == name.split("-")[0], plan
    assert plan["threads"] >= 2
    if name.endswith("bands"):
        assert plan["bands"] > 1
    if name.endswith("cblocks"):
        assert plan["channel_blocks"] > 1
