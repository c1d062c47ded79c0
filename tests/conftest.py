"""Shared fixtures: kernel level (every level this machine supports), dtype,
a seeded generator, and the hypothesis profile.

For tools/sanitize.sh (one pytest run per kernel level, under ASan/UBSan):
- ATTNCORE_TEST_ONLY_ISA=1: tests parametrized by kernel level (the `isa`
  fixture, or a `level` parameter) run only the active level (ATTNCORE_ISA,
  else the best one); the other levels are deselected.
- ATTNCORE_SANITIZER=1: tests marked `no_sanitizer` are skipped; NO_SANITIZER
  below marks the existing ones that cannot work under ASan for reasons
  unrelated to memory safety.
"""
import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from attncore import _config

settings.register_profile(
    "ci", max_examples=int(os.environ.get("ATTNCORE_HYPOTHESIS_EXAMPLES", "60")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("ci")

SUPPORTED_ISAS = _config.supported_isas()

# "file.py::test_name" (all parametrizations) -> why it cannot run under ASan
NO_SANITIZER = {
    "test_memory.py::test_peak_memory_at_s4_is_small":
        "measures peak RSS, which ASan's shadow memory, redzones and quarantine inflate",
    "test_scoring.py::test_additive_does_not_materialise":
        "measures peak RSS, which ASan's shadow memory, redzones and quarantine inflate",
    "test_memory_safety.py::test_the_guard_page_is_unreadable":
        "expects a deliberate guard-page read to die by SIGSEGV; ASan reports it and exits 1",
    "test_interrupt.py::test_non_raising_handlers_get_complete_results":
        "timing: a long call must finish within a 120 s subprocess timeout",
}


def _level_param(item):
    params = item.callspec.params if hasattr(item, "callspec") else {}
    return params.get("isa", params.get("level"))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ATTNCORE_TEST_ONLY_ISA") == "1":
        others = set(_config.ISA_NAMES) - {_config.active_isa_name()}
        drop = [item for item in items if _level_param(item) in others]
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = [item for item in items if _level_param(item) not in others]
    sanitizer = os.environ.get("ATTNCORE_SANITIZER") == "1"
    for item in items:
        reason = NO_SANITIZER.get(f"{item.path.name}::{getattr(item, 'originalname', item.name)}")
        if reason is not None:
            item.add_marker(pytest.mark.no_sanitizer(reason=reason))
        marker = item.get_closest_marker("no_sanitizer")
        if sanitizer and marker is not None:
            item.add_marker(pytest.mark.skip(
                reason=f"no_sanitizer: {marker.kwargs.get('reason', 'does not work under ASan')}"))


@pytest.fixture(params=SUPPORTED_ISAS)
def isa(request):
    """Run the test body with every kernel level this build and CPU support."""
    with _config.use_isa(request.param):
        yield request.param


@pytest.fixture(params=["f32", "f64"])
def dtype(request):
    return {"f32": np.float32, "f64": np.float64}[request.param]


def stable_seed(text):
    """A seed from a string that is the same in every process (hash() is
    salted per process, so seeds from it would not reproduce a failure)."""
    return zlib.crc32(text.encode())


@pytest.fixture
def rng(request):
    """A generator seeded by the test's id: every run sees the same data."""
    return np.random.default_rng(stable_seed(request.node.nodeid))
