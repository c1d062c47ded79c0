"""Array types in and out: NumPy in, NumPy out; torch tensors in, torch
tensors out (zero copy both ways where the dtype allows it).

torch is never imported here unless the caller already passed a tensor, so
NumPy users pay nothing for it. bfloat16 tensors cross as their 16-bit
patterns (NumPy has no bfloat16 of its own): as ``ml_dtypes.bfloat16`` when
that package is installed, else widened to float32 right away.
"""
import sys

import numpy as np


def is_torch(x):
    """Whether x is a torch tensor, subclasses included (without importing
    torch: a tensor exists only once torch is imported)."""
    tensor = getattr(sys.modules.get("torch"), "Tensor", None)
    # (a stand-in module, as tests that stub torch install, has no Tensor class)
    return isinstance(tensor, type) and isinstance(x, tensor)


def _bfloat16_dtype():
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def refuse_transform_tensor(t, name, op):
    """TypeError if `t` is a torch.func transform's tensor (torch.vmap, grad):
    it has no memory of its own to read."""
    import torch

    if torch._C._functorch.is_functorch_wrapped_tensor(t):
        raise TypeError(f"{op}: {name} is a torch.func transform's tensor (grad, jvp, ...), which "
                        f"has no memory of its own to read: attncore computes forward passes "
                        f"only (torch.vmap of attncore.torch.scaled_dot_product_attention runs)")


def torch_to_numpy(t, name, op):
    """A CPU tensor as a NumPy array over the same memory (bfloat16: see the
    module docstring). Tensors that need a gradient are refused: attncore
    computes forward passes only."""
    import torch

    if t.requires_grad and torch.is_grad_enabled():
        raise TypeError(
            f"{op}: {name} requires grad, but attncore computes the forward pass only (no "
            f"autograd). Call it under torch.no_grad() or torch.inference_mode(), or pass "
            f"{name}.detach()")
    refuse_transform_tensor(t, name, op)
    if t.device.type != "cpu":
        raise TypeError(f"{op}: {name} is on {t.device}; attncore runs on the CPU "
                        f"(move it with {name}.cpu())")
    if t.layout != torch.strided:
        raise TypeError(f"{op}: {name} is a {t.layout} tensor; attncore reads dense (strided) "
                        f"tensors (convert it with {name}.to_dense())")
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if t.dtype == torch.bfloat16:
        bits = t.view(torch.int16).numpy()
        bf16 = _bfloat16_dtype()
        if bf16 is not None:
            return bits.view(bf16)
        return (bits.astype(np.int32).view(np.uint32) << 16).view(np.float32).astype(np.float32, copy=False)
    try:
        return t.numpy()
    except TypeError:   # (float8, complex32, quantized: NumPy has no such dtype)
        raise TypeError(f"{op}: {name} has dtype {t.dtype}, which attncore does not read; "
                        f"convert it (e.g. {name}.float())") from None
    except RuntimeError as exc:   # (a wrapper subclass with no storage of its own)
        raise TypeError(f"{op}: {name} is a {type(t).__name__} whose memory attncore cannot "
                        f"read ({exc}); pass a plain tensor") from None


def torch_dtype_name(t):
    return str(t.dtype).replace("torch.", "")


def deliver(res, out, result, torch_dtype):
    """A computed array as the caller gets it: copied into `out` when one
    was given (and `out` returned), else in the `result` dtype, as a torch
    tensor of `torch_dtype` when the inputs were tensors."""
    if out is not None:
        if res is not out:
            np.copyto(out, res, casting="unsafe")
        return out
    if res.dtype != result:
        res = res.astype(result)
    return to_torch(res, torch_dtype) if torch_dtype is not None else res


def to_torch(a, dtype_name):
    """A NumPy result as a torch tensor of dtype `dtype_name` (zero copy when
    the dtypes match)."""
    import torch

    if a.dtype.name == "bfloat16":
        a = a.view(np.int16)
        return torch.from_numpy(a).view(torch.bfloat16)
    out = torch.from_numpy(np.ascontiguousarray(a) if not a.flags.writeable else a)
    want = getattr(torch, dtype_name)
    return out if out.dtype == want else out.to(want)


def torch_module():
    """torch itself (already imported by whoever passed a tensor)."""
    import torch

    return torch


_TORCH_DTYPES = None


def torch_dtypes():
    """(float32, float64, bfloat16, float16, bool) of torch, for the fast path."""
    global _TORCH_DTYPES
    if _TORCH_DTYPES is None:
        import torch

        _TORCH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.bool)
    return _TORCH_DTYPES
