"""attncore: fast CPU attention for NumPy.

Layers (data flows top to bottom, once):

    attncore/functional.py   scaled_dot_product_attention, dot_attention, merge_attention
    attncore/scoring.py      general, additive and concat attention
    attncore/weighting.py    sigmoid and hard attention (other weightings than the softmax)
    attncore/modules.py      MultiHeadAttention
    attncore/kvcache.py      KVCache (float or compact storage read by the decode kernels)
    attncore/_engine.py      the shared path: validation, masks, outputs -> the kernel
    attncore/_validate.py    argument checks with errors that name arguments and shapes
    attncore/_linalg.py      projections on attncore's own GEMM
    attncore/_layout.py      which strided arrays the kernels read in place
    attncore/_core.pyx       the only crossing into C; releases the GIL
    csrc/driver/             loop nests, blocking, OpenMP, scratch
    csrc/kernels/, csrc/arch/   tile math, one translation unit per ISA
    attncore/reference.py    the slow pure-Python oracle the tests compare against

Example
-------
>>> import numpy as np, attncore
>>> q = k = v = np.ones((1, 2, 3, 4), np.float32)
>>> attncore.scaled_dot_product_attention(q, k, v).shape
(1, 2, 3, 4)
"""
__version__ = "0.1.0"

try:
    from . import _core  # noqa: F401  (the compiled extension)
except ImportError as exc:  # pragma: no cover - depends on how attncore was installed
    raise ImportError(
        "attncore's compiled extension (attncore._core) could not be imported. From a source "
        "checkout, build it in place with `pip install -e .`; after `pip install .`, import "
        "attncore from outside the source tree (the checkout's attncore/ folder shadows the "
        f"installed package). Original error: {exc}") from exc

from ._config import config, show_config
from .functional import dot_attention, merge_attention, scaled_dot_product_attention
from .kvcache import KVCache
from .modules import MultiHeadAttention
from .scoring import additive_attention, concat_attention, general_attention
from .vision import cbam, channel_attention, reverse_attention, spatial_attention
from .softmax import kernel_regression, masked_softmax, softmax
from .weighting import hard_attention, sigmoid_attention

# Submodules reachable as attributes, imported on first use (optional extras
# must not be imported by `import attncore`).
_LAZY_SUBMODULES = ("reference", "viz", "torch", "dask")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'attncore' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY_SUBMODULES))


__all__ = [
    "scaled_dot_product_attention",
    "dot_attention",
    "merge_attention",
    "general_attention",
    "additive_attention",
    "concat_attention",
    "softmax",
    "masked_softmax",
    "kernel_regression",
    "sigmoid_attention",
    "hard_attention",
    "MultiHeadAttention",
    "KVCache",
    "channel_attention",
    "spatial_attention",
    "cbam",
    "reverse_attention",
    "config",
    "show_config",
    "__version__",
]
