"""The command line and the benchmark files run (small shapes, no timing
assertions), so that neither can rot."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from attncore import _peers

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH_FILES = sorted((ROOT / "benchmarks").glob("bench_*.py"))


def run(args, timeout=600, **env):
    full = dict(os.environ, **env)
    full.pop("ATTNCORE_ISA", None)
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, cwd=ROOT,
                          env=full, timeout=timeout)


def test_cli_quick():
    r = run(["-m", "attncore", "--quick", "--threads", "2"])
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "ISA active" in out and "self-check" in out
    assert out.count(" ok ") >= 1 and "FAIL" not in out
    assert "attncore" in out and "numpy" in out and "GFLOP/s" in out


def test_cli_no_bench():
    r = run(["-m", "attncore", "--no-bench"])
    assert r.returncode == 0 and "benchmark" not in r.stdout.split("self-check")[1]


@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_cli_threads_must_be_positive(value):
    # a usage error before any work (-1 used to end in a library traceback
    # after the self-check, and 0 silently meant the default)
    r = run(["-m", "attncore", "--threads", value, "--no-bench"], timeout=60)
    assert r.returncode == 2 and "--threads: must be a positive integer" in r.stderr, r.stderr
    assert "self-check" not in r.stdout


@pytest.mark.skipif(not BENCH_FILES, reason="no benchmark files found")
@pytest.mark.parametrize("path", BENCH_FILES, ids=lambda p: p.name)
def test_benchmark_file_runs(path):
    r = run(["-m", "pytest", str(path), "--benchmark-disable", "-q", "-rs", "-p", "no:cacheprovider"],
            ATTNCORE_BENCH_SMALL="1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    if "passed" not in r.stdout:
        # a file whose every benchmark needs an optional package (bench_e2e:
        # torch) may skip as a whole, and only for that reason (plus the
        # benchmarks the smoke run leaves out anyway)
        skips = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
        missing = [line for line in skips if "needs torch" in line or "not installed" in line]
        assert missing and all(line in missing or "not in the smoke run" in line
                               for line in skips), r.stdout
        assert not _peers.installed("torch") or path.name != "bench_e2e.py", r.stdout


def test_cache_ratios_runs():
    r = run(["benchmarks/cache_ratios.py", "--small", "--rounds", "2", "--best", "1", "--threads", "1"])
    assert r.returncode == 0, r.stdout + r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("  ")}
    for storage in ("bfloat16", "float16", "int8"):
        assert "x the float32 cache" in lines[storage], r.stdout


def test_benchmark_results_are_checked_before_timing():
    """_peers.check_same (what the benchmarks run before timing a peer) passes
    an equal result in any of the peers' forms and refuses a wrong one."""
    from attncore import _peers
    rng = np.random.default_rng(0)
    want = rng.standard_normal((2, 3, 4, 5))
    _peers.check_same("same", want.astype(np.float32), want)
    _peers.check_same("ort list", [want.copy()], want)
    _peers.check_same("(B, Lq, Hq*Dv)", want.transpose(0, 2, 1, 3).reshape(2, 4, 15), want)
    _peers.check_same("dict", {"y": want}, want)
    for wrong in (want + 0.01, want[..., ::-1], np.full_like(want, np.nan), want[:, :2]):
        with pytest.raises(AssertionError, match="differs|shape"):
            _peers.check_same("wrong", wrong, want)
    # causal square problems count the computed half, in every tool
    assert _peers.attention_flops(1, 1, 4, 4, 2, causal=True) == 4 * 4 * 4 * 2 * 5 / 8
    assert _peers.attention_flops(1, 1, 1, 4, 2, causal=True) == 4 * 4 * 2
