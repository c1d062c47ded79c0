"""MultiHeadAttention (torch.nn.MultiheadAttention-compatible, batch_first),
decoding with an attncore.KVCache (attncore/kvcache.py).

Projections run on attncore's own GEMM (attncore/_linalg.py) and attention on
the fused SDPA kernel; heads are views, never copies: the projected (B, L, H*Dh)
arrays are read as (B, H, L, Dh) through their strides, and the kernel writes
its output straight into the (B, L, H*Dh) buffer that the output projection
reads.
"""
from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from . import _arrays, _engine, _layout, _linalg
from . import _validate as V
from ._types import ArrayLike, OptArray, Result
from .kvcache import KVCache

_MHA = "MultiHeadAttention"


class _Linear:
    """Holds out_proj.weight / out_proj.bias like torch.nn.Linear."""

    def __init__(self, weight, bias):
        self.weight = weight
        self.bias = bias


def _to_numpy(x):
    """A parameter as a NumPy array; 16-bit floats (torch's or ml_dtypes'
    bfloat16, float16) widened to float32, exactly (NumPy has no bfloat16
    arithmetic of its own)."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    x = np.asarray(x)
    return x.astype(np.float32) if V._is_half(x.dtype) else x


class MultiHeadAttention:
    """Multi-head attention, compatible with torch.nn.MultiheadAttention.

    ``out, weights = mha(query, key=None, value=None, *, key_padding_mask=None,
    attn_mask=None, is_causal=False, need_weights=True, average_attn_weights=True,
    kv_cache=None, valid_lens=None)``. ``key`` defaults to ``query``
    (self-attention) and ``value`` to ``key`` (values that are the keys, as
    d2l's examples pass them; torch requires value); a layer whose kdim and
    vdim differ needs value given.

    Parameters
    ----------
    embed_dim : int
        E, the model size; query features and output size.
    num_heads : int
        Query heads H; head size Dh = E // H.
    num_kv_heads : int, optional
        Key/value heads for grouped-query attention (H a multiple of it);
        default num_heads.
    kdim, vdim : int, optional
        Key / value input features (default E).
    bias : bool
        Projection biases on/off.
    dropout : float in [0, 1)
        Dropout on the attention weights, applied only in training mode
        (``mha.train()``; ``mha.eval()`` turns it off), as in torch. Like a
        torch module, a new layer starts in training mode; with the default
        dropout=0.0 the mode makes no difference.
    batch_first : bool, default True
        True: inputs and outputs are (B, L, E). False: (L, B, E), torch's
        default layout (read in place through strides, no copies).
        Unbatched (L, E) inputs work with either.
    dtype : float32 (default) or float64
    seed : int, optional
        Deterministic initialisation (xavier-uniform projections and zero
        biases like torch; out_proj like torch.nn.Linear) and dropout pattern.

    Parameters are NumPy arrays with PyTorch's names and shapes:
    ``in_proj_weight (3E, E)``, ``in_proj_bias (3E,)``, ``out_proj.weight (E, E)``,
    ``out_proj.bias (E,)``; or ``q_proj_weight (E, E)``, ``k_proj_weight
    (Hkv*Dh, kdim)``, ``v_proj_weight (Hkv*Dh, vdim)`` when kdim/vdim differ from
    E or num_kv_heads differs from num_heads (in_proj_bias is then
    (E + 2*Hkv*Dh,)).

    Masks follow ``torch.nn.MultiheadAttention``:

    - ``key_padding_mask`` (B, Lk): **True = padding, ignored** (or float, added).
    - ``attn_mask`` (Lq, Lk) or (B*H, Lq, Lk): **bool True = NOT allowed to
      attend** (or float, added to the scores). **This is the opposite of
      scaled_dot_product_attention's bool attn_mask, where True = may attend.**
    - ``is_causal=True`` applies a causal mask (query i sees keys j <= i).
    - ``valid_lens`` (B,) or (B, Lq): d2l's convention, query rows see keys
      j < valid_len; for unbatched (L, E) inputs a scalar or (Lq,) (the batch
      dim dropped, as torch drops it from the masks).
    - With ``kv_cache``, the new keys/values are appended to the cache and the
      queries attend over every cached position with bottom-right causal
      alignment (the queries are the newest positions).

    Returns (out, weights): out (B, Lq, E) (or (Lq, B, E) with
    batch_first=False); weights is None unless ``need_weights`` (the default,
    as in torch): then (B, Lq, Lk) averaged over heads, or (B, H, Lq, Lk)
    with ``average_attn_weights=False``. Unbatched (L, E) inputs give (L, E)
    outputs. A query that can see no key gives a zero attention output (not
    NaN). torch tensors in give torch tensors out.

    Example
    -------
    >>> import numpy as np, attncore
    >>> mha = attncore.MultiHeadAttention(16, 4, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    >>> y, w = mha(x)
    >>> y.shape, w.shape
    ((2, 5, 16), (2, 5, 5))
    """

    def __init__(self, embed_dim: int, num_heads: int, *, num_kv_heads: Optional[int] = None,
                 kdim: Optional[int] = None, vdim: Optional[int] = None, bias: bool = True,
                 dropout: float = 0.0, batch_first: bool = True, dtype: Any = np.float32,
                 seed: Optional[int] = None) -> None:
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("kdim", kdim),
                            ("vdim", vdim)):
            if value is None and name in ("kdim", "vdim"):   # None: embed_dim
                continue
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{_MHA}: {name} must be a positive int; got "
                                f"{type(value).__name__} {value!r}")
            if value < 1:
                raise ValueError(f"{_MHA}: {name} must be a positive int; got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"{_MHA}: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if isinstance(num_kv_heads, bool) or not isinstance(num_kv_heads, (int, np.integer)) \
                or num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"{_MHA}: num_kv_heads must divide num_heads ({num_heads}); got {num_kv_heads!r}")
        if dtype is None:   # (np.dtype(None) is float64; torch's None is its default)
            raise TypeError(f"{_MHA}: dtype=None could mean float64 (NumPy) or the default "
                            f"float32 (torch); pass dtype=np.float32 or np.float64")
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"{_MHA}: dtype must be float32 or float64; got {dtype!r}") from None
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{_MHA}: dtype must be float32 or float64; got {dtype}")
        seed = V.check_seed(_MHA, seed, bits=None)   # (NumPy's generators take any size)
        dropout = V.real_number(_MHA, "dropout", dropout)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{_MHA}: dropout must be in [0, 1); got {dropout}")
        self.embed_dim = int(embed_dim)
        self.num_heads = int(num_heads)
        self.num_kv_heads = int(num_kv_heads)
        self.head_dim = self.embed_dim // self.num_heads
        self.kdim = self.embed_dim if kdim is None else int(kdim)
        self.vdim = self.embed_dim if vdim is None else int(vdim)
        self.bias = V.flag(_MHA, "bias", bias)
        self.dropout = dropout
        self.batch_first = V.flag(_MHA, "batch_first", batch_first)
        self.training = True
        self.dtype = dtype
        self.kv_dim = self.num_kv_heads * self.head_dim
        self.packed = (self.kdim == self.embed_dim and self.vdim == self.embed_dim
                       and self.num_kv_heads == self.num_heads)
        self._dropout_rng = np.random.default_rng(None if seed is None else [int(seed), 1])
        # (NumPy's own errors for huge sizes name neither the layer nor the sizes)
        count = 2 * self.embed_dim * self.embed_dim + self.kv_dim * (self.kdim + self.vdim)
        nbytes = (count + 2 * self.embed_dim + 2 * self.kv_dim) * dtype.itemsize
        sizes = (f"embed_dim={self.embed_dim}, kdim={self.kdim}, vdim={self.vdim}, "
                 f"num_kv_heads={self.num_kv_heads}")
        if nbytes > sys.maxsize:
            raise ValueError(f"{_MHA}: the parameters of {sizes} need {nbytes / 2**40:.3g} TiB, past "
                             f"the address space")
        try:
            self._init_parameters(seed)
        except MemoryError:
            raise MemoryError(f"{_MHA}: the parameters of {sizes} need {nbytes / 2**30:.3g} GiB, more "
                              f"than this machine can allocate") from None

    def train(self, mode: bool = True) -> "MultiHeadAttention":
        """Training mode (dropout applies) or, with mode=False, eval mode. Returns self.

        >>> import attncore
        >>> attncore.MultiHeadAttention(8, 2, dropout=0.1).train().training
        True
        """
        self.training = V.flag(_MHA, "mode", mode)
        return self

    def eval(self) -> "MultiHeadAttention":
        """Eval mode: no dropout. Returns self.

        >>> import attncore
        >>> attncore.MultiHeadAttention(8, 2, dropout=0.1).train().eval().training
        False
        """
        return self.train(False)

    # -- parameters ----------------------------------------------------------

    def _init_parameters(self, seed):
        rng = np.random.default_rng(seed)
        E = self.embed_dim

        def xavier(shape):
            bound = math.sqrt(6.0 / (shape[0] + shape[1]))
            return rng.uniform(-bound, bound, shape).astype(self.dtype)

        if self.packed:
            self.in_proj_weight = xavier((3 * E, E))
            self.q_proj_weight = self.k_proj_weight = self.v_proj_weight = None
        else:
            self.in_proj_weight = None
            self.q_proj_weight = xavier((E, E))
            self.k_proj_weight = xavier((self.kv_dim, self.kdim))
            self.v_proj_weight = xavier((self.kv_dim, self.vdim))
        self.in_proj_bias = np.zeros(E + 2 * self.kv_dim, self.dtype) if self.bias else None
        bound = 1.0 / math.sqrt(E)
        self.out_proj = _Linear(rng.uniform(-bound, bound, (E, E)).astype(self.dtype),
                                np.zeros(E, self.dtype) if self.bias else None)

    def _expected_shapes(self):
        E = self.embed_dim
        shapes = {"out_proj.weight": (E, E)}
        if self.packed:
            shapes["in_proj_weight"] = (3 * E, E)
        else:
            shapes.update({"q_proj_weight": (E, E), "k_proj_weight": (self.kv_dim, self.kdim),
                           "v_proj_weight": (self.kv_dim, self.vdim)})
        if self.bias:
            shapes["in_proj_bias"] = (E + 2 * self.kv_dim,)
            shapes["out_proj.bias"] = (E,)
        return shapes

    def state_dict(self) -> Dict[str, np.ndarray]:
        """The parameters under torch.nn.MultiheadAttention's state_dict keys.

        Returns
        -------
        dict of name -> the parameter array itself (not a copy):
        ``out_proj.weight`` (E, E), ``in_proj_weight`` (3E, E) or
        ``q_proj_weight`` (E, E) / ``k_proj_weight`` (E, kdim) /
        ``v_proj_weight`` (E, vdim), and with ``bias=True`` ``in_proj_bias``
        (3E,) and ``out_proj.bias`` (E,).
        (With GQA, ``num_kv_heads`` < ``num_heads``, the k/v rows are
        ``num_kv_heads * head_dim`` instead of E.)

        Example
        -------
        >>> import attncore
        >>> mha = attncore.MultiHeadAttention(8, 2)
        >>> {k: v.shape for k, v in mha.state_dict().items()}
        {'out_proj.weight': (8, 8), 'in_proj_weight': (24, 8), 'in_proj_bias': (24,), 'out_proj.bias': (8,)}
        """
        out = {}
        for name in self._expected_shapes():
            out[name] = self._get(name)
        return out

    def _get(self, name):
        if name == "out_proj.weight":
            return self.out_proj.weight
        if name == "out_proj.bias":
            return self.out_proj.bias
        return getattr(self, name)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load parameters from a dict of arrays or torch tensors with the keys of
        ``torch.nn.MultiheadAttention.state_dict()`` (extra keys such as
        ``bias_k`` that this class does not model are an error).

        Each value must have the shape :meth:`state_dict` gives and a floating
        dtype (float16, bfloat16, float32, float64); it is copied in the layer's
        dtype. Missing or extra keys and wrong shapes are a ValueError naming
        them; nothing is loaded then.

        Example
        -------
        >>> import attncore
        >>> a, b = attncore.MultiHeadAttention(8, 2, seed=0), attncore.MultiHeadAttention(8, 2, seed=1)
        >>> b.load_state_dict(a.state_dict())
        >>> bool((b.in_proj_weight == a.in_proj_weight).all())
        True
        """
        expected = self._expected_shapes()
        if not isinstance(state, Mapping) and not hasattr(state, "keys"):
            raise TypeError(f"{_MHA}.load_state_dict: state must be a mapping of parameter names to "
                            f"arrays (what state_dict() returns); got {type(state).__name__}")
        given = {k: v for k, v in dict(state).items() if v is not None}
        missing = sorted(set(expected) - set(given))
        unexpected = sorted(set(given) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{_MHA}.load_state_dict: missing keys {missing}, unexpected keys "
                             f"{unexpected}")
        arrays = {}
        for name, shape in expected.items():
            a = _to_numpy(given[name])
            if a.dtype.kind not in "fiucb":
                raise TypeError(f"{_MHA}.load_state_dict: {name} must be a float array; got "
                                f"{type(given[name]).__name__} of dtype {a.dtype}")
            if a.shape != shape:
                raise ValueError(f"{_MHA}.load_state_dict: {name} has shape {a.shape}; expected {shape}")
            if not np.issubdtype(a.dtype, np.floating):
                raise TypeError(f"{_MHA}.load_state_dict: {name} has dtype {a.dtype}")
            arrays[name] = np.array(a, dtype=self.dtype)  # a private copy
        for name, a in arrays.items():
            if name == "out_proj.weight":
                self.out_proj.weight = a
            elif name == "out_proj.bias":
                self.out_proj.bias = a
            else:
                setattr(self, name, a)

    @classmethod
    def from_torch(cls, module: Any, dtype: Any = None, seed: Optional[int] = None) -> "MultiHeadAttention":
        """Build from a live ``torch.nn.MultiheadAttention``, taking its
        parameters, ``batch_first``, ``dropout`` and training mode: the
        result computes what the module computes for the same inputs (in
        training mode, with attncore's own reproducible dropout pattern,
        seeded by `seed`). Unsupported options (bias_k/bias_v,
        add_zero_attn) are an error.

        `dtype` is the layer's (float32 or float64); by default float64 for a
        float64 module, else float32 (a float16 or bfloat16 module's parameters
        are widened exactly).

        Example
        -------
        >>> import numpy as np, torch, attncore
        >>> t = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
        >>> mha = attncore.MultiHeadAttention.from_torch(t)
        >>> x = np.random.default_rng(0).standard_normal((1, 5, 8), dtype=np.float32)
        >>> with torch.no_grad():
        ...     want = t(*[torch.from_numpy(x)] * 3)[0].numpy()
        >>> bool(np.allclose(mha(x)[0], want, atol=1e-5))
        True
        """
        torch = sys.modules.get("torch")   # (imported if `module` is a torch module)
        if torch is not None and isinstance(getattr(module, "_orig_mod", None),
                                            torch.nn.MultiheadAttention):
            module = module._orig_mod   # torch.compile's wrapper: the same parameters
        # (a scripted one keeps its attributes; torch.jit.trace's does not)
        scripted = (torch is not None and isinstance(module, torch.jit.ScriptModule)
                    and getattr(module, "original_name", None) == "MultiheadAttention"
                    and all(hasattr(module, name) for name in
                            ("embed_dim", "num_heads", "kdim", "vdim", "batch_first", "dropout")))
        if torch is None or not (isinstance(module, torch.nn.MultiheadAttention) or scripted):
            raise TypeError(f"{_MHA}.from_torch: module must be a torch.nn.MultiheadAttention (or "
                            f"one compiled by torch.compile or torch.jit.script); got "
                            f"{type(module).__module__}.{type(module).__qualname__}")
        if getattr(module, "bias_k", None) is not None or getattr(module, "add_zero_attn", False):
            raise ValueError(f"{_MHA}.from_torch: add_bias_kv / add_zero_attn are not supported")
        state = module.state_dict()
        weight = state.get("in_proj_weight", state.get("q_proj_weight"))
        if dtype is None:
            dtype = np.float64 if str(weight.dtype) == "torch.float64" else np.float32
        mha = cls(module.embed_dim, module.num_heads, kdim=module.kdim, vdim=module.vdim,
                  bias=module.in_proj_bias is not None, dropout=float(module.dropout),
                  batch_first=bool(module.batch_first), dtype=dtype, seed=seed)
        mha.load_state_dict(state)
        mha.train(bool(module.training))
        return mha

    def _projections(self):
        """(Wq, Wk, Wv, bq, bk, bv) as views of the parameters."""
        E, kv = self.embed_dim, self.kv_dim
        if self.packed:
            W = self.in_proj_weight
            if not isinstance(W, np.ndarray):   # (before it is sliced)
                raise TypeError(f"{_MHA}: in_proj_weight must be a {self.dtype} NumPy array of shape "
                                f"({E + 2 * kv}, {E}); got {type(W).__name__}")
            if getattr(W, "shape", None) is not None and W.shape != (E + 2 * kv, E):
                raise ValueError(f"{_MHA}: in_proj_weight has shape {W.shape}; this layer needs "
                                 f"({E + 2 * kv}, {E}) (the q, k and v projections stacked)")
            Wq, Wk, Wv = W[:E], W[E:E + kv], W[E + kv:]
        else:
            Wq, Wk, Wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
            for name, w, want in (("q_proj_weight", Wq, (E, E)), ("k_proj_weight", Wk, (kv, self.kdim)),
                                  ("v_proj_weight", Wv, (kv, self.vdim))):
                if getattr(w, "shape", None) is not None and w.shape != want:
                    raise ValueError(f"{_MHA}: {name} has shape {w.shape}; this layer needs {want}")
        b = self.in_proj_bias
        if b is not None and not isinstance(b, np.ndarray):
            raise TypeError(f"{_MHA}: in_proj_bias must be a {self.dtype} NumPy array of shape "
                            f"({E + 2 * kv},) or None; got {type(b).__name__}")
        if getattr(b, "shape", None) is not None and b.shape != (E + 2 * kv,):
            raise ValueError(f"{_MHA}: in_proj_bias has shape {b.shape}; this layer needs ({E + 2 * kv},)")
        if b is None:
            return Wq, Wk, Wv, None, None, None
        return Wq, Wk, Wv, b[:E], b[E:E + kv], b[E + kv:]

    # -- forward -------------------------------------------------------------

    def __call__(self, query: ArrayLike, key: OptArray = None, value: OptArray = None, *,
                 key_padding_mask: OptArray = None, attn_mask: OptArray = None,
                 is_causal: bool = False, need_weights: bool = True,
                 average_attn_weights: bool = True, kv_cache: Optional[KVCache] = None,
                 valid_lens: OptArray = None, num_threads: Optional[int] = None
                 ) -> Tuple[Result, Result]:
        threads = V.num_threads(_MHA, num_threads)
        torch_out = _arrays.is_torch(query)
        q_in = self._input("query", query, self.embed_dim)
        if key is None and (self.kdim != self.embed_dim or self.vdim != self.embed_dim):
            raise ValueError(f"{_MHA}: self-attention (key=None) needs kdim = vdim = embed_dim; "
                             f"this layer has kdim={self.kdim}, vdim={self.vdim}")
        k_in = q_in if key is None else self._input("key", key, self.kdim)
        if key is not None and value is None and self.kdim != self.vdim:
            raise ValueError(f"{_MHA}: value=None takes the key as the value, which needs kdim = vdim; "
                             f"this layer has kdim={self.kdim}, vdim={self.vdim}: pass value")
        v_in = k_in if value is None else self._input("value", value, self.vdim)
        self_attention = k_in is q_in and v_in is q_in
        unbatched = q_in.ndim == 2
        if {k_in.ndim, v_in.ndim} != {q_in.ndim}:
            layout = "(B, L, E)" if self.batch_first else "(L, B, E)"
            raise ValueError(f"{_MHA}: query, key and value must all be batched {layout} or all "
                             f"unbatched (L, E); got {q_in.shape}, {k_in.shape}, {v_in.shape}")
        if unbatched:
            q_in, k_in, v_in = q_in[None], k_in[None], v_in[None]
        # the batch axis: 0 for (B, L, E) (and unbatched inputs), 1 for (L, B, E)
        bdim = 0 if (self.batch_first or unbatched) else 1
        sdim = 1 - bdim
        B, Lq = q_in.shape[bdim], q_in.shape[sdim]
        if k_in.shape[bdim] != B or v_in.shape[bdim] != B:
            raise ValueError(f"{_MHA}: batch sizes (dim {bdim}, batch_first={self.batch_first}) "
                             f"differ: query {q_in.shape}, key {k_in.shape}, value {v_in.shape}")
        if k_in.shape[sdim] != v_in.shape[sdim]:
            raise ValueError(f"{_MHA}: key and value lengths differ: key {k_in.shape}, value {v_in.shape}")

        H, Hkv, Dh, E = self.num_heads, self.num_kv_heads, self.head_dim, self.embed_dim
        Wq, Wk, Wv, bq, bk, bv = self._projections()
        packed = ("in_proj_weight", "in_proj_bias")
        if self.packed and self_attention:
            qkv = _linalg.linear(q_in, self.in_proj_weight, self.in_proj_bias, threads, _MHA, packed)
            q, k, v = qkv[..., :E], qkv[..., E:2 * E], qkv[..., 2 * E:]
        else:
            q = _linalg.linear(q_in, Wq, bq, threads, _MHA, packed if self.packed else ("q_proj_weight", packed[1]))
            k = _linalg.linear(k_in, Wk, bk, threads, _MHA, packed if self.packed else ("k_proj_weight", packed[1]))
            v = _linalg.linear(v_in, Wv, bv, threads, _MHA, packed if self.packed else ("v_proj_weight", packed[1]))

        def heads(x, n):
            """(B, L, n*Dh) or (L, B, n*Dh) -> a (B, n, L, Dh) strided view."""
            x = x.reshape(x.shape[0], x.shape[1], n, Dh)
            return x.transpose(0, 2, 1, 3) if bdim == 0 else x.transpose(1, 2, 0, 3)

        q, k, v = heads(q, H), heads(k, Hkv), heads(v, Hkv)

        causal = "top_left" if V.flag(_MHA, "is_causal", is_causal) else False
        if kv_cache is not None:
            if not isinstance(kv_cache, KVCache):
                raise TypeError(f"{_MHA}: kv_cache must be an attncore.KVCache; got {type(kv_cache).__name__}")
            if (kv_cache.num_heads, kv_cache.head_dim, kv_cache.dtype) != (Hkv, Dh, self.dtype):
                raise ValueError(f"{_MHA}: kv_cache holds {kv_cache.num_heads} heads of size "
                                 f"{kv_cache.head_dim} ({kv_cache.dtype}, stored as "
                                 f"{kv_cache.storage}); this layer needs {Hkv} heads of size "
                                 f"{Dh} ({self.dtype})")
            causal = "bottom_right"
        # a decode step -- append, then attend over the cache -- holds the
        # cache's lock throughout: another thread's append in between would be
        # attended, or undone by this step's restore after an error
        step = kv_cache._lock if kv_cache is not None else contextlib.nullcontext()
        with step:
            if kv_cache is not None:
                cached_before = kv_cache._state()
                kv_cache.append(k, v)
            rng_before = self._dropout_rng.bit_generator.state
            try:
                Lk = len(kv_cache) if kv_cache is not None else k.shape[2]
                if unbatched and valid_lens is not None:
                    lens = V.as_array(valid_lens, "valid_lens", _MHA)
                    if lens.ndim == 1 and lens.shape[0] == Lq:   # (Lq,): one per query row
                        valid_lens = lens[None]
                mask = self._merge_masks(key_padding_mask, attn_mask, B, Lq, Lk, unbatched)
                dropout_p = self.dropout if self.training else 0.0
                seed = int(self._dropout_rng.integers(1 << 63)) if dropout_p > 0 else None

                # the attention output is written straight into the rows the output
                # projection reads: (B, Lq, H, Dh), or (Lq, B, H, Dh)
                rows = (B, Lq) if bdim == 0 else (Lq, B)
                attn = _layout.empty(rows + (H, Dh), self.dtype)
                attn_view = attn.transpose(0, 2, 1, 3) if bdim == 0 else attn.transpose(1, 2, 0, 3)
                attention = dict(scale=1.0 / math.sqrt(Dh), attn_mask=mask, is_causal=causal,
                                 dropout_p=dropout_p, seed=seed, valid_lens=valid_lens, num_threads=threads,
                                 out=attn_view, return_weights=V.flag(_MHA, "need_weights", need_weights))
                if kv_cache is not None:   # reads the cache's storage directly (compact formats too)
                    res = kv_cache.attend(q, **attention)
                else:
                    p = _engine.Problem(q=q, k=k, v=v, compute=self.dtype, result=self.dtype, flat=False,
                                        batch=(B,), Hq=H, Hkv=Hkv, Lq=Lq, Lk=Lk, Dq=Dh, Dk=Dh, Dv=Dh,
                                        params={}, query_ndim=4)
                    res = _engine.run(_MHA, p, q, k, **attention)
                out = _linalg.linear(attn.reshape(rows + (E,)), self.out_proj.weight, self.out_proj.bias,
                                     threads, _MHA, ("out_proj.weight", "out_proj.bias"), out_features=E)
            except BaseException:
                # a call that fails (a mask or valid_lens of the wrong shape, a bad
                # parameter, an interrupt, up to the output projection) leaves the
                # cache and the dropout stream as they were: a caller retrying would
                # otherwise add its tokens twice
                if kv_cache is not None:
                    kv_cache._restore(cached_before)
                self._dropout_rng.bit_generator.state = rng_before
                raise
        weights = None
        if need_weights:
            average = V.flag(_MHA, "average_attn_weights", average_attn_weights)
            weights = res[1].mean(axis=1) if average else res[1]
        if unbatched:
            out = out[0]
            weights = weights[0] if weights is not None else None
        if torch_out:
            out = _arrays.to_torch(out, str(self.dtype))
            weights = _arrays.to_torch(weights, str(self.dtype)) if weights is not None else None
        return out, weights

    def _input(self, name, x, features):
        a = V.native(V.as_array(x, name, _MHA))
        if a.dtype != self.dtype:
            if not (np.issubdtype(a.dtype, np.floating) or V._is_half(a.dtype)):
                raise TypeError(f"{_MHA}: {name} must be a float array; got dtype {a.dtype}")
            cast = V.cast_hint(name, self.dtype, _arrays.is_torch(x))
            other = (f" or build the layer with dtype={a.dtype}"
                     if a.dtype in (np.float32, np.float64) else " (layers are float32 or float64)")
            raise TypeError(f"{_MHA}: {name} has dtype {a.dtype}; this layer is {self.dtype}: "
                            f"cast the input ({cast}){other}")
        if a.ndim not in (2, 3) or a.shape[-1] != features:
            layout = f"(B, L, {features})" if self.batch_first else f"(L, B, {features})"
            raise ValueError(f"{_MHA}: {name} must have shape {layout} or (L, {features}) "
                             f"(batch_first={self.batch_first}); got {a.shape}")
        return a

    def _merge_masks(self, key_padding_mask, attn_mask, B, Lq, Lk, unbatched):
        """torch's MHA masks -> one SDPA mask (bool: True = may attend, or float
        added), broadcastable to (B, H, Lq, Lk)."""
        masks = []
        if key_padding_mask is not None:
            kpm = V.native(V.as_array(key_padding_mask, "key_padding_mask", _MHA))
            want = (Lk,) if unbatched else (B, Lk)
            if kpm.shape != want:
                raise ValueError(f"{_MHA}: key_padding_mask must have shape {want} (True = padding); "
                                 f"got {kpm.shape}")
            kpm = kpm.reshape(B, 1, 1, Lk)
            masks.append(self._as_sdpa_mask("key_padding_mask", kpm))
        if attn_mask is not None:
            am = V.native(V.as_array(attn_mask, "attn_mask", _MHA))
            if am.shape == (Lq, Lk):
                pass
            elif am.shape == (B * self.num_heads, Lq, Lk):
                am = am.reshape(B, self.num_heads, Lq, Lk)
            else:
                raise ValueError(f"{_MHA}: attn_mask must have shape ({Lq}, {Lk}) or "
                                 f"({B * self.num_heads}, {Lq}, {Lk}) (B*num_heads, Lq, Lk); got {am.shape}")
            masks.append(self._as_sdpa_mask("attn_mask", am))
        if not masks:
            return None
        if len(masks) == 1:
            return masks[0]
        a, b = masks
        if a.dtype == np.bool_ and b.dtype == np.bool_:
            return a & b
        as_float = lambda m: np.where(m, 0.0, -np.inf).astype(self.dtype) if m.dtype == np.bool_ else m
        return as_float(a) + as_float(b)

    def _as_sdpa_mask(self, name, m):
        if m.dtype == np.bool_:
            return ~m  # torch: True = masked out; SDPA: True = may attend
        if m.dtype == self.dtype:
            return m
        if np.issubdtype(m.dtype, np.floating) or V._is_half(m.dtype):
            # as torch's MultiheadAttention and this library's SDPA: a float
            # mask is in the layer's dtype, never rounded or widened silently
            raise TypeError(f"{_MHA}: {name} is {m.dtype} but the layer is {self.dtype}; pass it as "
                            f"{self.dtype} ({name}.astype(np.{self.dtype})) or as a bool mask")
        raise TypeError(f"{_MHA}: {name} must be bool (True = masked out) or float; got {m.dtype}")

    def __repr__(self):
        return (f"MultiHeadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, kdim={self.kdim}, vdim={self.vdim}, "
                f"bias={self.bias}, dropout={self.dropout}, batch_first={self.batch_first}, "
                f"dtype={self.dtype})")
