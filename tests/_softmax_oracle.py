"""float64 NumPy formulas for attncore.softmax, masked_softmax and
kernel_regression (the tests' oracles for shapes too large for the
pure-Python reference), and the tolerances they are checked with."""
import numpy as np

# float32: the kernels' exp2 is within 2 ulp, its argument c x - c max one
# FMA, the block sums compensated: measured max |err| ~2e-7 on unit-scale
# rows; the relative error of a weight grows with |x_j - max| (docs/numerics.md)
TOL = {np.dtype(np.float32): dict(rtol=2e-5, atol=1e-6), np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}


def tol(dtype, scale=1.0):
    t = TOL[np.dtype(np.float32) if np.dtype(dtype) != np.float64 else np.dtype(np.float64)]
    return dict(rtol=t["rtol"], atol=t["atol"] * max(1.0, scale))


def check(got, ref, dtype, scale=1.0, err_msg=""):
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, **tol(dtype, scale), err_msg=err_msg)


def rows_lengths(valid_lens, shape, axis):
    """valid_lens (row shape, or keepdims) -> an array broadcast to x's shape
    without the axis."""
    vl = np.asarray(valid_lens)
    rows = shape[:axis] + shape[axis + 1:]
    if vl.ndim == len(shape):
        vl = np.squeeze(vl, axis)
    return np.broadcast_to(vl, rows)


def softmax_np(x, axis=-1, mask=None, valid_lens=None, fill=None):
    """softmax along axis in float64: bool mask False / j >= valid length
    -> weight 0 (or score `fill`, d2l), float mask added; rows with nothing
    kept -> zeros; NaN kept -> NaN row."""
    s = np.asarray(x, np.float64)
    axis = axis % s.ndim
    keep = np.ones(s.shape, bool)
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype == np.bool_:
            keep &= np.broadcast_to(m, s.shape)
        else:
            s = s + np.asarray(m, np.float64)
    if valid_lens is not None:
        vl = np.expand_dims(rows_lengths(valid_lens, s.shape, axis), axis)
        idx = np.arange(s.shape[axis]).reshape([-1 if k == axis else 1 for k in range(s.ndim)])
        keep &= idx < vl
    s = np.where(keep, s, -np.inf if fill is None else fill)
    with np.errstate(invalid="ignore"):
        top = np.max(s, axis=axis, keepdims=True, initial=-np.inf)
        top = np.where(np.isneginf(top), 0.0, top)
        e = np.exp(s - top)
        total = e.sum(axis=axis, keepdims=True)
        return np.where(total == 0, 0.0, e / np.where(total == 0, 1.0, total))


def d2l_masked_softmax(X, valid_lens):
    """d2l's masked_softmax, written with NumPy (its PyTorch code: repeat a
    1-D valid_lens over shape[1], reshape a 2-D one, sequence_mask with
    -1e6, softmax over the last axis)."""
    X = np.asarray(X, np.float64)
    if valid_lens is None:
        return softmax_np(X, -1)
    shape = X.shape
    vl = np.asarray(valid_lens)
    vl = np.repeat(vl, shape[1]) if vl.ndim == 1 else vl.reshape(-1)
    Xr = X.reshape(-1, shape[-1]).copy()
    Xr[np.arange(shape[-1])[None, :] >= vl[:, None]] = -1e6
    return softmax_np(Xr.reshape(shape), -1)


def kernel_regression_np(xq, xk, y, h=1.0, kernel="gaussian", mask=None, valid_lens=None):
    """(out, weights) in float64 with the layout of attncore.kernel_regression."""
    xq = np.asarray(xq, np.float64)
    xk = np.asarray(xk, np.float64)
    y = np.asarray(y, np.float64)
    xq = xq[:, None] if xq.ndim == 1 else xq
    xk = xk[:, None] if xk.ndim == 1 else xk
    scalar_y = y.ndim == xk.ndim - 1
    y = y[..., None] if scalar_y else y
    diff = xq[..., :, None, :] - xk[..., None, :, :]
    r2 = (diff * diff).sum(-1)
    Lq, Lk = r2.shape[-2:]
    batch = np.broadcast_shapes(xq.shape[:-2], xk.shape[:-2], y.shape[:-2])
    r2 = np.broadcast_to(r2, batch + (Lq, Lk))
    keep = np.ones(r2.shape, bool)
    if mask is not None and np.asarray(mask).dtype == np.bool_:
        keep &= np.broadcast_to(mask, r2.shape)
    if valid_lens is not None:
        vl = np.asarray(valid_lens)
        vl = vl.reshape(vl.shape + (1,)) if vl.ndim == len(batch) and vl.ndim else vl
        keep &= np.arange(Lk) < np.broadcast_to(vl, batch + (Lq,))[..., None]
    if kernel == "epanechnikov":
        k = np.where(keep, np.maximum(1 - r2 / h ** 2, 0.0), 0.0)
        total = k.sum(-1, keepdims=True)
        w = np.where(total > 0, k / np.where(total > 0, total, 1), 0.0)
    else:
        s = -r2 / (2 * h * h) if kernel == "gaussian" else -np.sqrt(r2) / h
        if mask is not None and np.asarray(mask).dtype != np.bool_:
            s = s + np.asarray(mask, np.float64)
        w = softmax_np(s, -1, mask=keep)
    out = w @ y
    return (out[..., 0] if scalar_y else out), w
