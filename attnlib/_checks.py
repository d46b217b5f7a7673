"""Input checks shared by every attention kernel in attnlib.

Every public function validates its arguments with these helpers, so that bad
input fails early with a message that names the argument, what was expected and
what came, instead of a broadcasting error deep inside a matmul (or, worse, a
silent wrong answer).

Shape legend used throughout attnlib:
    B     batch size
    H     query heads,   H_kv  key/value heads (H_kv divides H)
    N_q   query tokens,  N_k   key/value tokens
    d     head dimension (q and k), d_v  value head dimension
"""

from __future__ import annotations

import functools
import math

import torch

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
