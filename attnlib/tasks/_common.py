"""What every task generator shares: argument checks and a seeded source of random numbers."""

from __future__ import annotations

import torch

from .._checks import check_positive_int

__all__ = ["check_positive_int", "check_batch_size", "make_generator", "UniformStream"]


def check_batch_size(batch) -> None:
    check_positive_int("batch", batch)


def make_generator(generator) -> torch.Generator:
    """A CPU ``torch.Generator``: ``generator`` itself, or a new one seeded with the int ``generator``.

    Every task draws all its randomness from this generator, so the same seed gives the same batch.
    """
    if isinstance(generator, torch.Generator):
        if generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int) or generator < 0:
        raise TypeError(f"generator must be a torch.Generator or a non-negative int seed, got {generator!r}")
    return torch.Generator().manual_seed(generator)


class UniformStream:
    """Uniform numbers in [0, 1) drawn from ``generator`` in chunks, handed out one at a time.

    For the generators that build each example in Python (a tree, a path): one tensor call per
    chunk instead of one per number, and still every number comes from the seeded generator.
    """

    def __init__(self, generator: torch.Generator, chunk: int = 4096):
        self.generator, self.chunk = generator, chunk
        self._numbers: list[float] = []
        self._next = 0

    def uniform(self) -> float:
        if self._next == len(self._numbers):
            self._numbers = torch.rand(self.chunk, generator=self.generator, dtype=torch.float64).tolist()
            self._next = 0
        self._next += 1
        return self._numbers[self._next - 1]

    def below(self, n: int) -> int:
        """A uniform int in ``0 .. n - 1``."""
        return min(int(self.uniform() * n), n - 1)
