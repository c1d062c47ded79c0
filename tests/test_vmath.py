"""The softmax's vector exp2: error bound and special values (vmath.h), on
every ISA."""
import numpy as np
import pytest

from attncore import _config, _core
from conftest import SUPPORTED_ISAS


def exp2_f32(level, x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty_like(x)
    _core.vexp2_f32(_config.ISA_NAMES.index(level), x, y)
    return y


@pytest.mark.parametrize("level", SUPPORTED_ISAS)
def test_error_below_two_ulp(level):
    x = np.concatenate([np.linspace(-126, 128, 2_000_003, dtype=np.float32),
                        np.float32(np.random.default_rng(0).uniform(-30, 0, 1_000_000))])
    x = x[x < 127.99]  # keep results finite
    y = exp2_f32(level, x).astype(np.float64)
    exact = np.exp2(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    err = np.abs(y - exact) / ulp
    assert err.max() <= 2.0, f"max error {err.max():.3f} ulp at x={x[err.argmax()]}"


@pytest.mark.parametrize("level", SUPPORTED_ISAS)
def test_special_values(level):
    x = np.array([-np.inf, -1e30, -150, -126.5, np.nan, 0, 128, 129, np.inf, -0.0], np.float32)
    y = exp2_f32(level, x)
    assert y[0] == 0 and y[1] == 0 and y[2] == 0 and y[3] == 0
    assert np.isnan(y[4])
    assert y[5] == 1 and y[9] == 1
    assert np.isposinf(y[6]) and np.isposinf(y[7]) and np.isposinf(y[8])


@pytest.mark.parametrize("level", SUPPORTED_ISAS)
@pytest.mark.parametrize("n", [1, 5, 16, 17, 33])
def test_tails(level, n):
    x = np.linspace(-5, 5, n, dtype=np.float32)
    np.testing.assert_allclose(exp2_f32(level, x), np.exp2(x.astype(np.float64)), rtol=3e-7)
