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


# --- a build that skips levels --------------------------------------------
#
# setup.py links csrc/arch/kern_unbuilt.c's zeroed tables for every level it
# cannot (or is told not to) build. The dispatch must then link, report the
# level as absent, hand out no tables for it and never pick it. This builds
# the dispatch alone (no Cython, -O0: seconds) with such tables and asks it.

DISPATCH_PROBE = r"""
#include <stdio.h>
#include "kernels/ktab.h"
int main(void)
{
    for (int isa = 0; isa < ATTN_ISA_COUNT; isa++)
        printf("%s %d %d %d\n", attn_isa_name(isa), attn_isa_built(isa), attn_isa_supported(isa),
               (attn_ktab_get_f32(isa) != NULL) + (attn_kio_get_f32(isa) != NULL)
                   + (attn_kio_get_bf16(isa) != NULL) + (attn_kio_get_f16(isa) != NULL)
                   + (attn_kio_get_i8(isa) != NULL));
    printf("best %s\n", attn_isa_name(attn_isa_best()));
    return 0;
}
"""


def _setup_isa_flags():
    import ast
    import pathlib
    tree = ast.parse((pathlib.Path(__file__).resolve().parents[1] / "setup.py").read_text())
    node = next(node for node in tree.body if isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "ISA_FLAGS" for t in node.targets))
    return ast.literal_eval(node.value)


def _c_compiler():
    import shlex
    import shutil
    import sysconfig
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    return cc if shutil.which(cc[0]) else None


@pytest.mark.parametrize("kept", [(), ("avx2",)], ids=["portable-only", "avx2-only"])
def test_dispatch_of_a_build_that_skips_levels(kept, tmp_path):
    cc = _c_compiler()
    if cc is None:
        pytest.skip("no C compiler")
    real_built = _config.built_isas()
    if any(level not in real_built for level in kept):
        pytest.skip(f"this build has no {kept} kernels to keep")
    import pathlib
    csrc = pathlib.Path(__file__).resolve().parents[1] / "csrc"
    if not (csrc / "dispatch" / "cpu_features.c").exists():
        pytest.skip("the C sources are not next to the tests (an installed package)")
    flags = _setup_isa_flags()
    common = ["-O0", "-I", str(csrc / "include"), "-I", str(csrc)]

    def compile_c(source, out, extra=()):
        done = subprocess.run(cc + ["-c", *common, *extra, str(source), "-o", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return str(out)

    objects = [compile_c(csrc / "dispatch" / "cpu_features.c", tmp_path / "cpu_features.o"),
               compile_c(csrc / "arch" / "kern_portable.c", tmp_path / "portable.o"),
               compile_c(csrc / "arch" / "kern_portable_f64.c", tmp_path / "portable_f64.o")]
    for level in _config.ISA_NAMES[1:]:
        if level in kept:
            objects.append(compile_c(csrc / "arch" / f"kern_{level}.c", tmp_path / f"{level}.o",
                                     flags[level]))
        else:
            objects.append(compile_c(csrc / "arch" / "kern_unbuilt.c", tmp_path / f"unbuilt_{level}.o",
                                     [f"-DATTN_UNBUILT_LEVEL={level}"]))
    (tmp_path / "probe.c").write_text(DISPATCH_PROBE)
    objects.append(compile_c(tmp_path / "probe.c", tmp_path / "probe.o"))
    linked = subprocess.run(cc + objects + ["-lm", "-o", str(tmp_path / "probe")],
                            capture_output=True, text=True, timeout=300)
    assert linked.returncode == 0, linked.stderr   # e.g. a table kern_unbuilt.c does not define
    ran = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.split("\n")
    report = {name: (int(b), int(s), int(t)) for name, b, s, t in
              (line.split() for line in lines[:len(_config.ISA_NAMES)])}
    assert tuple(report) == tuple(_config.ISA_NAMES)
    real_supported = _config.supported_isas()
    for name, (built, supported, tables) in report.items():
        expect_built = name == "portable" or name in kept
        expect_supported = expect_built and name in real_supported
        assert (built, supported) == (expect_built, expect_supported), (name, report)
        assert tables == (5 if expect_supported else 0), (name, report)
    # the best level: the highest one this probe build supports that may be
    # picked automatically, as in the real build (the emulations never are)
    auto = [n for n in real_supported if n in ("portable",) + tuple(kept)
            and not n.endswith("emu")]
    assert lines[len(_config.ISA_NAMES)] == f"best {auto[-1]}", (lines, auto)
