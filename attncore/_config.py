"""Kernel level (ISA) selection, threads and introspection.

The level is chosen once at import:
``ATTNCORE_ISA=portable|avx2|avx512|avx512vnni|avx512bf16|amxbf16`` (or ``avx512bf16emu`` /
``amxbf16emu``, the avx512bf16 / amxbf16 kernels with their BF16 and AMX
instructions emulated, for tests; never chosen by themselves) if
set (an unknown or unsupported value is an error, never a silent fallback),
else the best level this build and CPU support. Every kernel call passes the
active level down to C, so tests can switch levels in one process with
:func:`use_isa`.
"""
import contextlib
import os
import sys
from typing import Any

import numpy as np

from . import _core

ISA_NAMES = _core.ISA_NAMES   # from the C enum: one list of names


def _isa_from_env():
    value = os.environ.get("ATTNCORE_ISA")
    if value is None or value.strip() == "":
        return _core.isa_best()
    name = value.strip().lower()
    if name not in ISA_NAMES:
        raise RuntimeError(
            f"ATTNCORE_ISA={value!r} is not a kernel level; use one of {', '.join(ISA_NAMES)}")
    isa = ISA_NAMES.index(name)
    if not _core.isa_supported(isa):
        raise RuntimeError(
            f"ATTNCORE_ISA={value!r} is not supported here (built: {', '.join(built_isas())}; "
            f"runnable on this CPU: {', '.join(supported_isas())})")
    return isa


def built_isas():
    """Kernel levels compiled into this build."""
    return [n for i, n in enumerate(ISA_NAMES) if _core.isa_built(i)]


def supported_isas():
    """Kernel levels this build has and this CPU can run, lowest first."""
    return [n for i, n in enumerate(ISA_NAMES) if _core.isa_supported(i)]


_active_isa = _isa_from_env()


def active_isa():
    """Index of the kernel level used by calls (see ISA_NAMES)."""
    return _active_isa


def active_isa_name():
    return ISA_NAMES[_active_isa]


@contextlib.contextmanager
def use_isa(name):
    """Temporarily run every kernel at level `name` (for tests and benchmarks;
    not thread-safe: it changes the process-wide level)."""
    global _active_isa
    if name not in ISA_NAMES:
        raise ValueError(f"unknown kernel level {name!r}; use one of {', '.join(ISA_NAMES)}")
    isa = ISA_NAMES.index(name)
    if not _core.isa_supported(isa):
        raise ValueError(f"kernel level {name!r} is not supported here")
    previous = _active_isa
    _active_isa = isa
    try:
        yield
    finally:
        _active_isa = previous


def default_threads():
    """OpenMP's current maximum (OMP_NUM_THREADS, threadpoolctl apply)."""
    return _core.default_threads()


def config() -> dict:
    """The build and run-time configuration as a dict.

    Example
    -------
    >>> import attncore
    >>> attncore.config()["isa_active"] in attncore.config()["isa_supported"]
    True
    """
    from . import __version__

    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "compiler": _core.compiler(),
        "openmp": _core.openmp_enabled(),
        "threads": default_threads(),
        "cpu_features": _core.cpu_features(),
        "isa_built": built_isas(),
        "isa_supported": supported_isas(),
        "isa_active": active_isa_name(),
        "isa_env": os.environ.get("ATTNCORE_ISA"),
    }


def show_config(file: Any = None) -> None:
    """Print :func:`config` in a readable form.

    Example
    -------
    >>> import attncore
    >>> attncore.show_config()  # doctest: +SKIP
    attncore 0.1.0 ...
    """
    if file is not None and not callable(getattr(file, "write", None)):
        raise TypeError(f"show_config: file must be a writable text stream (an object with a "
                        f"write method, e.g. open(path, 'w') or sys.stderr) or None for stdout; "
                        f"got {type(file).__name__} {file!r}")
    c = config()
    lines = [
        f"attncore {c['version']} (python {c['python']}, numpy {c['numpy']})",
        f"  compiler        {c['compiler']}",
        f"  OpenMP          {'yes' if c['openmp'] else 'no (single-threaded build)'}, "
        f"{c['threads']} threads",
        f"  CPU features    {', '.join(c['cpu_features']) or 'none detected'}",
        f"  ISA built       {', '.join(c['isa_built'])}",
        f"  ISA supported   {', '.join(c['isa_supported'])}",
        f"  ISA active      {c['isa_active']}"
        + (f" (ATTNCORE_ISA={c['isa_env']})" if c["isa_env"] else ""),
    ]
    print("\n".join(lines), file=file)
