"""Type aliases for the public API's annotations (attncore ships py.typed).

Inputs are anything NumPy can read (ArrayLike), torch tensors included.
Results have the caller's array type: a NumPy array for NumPy (or other
array-like) inputs, a torch.Tensor for tensor inputs; with return_weights /
return_lse a tuple of them. `Result` says exactly that, which a static type
can only approximate (Any).
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
Causal = Union[bool, np.bool_, Literal["top_left", "bottom_right"], None]
Result = Any
Scalar = Union[float, int, np.floating, np.integer]
OptArray = Optional[ArrayLike]
