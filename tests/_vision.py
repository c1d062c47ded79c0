"""Shared by the image-attention tests (tests/test_vision*.py): the textbook
NumPy formulas in float64 (or longdouble), random problems, and the
tolerances of attncore.vision against float64.

Tolerances (measured over the shapes of test_vision.py, unit-normal x,
torch-like weights, k = 7: max |fast - float64 formula| relative to the
element 2.1e-7 (float32) / 1.1e-15 (float64), and relative to max |x|
7.5e-8 / 2.0e-16; rtol and atol (times max |x|) have about 10x headroom).
The tight bounds are docs/numerics.md's (V1)-(V4), tested element by
element in test_vision_numerics.py.
"""
import numpy as np

TOL = {
    ("vision", "f32"): dict(rtol=2e-6, atol=1e-6),
    ("vision", "f64"): dict(rtol=1e-13, atol=1e-14),
}
LAYOUTS = ["NCHW", "NHWC"]


def tag(dtype):
    return "f64" if np.dtype(dtype) == np.float64 else "f32"


def assert_close(actual, expected, dtype, scale=1.0, err_msg=""):
    """Within the table's tolerance; atol is relative to `scale` (max |x|)."""
    tol = TOL[("vision", tag(dtype))]
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, np.float64),
                               rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=err_msg)


def to_nchw(x, layout):
    return x if layout == "NCHW" else np.moveaxis(x, 3, 1)


def from_nchw(x, layout):
    return x if layout == "NCHW" else np.moveaxis(x, 1, 3)


def sigmoid(z, ftype=np.float64):
    """Stable two-branch sigmoid without warnings: exact at +-inf, NaN -> NaN."""
    z = np.asarray(z, ftype)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1 / (1 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1 + e)
    return out


def mlp_scale(X, w1, b1, w2, b2, pooling, ftype=np.float64):
    """s (N, C) of NCHW images X: sigmoid(sum over poolings of w2 relu(w1 v + b1) + b2)."""
    W1 = np.asarray(w1, ftype).reshape(np.shape(w1)[0], -1)
    W2 = np.asarray(w2, ftype).reshape(np.shape(w2)[0], -1)
    B1 = 0 if b1 is None else np.asarray(b1, ftype)
    B2 = 0 if b2 is None else np.asarray(b2, ftype)
    y = 0
    with np.errstate(invalid="ignore"):
        for kind in pooling.split("+"):
            v = X.mean((2, 3)) if kind == "avg" else X.max((2, 3))
            h = np.maximum(np.einsum("nc,jc->nj", v, W1) + B1, 0)    # maximum keeps NaN
            y = y + (np.einsum("nj,cj->nc", h, W2) + B2)
    return sigmoid(y, ftype)


def spatial_scale(X, weight, bias, ftype=np.float64):
    """t (N, H, W): sigmoid(conv(mean, max maps) + bias), 'same' zero padding."""
    N, C, H, W = X.shape
    K = np.asarray(weight, ftype)
    kh, kw = K.shape[2:]
    with np.errstate(invalid="ignore"):
        M = np.stack([X.mean(1), X.max(1)], 1)
        P = np.zeros((N, 2, H + kh - 1, W + kw - 1), ftype)
        P[:, :, kh // 2:kh // 2 + H, kw // 2:kw // 2 + W] = M
        z = np.zeros((N, H, W), ftype) + (0 if bias is None else np.asarray(bias, ftype).reshape(()))
        for k in range(2):
            for i in range(kh):
                for j in range(kw):
                    z = z + K[0, k, i, j] * P[:, k, i:i + H, j:j + W]
    return sigmoid(z, ftype)


def channel_np(x, w1, b1, w2, b2, pooling="avg", layout="NCHW", ftype=np.float64):
    X = to_nchw(np.asarray(x, ftype), layout)
    with np.errstate(invalid="ignore"):
        return from_nchw(X * mlp_scale(X, w1, b1, w2, b2, pooling, ftype)[:, :, None, None], layout)


def spatial_np(x, weight, bias=None, layout="NCHW", ftype=np.float64):
    X = to_nchw(np.asarray(x, ftype), layout)
    with np.errstate(invalid="ignore"):
        return from_nchw(X * spatial_scale(X, weight, bias, ftype)[:, None], layout)


def cbam_np(x, w1, b1, w2, b2, weight, bias=None, pooling="avg+max", layout="NCHW", ftype=np.float64):
    x1 = channel_np(x, w1, b1, w2, b2, pooling, layout, ftype)
    return spatial_np(x1, weight, bias, layout, ftype)


def reverse_np(x, logits, layout="NCHW", ftype=np.float64):
    with np.errstate(invalid="ignore"):
        return np.asarray(x, ftype) * sigmoid(-np.asarray(logits, ftype), ftype)


def image(rng, N, C, H, W, dtype, layout="NCHW", scale=1.0):
    x = (rng.standard_normal((N, C, H, W)) * scale).astype(dtype)
    return np.ascontiguousarray(from_nchw(x, layout))


def mlp_params(rng, C, Cr, dtype, bias=True, conv=False):
    """w1 (Cr, C), b1, w2 (C, Cr), b2 scaled like torch's default init."""
    w1 = (rng.uniform(-1, 1, (Cr, C)) / np.sqrt(C)).astype(dtype)
    w2 = (rng.uniform(-1, 1, (C, Cr)) / np.sqrt(max(Cr, 1))).astype(dtype)
    b1 = (rng.uniform(-1, 1, Cr) / np.sqrt(C)).astype(dtype) if bias else None
    b2 = (rng.uniform(-1, 1, C) / np.sqrt(max(Cr, 1))).astype(dtype) if bias else None
    if conv:
        w1, w2 = w1[:, :, None, None], w2[:, :, None, None]
    return w1, b1, w2, b2


def conv_params(rng, kh, kw, dtype, bias=True):
    w = (rng.uniform(-1, 1, (1, 2, kh, kw)) / np.sqrt(2 * kh * kw)).astype(dtype)
    b = float(rng.uniform(-0.5, 0.5)) if bias else None
    return w, b


def logits_shape(N, C, H, W, layout, n=True, h=True, w=True):
    shape = (N if n else 1, 1, H if h else 1, W if w else 1)
    return shape if layout == "NCHW" else (shape[0], shape[2], shape[3], 1)
