"""Selective copying, the task of Mamba (Gu and Dao, 2023).

Source: A. Gu, T. Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
COLM 2024 (arXiv:2312.00752), Section 3.1 and Figure 2, Appendix E.1: the copying task of
Arjovsky, Shah and Bengio (2016) with the tokens to memorize at random positions, so that a
model must select them by content instead of counting positions. The paper's setting: a
vocabulary of 16 tokens including the noise token, 16 data tokens to copy, length 4096.

Layout of one sequence of ``seq_len`` tokens (ids):

* ``NOISE`` (0): the filler between the data tokens;
* data tokens, ids ``1 .. vocab_size - 1``, drawn uniformly: ``num_tokens`` of them at random
  distinct positions of the first ``seq_len - num_tokens`` positions;
* the last ``num_tokens`` positions hold the marker ``vocab_size`` (Figure 2's black tokens):
  there the model must output the data tokens in the order they appeared.

Labels: the data tokens, in order, at the marker positions; ``IGNORE`` (-100) elsewhere. The
markers carry no answer, so a model that sees the whole sequence cannot read the answer off
the marker positions themselves.
"""

from __future__ import annotations

import torch

from ._common import check_batch_size, check_positive_int, make_generator
from .mqar import IGNORE

__all__ = ["NOISE", "IGNORE", "selective_copying", "marker_id"]

NOISE = 0


def marker_id(vocab_size: int) -> int:
    """The id of the marker token for a vocabulary of ``vocab_size`` (inputs use ``vocab_size + 1`` ids)."""
    return vocab_size


def selective_copying(
    batch: int, seq_len: int, *, num_tokens: int = 16, vocab_size: int = 16, generator=0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` sequences: ``(inputs, labels)``, both ``(batch, seq_len)`` int64 (ids ``0 .. vocab_size``).

    ``generator``: a CPU ``torch.Generator`` or an int seed (the same seed gives the same batch).
    Needs ``seq_len >= 2 * num_tokens`` (room for the data tokens and the markers) and
    ``vocab_size >= 2`` (the noise token and at least one data token).
    """
    check_batch_size(batch)
    check_positive_int("seq_len", seq_len)
    check_positive_int("num_tokens", num_tokens)
    check_positive_int("vocab_size", vocab_size)
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2 (the noise token and a data token), got {vocab_size}")
    if seq_len < 2 * num_tokens:
        raise ValueError(
            f"seq_len must be at least 2 * num_tokens = {2 * num_tokens} (data tokens and markers), got {seq_len}"
        )
    generator = make_generator(generator)
    body = seq_len - num_tokens
    rows = torch.arange(batch)[:, None]  # (B, 1)
    positions = torch.rand(batch, body, generator=generator).argsort(dim=1)[:, :num_tokens].sort(dim=1).values
    data = torch.randint(1, vocab_size, (batch, num_tokens), generator=generator)  # (B, K)
    inputs = torch.full((batch, seq_len), NOISE, dtype=torch.int64)
    inputs[rows, positions] = data
    inputs[:, body:] = marker_id(vocab_size)
    labels = torch.full((batch, seq_len), IGNORE, dtype=torch.int64)
    labels[:, body:] = data
    return inputs, labels
