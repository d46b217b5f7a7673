"""The online softmax: the pieces FlashAttention, block-sparse and ring attention share.

Papers: Milakov & Gimelshein, "Online normalizer calculation for softmax", 2018
(arXiv:1805.02867), the one-pass normalizer; Dao, "FlashAttention-2", 2023 (arXiv:2307.08691),
Alg. 1, which applies it to attention tiles. The merge of two partial results is the form of the
``zhuzilin/ring-flash-attention`` project. Chapters: "FlashAttention" (10, the running max and
sum), "One FlashAttention kernel for every sparse pattern" (14) and "Ring attention" (15, the merge).

Who imports it: :mod:`attnlib.optim.flash` (the tiled PyTorch FlashAttention),
:mod:`attnlib.optim.block_sparse` (its PyTorch path) and :mod:`attnlib.optim.ring` (the merge
of the blocks that travel around the ring).

The running state of one row
----------------------------
A row of scores is folded in one block at a time into three numbers, kept in float32 (float64
for float64 inputs, :func:`compute_dtype`)::

    m   running max of the scores seen so far (-inf before the first key)
    l   running sum of exp(s - m)
    acc running sum of exp(s - m) v

    m_new = max(m, rowmax(S_j));  alpha = exp(m - m_new)      # alpha <= 1
    l = alpha l + rowsum(exp(S_j - m_new));  acc = alpha acc + exp(S_j - m_new) V_j

A row whose keys were all masked so far has ``m_new = -inf`` and ``-inf - (-inf) = NaN``;
:func:`zero_where_minus_inf` subtracts 0 instead, so that ``exp(-inf - 0) = 0``.
After the last block :func:`finish` divides once: ``out = acc / l`` and ``lse = m + log(l)``.

Conventions (those of :mod:`attnlib.reference`)
-----------------------------------------------
* ``lse`` is the natural-log logsumexp of a row's *scaled* scores, ``(..., n)``.
* A row that sees no key has ``out = 0`` and ``lse = -inf`` (never NaN); merged with anything,
  it contributes nothing.

The merge of two partial results (the online softmax across blocks, tiles or ranks)
---------------------------------------------------------------------------------
A row that has seen keys ``A`` (output ``o_A``, logsumexp ``l_A``) and then sees keys ``B``
(``o_B``, ``l_B``) has, over ``A ∪ B``::

    l = log(exp(l_A) + exp(l_B)) = l_A - logsigmoid(l_A - l_B)
    o = (exp(l_A) o_A + exp(l_B) o_B) / exp(l) = o_A - sigmoid(l_B - l_A) (o_A - o_B)

Both right-hand sides only see the *difference* ``l_A - l_B``, so no ``exp`` overflows
(:func:`merge_partial`, in place :func:`merge_partial_`); the textbook
``l_A + log(1 + exp(l_B - l_A))`` overflows once the difference passes ~88 in float32
(:func:`merge_partial_naive`).

Shape legend
------------
    ...    any leading dims (batch, heads, tiles)
    n      rows (queries)
    d_v    head dimension of the values
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "compute_dtype",
    "zero_where_minus_inf",
    "finish",
    "merge_partial",
    "merge_partial_",
    "merge_partial_naive",
]


# --------------------------------------------------------------------------
# 1. The running max and sum of one row
# --------------------------------------------------------------------------


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in fp32 (fp64 for fp64 input, so that gradcheck is exact)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def zero_where_minus_inf(row_max: torch.Tensor) -> torch.Tensor:
    """Replace a max of ``-inf`` (a row with nothing to attend to yet) by 0.

    ``exp(s - m)`` with ``s = m = -inf`` is ``exp(nan)``; with ``m`` replaced by 0
    it is ``exp(-inf) = 0``, the empty row we want.
    """
    return torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)


def finish(acc: torch.Tensor, row_sum: torch.Tensor, row_max: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FA-2 Alg. 1 lines 12-13: ``(out: (..., n, d_v), lse: (..., n))`` from the running state, dividing once.

    ``acc: (..., n, d_v)``, ``row_sum, row_max: (..., n, 1)``. A row that saw no key keeps
    ``acc = 0``, ``l = 0``: it gets 0 and ``lse = -inf + log 0 = -inf``.
    """
    out = acc / torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))  # (..., n, d_v)
    return out, (row_max + torch.log(row_sum)).squeeze(-1)  # (..., n)


# --------------------------------------------------------------------------
# 2. The merge of partial results
# --------------------------------------------------------------------------


def merge_partial(out, lse, block_out, block_lse) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial attentions over disjoint key sets, in the sigmoid / log-sigmoid form.

    ``out, block_out: (..., n, d_v)``, ``lse, block_lse: (..., n)``; returns the merged
    ``(out, lse)``. Stable for any logits: only ``lse - block_lse`` enters ``sigmoid`` and
    ``logsigmoid``. A side with ``lse = -inf`` (no key seen yet) contributes nothing.
    """
    first_empty = lse == float("-inf")  # (..., n)
    new_lse = torch.where(first_empty, block_lse, lse - F.logsigmoid(lse - block_lse))  # (..., n)
    block_weight = torch.where(first_empty, torch.ones_like(lse), torch.sigmoid(block_lse - lse))  # (..., n)
    new_out = out - block_weight[..., None] * (out - block_out)  # (..., n, d_v)
    return new_out, new_lse


def merge_partial_(out, lse, block_out, block_lse) -> None:
    """:func:`merge_partial` in place on ``out, lse`` (views of the accumulators): one temporary of ``out``'s size."""
    first_empty = lse == float("-inf")  # (..., n)
    block_weight = torch.where(first_empty, torch.ones_like(lse), torch.sigmoid(block_lse - lse))  # (..., n)
    lse.copy_(torch.where(first_empty, block_lse, lse - F.logsigmoid(lse - block_lse)))  # (..., n)
    out.sub_((out - block_out).mul_(block_weight[..., None]))  # (..., n, d_v)


def merge_partial_naive(out, lse, block_out, block_lse) -> tuple[torch.Tensor, torch.Tensor]:
    """The same merge written as ``lse + log(1 + exp(block_lse - lse))``: overflows for large logits.

    For the chapter and the tests only: ``exp`` of a difference above ~88 is ``inf`` in float32.
    """
    new_lse = lse + torch.log(1 + torch.exp(block_lse - lse))  # (..., n)
    new_out = torch.exp(lse - new_lse)[..., None] * out + torch.exp(block_lse - new_lse)[..., None] * block_out
    return new_out, new_lse
