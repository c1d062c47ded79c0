"""Shared fixtures: kernel level (every level this machine supports), dtype,
a seeded generator, and the hypothesis profile."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from attncore import _config

settings.register_profile(
    "ci", max_examples=int(os.environ.get("ATTNCORE_HYPOTHESIS_EXAMPLES", "60")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("ci")

SUPPORTED_ISAS = _config.supported_isas()


@pytest.fixture(params=SUPPORTED_ISAS)
def isa(request):
    """Run the test body with every kernel level this build and CPU support."""
    with _config.use_isa(request.param):
        yield request.param


@pytest.fixture(params=["f32", "f64"])
def dtype(request):
    return {"f32": np.float32, "f64": np.float64}[request.param]


@pytest.fixture
def rng(request):
    # a stable seed per test so failures reproduce
    return np.random.default_rng(abs(hash(request.node.nodeid)) % (2**32))
