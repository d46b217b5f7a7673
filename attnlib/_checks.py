"""Input checks shared by every module of attnlib: attention kernels, vision mixers, models.

Every public function validates its arguments with these helpers, so that bad
input fails early with a message that names the argument, what was expected and
what came, instead of a broadcasting error deep inside a matmul (or, worse, a
silent wrong answer). The last two sections add what a module with weights needs: the input in
the dtype and on the device of the weights, at least one image, finite hyperparameters, and
``q, k, v`` of one dtype and device for the kernels whose keys come from a reduced or sampled map
(``N_k != N_q``).

Shape legend used throughout attnlib:
    B     batch size
    H     query heads,   H_kv  key/value heads (H_kv divides H)
    N_q   query tokens,  N_k   key/value tokens
    d     head dimension (q and k), d_v  value head dimension
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
from torch import nn

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x, *, ndim: int | None = None, floating: bool = True) -> None:
    """Raise TypeError/ValueError unless ``x`` is a tensor of rank ``ndim``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got {x.ndim} dimensions with shape {tuple(x.shape)}")
    if floating and x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}")


def check_qkv(q, k, v) -> tuple[int, int, int, int, int, int]:
    """Validate ``q: (B, H, N_q, d)``, ``k: (B, H_kv, N_k, d)``, ``v: (B, H_kv, N_k, d_v)``.

    Returns ``(B, H, H_kv, N_q, N_k, d)``.
    """
    check_tensor("q", q, ndim=4)
    check_tensor("k", k, ndim=4)
    check_tensor("v", v, ndim=4)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    B, H, N_q, d = q.shape
    if B == 0 or H == 0:
        raise ValueError(
            f"q must have at least one batch element and one head, got B={B}, H={H} (shape {tuple(q.shape)})"
        )
    if d == 0 or v.shape[3] == 0:
        raise ValueError(f"the head dimension must be at least 1, got d={d} for q and d_v={v.shape[3]} for v")
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(
            f"batch size mismatch: q has B={B}, k has B={k.shape[0]}, v has B={v.shape[0]} (expected equal)"
        )
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same number of heads, got k {k.shape[1]}, v {v.shape[1]}")
    H_kv = k.shape[1]
    if H_kv == 0 or H % H_kv != 0:
        raise ValueError(
            f"the number of key/value heads must divide the number of query heads: "
            f"q has H={H}, k and v have H_kv={H_kv}"
        )
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same number of tokens, got k N_k={k.shape[2]}, v N_k={v.shape[2]}")
    if k.shape[3] != d:
        raise ValueError(f"head dimension mismatch: q has d={d}, k has d={k.shape[3]} (expected equal)")
    N_k = k.shape[2]
    if N_q == 0 or N_k == 0:
        raise ValueError(f"q and k must have at least one token, got N_q={N_q}, N_k={N_k}")
    return B, H, H_kv, N_q, N_k, d


def check_mask(mask, batch_heads_queries_keys: tuple[int, int, int, int], device: torch.device) -> None:
    """``mask`` must be boolean and broadcastable to ``(B, H, N_q, N_k)`` (True = may attend)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor of dtype torch.bool, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool (True = the query may attend to the key), got {mask.dtype}")
    if mask.device != device:
        raise ValueError(f"mask must be on the device of q ({device}), got {mask.device}")
    target = batch_heads_queries_keys
    if mask.ndim > 4 or mask.ndim < 1:
        raise ValueError(f"mask must be broadcastable to (B, H, N_q, N_k) = {target}, got shape {tuple(mask.shape)}")
    padded = (1,) * (4 - mask.ndim) + tuple(mask.shape)
    for got, want in zip(padded, target):
        if got not in (1, want):
            raise ValueError(
                f"mask must be broadcastable to (B, H, N_q, N_k) = {target}, got shape {tuple(mask.shape)}"
            )


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_heads(dim, num_heads) -> int:
    """``dim`` and ``num_heads`` positive ints, ``num_heads`` dividing ``dim``; returns the head dimension."""
    check_positive_int("dim", dim)
    check_positive_int("num_heads", num_heads)
    if dim % num_heads != 0:
        raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
    return dim // num_heads


def check_fits_map(name: str, size: int, height: int, width: int, *, reason: str = "") -> None:
    """ValueError unless a ``size x size`` cell (a reduction ratio, a stride) fits a ``height x width`` map."""
    if size > height or size > width:
        raise ValueError(
            f"{name} must be at most the map's height and width{reason}, got {name}={size} for a {height} x {width} map"
        )


def check_tokens(name: str, x, channels: int | None = None) -> None:
    """``x`` must be ``(B, N, C)`` tokens, with ``C == channels`` when given."""
    check_tensor(name, x, ndim=3)
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(f"{name} must have {channels} channels in its last dimension, got shape {tuple(x.shape)}")


def check_flag(name: str, value) -> None:
    """``value`` must be a real ``bool`` (not 0/1, not a string: ``causal='no'`` would be truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def resolve_scale(scale, default: float) -> float:
    """The score scale as a float: ``default`` when ``scale`` is None, else a finite real number.

    One rule for every function of attnlib: a Python int or float (not a bool, not a tensor),
    finite. NaN or infinity would turn every output into NaN or zeros without a word.
    """
    if scale is None:
        return float(default)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return float(scale)


def first_order_only(name: str):
    """Decorate an ``autograd.Function.backward`` that computes first-order gradients only.

    With ``create_graph=True`` (double backward, e.g. a gradient penalty) the backward would
    run without recording a graph and the second-order terms would silently be missing; this
    raises a clear error instead.
    """

    def decorate(backward):
        @functools.wraps(backward)
        def checked(ctx, *grads):
            if torch.is_grad_enabled():
                raise RuntimeError(
                    f"{name} does not support double backward (create_graph=True, second-order gradients); "
                    "use attnlib.reference.attention where you need them"
                )
            return backward(ctx, *grads)

        return checked

    return decorate


# --------------------------------------------------------------------------
# Numbers and dtypes of a module's settings
# --------------------------------------------------------------------------


def check_real(name: str, value, *, allow_zero: bool = False) -> None:
    """``value`` must be a finite real number (not a bool), positive (or zero with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


# --------------------------------------------------------------------------
# Modules with weights, feature maps (the vision mixers)
# --------------------------------------------------------------------------


def check_like_module(name: str, x: torch.Tensor, module: nn.Module) -> None:
    """``x`` must have the dtype and device of ``module``'s parameters (dtype free under autocast).

    Otherwise the first matmul fails with "mat1 and mat2 must have the same dtype", or, for a
    module on the meta device, runs without computing anything.
    """
    parameter = next(module.parameters(), None)
    if parameter is None:
        return
    if x.device != parameter.device:
        raise ValueError(
            f"{name} must be on the device of the module's parameters ({parameter.device}), got {x.device}; "
            f"move one of them (x.to({str(parameter.device)!r}) or module.to({str(x.device)!r}))"
        )
    if x.dtype != parameter.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"{name} must have the dtype of the module's parameters ({parameter.dtype}), got {x.dtype}; "
            f"convert one of them (x.to({parameter.dtype}) or module.to({x.dtype}))"
        )


def check_batch(name: str, x: torch.Tensor) -> None:
    """``x`` must hold at least one image (a batch of 0 fails deep inside a reshape)."""
    if x.shape[0] == 0:
        raise ValueError(f"{name} must have at least one image (B >= 1), got shape {tuple(x.shape)}")


def check_positive_finite(name: str, value) -> float:
    """``value`` must be a real int or float (not a bool), finite and > 0; returned as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number (int or float), got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return float(value)


def check_finite_number(name: str, value) -> float:
    """``value`` must be a real int or float (not a bool), finite; returned as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number (int or float), got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_float_dtype(name: str, dtype) -> None:
    """``dtype`` must be one of the floating dtypes attnlib computes in."""
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating torch.dtype (float16/bfloat16/float32/float64), got {dtype!r}")


def check_query_key_value(q, k, v, *, key_tokens: str = "Ns") -> None:
    """``q: (B, h, N, d)`` and ``k, v: (B, h, M, d)``, of one dtype and device, none empty.

    For kernels whose keys are fewer than the queries (a reduced or sampled map); ``key_tokens``
    names ``M`` in the messages.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=4)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q must be (B, nh, N, d) and k, v (B, nh, {key_tokens}, d) with the same B, nh and d, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[0] == 0 or q.shape[1] == 0:
        raise ValueError(f"q must have at least one batch element and one head, got shape {tuple(q.shape)}")
    if q.shape[-1] == 0:
        raise ValueError(f"the head dimension must be at least 1, got d={q.shape[-1]}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"q and k must have at least one token, got N={q.shape[2]}, {key_tokens}={k.shape[2]}")
