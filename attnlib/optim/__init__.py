"""計算過程の最適化 (computation optimization): the same softmax attention on a different schedule."""
