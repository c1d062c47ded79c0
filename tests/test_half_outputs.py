"""16-bit outputs: the float32 result rounded once to the input's format,
to nearest even, with NaN, infinities and subnormals kept -- bitwise what
NumPy / ml_dtypes give for the same float32 values. The panel path narrows
full panels in vector registers (after the output transpose) and leftover
rows and columns one by one: both must agree with the cast."""
import numpy as np
import pytest

import attncore
from attncore._engine import plan_info

SDPA = attncore.scaled_dot_product_attention


def dtypes():
    out = [np.float16]
    try:
        import ml_dtypes
        out.append(ml_dtypes.bfloat16)
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("dtype", dtypes(), ids=lambda d: np.dtype(d).name)
def test_two_equal_keys_round_the_mean_like_a_cast(isa, dtype, rng):
    """q = 0: both keys weigh 1/2 and the float32 output is (v1 + v2) / 2
    exactly, often a tie between two 16-bit values; specials on purpose."""
    Lq, Dv = 70, 40   # two full 32-row panels + 6 rows; 2 full 16-wide column blocks + 8
    info = np.finfo(dtype) if dtype == np.float16 else __import__("ml_dtypes").finfo(dtype)
    specials = np.array([np.nan, np.inf, -np.inf, info.max, -info.max, info.tiny, info.smallest_subnormal,
                         0.0, -0.0, 1.0, 3.0, -5.0], np.float32)
    v1 = rng.standard_normal((Dv,)).astype(dtype)
    v2 = rng.standard_normal((Dv,)).astype(dtype)
    v1[:len(specials)] = specials.astype(dtype)
    v2[:len(specials)] = (np.roll(specials, 3)).astype(dtype)
    # neighbours: the mean of two adjacent values is an exact tie
    v2[len(specials):] = np.nextafter(v1[len(specials):].astype(np.float32), np.float32(np.inf)).astype(dtype)
    v2[len(specials)::3] = v1[len(specials)::3]
    v = np.stack([v1, v2])[None, None]
    k = np.zeros((1, 1, 2, 16), dtype)
    q = np.zeros((1, 1, Lq, 16), dtype)
    plan = plan_info(SDPA, q, k, v)
    assert plan["path"] == "panel"
    with np.errstate(all="ignore"):
        out = SDPA(q, k, v)
        want = ((v1.astype(np.float32) + v2.astype(np.float32)) / np.float32(2)).astype(dtype)
    got = out[0, 0].view(np.uint16)
    expect = np.broadcast_to(want.view(np.uint16), got.shape)
    nan = np.isnan(want.astype(np.float32))
    assert (np.isnan(out[0, 0].astype(np.float32)) == nan).all()
    assert (got[:, ~nan] == expect[:, ~nan]).all()
