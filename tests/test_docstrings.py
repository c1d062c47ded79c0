"""Every public function's docstring example runs and prints what it says."""
import doctest
import importlib

import pytest

MODULES = ["attncore", "attncore.functional", "attncore.scoring", "attncore.modules",
           "attncore.kvcache", "attncore.weighting", "attncore._engine",
           "attncore._config", "attncore.reference", "attncore.viz", "attncore.torch",
           "attncore.vision", "attncore.softmax"]
# optional extras the examples of a module need
NEEDS = {"attncore.torch": ("torch", "transformers"),
         "attncore.vision": ("torch",)}     # channel_params / spatial_params take torch layers


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    for package in NEEDS.get(name, ()):
        pytest.importorskip(package, reason=f"{name}'s examples need {package}")
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_every_public_name_has_a_docstring_with_an_example():
    import attncore
    for name in attncore.__all__:
        obj = getattr(attncore, name)
        if name.startswith("__"):
            continue
        doc = obj.__doc__ or ""
        assert "Example" in doc or ">>>" in doc, f"attncore.{name} has no example in its docstring"
