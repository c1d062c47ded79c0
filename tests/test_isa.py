"""Kernel levels: each level against portable, and the ATTNCORE_ISA override
(tested in a subprocess, as it is read once at import)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import attncore
from attncore import _config

from _tolerances import assert_close

LEVELS = _config.supported_isas()


def run_python(code, **env):
    full = dict(os.environ)
    full.pop("ATTNCORE_ISA", None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full,
                          timeout=120)


@pytest.mark.parametrize("level", LEVELS)
def test_env_override_selects_level(level):
    r = run_python("import attncore; print(attncore.config()['isa_active'])", ATTNCORE_ISA=level)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == level


def test_env_override_is_case_and_space_tolerant():
    r = run_python("import attncore; print(attncore.config()['isa_active'])", ATTNCORE_ISA=" Portable ")
    assert r.returncode == 0 and r.stdout.strip() == "portable", r.stderr


def test_env_override_unknown_value_fails_loudly():
    r = run_python("import attncore", ATTNCORE_ISA="avx9000")
    assert r.returncode != 0
    assert "ATTNCORE_ISA" in r.stderr and "avx9000" in r.stderr


@pytest.mark.skipif(set(LEVELS) == set(_config.ISA_NAMES), reason="every level is supported here")
def test_env_override_unsupported_value_fails_loudly():
    missing = [n for n in _config.ISA_NAMES if n not in LEVELS][0]
    r = run_python("import attncore", ATTNCORE_ISA=missing)
    assert r.returncode != 0 and "not supported" in r.stderr


AMX_CPU = {"amx_tile", "amx_bf16", "os_tiles", "avx512_bf16", "avx512_vnni"} <= set(attncore.config()["cpu_features"])


@pytest.mark.skipif(not AMX_CPU or "amxbf16" not in _config.built_isas(),
                    reason="needs a CPU with AMX-BF16 whose OS saves tile state, and the amxbf16 build")
def test_amx_permission_is_granted_in_a_plain_process():
    """On an AMX CPU, a plain process gets Linux's tile permission and runs
    amxbf16 by default (in this pytest process an alternate signal stack,
    e.g. faulthandler's, may be too small for the tile state: the kernel
    then refuses and the level falls back to avx512bf16, never faults)."""
    r = run_python("import attncore; c = attncore.config(); print(c['isa_active'], ','.join(c['isa_supported']))",
                   PYTHONFAULTHANDLER="")
    assert r.returncode == 0, r.stderr
    active, supported = r.stdout.split()
    assert active == "amxbf16" and "amxbf16" in supported.split(","), r.stdout


def test_default_is_best_supported():
    """The best supported level, never an emulated one."""
    r = run_python("import attncore; print(attncore.config()['isa_active'])")
    assert r.stdout.strip() == [lv for lv in LEVELS if not lv.endswith("emu")][-1]


@pytest.mark.parametrize("level", [lv for lv in LEVELS if lv != "portable"])
@pytest.mark.parametrize("shape", [(1, 4, 4, 77, 130, 64), (2, 8, 2, 1, 3000, 128), (1, 2, 2, 33, 33, 80)])
def test_level_matches_portable(level, shape):
    B, Hq, Hkv, Lq, Lk, D = shape
    rng = np.random.default_rng(2)
    q = rng.standard_normal((B, Hq, Lq, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, Lk, D)).astype(np.float32)
    mask = rng.standard_normal((Lq, Lk)).astype(np.float32)
    kw = dict(attn_mask=mask, is_causal="bottom_right", enable_gqa=True, return_lse=True)
    with _config.use_isa("portable"):
        ref = attncore.scaled_dot_product_attention(q, k, v, **kw)
    with _config.use_isa(level):
        got = attncore.scaled_dot_product_attention(q, k, v, **kw)
    for a, b in zip(got, ref):
        assert_close(a, b.astype(np.float64), "isa", np.float32)


def test_use_isa_rejects_unknown():
    with pytest.raises(ValueError, match="unknown"):
        with _config.use_isa("sse9"):
            pass


def test_show_config_prints_everything(capsys):
    attncore.show_config()
    text = capsys.readouterr().out
    for word in ("attncore", "compiler", "OpenMP", "ISA active", "CPU features"):
        assert word in text


def test_setup_builds_every_listed_level():
    """setup.py's ISA_FLAGS (and ISA_PROBES) name every level of the C list
    (ATTN_ISA_LEVELS) but portable: a level missing there would link without
    its tables and fail at import (undefined attn_ktab_<level>_f32)."""
    import ast
    import pathlib
    tree = ast.parse((pathlib.Path(__file__).resolve().parents[1] / "setup.py").read_text())
    flags = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "ISA_FLAGS" for t in node.targets))
    listed = {ast.literal_eval(key) for key in flags.keys}
    assert listed == set(_config.ISA_NAMES) - {"portable"}, (listed, _config.ISA_NAMES)
