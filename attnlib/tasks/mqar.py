"""Multi-query associative recall (MQAR), as in Zoology (Arora et al., 2023).

Source: S. Arora, S. Eyuboglu et al., "Zoology: Measuring and Improving Recall in Efficient
Language Models", ICLR 2024 (arXiv:2312.04927), Section 3, and its released generator
(``zoology/data/multiquery_ar.py`` of HazyResearch/zoology), which this module follows:

* the vocabulary is split in two: keys are drawn from ``1 .. V/2 - 1``, values from
  ``V/2 .. V - 1``; the ``num_kv_pairs`` keys of one sequence are distinct, and so are its values;
* the sequence opens with the pairs ``k1 v1 k2 v2 ...`` (the context, ``2 * num_kv_pairs`` tokens);
* every key is asked once more later: in the rest of the sequence each key is placed at an even
  offset ``2 g`` after the context, the gaps ``g`` drawn without replacement from a power law
  ``p(g) ~ a * g^(a - 1)`` (``power_a`` = a = 0.01 by default: most queries come soon after the
  context, a few far from it);
* the label of a query position is the value that followed its key in the context; every other
  position is labelled ``IGNORE`` (-100, what ``torch.nn.functional.cross_entropy`` skips);
* the positions that are neither context nor query hold random tokens of the whole vocabulary
  (Zoology's default ``random_non_queries=True``), or 0 with ``random_non_queries=False``.

Zoology trains causal language models and shifts the labels by one; here the label sits at the
query's own position, and the token after a query is filler, never the answer, so a model that
sees the whole sequence (attention without a causal mask) cannot read the answer off its neighbour.
"""

from __future__ import annotations

import torch

from ._common import check_batch_size, check_positive_int, make_generator

__all__ = ["IGNORE", "mqar"]

IGNORE = -100  # the label of positions that are not scored


def mqar(
    batch: int,
    seq_len: int,
    *,
    num_kv_pairs: int = 8,
    vocab_size: int = 8192,
    power_a: float = 0.01,
    random_non_queries: bool = True,
    generator=0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` MQAR sequences of ``seq_len`` tokens: ``(inputs, labels)``, both ``(batch, seq_len)`` int64.

    ``labels`` holds the value to recall at each query position and ``IGNORE`` elsewhere.
    ``random_non_queries=False`` fills the positions that are neither context nor query with 0
    (a token no key or value uses) instead of random tokens, as Zoology's option of that name.
    ``generator``: a CPU ``torch.Generator`` or an int seed (the same seed gives the same batch).
    Needs an even ``seq_len >= 4 * num_kv_pairs`` (the context plus room for every query) and
    ``num_kv_pairs < vocab_size // 2`` (distinct keys and values).
    """
    check_batch_size(batch)
    check_positive_int("seq_len", seq_len)
    check_positive_int("num_kv_pairs", num_kv_pairs)
    check_positive_int("vocab_size", vocab_size)
    if seq_len % 2:
        raise ValueError(f"seq_len must be even (queries sit at even offsets), got {seq_len}")
    if 4 * num_kv_pairs > seq_len:
        raise ValueError(
            f"seq_len must be at least 4 * num_kv_pairs = {4 * num_kv_pairs} (context and queries), got {seq_len}"
        )
    if num_kv_pairs >= vocab_size // 2:
        raise ValueError(
            f"num_kv_pairs must be below vocab_size // 2 = {vocab_size // 2} (distinct keys), got {num_kv_pairs}"
        )
    if isinstance(power_a, bool) or not isinstance(power_a, (int, float)) or not 0 < power_a <= 1:
        raise ValueError(f"power_a must be a number in (0, 1], got {power_a!r}")
    if not isinstance(random_non_queries, bool):
        raise TypeError(f"random_non_queries must be a bool, got {random_non_queries!r}")
    generator = make_generator(generator)
    half = vocab_size // 2
    context = 2 * num_kv_pairs
    rows = torch.arange(batch)[:, None]  # (B, 1)
    # distinct keys in 1 .. half - 1 and distinct values in half .. vocab_size - 1
    keys = torch.rand(batch, half - 1, generator=generator).argsort(dim=1)[:, :num_kv_pairs] + 1  # (B, K)
    values = torch.rand(batch, vocab_size - half, generator=generator).argsort(dim=1)[:, :num_kv_pairs] + half
    space = (seq_len - context) // 2
    offsets = torch.arange(1, space + 1, dtype=torch.float64)
    p = power_a * offsets ** (power_a - 1)  # (space,) Zoology's power law over the gaps 0 .. space - 1
    gaps = torch.multinomial((p / p.sum()).expand(batch, space), num_kv_pairs, generator=generator)  # (B, K)
    if random_non_queries:
        inputs = torch.randint(0, vocab_size, (batch, seq_len), generator=generator)  # the filler
    else:
        inputs = torch.zeros(batch, seq_len, dtype=torch.int64)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    query_positions = context + 2 * gaps  # (B, K)
    inputs[rows, query_positions] = keys
    labels = torch.full((batch, seq_len), IGNORE, dtype=torch.int64)
    labels[rows, query_positions] = values
    return inputs, labels
