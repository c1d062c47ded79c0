"""Tolerances per (op, dtype), in one place.

Measured (max |fast - float64 NumPy formula| over every ISA, unit-variance
inputs, the shapes of test_sdpa_numpy.py: Lk up to 1024, D up to 256, causal
and not), then given about 7x headroom in atol:
  f32: out 1.4e-6, lse 1.2e-6, weights 5.4e-7
  f64: out 3.3e-15, lse 2.7e-15, weights 1.1e-15
The float32 error grows with the score magnitude (the softmax turns an
absolute score error e into a relative weight error of about e, and a score
error is about |q||k| * 2^-24), so tests with large scores scale atol by the
largest |score| they produce.
"""
import numpy as np

TOL = {
    ("sdpa", "f32"): dict(rtol=2e-5, atol=1e-5),
    ("sdpa", "f64"): dict(rtol=1e-12, atol=1e-12),
    ("lse", "f32"): dict(rtol=2e-5, atol=2e-5),
    ("lse", "f64"): dict(rtol=1e-12, atol=1e-12),
    ("weights", "f32"): dict(rtol=2e-5, atol=4e-6),
    ("weights", "f64"): dict(rtol=1e-12, atol=1e-13),
    ("merge", "f32"): dict(rtol=2e-5, atol=1e-5),
    ("merge", "f64"): dict(rtol=1e-12, atol=1e-12),
    # ISA vs portable, both float32
    ("isa", "f32"): dict(rtol=2e-5, atol=4e-6),
}


def tag(dtype):
    return "f64" if np.dtype(dtype) == np.float64 else "f32"


def assert_close(actual, expected, op, dtype, scale=1.0, err_msg=""):
    """assert_allclose with the table's tolerance for (op, dtype); `scale`
    multiplies atol for inputs with large scores (see module docstring)."""
    tol = TOL[(op, tag(dtype))]
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected,
                               rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=err_msg)
