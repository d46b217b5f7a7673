"""Root pytest configuration, shared by tests/ and by nbval over chapters/.

Both variables must be set before anything imports triton or executes a chapter:
* TRITON_INTERPRET=1 on a machine with no GPU, so Triton kernels run in Triton's interpreter;
* ATTNLIB_STATIC=1 so that chapters draw the same static figures the book stores
  (the nbval kernels inherit this environment).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("ATTNLIB_STATIC", "1")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
