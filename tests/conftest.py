"""Test configuration. TRITON_INTERPRET must be set before anything imports triton:
with no GPU here, Triton kernels run in Triton's interpreter on the CPU."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(2)
