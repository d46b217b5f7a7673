"""attentionの間引き (sparsification).

Each method is a pattern plus an algorithm that never builds the dense N x N matrix.
"""
