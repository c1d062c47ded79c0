"""A float64 NumPy evaluation of attention's formula, for shapes too large for
the pure-Python reference. Materialises the scores: fine for tests."""
import numpy as np


def sdpa_numpy(q, k, v, mask=None, causal_offset=None, scale=None, valid_lens=None):
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    Hq, Hkv = q.shape[-3], k.shape[-3]
    if Hq != Hkv:
        k = np.repeat(k, Hq // Hkv, axis=-3)
        v = np.repeat(v, Hq // Hkv, axis=-3)
    D = q.shape[-1]
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
    Lq, Lk = s.shape[-2:]
    visible = np.ones(s.shape, dtype=bool)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == np.bool_:
            visible &= mask
        else:
            s = s + mask
    if causal_offset is not None:
        visible &= np.arange(Lk)[None, :] <= np.arange(Lq)[:, None] + causal_offset
    if valid_lens is not None:
        vl = np.asarray(valid_lens)
        vl = vl[..., None, None, None] if vl.ndim == q.ndim - 3 else vl[..., None, :, None]
        visible = visible & (np.arange(Lk) < vl)
    s = np.where(visible, s, -np.inf)
    top = s.max(axis=-1, keepdims=True, initial=-np.inf)
    top = np.where(np.isneginf(top), 0, top)
    e = np.exp(s - top)
    total = e.sum(axis=-1, keepdims=True)
    w = np.where(total > 0, e / np.where(total > 0, total, 1), 0)
    lse = np.where(total[..., 0] > 0, top[..., 0] + np.log(np.where(total[..., 0] > 0, total[..., 0], 1)), -np.inf)
    return w @ v, w, lse
