"""attentionの間引き (sparsification): each method is a pattern plus an algorithm that never builds the dense N x N matrix."""
