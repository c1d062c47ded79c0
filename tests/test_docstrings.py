"""Every public function's docstring example runs and prints what it says."""
import doctest
import importlib
import importlib.util
import re

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
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    for test in doctest.DocTestFinder().find(module):
        # (an example of a NumPy-first module that shows the torch bridge runs
        # where torch is installed)
        if any(re.match(r"(import|from) .*\btorch\b", ex.source) for ex in test.examples) \
                and importlib.util.find_spec("torch") is None:
            continue
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def _has_example(doc):
    doc = doc or ""
    return "Example" in doc or ">>>" in doc


def test_every_public_name_has_a_docstring_with_an_example():
    import inspect

    import attncore
    from attncore import reference
    for name in attncore.__all__:
        obj = getattr(attncore, name)
        if name.startswith("__"):
            continue
        assert _has_example(obj.__doc__), f"attncore.{name} has no example in its docstring"
        # and so has each public method and property of a public class
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (callable(member) or isinstance(
                        member, (property, classmethod, staticmethod))):
                    continue
                doc = (member.__func__ if isinstance(member, (classmethod, staticmethod))
                       else member).__doc__
                assert _has_example(doc), f"attncore.{name}.{attr} has no example in its docstring"
    for name, fn in vars(reference).items():
        if not name.startswith("_") and inspect.isfunction(fn) and fn.__module__ == reference.__name__:
            assert _has_example(fn.__doc__), f"attncore.reference.{name} has no example"
