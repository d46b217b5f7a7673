"""Models built on the kernels: a Falcon-style language model (chapter 12)."""
