"""Test configuration (the root conftest.py sets TRITON_INTERPRET and ATTNLIB_STATIC first)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

torch.set_num_threads(2)


class RecordShapes(TorchDispatchMode):
    """Records ``(operator, shape)`` of every tensor that an aten operator reads or returns.

    The tests that check a method never builds an ``N x N`` tensor run it, forward and
    backward, inside ``with RecordShapes() as recorder:`` and look at ``recorder.shapes``.
    """

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in tree_flatten((args, kwargs, result))[0]:
            if isinstance(value, torch.Tensor):
                self.shapes.append((str(func), tuple(value.shape)))
        return result


@pytest.fixture
def record_shapes():
    """The :class:`RecordShapes` context manager."""
    return RecordShapes
