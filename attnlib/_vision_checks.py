"""Input checks shared by the vision mixers (Swin, MaxViT, DAT, PVT, MLP-Mixer, PoolFormer, CoaT).

The general checks live in :mod:`attnlib._checks`; these add what a module with weights and a
feature map needs: the input in the dtype and on the device of the weights, at least one image,
positive finite hyperparameters, and ``q, k, v`` of one dtype and device for the kernels whose
keys come from a reduced or sampled map (``N_k != N_q``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import FLOAT_DTYPES, check_tensor


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
        raise TypeError(f"{name} must be a floating dtype (float16/bfloat16/float32/float64), got {dtype!r}")


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
