"""Shared fixtures: kernel level (every level this machine supports), dtype,
a seeded generator, and the hypothesis profile.

For tools/sanitize.sh (one pytest run per kernel level, under ASan/UBSan):
- ATTNCORE_TEST_ONLY_ISA=1: tests parametrized by kernel level (a parameter
  named in LEVEL_PARAMS) run only the active level (ATTNCORE_ISA, else the
  best one); the other levels are deselected.
- ATTNCORE_TEST_EMULATED_AS_REAL=1: the emulated levels (avx512bf16emu,
  amxbf16emu) join the `isa` fixture (see EMULATED_ISAS).
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

# avx512bf16emu and amxbf16emu run avx512's kernels except bfloat16's panel
# path (native pairs, emulated): the general `isa` fixture leaves them out,
# and the tests of that path (test_bf16_pairs.py) run them with PAIR_ISAS.
# ATTNCORE_TEST_EMULATED_AS_REAL=1 (with ATTNCORE_ISA=<an emulated level>)
# runs the whole suite as a CPU with AVX512_BF16 (or AMX) would.
EMULATED_ISAS = set() if os.environ.get("ATTNCORE_TEST_EMULATED_AS_REAL") == "1" else {"avx512bf16emu", "amxbf16emu"}
SUPPORTED_ISAS = [n for n in _config.supported_isas() if n not in EMULATED_ISAS]


def is_pair_level(name):
    """Whether a level runs bfloat16 prefill on native pairs: vdpbf16ps
    (avx512bf16) or AMX tiles (amxbf16), or their emulations."""
    return name.startswith(("avx512bf16", "amxbf16"))


PAIR_ISAS = [n for n in _config.supported_isas() if is_pair_level(n)]

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
    "test_kvcache_formats.py::test_an_allocation_the_machine_refuses_names_the_cache":
        "asks for 32 TiB on purpose; ASan's allocator writes a report for a refused allocation",
}


# the parameters that name a kernel level (fixtures and parametrize)
LEVEL_PARAMS = ("isa", "level", "pair_isa", "vnni_isa")


def _level_param(item):
    params = item.callspec.params if hasattr(item, "callspec") else {}
    return next((params[name] for name in LEVEL_PARAMS if name in params), None)


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


def pairs_active():
    """Whether the active level runs bfloat16 prefill on native pairs
    (is_pair_level): its weights are rounded to bfloat16 before P V, which
    adds up to 2^-8 V to bfloat16 outputs (docs/numerics.md (4b))."""
    return is_pair_level(_config.active_isa_name())


def stable_seed(text):
    """A seed from a string that is the same in every process (hash() is
    salted per process, so seeds from it would not reproduce a failure)."""
    return zlib.crc32(text.encode())


@pytest.fixture
def rng(request):
    """A generator seeded by the test's id: every run sees the same data."""
    return np.random.default_rng(stable_seed(request.node.nodeid))


@pytest.fixture
def general_calls(monkeypatch):
    """Counts the calls that went through the general path (attncore._core.sdpa)."""
    from attncore import _core
    calls = []
    original = _core.sdpa

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(_core, "sdpa", counting)
    return calls
