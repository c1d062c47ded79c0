"""attncore ships type hints (py.typed); mypy accepts the package itself and
the examples, which use the public API the way users do."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mypy_passes_on_the_package_and_the_examples():
    pytest.importorskip("mypy", reason="mypy not installed (pip install '.[test]')")
    r = subprocess.run([sys.executable, "-m", "mypy", "attncore/", "examples/"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_package_declares_its_types():
    import attncore
    pkg = os.path.dirname(attncore.__file__)
    assert os.path.exists(os.path.join(pkg, "py.typed"))
    assert os.path.exists(os.path.join(pkg, "_core.pyi"))
